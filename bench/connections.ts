/**
 * Q2Q connections (issue 3's bench items), each a ratio against raw loopback
 * TCP measured in the same run:
 *
 *   {"bench":"raw-tcp-throughput","MBps":…}                       the baseline, one stream
 *   {"bench":"tls-throughput","MBps":…,"ratio":…}                  plain Node TLS 1.3: a reference ceiling
 *   {"bench":"tunnel-throughput","route":"tcp","MBps":…,"ratio":…} direct-tcp Q2Q stream / raw
 *   {"bench":"tunnel-throughput","route":"relay",…}                relay / raw, and vsTcpTunnel: relay / tcp tunnel
 *   {"bench":"ttfb","route":"raw"|"tcp"|"relay","p50Ms":…,"p99Ms":…,"p50VsRaw":…}
 *   {"bench":"server-rss-per-agent","agents":1000,"KBPerAgent":…}
 *
 * Processes: two real `vertex server`s (a.test, b.test; b.test checks
 * alice's certificate against a.test's CA, as in issue 3). The sending side
 * (alice@a.test, a library Q2QNode) runs in this process; the receiving
 * side (bob@b.test listening on all routes, carol@b.test on `relay` only)
 * runs in a child process (bench/listener-child.ts), and so does the raw TCP sink, so the receiving
 * end never shares an event loop with the sender in either case.
 */
import type { Duplex } from 'node:stream';
import { Q2QNode } from '../q2q/negotiate/node';
import { MAX_DEVICES_PER_ADDRESS } from '../q2q/control/protocol';
import type { Identity, Q2QStream, RouteName } from '../q2q/negotiate/types';
import {
  BENCH_LIMITS, connectTcp, connectTls, cpuMs, emit, Endpoints, firstByte, forkBench, INSPECT_ARGS, memoryAfterGc, mapLimit, MemoryTrust, nodeOptions, note, percentile,
  pushToSink, registerMany, round, rssKb, runStandalone, sleep, startLoopbackPeer, startServer, type Proc,
} from './harness';
import { startListeners } from './listener-child';

/** How long each throughput run sends. */
const THROUGHPUT_MS = Number(process.env.VERTEX_BENCH_SECONDS ?? 1.5) * 1000;
const THROUGHPUT_RUNS = 3;
const TTFB_CONNECTS = 100;
const TTFB_WARMUP = 3;
const CONNECT_TIMEOUT_MS = 15_000;

// ---- throughput and time to first byte ----

/**
 * Median MB/s of each case over THROUGHPUT_RUNS rounds; each round runs
 * every case once, so drift on a shared machine touches all cases alike.
 */
async function throughputRounds(cases: Record<string, () => Promise<Duplex>>): Promise<Record<string, number>> {
  const rates: Record<string, number[]> = {};
  for (let round = 0; round < THROUGHPUT_RUNS; round++) {
    for (const [name, open] of Object.entries(cases)) {
      (rates[name] ??= []).push(await pushToSink(await open(), THROUGHPUT_MS));
    }
  }
  return Object.fromEntries(Object.entries(rates).map(([name, r]) => [name, percentile(r, 50)]));
}

/** Milliseconds from the connect call to the service's first byte, over `count` sequential connects. */
async function timeToFirstByte(open: () => Promise<Duplex>, count: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < TTFB_WARMUP + count; i++) {
    const t0 = performance.now();
    const stream = await open();
    await firstByte(stream);
    if (i >= TTFB_WARMUP) times.push(performance.now() - t0);
    stream.destroy();
  }
  return times;
}

