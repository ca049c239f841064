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
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Socket } from 'node:net';
import * as os from 'node:os';
import { SocksClient } from 'socks';
import { profileArgs } from './connections';
import { startDelayLink, type DelayLink } from './delay-link';
import { startNodeFloorPair, startNodeFloorProxy, type NodeFloorProxy } from './node-floor-proxy';
import { SSHD, writeSshdFiles } from './throwaway-sshd';
import {
  connectTcp, contextSwitches, cpuMs, emit, Endpoints, firstByte, INSPECT_ARGS, memoryAfterGc, mapLimit, note, percentile, pushToSink, registerHome, round, runStandalone,
  ROOT, rssKb, sleep, startAgent, startLoopbackPeer, startProgram, startServer, tempDir, treeContextSwitches, treeCpuMs, treeUserCpuMs, userCpuMs, VERTEX, type AgentHandle, type LoopbackPeer, type Proc, type ServerHandle,
} from './harness';

/** How long each throughput run sends. */
const THROUGHPUT_MS = Number(process.env.VERTEX_BENCH_SECONDS ?? 1.5) * 1000;
const THROUGHPUT_RUNS = 5;
/**
 * Uncounted rounds before them: the first MB through freshly started agents run in
 * V8's baseline tier, at 1.5–2.5× the CPU per MB of later ones (bench/README.md,
 * "Bulk through the agents"), while ssh is C; `coldMBps`/`coldVsSsh` keep that round.
 */
const THROUGHPUT_WARM_RUNS = 1;
const TUNNELS = Number(process.env.VERTEX_BENCH_TUNNELS ?? 1000);
const TUNNEL_OPEN_PARALLEL = 16;
const SOCKS_TIMEOUT_MS = 30_000;
const SETTLE_MS = 2000;
const SINK_PORT = 9;
const HELLO_PORT = 7;
const HTTP_PORT = 80;
/** Where a delay link listens (bench/delay-link.ts): another loopback address, same port. */
const LINK_HOST = '127.0.0.2';

export interface SocksWorld {
  peer: LoopbackPeer;
  /** The delay link in front of bob's peer listener, when started with one. */
  link?: DelayLink;
  servers: ServerHandle[];
  alice: AgentHandle;
  bob: AgentHandle;
  stop(): Promise<void>;
}

/**
 * inspect: start the agents with INSPECT_ARGS, for memoryAfterGc. oneWayMs: alice reaches
 * bob's peer listener (127.0.0.1) only through a delay link on 127.0.0.2 (bench/delay-link.ts),
 * which bob advertises as his address, over direct tcp only.
 */
