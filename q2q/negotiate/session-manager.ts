/**
 * Peer sessions, one per (peer address, peer device), reused by every
 * connection to that peer (docs/multiplexing.md; DESIGN.md "Peer sessions").
 *
 * connect(to, service):
 *   1. a live session to the device that serves (to, service) carries a new
 *      stream at once: no server round trip, no handshake;
 *   2. otherwise the ladder's `ask` goes to the peer's server, which names
 *      the device that answers; a live session to that device is used (the
 *      token is simply left to expire), else the ladder builds one. Connects
 *      that arrive meanwhile wait for the same ask and the same ladder.
 * Every stream names its service; the side that receives it checks that
 * service's allow list against the session's authenticated peer.
 *
 * Fall forward: a session we set up over the relay keeps trying direct
 * routes in the background (FALL_FORWARD_FIRST_MS, doubling to
 * FALL_FORWARD_MAX_MS). When one succeeds, new streams use the direct
 * session; streams open on the relay stay there until they close (they are
 * not moved), and the relay session, drained with GOAWAY, ends after its
 * last stream.
 *
 * Sessions end: idle (peer-session.ts), a dead peer (the mux's keepalive,
 * within 10 s), an expired certificate, a revoked one (the node's
 * revocation watch destroys the socket), and, for sessions a peer set up to
 * use our services, a GOAWAY once we expose nothing that peer may use.
 */
import { EventEmitter } from 'node:events';
import { asVertexError, isVertexError, vertexError } from '../errors';
import type { OpenRequest } from '../transport/mux';
import { DIRECT_ROUTES, type RouteName } from '../transport/route';
import { systemClock, type Clock, type Timer } from '../util/clock';
import { silentLogger, type Logger } from '../util/log';
import type { Ladder, PeerChannel } from './ladder';
import { PeerSession, type PeerSessionOptions, type SessionStatus } from './peer-session';
import type { ServiceTable } from './services';
import type { Identity, Q2QStream, ServiceOptions } from './types';

export const FALL_FORWARD_FIRST_MS = 5_000;
export const FALL_FORWARD_MAX_MS = 60_000;
/** How long stop() waits for sessions to end cleanly before their transports are closed. */
export const SHUTDOWN_GRACE_MS = 1_000;

export interface SessionManagerOptions {
  identity: () => Identity;
  ladder: Ladder;
  services: ServiceTable;
  /** Routes this node may use; fall forward tries the direct ones among them. */
  routes: readonly RouteName[];
  clock?: Clock;
  wallNow?: () => number;
  idleMs?: number;
  mux?: PeerSessionOptions['mux'];
  /** Fall forward from the relay: the first retry and the longest pause; false: never. */
  fallForward?: { firstMs?: number; maxMs?: number } | false;
  /** Each new session's socket and peer certificate (the revocation watch tracks them). */
  onSession?: (session: PeerSession) => void;
  log?: Logger;
}

export interface ConnectRequest {
  to: string;
  service: string;
  /** A device the caller named (`bob+laptop@b.test:ssh`). */
  device?: string;
  timeoutMs: number;
  /**
   * The caller cannot report the exact reason of a failure anyway, or would rather
   * not wait for it (SOCKS after its reply, a port forward): on a live session
   * whose peer accepted this service before, the stream comes back before the
   * peer's answer (PeerSession.openEarly). Otherwise as without it.
   */
  early?: boolean;
}

export interface SessionManagerEvents {
  session: [session: PeerSession];
  fallForward: [from: PeerSession, to: PeerSession];
}

const key = (peer: string, device: string): string => `${peer}#${device}`;

export class SessionManager extends EventEmitter<SessionManagerEvents> {
  readonly #opts: SessionManagerOptions;
  readonly #clock: Clock;
  readonly #log: Logger;
  /** Live sessions by (peer, device), oldest first. */
  readonly #sessions = new Map<string, PeerSession[]>();
  /** The device that last answered for "to:service". */
  readonly #devices = new Map<string, string>();
  readonly #asking = new Map<string, Promise<PeerSession>>();
  readonly #building = new Map<string, Promise<PeerSession>>();
  readonly #fallForward = new Map<PeerSession, Timer>();
  #stopped = false;