export async function benchConnections(): Promise<void> {
  const a = await startServer(['a.test'], { nodeArgs: profileArgs('server-a') });
  const b = await startServer(['b.test'], { resolve: { 'a.test': a.port }, nodeArgs: profileArgs('server-b') });
  const endpoints = new Endpoints();
  endpoints.set('a.test', a.port);
  endpoints.set('b.test', b.port);
  const trust = new MemoryTrust();
  const [alice] = await registerMany(['alice@a.test'], endpoints, trust, 1);
  const [bob, carol, dave] = await registerMany(['bob@b.test', 'carol@b.test', 'dave@b.test'], endpoints, trust, 3);
  if (!alice || !bob || !carol || !dave) throw new Error('bench: registration returned nothing');
  // Any key and certificate will do for the plain-TLS reference sink; carol's are at hand.
  const peer = await startLoopbackPeer(carol);
  const at = Object.fromEntries([...endpoints.map].map(([d, e]) => [d, e.port]));
  const listeners = await startListeners([
    { identity: bob, endpoints: at, routes: ['tcp', 'relay'] },
    { identity: carol, endpoints: at, routes: ['relay'] },
    // The per-connection path (before issue 12), measured beside the peer sessions.
    { identity: dave, endpoints: at, routes: ['tcp'], peerSessions: false },
  ], profileArgs('listeners'));
  // PTCP has its own figures; keep it out of these so that tcp and relay are what is measured.
  const caller = new Q2QNode(alice, nodeOptions(endpoints, trust, { routes: ['tcp', 'relay'], connectTimeoutMs: CONNECT_TIMEOUT_MS, peerSessions: true }));
  const perConnection = new Q2QNode(alice, nodeOptions(endpoints, trust, { routes: ['tcp'], connectTimeoutMs: CONNECT_TIMEOUT_MS, peerSessions: false }));
  const connect = async (target: string, route: RouteName, node = caller): Promise<Q2QStream> => {
    const stream = await node.connect(target);
    if (stream.route !== route) {
      stream.destroy();
      throw new Error(`bench: ${target} came over ${stream.route}, not ${route}`);
    }
    return stream;
  };
  try {
    note(`throughput: ${THROUGHPUT_RUNS} rounds of ${THROUGHPUT_MS / 1000} s per case`);
    const rates = await throughputRounds({
      raw: () => connectTcp(peer.sinkPort),
      tls: () => connectTls(peer.tlsSinkPort),
      tcp: () => connect('bob@b.test:sink', 'tcp'),
      relay: () => connect('carol@b.test:sink', 'relay'),
    });
    const raw = rates.raw as number;
    const seconds = THROUGHPUT_MS / 1000;
    emit({ bench: 'raw-tcp-throughput', MBps: round(raw, 1), seconds, runs: THROUGHPUT_RUNS });
    // Not a target: plain Node TLS 1.3 over loopback, the ceiling for any TLS tunnel written in Node here.
    emit({ bench: 'tls-throughput', MBps: round(rates.tls as number, 1), rawMBps: round(raw, 1), ratio: round((rates.tls as number) / raw), seconds });
    for (const [route, targetRatio] of [['tcp', 0.25], ['relay', 0.2]] as const) {
      const rate = rates[route] as number;
      emit({
        bench: 'tunnel-throughput', route, MBps: round(rate, 1), rawMBps: round(raw, 1), ratio: round(rate / raw),
        vsTls: round(rate / (rates.tls as number)), target: targetRatio, seconds,
        // Issue 12: the relay at >= 0.5 of the direct tcp tunnel measured in the same rounds.
        ...(route === 'relay' && { vsTcpTunnel: round(rate / (rates.tcp as number)), targetVsTcpTunnel: 0.5 }),
      });
    }

    note(`time to first byte: ${TTFB_CONNECTS} sequential connects per case`);
    const rawTimes = await timeToFirstByte(() => connectTcp(peer.helloPort), TTFB_CONNECTS);
    const rawP50 = percentile(rawTimes, 50);
    emit({ bench: 'ttfb', route: 'raw', connects: TTFB_CONNECTS, p50Ms: round(rawP50), p99Ms: round(percentile(rawTimes, 99)) });
    // The per-connection path first: every connect an inbound, a TLS handshake and a claim.
    const before = await timeToFirstByte(() => connect('dave@b.test:hello', 'tcp', perConnection), TTFB_CONNECTS);
    const beforeP50 = percentile(before, 50);
    emit({
      bench: 'ttfb', route: 'tcp', peerSessions: false, connects: TTFB_CONNECTS, p50Ms: round(beforeP50, 1), p99Ms: round(percentile(before, 99), 1),
      rawP50Ms: round(rawP50), p50VsRaw: round(beforeP50 / rawP50, 1),
    });
    // Peer sessions: the warm-up's first connect sets the session up; every counted one is the
    // second or later connection to the same peer, a stream on that session (issue 12: <= 2 ms).
    for (const [route, target, targetMs] of [['tcp', 'bob@b.test:hello', 2], ['relay', 'carol@b.test:hello', 2]] as const) {
      const times = await timeToFirstByte(() => connect(target, route), TTFB_CONNECTS);
      const p50 = percentile(times, 50);
      emit({
        bench: 'ttfb', route, peerSessions: true, connects: TTFB_CONNECTS, p50Ms: round(p50, 2), p99Ms: round(percentile(times, 99), 1),
        rawP50Ms: round(rawP50), p50VsRaw: round(p50 / rawP50, 1), ...(route === 'tcp' && { perConnectionP50Ms: round(beforeP50, 1), speedup: round(beforeP50 / p50, 1) }),
        targetP50Ms: targetMs,
      });
    }
  } finally {
    await Promise.all([caller.stop(), perConnection.stop()]);
    listeners.child.disconnect();
    await Promise.race([listeners.exited, sleep(5000)]);
    await Promise.all([listeners.stop(), a.proc.stop(), b.proc.stop(), peer.proc.stop()]);
  }
}