export async function startSocksWorld(inspect = false, opts: { oneWayMs?: number } = {}): Promise<SocksWorld> {
  const peer = await startLoopbackPeer();
  const link = opts.oneWayMs === undefined ? undefined : await startDelayLink(LINK_HOST, '127.0.0.1', 0, opts.oneWayMs);

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
    `  - { service: http, target: "127.0.0.1:${peer.httpPort}", allow: ["*"] }`,
  ].join('\n'), [...(inspect ? INSPECT_ARGS : []), ...profileArgs('agent-bob')], link ? { listen: `127.0.0.1:${link.port}`, advertise: LINK_HOST } : undefined);
  // PTCP has its own figures; the SOCKS tunnel is measured over direct tcp.
  const alice = await startAgent(aliceHome.home, endpoints, `ports: { ${SINK_PORT}: sink, ${HELLO_PORT}: hello, ${HTTP_PORT}: http }\nroutes: ${link ? '[tcp]' : '[tcp, relay]'}`, [...(inspect ? INSPECT_ARGS : []), ...profileArgs('agent-alice')]);
  return {
    peer, servers: [a, b], alice, bob, ...(link && { link }),
    stop: async () => {
      await Promise.all([alice.proc.stop(), bob.proc.stop()]);
      await Promise.all([a.proc.stop(), b.proc.stop(), peer.proc.stop(), link?.stop()]);
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

/**
 * OpenSSH's dynamic forward as the baseline: a throw-away sshd on loopback
 * (its own host key, key-only auth, run per connection in inetd mode, so no
 * port is picked up front) and `ssh -D 127.0.0.1:<port> -N` to it.
 */
export async function startSshProxy(opts: { oneWayMs?: number } = {}): Promise<SshProxy> {
  // Said up front, in one line: a missing program would otherwise fail inside a callback.
  if (!fs.existsSync(SSHD)) throw new Error(`bench: ${SSHD} is missing, the ssh -D baseline needs it (apt-get install openssh-server)`);
  if (spawnSync('ssh', ['-V']).error) throw new Error('bench: ssh is missing, the ssh -D baseline needs it (apt-get install openssh-client)');
  const files = writeSshdFiles(tempDir('sshd'), ['AllowTcpForwarding yes']);
  const sshds: Proc[] = [];
  const server = net.createServer({ pauseOnConnect: true }, (socket) => {
    // sshd turns Nagle off only for sessions with a tty; -D has none. Off here, on the
    // descriptor sshd inherits, so ssh is not timed against the peer's delayed ACK.
    socket.setNoDelay(true);
    try {
      sshds.push(startProgram(SSHD, ['-i', '-e', '-f', files.config], { stdio: [socket, socket, 'pipe'] }));
    } catch (err) {
      // ssh sees the connection close and exits; the wait for it below says so.
      process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    }
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const sshdPort = (server.address() as net.AddressInfo).port;
  // With a delay: ssh reaches sshd only through a delay link, as alice reaches bob (startSocksWorld).
  const link = opts.oneWayMs === undefined ? undefined : await startDelayLink(LINK_HOST, '127.0.0.1', sshdPort, opts.oneWayMs);
  // A free port for -D: bound and released here; ssh binds it a moment later.
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const socksPort = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const ssh = startProgram('ssh', [
    ...files.clientOptions, '-o', 'ExitOnForwardFailure=yes', '-N', '-D', `127.0.0.1:${socksPort}`, '-p', String(sshdPort), `${os.userInfo().username}@${link ? LINK_HOST : '127.0.0.1'}`,
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
      await link?.stop();
      server.close();
      await Promise.all(sshds.map((p) => p.stop()));
    },
  };
}

/**
 * What each new connection does once the SOCKS reply is in:
 * - hello: waits for the first byte of a service that speaks first (a greeting, a banner);
 * - http: sends a GET and reads the whole answer (HTTP_BODY_BYTES), as a browser fetches a
 *   page's small subresources, each on a new connection (the workload).
 */
type Workload = 'hello' | 'http';
const WORKLOADS: readonly Workload[] = ['hello', 'http'];

const HTTP_REQUEST = Buffer.from('GET /asset.js HTTP/1.1\r\nHost: bob.b.test.q2q\r\nAccept: */*\r\nConnection: close\r\n\r\n');

/** Sends HTTP_REQUEST and resolves once the answer's headers and its whole body are in. */
function httpExchange(socket: Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    let head = '';
    let bodyLeft = -1;
    const done = (err?: Error) => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      if (err) reject(err);
      else resolve();
    };
    const onData = (chunk: Buffer) => {
      if (bodyLeft < 0) {
        head += chunk.toString('latin1');
        const at = head.indexOf('\r\n\r\n');
        if (at < 0) return;
        const length = /content-length: *(\d+)/i.exec(head.slice(0, at));
        if (!head.startsWith('HTTP/1.1 200') || !length) return done(new Error(`bench: unexpected answer ${JSON.stringify(head.slice(0, 80))}`));
        bodyLeft = Number(length[1]) - (head.length - at - 4);
      } else {
        bodyLeft -= chunk.length;
      }
      if (bodyLeft <= 0) done();
    };
    const onEnd = () => done(new Error('bench: the answer ended early'));
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.write(HTTP_REQUEST);
  });
}

/** Milliseconds from the SOCKS connect to the workload's end (the first byte, or the whole HTTP answer), `count` in a row. */
async function newConnections(open: () => Promise<Socket>, count: number, workload: Workload = 'hello'): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    const socket = await open();
    socket.on('error', () => undefined);
    if (workload === 'http') await httpExchange(socket);
    else await firstByte(socket);
    times.push(performance.now() - t0);
    socket.destroy();
  }
  return times;
}

/**
 * Connects made between the cold and the warm measurement. V8 optimizes a function only
 * after it has run some thousands of times (its interrupt budget), and most of an agent's
 * per-connection code runs once per connect: for the first thousands of connects after a
 * start it runs in the baseline tier, 2x slower (bench/README.md, "new-connection cost").
 * ssh's C needs no warming. A long-running agent is warm; both are reported.
 */
const WARM_CONNECTS = Number(process.env.VERTEX_BENCH_WARM_CONNECTS ?? 3000);

/** One SOCKS connect to the hello service without the `socks` client: the warm-up's. */
async function rawConnect(proxyPort: number, host: string, port: number): Promise<void> {
  const socket = net.connect(proxyPort, '127.0.0.1');
  socket.setNoDelay(true);
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const rest = await socks5Handshake(socket, host, port);
    socket.on('error', () => undefined);
    if (rest.length === 0) await firstByte(socket);
  } finally {
    socket.destroy();
  }
}

