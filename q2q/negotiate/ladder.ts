/**
 * The caller's ladder: how a new peer session comes to be, in named phases
 * (like hyperdht's connect: direct, then holepunch, then relay).
 *
 *   ask     inbound at the listener's server, over a pooled authenticated
 *           control connection: a one-time token, the listener's candidates,
 *           its certificate and the device that answered;
 *   verify  the listener's certificate against its domain's pinned CA;
 *   direct  TCP to each tcp candidate, at once;
 *   punch   PTCP to each ptcp candidate, PTCP_STAGGER_MS later when TCP is
 *           also tried (on a LAN or a public address TCP wins first and no
 *           UDP path is built at all);
 *   relay   a relay leg through the listener's server, relayDelayMs after
 *           the start (at once when no direct attempt can work);
 *   claim   on the first channel whose peer TLS completes (the listener must
 *           present exactly the certificate its server vouched for), the
 *           token is claimed inside TLS; that channel wins and every other
 *           attempt is cancelled and its sockets closed.
 *
 * The phases run as attempts in one race. Everything they touch is injected
 * (dialers, the control call, the clock), so the ladder runs unchanged over
 * the in-memory network of the unit tests.
 */
import type { Duplex } from 'node:stream';
import { parseAddress } from '../address';
import { isErrorCode, vertexError, type VertexError } from '../errors';
import type { AmpArgs } from '../proto/amp-peer';
import { preambleError, readPreamble, writePreamble } from '../transport/preamble';
import type { PeerDialers, RouteName } from '../transport/route';
import { systemClock, type Clock, type Timer } from '../util/clock';
import { silentLogger, type Logger } from '../util/log';
import { parseCandidates, type Candidate } from './candidates';
import { mappingMarker, peerMapping, punchHopeless, type NatMapping } from './nat-type';
import { tlsClientOver } from './peer-tls';
import type { Identity } from './types';

export const DEFAULT_RELAY_DELAY_MS = 1_000;
/** PTCP starts this long after direct TCP when both are possible. */
export const PTCP_STAGGER_MS = 150;
export const PEER_HANDSHAKE_TIMEOUT_MS = 10_000;

export const LADDER_PHASES = ['ask', 'verify', 'direct', 'punch', 'relay', 'claim'] as const;
export type LadderPhase = (typeof LADDER_PHASES)[number];

/** What `ask` learned: everything the race needs. */
export interface InboundAnswer {
  to: string;
  service: string;
  /** The listener's device that answered ('' from a server that does not name devices). */
  device: string;
  token: string;
  /** The listener's certificate (PEM), as its server vouched for it. */
  certificate: string;
  candidates: Candidate[];
  /** The listener's server relays for this token. */
  relay: boolean;
  peerNat: NatMapping;
}

/** A raw channel with peer TLS up and the token claimed: what a peer session runs on. */
export interface PeerChannel {
  socket: Duplex;
  route: RouteName;
  role: 'caller' | 'listener';
  /** The other end's verified address, device and certificate. */
  peer: string;
  device: string;
  certificate: string;
}

export interface LadderOptions {
  identity: () => Identity;
  /** Routes this side may use, in order of preference. */
  routes: readonly RouteName[];
  dialers: PeerDialers;
  /** One `inbound` call to `domain`'s server. */
  inbound(domain: string, args: AmpArgs, timeoutMs: number): Promise<AmpArgs>;
  /** Our own ptcp candidates for a request to `domain` (the listener punches toward them). */
  ownCandidates(domain: string): Promise<string[]>;
  /** Throws unless `certificate` is `to`'s, issued by its domain's pinned CA. */
  verifyListener(to: string, certificate: string): void;
  natMapping(): NatMapping;
  /** This node's device name, told to the listener in the claim. */
  device?: string;
  /** A race skipped its punch (both ends behind per-destination mappings): the agent's metrics count it. */
  onPunchSkipped?: () => void;
  clock?: Clock;
  relayDelayMs?: number;
  ptcpStaggerMs?: number;
  handshakeTimeoutMs?: number;
  log?: Logger;
}

export interface EstablishOptions {
  /** Milliseconds the whole race may take. */
  timeoutMs: number;
  /** Limits the race to these routes (fall forward tries direct routes only). */
  routes?: readonly RouteName[];
}

export class Ladder {
  readonly #opts: LadderOptions;
  readonly #clock: Clock;
  readonly #log: Logger;

