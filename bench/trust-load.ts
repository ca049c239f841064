/**
 * Latency for a legitimate user under attack (issue 11): `register` and
 * `connect` p50 while an attacker holds (tries to hold) 5,000 idle
 * unauthenticated sessions and floods password guesses, as a ratio against
 * the same server quiet, in the same run. Target: within 2x.
 *
 * - register: TLS + hello + register (scrypt N=2^17 included) from 127.0.0.2 / .3;
 * - connect: a control connection with the user's certificate, TLS + hello,
 *   what an agent does when it (re)connects to its server.
 * The attacker's sessions come from 160 loopback addresses (127.0.1.x), about
 * 32 each, and are reopened as the server closes them; the guesses come from
 * 127.0.2.x at one account. The server runs with its default limits.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import { PROTOCOL_VERSION } from '../q2q/control/protocol';
import { createCsr, generateKeyPair } from '../q2q/identity';
import { attachAmp } from '../q2q/transport/amp-connection';
import { emit, note, percentile, round, runStandalone, sleep, startServer } from './harness';

const DOMAIN = 'load.test';
const PASSWORD = 'bench password 0123';
const IDLE_SESSIONS = Number(process.env.VERTEX_BENCH_IDLE_SESSIONS ?? 5000);
const SAMPLES = 6;
/** An attacker's session closed or refused is opened again after this long. */
const RECONNECT_MS = 5_000;

function tlsTo(port: number, localAddress: string, creds?: { key: string; cert: string }): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const tcp = net.connect({ host: '127.0.0.1', port, localAddress });
    tcp.on('error', () => undefined);
    const socket = tls.connect({ socket: tcp, servername: DOMAIN, rejectUnauthorized: false, ...(creds ?? {}) });
    socket.once('secureConnect', () => { socket.off('error', reject); socket.on('error', () => undefined); resolve(socket); });
    socket.once('error', reject);
    socket.once('close', () => reject(new Error('closed')));
  });
}

async function hello(socket: tls.TLSSocket) {
  const peer = attachAmp(socket, { defaultTimeoutMs: 30_000 });
  await peer.call('hello', { version: PROTOCOL_VERSION });
  return peer;
}

interface Creds { key: string; cert: string }

async function timedRegister(port: number, from: string, user: string): Promise<{ ms: number; creds: Creds }> {
  const address = `${user}@${DOMAIN}`;
  const key = (await generateKeyPair()).privateKeyPem;
  const csr = await createCsr(address, key);
  const t0 = performance.now();
  const socket = await tlsTo(port, from);
  const peer = await hello(socket);
  const answer = await peer.call('register', { address, password: PASSWORD, csr });
  const ms = performance.now() - t0;
  socket.destroy();
  return { ms, creds: { key, cert: answer.certificate ?? '' } };
}

async function timedConnect(port: number, creds: Creds): Promise<number> {
  const t0 = performance.now();
  const socket = await tlsTo(port, '127.0.0.1', creds);
  const peer = await hello(socket);
  const ms = performance.now() - t0;
  peer.callNoAnswer('ping');
  socket.destroy();
  return ms;
}

async function measure(port: number, from: string, tag: string): Promise<{ register: number; connect: number }> {
  const reg: number[] = [];
  const con: number[] = [];
  for (let i = 0; i < SAMPLES; i++) {
    const { ms, creds } = await timedRegister(port, from, `${tag}${i}`);
    reg.push(ms);
    con.push(await timedConnect(port, creds));
  }
  return { register: percentile(reg, 50), connect: percentile(con, 50) };
}

export async function benchTrustLoad(): Promise<void> {
  const server = await startServer([DOMAIN], { defaultLimits: true });
  const quiet = await measure(server.port, '127.0.0.2', 'quiet');
  note(`trust-load quiet: register ${Math.round(quiet.register)} ms, connect ${Math.round(quiet.connect)} ms`);

  let running = true;
  let open = 0;
  let opened = 0;
  let guesses = 0;
  const sockets = new Set<tls.TLSSocket>();
  // One idle-session holder per slot: open, hello, wait for the server to close it, open again.
  const holder = async (slot: number): Promise<void> => {
    const from = `127.0.1.${1 + (slot % 160)}`;
    while (running) {
      try {
        const socket = await tlsTo(server.port, from);
        sockets.add(socket);
        await hello(socket).catch(() => undefined);
        open++;
        opened++;
        await new Promise((resolve) => socket.once('close', resolve));
        open--;
        sockets.delete(socket);
        await sleep(RECONNECT_MS);
      } catch {
        // Refused (the per-address cap): try again in a while, as a patient attacker would.
        await sleep(RECONNECT_MS);
      }
    }
  };
  const guesser = async (n: number): Promise<void> => {
    const csr = await createCsr(`victim@${DOMAIN}`, (await generateKeyPair()).privateKeyPem);
    while (running) {
      try {
        const socket = await tlsTo(server.port, `127.0.2.${1 + n}`);
        sockets.add(socket);
        const peer = await hello(socket);
        for (let i = 0; i < 20 && running; i++) {
          await peer.call('sign', { address: `victim@${DOMAIN}`, password: `guess ${n} ${i} ${guesses}`, csr }).catch(() => undefined);
          guesses++;
        }
        socket.destroy();
        sockets.delete(socket);
      } catch {
        await sleep(100);
      }
    }
  };
  await timedRegister(server.port, '127.0.0.4', 'victim');
  const attack = [...Array.from({ length: IDLE_SESSIONS }, (_, i) => holder(i)), ...Array.from({ length: 8 }, (_, n) => guesser(n))];
  await sleep(8_000);
  const heldAtStart = open;
  note(`trust-load: attacker holds ${open} sessions (${opened} opened), ${guesses} guesses so far`);
  const loaded = await measure(server.port, '127.0.0.3', 'loaded');
  const heldAtEnd = open;
  running = false;
  for (const s of sockets) s.destroy();
  await Promise.race([Promise.all(attack), sleep(5_000)]);
  emit({
    bench: 'trust-load',
    samples: SAMPLES,
    attackerSessions: IDLE_SESSIONS,
    heldByServer: { atStart: heldAtStart, atEnd: heldAtEnd, opened },
    guesses,
    quietMs: { register: round(quiet.register, 1), connect: round(quiet.connect, 1) },
    loadedMs: { register: round(loaded.register, 1), connect: round(loaded.connect, 1) },
    ratio: { register: round(loaded.register / quiet.register, 2), connect: round(loaded.connect / quiet.connect, 2) },
    target: 'p50 within 2x',
  });
  await server.proc.stop();
}

if (require.main === module) runStandalone({ 'trust-load': benchTrustLoad }, process.argv[2] ?? 'trust-load');