/** The port alice's SOCKS proxy maps to the workload's service, and that service's own port (for ssh -D). */
function workloadPorts(world: SocksWorld, workload: Workload): [number, number] {
  return workload === 'http' ? [HTTP_PORT, world.peer.httpPort] : [HELLO_PORT, world.peer.helloPort];
}

/** Uncounted connects of each workload: the agent's first sets the peer session up (ssh's connection is up already). */
async function firstConnects(world: SocksWorld, ssh: SshProxy): Promise<void> {
  for (const workload of WORKLOADS) {
    const [ourPort, theirPort] = workloadPorts(world, workload);
    await newConnections(() => socksConnect(world, ourPort), 3, workload);
    await newConnections(() => socksVia(ssh.socksPort, '127.0.0.1', theirPort), 3, workload);
  }
}

interface NewConnectionRounds {
  ours: number[];
  theirs: number[];
  /** Through each Node floor (bench/node-floor-proxy.ts), to the same service as ssh -D. */
  floors: Record<string, { times: number[]; cpu: number; userCpu: number }>;
  cpu: { agents: number; ssh: number; clientOurs: number; clientSsh: number; agentsUser: number; sshUser: number };
  /** Context switches of the two agents, and of ssh and sshd. */
  switches: { agents: number; ssh: number; agentsInvoluntary: number };
}

/**
 * NEW_CONNECT_ROUNDS rounds of NEW_CONNECTS through alice's agent, each followed by as many
 * through ssh -D: CPU milliseconds spent during each case's connects, of the two agents against
 * ssh and sshd, and of this process (the SOCKS client, the same code for both) in each case.
 */
async function newConnectionRounds(world: SocksWorld, ssh: SshProxy, workload: Workload, perRound = NEW_CONNECTS, floors: Record<string, NodeFloorProxy> = {}): Promise<NewConnectionRounds> {
  const [ourPort, theirPort] = workloadPorts(world, workload);
  const sshPids = ssh.pids();
  const out: NewConnectionRounds = {
    ours: [], theirs: [], floors: {},
    cpu: { agents: 0, ssh: 0, clientOurs: 0, clientSsh: 0, agentsUser: 0, sshUser: 0 },
    switches: { agents: 0, ssh: 0, agentsInvoluntary: 0 },
  };
  const { cpu, switches } = out;
  const agentPids = [world.alice.proc.pid, world.bob.proc.pid];
  const sumOver = (pids: number[], figure: (pid: number) => number): number => pids.reduce((sum, pid) => sum + figure(pid), 0);
  const agentCpu = () => sumOver(agentPids, cpuMs);
  const agentUserCpu = () => sumOver(agentPids, userCpuMs);
  const agentSwitches = () => agentPids.map(contextSwitches).reduce((sum, c) => ({ all: sum.all + c.voluntary + c.involuntary, involuntary: sum.involuntary + c.involuntary }), { all: 0, involuntary: 0 });
  const sshCpu = () => sumOver(sshPids, treeCpuMs);
  const sshUserCpu = () => sumOver(sshPids, treeUserCpuMs);
  const sshSwitches = () => sumOver(sshPids, treeContextSwitches);
  const clientCpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
  for (let r = 0; r < NEW_CONNECT_ROUNDS; r++) {
    let a = agentCpu();
    let u = agentUserCpu();
    let c = clientCpu();
    const s = agentSwitches();
    out.ours.push(...await newConnections(() => socksConnect(world, ourPort), perRound, workload));
    cpu.agents += agentCpu() - a;
    cpu.agentsUser += agentUserCpu() - u;
    cpu.clientOurs += clientCpu() - c;
    const sAfter = agentSwitches();
    switches.agents += sAfter.all - s.all;
    switches.agentsInvoluntary += sAfter.involuntary - s.involuntary;
    a = sshCpu();
    u = sshUserCpu();
    c = clientCpu();
    const t = sshSwitches();
    out.theirs.push(...await newConnections(() => socksVia(ssh.socksPort, '127.0.0.1', theirPort), perRound, workload));
    cpu.ssh += sshCpu() - a;
    cpu.sshUser += sshUserCpu() - u;
    cpu.clientSsh += clientCpu() - c;
    switches.ssh += sshSwitches() - t;
    for (const [name, floor] of Object.entries(floors)) {
      const figures = (out.floors[name] ??= { times: [], cpu: 0, userCpu: 0 });
      const pids = floor.procs.map((p) => p.pid);
      a = sumOver(pids, cpuMs);
      u = sumOver(pids, userCpuMs);
      figures.times.push(...await newConnections(() => socksVia(floor.port, '127.0.0.1', theirPort), perRound, workload));
      figures.cpu += sumOver(pids, cpuMs) - a;
      figures.userCpu += sumOver(pids, userCpuMs) - u;
    }
  }
  return out;
}

