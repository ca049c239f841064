/**
 * A Q2Q node: one identity that can expose services and connect to others'.
 *
 * Connect (caller side), in named phases:
 *   1. inbound: ask the listener's server, over a pooled authenticated
 *      control connection; get the token, the listener's candidates and
 *      certificate (checked against the listener's pinned domain CA);
 *   2. race: direct TCP to each candidate at once; relay legs after
 *      relayDelayMs (at once when no direct attempt is possible);
 *   3. peer TLS on each channel; the first to finish claims the token inside
 *      TLS; the others are closed.
 *
 * Listen (listener side): the home session forwards inbound requests; the
 * per-caller limits and the allow list decide before anything else is done or
 * revealed (inbound-limits.ts, allow.ts); a one-time token bound to the
 * caller's certificate is handed out; punch probes go only to caller
 * candidates that pass a sanity check (probe-targets.ts); claims arrive on the
 * direct TCP listener or a relay leg, which the listener opens when the server
 * says `relay-ready` (the caller's leg is in).
 *
 * Every peer stream, either side, is watched for revocation of the peer's
 * certificate (revocation-watch.ts).
 */
import { listenOn } from '../transport/listen';
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { promises as dns } from 'node:dns';
import * as net from 'node:net';
import * as os from 'node:os';
import type { TLSSocket } from 'node:tls';
import { deviceFromHostname, formatAddress, formatDeviceAddress, parseAddress, parseDevice, parseService, parseServiceAddress } from '../address';
import { COMMANDS, TOKEN_LIFETIME_MS } from '../control/protocol';
import { asVertexError, isErrorCode, isVertexError, vertexError, VertexError } from '../errors';
import { certificateFingerprint, describeCertificate, verifyUserCertificate } from '../identity';
import type { AmpArgs } from '../proto/amp-peer';
import { preambleError, readPreamble, writePreamble } from '../transport/preamble';
import { silentLogger, type Logger } from '../util/log';
import { HomeSession } from './home-session';
import { tlsClientOver, tlsServerOver } from './peer-tls';
import { openRelayLeg } from './relay-leg';
import { carryAbortsOverTcp } from '../transport/tcp-close';
import { learnReflexiveAddress, punch, punchedConnect } from './punch';
import { InboundLimits, type InboundAdmission } from './inbound-limits';
import { localHost, punchTargets, type LocalHost } from './probe-targets';
import { RevocationWatch } from './revocation-watch';
import { mappingMarker, MappingObserver, peerMapping, punchHopeless, type NatMapping } from './nat-type';
import { PtcpSocket } from '../transport/ptcp-socket';
import type { Duplex } from 'node:stream';
import { ServerPool } from './server-pool';
import { Ladder } from './ladder';
import { PeerListener, RELAY_READY_SAFETY_MS } from './listener';
import { formatCandidate, MAX_CANDIDATES, parseCandidates, type Candidate } from './candidates';
import { SessionManager } from './session-manager';
import { ServiceTable } from './services';
import { dialTcp } from '../transport/tcp-dialer';
import type { DirectRoute, PeerDialers } from '../transport/route';
import {
  ALL_ROUTES, type ConnectOptions, type Identity, type NodeStatus, type Q2QOptions, type Q2QStream,
  type RouteName, type ServiceOptions,
} from './types';

export const DEFAULT_RELAY_DELAY_MS = 1_000;
/**
 * Peer sessions (issue 12: one mutual-TLS session per peer device, every
 * connection a stream on it) are used unless Q2QOptions.peerSessions says
 * otherwise; VERTEX_PEER_SESSIONS=0 makes the per-connection path the default
 * for a process and its children (kept for comparison and removable). Both ends
 * must agree: a session speaks mux frames after the claim, the per-connection
 * path speaks the service's bytes.
 */
export function peerSessionsByDefault(): boolean {
  return process.env.VERTEX_PEER_SESSIONS !== '0';
}

/** Early streams (ConnectOptions.early) unless VERTEX_EARLY_STREAMS=0 (for A/B measurement: bench/README.md). */
export function earlyStreamsByDefault(): boolean {
  return process.env.VERTEX_EARLY_STREAMS !== '0';
}
export const DEFAULT_CONNECT_TIMEOUT_MS = 15_000;
/** Connect targets remembered parsed; past this the memory starts over. */
const TARGET_CACHE = 1024;
/**
 * PTCP starts this long after direct TCP when both are possible: on a LAN or a
 * public address TCP wins in a few milliseconds and no UDP path is built at all.
 */
export const PTCP_STAGGER_MS = 150;
const PEER_HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * Peer channels over punched UDP use PTCP's defaults (proto/ptcp/constants.ts): a
 * keepalive after 2.5 s of silence keeps the NAT mappings open (ARCHITECTURE.md asks
 * for at most 25 s), unanswered ones are repeated every second, and 7.5 s without a
 * word from the peer ends the stream with PtcpIdle, so a dead peer is noticed within
 * 10 s (issue 11). A mapping that moved to another port mid-stream is that silence:
 * the peer's home router drops the new port, and the tunnel fails with that error
 * instead of hanging (NAT lab scenario 8b).
 */
const PTCP_PEER_TUNABLES = {} as const;
/** How often the interface addresses are compared to notice a network change. */
const NETWORK_CHECK_MS = 2_000;

/** The machine's non-internal interface addresses, as one comparable string. */
function addressSet(): string {
  return Object.values(os.networkInterfaces()).flat()
    .filter((i): i is os.NetworkInterfaceInfo => !!i && !i.internal)
    .map((i) => i.address).sort().join(',');
}
/** A reflexive UDP address is re-learned after this long (NAT mappings change). */
const REFLEXIVE_TTL_MS = 60_000;
/**
 * The home server's view of the ptcp socket is re-learned this often: a changed
 * mapping shows in status and in the next candidates, and the query itself keeps
 * the NAT mapping open (ARCHITECTURE.md: a keepalive at most every 25 s).
 */
