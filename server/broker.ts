/**
 * Presence and inbound brokering. An agent's `listen` puts one of its user's
 * devices online with its services; a caller's `inbound` is forwarded to the
 * device that serves the name (the one the caller named, else the one
 * chooseDevice picks) with the caller's certificate, and that device's answer
 * (candidates and a one-time token) goes back with the device's certificate
 * and name. The token is registered with the relay so both sides can fall back
 * to it. The device rules are in q2q/control/protocol.ts, "Devices".
 */
import { formatAddress, formatDeviceAddress, parseAddress, parseDevice, parseService } from '../q2q/address';
import {
  chooseDevice, COMMANDS, INBOUND_FORWARD_TIMEOUT_MS, MAX_CONFLICTS_REPORTED, MAX_DEVICES_PER_ADDRESS, UNNAMED_DEVICE, type Conflict,
} from '../q2q/control/protocol';
import { asVertexError, isVertexError, vertexError } from '../q2q/errors';
import type { AmpArgs, AmpPeer } from '../q2q/proto/amp-peer';
import type { Logger } from '../q2q/util/log';
import type { Relay } from './relay';
import type { RemoteDevice } from './store/node-directory';

const TOKEN_RE = /^[0-9a-f]{32}$/;

/**
 * Whether the caller may open a relay leg, by the routes its inbound names:
 * only then are the other nodes told where its token pairs (server/relay.ts).
 * No list, or one that does not parse (an older agent), counts as yes.
 */
function mayRelay(routes: string | undefined): boolean {
  if (routes === undefined) return true;
  try {
    const list = JSON.parse(routes) as unknown;
    return !Array.isArray(list) || list.includes('relay');
  } catch {
    return true;
  }
}
export const MAX_SERVICES_PER_LISTENER = 256;
/** How long a presence or replaced push may take; nobody waits on it. */
const PUSH_TIMEOUT_MS = 10_000;

interface Listener {
  device: string;
  peer: AmpPeer;
  certPem: string;
  services: Set<string>;
  /** The session's remote HOST:PORT, told to a session this one replaces. */
  remote: string;
  /** The presence view this device was last told (listen answer or push): a push goes out only when it changes. */
  lastView?: string;
}

export interface Caller {
  address: string;
  certPem: string;
}

/** What a listening device is told about its address's other devices (listen answer, presence push). */
export interface PresenceView {
  devices: string[];
  conflicts: Conflict[];
  /** Conflicts left out of `conflicts` beyond MAX_CONFLICTS_REPORTED. */
  moreConflicts: number;
}

export function presenceArgs(view: PresenceView): AmpArgs {
  return {
    devices: JSON.stringify(view.devices),
    conflicts: JSON.stringify(view.conflicts),
    ...(view.moreConflicts > 0 && { more_conflicts: String(view.moreConflicts) }),
  };
}

/**
 * The other nodes of the domain (server/node-mesh.ts), when this server is
 * one node of several: where their devices listen, and the way to forward an
 * inbound to one of them.
 */
export interface NodePresence {
  /** Resolves once (address, device) is written here and announced to the other nodes. */
  put(address: string, device: string, services: readonly string[]): Promise<void>;
  remove(address: string, device: string): void;
  /**
   * The devices of `address` on other nodes, from this node's copy in memory
   * (kept by the store's notifications); `fresh` reads the store instead.
   */
  devicesElsewhere(address: string, opts?: { fresh?: boolean }): Promise<RemoteDevice[]>;
  /** Forwards an inbound to `node`, which answers as a listener's server would (token, candidates, certificate, device). */
  forwardInbound(node: string, domain: string, args: AmpArgs): Promise<AmpArgs>;
  /** Tells `node` that (address, device) now listens here: its session there is replaced by `by`. */
  replaced(node: string, address: string, device: string, by: string): void;
  /** Tells `node` that the caller's relay leg for a token it brokered is in (relay-ready for its listener). */
  relayReady(node: string, args: { token: string; to: string; device: string }): void;
}

type Chosen = { local: Listener } | { remote: RemoteDevice };

export class Broker {
  /** address -> device -> its listening session. */
  readonly #listeners = new Map<string, Map<string, Listener>>();
  readonly #servedDomains: ReadonlySet<string>;
  readonly #relay: Relay;
  readonly #log: Logger;
  #nodes: NodePresence | null = null;
  /** Each session's last listen (with other nodes, where a listen waits on the node directory). */
  readonly #listening = new WeakMap<AmpPeer, Promise<AmpArgs>>();