function roundsFigures(r: NewConnectionRounds): Record<string, unknown> {
  const p50 = percentile(r.ours, 50);
  const sshP50 = percentile(r.theirs, 50);
  const perConnect = (ms: number) => round(ms / r.ours.length, 2);
  return {
    p50Ms: round(p50, 2), p99Ms: round(percentile(r.ours, 99), 1), sshP50Ms: round(sshP50, 2), sshP99Ms: round(percentile(r.theirs, 99), 1),
    speedVsSsh: round(sshP50 / p50, 2),
    cpuMsPerConnect: { agents: perConnect(r.cpu.agents), sshAndSshd: perConnect(r.cpu.ssh), clientOurs: perConnect(r.cpu.clientOurs), clientSsh: perConnect(r.cpu.clientSsh) },
    // Of those: user CPU (the program's own instructions); the rest is the kernel's, for the same system calls.
    userCpuMsPerConnect: { agents: perConnect(r.cpu.agentsUser), sshAndSshd: perConnect(r.cpu.sshUser) },
    contextSwitchesPerConnect: { agents: perConnect(r.switches.agents), agentsInvoluntary: perConnect(r.switches.agentsInvoluntary), sshAndSshd: perConnect(r.switches.ssh) },
    ...(Object.keys(r.floors).length > 0 && {
      nodeFloor: Object.fromEntries(Object.entries(r.floors).map(([name, f]) => [name, {
        p50Ms: round(percentile(f.times, 50), 2), speedVsSsh: round(sshP50 / percentile(f.times, 50), 2),
        cpuMsPerConnect: round(f.cpu / f.times.length, 2), userCpuMsPerConnect: round(f.userCpu / f.times.length, 2),
      }])),
    }),
  };
}

/**
 * {"bench":"socks-new-connection",…}: the cost of a new connection through
 * the SOCKS proxy against ssh -D in the same run, both reaching the same
 * loopback services, in two workloads (Workload): `http` (top level since
 * 2026-12-07: a GET of a small subresource per new connection, as a browser
 * makes them, the workload) and `hello` (a service that speaks first:
 * time to its first byte; the headline before). `speedVsSsh` = ssh's p50 ÷
 * ours (issue 12: >= 1.0). The headline figures are the warm agents' (after
 * WARM_CONNECTS connects); `cold` has the same figures for the first connects
 * after the agents started. `peerSessions` says which path the agents used
 * (VERTEX_PEER_SESSIONS=0 in the environment: the per-connection path, for
 * the before figure). `userCpuMsPerConnect` splits the CPU figures: user time
 * is the programs' own instructions, the rest the kernel's for their system
 * calls. `nodeFloor`: the same connects, in the same rounds, through the
 * least a SOCKS proxy in Node can do (bench/node-floor-proxy.ts), to the
 * service ssh -D reaches: `oneProcess` connects to it itself, `twoProcesses`
 * through a second process over plain TCP (the shape of ssh -D and of our
 * agents, without TLS, multiplexing or checks).
 */
export async function benchSocksNewConnection(): Promise<void> {
  const world = await startSocksWorld();
  let ssh: SshProxy | null = null;
  const floors: Record<string, NodeFloorProxy> = {};
  try {
    ssh = await startSshProxy();
    floors.oneProcess = await startNodeFloorProxy();
    floors.twoProcesses = await startNodeFloorPair();
    const loadAtStart = os.loadavg()[0] ?? 0;
    await firstConnects(world, ssh);
    const rounds = async (): Promise<Record<Workload, NewConnectionRounds>> => ({
      http: await newConnectionRounds(world, ssh as SshProxy, 'http', NEW_CONNECTS, floors),
      hello: await newConnectionRounds(world, ssh as SshProxy, 'hello', NEW_CONNECTS, floors),
    });
    note(`socks new-connection cost: ${NEW_CONNECT_ROUNDS} rounds of ${NEW_CONNECTS} sequential connects per case and workload (${WORKLOADS.join(', ')}), cold agents`);
    const cold = await rounds();
    note(`socks new-connection cost: ${WARM_CONNECTS} connects to warm the agents up`);
    for (let i = 0; i < WARM_CONNECTS; i++) await rawConnect(world.alice.socksPort, 'bob.b.test.q2q', HELLO_PORT);
    await newConnections(() => socksConnect(world, HTTP_PORT), Math.ceil(WARM_CONNECTS / 4), 'http');
    // The floors are JavaScript too: warmed up the same way.
    for (const floor of Object.values(floors)) {
      for (let i = 0; i < WARM_CONNECTS; i++) await rawConnect(floor.port, '127.0.0.1', world.peer.helloPort);
      await newConnections(() => socksVia(floor.port, '127.0.0.1', world.peer.httpPort), Math.ceil(WARM_CONNECTS / 4), 'http');
    }
    note(`socks new-connection cost: ${NEW_CONNECT_ROUNDS} rounds of ${NEW_CONNECTS} sequential connects per case and workload, warm agents`);
    const warm = await rounds();
    emit({
      bench: 'socks-new-connection', peerSessions: process.env.VERTEX_PEER_SESSIONS !== '0', workload: 'http', connects: warm.http.ours.length, warmConnects: WARM_CONNECTS,
      ...roundsFigures(warm.http), target: 1.0,
      cold: roundsFigures(cold.http),
      hello: { ...roundsFigures(warm.hello), cold: roundsFigures(cold.hello) },
      loadAtStart: round(loadAtStart, 2), loadAverage: os.loadavg().map((l) => round(l, 2)),
    });
  } finally {
    await ssh?.stop();
    for (const floor of Object.values(floors)) await floor.stop();
    await world.stop();
  }
}

