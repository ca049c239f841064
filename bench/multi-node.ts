/**
 * Several nodes of one domain on one PostgreSQL (issue 14's bench items),
 * each figure a same-run ratio:
 *
 *   {"bench":"multi-node-ttfb","sameP50Ms":…,"crossP50Ms":…,"ratio":…}
 *       time to first byte, caller on node 1: a listener homed on node 1
 *       (same node) against one homed on node 2 (the inbound is forwarded
 *       node to node); the connects alternate, one of each per round
 *   {"bench":"multi-node-forward-rate","samePerSecond":…,"forwardedPerSecond":…,"ratio":…}
 *       inbound requests answered per second through node 1, for a listener
 *       on node 1 and for one on node 2 (which node 1 forwards)
 *   {"bench":"multi-node-registrations","oneNodePerSecond":…,"threeNodesPerSecond":…,"ratio":…}
 *       registrations per second against one node, and spread over three
 *       (scrypt is the work; the same number in flight in both). On one
 *       machine the nodes share its cores, so this cannot show what separate
 *       machines would (bench/README.md); hence the next figure
 *   {"bench":"multi-node-registrations-cpu-budget","cpuPerNode":0.5,…,"ratio":…}
 *       the same registrations with each node held to VERTEX_BENCH_NODE_CPU
 *       cores (default 0.5) by a cgroup v1 CPU quota of its own, as if each
 *       node were its own machine (bench/cpu-budget.ts); skipped, with one
 *       line saying why, where cgroups cannot be used
 *
 * `node dist/bench/multi-node.js idle-agents` (its own mode):
 *
 *   {"bench":"multi-node-rss-per-agent","agents":10000,"KBPerAgent":…,"perNode":[…]}
 *       10,000 idle agent control sessions spread over the three nodes
 *       (mutual TLS with a user certificate, hello, listen as a device of
 *       their own: one presence row each), RSS of each node before and
 *       after, each after a forced full GC, divided by the agents on it
 *
 * Processes: three real `vertex server` nodes (node: in server.yaml, one
 * fresh PostgreSQL database, the CA copied from node 1), the listeners in a
 * child process (bench/listener-child.ts: library Q2QNodes, each homed on its node), the callers in
 * this process. Peer sessions are off, so every connect is a whole inbound.
 * PostgreSQL: VERTEX_BENCH_POSTGRES (default VERTEX_TEST_POSTGRES, else the
 * role .ci/run creates).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import pg from 'pg';
import { COMMANDS, MAX_DEVICES_PER_ADDRESS } from '../q2q/control/protocol';
import { createCsr, generateKeyPair, issueUserCertificate } from '../q2q/identity';
import { openServerConnection, type ServerConnection } from '../q2q/control/server-connection';
import { Q2QNode } from '../q2q/negotiate/node';
import type { Identity } from '../q2q/negotiate/types';
import {
  BENCH_LIMITS, emit, Endpoints, firstByte, forkBench, INSPECT_ARGS, mapLimit, memoryAfterGc, MemoryTrust, nodeOptions, note, percentile, registerMany,
  round, rssKb, runStandalone, cpuMs, sleep, startServer, tempDir, type Proc, type ServerHandle,
} from './harness';
import { profileArgs } from './connections';
import { startListeners } from './listener-child';
import { heapGrowth, summarizeHeapSnapshot, takeHeapSnapshot } from './heap-snapshot';
import { placeInCpuBudgets } from './cpu-budget';

const DOMAIN = 'mn.test';
const TTFB_CONNECTS = 100;
const TTFB_WARMUP = 3;
const FORWARD_CALLERS = 4;
/** Under the listener's limits (q2q/negotiate/inbound-limits.ts: 128 pending per caller, 1024 in all). */
const FORWARD_PER_CALLER = 120;
const FORWARD_PARALLEL = 16;
const REGISTRATIONS = 6;
const POSTGRES_URL = process.env.VERTEX_BENCH_POSTGRES ?? process.env.VERTEX_TEST_POSTGRES ?? 'postgres://vertex_test:vertex_test@127.0.0.1:5432/postgres';

function withDatabase(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

async function admin(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: POSTGRES_URL, connectionTimeoutMillis: 5_000 });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

// ---- the bench ----

