/**
 * Issue 11, the load figure's fix (server/admission.ts, "under pressure"):
 * while the unauthenticated table is full of idle `hello` sessions from a set
 * of flooding addresses,
 * - the flood's new connections are closed at accept, before any TLS work
 *   (one per address per unauthenticated_newcomer_interval gets through), so
 *   reopening costs the server an accept, not a handshake;
 * - an agent whose address has authenticated before connects with its
 *   certificate, every time;
 * - a new user registers from an address the server has never seen;
 * - an agent that moved (its certificate, an address never seen) gets its
 *   first connection, and once that has authenticated, every one after.
 *
 * Against a real `vertex server` with a small table (unauthenticated_max: 100)
 * and long idle and interval times, so nothing here depends on how fast the
 * machine is. Then the same against a server with the priority switched off
 * (VERTEX_TEST_FAULT=no-admission-priority, the behaviour before): there every
 * reconnection of the flood goes through TLS, evicting an older one, which is
 * what made a known agent's connect wait 86x longer in bench/trust-load.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PROTOCOL_VERSION } from '../../../q2q/control/protocol';
import { createCsr, generateKeyPair } from '../../../q2q/identity';
import { attachAmp } from '../../../q2q/transport/amp-connection';
import { startServer, stopAll, tempDir, type ServerHandle } from '../../helpers/cli';
import { connectRaw, openSession, outcome, type ClientCreds, type RawSession } from './raw-session';

jest.setTimeout(180_000);

const DOMAIN = 'prio.test';
const PASSWORD = 'correct horse battery staple';
const FLOOD = ['127.0.1.1', '127.0.1.2', '127.0.1.3', '127.0.1.4'];
const TABLE = 100;
/** Per flooding address: 4 x 30 = 120 sessions tried, more than the table holds. */
const FLOOD_SESSIONS = 30;
/** Per flooding address, tried at once once the table is full. */
const RECONNECTS = 20;

async function serverWith(fault: string): Promise<ServerHandle> {
  const dataDir = tempDir('prio-server');
  const config = path.join(dataDir, 'server.yaml');
  fs.writeFileSync(config, [
    'version: 1', `domains: [${DOMAIN}]`, 'registration: open', 'limits:',
    `  unauthenticated_max: ${TABLE}`, '  unauthenticated_per_address: 64',
    // Long enough that a slow machine cannot see the flood's sessions idle out or its interval pass mid-test.
    '  unauthenticated_idle_timeout: 120s', '  unauthenticated_lifetime: 300s', '  unauthenticated_newcomer_interval: 120s',
  ].join('\n') + '\n');
  return startServer([DOMAIN], { dataDir, extraArgs: ['--config', config], env: { VERTEX_TEST_FAULT: fault } });
}

async function register(server: ServerHandle, from: string, user: string): Promise<{ result: string; creds: ClientCreds }> {
  const address = `${user}@${DOMAIN}`;
  const key = (await generateKeyPair()).privateKeyPem;
  try {
    const s = await openSession(server.port, DOMAIN, from);
    const answer = s.peer.call('register', { address, password: PASSWORD, csr: await createCsr(address, key) });
    const result = await outcome(answer);
    const cert = result === 'certificate' ? (await answer).certificate ?? '' : '';
    s.close();
    return { result, creds: { key, cert } };
  } catch (err) {
    return { result: (err as { code?: string }).code ?? (err as Error).message, creds: { key, cert: '' } };
  }
}

/** An agent's (re)connect: TLS with the certificate, hello; the identity the server saw, or what failed. */
async function agentConnect(server: ServerHandle, from: string, creds: ClientCreds): Promise<string> {
  try {
    const socket = await connectRaw(server.port, DOMAIN, from, creds);
    const peer = attachAmp(socket, { defaultTimeoutMs: 60_000 });
    const answer = await peer.call('hello', { version: PROTOCOL_VERSION });
    socket.destroy();
    return answer.identity ?? 'no identity';
  } catch (err) {
    return (err as { code?: string }).code ?? (err as Error).message;
  }
}

interface Outcome { held: number; reconnectsThroughTls: number; known: string[]; moved: string[]; newUser: string }

async function scenario(server: ServerHandle): Promise<Outcome> {
  const open: RawSession[] = [];
  try {
    // alice registers from 127.0.0.1 before the flood: the server has seen that address authenticate.
    const alice = await register(server, '127.0.0.1', 'alice');
    expect(alice.result).toBe('certificate');

    const tries = await Promise.allSettled(FLOOD.flatMap((a) => Array.from({ length: FLOOD_SESSIONS }, () => openSession(server.port, DOMAIN, a))));
    for (const t of tries) if (t.status === 'fulfilled') open.push(t.value);
    // Evicted ones are closed by the server; give those closes a moment to arrive.
    const live = () => open.filter((s) => !s.socket.destroyed).length;
    for (let waited = 0; live() > TABLE && waited < 10_000; waited += 100) await new Promise((resolve) => setTimeout(resolve, 100));
    const held = live();

    // The flood reopens, all at once, while the table is full.
    const again = await Promise.allSettled(FLOOD.flatMap((a) => Array.from({ length: RECONNECTS }, () => connectRaw(server.port, DOMAIN, a))));
    let reconnectsThroughTls = 0;
    for (const r of again) {
      if (r.status !== 'fulfilled') continue;
      reconnectsThroughTls++;
      r.value.destroy();
    }

    const known: string[] = [];
    for (let i = 0; i < 3; i++) known.push(await agentConnect(server, '127.0.0.1', alice.creds));
    const newUser = (await register(server, '127.0.0.9', 'bob')).result;
    const moved: string[] = [];
    for (let i = 0; i < 3; i++) moved.push(await agentConnect(server, '127.0.0.10', alice.creds));
    return { held, reconnectsThroughTls, known, moved, newUser };
  } finally {
    for (const s of open) s.close();
  }
}

afterAll(async () => {
  await stopAll();
});

const ALICE = `alice@${DOMAIN}`;

describe('under pressure: known agents and newcomers first, the flood refused before TLS (real vertex server)', () => {
  it('a known agent connects, a new address registers, a moved agent gets in; the flood reopens nothing', async () => {
    const server = await serverWith('');
    const o = await scenario(server);
    process.stdout.write(`priority on: ${JSON.stringify(o)}\n`);
    expect(o.held).toBeLessThanOrEqual(TABLE);
    // At most its one connection per address per interval (each address may have used it while filling).
    expect(o.reconnectsThroughTls).toBeLessThanOrEqual(FLOOD.length);
    expect(o.known).toEqual([ALICE, ALICE, ALICE]);
    expect(o.newUser).toBe('certificate');
    expect(o.moved).toEqual([ALICE, ALICE, ALICE]);
  });
});

describe('can fail: the priority switched off (the behaviour before)', () => {
  it('every reconnection of the flood costs a TLS handshake', async () => {
    const server = await serverWith('no-admission-priority');
    const o = await scenario(server);
    process.stdout.write(`priority off: ${JSON.stringify(o)}\n`);
    expect(o.reconnectsThroughTls).toBeGreaterThan(FLOOD.length);
    expect(o.reconnectsThroughTls).toBe(FLOOD.length * RECONNECTS);
  });
});
