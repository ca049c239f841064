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
 *       (scrypt is the work; the same number in flight in both)
 *
 * Processes: three real `vertex server` nodes (node: in server.yaml, one
 * fresh PostgreSQL database, the CA copied from node 1), the listeners in a
 * child process (library Q2QNodes, each homed on its node), the callers in
 * this process. Peer sessions are off, so every connect is a whole inbound.
 * PostgreSQL: VERTEX_BENCH_POSTGRES (default VERTEX_TEST_POSTGRES, else the
 * role .ci/run creates).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import pg from 'pg';
import { COMMANDS } from '../q2q/control/protocol';
import { openServerConnection, type ServerConnection } from '../q2q/control/server-connection';
import { Q2QNode } from '../q2q/negotiate/node';
import type { Identity } from '../q2q/negotiate/types';
import {
  BENCH_LIMITS, emit, Endpoints, firstByte, forkBench, mapLimit, MemoryTrust, nodeOptions, note, percentile, registerMany, round,
  runStandalone, sleep, startServer, tempDir, type Proc, type ServerHandle,
} from './harness';

const DOMAIN = 'mn.test';
const TTFB_CONNECTS = 100;
const TTFB_WARMUP = 3;
const FORWARD_CALLERS = 4;
/** Under the listener's limits (q2q/negotiate/inbound-limits.ts: 128 pending per caller, 1024 in all). */
const FORWARD_PER_CALLER = 120;
const FORWARD_PARALLEL = 16;
const REGISTRATIONS = 6;
const READY_TIMEOUT_MS = 30_000;
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

// ---- the listener child: one Q2QNode per listener, each homed on its own node ----

interface ListenerSpec { identity: Identity; port: number }

async function runListenerChild(): Promise<void> {
  const specs = await new Promise<ListenerSpec[]>((resolve) => process.once('message', (m) => resolve(m as ListenerSpec[])));
  const nodes: Q2QNode[] = [];
  for (const spec of specs) {
    const endpoints = new Endpoints();
    endpoints.set(DOMAIN, spec.port);
    const node = new Q2QNode(spec.identity, nodeOptions(endpoints, new MemoryTrust(), { routes: ['tcp'], peerSessions: false }));
    node.expose('hello', {
      allow: ['*'],
      onConnection: (stream: Duplex) => {
        stream.on('error', () => stream.destroy());
        stream.write('!');
        stream.pipe(stream);
      },
    });
    await node.start();
    if (node.homeState !== 'online') throw new Error(`bench listener ${spec.identity.address}: home session ${node.homeState}`);
    nodes.push(node);
  }
  process.send?.({ ready: true });
  process.once('disconnect', () => {
    void Promise.all(nodes.map((n) => n.stop())).then(() => process.exit(0));
  });
}

async function startListeners(specs: ListenerSpec[]): Promise<Proc> {
  const proc = forkBench(__filename, ['listener']);
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`bench: listeners not ready after ${READY_TIMEOUT_MS} ms:\n${proc.output()}`)), READY_TIMEOUT_MS);
    proc.child.once('message', () => { clearTimeout(timer); resolve(); });
    void proc.exited.then(() => { clearTimeout(timer); reject(new Error(`bench: listener child exited:\n${proc.output()}`)); });
  });
  proc.child.send(specs);
  await ready;
  return proc;
}

// ---- the bench ----

async function startNodes(storeUrl: string, count: number): Promise<ServerHandle[]> {
  const nodes: ServerHandle[] = [];
  for (let i = 1; i <= count; i++) {
    const dataDir = tempDir(`node${i}`);
    if (i > 1) fs.cpSync(path.join((nodes[0] as ServerHandle).dataDir, 'ca'), path.join(dataDir, 'ca'), { recursive: true });
    nodes.push(await startServer([DOMAIN], {
      dataDir,
      yaml: [`limits: { ${BENCH_LIMITS} }`, `store: ${JSON.stringify(storeUrl)}`, `node: { name: n${i}, listen: "127.0.0.1:0" }`].join('\n'),
    }));
  }
  return nodes;
}

function endpointsFor(node: ServerHandle): Endpoints {
  const e = new Endpoints();
  e.set(DOMAIN, node.port);
  return e;
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
    let t0 = performance.now();
    await registerMany(Array.from({ length: REGISTRATIONS }, (_, i) => `one${i}@${DOMAIN}`), endpointsFor(n1), trust, 6);
    const oneNode = REGISTRATIONS / ((performance.now() - t0) / 1000);
    t0 = performance.now();
    await Promise.all(nodes.map((node, k) => registerMany(
      Array.from({ length: REGISTRATIONS / 3 }, (_, i) => `three${k}x${i}@${DOMAIN}`), endpointsFor(node), trust, 2)));
    const threeNodes = REGISTRATIONS / ((performance.now() - t0) / 1000);
    emit({ bench: 'multi-node-registrations', registrations: REGISTRATIONS, oneNodePerSecond: round(oneNode, 2), threeNodesPerSecond: round(threeNodes, 2), ratio: round(threeNodes / oneNode, 2), target: 2 });

    const [alice, same, cross] = await registerMany([`alice@${DOMAIN}`, `sam@${DOMAIN}`, `cris@${DOMAIN}`], endpointsFor(n1), trust, 3);
    if (!alice || !same || !cross) throw new Error('bench: registration returned nothing');
    // sam is homed on node 1 (where alice's requests arrive), cris on node 2.
    const listeners = await startListeners([{ identity: same, port: n1.port }, { identity: cross, port: n2.port }]);
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

if (require.main === module) {
  if (process.argv[2] === 'listener') {
    runListenerChild().catch((err: unknown) => {
      process.stderr.write(`bench listener: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(1);
    });
  } else {
    runStandalone({ 'multi-node': benchMultiNode }, process.argv[2] ?? 'multi-node');
  }
}
