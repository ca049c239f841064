/**
 * The listener's side of a new peer session.
 *
 * 1. inbound: the home server forwards a caller's request. The caller's
 *    limits (inbound-limits.ts) and the named service's allow list decide
 *    before anything is done or revealed; a one-time token bound to the
 *    caller's certificate is handed out with our direct candidates; our NAT
 *    mapping toward the caller is opened with low-TTL probes (punch.ts), sent
 *    only to caller candidates that pass the sanity check (probe-targets.ts).
 * 2. channels arrive: on the direct TCP listener, the PTCP socket, or a
 *    relay leg we open only once the server says the caller's leg is in
 *    (`relay-ready`; DESIGN.md "Relay legs only after the caller's leg"). Each gets peer TLS as the server side, then the token
 *    claim inside TLS: the token must be pending and the certificate
 *    presented must be exactly the one the server forwarded.
 * 3. the claimed channel goes to the session manager, which runs the peer
 *    session on it and checks every stream the caller opens.
 *
 * I/O is injected (candidates, probes, relay legs, the clock), so the
 * listener runs unchanged over the unit tests' in-memory network.
 */
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { formatAddress, parseAddress, parseDevice, parseService } from '../address';
import { TOKEN_LIFETIME_MS } from '../control/protocol';
import { vertexError, type VertexError } from '../errors';
import { certificateFingerprint, describeCertificate } from '../identity';
import type { AmpArgs } from '../proto/amp-peer';
import { readPreamble, writePreamble } from '../transport/preamble';
import type { DirectRoute, DirectTarget, RouteName } from '../transport/route';
import { systemClock, type Clock, type Timer } from '../util/clock';
import { silentLogger, type Logger } from '../util/log';
import { parseCandidates, parseRoutes } from './candidates';
import { PEER_HANDSHAKE_TIMEOUT_MS, type PeerChannel } from './ladder';
import { mappingMarker, peerMapping, punchHopeless, type NatMapping } from './nat-type';
import { tlsServerOver } from './peer-tls';
import { InboundLimits, type InboundAdmission } from './inbound-limits';
import { localHost, punchTargets, type LocalHost, type ProbeTarget } from './probe-targets';
import type { ServiceTable } from './services';
import type { Identity } from './types';

/**
 * How long after answering an inbound the listener waits for relay-ready
 * before opening its relay leg anyway. Well past a caller's relay delay (1 s by
 * default) plus a round trip, well inside the caller's 15 s connect deadline.
 */
export const RELAY_READY_SAFETY_MS = 5_000;

export interface ListenerOptions {
  identity: () => Identity;
  routes: readonly RouteName[];
  services: ServiceTable;
  /** Our direct candidates for these routes, formatted (candidates.ts). */
  candidates(routes: DirectRoute[]): Promise<string[]>;
  natMapping(): NatMapping;
  /** Our mapping, learning it first if a hard-NAT caller makes it matter (nat-type.ts). */
  detectMappingFor(callerDomain: string): Promise<NatMapping>;
  /** Low-TTL probes toward the caller's ptcp candidates for `token` (punch.ts). */
  punch(token: string, targets: DirectTarget[]): Promise<void>;
  /** Our relay leg for `token` through our home server. */
  openRelayLeg(token: string): Promise<Duplex>;
  /** A claimed channel: the session manager takes it from here. */
  onChannel(channel: PeerChannel): void;
  /**
   * A safety net for a lost relay-ready (it is pushed without an answer, and
   * across nodes it travels as a notice between nodes): when none has come this
   * long after answering and no channel has claimed the token, the listener
   * opens its relay leg anyway. Unset: only relay-ready opens it.
   */
  relayReadySafetyMs?: number;
  /** Per-caller and per-listener inbound limits; default: InboundLimits' defaults on `clock`. */
  limits?: InboundLimits;
  /** This host's addresses, which are never probed; default: the interfaces, re-read every 5 s. */
  ownHost?: () => LocalHost;
  /** Where probes may go (default punchTargets); tests replace it to show the check catches probes. */
  punchTargetPolicy?: (candidates: readonly ProbeTarget[], local: LocalHost) => ProbeTarget[];
  clock?: Clock;
  random?: (bytes: number) => Buffer;
  handshakeTimeoutMs?: number;
  log?: Logger;
}

