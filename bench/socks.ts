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
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Socket } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { SocksClient } from 'socks';
import { profileArgs } from './connections';
import {
  connectTcp, cpuMs, emit, Endpoints, firstByte, INSPECT_ARGS, memoryAfterGc, mapLimit, note, percentile, pushToSink, registerHome, round, runStandalone,
  rssKb, sleep, startAgent, startLoopbackPeer, startProgram, startServer, tempDir, treeCpuMs, type AgentHandle, type LoopbackPeer, type Proc, type ServerHandle,
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

export interface SocksWorld {
  peer: LoopbackPeer;
  servers: ServerHandle[];
  alice: AgentHandle;
  bob: AgentHandle;
  stop(): Promise<void>;
}

/** inspect: start the agents with INSPECT_ARGS, for memoryAfterGc. */
export async function startSocksWorld(inspect = false): Promise<SocksWorld> {
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
  return socksVia(world.alice.socksPort, 'bob.b.test.q2q', port);
}

async function socksVia(proxyPort: number, host: string, port: number): Promise<Socket> {
  const { socket } = await SocksClient.createConnection({
    proxy: { host: '127.0.0.1', port: proxyPort, type: 5 },
    command: 'connect',
    destination: { host, port },
    timeout: SOCKS_TIMEOUT_MS,
  });
  return socket;
}

// ---- new-connection cost against ssh -D ----

/** Sequential SOCKS connects per case and round (a browser's small requests, one after another). */
const NEW_CONNECTS = 50;
const NEW_CONNECT_ROUNDS = 4;
const SSH_READY_MS = 15_000;

export interface SshProxy {
  socksPort: number;
  /** ssh and the sshd processes serving it, for their CPU time. */
  pids(): number[];
  stop(): Promise<void>;
}

function keygen(file: string): void {
  const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', file], { stdio: 'ignore' });
  if (r.status !== 0) throw new Error(`bench: ssh-keygen -f ${file} failed (${r.error?.message ?? `exit ${r.status}`})`);
}

/**
 * OpenSSH's dynamic forward as the baseline: a throw-away sshd on loopback
 * (its own host key, key-only auth, run per connection in inetd mode, so no
 * port is picked up front) and `ssh -D 127.0.0.1:<port> -N` to it.
 */
export async function startSshProxy(): Promise<SshProxy> {
  const dir = tempDir('sshd');
  fs.mkdirSync('/run/sshd', { recursive: true });
  const hostKey = path.join(dir, 'host_key');
  const userKey = path.join(dir, 'user_key');
  keygen(hostKey);
  keygen(userKey);
  fs.copyFileSync(`${userKey}.pub`, path.join(dir, 'authorized_keys'));
  const config = path.join(dir, 'sshd_config');
  fs.writeFileSync(config, [
    `HostKey ${hostKey}`, 'PidFile none', 'UsePAM no', 'StrictModes no', 'PermitRootLogin yes', 'PasswordAuthentication no',
    'KbdInteractiveAuthentication no', 'PubkeyAuthentication yes', `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`, 'AllowTcpForwarding yes', '',
  ].join('\n'));
  const sshds: Proc[] = [];
  const server = net.createServer({ pauseOnConnect: true }, (socket) => {
    // sshd turns Nagle off only for sessions with a tty; -D has none. Off here, on the
    // descriptor sshd inherits, so ssh is not timed against the peer's delayed ACK.
    socket.setNoDelay(true);
    sshds.push(startProgram('/usr/sbin/sshd', ['-i', '-e', '-f', config], { stdio: [socket, socket, 'pipe'] }));
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const sshdPort = (server.address() as net.AddressInfo).port;
  // A free port for -D: bound and released here; ssh binds it a moment later.
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const socksPort = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const ssh = startProgram('ssh', [
    '-F', '/dev/null', '-i', userKey, '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-o', `UserKnownHostsFile=${path.join(dir, 'known_hosts')}`,
    '-o', 'StrictHostKeyChecking=accept-new', '-o', 'ExitOnForwardFailure=yes', '-N', '-D', `127.0.0.1:${socksPort}`, '-p', String(sshdPort), `${os.userInfo().username}@127.0.0.1`,
  ]);
  const deadline = Date.now() + SSH_READY_MS;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(socksPort, '127.0.0.1', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (up) break;
    if (Date.now() > deadline || ssh.child.exitCode !== null) throw new Error(`bench: ssh -D not listening after ${SSH_READY_MS} ms:\n${ssh.output()}`);
    await sleep(50);
  }
  return {
    socksPort,
    pids: () => [ssh.pid, ...sshds.map((p) => p.pid)],
    stop: async () => {
      await ssh.stop();
      server.close();
      await Promise.all(sshds.map((p) => p.stop()));
    },
  };
}

/** Milliseconds from the SOCKS connect to the first byte of the hello service, `count` in a row. */
async function newConnections(open: () => Promise<Socket>, count: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    const socket = await open();
    socket.on('error', () => undefined);
    await firstByte(socket);
    times.push(performance.now() - t0);
    socket.destroy();
  }
  return times;
}

/**
 * {"bench":"socks-new-connection",…}: the cost of a new connection through
 * the SOCKS proxy, as a browser's burst of small requests pays it, against
 * ssh -D in the same run (both reach the same loopback hello service: one
 * byte at once). `speedVsSsh` = ssh's p50 ÷ ours (issue 12: >= 1.0).
 * `peerSessions` says which path the agents used (VERTEX_PEER_SESSIONS=0 in
 * the environment: the per-connection path, for the before figure).
 */
export async function benchSocksNewConnection(): Promise<void> {
  const world = await startSocksWorld();
  let ssh: SshProxy | null = null;
  try {
    ssh = await startSshProxy();
    const viaSsh = ssh.socksPort;
    const sshPids = ssh.pids();
    const ours: number[] = [];
    const theirs: number[] = [];
    // CPU milliseconds spent during each case's connects: the two agents against ssh and sshd,
    // and this process (the SOCKS client, the same code for both) in each case.
    const cpu = { agents: 0, ssh: 0, clientOurs: 0, clientSsh: 0 };
    const agentCpu = () => cpuMs(world.alice.proc.pid) + cpuMs(world.bob.proc.pid);
    const sshCpu = () => sshPids.reduce((sum, pid) => sum + treeCpuMs(pid), 0);
    const clientCpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
    // Warm-up: the agent's first connect sets the peer session up; ssh's connection is up already.
    await newConnections(() => socksConnect(world, HELLO_PORT), 3);
    await newConnections(() => socksVia(viaSsh, '127.0.0.1', world.peer.helloPort), 3);
    note(`socks new-connection cost: ${NEW_CONNECT_ROUNDS} rounds of ${NEW_CONNECTS} sequential connects per case`);
    for (let r = 0; r < NEW_CONNECT_ROUNDS; r++) {
      let a = agentCpu();
      let c = clientCpu();
      ours.push(...await newConnections(() => socksConnect(world, HELLO_PORT), NEW_CONNECTS));
      cpu.agents += agentCpu() - a;
      cpu.clientOurs += clientCpu() - c;
      a = sshCpu();
      c = clientCpu();
      theirs.push(...await newConnections(() => socksVia(viaSsh, '127.0.0.1', world.peer.helloPort), NEW_CONNECTS));
      cpu.ssh += sshCpu() - a;
      cpu.clientSsh += clientCpu() - c;
    }
    const p50 = percentile(ours, 50);
    const sshP50 = percentile(theirs, 50);
    const perConnect = (ms: number) => round(ms / ours.length, 2);
    emit({
      bench: 'socks-new-connection', peerSessions: process.env.VERTEX_PEER_SESSIONS !== '0', connects: ours.length,
      p50Ms: round(p50, 2), p99Ms: round(percentile(ours, 99), 1), sshP50Ms: round(sshP50, 2), sshP99Ms: round(percentile(theirs, 99), 1),
      speedVsSsh: round(sshP50 / p50, 2), target: 1.0,
      cpuMsPerConnect: { agents: perConnect(cpu.agents), sshAndSshd: perConnect(cpu.ssh), clientOurs: perConnect(cpu.clientOurs), clientSsh: perConnect(cpu.clientSsh) },
      loadAverage: os.loadavg().map((l) => round(l, 2)),
    });
  } finally {
    await ssh?.stop();
    await world.stop();
  }
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

if (require.main === module) runStandalone({ throughput: benchSocksThroughput, 'agent-memory': benchAgentMemory, 'new-connection': benchSocksNewConnection }, process.argv[2]);