async function startNodes(storeUrl: string, count: number, opts: { nodeArgs?: string[]; limits?: string } = {}): Promise<ServerHandle[]> {
  const nodes: ServerHandle[] = [];
  for (let i = 1; i <= count; i++) {
    const dataDir = tempDir(`node${i}`);
    if (i > 1) fs.cpSync(path.join((nodes[0] as ServerHandle).dataDir, 'ca'), path.join(dataDir, 'ca'), { recursive: true });
    nodes.push(await startServer([DOMAIN], {
      dataDir,
      ...(opts.nodeArgs && { nodeArgs: opts.nodeArgs }),
      yaml: [`limits: { ${opts.limits ?? BENCH_LIMITS} }`, `store: ${JSON.stringify(storeUrl)}`, `node: { name: n${i}, listen: "127.0.0.1:0" }`].join('\n'),
    }));
  }
  return nodes;
}

function endpointsFor(node: ServerHandle): Endpoints {
  const e = new Endpoints();
  e.set(DOMAIN, node.port);
  return e;
}

/** Node CPU per core-second of wall time while `run` registers REGISTRATIONS users, and the rate. */
async function timedRegistrations(nodes: ServerHandle[], run: () => Promise<void>): Promise<{ perSecond: number; coresBusy: number; cpuMsPerRegistration: number }> {
  const cpu0 = nodes.reduce((sum, n) => sum + cpuMs(n.proc.pid), 0);
  const t0 = performance.now();
  await run();
  const wallMs = performance.now() - t0;
  const nodeCpuMs = nodes.reduce((sum, n) => sum + cpuMs(n.proc.pid), 0) - cpu0;
  return { perSecond: round(REGISTRATIONS / (wallMs / 1000), 2), coresBusy: round(nodeCpuMs / wallMs, 2), cpuMsPerRegistration: round(nodeCpuMs / REGISTRATIONS, 0) };
}

/** Cores each node may use in the CPU-budget figure (VERTEX_BENCH_NODE_CPU). */
const NODE_CPU = Number(process.env.VERTEX_BENCH_NODE_CPU ?? 0.5);
/**
 * The registrations figure again, with every node held to NODE_CPU cores by
 * a cgroup CPU quota of its own (bench/cpu-budget.ts): each node as its own
 * machine with a fixed CPU budget, the one-node run with the same per-node
 * budget, the load generator (this process) and PostgreSQL outside any
 * budget. Same registrations, same in flight, same scrypt parameters as the
 * unconstrained figure. Where cgroups cannot be used it says so and skips.
 */
async function registrationsWithCpuBudget(nodes: ServerHandle[], trust: MemoryTrust): Promise<void> {
  const budgets = placeInCpuBudgets(nodes.map((n, i) => ({ name: `n${i + 1}`, pid: n.proc.pid })), NODE_CPU);
  if ('skipped' in budgets) {
    note(`registrations with ${NODE_CPU} core per node (multi-node-registrations-cpu-budget): skipped: ${budgets.skipped}`);
    return;
  }
  try {
    note(`registrations, each node held to ${NODE_CPU} core (cgroup cpu quota): ${REGISTRATIONS} on node 1, then ${REGISTRATIONS} spread over 3 nodes, 6 in flight`);
    const throttledMs = (): number => budgets.throttled().reduce((sum, t) => sum + t.throttledMs, 0);
    let th0 = throttledMs();
    const one = await timedRegistrations(nodes, async () => {
      await registerMany(Array.from({ length: REGISTRATIONS }, (_, i) => `cpuone${i}@${DOMAIN}`), endpointsFor(nodes[0] as ServerHandle), trust, 6);
    });
    const oneThrottledMs = throttledMs() - th0;
    th0 = throttledMs();
    const three = await timedRegistrations(nodes, async () => {
      await Promise.all(nodes.map((node, k) => registerMany(Array.from({ length: REGISTRATIONS / 3 }, (_, i) => `cputhree${k}x${i}@${DOMAIN}`), endpointsFor(node), trust, 2)));
    });
    const threeThrottledMs = throttledMs() - th0;
    emit({
      bench: 'multi-node-registrations-cpu-budget', cpuPerNode: NODE_CPU, registrations: REGISTRATIONS,
      oneNodePerSecond: one.perSecond, threeNodesPerSecond: three.perSecond, ratio: round(three.perSecond / one.perSecond, 2), target: 2,
      nodeCoresBusy: { oneNode: one.coresBusy, threeNodes: three.coresBusy },
      nodeCpuMsPerRegistration: { oneNode: one.cpuMsPerRegistration, threeNodes: three.cpuMsPerRegistration },
      throttledMs: { oneNode: oneThrottledMs, threeNodes: threeThrottledMs },
    });
  } finally {
    for (const problem of budgets.release()) note(`cpu budget cleanup: ${problem}`);
  }
}