interface PendingInbound {
  from: string;
  fromDevice: string;
  service: string;
  fingerprint: string;
  /** Both ends allow the relay: relay-ready for this token opens our leg. */
  relay: boolean;
  expiry: Timer;
  /** Counts against the inbound limits until the token is claimed or forgotten. */
  admission: InboundAdmission;
  relayOpening: boolean;
  relayLeg: Duplex | null;
  /** The safety net for a lost relay-ready (ListenerOptions.relayReadySafetyMs). */
  relayTimer: Timer | null;
}

export class PeerListener {
  readonly #opts: ListenerOptions;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #pending = new Map<string, PendingInbound>();
  readonly #limits: InboundLimits;
  readonly #ownHost: () => LocalHost;
  #stopped = false;

  constructor(opts: ListenerOptions) {
    this.#opts = opts;
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.log ?? silentLogger;
    this.#limits = opts.limits ?? new InboundLimits({ clock: this.#clock });
    this.#ownHost = opts.ownHost ?? cachedLocalHost(this.#clock);
  }

  get pendingCount(): number {
    return this.#pending.size;
  }

  /** The server forwarded a caller's inbound request. */
  async onInbound(args: AmpArgs): Promise<AmpArgs> {
    const me = this.#opts.identity().address;
    const from = formatAddress(parseAddress(args.from ?? ''));
    const fromDevice = args.from_device ? parseDevice(args.from_device) : '';
    const service = parseService(args.service ?? '');
    try {
      // Before any other work: a caller past its rate gets nothing else done.
      this.#limits.take(from);
      this.#opts.services.check(service, from);
    } catch (err) {
      this.#log.info({ from, service, code: (err as VertexError).code }, 'inbound refused');
      throw err;
    }
    const certificate = args.certificate ?? '';
    if (describeCertificate(certificate).q2qAddress !== from) {
      throw vertexError('CertificateInvalid', `inbound from ${from}: the forwarded certificate names someone else`);
    }
    const callerRoutes = parseRoutes(args.routes);
    const fingerprint = certificateFingerprint(certificate);
    const admission = this.#limits.admit(from);
    const token = (this.#opts.random ?? randomBytes)(16).toString('hex');
    const routes = this.#opts.routes;
    const pending: PendingInbound = {
      from, fromDevice, service, fingerprint, admission,
      relay: routes.includes('relay') && callerRoutes.includes('relay'),
      expiry: this.#clock.setTimer(() => this.#forget(token), TOKEN_LIFETIME_MS),
      relayOpening: false, relayLeg: null, relayTimer: null,
    };
    this.#pending.set(token, pending);

    let direct: DirectRoute[] = (['tcp', 'ptcp'] as const).filter((r) => routes.includes(r) && callerRoutes.includes(r));
    const callerMapping = peerMapping(args.candidates);
    const hopeless = direct.includes('ptcp') && callerMapping === 'hard'
      && punchHopeless(await this.#opts.detectMappingFor(parseAddress(from).domain), callerMapping);
    // Both ends behind per-destination mappings: no punch, and the relay at once.
    if (hopeless) direct = direct.filter((r) => r !== 'ptcp');
    const candidates = await this.#opts.candidates(direct);
    // Only candidates that pass the sanity check, and only a few (probe-targets.ts).
    const callerPtcp = (this.#opts.punchTargetPolicy ?? punchTargets)(parseCandidates(args.candidates).filter((c) => c.route === 'ptcp'), this.#ownHost());
    if (direct.includes('ptcp') && callerPtcp.length > 0) {
      // Open our NAT mapping toward the caller before the answer goes back: low-TTL
      // probes only, so nothing of ours reaches the caller's NAT first (punch.ts).
      await this.#opts.punch(token, callerPtcp);
    }
    // Our relay leg waits for relay-ready, even when no direct route can work: a leg
    // opened on a guess is wasted whenever a direct route wins or the caller never comes.
    const safety = this.#opts.relayReadySafetyMs;
    if (safety !== undefined && pending.relay && this.#pending.get(token) === pending) {
      pending.relayTimer = this.#clock.setTimer(() => {
        this.#log.info({ from }, 'no relay-ready in time: opening the relay leg anyway');
        void this.#openRelayLeg(token, pending);
      }, safety);
    }
    const nat = this.#opts.natMapping();
    this.#log.info({ me, from, service, candidates: candidates.length, nat, callerNat: callerMapping, hopeless }, 'inbound accepted');
    return { token, candidates: JSON.stringify([...candidates, ...mappingMarker(nat)]) };
  }

  /** The server has the caller's relay leg for `token`: open ours, once. */
  onRelayReady(args: AmpArgs): AmpArgs {
    const token = args.token ?? '';
    const pending = this.#pending.get(token);
    if (!pending) throw vertexError('TokenInvalid', 'relay-ready: unknown, expired or used token');
    if (!pending.relay) throw vertexError('NotAllowed', 'relay-ready: this connection does not use the relay');
    void this.#openRelayLeg(token, pending);
    return {};
  }

  #forget(token: string): void {
    const pending = this.#pending.get(token);
    if (!pending) return;
    this.#pending.delete(token);
    pending.expiry.cancel();
    pending.relayTimer?.cancel();
    pending.admission.release();
    pending.relayLeg?.destroy();
  }