// ---- server memory per idle agent ----

const AGENTS = Number(process.env.VERTEX_BENCH_AGENTS ?? 1000);
// Sessions of one identity are its devices, and a server lets at most MAX_DEVICES_PER_ADDRESS listen at once.
const AGENT_IDENTITIES = Math.min(AGENTS, Math.max(Number(process.env.VERTEX_BENCH_AGENT_IDENTITIES ?? 100), Math.ceil(AGENTS / MAX_DEVICES_PER_ADDRESS)));
const AGENT_START_PARALLEL = 16;
/**
 * Agent sessions per child process. Each session holds a TCP socket and the
 * node's UDP socket (it learns its reflexive address even on relay only), so
 * 10,000 in one process would run out of descriptors at 20,000.
 */
const AGENTS_PER_PROCESS = 4000;
const SETTLE_MS = 2000;
interface AgentsStart {
  endpoints: Record<string, number>;
  identities: Identity[];
  /** This child's sessions are numbers first .. first + count - 1 of the run. */
  first: number;
  count: number;
}

/** Child: `count` idle agent sessions, round-robin over `identities`, until the parent disconnects. */
async function runAgentsChild(): Promise<void> {
  const start = await new Promise<AgentsStart>((resolve) => process.once('message', (m) => resolve(m as AgentsStart)));
  const endpoints = new Endpoints();
  for (const [domain, port] of Object.entries(start.endpoints)) endpoints.set(domain, port);
  const trust = new MemoryTrust();
  // Every node made is kept here at once, so that a failure part-way still stops them all.
  const nodes = new Set<Q2QNode>();
  process.once('disconnect', () => {
    void mapLimit([...nodes], 64, (n) => n.stop()).then(() => process.exit(0));
  });
  await mapLimit(Array.from({ length: start.count }, (_, i) => i), AGENT_START_PARALLEL, async (i) => {
    // Session n is identity n mod k's device n div k: each a device of its own, as on a server with
    // many users' laptops. The same device twice would replace the first session (issue 13).
    const n = start.first + i;
    const k = start.identities.length;
    const node = new Q2QNode(start.identities[n % k] as Identity, nodeOptions(endpoints, trust, { routes: ['relay'], device: `d${Math.floor(n / k)}` }));
    nodes.add(node);
    node.expose('echo', { onConnection: (s) => s.destroy() });
    await node.start();
    if (node.homeState !== 'online') throw new Error(`bench: agent session ${i} is ${node.homeState}`);
  });
  process.send?.({ online: [...nodes].filter((n) => n.homeState === 'online').length });
}

/** Starts `count` sessions in child processes; resolves with the children once all are online. */
async function startAgentSessions(endpoints: Endpoints, identities: Identity[], count: number): Promise<Proc[]> {
  const children: Proc[] = [];
  const ready: Array<Promise<void>> = [];
  for (let done = 0; done < count; done += AGENTS_PER_PROCESS) {
    const proc = forkBench(__filename, ['agents']);
    children.push(proc);
    ready.push(new Promise<void>((resolve, reject) => {
      proc.child.once('message', () => resolve());
      void proc.exited.then(() => reject(new Error(`bench: agent sessions child exited:\n${proc.output().slice(-2000)}`)));
    }));
    proc.child.send({
      endpoints: Object.fromEntries([...endpoints.map].map(([d, e]) => [d, e.port])),
      identities,
      first: done,
      count: Math.min(AGENTS_PER_PROCESS, count - done),
    } satisfies AgentsStart);
  }
  await Promise.all(ready);
  return children;
}

async function stopAgentSessions(children: readonly Proc[]): Promise<void> {
  for (const c of children) if (c.child.connected) c.child.disconnect();
  await Promise.race([Promise.all(children.map((c) => c.exited)), sleep(30_000)]);
  await Promise.all(children.map((c) => c.stop()));
}

