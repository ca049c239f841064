/**
 * An in-process stand-in for the Q2Q network, for unit tests of the agent:
 * nodes expose services into a shared table and connect() hands back one end
 * of a real loopback TCP pair, the other end going to the service's
 * onConnection. Policy follows the real rules closely enough for the agent:
 * Offline when the owner's node is not started, NotExposed, Denied by the
 * allow list.
 */
import * as net from 'node:net';
import { vertexError } from '../../../q2q/errors';
import type { ConnectOptions, Identity, NodeStatus, Q2QOptions, Q2QStream, RouteName, ServiceOptions } from '../../../q2q/negotiate/types';
import type { AgentNode, IdentitySource } from '../../../agent/daemon';

interface Exposed {
  owner: string;
  opts: ServiceOptions;
}

export function allowMatches(patterns: readonly string[], who: string): boolean {
  const domain = who.slice(who.indexOf('@') + 1);
  return patterns.some((p) => p === '*' || p === who || p === `*@${domain}`);
}

export class FakeNetwork {
  readonly services = new Map<string, Exposed>();
  readonly online = new Set<string>();
  readonly nodes: FakeNode[] = [];
  route: RouteName = 'tcp';
  /** Awaited at the start of every connect, so tests can hold dials open; `connecting` counts them. */
  beforeConnect: (() => Promise<void>) | undefined;
  connecting = 0;
  maxConnecting = 0;
  #server: net.Server | undefined;
  #port = 0;
  #waiting: Array<(s: net.Socket) => void> = [];
  readonly #sockets = new Set<net.Socket>();

  async start(): Promise<void> {
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      this.#track(s);
      const next = this.#waiting.shift();
      if (next) next(s);
      else s.destroy();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    this.#server = server;
    this.#port = (server.address() as net.AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()));
  }

  #track(s: net.Socket): void {
    this.#sockets.add(s);
    s.on('close', () => this.#sockets.delete(s));
  }

  /** A connected loopback pair: [caller side, listener side]. */
  async pair(): Promise<[net.Socket, net.Socket]> {
    const accepted = new Promise<net.Socket>((resolve) => this.#waiting.push(resolve));
    const client = net.connect({ host: '127.0.0.1', port: this.#port, allowHalfOpen: true });
    this.#track(client);
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve());
      client.once('error', reject);
    });
    return [client, await accepted];
  }

  createNode = (identity: Identity, options: Q2QOptions): AgentNode => {
    const node = new FakeNode(this, identity, options);
    this.nodes.push(node);
    return node;
  };
}

function decorate(s: net.Socket, info: { route: RouteName; peer: string; device: string; service: string; connectMs: number }): Q2QStream {
  return Object.assign(s, info) as unknown as Q2QStream;
}

export class FakeNode implements AgentNode {
  readonly identity: Identity;
  readonly options: Q2QOptions;
  started = false;
  stopped = false;
  readonly #net: FakeNetwork;
  readonly #mine = new Set<string>();

  constructor(network: FakeNetwork, identity: Identity, options: Q2QOptions) {
    this.#net = network;
    this.identity = identity;
    this.options = options;
  }

  async start(): Promise<void> {
    this.started = true;
    this.#net.online.add(this.identity.address);
  }

  expose(service: string, opts: ServiceOptions): void {
    const key = `${this.identity.address}:${service}`;
    this.#net.services.set(key, { owner: this.identity.address, opts });
    this.#mine.add(key);
  }

  unexpose(service: string): void {
    const key = `${this.identity.address}:${service}`;
    this.#net.services.delete(key);
    this.#mine.delete(key);
  }

  async connect(target: string, _opts?: ConnectOptions): Promise<Q2QStream> {
    const net_ = this.#net;
    net_.connecting += 1;
    net_.maxConnecting = Math.max(net_.maxConnecting, net_.connecting);
    try {
      await net_.beforeConnect?.();
      return await this.#connect(target);
    } finally {
      net_.connecting -= 1;
    }
  }

  async #connect(target: string): Promise<Q2QStream> {
    const colon = target.lastIndexOf(':');
    const peer = target.slice(0, colon);
    const service = target.slice(colon + 1);
    if (!this.#net.online.has(peer)) throw vertexError('Offline', `connect ${target}: ${peer} is offline`);
    const exposed = this.#net.services.get(target);
    if (!exposed) throw vertexError('NotExposed', `connect ${target}: not exposed`);
    if (!allowMatches(exposed.opts.allow ?? [peer], this.identity.address)) {
      throw vertexError('Denied', `connect ${target}: denied`);
    }
    // As Q2QNode does: the service's prepare (an expose's local connect) before the connect completes.
    const prepared = exposed.opts.prepare ? await exposed.opts.prepare({ peerSpoke: () => false }) : undefined;
    const [mine, theirs] = await this.#net.pair();
    const route = this.#net.route;
    exposed.opts.onConnection(decorate(theirs, { route, peer: this.identity.address, device: this.device, service, connectMs: 0 }), prepared);
    return decorate(mine, { route, peer, device: 'fake', service, connectMs: 3 });
  }

  get device(): string {
    return this.options.device ?? 'fake';
  }

  status(): NodeStatus {
    return {
      identity: this.identity.address,
      device: this.device,
      devices: { online: [this.device], conflicts: [], moreConflicts: 0, replacedBy: null },
      certificateNotAfter: '2030-01-01T00:00:00.000Z',
      home: { state: this.started && !this.stopped ? 'online' : 'offline', server: '127.0.0.1:8788', since: new Date(0).toISOString(), lastError: null },
      reflexive: { tcp: null, udp: '127.0.0.1:40000' },
      services: [...this.#mine].map((k) => ({ service: k.slice(k.lastIndexOf(':') + 1), allow: this.#net.services.get(k)?.opts.allow ?? [] })),
      peerListen: null,
    };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.#net.online.delete(this.identity.address);
    for (const key of this.#mine) this.#net.services.delete(key);
    this.#mine.clear();
  }
}

/** A home that holds just an address: the fake network never looks at keys. */
export function fakeHome(address: string): IdentitySource {
  return {
    loadIdentity: () => ({ address, keyPem: '', certPem: '' }),
    saveIdentity: () => undefined,
    pinDomainCa: () => 'match',
    loadCaFor: () => null,
  };
}
