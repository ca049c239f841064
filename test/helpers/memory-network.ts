/**
 * An in-memory network for the negotiation core (like wireguard-go's test
 * binds): tcp and ptcp "hosts" that listen and dial, a relay that pairs two
 * legs by token, and a broker that forwards `inbound` to the listening node,
 * all over in-memory Duplex pairs with back-pressure, half-close and abort
 * (transport-suite.ts's memoryPair). Faults: a host can be blocked per route
 * (dials hang until their attempt is cancelled), refused (dials fail at
 * once), slowed (dials connect after a delay on the clock), or cut off (its
 * live links go silent, both ways, without closing); the relay can be switched
 * off, and the broker can lose relay-ready pushes.
 *
 * MemoryNode composes the real PeerListener, Ladder and SessionManager over
 * it, with an injected ManualClock, so tests of the ladder and of session
 * reuse run the production code in milliseconds. drive() runs the clock
 * forward while a promise settles.
 */
import type { Duplex } from 'node:stream';
import { parseAddress } from '../../q2q/address';
import { vertexError } from '../../q2q/errors';
import { createCsr, createDomainCa, generateKeyPair, issueUserCertificate, verifyUserCertificate } from '../../q2q/identity';
import { formatCandidate } from '../../q2q/negotiate/candidates';
import { Ladder, type LadderOptions } from '../../q2q/negotiate/ladder';
import { PeerListener, RELAY_READY_SAFETY_MS, type ListenerOptions } from '../../q2q/negotiate/listener';
import type { NatMapping } from '../../q2q/negotiate/nat-type';
import { ServiceTable } from '../../q2q/negotiate/services';
import { SessionManager, type SessionManagerOptions } from '../../q2q/negotiate/session-manager';
import type { Identity, Q2QStream, ServiceOptions } from '../../q2q/negotiate/types';
import type { AmpArgs } from '../../q2q/proto/amp-peer';
import type { DialOptions, DirectRoute, DirectTarget, PeerDialers, RouteName } from '../../q2q/transport/route';
import { ManualClock } from '../../q2q/util/clock';
import { memoryPair } from '../integration/connections/transport-suite';

const EMPTY = Buffer.alloc(0);

/** One connection in the network; cut, it drops every byte both ways and never closes by itself. */
export class MemoryLink {
  cut = false;
  readonly a: Duplex;
  readonly b: Duplex;

  constructor(readonly route: RouteName | 'relay-leg', readonly from: string, readonly to: string) {
    const pair = memoryPair({ tamper: (chunk) => (this.cut ? EMPTY : chunk) });
    this.a = pair.a;
    this.b = pair.b;
  }

  get open(): boolean {
    return !this.a.destroyed || !this.b.destroyed;
  }
}

type HostFault = 'block' | 'refuse';

/** Waits until `signal` aborts, then rejects as a cancelled dial. */
function hang(signal: AbortSignal, where: string): Promise<never> {
  return new Promise((_, reject) => {
    const fail = () => reject(vertexError('ConnectionLost', `${where}: cancelled`));
    if (signal.aborted) fail();
    else signal.addEventListener('abort', fail, { once: true });
  });
}

interface PendingLeg {
  caller: string;
  listener: string;
  callerLeg?: { resolve: (d: Duplex) => void };
  onCallerLeg: () => void;
}

export class MemoryNetwork {
  readonly links: MemoryLink[] = [];
  readonly dials: Array<{ route: RouteName; from: string; to: string; at: number }> = [];
  readonly #listeners = new Map<string, (raw: Duplex) => void>();
  readonly #faults = new Map<string, HostFault>();
  readonly #delays = new Map<string, number>();
  readonly #legs = new Map<string, PendingLeg>();
  relayEnabled = true;

  constructor(readonly clock: ManualClock) {}

  listen(route: DirectRoute, host: string, port: number, accept: (raw: Duplex) => void): void {
    this.#listeners.set(`${route}:${host}:${port}`, accept);
  }