export async function benchMultiNode(): Promise<void> {
  const database = `vertex_bench_${process.pid}_${crypto.randomBytes(3).toString('hex')}`;
  await admin(`CREATE DATABASE ${database}`);
  const procs: Proc[] = [];
  let callers: ServerConnection[] = [];
  let caller: Q2QNode | null = null;
  try {
    const nodes = await startNodes(withDatabase(POSTGRES_URL, database), 3);
    procs.push(...nodes.map((n) => n.proc));
    const [n1, n2, n3] = nodes as [ServerHandle, ServerHandle, ServerHandle];
    const trust = new MemoryTrust();

    // Registrations: the same number in flight against one node and spread over three.
    note(`registrations: ${REGISTRATIONS} on node 1, then ${REGISTRATIONS} spread over 3 nodes, 6 in flight`);
    const one = await timedRegistrations(nodes, async () => {
      await registerMany(Array.from({ length: REGISTRATIONS }, (_, i) => `one${i}@${DOMAIN}`), endpointsFor(n1), trust, 6);
    });
    const three = await timedRegistrations(nodes, async () => {
      await Promise.all(nodes.map((node, k) => registerMany(Array.from({ length: REGISTRATIONS / 3 }, (_, i) => `three${k}x${i}@${DOMAIN}`), endpointsFor(node), trust, 2)));
    });
    emit({
      bench: 'multi-node-registrations', registrations: REGISTRATIONS, oneNodePerSecond: one.perSecond, threeNodesPerSecond: three.perSecond,
      ratio: round(three.perSecond / one.perSecond, 2), target: 2, nodeCoresBusy: { oneNode: one.coresBusy, threeNodes: three.coresBusy },
      nodeCpuMsPerRegistration: { oneNode: one.cpuMsPerRegistration, threeNodes: three.cpuMsPerRegistration },
    });
    await registrationsWithCpuBudget(nodes, trust);

    const [alice, same, cross] = await registerMany([`alice@${DOMAIN}`, `sam@${DOMAIN}`, `cris@${DOMAIN}`], endpointsFor(n1), trust, 3);
    if (!alice || !same || !cross) throw new Error('bench: registration returned nothing');
    // sam is homed on node 1 (where alice's requests arrive), cris on node 2.
    const listeners = await startListeners([
      { identity: same, endpoints: { [DOMAIN]: n1.port }, routes: ['tcp'], peerSessions: false },
      { identity: cross, endpoints: { [DOMAIN]: n2.port }, routes: ['tcp'], peerSessions: false },
    ]);
    procs.push(listeners);
    caller = new Q2QNode(alice, nodeOptions(endpointsFor(n1), trust, { routes: ['tcp'], peerSessions: false, connectTimeoutMs: 15_000 }));
    await caller.start();
    const c = caller;

    note(`time to first byte: ${TTFB_CONNECTS} connects to each listener, alternating`);
    const times: Record<'same' | 'cross', number[]> = { same: [], cross: [] };
    for (let i = 0; i < TTFB_WARMUP + TTFB_CONNECTS; i++) {
      for (const [which, target] of [['same', `sam@${DOMAIN}:hello`], ['cross', `cris@${DOMAIN}:hello`]] as const) {
        const start = performance.now();
        const stream = await c.connect(target);
        await firstByte(stream);
        if (i >= TTFB_WARMUP) times[which].push(performance.now() - start);
        stream.destroy();
      }
    }
    const sameP50 = percentile(times.same, 50);
    const crossP50 = percentile(times.cross, 50);
    emit({
      bench: 'multi-node-ttfb', connects: TTFB_CONNECTS, sameP50Ms: round(sameP50, 1), sameP99Ms: round(percentile(times.same, 99), 1),
      crossP50Ms: round(crossP50, 1), crossP99Ms: round(percentile(times.cross, 99), 1), ratio: round(crossP50 / sameP50, 2), target: 1.3,
    });

    // Forwarded inbounds per second: answered requests only (no connect follows; the tokens expire).
    const identities = await registerMany(Array.from({ length: FORWARD_CALLERS }, (_, i) => `fwd${i}@${DOMAIN}`), endpointsFor(n1), trust, 4);
    callers = await Promise.all(identities.map((id) => openServerConnection({
      domain: DOMAIN, resolve: endpointsFor(n1).resolve, trust, credentials: { keyPem: id.keyPem, certPem: id.certPem },
    })));
    const rate = async (to: string): Promise<number> => {
      const jobs = callers.flatMap((conn) => Array.from({ length: FORWARD_PER_CALLER }, () => conn));
      const start = performance.now();
      let failed = 0;
      await mapLimit(jobs, FORWARD_PARALLEL, async (conn) => {
        try {
          await conn.call(COMMANDS.inbound, { to, service: 'hello', candidates: '[]', routes: '["tcp"]' });
        } catch {
          failed += 1;
        }
      });
      if (failed > 0) note(`forward rate: ${failed} of ${jobs.length} inbounds to ${to} failed`);
      return (jobs.length - failed) / ((performance.now() - start) / 1000);
    };
    note(`forward rate: ${FORWARD_CALLERS * FORWARD_PER_CALLER} inbounds per listener, ${FORWARD_PARALLEL} in flight`);
    const sameRate = await rate(`sam@${DOMAIN}`);
    const forwardedRate = await rate(`cris@${DOMAIN}`);
    emit({
      bench: 'multi-node-forward-rate', requests: FORWARD_CALLERS * FORWARD_PER_CALLER, parallel: FORWARD_PARALLEL,
      samePerSecond: round(sameRate, 0), forwardedPerSecond: round(forwardedRate, 0), ratio: round(forwardedRate / sameRate, 2),
    });
    void n3;
  } finally {
    for (const conn of callers) conn.close();
    await caller?.stop();
    for (const p of procs) {
      if (p.child.connected) p.child.disconnect();
    }
    await sleep(200);
    await Promise.all(procs.map((p) => p.stop()));
    await admin(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch(() => undefined);
  }
}

// ---- idle agents over three nodes: server RSS per agent ----

const IDLE_AGENTS = Number(process.env.VERTEX_BENCH_AGENTS ?? 10_000);
/** Each user's sessions are its devices (at most MAX_DEVICES_PER_ADDRESS listen at once). */
const DEVICES_PER_USER = MAX_DEVICES_PER_ADDRESS;
const SESSION_PARALLEL = 24;
const SETTLE_MS = 2_000;
/** Generous: on a loaded 2-core machine a session took up to 2 s to come up with 24 in flight. */
const SESSIONS_TIMEOUT_MS = Math.max(120_000, IDLE_AGENTS * 100);

interface SessionsStart { port: number; users: Identity[]; first: number; count: number }

/**
 * Child: `count` idle control sessions to one node, session k (from `first`)
 * as device d<k> of user k / DEVICES_PER_USER: mutual TLS with the user's
 * certificate, hello, listen with one service, then nothing (the server's
 * idle timeout is the agent keepalive's business; these stay well within it).
 */
async function runSessionsChild(): Promise<void> {
  const start = await new Promise<SessionsStart>((resolve) => process.once('message', (m) => resolve(m as SessionsStart)));
  const endpoints = new Endpoints();
  endpoints.set(DOMAIN, start.port);
  const trust = new MemoryTrust();
  const open: ServerConnection[] = [];
  process.once('disconnect', () => {
    for (const c of open) c.close();
    setTimeout(() => process.exit(0), 500).unref();
  });
  const tlsMs: number[] = [];
  const listenMs: number[] = [];
  await mapLimit(Array.from({ length: start.count }, (_, i) => start.first + i), SESSION_PARALLEL, async (k) => {
    const user = start.users[Math.floor(k / DEVICES_PER_USER)] as Identity;
    const t0 = performance.now();
    const conn = await openServerConnection({ domain: DOMAIN, resolve: endpoints.resolve, trust, credentials: { keyPem: user.keyPem, certPem: user.certPem }, connectTimeoutMs: 60_000 });
    open.push(conn);
    // As an agent: presence pushes (the user's other devices coming online) are answered.
    conn.peer.handle(COMMANDS.presence, () => ({}));
    const t1 = performance.now();
    await conn.call(COMMANDS.listen, { services: '["echo"]', device: `d${k}` }, { timeoutMs: 60_000 });
    tlsMs.push(t1 - t0);
    listenMs.push(performance.now() - t1);
  });
  process.send?.({ online: open.length, tlsP50Ms: percentile(tlsMs, 50), listenP50Ms: percentile(listenMs, 50) });
}

async function startSessions(port: number, users: Identity[], first: number, count: number): Promise<Proc> {
  const proc = forkBench(__filename, ['sessions'], profileArgs('idle-sessions'));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`bench: ${count} sessions not online after ${SESSIONS_TIMEOUT_MS} ms:\n${proc.output().slice(-2000)}`)), SESSIONS_TIMEOUT_MS);
    proc.child.once('message', (m: { tlsP50Ms: number; listenP50Ms: number }) => {
      clearTimeout(timer);
      note(`sessions to port ${port}: connect (tls, hello) p50 ${round(m.tlsP50Ms, 1)} ms, listen p50 ${round(m.listenP50Ms, 1)} ms`);
      resolve();
    });
    void proc.exited.then(() => { clearTimeout(timer); reject(new Error(`bench: sessions child exited:\n${proc.output().slice(-2000)}`)); });
    proc.child.send({ port, users, first, count } satisfies SessionsStart);
  });
  return proc;
}