  async #openRelayLeg(token: string, pending: PendingInbound): Promise<void> {
    pending.relayTimer?.cancel();
    pending.relayTimer = null;
    if (this.#pending.get(token) !== pending || pending.relayOpening || this.#stopped) return;
    pending.relayOpening = true;
    try {
      const leg = await this.#opts.openRelayLeg(token);
      if (this.#pending.get(token) !== pending) {
        leg.destroy();
        return;
      }
      pending.relayLeg = leg;
      await this.accept(leg, 'relay');
    } catch (err) {
      this.#log.debug({ reason: (err as Error).message }, 'listener relay leg failed');
    }
  }

  /** A raw channel from a caller: peer TLS as server, then the token claim. */
  async accept(raw: Duplex, route: RouteName): Promise<void> {
    const timeoutMs = this.#opts.handshakeTimeoutMs ?? PEER_HANDSHAKE_TIMEOUT_MS;
    let socket: Duplex & { getPeerX509Certificate(): { raw: Buffer; toString(): string } | undefined };
    try {
      socket = await tlsServerOver(raw, this.#opts.identity(), `${route} peer channel`, timeoutMs);
    } catch (err) {
      this.#log.debug({ route, reason: (err as Error).message }, 'peer tls failed');
      return;
    }
    const refuse = (err: VertexError): void => {
      this.#log.info({ route, code: err.code, reason: err.message }, 'peer claim refused');
      writePreamble(socket, { error_code: err.code, error_description: err.message });
      socket.end();
      this.#clock.setTimer(() => socket.destroy(), 1000);
    };
    let claim: Record<string, string>;
    try {
      claim = await readPreamble(socket, 'peer claim', timeoutMs);
    } catch {
      socket.destroy();
      return;
    }
    const token = claim.token ?? '';
    const pending = this.#pending.get(token);
    if (!pending) return refuse(vertexError('TokenInvalid', 'peer claim: unknown, expired or used token'));
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
    if (!this.#opts.services.offersAnything(pending.from)) {
      return refuse(vertexError('NotExposed', `${this.#opts.identity().address} no longer exposes anything to ${pending.from}`));
    }
    writePreamble(socket, { ok: '1' });
    this.#log.info({ from: pending.from, route }, 'peer session accepted');
    this.#opts.onChannel({
      socket, route, role: 'listener', peer: pending.from, device: pending.fromDevice || claimedDevice(claim.device), certificate: presented.toString(),
    });
  }

  stop(): void {
    this.#stopped = true;
    for (const token of [...this.#pending.keys()]) this.#forget(token);
  }
}

/**
 * The device a caller names in its claim, used only when its server forwarded
 * none: a label among the caller's machines (peer TLS proves the address, not
 * the device), so an invalid one is dropped rather than refused.
 */
function claimedDevice(device: string | undefined): string {
  if (!device) return '';
  try {
    return parseDevice(device);
  } catch {
    return '';
  }
}

/** os.networkInterfaces(), read again at most every LOCAL_HOST_TTL_MS. */
const LOCAL_HOST_TTL_MS = 5_000;
function cachedLocalHost(clock: Clock): () => LocalHost {
  let cached: { value: LocalHost; at: number } | null = null;
  return () => {
    const now = clock.now();
    if (!cached || now - cached.at > LOCAL_HOST_TTL_MS) cached = { value: localHost(), at: now };
    return cached.value;
  };
}