  /** `fault` on every dial to `host` over `route` (or every route): block = hang, refuse = fail at once. */
  fault(host: string, fault: HostFault | null, route?: DirectRoute): void {
    for (const r of route ? [route] : (['tcp', 'ptcp'] as const)) {
      if (fault) this.#faults.set(`${r}:${host}`, fault);
      else this.#faults.delete(`${r}:${host}`);
    }
  }

  /** Dials to `host` over `route` (or every direct route) connect only after `ms` on the clock; 0 removes it. */
  slow(host: string, ms: number, route?: DirectRoute): void {
    for (const r of route ? [route] : (['tcp', 'ptcp'] as const)) {
      if (ms > 0) this.#delays.set(`${r}:${host}`, ms);
      else this.#delays.delete(`${r}:${host}`);
    }
  }

  /** Silences every live link touching `host`: the peer is as good as dead. */
  cutOff(host: string): void {
    for (const link of this.links) if (link.from === host || link.to === host) link.cut = true;
  }

  liveLinks(route?: MemoryLink['route']): MemoryLink[] {
    return this.links.filter((l) => l.open && (!route || l.route === route));
  }

  dialers(from: string): PeerDialers {
    return {
      tcp: (target, opts) => this.#dial('tcp', from, target, opts),
      ptcp: (target, _token, opts) => this.#dial('ptcp', from, target, opts),
      relay: (_domain, token, opts) => this.#relayLeg('caller', from, token, opts),
    };
  }

  async #dial(route: DirectRoute, from: string, target: DirectTarget, opts: DialOptions): Promise<Duplex> {
    const where = `${route} to ${target.host}:${target.port}`;
    this.dials.push({ route, from, to: `${target.host}:${target.port}`, at: this.clock.now() });
    await Promise.resolve();
    const fault = this.#faults.get(`${route}:${target.host}`);
    if (fault === 'block') return hang(opts.signal, where);
    const delay = this.#delays.get(`${route}:${target.host}`);
    if (delay !== undefined) {
      await Promise.race([new Promise<void>((resolve) => this.clock.setTimer(resolve, delay)), hang(opts.signal, where)]);
    }
    const accept = this.#listeners.get(`${route}:${target.host}:${target.port}`);
    if (!accept || fault === 'refuse') throw vertexError('Unreachable', `${where}: ECONNREFUSED`);
    if (opts.signal.aborted) throw vertexError('ConnectionLost', `${where}: cancelled`);
    const link = new MemoryLink(route, from, target.host);
    this.links.push(link);
    accept(link.b);
    return link.a;
  }

  // ---- the relay ----

  /** The broker registers each token; the listener is told once the caller's leg is in. */
  registerToken(token: string, caller: string, listener: string, onCallerLeg: () => void): void {
    this.#legs.set(token, { caller, listener, onCallerLeg });
  }

  listenerLeg(host: string, token: string): Promise<Duplex> {
    return this.#relayLeg('listener', host, token, { signal: new AbortController().signal, deadline: Infinity });
  }

  async #relayLeg(role: 'caller' | 'listener', from: string, token: string, opts: DialOptions): Promise<Duplex> {
    this.dials.push({ route: 'relay', from, to: `relay:${role}`, at: this.clock.now() });
    await Promise.resolve();
    if (!this.relayEnabled) return hang(opts.signal, 'relay');
    const pending = this.#legs.get(token);
    if (!pending) throw vertexError('TokenInvalid', 'relay: unknown, expired or used token');
    if (role === 'caller') {
      if (pending.callerLeg) throw vertexError('TokenInvalid', 'relay: this side of the token is already connected');
      const leg = new Promise<Duplex>((resolve) => { pending.callerLeg = { resolve }; });
      pending.onCallerLeg();
      return Promise.race([leg, hang(opts.signal, 'relay')]);
    }
    if (!pending.callerLeg) throw vertexError('TokenInvalid', 'relay: the caller is not here');
    this.#legs.delete(token);
    const link = new MemoryLink('relay-leg', pending.caller, from);
    this.links.push(link);
    pending.callerLeg.resolve(link.a);
    return link.b;
  }
}

// ---- identities ----

export interface Domain {
  name: string;
  ca: { certPem: string; keyPem: string };
}

