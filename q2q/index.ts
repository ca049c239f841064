/**
 * The library API: listenQ2Q and connectQ2Q, shaped like net.createServer
 * and net.connect. See README "Library".
 */
import { Q2QNode } from './negotiate/node';
import type { ConnectOptions, Identity, Q2QOptions, Q2QStream, ServiceOptions } from './negotiate/types';

export { Q2QNode } from './negotiate/node';
export * from './negotiate/types';
export { createServerResolver } from './control/discovery';
export { VertexError } from './errors';

/** Exposes `services` as identity:service and keeps them online until node.stop(). */
export async function listenQ2Q(identity: Identity, services: Record<string, ServiceOptions>, options: Q2QOptions): Promise<Q2QNode> {
  const node = new Q2QNode(identity, options);
  for (const [name, service] of Object.entries(services)) node.expose(name, service);
  await node.start();
  return node;
}

/**
 * Connects to `target` ('bob@b.test:echo'). The returned stream reports its
 * .route, .peer and .connectMs; the node behind it closes with the stream.
 */
export async function connectQ2Q(identity: Identity, target: string, options: Q2QOptions & ConnectOptions): Promise<Q2QStream> {
  const node = new Q2QNode(identity, { ...options, routes: (options.routes ?? ['tcp', 'ptcp', 'relay']) });
  try {
    const stream = await node.connect(target, options);
    stream.once('close', () => void node.stop());
    return stream;
  } catch (err) {
    await node.stop();
    throw err;
  }
}