/** One-way delay of the link in socks-new-connection-rtt (a 10 ms round trip: a city-wide path). */
const RTT_ONE_WAY_MS = Number(process.env.VERTEX_BENCH_ONE_WAY_MS ?? 5);
const RTT_CONNECTS = 25;

/**
 * {"bench":"socks-new-connection-rtt",…}: socks-new-connection's two workloads
 * with the agents, and ssh and sshd, joined by a link with a round-trip time
 * (bench/delay-link.ts, RTT_ONE_WAY_MS each way; the SOCKS client and the
 * services stay next to their proxies, as a browser and a web server are). On
 * loopback every round trip is free and the figure is CPU; across a real path
 * it is round trips: ssh -D answers the SOCKS request only after its channel
 * is confirmed, so a browser's GET costs two round trips; an early stream
 * (ConnectOptions.early) sends the GET behind the OPEN, one round trip.
 */
export async function benchSocksNewConnectionRtt(): Promise<void> {
  const world = await startSocksWorld(false, { oneWayMs: RTT_ONE_WAY_MS });
  let ssh: SshProxy | null = null;
  try {
    ssh = await startSshProxy({ oneWayMs: RTT_ONE_WAY_MS });
    const loadAtStart = os.loadavg()[0] ?? 0;
    await firstConnects(world, ssh);
    note(`socks new-connection over a ${2 * RTT_ONE_WAY_MS} ms round trip: ${NEW_CONNECT_ROUNDS} rounds of ${RTT_CONNECTS} sequential connects per case and workload`);
    const http = await newConnectionRounds(world, ssh, 'http', RTT_CONNECTS);
    const hello = await newConnectionRounds(world, ssh, 'hello', RTT_CONNECTS);
    emit({
      bench: 'socks-new-connection-rtt', rttMs: 2 * RTT_ONE_WAY_MS, workload: 'http', connects: http.ours.length,
      ...roundsFigures(http), target: 1.0,
      hello: roundsFigures(hello),
      loadAtStart: round(loadAtStart, 2), loadAverage: os.loadavg().map((l) => round(l, 2)),
    });
  } finally {
    await ssh?.stop();
    await world.stop();
  }
}

/**
 * {"bench":"socks-throughput",…}: one bulk stream, this process → alice's agent (SOCKS5) →
 * direct-tcp peer session → bob's agent → the sink, against the same push straight to the
 * sink (raw TCP) and through `ssh -D` to the same sink (issue 12: >= 1.0x ssh), all three
 * interleaved in one run.
 */