export async function memoryDomain(name: string): Promise<Domain> {
  return { name, ca: await createDomainCa(name) };
}

export async function memoryIdentity(domain: Domain, user: string, lifetimeMs = 60 * 60 * 1000, now?: Date): Promise<Identity> {
  const address = `${user}@${domain.name}`;
  const { privateKeyPem } = await generateKeyPair();
  const csrPem = await createCsr(address, privateKeyPem);
  const issued = await issueUserCertificate({ caCertPem: domain.ca.certPem, caKeyPem: domain.ca.keyPem, csrPem, expectedAddress: address, lifetimeMs, now });
  return { address, keyPem: privateKeyPem, certPem: issued.certPem };
}

// ---- nodes ----

/** Forwards inbound to the listening node, as an identity server's broker does, and registers relay tokens. */
export class MemoryBroker {
  readonly #nodes = new Map<string, MemoryNode>();
  readonly inbounds: AmpArgs[] = [];
  /** relay-ready pushes are lost on their way to the listener (a notice between nodes that never arrives). */
  loseRelayReady = false;

  constructor(readonly network: MemoryNetwork) {}

  add(node: MemoryNode): void {
    this.#nodes.set(node.identity.address, node);
  }

  async inbound(caller: MemoryNode, args: AmpArgs): Promise<AmpArgs> {
    this.inbounds.push(args);
    const to = args.to ?? '';
    const listener = this.#nodes.get(to);
    if (!listener) throw vertexError('Offline', `${to} is not online`);
    const answer = await listener.listener.onInbound({
      from: caller.identity.address, from_device: caller.device, service: args.service ?? '',
      certificate: caller.identity.certPem, candidates: args.candidates ?? '[]', routes: args.routes ?? '[]',
    });
    const token = answer.token ?? '';
    this.network.registerToken(token, caller.host, listener.host, () => {
      if (this.loseRelayReady) return;
      try {
        listener.listener.onRelayReady({ token });
      } catch {
        // A token the listener has forgotten: the caller's leg waits and is cancelled.
      }
    });
    return { ...answer, certificate: listener.identity.certPem, relay: this.network.relayEnabled ? '1' : '0', device: listener.device };
  }
}

export interface MemoryNodeOptions {
  routes?: RouteName[];
  nat?: NatMapping;
  relayDelayMs?: number;
  device?: string;
  session?: Partial<SessionManagerOptions>;
  ladder?: Partial<LadderOptions>;
  listener?: Partial<ListenerOptions>;
}

export class MemoryNode {
  readonly services: ServiceTable;
  readonly listener: PeerListener;
  readonly ladder: Ladder;
  readonly sessions: SessionManager;
  readonly device: string;
  identity: Identity;
  nat: NatMapping;

  constructor(
    identity: Identity,
    readonly host: string,
    readonly world: { network: MemoryNetwork; broker: MemoryBroker; domains: Domain[]; wallStart: number },
    opts: MemoryNodeOptions = {},
  ) {
    this.identity = identity;
    this.device = opts.device ?? '';
    this.nat = opts.nat ?? 'easy';
    const routes = opts.routes ?? ['tcp', 'ptcp', 'relay'];
    const { network } = world;
    const clock = network.clock;
    this.services = new ServiceTable(() => this.identity.address);
    const wallNow = () => world.wallStart + clock.now();
    network.listen('tcp', host, 7000, (raw) => void this.listener.accept(raw, 'tcp'));
    network.listen('ptcp', host, 7001, (raw) => void this.listener.accept(raw, 'ptcp'));
    this.listener = new PeerListener({
      identity: () => this.identity,
      routes,
      services: this.services,
      candidates: async (direct) => direct.map((r) => formatCandidate(r, host, r === 'tcp' ? 7000 : 7001)),
      natMapping: () => this.nat,
      detectMappingFor: async () => this.nat,
      punch: async () => undefined,
      openRelayLeg: (token) => network.listenerLeg(host, token),
      onChannel: (channel) => this.sessions.adopt(channel),
      // As Q2QNode sets it up.
      relayReadySafetyMs: RELAY_READY_SAFETY_MS,
      clock,
      ...opts.listener,
    });
    this.ladder = new Ladder({
      identity: () => this.identity,
      routes,
      dialers: network.dialers(host),
      inbound: (_domain, args) => world.broker.inbound(this, args),
      ownCandidates: async () => [formatCandidate('ptcp', host, 7001)],
      verifyListener: (to, certificate) => {
        const domain = world.domains.find((d) => d.name === parseAddress(to).domain);
        if (!domain) throw vertexError('CertificateInvalid', `no CA for ${to}`);
        verifyUserCertificate(certificate, domain.ca.certPem, { expectedAddress: to, now: new Date(wallNow()) });
      },
      natMapping: () => this.nat,
      device: this.device || undefined,
      clock,
      relayDelayMs: opts.relayDelayMs,
      ...opts.ladder,
    });
    this.sessions = new SessionManager({
      identity: () => this.identity,
      ladder: this.ladder,
      services: this.services,
      routes,
      clock,
      wallNow,
      ...opts.session,
    });
    world.broker.add(this);
  }

