/**
 * The stream multiplexer, measured against its alternatives in one run
 * (docs/multiplexing.md): our own framing (q2q/transport/mux.ts) and HTTP/2
 * CONNECT streams (RFC 9113 §8.5, node:http2, which is nghttp2 in C), both
 * over one TLS 1.3 connection, against plain TLS connections.
 *
 * This process is the client; a child process (this file, argument `child`)
 * is the server: a TLS listener that, by ALPN, counts bytes (sink), sends
 * one byte then echoes (hello), or runs a mux or HTTP/2 session whose
 * streams do the same by service name.
 *
 * Figures (one JSON line each): one stream's throughput against plain TLS;
 * 20 parallel streams against 20 TLS connections, with fairness (slowest /
 * fastest stream); the time to open a stream and read its first byte
 * against a new TLS connection; native and JS memory per idle stream at
 * 1,000 streams, on both ends.
 *
 *   node --expose-gc dist/bench/mux.js
 */
import { fork, type ChildProcess } from 'node:child_process';
import * as http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { tuneGcForBulk } from '../cli/gc-tuning';
import { createDomainCa } from '../q2q/identity';
import { MuxSession } from '../q2q/transport/mux';
import { cpuMs, emit, note, percentile, pushToSink, round } from './harness';

const SECONDS = Number(process.env.VERTEX_BENCH_SECONDS ?? 1.5);
const ROUNDS = 3;
/** One stream: more rounds, paired (TLS then mux then h2, back to back), after an uncounted one. */
const ONE_ROUNDS = 4;
/**
 * The first MB through a fresh session runs in V8's baseline tier (the mux code on
 * both ends is JavaScript; plain TLS is mostly C++ in Node), which made single runs
 * of the one-stream figure read 0.5–0.6 where the next rounds read 0.8–1.2 (bench/README.md,
 * "Bulk through the agents"); `coldVsTls` keeps that round.
 */
const ONE_WARM_ROUNDS = 1;
const PARALLEL = 20;
const OPENS = 200;
const IDLE_STREAMS = Number(process.env.VERTEX_BENCH_IDLE_STREAMS ?? 1000);
const H2_WINDOW = 1024 * 1024;
const H2_SETTINGS: http2.Settings = { initialWindowSize: H2_WINDOW, maxFrameSize: 64 * 1024, maxConcurrentStreams: 100_000 };
const H2_SESSION_WINDOW = 2 ** 31 - 1;

// ---- the server child ----

function serveSink(stream: Duplex): void {
  let n = 0;
  stream.on('error', () => undefined);
  stream.on('data', (d: Buffer) => { n += d.length; });
  stream.on('end', () => stream.end(`${n}\n`));
}

function serveHello(stream: Duplex): void {
  stream.on('error', () => undefined);
  stream.write('!');
  stream.pipe(stream);
}

function serve(service: string, stream: Duplex): void {
  if (service === 'sink') serveSink(stream);
  else if (service === 'hello') serveHello(stream);
  else stream.on('error', () => undefined);
}

async function runChild(): Promise<void> {
  const { keyPem, certPem } = await new Promise<{ keyPem: string; certPem: string }>((resolve) => process.once('message', (m) => resolve(m as { keyPem: string; certPem: string })));
  const server = tls.createServer({ key: keyPem, cert: certPem, minVersion: 'TLSv1.3', ALPNProtocols: ['sink', 'hello', 'idle', 'mux', 'h2'], allowHalfOpen: true }, (socket) => {
    socket.setNoDelay(true);
    socket.on('error', () => undefined);
    switch (socket.alpnProtocol) {
      case 'sink':
        return serveSink(socket);
      case 'hello':
        return serveHello(socket);
      case 'idle':
        return;
      case 'mux': {
        const session = new MuxSession(socket, { initiator: false, onOpen: (request) => serve(request.service, request.accept()) });
        session.on('close', () => undefined);
        return;
      }
      case 'h2': {
        const session = http2.performServerHandshake(socket, { settings: H2_SETTINGS });
        session.on('error', () => undefined);
        session.once('remoteSettings', () => session.setLocalWindowSize(H2_SESSION_WINDOW));
        session.on('stream', (stream, headers) => {
          stream.respond({ ':status': 200 }, { endStream: false });
          serve(String(headers[':authority']).split(':')[0] ?? '', stream);
        });
        return;
      }
      default:
        socket.destroy();
    }
  });
  server.listen(0, '127.0.0.1', () => process.send?.({ port: (server.address() as AddressInfo).port }));
  process.on('message', (m) => {
    if ((m as { op?: string }).op !== 'memory') return;
    global.gc?.();
    global.gc?.();
    setTimeout(() => {
      global.gc?.();
      const u = process.memoryUsage();
      process.send?.({ rss: u.rss, heap: u.heapUsed });
    }, 200);
  });
  process.once('disconnect', () => process.exit(0));
}

// ---- the client ----