export async function benchSocksThroughput(): Promise<void> {
  const world = await startSocksWorld();
  let ssh: SshProxy | null = null;
  try {
    ssh = await startSshProxy();
    const viaSsh = ssh.socksPort;
    const sshPids = ssh.pids();
    const agentPids = [world.alice.proc.pid, world.bob.proc.pid];
    note(`socks throughput: ${THROUGHPUT_WARM_RUNS} + ${THROUGHPUT_RUNS} x ${THROUGHPUT_MS / 1000} s per case (raw, socks, ssh -D)`);
    const raw: number[] = [];
    const socks: number[] = [];
    const sshRates: number[] = [];
    // CPU milliseconds per MB of the two agents, and of ssh and sshd, in each counted round (/proc).
    const agentsCpu: number[] = [];
    const sshCpu: number[] = [];
    const cold = { socks: 0, ssh: 0 };
    /** MB/s of one push, and the CPU ms per MB the `pids` spent meanwhile. */
    const measured = async (stream: Socket, pids: number[]): Promise<[number, number]> => {
      const cpu = () => pids.reduce((sum, pid) => sum + treeCpuMs(pid), 0);
      const before = cpu();
      const t0 = performance.now();
      const rate = await pushToSink(stream, THROUGHPUT_MS);
      const mb = (rate * (performance.now() - t0)) / 1000;
      return [rate, (cpu() - before) / mb];
    };
    // Interleaved, so that drift on a shared machine touches all alike.
    for (let i = 0; i < THROUGHPUT_WARM_RUNS + THROUGHPUT_RUNS; i++) {
      const counted = i >= THROUGHPUT_WARM_RUNS;
      const r = await pushToSink(await connectTcp(world.peer.sinkPort), THROUGHPUT_MS);
      const [ours, oursCpu] = await measured(await socksConnect(world, SINK_PORT), agentPids);
      const [theirs, theirsCpu] = await measured(await socksVia(viaSsh, '127.0.0.1', world.peer.sinkPort), sshPids);
      if (!counted) {
        cold.socks = ours;
        cold.ssh = theirs;
        continue;
      }
      raw.push(r);
      socks.push(ours);
      sshRates.push(theirs);
      agentsCpu.push(oursCpu);
      sshCpu.push(theirsCpu);
    }
    const rawMBps = percentile(raw, 50);
    const MBps = percentile(socks, 50);
    const sshMBps = percentile(sshRates, 50);
    const perRound = socks.map((v, i) => round(v / (sshRates[i] as number), 2));
    emit({
      bench: 'socks-throughput', route: 'tcp', MBps: round(MBps, 1), rawMBps: round(rawMBps, 1), ratio: round(MBps / rawMBps), target: 0.25,
      sshMBps: round(sshMBps, 1), vsSsh: round(MBps / sshMBps, 2), targetVsSsh: 1.0,
      // The spread: ours ÷ ssh in each round (run back to back), and the extremes.
      vsSshPerRound: perRound, vsSshMin: Math.min(...perRound), vsSshMax: Math.max(...perRound),
      cpuMsPerMB: { agents: round(percentile(agentsCpu, 50), 2), sshAndSshd: round(percentile(sshCpu, 50), 2) },
      coldMBps: round(cold.socks, 1), coldVsSsh: round(cold.socks / cold.ssh, 2),
      runs: THROUGHPUT_RUNS, warmRuns: THROUGHPUT_WARM_RUNS, seconds: THROUGHPUT_MS / 1000,
      loadAverage: os.loadavg().map((l) => round(l, 2)),
    });
  } finally {
    await ssh?.stop();
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

// ---- many concurrent connections through one agent ----

/** Connections held open at once through alice's agent (issue 12: 10,000). */
const CONCURRENT = Number(process.env.VERTEX_BENCH_CONCURRENT ?? 10_000);
/**
 * SOCKS connects in flight while they open; by default all of them at once, a
 * burst the agent's accept queue must hold (FRONTEND_BACKLOG). The agent
 * itself runs at most MAX_CONCURRENT_DIALS stream opens at a time and queues the rest.
 */
const CONCURRENT_OPEN_PARALLEL = Number(process.env.VERTEX_BENCH_CONCURRENT_PARALLEL ?? CONCURRENT);
/** Bytes each connection sends and must get back; distinct per connection. */
const CONCURRENT_PAYLOAD = 1024;
/** Descriptors a process needs beyond one per connection (listeners, the session, stdio, libuv). */
const FD_HEADROOM = 1024;

/** A SOCKS5 CONNECT (no auth, hostname) on `socket`, written step by step as a browser does; resolves with the bytes after the reply. */
function socks5Handshake(socket: Socket, host: string, port: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buffered = Buffer.alloc(0);
    let step: 'method' | 'reply' = 'method';
    const fail = (err: Error) => { socket.off('data', onData); reject(err); };
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (step === 'method') {
        if (buffered.length < 2) return;
        if (buffered[0] !== 5 || buffered[1] !== 0) return fail(new Error(`socks: method answer ${buffered.subarray(0, 2).toString('hex')}`));
        buffered = buffered.subarray(2);
        step = 'reply';
        const name = Buffer.from(host);
        socket.write(Buffer.concat([Buffer.from([5, 1, 0, 3, name.length]), name, Buffer.from([port >> 8, port & 0xff])]));
      }
      if (buffered.length < 5) return;
      if (buffered[1] !== 0) return fail(new Error(`socks: reply code ${buffered[1]}`));
      const atyp = buffered[3];
      const length = atyp === 1 ? 10 : atyp === 4 ? 22 : 7 + (buffered[4] ?? 0);
      if (buffered.length < length) return;
      socket.off('data', onData);
      socket.off('error', fail);
      socket.off('close', closed);
      resolve(buffered.subarray(length));
    };
    const closed = () => fail(new Error(`socks: the proxy closed the connection before its ${step} answer`));
    socket.on('data', onData);
    socket.once('error', fail);
    socket.once('close', closed);
    socket.write(Buffer.from([5, 1, 0]));
  });
}

