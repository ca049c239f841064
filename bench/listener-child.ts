/**
 * The listening side of the benches, in a child process of its own (so the
 * receiving end never shares an event loop with the sender): one library
 * Q2QNode per listener, each homed where its spec says, exposing
 *
 *   sink:  counts the bytes and answers the count at the half-close;
 *   hello: one byte at once, then echo.
 *
 * Used by bench/connections.ts and bench/multi-node.ts. The parent sends the
 * specs as the first IPC message; the child answers {ready: true} once every
 * node's home session is online, and stops the nodes when the parent
 * disconnects.
 */
import type { Duplex } from 'node:stream';
import { Q2QNode } from '../q2q/negotiate/node';
import type { Identity, RouteName } from '../q2q/negotiate/types';
import { Endpoints, forkBench, MemoryTrust, nodeOptions, type Proc } from './harness';

const READY_TIMEOUT_MS = 30_000;

export interface ListenerSpec {
  identity: Identity;
  /** Domain -> server port on 127.0.0.1: where this listener's home server (and any other domain's) is. */
  endpoints: Record<string, number>;
  routes: RouteName[];
  /** false: the per-connection path (both ends must agree), for the before/after figures. */
  peerSessions?: boolean;
}

/** sink: count, answer the count at the half-close. */
export function serveSink(stream: Duplex): void {
  let n = 0;
  stream.on('error', () => stream.destroy());
  stream.on('data', (d: Buffer) => { n += d.length; });
  stream.on('end', () => stream.end(`${n}\n`));
}

/** hello: one byte at once, then echo. */
export function serveHello(stream: Duplex): void {
  stream.on('error', () => stream.destroy());
  stream.write('!');
  stream.pipe(stream);
}

async function runListenerChild(): Promise<void> {
  const specs = await new Promise<ListenerSpec[]>((resolve) => process.once('message', (m) => resolve(m as ListenerSpec[])));
  const trust = new MemoryTrust();
  const nodes: Q2QNode[] = [];
  process.once('disconnect', () => {
    void Promise.all(nodes.map((n) => n.stop())).then(() => process.exit(0));
  });
  for (const spec of specs) {
    const endpoints = new Endpoints();
    for (const [domain, port] of Object.entries(spec.endpoints)) endpoints.set(domain, port);
    const node = new Q2QNode(spec.identity, nodeOptions(endpoints, trust, { routes: spec.routes, ...(spec.peerSessions !== undefined && { peerSessions: spec.peerSessions }) }));
    nodes.push(node);
    node.expose('sink', { allow: ['*'], onConnection: serveSink });
    node.expose('hello', { allow: ['*'], onConnection: serveHello });
    await node.start();
    if (node.homeState !== 'online') throw new Error(`bench listener ${spec.identity.address}: home session ${node.homeState}`);
  }
  process.send?.({ ready: true });
}

/** Forks the listener child with these listeners; resolves once all are online. */
export async function startListeners(specs: ListenerSpec[], nodeArgs: string[] = []): Promise<Proc> {
  const proc = forkBench(__filename, ['listener'], nodeArgs);
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`bench: listeners not ready after ${READY_TIMEOUT_MS} ms:\n${proc.output()}`)), READY_TIMEOUT_MS);
    proc.child.once('message', () => { clearTimeout(timer); resolve(); });
    void proc.exited.then(() => { clearTimeout(timer); reject(new Error(`bench: listener child exited:\n${proc.output()}`)); });
  });
  proc.child.send(specs);
  await ready;
  return proc;
}

if (require.main === module && process.argv[2] === 'listener') {
  runListenerChild().catch((err: unknown) => {
    process.stderr.write(`bench listener: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
}