  constructor(opts: LadderOptions) {
    this.#opts = opts;
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.log ?? silentLogger;
  }

  /** Phases ask and verify. */
  async ask(to: string, service: string, opts: { device?: string; timeoutMs: number; routes?: readonly RouteName[] }): Promise<InboundAnswer> {
    const routes = opts.routes ?? this.#opts.routes;
    const domain = parseAddress(to).domain;
    // Our own ptcp candidates go with the request, so the listener can punch toward us at once.
    const candidates = routes.includes('ptcp') ? await this.#opts.ownCandidates(domain) : [];
    const args: AmpArgs = {
      to, service,
      candidates: JSON.stringify([...candidates, ...mappingMarker(this.#opts.natMapping())]),
      routes: JSON.stringify(routes),
      ...(opts.device ? { device: opts.device } : {}),
      ...(this.#opts.device ? { from_device: this.#opts.device } : {}),
    };
    const answer = await this.#opts.inbound(domain, args, opts.timeoutMs);
    const device = answer.device ?? '';
    if (opts.device !== undefined && device !== opts.device) {
      const named = `${to.replace('@', `+${opts.device}@`)}:${service}`;
      if (device === '') throw vertexError('ProtocolVersion', `connect ${named}: ${domain}'s server does not know devices (its answer named none); connect without one`);
      throw vertexError('Internal', `connect ${named}: the server answered for device ${device} instead`);
    }
    const certificate = answer.certificate ?? '';
    this.#opts.verifyListener(to, certificate);
    return {
      to, service,
      device,
      token: answer.token ?? '',
      certificate,
      candidates: parseCandidates(answer.candidates),
      relay: answer.relay === '1',
      peerNat: peerMapping(answer.candidates),
    };
  }

  /** Phases direct, punch, relay and claim: the winning channel, or the reasons every route failed. */
  establish(answer: InboundAnswer, opts: EstablishOptions): Promise<PeerChannel> {
    const routes = (opts.routes ?? this.#opts.routes).filter((r) => this.#opts.routes.includes(r));
    // Both ends behind per-destination mappings: skip the punch, relay at once (nat-type.ts).
    const hopeless = punchHopeless(this.#opts.natMapping(), answer.peerNat);
    const candidates = answer.candidates.filter((c) => routes.includes(c.route) && !(hopeless && c.route === 'ptcp'));
    if (hopeless && answer.candidates.some((c) => c.route === 'ptcp' && routes.includes('ptcp'))) this.#opts.onPunchSkipped?.();
    return new Race(this.#opts, this.#clock, this.#log, answer, {
      candidates,
      relay: routes.includes('relay') && answer.relay,
      relayAtOnce: hopeless,
      timeoutMs: opts.timeoutMs,
    }).run();
  }
}

interface RacePlan {
  candidates: Candidate[];
  relay: boolean;
  relayAtOnce: boolean;
  timeoutMs: number;
}

/** One run of the race; every socket an attempt opened is closed unless it won. */
class Race {
  readonly #errors: string[] = [];
  /** Every socket each attempt opened, so the losers' are closed and the winner's kept. */
  readonly #opened: Duplex[][] = [];
  readonly #over = new AbortController();
  readonly #timers: Timer[] = [];
  #outstanding = 0;
  #relayPending = false;
  #claiming = false;
  #settled = false;
  #resolve!: (channel: PeerChannel) => void;
  #reject!: (err: VertexError) => void;

  constructor(
    readonly opts: LadderOptions,
    readonly clock: Clock,
    readonly log: Logger,
    readonly answer: InboundAnswer,
    readonly plan: RacePlan,
  ) {}

  get #where(): string {
    return `connect ${this.answer.to}:${this.answer.service}`;
  }

  run(): Promise<PeerChannel> {
    const done = new Promise<PeerChannel>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    const { candidates, relay } = this.plan;
    if (candidates.length === 0 && !relay) {
      this.#finish(vertexError('Unreachable', `${this.#where}: no usable route (the peer offered no direct address and relaying is off)`));
      return done;
    }
    this.#timers.push(this.clock.setTimer(() => this.#finish(vertexError('Timeout',
      `${this.#where}: no route completed in time${this.#errors.length ? ` (${this.#errors.join('; ')})` : ''}`)), this.plan.timeoutMs));
    const deadline = Date.now() + this.plan.timeoutMs;
    const dial = { signal: this.#over.signal, deadline };
    const hasTcp = candidates.some((c) => c.route === 'tcp');
    // Phase direct.
    for (const c of candidates.filter((x) => x.route === 'tcp')) {
      this.#attempt('tcp', () => this.opts.dialers.tcp(c, dial));
    }
    // Phase punch.
    for (const c of candidates.filter((x) => x.route === 'ptcp')) {
      this.#attempt('ptcp', async () => {
        if (hasTcp) await this.#pause(this.opts.ptcpStaggerMs ?? PTCP_STAGGER_MS);
        // A race settled during the stagger binds nothing and sends nothing.
        if (this.#over.signal.aborted) throw vertexError('ConnectionLost', 'not needed');
        return this.opts.dialers.ptcp(c, this.answer.token, dial);
      });
    }
    // Phase relay.
    if (relay) {
      this.#relayPending = true;
      const delay = candidates.length > 0 && !this.plan.relayAtOnce ? this.opts.relayDelayMs ?? DEFAULT_RELAY_DELAY_MS : 0;
      const start = (): void => {
        this.#relayPending = false;
        if (this.#settled) return;
        this.#attempt('relay', () => this.opts.dialers.relay(parseAddress(this.answer.to).domain, this.answer.token, dial));
      };
      if (delay === 0) start();
      else this.#timers.push(this.clock.setTimer(start, delay));
    }
    return done;
  }

  #pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = this.clock.setTimer(resolve, ms);
      this.#timers.push(timer);
      this.#over.signal.addEventListener('abort', () => resolve(), { once: true });
    });
  }

  #attempt(route: RouteName, open: () => Promise<Duplex>): void {
    this.#outstanding += 1;
    const sockets: Duplex[] = [];
    this.#opened.push(sockets);
    void (async () => {
      let secure: Duplex;
      try {
        const raw = await open();
        sockets.push(raw);
        if (this.#settled) {
          raw.destroy();
          return this.#failed(route, vertexError('ConnectionLost', 'not needed'), true);
        }
        const identity = this.opts.identity();
        secure = await tlsClientOver(raw, identity, this.answer.certificate, `${route} to ${this.answer.to}`, this.opts.handshakeTimeoutMs ?? PEER_HANDSHAKE_TIMEOUT_MS);
        sockets.push(secure);
      } catch (err) {
        return this.#failed(route, err);
      }
      if (this.#settled || this.#claiming) {
        secure.destroy();
        return this.#failed(route, vertexError('ConnectionLost', 'another route claimed first'), true);
      }
      // Phase claim.
      this.#claiming = true;
      try {
        writePreamble(secure, { token: this.answer.token, ...(this.opts.device ? { device: this.opts.device } : {}) });
        const reply = await readPreamble(secure, `claim on ${route}`, this.opts.handshakeTimeoutMs ?? PEER_HANDSHAKE_TIMEOUT_MS);
        const refused = preambleError(reply);
        if (refused) throw vertexError(isErrorCode(refused.code) ? refused.code : 'Internal', refused.description);
      } catch (err) {
        this.#claiming = false;
        secure.destroy();
        return this.#failed(route, err);
      }
      this.#outstanding -= 1;
      this.log.debug({ to: this.answer.to, route }, 'ladder: claimed');
      this.#finish(null, {
        socket: secure, route, role: 'caller', peer: this.answer.to, device: this.answer.device, certificate: this.answer.certificate,
      });
    })();
  }

  #failed(route: RouteName, err: unknown, quiet = false): void {
    this.#outstanding -= 1;
    if (!quiet) this.#errors.push(`${route}: ${(err as Error).message}`);
    if (this.#outstanding === 0 && !this.#claiming && !this.#relayPending && !this.#settled) {
      this.#finish(vertexError('Unreachable', `${this.#where}: every route failed (${this.#errors.join('; ')})`));
    }
  }

  #finish(err: VertexError | null, channel?: PeerChannel): void {
    if (this.#settled) return;
    this.#settled = true;
    // A PTCP attempt still punching stops sending (punch.ts).
    this.#over.abort();
    for (const t of this.#timers) t.cancel();
    for (const sockets of this.#opened) {
      if (channel && sockets.includes(channel.socket)) continue;
      for (const s of sockets) s.destroy();
    }
    if (err) this.#reject(err);
    else this.#resolve(channel as PeerChannel);
  }
}