/**
 * RSS of one `vertex server` process before and after AGENTS idle agent
 * sessions connect (each a Q2QNode home session: mutual TLS with a user
 * certificate, hello, who-am-i, listen with one service, then idle with its
 * 25 s keepalive), run in child processes. Registering costs a scrypt hash
 * per user, so the sessions share AGENT_IDENTITIES identities round-robin;
 * the server keeps every session open, and the newest session of a user is
 * the one listening.
 *
 * The users are registered first and the server is then restarted on the
 * same data, so the "before" figure carries no registration garbage (scrypt
 * takes 16 MB a hash); ten sessions come and go first so that code paths
 * and TLS contexts are warm in both figures. Both figures are taken right
 * after a forced full garbage collection (memoryAfterGc); rssAfterNoGcKB is
 * the same moment without it.
 */
export async function benchServerMemory(): Promise<void> {
  const endpoints = new Endpoints();
  const trust = new MemoryTrust();
  const first = await startServer(['m.test']);
  endpoints.set('m.test', first.port);
  note(`server memory: registering ${AGENT_IDENTITIES} users`);
  const t0 = performance.now();
  const identities = await registerMany(Array.from({ length: AGENT_IDENTITIES }, (_, i) => `agent${i}@m.test`), endpoints, trust, 8);
  const registerMs = performance.now() - t0;
  await first.proc.stop();
  // The default max_connections (10,000) would refuse the last sessions of a 10,000-agent run.
  const server = await startServer(['m.test'], {
    dataDir: first.dataDir, nodeArgs: [...INSPECT_ARGS, ...profileArgs('server')], yaml: `limits: { max_connections: ${AGENTS + 1000}, ${BENCH_LIMITS} }`,
  });
  endpoints.set('m.test', server.port);
  let sessions: Proc[] = [];
  try {
    await stopAgentSessions(await startAgentSessions(endpoints, identities, 10));
    await sleep(SETTLE_MS);
    const before = await memoryAfterGc(server.proc);
    note(`server memory: connecting ${AGENTS} agent sessions`);
    const t1 = performance.now();
    const cpuBefore = cpuMs(server.proc.pid);
    sessions = await startAgentSessions(endpoints, identities, AGENTS);
    const connectMs = performance.now() - t1;
    // The server's own CPU per session (TLS handshake, certificate check, hello, who-am-i, listen):
    // unlike sessionsPerSecond, it does not depend on the clients sharing the cores.
    const serverCpuMs = cpuMs(server.proc.pid) - cpuBefore;
    await sleep(SETTLE_MS);
    const afterNoGc = rssKb(server.proc.pid);
    const after = await memoryAfterGc(server.proc);
    emit({
      bench: 'server-rss-per-agent', agents: AGENTS, identities: identities.length, clientProcesses: sessions.length,
      rssBeforeKB: before.rssKB, rssAfterKB: after.rssKB, rssAfterNoGcKB: afterNoGc,
      KBPerAgent: round((after.rssKB - before.rssKB) / AGENTS, 1), targetKB: 100,
      heapKBPerAgent: round((after.heapKB - before.heapKB) / AGENTS, 1),
      registerMsPerUser: round(registerMs / identities.length, 1), sessionsPerSecond: round(AGENTS / (connectMs / 1000), 0),
      serverCpuMsPerSession: round(serverCpuMs / AGENTS, 2),
    });
  } finally {
    await stopAgentSessions(sessions);
    await server.proc.stop();
  }
}

/**
 * VERTEX_BENCH_PROFILE=DIR: the named processes write a --cpu-prof profile there when they stop;
 * VERTEX_BENCH_PROFILE_US sets the sampling interval (Node's default is 1000 µs, coarse for a
 * connect that takes a few milliseconds).
 */
export function profileArgs(name: string): string[] {
  const dir = process.env.VERTEX_BENCH_PROFILE;
  if (!dir) return [];
  const interval = process.env.VERTEX_BENCH_PROFILE_US;
  return ['--cpu-prof', '--cpu-prof-dir', dir, '--cpu-prof-name', `${name}-${Date.now()}.cpuprofile`, ...(interval ? ['--cpu-prof-interval', interval] : [])];
}

if (require.main === module) {
  const child = ({ agents: runAgentsChild } as Record<string, () => Promise<void>>)[process.argv[2] ?? ''];
  if (child) {
    child().catch((err: unknown) => {
      process.stderr.write(`bench ${process.argv[2]}: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(1);
    });
  } else {
    runStandalone({ connections: benchConnections, 'server-memory': benchServerMemory }, process.argv[2]);
  }
}