function connect(port: number, alpn: string): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, minVersion: 'TLSv1.3', rejectUnauthorized: false, ALPNProtocols: [alpn] });
    s.setNoDelay(true);
    s.once('secureConnect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

interface Opener {
  name: string;
  open(service: string): Promise<Duplex>;
  close(): void;
}

async function muxOpener(port: number): Promise<Opener> {
  const socket = await connect(port, 'mux');
  const session = new MuxSession(socket, { initiator: true });
  session.on('close', () => undefined);
  return { name: 'mux', open: (service) => session.open(service), close: () => session.close() };
}

async function h2Opener(port: number): Promise<Opener> {
  const socket = await connect(port, 'h2');
  const session = http2.connect('http://bench', { createConnection: () => socket, settings: H2_SETTINGS });
  session.on('error', () => undefined);
  await new Promise<void>((resolve) => session.once('remoteSettings', () => resolve()));
  session.setLocalWindowSize(H2_SESSION_WINDOW);
  return {
    name: 'h2',
    open: (service) => new Promise((resolve, reject) => {
      const stream = session.request({ ':method': 'CONNECT', ':authority': `${service}:1` }, { endStream: false });
      stream.once('response', (headers) => {
        if (headers[':status'] === 200) resolve(stream);
        else reject(new Error(`h2 status ${headers[':status']}`));
      });
      stream.once('error', reject);
    }),
    close: () => session.destroy(),
  };
}

function tlsOpener(port: number): Opener {
  return { name: 'tls', open: (service) => connect(port, service), close: () => undefined };
}

/** Bytes each of `n` parallel streams moves in `ms`, every stream pushing at once. */
async function parallel(open: () => Promise<Duplex>, n: number, ms: number): Promise<number[]> {
  const streams = await Promise.all(Array.from({ length: n }, open));
  return Promise.all(streams.map((s) => pushToSink(s, ms)));
}

async function openLatency(opener: Opener, count: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < count + 5; i++) {
    const t0 = performance.now();
    const stream = await opener.open('hello');
    await new Promise<void>((resolve, reject) => {
      stream.once('data', () => resolve());
      stream.once('error', reject);
    });
    if (i >= 5) times.push(performance.now() - t0);
    stream.destroy();
  }
  return times;
}

function childMemory(child: ChildProcess): Promise<{ rss: number; heap: number }> {
  return new Promise((resolve) => {
    child.once('message', (m) => resolve(m as { rss: number; heap: number }));
    child.send({ op: 'memory' });
  });
}

async function ownMemory(): Promise<{ rss: number; heap: number }> {
  global.gc?.();
  global.gc?.();
  await new Promise((r) => setTimeout(r, 200));
  global.gc?.();
  const u = process.memoryUsage();
  return { rss: u.rss, heap: u.heapUsed };
}

async function idleMemory(child: ChildProcess, make: () => Promise<Opener>, n: number): Promise<Record<string, number>> {
  const opener = await make();
  const warm = await Promise.all(Array.from({ length: 10 }, () => opener.open('idle')));
  for (const s of warm) s.destroy();
  await new Promise((r) => setTimeout(r, 300));
  const [serverBefore, clientBefore] = [await childMemory(child), await ownMemory()];
  const streams: Duplex[] = [];
  for (let i = 0; i < n; i += 100) streams.push(...await Promise.all(Array.from({ length: Math.min(100, n - i) }, () => opener.open('idle'))));
  await new Promise((r) => setTimeout(r, 500));
  const [serverAfter, clientAfter] = [await childMemory(child), await ownMemory()];
  const kb = (a: number, b: number) => round((b - a) / 1024 / n, 2);
  const out = {
    serverRssKBPerStream: kb(serverBefore.rss, serverAfter.rss), serverHeapKBPerStream: kb(serverBefore.heap, serverAfter.heap),
    clientRssKBPerStream: kb(clientBefore.rss, clientAfter.rss), clientHeapKBPerStream: kb(clientBefore.heap, clientAfter.heap),
  };
  for (const s of streams) s.destroy();
  opener.close();
  return out;
}