const REFLEXIVE_REFRESH_MS = 25_000;
/** Longest a listener waits on a second who-am-i answer to tell its NAT mapping (nat-type.ts). */
const NAT_DETECT_WAIT_MS = 300;
/** The host's interfaces are read again after this long (for probe-targets.ts). */
const LOCAL_HOST_TTL_MS = 5_000;
/** Entries a `revoked` push may name, each list; more is a malformed push. */
const MAX_REVOKED_ENTRIES = 4096;

interface Reflexive { value: string; port: number; at: number }


interface PendingInbound {
  from: string;
  fromDevice: string;
  service: string;
  fingerprint: string;
  expiresAt: number;
  /** Counts against the inbound limits until the token is claimed or forgotten. */
  admission: InboundAdmission;
  /** Both ends allow the relay: a `relay-ready` for this token opens our leg. */
  relay: boolean;
  /**
   * The safety net for a lost relay-ready: the leg is opened anyway after
   * RELAY_READY_SAFETY_MS (listener.ts). relay-ready, when it comes first, cancels it.
   */
  relayTimer: NodeJS.Timeout | null;
  relayOpening: boolean;
  relayLeg: Duplex | null;
}

function decorate(socket: TLSSocket, info: { route: RouteName; peer: string; device: string; service: string; peerCertificate: string; connectMs: number }): Q2QStream {
  return Object.assign(socket, info) as Q2QStream;
}

/** A JSON list of strings from a server push, bounded; anything else is BadRequest. */
function stringList(json: string | undefined, what: string): string[] {
  let list: unknown;
  try {
    list = JSON.parse(json ?? '[]');
  } catch {
    throw vertexError('BadRequest', `${what}: not JSON`);
  }
  if (!Array.isArray(list) || list.length > MAX_REVOKED_ENTRIES || !list.every((x) => typeof x === 'string')) {
    throw vertexError('BadRequest', `${what}: expected a JSON list of at most ${MAX_REVOKED_ENTRIES} strings`);
  }
  return list as string[];
}

function parseRoutes(json: string | undefined): RouteName[] {
  try {
    const list = JSON.parse(json ?? '[]') as unknown;
    return Array.isArray(list) ? ALL_ROUTES.filter((r) => list.includes(r)) : [];
  } catch {
    return [];
  }
}

export class Q2QNode extends EventEmitter {
  #identity: Identity;
  readonly #opts: Q2QOptions;
  readonly #log: Logger;
  readonly #routes: readonly RouteName[];
  readonly #relayDelayMs: number;
  #pool: ServerPool;
  readonly #services: ServiceTable;
  /** The session core (issue 12), or null on the per-connection path. */
  #core: { listener: PeerListener; sessions: SessionManager } | null = null;
  readonly #pending = new Map<string, PendingInbound>();
  /** Parsed connect targets (#parseTarget). */
  readonly #targets = new Map<string, { to: string; wanted: string | undefined; service: string }>();
  readonly #domain: string;
  readonly #device: string;
  #home: HomeSession | null = null;
  #netTimer: NodeJS.Timeout | null = null;
  #peerServer: net.Server | null = null;
  #peerPort: number | null = null;
  #ptcp: Promise<PtcpSocket> | null = null;
  /** Set by stop(): no socket is bound after it, so nothing keeps the process alive. */
  #stopped = false;
  /** The ptcp socket's reflexive address as each domain's server saw it. */
  readonly #udpReflexive = new Map<string, Reflexive>();
  readonly #udpReflexivePending = new Map<string, Promise<Reflexive | null>>();
  readonly #mapping = new MappingObserver();
  #refreshTimer: NodeJS.Timeout | null = null;
  readonly #limits = new InboundLimits();
  #localHost: { value: LocalHost; at: number } | null = null;
  readonly #watch: RevocationWatch;
  readonly #earlyStreams = earlyStreamsByDefault();