  constructor(opts: { domains: readonly string[]; relay: Relay; log: Logger }) {
    this.#servedDomains = new Set(opts.domains);
    this.#relay = opts.relay;
    this.#log = opts.log;
  }

  /** Makes this broker one node of several (server/node-mesh.ts). */
  attachNodes(nodes: NodePresence): void {
    this.#nodes = nodes;
  }

  /** Listening sessions (devices), over all addresses. */
  get onlineCount(): number {
    let n = 0;
    for (const devices of this.#listeners.values()) n += devices.size;
    return n;
  }

  /** Every listening session (each agent's home session), once each: where `revoked` is pushed. */
  listeningPeers(): AmpPeer[] {
    const peers = new Set<AmpPeer>();
    for (const devices of this.#listeners.values()) for (const l of devices.values()) peers.add(l.peer);
    return [...peers];
  }

  /** The devices of `address` online now, sorted. */
  devicesOf(address: string): string[] {
    return [...(this.#listeners.get(address)?.keys() ?? [])].sort();
  }

  /**
   * Puts `peer` online as (address, device) with these services, replacing
   * another session's entry for the same pair, and answers with what the
   * device should know (protocol.ts, `listen`).
   */
  listen(address: string, peer: AmpPeer, certPem: string, args: AmpArgs, remote = ''): AmpArgs | Promise<AmpArgs> {
    const nodes = this.#nodes;
    if (!nodes) return this.#listen(address, peer, certPem, args, remote, []).answer;
    // One session's listens apply in the order it sent them. Each waits on the node directory
    // first, and an agent that exposes two services at start sends two listens back to back:
    // applied out of order, the older list would win and a service it exposes would be missing.
    const previous = this.#listening.get(peer) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(async () => {
      // Check the arguments before asking the store (a bad listen costs no query).
      this.#servicesOf(args);
      const device = args.device ? parseDevice(args.device) : UNNAMED_DEVICE;
      const elsewhere = await this.#elsewhere(address);
      const { answer, services } = this.#listen(address, peer, certPem, args, remote, elsewhere);
      // The answer waits until the other nodes can find the device: "online" then means online on every node.
      await nodes.put(address, device, [...services]);
      // The other nodes' devices hear of this one through the store's notification (NodeDirectory's onPresenceChange).
      const moved = elsewhere.find((d) => d.device === device);
      if (moved) nodes.replaced(moved.node, address, device, remote);
      return answer;
    });
    this.#listening.set(peer, next);
    return next;
  }

  #servicesOf(args: AmpArgs): Set<string> {
    let names: unknown;
    try {
      names = JSON.parse(args.services ?? '[]');
    } catch {
      throw vertexError('BadRequest', 'listen: "services" must be a JSON array of service names');
    }
    // Strings only: String() of a deeply nested array recurses until the stack overflows (fuzz).
    if (!Array.isArray(names) || names.length > MAX_SERVICES_PER_LISTENER || !names.every((n) => typeof n === 'string')) {
      throw vertexError('BadRequest', `listen: "services" must be a JSON array of at most ${MAX_SERVICES_PER_LISTENER} names`);
    }
    return new Set(names.map((n: string) => parseService(n)));
  }

  /** The devices of `address` on other nodes (none when the store does not answer: this node's own still work). */
  async #elsewhere(address: string): Promise<RemoteDevice[]> {
    if (!this.#nodes) return [];
    try {
      const here = this.#listeners.get(address);
      // A device listening here is the current one: a row elsewhere for it is stale.
      return (await this.#nodes.devicesElsewhere(address)).filter((d) => !here?.has(d.device));
    } catch (err) {
      this.#log.warn({ address, reason: (err as Error).message }, 'the node directory did not answer; devices on other nodes left out');
      return [];
    }
  }

  #listen(address: string, peer: AmpPeer, certPem: string, args: AmpArgs, remote: string, elsewhere: readonly RemoteDevice[]): { answer: AmpArgs; services: Set<string> } {
    const services = this.#servicesOf(args);
    const device = args.device ? parseDevice(args.device) : UNNAMED_DEVICE;
    const devices = this.#listeners.get(address) ?? new Map<string, Listener>();
    // A session is one device: listening under a new name gives up the old one.
    for (const [name, l] of devices) {
      if (l.peer === peer && name !== device) {
        devices.delete(name);
        this.#nodes?.remove(address, name);
      }
    }
    const previous = devices.get(device);
    const movedFrom = previous ? undefined : elsewhere.find((d) => d.device === device);
    if (args.takeover === '0' && ((previous && previous.peer !== peer) || movedFrom)) {
      // A replaced node asking whether its device is free again: it is not.
      const where = previous ? `a session from ${previous.remote}` : `a session on server node ${movedFrom?.node}`;
      throw vertexError('NotAllowed', `listen ${formatDeviceAddress(parseAddress(address), device)}: ${where} listens as this device`);
    }
    const others = elsewhere.filter((d) => d.device !== device && !devices.has(d.device)).length;
    if (!previous && !movedFrom && devices.size + others >= MAX_DEVICES_PER_ADDRESS) {
      throw vertexError('NotAllowed', `listen ${formatDeviceAddress(parseAddress(address), device)}: ${address} already has ${MAX_DEVICES_PER_ADDRESS} devices online; stop one or reuse its device name`);
    }
    let replaced: string | undefined;
    if (previous && previous.peer !== peer) {
      replaced = previous.remote;
      this.#log.warn({ address, device, old: previous.remote, new: remote }, 'a newer session of this device takes over listening');
      previous.peer.call(COMMANDS.replaced, { device, by: remote }, { timeoutMs: PUSH_TIMEOUT_MS }).catch(() => undefined);
    } else if (movedFrom) {
      replaced = `server node ${movedFrom.node}`;
      this.#log.warn({ address, device, node: movedFrom.node, new: remote }, 'a newer session of this device takes over listening from another node');
    }
    const rest = elsewhere.filter((d) => d.device !== device);
    const view = this.#view(devices, device, rest, services);
    devices.set(device, { device, peer, certPem, services, remote, lastView: JSON.stringify(view) });
    this.#listeners.set(address, devices);
    this.#log.info({ address, device, services: [...services] }, 'listening');
    this.#pushChanged(address, devices, rest, device);
    return { answer: { device, ...presenceArgs(view), ...(replaced !== undefined && { replaced }) }, services };
  }

  /**
   * Another node took (address, device) over: its session here is told it
   * was replaced and stops listening (as when a newer session of the device
   * comes to this node).
   */
  replacedElsewhere(address: string, device: string, by: string): void {
    const devices = this.#listeners.get(address);
    const previous = devices?.get(device);
    if (!devices || !previous) return;
    this.#log.warn({ address, device, old: previous.remote, by }, 'a newer session of this device on another node takes over listening');
    previous.peer.call(COMMANDS.replaced, { device, by }, { timeoutMs: PUSH_TIMEOUT_MS }).catch(() => undefined);
    devices.delete(device);
    if (devices.size === 0) this.#listeners.delete(address);
  }

  /** The devices of `address` changed on another node: tell the devices here whose view changed. */
  async refreshPresence(address: string): Promise<void> {
    const devices = this.#listeners.get(address);
    if (!devices || devices.size === 0) return;
    this.#pushChanged(address, devices, await this.#elsewhere(address));
  }

  /** Drops the listener if it is this session (a newer session may have replaced it). */
  drop(address: string, peer: AmpPeer): void {
    const devices = this.#listeners.get(address);
    if (!devices) return;
    let dropped = false;
    for (const [device, l] of devices) {
      if (l.peer !== peer) continue;
      devices.delete(device);
      dropped = true;
      this.#nodes?.remove(address, device);
      this.#log.info({ address, device }, 'offline');
    }
    if (devices.size === 0) this.#listeners.delete(address);
    if (!dropped) return;
    if (!this.#nodes) {
      this.#pushChanged(address, devices, []);
      return;
    }
    // The other nodes' devices hear of it through the store's notification of the removed row.
    void this.#elsewhere(address).then((elsewhere) => this.#pushChanged(address, devices, elsewhere));
  }

  /** What `device` is told: every device of the address (here and on other nodes), and the services several expose. */
  #view(devices: ReadonlyMap<string, Listener>, device: string, elsewhere: readonly RemoteDevice[] = [], ownServices?: ReadonlySet<string>): PresenceView {
    const own = ownServices ?? devices.get(device)?.services;
    const all = new Map<string, ReadonlySet<string>>();
    for (const d of elsewhere) all.set(d.device, new Set(d.services));
    for (const [name, l] of devices) all.set(name, l.services);
    all.set(device, own ?? new Set());
    const conflicts: Conflict[] = [];
    for (const service of [...(own ?? [])].sort()) {
      const exposing = [...all].filter(([, services]) => services.has(service)).map(([name]) => name).sort();
      if (exposing.length > 1) conflicts.push({ service, devices: exposing, chosen: chooseDevice(exposing) as string });
    }
    return {
      devices: [...all.keys()].sort(),
      conflicts: conflicts.slice(0, MAX_CONFLICTS_REPORTED),
      moreConflicts: Math.max(0, conflicts.length - MAX_CONFLICTS_REPORTED),
    };
  }