async function main(): Promise<void> {
  if (!global.gc) note('mux: run with --expose-gc for the memory figures');
  const { keyPem, certPem } = await createDomainCa('bench.test');
  const child = fork(__filename, ['child'], { execArgv: ['--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  try {
    const port = await new Promise<number>((resolve) => {
      child.once('message', (m) => resolve((m as { port: number }).port));
      child.send({ keyPem, certPem });
    });
    const ms = SECONDS * 1000;
    const mux = await muxOpener(port);
    const h2 = await h2Opener(port);
    const plain = tlsOpener(port);

    note(`mux: one stream, ${ONE_WARM_ROUNDS} + ${ONE_ROUNDS} rounds of ${SECONDS} s`);
    const one: Record<string, number[]> = { tls: [], mux: [], h2: [] };
    // CPU ms per MB of this process (the sending end) and of the child (the receiving end), per case.
    const cpu: Record<string, { client: number[]; server: number[] }> = { tls: { client: [], server: [] }, mux: { client: [], server: [] }, h2: { client: [], server: [] } };
    const cold: Record<string, number> = {};
    const ownCpuMs = () => {
      const u = process.cpuUsage();
      return (u.user + u.system) / 1000;
    };
    for (let r = 0; r < ONE_WARM_ROUNDS + ONE_ROUNDS; r++) {
      for (const o of [plain, mux, h2]) {
        const stream = await o.open('sink');
        if (r < ONE_WARM_ROUNDS) {
          // A third of a round is enough for V8 to optimize the hot paths.
          cold[o.name] = await pushToSink(stream, ms / 3);
          continue;
        }
        const [c0, s0, t0] = [ownCpuMs(), cpuMs(child.pid as number), performance.now()];
        const rate = await pushToSink(stream, ms);
        const mb = (rate * (performance.now() - t0)) / 1000;
        one[o.name]?.push(rate);
        cpu[o.name]?.client.push((ownCpuMs() - c0) / mb);
        cpu[o.name]?.server.push((cpuMs(child.pid as number) - s0) / mb);
      }
    }
    const cpuOf = (name: string) => ({ client: round(percentile(cpu[name]?.client as number[], 50), 2), server: round(percentile(cpu[name]?.server as number[], 50), 2) });
    const tlsRates = one.tls as number[];
    const tls1 = percentile(tlsRates, 50);
    for (const name of ['mux', 'h2']) {
      const rates = one[name] as number[];
      const rate = percentile(rates, 50);
      // Each round's stream ÷ the TLS connection measured just before it: the spread of the figure.
      const perRound = rates.map((v, i) => round(v / (tlsRates[i] as number), 2));
      emit({
        bench: 'mux-one-stream', mux: name, MBps: round(rate, 1), tlsMBps: round(tls1, 1), vsTls: round(rate / tls1),
        vsTlsPerRound: perRound, vsTlsMin: Math.min(...perRound), vsTlsMax: Math.max(...perRound),
        coldVsTls: round((cold[name] as number) / (cold.tls as number), 2),
        cpuMsPerMB: cpuOf(name), tlsCpuMsPerMB: cpuOf('tls'),
        runs: ONE_ROUNDS, warmRuns: ONE_WARM_ROUNDS, seconds: SECONDS,
        ...(name === 'mux' && { target: 0.8 }), loadAverage: os.loadavg().map((l) => round(l, 2)),
      });
    }

    note(`mux: ${PARALLEL} parallel streams, ${ROUNDS} rounds`);
    const many: Record<string, { total: number[]; fairness: number[] }> = { tls: { total: [], fairness: [] }, mux: { total: [], fairness: [] }, h2: { total: [], fairness: [] } };
    for (let r = 0; r < ROUNDS; r++) {
      for (const o of [plain, mux, h2]) {
        const rates = await parallel(() => o.open('sink'), PARALLEL, ms);
        many[o.name]?.total.push(rates.reduce((a, b) => a + b, 0));
        many[o.name]?.fairness.push(Math.min(...rates) / Math.max(...rates));
      }
    }
    const tlsN = percentile(many.tls?.total as number[], 50);
    for (const name of ['tls', 'mux', 'h2']) {
      const total = percentile(many[name]?.total as number[], 50);
      emit({
        bench: 'mux-parallel', mux: name, streams: PARALLEL, totalMBps: round(total, 1), tlsTotalMBps: round(tlsN, 1), vsTls: round(total / tlsN),
        fairness: round(percentile(many[name]?.fairness as number[], 50)), fairnessMin: round(Math.min(...(many[name]?.fairness as number[]))),
        ...(name === 'mux' && { targetFairness: 0.5 }), loadAverage: os.loadavg().map((l) => round(l, 2)),
      });
    }

    note(`mux: ${OPENS} sequential stream opens with a first byte`);
    const tlsOpen = await openLatency(plain, OPENS);
    for (const o of [plain, mux, h2]) {
      const times = o === plain ? tlsOpen : await openLatency(o, OPENS);
      emit({ bench: 'mux-open', mux: o.name, opens: OPENS, p50Ms: round(percentile(times, 50)), p99Ms: round(percentile(times, 99)), tlsP50Ms: round(percentile(tlsOpen, 50)) });
    }
    mux.close();
    h2.close();

    if (global.gc) {
      note(`mux: memory per idle stream at ${IDLE_STREAMS} streams`);
      for (const [name, make] of [['mux', () => muxOpener(port)], ['h2', () => h2Opener(port)], ['tls', async () => tlsOpener(port)]] as const) {
        emit({ bench: 'mux-idle-memory', mux: name, streams: IDLE_STREAMS, ...await idleMemory(child, make, IDLE_STREAMS) });
      }
    }
  } finally {
    child.disconnect();
  }
}

if (require.main === module) {
  // Both ends run with the agent's GC setting (cli/gc-tuning.ts), as `vertex agent`
  // does; VERTEX_GC_TUNING=0 (inherited by the child) measures with V8's defaults.
  tuneGcForBulk();
  if (process.argv[2] === 'child') {
    runChild().catch((err: unknown) => {
      process.stderr.write(`bench mux child: ${String(err)}\n`);
      process.exit(1);
    });
  } else {
    main().then(() => process.exit(0), (err: unknown) => {
      process.stderr.write(`bench mux: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(1);
    });
  }
}