/**
 * Users made straight in the store, with certificates from the domain CA
 * (node 1's files): registering them through `register` would cost a scrypt
 * hash each (about a second here), and what is measured is idle sessions.
 * One key pair serves every user (each certificate names its own address).
 */
async function makeUsers(storeUrl: string, caDir: string, count: number): Promise<Identity[]> {
  const caCertPem = fs.readFileSync(path.join(caDir, 'cert.pem'), 'utf8');
  const caKeyPem = fs.readFileSync(path.join(caDir, 'key.pem'), 'utf8');
  const { privateKeyPem } = await generateKeyPair();
  const users: Identity[] = [];
  const rows: Array<{ user: string; serial: string; notBefore: number; notAfter: number }> = [];
  for (let i = 0; i < count; i++) {
    const address = `idle${i}@${DOMAIN}`;
    const cert = await issueUserCertificate({ caCertPem, caKeyPem, csrPem: await createCsr(address, privateKeyPem), expectedAddress: address, lifetimeMs: 86_400_000 });
    users.push({ address, keyPem: privateKeyPem, certPem: cert.certPem });
    rows.push({ user: `idle${i}`, serial: cert.serial, notBefore: cert.notBefore.getTime(), notAfter: cert.notAfter.getTime() });
  }
  const client = new pg.Client({ connectionString: storeUrl });
  await client.connect();
  try {
    await client.query(
      "INSERT INTO accounts (domain, username, password_hash, created_at) SELECT $1, u, 'bench: no password', 0 FROM unnest($2::text[]) AS u",
      [DOMAIN, rows.map((r) => r.user)]);
    await client.query(
      'INSERT INTO certificates (serial, domain, username, not_before, not_after) SELECT s, $1, u, b, a FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[]) AS t(s, u, b, a)',
      [DOMAIN, rows.map((r) => r.serial), rows.map((r) => r.user), rows.map((r) => r.notBefore), rows.map((r) => r.notAfter)]);
  } finally {
    await client.end();
  }
  return users;
}

