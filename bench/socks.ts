/**
 * The agent (issue 4's bench items), through real `vertex agent` processes:
 *
 *   {"bench":"socks-throughput","MBps":…,"rawMBps":…,"ratio":…}
 *       one stream: this process → alice's agent (SOCKS5) → direct-tcp Q2Q
 *       tunnel → bob's agent → a TCP sink in a separate process, against
 *       this process → the same sink directly, in the same run;
 *   {"bench":"agent-rss-per-tunnel","tunnels":1000,"KBPerTunnel":…,"exposeKBPerTunnel":…}
 *       RSS of alice's agent (the SOCKS side) before and after TUNNELS idle
 *       SOCKS tunnels to bob's exposed echo service are open; bob's agent
 *       (the expose side) is measured as well.
 *
 * Both agents run on two `vertex server`s (a.test, b.test); bob exposes the
 * loopback peer's services with allow ["*"], and alice's agent maps SOCKS
 * port 9 to "sink" and 7 to "hello" (one byte at once, then echo).
 */
import type { Socket } from 'node:net';
import { SocksClient } from 'socks';
import { profileArgs } from './connections';
import {
  connectTcp, emit, Endpoints, firstByte, INSPECT_ARGS, memoryAfterGc, mapLimit, note, percentile, pushToSink, registerHome, round, runStandalone,
  rssKb, sleep, startAgent, startLoopbackPeer, startServer, type AgentHandle, type LoopbackPeer, type ServerHandle,
} from './harness';

/** How long each throughput run sends. */
const THROUGHPUT_MS = Number(process.env.VERTEX_BENCH_SECONDS ?? 1.5) * 1000;
const THROUGHPUT_RUNS = 3;
const TUNNELS = Number(process.env.VERTEX_BENCH_TUNNELS ?? 1000);
const TUNNEL_OPEN_PARALLEL = 16;
const SOCKS_TIMEOUT_MS = 30_000;
const SETTLE_MS = 2000;
const SINK_PORT = 9;
const HELLO_PORT = 7;

interface SocksWorld {
  peer: LoopbackPeer;
  servers: ServerHandle[];
  alice: AgentHandle;
  bob: AgentHandle;
  stop(): Promise<void>;
}

/** inspect: start the agents with INSPECT_ARGS, for memoryAfterGc. */
async function startSocksWorld(inspect = false): Promise<SocksWorld> {
  const peer = await startLoopbackPeer();
  const a = await startServer(['a.test']);
  const b = await startServer(['b.test'], { resolve: { 'a.test': a.port } });
  const endpoints = new Endpoints();
  endpoints.set('a.test', a.port);
  endpoints.set('b.test', b.port);
  const aliceHome = await registerHome('alice@a.test', endpoints);
  const bobHome = await registerHome('bob@b.test', endpoints);
  const bob = await startAgent(bobHome.home, endpoints, [
    'expose:',
    `  - { service: sink, target: "127.0.0.1:${peer.sinkPort}", allow: ["*"] }`,
    `  - { service: hello, target: "127.0.0.1:${peer.helloPort}", allow: ["*"] }`,
  ].join('\n'), [...(inspect ? INSPECT_ARGS : []), ...profileArgs('agent-bob')]);
  // PTCP has its own figures; the SOCKS tunnel is measured over direct tcp.
  const alice = await startAgent(aliceHome.home, endpoints, `ports: { ${SINK_PORT}: sink, ${HELLO_PORT}: hello }\nroutes: [tcp, relay]`, [...(inspect ? INSPECT_ARGS : []), ...profileArgs('agent-alice')]);
  return {
    peer, servers: [a, b], alice, bob,
    stop: async () => {
      await Promise.all([alice.proc.stop(), bob.proc.stop()]);
      await Promise.all([a.proc.stop(), b.proc.stop(), peer.proc.stop()]);
    },
  };
}