  constructor(identity: Identity, options: Q2QOptions) {
    super();
    this.#identity = { ...identity, address: formatAddress(parseAddress(identity.address)) };
    this.#opts = options;
    this.#log = options.log ?? silentLogger;
    this.#routes = options.routes ?? ALL_ROUTES;
    this.#relayDelayMs = options.relayDelayMs ?? DEFAULT_RELAY_DELAY_MS;
    this.#domain = parseAddress(this.identity.address).domain;
    this.#device = parseDevice(options.device ?? deviceFromHostname(os.hostname()));
    this.#pool = new ServerPool(this.identity, options.resolve, options.trust, this.#log.child({ component: 'pool' }));
    this.#watch = new RevocationWatch({
      ownCertificate: () => this.#identity.certPem,
      check: (certificates) => this.#certStatus(certificates),
      log: this.#log.child({ component: 'revocation' }),
    });
    // Refusals name the device: behind a reused session a caller reached this device by its session.
    this.#services = new ServiceTable(() => this.#identity.address, () => formatDeviceAddress(parseAddress(this.#identity.address), this.#device));
    if (options.peerSessions ?? peerSessionsByDefault()) this.#core = this.#buildCore();
  }

  /**
   * The negotiation core over this node's I/O: the listener's token table and
   * claims (listener.ts), the caller's ladder (ladder.ts) and the peer sessions
   * both feed (session-manager.ts).
   */
  #buildCore(): { listener: PeerListener; sessions: SessionManager } {
    const log = this.#log;
    const dialers: PeerDialers = {
      tcp: dialTcp,
      ptcp: async (target, token, opts) => {
        // A race settled before the socket is needed binds nothing (a one-shot process exits).
        if (opts.signal.aborted) throw vertexError('ConnectionLost', 'ptcp: not needed');
        const socket = await this.#ptcpSocket();
        // 'punch' events: the agent's metrics count attempts and outcomes (agent/metrics.ts).
        return punchedConnect(socket, token, target, opts).then(
          (stream) => { this.emit('punch', 'ok'); return stream; },
          (err: unknown) => { this.emit('punch', opts.signal.aborted ? 'cancelled' : 'failed'); throw err; },
        );
      },
      relay: (domain, token) => openRelayLeg({ domain, token, identity: this.identity, resolve: this.#opts.resolve }),
    };
    const ladder = new Ladder({
      identity: () => this.#identity,
      routes: this.#routes,
      dialers,
      inbound: (domain, args, timeoutMs) => this.#callInbound(domain, args, timeoutMs),
      ownCandidates: (domain) => this.#directCandidates(['ptcp'], domain),
      verifyListener: (to, certificate) => {
        const domain = parseAddress(to).domain;
        const ca = this.#opts.trust.loadCaFor(domain);
        if (!ca) throw vertexError('CertificateInvalid', `connect ${to}: no pinned CA for ${domain}`);
        verifyUserCertificate(certificate, ca, { expectedAddress: to });
      },
      natMapping: () => this.natMapping,
      device: this.#device,
      relayDelayMs: this.#relayDelayMs,
      onPunchSkipped: () => this.emit('punch', 'skipped'),
      log: log.child({ component: 'ladder' }),
    });
    const sessions = new SessionManager({
      identity: () => this.#identity,
      ladder,
      services: this.#services,
      routes: this.#routes,
      onSession: (session) => {
        // The session's socket carries every stream: revoking the peer closes them all (with
        // CertificateRevoked) and the session with them, so no new stream can reuse it.
        if (this.#stopped) return;
        this.#watch.start();
        this.#watch.track(session.socket, session.certificate);
      },
      log: log.child({ component: 'sessions' }),
    });
    const listener = new PeerListener({
      identity: () => this.#identity,
      routes: this.#routes,
      services: this.#services,
      candidates: (routes) => this.#directCandidates(routes, this.#domain),
      natMapping: () => this.natMapping,
      detectMappingFor: (domain) => this.#detectMappingFor(domain),
      punch: async (token, targets) => punch(await this.#ptcpSocket(), token, targets, { role: 'listener' }),
      openRelayLeg: (token) => openRelayLeg({ domain: this.#domain, token, identity: this.identity, resolve: this.#opts.resolve }),
      onChannel: (channel) => {
        if (this.#core?.sessions === sessions) sessions.adopt(channel);
        else channel.socket.destroy();
      },
      relayReadySafetyMs: RELAY_READY_SAFETY_MS,
      limits: this.#limits,
      ownHost: () => this.#ownHost(),
      ...(this.#opts.punchTargetPolicy ? { punchTargetPolicy: this.#opts.punchTargetPolicy } : {}),
      log: log.child({ component: 'listener' }),
    });
    return { listener, sessions };
  }

  /** True when connections are streams on peer sessions (issue 12). */
  get peerSessions(): boolean {
    return this.#core !== null;
  }

  get identity(): Identity {
    return this.#identity;
  }

  /** This node's device name: Q2QOptions.device, else from the host name. */
  get device(): string {
    return this.#device;
  }

  /**
   * Takes a renewed certificate (and key) for the same address: new control
   * connections and peer channels use it; the home session reconnects with it.
   */
  setIdentity(identity: Identity): void {
    const address = formatAddress(parseAddress(identity.address));
    if (address !== this.#identity.address) {
      throw vertexError('BadRequest', `set identity: ${address} is not this node's address ${this.#identity.address}`);
    }
    this.#identity = { ...identity, address };
    const old = this.#pool;
    this.#pool = new ServerPool(this.#identity, this.#opts.resolve, this.#opts.trust, this.#log.child({ component: 'pool' }));
    old.closeAll();
    this.#home?.setIdentity(this.#identity);
    // Sessions run on the old certificate: their open streams finish, new ones get new sessions.
    this.#core?.sessions.drainAll('ConnectionLost', 'the certificate was renewed: new streams use a new session');
  }

  // ---- listening ----

  /** Connects to the home server (reconnecting by itself) and opens the direct peer listener. */
  async start(): Promise<void> {
    this.#stopped = false;
    if (this.#routes.includes('tcp')) await this.#startPeerListener();
    if (this.#routes.includes('ptcp')) await this.#ptcpSocket();
    this.#home = new HomeSession({
      identity: this.identity,
      resolve: this.#opts.resolve,
      trust: this.#opts.trust,
      log: this.#log.child({ component: 'home' }),
      device: this.#device,
      services: () => this.#services.names(),
      onInbound: (args) => (this.#core ? this.#core.listener.onInbound(args) : this.#onInbound(args)),
      onRelayReady: async (args) => (this.#core ? this.#core.listener.onRelayReady(args) : this.#onRelayReady(args)),
      onRevoked: async (args) => this.#onRevoked(args),
    });
    this.#watch.start();
    this.#home.on('state', (state) => {
      // A new home session may mean a new network: the UDP mapping is re-learned.
      if (state === 'online') {
        this.#udpReflexive.clear();
        this.#mapping.clear();
        void this.#reflexiveUdp(this.#domain).catch(() => null);
      }
      this.emit('home', state);
    });
    this.#home.on('presence', (presence) => this.emit('presence', presence));
    this.#home.on('replaced', (by) => {
      // Another node answers for this device now: sessions peers set up with us take no
      // new streams (theirs finish), so their next connect asks the server and finds it.
      this.#core?.sessions.drainAll('Offline', `${formatDeviceAddress(parseAddress(this.#identity.address), this.#device)} was replaced by a newer session`, 'listener');
      this.emit('replaced', by);
    });
    await this.#home.start();
    this.#watchNetwork();
    if (this.#routes.includes('ptcp')) {
      this.#refreshTimer = setInterval(() => void this.#refreshReflexive(), REFLEXIVE_REFRESH_MS);
      this.#refreshTimer.unref();
    }
  }

  /**
   * Tries the home server at once instead of waiting for the backoff (the agent's SIGHUP).
   * While online it checks the link with a ping.
   */
  reconnectNow(trigger: 'sighup' | 'network' = 'sighup'): void {
    this.#home?.retryNow(trigger);
  }

  /**
   * A network change (an interface address came or went: a new Wi-Fi, a VPN, a resumed
   * laptop) is noticed by comparing the address set every NETWORK_CHECK_MS, which costs
   * one getifaddrs; the home session then tries at once (issue 13).
   */
  #watchNetwork(): void {
    const current = this.#opts.networkAddresses ?? addressSet;
    let before = current();
    this.#netTimer = setInterval(() => {
      const now = current();
      if (now === before) return;
      this.#log.info({ before, now }, 'network change: reconnecting to the home server now');
      before = now;
      this.#home?.retryNow('network');
    }, NETWORK_CHECK_MS);
    this.#netTimer.unref();
  }

  async #refreshReflexive(): Promise<void> {
    const before = this.#udpReflexive.get(this.#domain);
    const after = await this.#queryReflexiveUdp(this.#domain).catch(() => null);
    if (before && after && (before.value !== after.value || before.port !== after.port)) {
      this.#log.info({ from: `${before.value}:${before.port}`, to: `${after.value}:${after.port}` }, 'reflexive udp address changed');
    }
  }

  /** Our NAT's mapping behaviour, from the who-am-i answers of distinct servers. */
  get natMapping(): NatMapping {
    return this.#mapping.mapping(Date.now());
  }

  get homeState(): string {
    return this.#home?.state ?? 'offline';
  }

  /**
   * Serves `service` at once; the promise resolves once the home server has
   * the new list of names (at once when the name was already listed or the
   * node is offline), so a caller can say "listening" only when callers can
   * reach it. It never rejects: a failed listen is logged and retried with
   * the home session.
   */
  expose(service: string, opts: ServiceOptions): Promise<void> {
    const name = parseService(service);
    const known = this.#services.has(name);
    this.#services.set(name, opts);
    // A narrower allow list: sessions of peers that may use nothing now are drained.
    this.#core?.sessions.review();
    // The server knows names only: a changed allow list needs no new listen.
    if (known || !this.#home) return Promise.resolve();
    return this.#home.relisten().catch((err) => this.#log.warn({ err: (err as Error).message }, 'listen failed'));
  }

  unexpose(service: string): void {
    this.#services.delete(parseService(service));
    this.#core?.sessions.review();
    void this.#home?.relisten().catch((err) => this.#log.warn({ err: (err as Error).message }, 'listen failed'));
  }

  async #startPeerListener(): Promise<void> {
    const listen = this.#opts.peerListen ?? { host: '0.0.0.0', port: 0 };
    // Half-open: peer streams carry half-closes (ssh, scp, echo); TLS over them inherits this.
    const server = net.createServer({ allowHalfOpen: true }, (raw) => {
      raw.on('error', () => undefined);
      // Small handshake records (the claim answer, then the first service bytes)
      // must not wait for Nagle against the peer's delayed ACK (~40 ms).
      raw.setNoDelay(true);
      if (this.#core) void this.#core.listener.accept(raw, 'tcp');
      else void this.#acceptPeer(raw, 'tcp');
    });
    await listenOn(server, { port: listen.port, host: listen.host });
    server.on('error', (err) => this.#log.warn({ err: err.message }, 'peer listener error'));
    this.#peerServer = server;
    this.#peerPort = (server.address() as net.AddressInfo).port;
  }

  /** Local addresses to advertise: configured ones, the listen host, or the interfaces. */
  #localHosts(): string[] {
    const listenHost = this.#opts.peerListen?.host ?? '0.0.0.0';
    if (this.#opts.advertise?.length) return [...this.#opts.advertise];
    if (listenHost !== '0.0.0.0' && listenHost !== '::') return [listenHost];
    return Object.values(os.networkInterfaces()).flat()
      .filter((i): i is os.NetworkInterfaceInfo => !!i && i.family === 'IPv4')
      .map((i) => i.address);
  }

  /** Direct candidates: local addresses with the tcp listener's and the ptcp socket's ports, plus reflexive ones. */
  async #directCandidates(routes: readonly DirectRoute[], reflexiveFrom: string): Promise<string[]> {
    const out: string[] = [];
    const hosts = this.#localHosts();
    if (routes.includes('tcp') && this.#peerPort !== null) {
      const seen = this.#opts.advertise?.length ? null : this.#home?.reflexiveTcp;
      for (const host of seen && !hosts.includes(seen) ? [...hosts, seen] : hosts) out.push(formatCandidate('tcp', host, this.#peerPort));
    }
    if (routes.includes('ptcp')) {
      const socket = await this.#ptcpSocket();
      const port = socket.address().port;
      // The reflexive address first: a listener probes only the first few (probe-targets.ts).
      const reflexive = await this.#reflexiveUdp(reflexiveFrom);
      if (reflexive && !(hosts.includes(reflexive.value) && reflexive.port === port)) {
        out.push(formatCandidate('ptcp', reflexive.value, reflexive.port));
      }
      for (const host of hosts) out.push(formatCandidate('ptcp', host, port));
    }
    return out.slice(0, MAX_CANDIDATES);
  }

  /** The PTCP socket, bound on first use; PTCP peer channels arriving on it are accepted. */
  #ptcpSocket(): Promise<PtcpSocket> {
    if (this.#stopped) return Promise.reject(vertexError('ConnectionLost', 'ptcp: the node has stopped'));
    if (!this.#ptcp) {
      const host = this.#opts.peerListen?.host ?? '0.0.0.0';
      this.#ptcp = PtcpSocket.bind({ host, port: 0, log: this.#log.child({ component: 'ptcp' }), tunables: PTCP_PEER_TUNABLES }).then((socket) => {
        socket.listen((stream) => {
          if (this.#core) void this.#core.listener.accept(stream, 'ptcp');
          else void this.#acceptPeer(stream, 'ptcp');
        });
        return socket;
      });
    }
    return this.#ptcp;
  }

  /** The ptcp socket's address as `domain`'s server sees it (cached for REFLEXIVE_TTL_MS). */
  async #reflexiveUdp(domain: string): Promise<Reflexive | null> {
    const cached = this.#udpReflexive.get(domain);
    if (cached && Date.now() - cached.at < REFLEXIVE_TTL_MS) return cached;
    // Concurrent connects to one domain share one query.
    let pending = this.#udpReflexivePending.get(domain);
    if (!pending) {
      pending = this.#queryReflexiveUdp(domain).finally(() => this.#udpReflexivePending.delete(domain));
      this.#udpReflexivePending.set(domain, pending);
    }
    return pending;
  }

  async #queryReflexiveUdp(domain: string): Promise<Reflexive | null> {
    const [endpoint] = await this.#opts.resolve(domain);
    if (!endpoint) return null;
    const socket = await this.#ptcpSocket();
    const host = net.isIP(endpoint.host) ? endpoint.host : (await dns.lookup(endpoint.host)).address;
    const answer = await learnReflexiveAddress(socket, host, endpoint.port);
    if (!answer) return null;
    const at = Date.now();
    this.#mapping.record({ server: `${host}:${endpoint.port}`, address: answer.address, port: answer.port, at });
    const reflexive = { value: answer.address, port: answer.port, at };
    this.#udpReflexive.set(domain, reflexive);
    return reflexive;
  }

  /**
   * A listener facing a hard-NAT caller needs its own mapping to know whether a
   * punch can work: a second who-am-i, to the caller's domain server, settles it.
   * Bounded: an unanswered query costs NAT_DETECT_WAIT_MS once, and the punch is tried.
   */
  async #detectMappingFor(callerDomain: string): Promise<NatMapping> {
    if (this.natMapping !== 'unknown' || callerDomain === this.#domain) return this.natMapping;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all([this.#reflexiveUdp(this.#domain), this.#reflexiveUdp(callerDomain)]).catch(() => null),
      new Promise((resolve) => { timer = setTimeout(resolve, NAT_DETECT_WAIT_MS); }),
    ]);
    clearTimeout(timer);
    return this.natMapping;
  }

  /** This host's interface addresses, re-read every LOCAL_HOST_TTL_MS. */
  #ownHost(): LocalHost {
    const now = Date.now();
    if (!this.#localHost || now - this.#localHost.at > LOCAL_HOST_TTL_MS) this.#localHost = { value: localHost(), at: now };
    return this.#localHost.value;
  }

  async #onInbound(args: AmpArgs): Promise<AmpArgs> {
    const from = formatAddress(parseAddress(args.from ?? ''));
    const fromDevice = args.from_device ? parseDevice(args.from_device) : '';
    // Before any other work: a caller past its rate gets nothing else done.
    this.#limits.take(from);
    const service = parseService(args.service ?? '');
    try {
      this.#services.check(service, from);
    } catch (err) {
      if (isVertexError(err, 'Denied')) this.#log.info({ from, service }, 'inbound denied by allow list');
      throw err;
    }
    const certificate = args.certificate ?? '';
    if (describeCertificate(certificate).q2qAddress !== from) {
      throw vertexError('CertificateInvalid', `inbound from ${from}: the forwarded certificate names someone else`);
    }
    const callerRoutes = parseRoutes(args.routes);
    const fingerprint = certificateFingerprint(certificate);
    const admission = this.#limits.admit(from);
    const token = randomBytes(16).toString('hex');
    const pending: PendingInbound = {
      from, fromDevice, service, fingerprint, admission,
      expiresAt: Date.now() + TOKEN_LIFETIME_MS,
      relay: this.#routes.includes('relay') && callerRoutes.includes('relay'),
      relayTimer: null, relayOpening: false, relayLeg: null,
    };
    this.#pending.set(token, pending);
    setTimeout(() => this.#forget(token), TOKEN_LIFETIME_MS).unref();

    let direct: DirectRoute[] = (['tcp', 'ptcp'] as const).filter((r) => this.#routes.includes(r) && callerRoutes.includes(r));
    const callerMapping = peerMapping(args.candidates);
    const hopeless = direct.includes('ptcp') && callerMapping === 'hard'
      && punchHopeless(await this.#detectMappingFor(parseAddress(from).domain), callerMapping);
    // Both ends behind per-destination mappings: no punch, and the relay leg at once.
    if (hopeless) direct = direct.filter((r) => r !== 'ptcp');
    const candidates = await this.#directCandidates(direct, this.#domain);
    // Only candidates that pass the sanity check, and only a few (probe-targets.ts).
    const callerPtcp = (this.#opts.punchTargetPolicy ?? punchTargets)(parseCandidates(args.candidates).filter((c) => c.route === 'ptcp'), this.#ownHost());
    if (direct.includes('ptcp') && callerPtcp.length > 0) {
      // Open our NAT mapping toward the caller before the answer goes back: low-TTL
      // probes only, so nothing of ours reaches the caller's NAT first (punch.ts).
      await this.#ptcpSocket().then((socket) => punch(socket, token, callerPtcp, { role: 'listener' }));
    }
    if (pending.relay && this.#pending.get(token) === pending) {
      // relay-ready opens the leg; this only covers a lost one (see PendingInbound.relayTimer).
      pending.relayTimer = setTimeout(() => void this.#listenerRelayLeg(token, pending), RELAY_READY_SAFETY_MS);
      pending.relayTimer.unref();
    }
    this.#log.info({ from, fromDevice, service, candidates: candidates.length, nat: this.natMapping, callerNat: callerMapping, hopeless }, 'inbound accepted');
    return { token, candidates: JSON.stringify([...candidates, ...mappingMarker(this.natMapping)]) };
  }

  #forget(token: string): void {
    const pending = this.#pending.get(token);
    if (!pending) return;
    this.#pending.delete(token);
    pending.admission.release();
    if (pending.relayTimer) clearTimeout(pending.relayTimer);
    pending.relayLeg?.destroy();
  }

  /** The server has the caller's relay leg for this token: open ours, once. */
  #onRelayReady(args: AmpArgs): AmpArgs {
    const token = args.token ?? '';
    const pending = this.#pending.get(token);
    if (!pending || pending.expiresAt < Date.now()) throw vertexError('TokenInvalid', 'relay-ready: unknown, expired or used token');
    if (!pending.relay) throw vertexError('NotAllowed', 'relay-ready: this connection does not use the relay');
    void this.#listenerRelayLeg(token, pending);
    return {};
  }

  /** The home server's `revoked` push: close peer streams with those certificates. */
  #onRevoked(args: AmpArgs): AmpArgs {
    const serials = stringList(args.serials, 'revoked: serials');
    const addresses = stringList(args.addresses, 'revoked: addresses');
    const closed = this.#watch.onRevoked({ serials, addresses });
    this.#log.info({ serials: serials.length, addresses: addresses.length, closed }, 'revocation notice from the home server');
    return {};
  }

  /** One cert-status call, to the home server (the live session, else a pooled connection). */
  async #certStatus(certificates: Array<{ domain: string; serial: string }>): Promise<string[]> {
    const args = { certificates: JSON.stringify(certificates) };
    const answer = this.#home?.state === 'online'
      ? await this.#home.call(COMMANDS.certStatus, args)
      : await (await this.#pool.get(this.#domain)).call(COMMANDS.certStatus, args);
    return stringList(answer.revoked, 'cert-status: revoked');
  }

  async #listenerRelayLeg(token: string, pending: PendingInbound): Promise<void> {
    if (pending.relayTimer) clearTimeout(pending.relayTimer);
    pending.relayTimer = null;
    if (this.#pending.get(token) !== pending || pending.relayOpening) return;
    pending.relayOpening = true;
    try {
      const leg = await openRelayLeg({
        domain: this.#domain, token, identity: this.identity, resolve: this.#opts.resolve,
      });
      if (this.#pending.get(token) !== pending) {
        leg.destroy();
        return;
      }
      pending.relayLeg = leg;
      await this.#acceptPeer(leg, 'relay');
    } catch (err) {
      this.#log.debug({ reason: (err as Error).message }, 'listener relay leg failed');
    }
  }

  /** A raw channel from a caller: peer TLS as server, then the token claim. */
  async #acceptPeer(raw: Duplex, route: RouteName): Promise<void> {
    let socket: TLSSocket;
    try {
      socket = await tlsServerOver(raw, this.identity, `${route} peer channel`, PEER_HANDSHAKE_TIMEOUT_MS);
      // Over tcp, aborts must not read as clean ends either way (relay-leg.ts).
      if (raw instanceof net.Socket) carryAbortsOverTcp(socket, raw);
    } catch (err) {
      this.#log.debug({ route, reason: (err as Error).message }, 'peer tls failed');
      return;
    }
    const refuse = (err: VertexError) => {
      this.#log.info({ route, code: err.code, reason: err.message }, 'peer claim refused');
      writePreamble(socket, { error_code: err.code, error_description: err.message });
      socket.end();
      setTimeout(() => socket.destroy(), 1000).unref();
    };
    let claim: Record<string, string>;
    try {
      claim = await readPreamble(socket, 'peer claim', PEER_HANDSHAKE_TIMEOUT_MS);
    } catch (err) {
      socket.destroy();
      return;
    }
    const token = claim.token ?? '';
    const pending = this.#pending.get(token);
    if (!pending || pending.expiresAt < Date.now()) return refuse(vertexError('TokenInvalid', 'peer claim: unknown, expired or used token'));
    const presented = socket.getPeerX509Certificate();
    if (!presented || certificateFingerprint(presented.toString()) !== pending.fingerprint) {
      return refuse(vertexError('CertificateInvalid', 'peer claim: the certificate is not the one the server forwarded'));
    }
    // The claim wins: a relay leg still waiting for this token is no longer needed,
    // unless it is the very channel the claim arrived on.
    const leg = pending.relayLeg;
    pending.relayLeg = null;
    this.#forget(token);
    if (route !== 'relay') leg?.destroy();
    let service: ServiceOptions;
    try {
      // Exposed still, and to this caller (the allow list may have changed since the inbound).
      service = this.#services.check(pending.service, pending.from);
    } catch (err) {
      return refuse(asVertexError(err));
    }
    let prepared: unknown;
    if (service.prepare) {
      try {
        prepared = await service.prepare({ peerSpoke: () => false });
      } catch (err) {
        return refuse(asVertexError(err, 'Refused'));
      }
      if (socket.destroyed) {
        // The caller gave up meanwhile: whatever was prepared for it is not needed.
        (prepared as { destroy?: () => void } | undefined)?.destroy?.();
        return;
      }
    }
    writePreamble(socket, { ok: '1' });
    this.#log.info({ from: pending.from, fromDevice: pending.fromDevice, service: pending.service, route }, 'peer connected');
    const stream = decorate(socket, {
      route, peer: pending.from, device: pending.fromDevice, service: pending.service, peerCertificate: presented.toString(), connectMs: 0,
    });
    this.#watch.track(stream, stream.peerCertificate);
    service.onConnection(stream, prepared);
  }

  // ---- connecting ----

  /**
   * A stream to `target` at once, before the peer's answer (ConnectOptions.early),
   * when a live peer session to the device that serves it has had this service
   * accepted before; null when connect() is needed. Throws for a malformed target.
   */
  connectEarly(target: string, opts: ConnectOptions = {}): Q2QStream | null {
    if (!this.#core || !this.#earlyStreams) return null;
    const { to, wanted, service } = this.#parseTarget(target);
    const timeoutMs = opts.timeoutMs ?? this.#opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    return this.#core.sessions.openEarly({ to, service, ...(wanted !== undefined && { device: wanted }), timeoutMs, early: true });
  }

  /**
   * Connects to `user@domain:service`, or to one device's service with
   * `user+device@domain:service`. The stream's `.device` is the device that
   * answered, as the listener's server names it.
   */
  async connect(target: string, opts: ConnectOptions = {}): Promise<Q2QStream> {
    const started = performance.now();
    const timeoutMs = opts.timeoutMs ?? this.#opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    if (this.#core) {
      const { to, wanted, service } = this.#parseTarget(target);
      // A live session to the device that serves it carries the stream at once; else the
      // ladder sets one up (session-manager.ts).
      const stream = await this.#core.sessions.connect({ to, service, ...(wanted !== undefined && { device: wanted }), timeoutMs, early: opts.early === true && this.#earlyStreams });
      // A stream on a session is cheap and frequent (a browser opens dozens); the session's
      // open and close are logged at info, and the callers (the agent's 'tunnel open',
      // `vertex connect`) log the stream they asked for.
      this.#log.debug({ to, device: stream.device, service, route: stream.route, connectMs: stream.connectMs, session: stream.sessionId }, 'connected');
      return stream;
    }
    const { address, device: wanted, service } = parseServiceAddress(target);
    const to = formatAddress(address);
    const deadline = Date.now() + timeoutMs;
    const answer = await this.#inbound(to, wanted, service, timeoutMs);
    const device = answer.device ? parseDevice(answer.device) : '';
    if (wanted !== undefined && device !== wanted) {
      const named = `${formatDeviceAddress(address, wanted)}:${service}`;
      if (device === '') throw vertexError('ProtocolVersion', `connect ${named}: ${address.domain}'s server does not know devices (its answer named none); connect without one`);
      throw vertexError('Internal', `connect ${named}: the server answered for device ${device} instead`);
    }
    const listenerCert = answer.certificate ?? '';
    const ca = this.#opts.trust.loadCaFor(address.domain);
    if (!ca) throw vertexError('CertificateInvalid', `connect ${to}: no pinned CA for ${address.domain}`);
    verifyUserCertificate(listenerCert, ca, { expectedAddress: to });
    // Both ends behind per-destination mappings: skip the punch, relay at once (nat-type.ts).
    const hopeless = punchHopeless(this.natMapping, peerMapping(answer.candidates));
    if (hopeless && parseCandidates(answer.candidates).some((c) => c.route === 'ptcp')) this.emit('punch', 'skipped');
    const stream = await this.#race({
      to, device, service, token: answer.token ?? '', listenerCert,
      candidates: parseCandidates(answer.candidates).filter((c) => this.#routes.includes(c.route) && !(hopeless && c.route === 'ptcp')),
      relay: this.#routes.includes('relay') && answer.relay === '1',
      relayAtOnce: hopeless,
      deadline,
    });
    const connectMs = Math.round(performance.now() - started);
    this.#log.info({ to, device, service, route: stream.route, connectMs }, 'connected');
    if (!this.#stopped) {
      this.#watch.start();
      this.#watch.track(stream, stream.peerCertificate);
    }
    return Object.assign(stream, { connectMs }) as Q2QStream;
  }

  /**
   * `user[+device]@domain:service` read once per distinct target: a stream on a session
   * costs little more than this parse, and the same few targets come again and again.
   */
  #parseTarget(target: string): { to: string; wanted: string | undefined; service: string } {
    const known = this.#targets.get(target);
    if (known) return known;
    const { address, device, service } = parseServiceAddress(target);
    const parsed = { to: formatAddress(address), wanted: device, service };
    if (this.#targets.size >= TARGET_CACHE) this.#targets.clear();
    this.#targets.set(target, parsed);
    return parsed;
  }

  async #inbound(to: string, device: string | undefined, service: string, timeoutMs: number): Promise<AmpArgs> {
    const domain = parseAddress(to).domain;
    // Our own ptcp candidates go with the request, so the listener can punch toward us at once.
    const candidates = this.#routes.includes('ptcp') ? await this.#directCandidates(['ptcp'], domain) : [];
    const args = {
      to, ...(device !== undefined && { device }), from_device: this.#device, service, candidates: JSON.stringify([...candidates, ...mappingMarker(this.natMapping)]), routes: JSON.stringify(this.#routes),
    };
    return this.#callInbound(domain, args, timeoutMs);
  }

  /** One inbound call to `domain`'s server over a pooled connection. */
  async #callInbound(domain: string, args: AmpArgs, timeoutMs: number): Promise<AmpArgs> {
    for (let attempt = 0; ; attempt++) {
      const connection = await this.#pool.get(domain);
      try {
        return await connection.call(COMMANDS.inbound, args, { timeoutMs });
      } catch (err) {
        const e = asVertexError(err);
        // A pooled connection may have died since it was last used: retry once on a fresh one.
        if (e.code === 'ConnectionLost' && attempt === 0) {
          this.#pool.discard(domain, connection);
          continue;
        }
        throw e;
      }
    }
  }

  #race(p: {
    to: string; device: string; service: string; token: string; listenerCert: string;
    candidates: Candidate[]; relay: boolean; relayAtOnce: boolean; deadline: number;
  }): Promise<Q2QStream> {
    return new Promise((resolve, reject) => {
      const errors: string[] = [];
      // Every socket an attempt opened, by attempt, so the loser's are closed and the winner's kept.
      const opened: Array<Array<Duplex>> = [];
      let outstanding = 0;
      let settled = false;
      let claiming = false;
      let relayTimer: NodeJS.Timeout | null = null;
      // Aborted once the race is settled: a PTCP attempt still punching stops sending (punch.ts).
      const raceOver = new AbortController();

      const finish = (err: VertexError | null, stream?: Q2QStream) => {
        if (settled) return;
        settled = true;
        raceOver.abort();
        clearTimeout(overall);
        if (relayTimer) clearTimeout(relayTimer);
        for (const sockets of opened) {
          if (stream && sockets.includes(stream)) continue;
          for (const socket of sockets) socket.destroy();
        }
        if (err) reject(err);
        else resolve(stream as Q2QStream);
      };
      const failedOne = (route: RouteName, err: unknown) => {
        outstanding -= 1;
        errors.push(`${route}: ${(err as Error).message}`);
        if (outstanding === 0 && !claiming && relayTimer === null) {
          finish(vertexError('Unreachable', `connect ${p.to}:${p.service}: every route failed (${errors.join('; ')})`));
        }
      };
      const attempt = (route: RouteName, open: (sockets: Duplex[]) => Promise<Duplex>) => {
        outstanding += 1;
        const sockets: Duplex[] = [];
        opened.push(sockets);
        void (async () => {
          let secure: TLSSocket;
          try {
            const raw = await open(sockets);
            sockets.push(raw);
            if (settled) return raw.destroy();
            secure = await tlsClientOver(raw, this.identity, p.listenerCert, `${route} to ${p.to}`, PEER_HANDSHAKE_TIMEOUT_MS);
            // Over tcp, aborts must not read as clean ends either way (relay-leg.ts).
            if (raw instanceof net.Socket) carryAbortsOverTcp(secure, raw);
            sockets.push(secure);
          } catch (err) {
            return failedOne(route, err);
          }
          if (settled || claiming) {
            secure.destroy();
            outstanding -= 1;
            return;
          }
          claiming = true;
          try {
            writePreamble(secure, { token: p.token });
            const answer = await readPreamble(secure, `claim on ${route}`, PEER_HANDSHAKE_TIMEOUT_MS);
            const refused = preambleError(answer);
            if (refused) throw vertexError(isErrorCode(refused.code) ? refused.code : 'Internal', refused.description);
          } catch (err) {
            claiming = false;
            secure.destroy();
            // The listener's own verdict on an authenticated channel (its service's target
            // refused, or the service is gone): no other route would get another answer.
            if (isVertexError(err, 'Refused') || isVertexError(err, 'NotExposed') || isVertexError(err, 'Denied')) {
              outstanding -= 1;
              return finish(err);
            }
            return failedOne(route, err);
          }
          outstanding -= 1;
          finish(null, decorate(secure, { route, peer: p.to, device: p.device, service: p.service, peerCertificate: p.listenerCert, connectMs: 0 }));
        })();
      };

      const overall = setTimeout(() => finish(vertexError('Timeout',
        `connect ${p.to}:${p.service}: no route completed in time${errors.length ? ` (${errors.join('; ')})` : ''}`)),
      Math.max(0, p.deadline - Date.now()));

      const ptcpDelay = p.candidates.some((c) => c.route === 'tcp') ? PTCP_STAGGER_MS : 0;
      for (const candidate of p.candidates.filter((c) => c.route === 'ptcp')) {
        attempt('ptcp', async () => {
          await new Promise((r) => setTimeout(r, ptcpDelay));
          // A race settled during the stagger must not bind a PTCP socket: one bound after
          // stop() is never closed and keeps a one-shot process (vertex ping) alive.
          if (raceOver.signal.aborted) throw new Error('not needed');
          // 'punch' events: the agent's metrics count attempts and outcomes (agent/metrics.ts).
          return punchedConnect(await this.#ptcpSocket(), p.token, candidate, { deadline: p.deadline, signal: raceOver.signal }).then(
            (socket) => { this.emit('punch', 'ok'); return socket; },
            (err: unknown) => { this.emit('punch', raceOver.signal.aborted ? 'cancelled' : 'failed'); throw err; },
          );
        });
      }
      for (const candidate of p.candidates.filter((c) => c.route === 'tcp')) {
        attempt('tcp', (sockets) => new Promise((res, rej) => {
          const socket = net.connect({ host: candidate.host, port: candidate.port, allowHalfOpen: true });
          sockets.push(socket);
          socket.setNoDelay(true);
          // Bounded by the connect's own deadline: a slow but working path still beats none.
          const timer = setTimeout(() => { socket.destroy(); rej(new Error(`${candidate.host}:${candidate.port}: no answer`)); }, Math.max(0, p.deadline - Date.now()));
          socket.once('connect', () => { clearTimeout(timer); res(socket); });
          socket.once('error', (e: NodeJS.ErrnoException) => { clearTimeout(timer); rej(new Error(`${candidate.host}:${candidate.port}: ${e.code ?? e.message}`)); });
        }));
      }
      if (p.relay) {
        const startRelay = () => {
          relayTimer = null;
          if (settled) return;
          attempt('relay', () => openRelayLeg({
            domain: parseAddress(p.to).domain, token: p.token, identity: this.identity,
            resolve: this.#opts.resolve,
          }));
        };
        relayTimer = setTimeout(startRelay, p.candidates.length > 0 && !p.relayAtOnce ? this.#relayDelayMs : 0);
      }
      if (p.candidates.length === 0 && !p.relay) {
        finish(vertexError('Unreachable', `connect ${p.to}:${p.service}: no usable route (the peer offered no direct address and relaying is off)`));
      }
    });
  }

  // ---- status and shutdown ----

  status(): NodeStatus {
    const presence = this.#home?.presence;
    return {
      identity: this.identity.address,
      device: this.#device,
      devices: {
        online: presence?.devices ?? [],
        conflicts: presence?.conflicts ?? [],
        moreConflicts: presence?.moreConflicts ?? 0,
        replacedBy: this.#home?.replacedBy ?? null,
      },
      certificateNotAfter: describeCertificate(this.identity.certPem).notAfter.toISOString(),
      home: {
        state: this.#home?.state ?? 'offline',
        server: this.#home?.server ?? null,
        since: (this.#home?.since ?? new Date()).toISOString(),
        lastError: this.#home?.lastError ?? null,
        nextTry: this.#home?.nextTryAt?.toISOString() ?? null,
        lastTry: ((t) => (t ? { at: t.at.toISOString(), trigger: t.trigger } : null))(this.#home?.lastTry ?? null),
        tries: { ...(this.#home?.tries ?? {}) },
      },
      reflexive: {
        tcp: this.#home?.reflexiveTcp ?? null,
        udp: ((r) => (r ? `${r.value}:${r.port}` : null))(this.#udpReflexive.get(this.#domain)),
        nat: this.natMapping,
      },
      services: this.#services.entries(),
      sessions: this.#core?.sessions.list() ?? [],
      peerListen: this.#peerPort === null ? null : `${this.#opts.peerListen?.host ?? '0.0.0.0'}:${this.#peerPort}`,
    };
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#watch.stop();
    if (this.#refreshTimer) clearInterval(this.#refreshTimer);
    this.#refreshTimer = null;
    if (this.#netTimer) clearInterval(this.#netTimer);
    this.#netTimer = null;
    this.#home?.stop();
    this.#pool.closeAll();
    if (this.#core) {
      const { listener, sessions } = this.#core;
      listener.stop();
      // A node may be started again (or connect after stop, as connectQ2Q's did): a fresh core.
      this.#core = this.#buildCore();
      // Sessions end cleanly (bounded) before the ptcp socket under them is closed.
      await sessions.shutdown();
    }
    for (const token of [...this.#pending.keys()]) this.#forget(token);
    const ptcp = this.#ptcp;
    this.#ptcp = null;
    if (ptcp) await ptcp.then((socket) => socket.close(), () => undefined);
    const server = this.#peerServer;
    this.#peerServer = null;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