export async function benchIdleAgents(): Promise<void> {
  const database = `vertex_bench_${process.pid}_${crypto.randomBytes(3).toString('hex')}`;
  await admin(`CREATE DATABASE ${database}`);
  const storeUrl = withDatabase(POSTGRES_URL, database);
  const procs: Proc[] = [];
  const sessions: Proc[] = [];
  try {
    const t0 = performance.now();
    const nodes = await startNodes(storeUrl, 3, { nodeArgs: [...INSPECT_ARGS, ...profileArgs('idle-node')], limits: `max_connections: ${IDLE_AGENTS + 1000}, ${BENCH_LIMITS}` });
    procs.push(...nodes.map((n) => n.proc));
    const userCount = Math.ceil(IDLE_AGENTS / DEVICES_PER_USER);
    const users = await makeUsers(storeUrl, path.join((nodes[0] as ServerHandle).dataDir, 'ca', DOMAIN), userCount);
    note(`idle agents: ${userCount} users made in ${Math.round(performance.now() - t0)} ms (nodes started, certificates issued)`);
    // Warm-up: a few sessions per node come and go, so code paths and TLS contexts are in both readings.
    const warm = await Promise.all(nodes.map((n, i) => startSessions(n.port, users, i * 10, 10)));
    for (const w of warm) w.child.disconnect();
    await Promise.all(warm.map((w) => w.exited));
    await sleep(SETTLE_MS);
    const before = await Promise.all(nodes.map((n) => memoryAfterGc(n.proc)));
    // Diagnosis (VERTEX_BENCH_HEAP_SNAPSHOTS=1, or a directory to keep them in): node 1's heap by
    // constructor, before and after; node 1's RSS figure is then not clean.
    const keep = process.env.VERTEX_BENCH_HEAP_SNAPSHOTS;
    const snapshots = keep ? (keep === '1' ? tempDir('heap') : keep) : null;
    if (snapshots) await takeHeapSnapshot((nodes[0] as ServerHandle).proc, path.join(snapshots, 'before.heapsnapshot'));
    const share = Math.ceil(IDLE_AGENTS / nodes.length);
    note(`idle agents: ${IDLE_AGENTS} sessions, ${share} per node, ${SESSION_PARALLEL} connecting at once per node`);
    const t1 = performance.now();
    const cpuBefore = nodes.map((n) => cpuMs(n.proc.pid));
    sessions.push(...await Promise.all(nodes.map((n, i) => startSessions(n.port, users, i * share, Math.min(share, IDLE_AGENTS - i * share)))));
    const connectMs = performance.now() - t1;
    // The nodes' own CPU per session (TLS with a client certificate, its check in the store, hello, listen, the presence write and the others' notifications).
    const serverCpuMs = nodes.reduce((sum, n, i) => sum + cpuMs(n.proc.pid) - (cpuBefore[i] as number), 0);
    const clientCpuMs = sessions.reduce((sum, p) => sum + cpuMs(p.pid), 0);
    await sleep(SETTLE_MS);
    const afterNoGc = nodes.map((n) => rssKb(n.proc.pid));
    const after = await Promise.all(nodes.map((n) => memoryAfterGc(n.proc)));
    const perNode = nodes.map((_, i) => {
      const agents = Math.min(share, IDLE_AGENTS - i * share);
      const b = before[i] as { rssKB: number; heapKB: number };
      const a = after[i] as { rssKB: number; heapKB: number };
      return {
        node: `n${i + 1}`, agents, rssBeforeKB: b.rssKB, rssAfterKB: a.rssKB, rssAfterNoGcKB: afterNoGc[i],
        KBPerAgent: round((a.rssKB - b.rssKB) / agents, 1), heapKBPerAgent: round((a.heapKB - b.heapKB) / agents, 1),
      };
    });
    if (snapshots) {
      await takeHeapSnapshot((nodes[0] as ServerHandle).proc, path.join(snapshots, 'after.heapsnapshot'));
      const growth = heapGrowth(summarizeHeapSnapshot(path.join(snapshots, 'before.heapsnapshot')), summarizeHeapSnapshot(path.join(snapshots, 'after.heapsnapshot')), perNode[0]?.agents ?? 1);
      note(`node 1 heap growth per agent (bytes, objects), largest first:\n${growth.map((g) => `  ${String(g.bytesPerUnit).padStart(6)} ${String(g.countPerUnit).padStart(6)}  ${g.name}`).join('\n')}`);
    }
    const rows = new pg.Client({ connectionString: storeUrl });
    await rows.connect();
    const presence = Number((await rows.query<{ n: string }>('SELECT count(*) AS n FROM presence')).rows[0]?.n);
    await rows.end();
    emit({
      bench: 'multi-node-rss-per-agent', agents: IDLE_AGENTS, users: userCount, nodes: nodes.length, presenceRows: presence,
      KBPerAgent: round(Math.max(...perNode.map((p) => p.KBPerAgent)), 1),
      meanKBPerAgent: round(perNode.reduce((sum, p) => sum + p.KBPerAgent, 0) / perNode.length, 1),
      sessionsPerSecond: round(IDLE_AGENTS / (connectMs / 1000), 0), serverCpuMsPerSession: round(serverCpuMs / IDLE_AGENTS, 2),
      clientCpuMsPerSession: round(clientCpuMs / IDLE_AGENTS, 2), targetKB: 64, perNode,
    });
  } finally {
    for (const p of sessions) if (p.child.connected) p.child.disconnect();
    await Promise.race([Promise.all(sessions.map((p) => p.exited)), sleep(10_000)]);
    await Promise.all([...sessions, ...procs].map((p) => p.stop()));
    await admin(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch(() => undefined);
  }
}

if (require.main === module) {
  const child = ({ sessions: runSessionsChild } as Record<string, () => Promise<void>>)[process.argv[2] ?? ''];
  if (child) {
    child().catch((err: unknown) => {
      process.stderr.write(`bench ${process.argv[2]}: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(1);
    });
  } else {
    runStandalone({ 'multi-node': benchMultiNode, 'idle-agents': benchIdleAgents }, process.argv[2] ?? 'multi-node');
  }
}