  expose(service: string, opts: ServiceOptions): void {
    this.services.set(service, opts);
    this.sessions.review();
  }

  unexpose(service: string): void {
    this.services.delete(service);
    this.sessions.review();
  }

  /** Connects; the stream's errors are absorbed (tests look at them where it matters). */
  async connect(target: string, timeoutMs = 15_000): Promise<Q2QStream> {
    const colon = target.lastIndexOf(':');
    const stream = await this.sessions.connect({ to: target.slice(0, colon), service: target.slice(colon + 1), timeoutMs });
    stream.on('error', () => undefined);
    return stream;
  }

  stop(): void {
    this.sessions.closeAll();
    this.listener.stop();
  }
}

/** A world of domains, an in-memory network and broker, on one ManualClock. */
export class MemoryWorld {
  readonly clock = new ManualClock();
  readonly network = new MemoryNetwork(this.clock);
  readonly broker = new MemoryBroker(this.network);
  readonly domains: Domain[] = [];
  readonly nodes: MemoryNode[] = [];
  readonly wallStart = Date.now();

  async node(address: string, host: string, opts: MemoryNodeOptions & { lifetimeMs?: number } = {}): Promise<MemoryNode> {
    const [user, domainName] = address.split('@') as [string, string];
    let domain = this.domains.find((d) => d.name === domainName);
    if (!domain) {
      domain = await memoryDomain(domainName);
      this.domains.push(domain);
    }
    const identity = await memoryIdentity(domain, user, opts.lifetimeMs, new Date(this.wallStart));
    const node = new MemoryNode(identity, host, this, opts);
    this.nodes.push(node);
    return node;
  }

  /**
   * Runs the clock forward in small steps, letting in-memory I/O (ticks and
   * immediates) settle between steps, until `promise` settles or `maxMs` of
   * simulated time has passed. Rejects if it has not settled by then.
   */
  async drive<T>(promise: Promise<T>, maxMs = 60_000, stepMs = 1): Promise<T> {
    let settled = false;
    const watched = promise.finally(() => { settled = true; });
    watched.catch(() => undefined);
    const end = this.clock.now() + maxMs;
    while (!settled && this.clock.now() < end) {
      await this.settle();
      if (!settled) this.clock.advance(stepMs);
    }
    await this.settle();
    if (!settled) throw new Error(`drive: nothing settled within ${maxMs} simulated ms`);
    return watched;
  }

  /** Advances the clock by `ms` in small steps, letting I/O settle between them. */
  async advance(ms: number, stepMs = 10): Promise<void> {
    for (let t = 0; t < ms; t += stepMs) {
      this.clock.advance(Math.min(stepMs, ms - t));
      await this.settle();
    }
  }

  /** Lets every queued tick and immediate run, a few rounds deep. */
  async settle(rounds = 4): Promise<void> {
    for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
  }

  stop(): void {
    for (const node of this.nodes) node.stop();
    for (const link of this.network.links) {
      link.a.destroy();
      link.b.destroy();
    }
  }
}