async function socksConnect(world: SocksWorld, port: number): Promise<Socket> {
  const { socket } = await SocksClient.createConnection({
    proxy: { host: '127.0.0.1', port: world.alice.socksPort, type: 5 },
    command: 'connect',
    destination: { host: 'bob.b.test.q2q', port },
    timeout: SOCKS_TIMEOUT_MS,
  });
  return socket;
}

export async function benchSocksThroughput(): Promise<void> {
  const world = await startSocksWorld();
  try {
    note(`socks throughput: ${THROUGHPUT_RUNS} x ${THROUGHPUT_MS / 1000} s per case`);
    const raw: number[] = [];
    const socks: number[] = [];
    // Interleaved, so that drift on a shared machine touches both alike.
    for (let i = 0; i < THROUGHPUT_RUNS; i++) {
      raw.push(await pushToSink(await connectTcp(world.peer.sinkPort), THROUGHPUT_MS));
      socks.push(await pushToSink(await socksConnect(world, SINK_PORT), THROUGHPUT_MS));
    }
    const rawMBps = percentile(raw, 50);
    const MBps = percentile(socks, 50);
    emit({ bench: 'socks-throughput', route: 'tcp', MBps: round(MBps, 1), rawMBps: round(rawMBps, 1), ratio: round(MBps / rawMBps), target: 0.25 });
  } finally {
    await world.stop();
  }
}

/** A SOCKS tunnel to bob's hello service, open once its first byte has come back through it. */
async function openTunnel(world: SocksWorld): Promise<Socket> {
  const socket = await socksConnect(world, HELLO_PORT);
  socket.on('error', () => undefined);
  await firstByte(socket);
  return socket;
}

export async function benchAgentMemory(): Promise<void> {
  const world = await startSocksWorld(true);
  const { alice, bob } = world;
  const tunnels: Socket[] = [];
  try {
    const warm = await mapLimit(Array.from({ length: 10 }), 10, () => openTunnel(world));
    for (const s of warm) s.destroy();
    await sleep(SETTLE_MS);
    const aliceBefore = await memoryAfterGc(alice.proc);
    const bobBefore = await memoryAfterGc(bob.proc);
    note(`agent memory: opening ${TUNNELS} idle SOCKS tunnels`);
    const t0 = performance.now();
    await mapLimit(Array.from({ length: TUNNELS }), TUNNEL_OPEN_PARALLEL, async () => {
      tunnels.push(await openTunnel(world));
    });
    const openMs = performance.now() - t0;
    await sleep(SETTLE_MS);
    const aliceNoGc = rssKb(alice.proc.pid);
    const aliceAfter = await memoryAfterGc(alice.proc);
    const bobAfter = await memoryAfterGc(bob.proc);
    const open = tunnels.filter((s) => !s.destroyed).length;
    emit({
      bench: 'agent-rss-per-tunnel', tunnels: TUNNELS, open,
      rssBeforeKB: aliceBefore.rssKB, rssAfterKB: aliceAfter.rssKB, rssAfterNoGcKB: aliceNoGc,
      KBPerTunnel: round((aliceAfter.rssKB - aliceBefore.rssKB) / TUNNELS, 1), targetKB: 64,
      heapKBPerTunnel: round((aliceAfter.heapKB - aliceBefore.heapKB) / TUNNELS, 1),
      exposeRssBeforeKB: bobBefore.rssKB, exposeRssAfterKB: bobAfter.rssKB,
      exposeKBPerTunnel: round((bobAfter.rssKB - bobBefore.rssKB) / TUNNELS, 1),
      exposeHeapKBPerTunnel: round((bobAfter.heapKB - bobBefore.heapKB) / TUNNELS, 1),
      tunnelsPerSecond: round(TUNNELS / (openMs / 1000), 0),
    });
  } finally {
    for (const s of tunnels) s.destroy();
    // Let the agents see the closes before SIGTERM, so shutdown does not wait on a thousand drains.
    await sleep(500);
    await world.stop();
  }
}

if (require.main === module) runStandalone({ throughput: benchSocksThroughput, 'agent-memory': benchAgentMemory }, process.argv[2]);