/** Descriptors open in `pid` (its /proc entry). */
function fdCount(pid: number): number {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return -1;
  }
}

/**
 * Raises this process's open-file limit (soft and hard) to `wanted` when it
 * is lower: children spawned after it (servers, agents, the loopback peer)
 * inherit it. Raising the hard limit needs root (CAP_SYS_RESOURCE); without
 * it, `ulimit -Hn` must be raised before the run. Returns the soft limit in force.
 */
function raiseOpenFileLimit(wanted: number): number {
  const read = (): { soft: number; hard: number } => {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
    const n = (v: string | undefined) => (v === 'unlimited' ? Infinity : Number(v));
    return { soft: n(m?.[1]), hard: n(m?.[2]) };
  };
  let limit = read();
  if (limit.soft < wanted) {
    spawnSync('prlimit', ['--pid', String(process.pid), `--nofile=${wanted}:${Math.max(wanted, limit.hard)}`], { stdio: 'ignore' });
    limit = read();
  }
  return limit.soft;
}

interface HeldConnection {
  socket: Socket;
  /** What came back after the SOCKS reply: the hello service's '!' first, then the echo. */
  received: Buffer[];
  ended: Promise<void>;
}

/** Opens one SOCKS connection to bob's hello service and waits for its first byte: the tunnel is up end to end. */
async function holdConnection(proxyPort: number): Promise<HeldConnection> {
  const socket = await connectTcp(proxyPort);
  socket.on('error', () => undefined);
  const rest = await socks5Handshake(socket, 'bob.b.test.q2q', HELLO_PORT);
  const received: Buffer[] = rest.length > 0 ? [rest] : [];
  let ended!: () => void;
  let failed!: (err: Error) => void;
  const endedPromise = new Promise<void>((resolve, reject) => { ended = resolve; failed = reject; });
  endedPromise.catch(() => undefined);
  socket.on('data', (d: Buffer) => received.push(d));
  socket.once('end', () => ended());
  socket.once('close', () => failed(new Error('closed without an end')));
  if (rest.length === 0) await new Promise<void>((resolve, reject) => {
    socket.once('data', () => resolve());
    socket.once('close', () => reject(new Error('bench: a tunnel closed before its first byte')));
  });
  return { socket, received, ended: endedPromise };
}