  /** Tells every device (but `except`, which gets an answer instead) whose view changed since it was last told. */
  #pushChanged(address: string, devices: ReadonlyMap<string, Listener>, elsewhere: readonly RemoteDevice[], except?: string): void {
    for (const [device, l] of devices) {
      if (device === except) continue;
      const view = this.#view(devices, device, elsewhere);
      const text = JSON.stringify(view);
      if (l.lastView === text) continue;
      l.lastView = text;
      this.#log.debug({ address, device }, 'presence changed');
      l.peer.call(COMMANDS.presence, presenceArgs(view), { timeoutMs: PUSH_TIMEOUT_MS }).catch(() => undefined);
    }
  }

  async inbound(caller: Caller, args: AmpArgs): Promise<AmpArgs> {
    const address = parseAddress(args.to ?? '');
    const to = formatAddress(address);
    const service = parseService(args.service ?? '');
    const wanted = args.device ? parseDevice(args.device) : undefined;
    const fromDevice = args.from_device ? parseDevice(args.from_device) : undefined;
    if (!this.#servedDomains.has(address.domain)) {
      throw vertexError('UnknownDomain', `inbound: this server does not serve ${address.domain}`);
    }
    const chosen = await this.#choose(to, address, service, wanted);
    if ('remote' in chosen) {
      const node = chosen.remote.node;
      const answer = await this.#nodes!.forwardInbound(node, address.domain, {
        from: caller.address,
        ...(fromDevice !== undefined && { from_device: fromDevice }),
        to, service, device: chosen.remote.device,
        certificate: caller.certPem,
        candidates: args.candidates ?? '[]',
        routes: args.routes ?? '[]',
      });
      const token = answer.token ?? '';
      if (!TOKEN_RE.test(token)) throw vertexError('Internal', `node ${node} answered inbound without a valid token`);
      // The token pairs here, on the caller's node: the listener's leg, wherever it lands, is brought here.
      // relay-ready goes to the listener through its node.
      const device = answer.device ?? chosen.remote.device;
      const nodes = this.#nodes!;
      this.#relay.register(token, caller.address, to, () => nodes.relayReady(node, { token, to, device }), { announce: mayRelay(args.routes) });
      this.#log.info({ from: caller.address, fromDevice, to, device: answer.device, node, service }, 'inbound brokered through another node');
      return {
        token,
        candidates: answer.candidates ?? '[]',
        certificate: answer.certificate ?? '',
        relay: this.#relay.enabled ? '1' : '0',
        device: answer.device ?? chosen.remote.device,
      };
    }
    return this.#forwardToListener(caller, chosen.local, { address, to, service, fromDevice, named: wanted !== undefined, args });
  }

  /**
   * An inbound another node forwarded for a device listening here
   * (server/node-mesh.ts). The token pairs on the caller's node
   * (`relayNode`): a relay leg that lands here is brought there.
   */
  async inboundFromNode(caller: Caller, args: AmpArgs, relayNode: string): Promise<AmpArgs> {
    const address = parseAddress(args.to ?? '');
    const to = formatAddress(address);
    const service = parseService(args.service ?? '');
    const device = parseDevice(args.device ?? '');
    const fromDevice = args.from_device ? parseDevice(args.from_device) : undefined;
    const named = formatDeviceAddress(address, device);
    const listener = this.#listeners.get(to)?.get(device);
    if (!listener) throw vertexError('Offline', `${named} is not online`);
    if (!listener.services.has(service)) throw vertexError('NotExposed', `${named} does not expose "${service}"`);
    return this.#forwardToListener(caller, listener, { address, to, service, fromDevice, named: true, args, relayNode });
  }

  /** Another node holds the token and has the caller's relay leg: relay-ready for our listener. */
  relayReadyFromNode(to: string, device: string, token: string): void {
    const listener = this.#listeners.get(to)?.get(device);
    if (!listener || listener.peer.closed || !TOKEN_RE.test(token)) return;
    listener.peer.callNoAnswer(COMMANDS.relayReady, { token });
  }

  /**
   * The device an inbound reaches, here or (with several nodes) on another
   * node. Other nodes' devices come from this node's copy in memory; when it
   * has none for the inbound, the store is asked once, so that a device that
   * came online on another node a moment ago (its notification still on the
   * way) is not called Offline. An inbound to an online device costs no
   * store query; one to an offline address costs one, as every inbound did before.
   */
  async #choose(to: string, address: ReturnType<typeof parseAddress>, service: string, wanted: string | undefined): Promise<Chosen> {
    try {
      return await this.#chooseFrom(to, address, service, wanted, false);
    } catch (err) {
      if (!this.#nodes || !isVertexError(err) || (err.code !== 'Offline' && err.code !== 'NotExposed')) throw err;
      return this.#chooseFrom(to, address, service, wanted, true);
    }
  }

  async #chooseFrom(to: string, address: ReturnType<typeof parseAddress>, service: string, wanted: string | undefined, fresh: boolean): Promise<Chosen> {
    const named = formatDeviceAddress(address, wanted);
    const here = this.#listeners.get(to);
    const local = wanted !== undefined ? here?.get(wanted) : undefined;
    // A device named and listening here needs no look elsewhere.
    let elsewhere: RemoteDevice[] = [];
    if (this.#nodes && !local) {
      try {
        elsewhere = await this.#nodes.devicesElsewhere(to, { fresh });
      } catch (err) {
        this.#log.warn({ to, reason: (err as Error).message }, 'inbound: the node directory did not answer; only this node\'s devices are reached');
      }
      // A device listening here is the current one: a row elsewhere for it is stale.
      if (here) elsewhere = elsewhere.filter((d) => !here.has(d.device));
    }
    if (wanted !== undefined) {
      if (local) {
        if (!local.services.has(service)) throw vertexError('NotExposed', `${named} does not expose "${service}"`);
        return { local };
      }
      const remote = elsewhere.find((d) => d.device === wanted);
      if (!remote) throw vertexError('Offline', `${named} is not online`);
      if (!remote.services.includes(service)) throw vertexError('NotExposed', `${named} does not expose "${service}"`);
      return { remote };
    }
    if ((!here || here.size === 0) && elsewhere.length === 0) throw vertexError('Offline', `${to} is not online`);
    const exposing = [
      ...[...(here?.values() ?? [])].filter((l) => l.services.has(service)).map((l) => l.device),
      ...elsewhere.filter((d) => d.services.includes(service)).map((d) => d.device),
    ];
    const chosen = chooseDevice(exposing);
    if (chosen === undefined) throw vertexError('NotExposed', `${to} does not expose "${service}"`);
    const mine = here?.get(chosen);
    return mine ? { local: mine } : { remote: elsewhere.find((d) => d.device === chosen) as RemoteDevice };
  }

  async #forwardToListener(
    caller: Caller, listener: Listener,
    req: { address: ReturnType<typeof parseAddress>; to: string; service: string; fromDevice: string | undefined; named: boolean; args: AmpArgs; relayNode?: string },
  ): Promise<AmpArgs> {
    const { address, to, service, fromDevice, args } = req;
    const reached = formatDeviceAddress(address, listener.device);
    let answer: AmpArgs;
    try {
      answer = await listener.peer.call(COMMANDS.inbound, {
        from: caller.address,
        ...(fromDevice !== undefined && { from_device: fromDevice }),
        service,
        certificate: caller.certPem,
        candidates: args.candidates ?? '[]',
        routes: args.routes ?? '[]',
      }, { timeoutMs: INBOUND_FORWARD_TIMEOUT_MS });
    } catch (err) {
      const e = asVertexError(err, 'Internal');
      if (e.code === 'ConnectionLost') throw vertexError('Offline', `${reached} went offline while answering`);
      if (e.code === 'Timeout') throw vertexError('Timeout', `${reached} did not answer within ${INBOUND_FORWARD_TIMEOUT_MS} ms`);
      // Passed on as it is, the listener's UNHANDLED would tell the caller that this
      // server does not know inbound.
      if (e.code === 'UnknownCommand') throw vertexError('ProtocolVersion', `${reached}'s agent does not answer inbound`);
      throw e;
    }
    const token = answer.token ?? '';
    if (!TOKEN_RE.test(token)) throw vertexError('Internal', `${reached} answered inbound without a valid token`);
    if (req.relayNode !== undefined) {
      this.#relay.pairsOn(token, req.relayNode);
    } else {
      // relay-ready: the listener's agent opens its relay leg once the caller's is in
      // (an agent too old to know the push ignores it: it is sent without asking for an answer).
      const listenerPeer = listener.peer;
      this.#relay.register(token, caller.address, to, () => {
        if (!listenerPeer.closed) listenerPeer.callNoAnswer(COMMANDS.relayReady, { token });
      }, { announce: mayRelay(args.routes) });
    }
    this.#log.info({ from: caller.address, fromDevice, to, device: listener.device, named: req.named, service }, 'inbound brokered');
    return {
      token,
      candidates: answer.candidates ?? '[]',
      certificate: listener.certPem,
      relay: this.#relay.enabled ? '1' : '0',
      device: listener.device,
    };
  }
}