  constructor(opts: SessionManagerOptions) {
    super();
    this.#opts = opts;
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.log ?? silentLogger;
  }

  get size(): number {
    let n = 0;
    for (const list of this.#sessions.values()) n += list.length;
    return n;
  }

  sessions(): PeerSession[] {
    return [...this.#sessions.values()].flat();
  }

  list(): SessionStatus[] {
    return this.sessions().map((s) => s.status());
  }

  /** A stream to `service` on `to`, over the peer's session, set up first if there is none. */
  async connect(req: ConnectRequest): Promise<Q2QStream> {
    if (this.#stopped) throw vertexError('ConnectionLost', `connect ${req.to}:${req.service}: the node has stopped`);
    const startedAt = this.#clock.now();
    const deadline = startedAt + req.timeoutMs;
    if (req.early) {
      const early = this.openEarly(req);
      if (early) return early;
    }
    for (let attempt = 0; ; attempt++) {
      const session = this.#reusable(req) ?? await this.#sessionFor(req, deadline);
      try {
        return await session.open(req.service, { timeoutMs: Math.max(1, deadline - this.#clock.now()), startedAt });
      } catch (err) {
        // A session that died under the open (a peer gone since its last word) is replaced once.
        if (attempt === 0 && !session.usable && isVertexError(err, 'ConnectionLost')) continue;
        throw err;
      }
    }
  }

  /**
   * A stream returned before the peer's answer (ConnectRequest.early), if a live
   * session to the device that serves (to, service) has had this service accepted
   * before; null otherwise (then connect() does the rest). Synchronous: nothing
   * is asked or built.
   */
  openEarly(req: ConnectRequest): Q2QStream | null {
    if (this.#stopped) return null;
    const live = this.#reusable(req);
    if (!live || !live.mayOpenEarly(req.service)) return null;
    return live.openEarly(req.service, {
      timeoutMs: req.timeoutMs,
      onRefused: (err) => this.#log.info({ peer: live.peer, service: req.service, code: (err as { code?: string }).code, reason: err.message }, 'stream refused after its early data: the next connect waits for the answer'),
    });
  }

  /** A claimed channel (either role) becomes a session. */
  adopt(channel: PeerChannel): PeerSession {
    const session = new PeerSession(channel, {
      clock: this.#clock, wallNow: this.#opts.wallNow, idleMs: this.#opts.idleMs, mux: this.#opts.mux,
      ownCertificate: this.#opts.identity().certPem,
      onOpen: (s, request) => this.#onOpen(s, request),
    });
    const k = key(session.peer, session.device);
    const list = this.#sessions.get(k) ?? [];
    list.push(session);
    this.#sessions.set(k, list);
    session.once('close', (err) => {
      const left = (this.#sessions.get(k) ?? []).filter((s) => s !== session);
      if (left.length > 0) this.#sessions.set(k, left);
      else this.#sessions.delete(k);
      this.#fallForward.get(session)?.cancel();
      this.#fallForward.delete(session);
      this.#log.info({ peer: session.peer, device: session.device, route: session.route, reason: err?.message ?? 'ended' }, 'peer session closed');
    });
    this.#log.info({ peer: session.peer, device: session.device, route: session.route, role: session.role, id: session.id }, 'peer session open');
    this.#opts.onSession?.(session);
    this.emit('session', session);
    if (session.role === 'caller' && session.route === 'relay') this.#scheduleFallForward(session, this.#opts.fallForward === false ? null : this.#opts.fallForward?.firstMs ?? FALL_FORWARD_FIRST_MS);
    return session;
  }

  /**
   * After a change to the exposed services: a session a peer set up to use
   * our services gets GOAWAY once we expose nothing that peer may use. Its
   * open streams finish; new ones need a new inbound, which is refused.
   */
  review(): void {
    for (const session of this.sessions()) {
      if (session.role === 'listener' && session.usable && !this.#opts.services.offersAnything(session.peer)) {
        this.#log.info({ peer: session.peer }, 'peer session drained: nothing exposed to this peer any more');
        session.drain('NotExposed', `${this.#opts.identity().address} exposes nothing to ${session.peer} any more`);
      }
    }
  }

  /** Every session (of `role`, if given) takes no new streams (a renewed certificate: new sessions use it). */
  drainAll(code: string, description: string, role?: 'caller' | 'listener'): void {
    for (const session of this.sessions()) if (role === undefined || session.role === role) session.drain(code, description);
  }

  /**
   * The node stops: no new sessions or streams; a session without streams
   * ends cleanly (what is queued on it, an END or the last bytes, still
   * leaves), one with open streams closes at once and aborts them.
   */
  shutdown(graceMs = SHUTDOWN_GRACE_MS): Promise<void> {
    this.#stopped = true;
    for (const timer of this.#fallForward.values()) timer.cancel();
    this.#fallForward.clear();
    const sessions = this.sessions();
    const closed = sessions.map((session) => new Promise<void>((resolve) => session.once('close', () => resolve())));
    for (const session of sessions) {
      if (session.streamCount === 0) session.mux.end();
      else session.close();
    }
    // Resolves once every session has closed, or after graceMs: the caller may then close
    // the transports under them (the ptcp socket) without cutting off a clean end.
    return new Promise((resolve) => {
      const timer = this.#clock.setTimer(resolve, graceMs);
      void Promise.all(closed).then(() => {
        timer.cancel();
        resolve();
      });
    });
  }

  /** Closes every session at once, aborting its streams. */
  closeAll(err?: Error): void {
    this.#stopped = true;
    for (const timer of this.#fallForward.values()) timer.cancel();
    this.#fallForward.clear();
    for (const session of this.sessions()) session.close(err);
  }

  // ---- finding or making a session ----

  #reusable(req: ConnectRequest): PeerSession | null {
    const device = req.device ?? this.#devices.get(`${req.to}:${req.service}`);
    if (device === undefined) return null;
    return this.#newestUsable(key(req.to, device));
  }

  #newestUsable(k: string): PeerSession | null {
    const list = this.#sessions.get(k) ?? [];
    for (let i = list.length - 1; i >= 0; i--) {
      const s = list[i] as PeerSession;
      if (s.usable) return s;
    }
    return null;
  }

  /** One ask per (to, device, service) at a time; connects that arrive meanwhile share it. */
  #sessionFor(req: ConnectRequest, deadline: number): Promise<PeerSession> {
    const k = `${req.to}|${req.device ?? ''}|${req.service}`;
    let pending = this.#asking.get(k);
    if (!pending) {
      pending = this.#askAndBuild(req, deadline).finally(() => this.#asking.delete(k));
      this.#asking.set(k, pending);
    }
    return pending;
  }

  async #askAndBuild(req: ConnectRequest, deadline: number): Promise<PeerSession> {
    const answer = await this.#opts.ladder.ask(req.to, req.service, { device: req.device, timeoutMs: Math.max(1, deadline - this.#clock.now()) });
    this.#devices.set(`${req.to}:${req.service}`, answer.device);
    const k = key(req.to, answer.device);
    const live = this.#newestUsable(k);
    if (live) return live;
    let building = this.#building.get(k);
    if (!building) {
      building = this.#opts.ladder.establish(answer, { timeoutMs: Math.max(1, deadline - this.#clock.now()) })
        .then((channel) => {
          if (this.#stopped) {
            channel.socket.destroy();
            throw vertexError('ConnectionLost', `connect ${req.to}: the node has stopped`);
          }
          return this.adopt(channel);
        })
        .finally(() => this.#building.delete(k));
      this.#building.set(k, building);
    }
    return building;
  }

  // ---- streams the peer opens ----

  /** The service `request` asks for, if the allow list lets the session's peer use it now; else the request is refused. */
  #checked(session: PeerSession, request: OpenRequest): ServiceOptions | null {
    try {
      return this.#opts.services.check(request.service, session.peer);
    } catch (err) {
      this.#log.info({ peer: session.peer, service: request.service, code: (err as { code?: string }).code }, 'stream refused');
      request.refuse(err as never);
      return null;
    }
  }

  #onOpen(session: PeerSession, request: OpenRequest): void {
    const first = this.#checked(session, request);
    if (!first) return;
    let service = first;
    const open = (prepared?: unknown): void => {
      // A prepared service (an exposed local target) sends its first bytes from another
      // process, later: its ACCEPT leaves at once, ahead of the bookkeeping below. Unless
      // those bytes are here already (a prepared stream with bytes in its buffer): the
      // handler writes them in this turn, and they leave with the ACCEPT in one record.
      const early = (prepared as { readableLength?: number } | undefined)?.readableLength ?? 0;
      const stream = session.adoptStream(request.accept({ flush: prepared !== undefined && early === 0 }), request.service, 0);
      this.#log.debug({ peer: session.peer, service: request.service, route: session.route }, 'stream accepted');
      service.onConnection(stream, prepared);
    };
    if (!service.prepare) return open();
    // As the node does for a claim (node.ts #acceptPeer): the target first, then the accept.
    // At most MAX_PREPARING at once per session (peer-session.ts); the rest wait their turn.
    session.preparing.run(async (waited) => {
      if (waited) {
        // Its caller gave up, or the session closed, while it waited: nothing to prepare. It is
        // answered all the same: until then the mux counts it against the peer's stream cap.
        if (request.gone) return request.refuse(vertexError('ConnectionLost', `open ${request.service}: the caller gave up while it waited for its turn`));
        // The allow list may have changed while it waited: checked again, now.
        const now = this.#checked(session, request);
        if (!now) return;
        service = now;
      }
      const prepare = service.prepare;
      if (!prepare) return open();
      let prepared: unknown;
      try {
        prepared = await prepare({ peerSpoke: () => request.bytesWaiting > 0 });
      } catch (err) {
        const e = asVertexError(err, 'Refused');
        this.#log.info({ peer: session.peer, service: request.service, code: e.code }, 'stream refused');
        request.refuse(e);
        return;
      }
      try {
        open(prepared);
      } catch (err) {
        // A fault in the service's handler: this stream's, not the agent's.
        this.#log.error({ peer: session.peer, service: request.service, err: (err as Error).message }, 'stream handler failed');
        (prepared as { destroy?: () => void } | undefined)?.destroy?.();
      }
    });
  }

  // ---- fall forward ----

  #scheduleFallForward(session: PeerSession, delayMs: number | null): void {
    if (delayMs === null || this.#stopped) return;
    this.#fallForward.set(session, this.#clock.setTimer(() => void this.#tryDirect(session, delayMs), delayMs));
  }

  async #tryDirect(session: PeerSession, lastDelayMs: number): Promise<void> {
    this.#fallForward.delete(session);
    if (!session.usable || this.#stopped) return;
    const routes = DIRECT_ROUTES.filter((r) => this.#opts.routes.includes(r));
    const service = [...session.servicesUsed].pop();
    if (routes.length === 0 || service === undefined) {
      // Nothing to ask for yet (no stream opened): look again later.
      if (routes.length > 0) this.#scheduleFallForward(session, lastDelayMs);
      return;
    }
    const next = Math.min(lastDelayMs * 2, this.#opts.fallForward === false ? Infinity : this.#opts.fallForward?.maxMs ?? FALL_FORWARD_MAX_MS);
    try {
      const timeoutMs = 15_000;
      const answer = await this.#opts.ladder.ask(session.peer, service, { device: session.device || undefined, timeoutMs, routes });
      if (answer.candidates.length === 0) throw vertexError('Unreachable', 'the peer offered no direct address');
      const channel = await this.#opts.ladder.establish(answer, { timeoutMs, routes });
      if (!session.usable || this.#stopped) {
        channel.socket.destroy();
        return;
      }
      const direct = this.adopt(channel);
      for (const s of session.servicesUsed) direct.servicesUsed.add(s);
      this.#log.info({ peer: session.peer, from: session.route, to: direct.route, openStreams: session.streamCount }, 'fall forward: new streams use the direct route');
      session.drain('ConnectionLost', `moved to ${direct.route}`);
      this.emit('fallForward', session, direct);
    } catch (err) {
      this.#log.debug({ peer: session.peer, reason: (err as Error).message, retryInMs: next }, 'fall forward: no direct route yet');
      this.#scheduleFallForward(session, next);
    }
  }
}