/** The distinct bytes connection `i` sends (and must get back). */
function payloadFor(i: number): Buffer {
  const out = Buffer.alloc(CONCURRENT_PAYLOAD);
  let block = createHash('sha256').update(`connection ${i}`).digest();
  for (let at = 0; at < out.length; at += block.length) {
    block.copy(out, at);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

/**
 * {"bench":"socks-concurrent",…}: CONCURRENT SOCKS connections through
 * alice's agent to bob's hello service (bob's agent, then a TCP connection
 * each to the loopback peer), all open at once; then every one sends its own
 * CONCURRENT_PAYLOAD bytes, half-closes and must get exactly those bytes back.
 * Reports the time to open them all and to move the bytes, the agents' RSS
 * and descriptors while all are open, and alice's peer sessions to bob (1: the
 * connections are streams on one session).
 */
export async function benchSocksConcurrent(): Promise<void> {
  const wanted = CONCURRENT + FD_HEADROOM;
  const soft = raiseOpenFileLimit(wanted);
  const count = soft >= wanted ? CONCURRENT : Math.max(0, soft - FD_HEADROOM);
  if (count < CONCURRENT) note(`socks concurrent: the open-file limit is ${soft}; only ${count} connections (ulimit -n ${wanted} or more, as root or before the run)`);
  const world = await startSocksWorld();
  const held: HeldConnection[] = [];
  try {
    const aliceBefore = { rssKB: rssKb(world.alice.proc.pid), fds: fdCount(world.alice.proc.pid) };
    const bobBefore = { rssKB: rssKb(world.bob.proc.pid), fds: fdCount(world.bob.proc.pid) };
    note(`socks concurrent: opening ${count} SOCKS connections through alice's agent (${Math.min(count, CONCURRENT_OPEN_PARALLEL)} connects in flight)`);
    const t0 = performance.now();
    let opened = 0;
    // A connection that fails to open is counted (with the first few reasons), not fatal: the figure says how many.
    const openErrors = new Map<string, number>();
    await mapLimit(Array.from({ length: count }), CONCURRENT_OPEN_PARALLEL, async () => {
      try {
        held.push(await holdConnection(world.alice.socksPort));
      } catch (err) {
        const reason = err instanceof Error ? err.message : String(err);
        openErrors.set(reason, (openErrors.get(reason) ?? 0) + 1);
        return;
      }
      opened += 1;
      if (opened % 2000 === 0) note(`socks concurrent: ${opened} open`);
    });
    if (openErrors.size > 0) note(`socks concurrent: failed to open: ${JSON.stringify(Object.fromEntries(openErrors))}\nalice's agent:\n${world.alice.proc.output().slice(-3000)}`);
    const openMs = performance.now() - t0;
    const alice = { rssKB: rssKb(world.alice.proc.pid), fds: fdCount(world.alice.proc.pid) };
    const bob = { rssKB: rssKb(world.bob.proc.pid), fds: fdCount(world.bob.proc.pid) };
    const peerFds = fdCount(world.peer.proc.pid);
    const status = await agentStatus(world.alice.home);
    const sessionsToBob = status.sessions.filter((s) => s.peer === 'bob@b.test' && s.state === 'open');

    note(`socks concurrent: all ${held.length} open in ${Math.round(openMs)} ms; each sends ${CONCURRENT_PAYLOAD} distinct bytes`);
    const t1 = performance.now();
    const payloads = held.map((_, i) => payloadFor(i));
    held.forEach((c, i) => c.socket.end(payloads[i] as Buffer));
    const outcomes = await Promise.allSettled(held.map((c) => c.ended));
    const exchangeMs = performance.now() - t1;
    let exact = 0;
    let wrong = 0;
    held.forEach((c, i) => {
      if (outcomes[i]?.status !== 'fulfilled') return;
      const back = Buffer.concat(c.received);
      if (back.length === CONCURRENT_PAYLOAD + 1 && back[0] === 0x21 && back.subarray(1).equals(payloads[i] as Buffer)) exact += 1;
      else wrong += 1;
    });
    emit({
      bench: 'socks-concurrent', connections: count, opened: held.length, byteExact: exact, wrong, failed: count - exact - wrong, bytesEach: CONCURRENT_PAYLOAD,
      openParallel: CONCURRENT_OPEN_PARALLEL, ...(openErrors.size > 0 ? { openErrors: Object.fromEntries(openErrors) } : {}),
      openMs: Math.round(openMs), opensPerSecond: round(count / (openMs / 1000), 0), exchangeMs: Math.round(exchangeMs),
      aliceRssBeforeKB: aliceBefore.rssKB, aliceRssKB: alice.rssKB, aliceKBPerConnection: round((alice.rssKB - aliceBefore.rssKB) / count, 1),
      aliceFdsBefore: aliceBefore.fds, aliceFds: alice.fds, bobRssBeforeKB: bobBefore.rssKB, bobRssKB: bob.rssKB, bobFdsBefore: bobBefore.fds, bobFds: bob.fds,
      serviceFds: peerFds, tunnelsInStatus: status.tunnels, sessionsToBob: sessionsToBob.length, streamsOnSession: sessionsToBob[0]?.streams ?? 0,
      openFileLimit: soft, target: CONCURRENT, ...(count < CONCURRENT ? { limitedBy: `the open-file limit ${soft}` } : {}),
    });
  } finally {
    for (const c of held) c.socket.destroy();
    // Let the agents see the closes before SIGTERM, so shutdown does not wait on ten thousand drains.
    await sleep(1000);
    await world.stop();
  }
}

/** `vertex status --json` of the agent in `home`: its tunnel count and its peer sessions. */
async function agentStatus(home: string): Promise<{ tunnels: number; sessions: Array<{ peer: string; state: string; streams: number }> }> {
  // Not startVertex: its captured output stops at 1 MB, and 10,000 tunnels make about 3 MB.
  const r = spawnSync(process.execPath, [VERTEX, '--home', home, 'status', '--json'], { cwd: ROOT, maxBuffer: 256 * 1024 * 1024, encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`bench: vertex status exited with ${r.status ?? r.signal}: ${(r.stderr || r.stdout || '').slice(-500)}`);
  const status = JSON.parse(r.stdout) as { tunnels: unknown[]; sessions?: Array<{ peer: string; state: string; streams: number }> };
  return { tunnels: status.tunnels.length, sessions: status.sessions ?? [] };
}

if (require.main === module) {
  runStandalone({ throughput: benchSocksThroughput, 'agent-memory': benchAgentMemory, 'new-connection': benchSocksNewConnection, 'new-connection-rtt': benchSocksNewConnectionRtt, concurrent: benchSocksConcurrent }, process.argv[2]);
}
