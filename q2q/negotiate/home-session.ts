/**
 * The agent's long-lived control session with its home server: authenticated
 * by the user's certificate, it puts the exposed services online as one
 * device of the user (`listen`), answers forwarded `inbound` requests, and
 * pings to notice a dead link. When the connection drops it reconnects with
 * exponential backoff and jitter (1 s doubling to 4 s, each wait drawn from
 * 75-100 % of that), so an agent is back within 5 s of its server coming
 * back (issue 13), and listens again, without the caller doing anything.
 * While it waits, nextTryAt says when the next attempt is; retryNow() (SIGHUP,
 * a network change) tries at once.
 *
 * It also keeps what the server says about the user's other devices (the
 * listen answer and `presence` pushes: which devices are online, which shared
 * service names reach which device). A `replaced` push means a newer session
 * listens as the same device: this one stops listening, says so in lastError,
 * and from then on reconnects (with the usual backoff) asking to listen only
 * if the device is free (`takeover: "0"`), so two nodes with one device name
 * never take turns, and this one is back by itself once the other has gone.
 */
import { EventEmitter } from 'node:events';
import { formatDeviceAddress, parseAddress } from '../address';
import type { ServerResolver } from '../control/discovery';
import { COMMANDS, type Conflict } from '../control/protocol';
import { openServerConnection, type CaTrust, type ServerConnection } from '../control/server-connection';
import { asVertexError, vertexError } from '../errors';
import type { AmpArgs } from '../proto/amp-peer';
import type { Logger } from '../util/log';
import type { HomeConnectionState, Identity } from './types';

export const RECONNECT_MIN_MS = 1_000;
/**
 * The longest wait between attempts. Jitter only shortens a wait (75-100 %), so the agent
 * tries at least every 4 s and is online within 5 s of its server coming back. Several
 * thousand agents of a domain then try about 1,000 times a second while its server is
 * down, each attempt one TCP connect (refused) or one TLS handshake.
 */
export const RECONNECT_MAX_MS = 4_000;
/** Why an attempt to reach the home server was made (shown in status). */
export type TryTrigger = 'start' | 'backoff' | 'sighup' | 'network';
/** A NAT or firewall forgets an idle TCP flow after minutes; a ping every 25 s keeps it and shows a dead link. */
export const KEEPALIVE_INTERVAL_MS = 25_000;
export const KEEPALIVE_TIMEOUT_MS = 10_000;

/** How long a link check after SIGHUP or a network change waits for the server's answer. */
const RETRY_PING_TIMEOUT_MS = 3_000;

/**
 * The wait before reconnect attempt `attempt` (0-based): 1 s doubling to RECONNECT_MAX_MS,
 * times 0.75-1.0 from `random` in [0, 1), so no wait exceeds RECONNECT_MAX_MS.
 */
export function reconnectDelay(attempt: number, random: number): number {
  const base = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** Math.min(attempt, 30));
  return Math.round(base * (0.75 + 0.25 * random));
}

export interface HomeSessionOptions {
  identity: Identity;
  resolve: ServerResolver;
  trust: CaTrust;
  log: Logger;
  /** This node's device name (q2q/address.ts parseDevice). */
  device: string;
  services: () => string[];
  onInbound: (args: AmpArgs) => Promise<AmpArgs>;
  /** `relay-ready` from the server: the caller's relay leg for args.token is in. */
  onRelayReady?: (args: AmpArgs) => Promise<AmpArgs>;
  /** `revoked` pushed by the server: peer streams with those certificates must close. */
  onRevoked?: (args: AmpArgs) => Promise<AmpArgs>;
  random?: () => number;
}

/** The user's devices as the home server last described them to this one. */
export interface Presence {
  /** Every device of the address online, this one included, sorted. */
  devices: string[];
  /** Services this device shares with others, and which one unqualified callers reach. */
  conflicts: Conflict[];
  /** Conflicts the server left out of `conflicts` (it lists at most MAX_CONFLICTS_REPORTED). */
  moreConflicts: number;
}

const NO_PRESENCE: Presence = Object.freeze({ devices: [], conflicts: [], moreConflicts: 0 });

/** Reads the presence fields of a listen answer or a presence push; malformed parts read as empty. */
export function parsePresence(args: AmpArgs): Presence {
  const list = (text: string | undefined): unknown[] => {
    try {
      const value = JSON.parse(text ?? '[]') as unknown;
      return Array.isArray(value) ? value : [];
    } catch {
      return [];
    }
  };
  const strings = (value: unknown): string[] => (Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : []);
  const conflicts = list(args.conflicts).flatMap((c): Conflict[] => {
    const { service, devices, chosen } = (c ?? {}) as Record<string, unknown>;
    return typeof service === 'string' && typeof chosen === 'string' ? [{ service, devices: strings(devices), chosen }] : [];
  });
  const more = Number(args.more_conflicts ?? 0);
  return { devices: strings(list(args.devices)), conflicts, moreConflicts: Number.isSafeInteger(more) && more > 0 ? more : 0 };
}

export class HomeSession extends EventEmitter {
  #opts: HomeSessionOptions;
  readonly #domain: string;
  #connection: ServerConnection | null = null;
  #state: HomeConnectionState = 'offline';
  #since = new Date();
  #lastError: string | null = null;
  #reflexiveTcp: string | null = null;
  #attempt = 0;
  #stopped = true;
  #retryTimer: NodeJS.Timeout | null = null;
  #nextTryAt: Date | null = null;
  /** retryNow() came during an attempt: if it fails, try again at once with this trigger. */
  #retryAfterAttempt: 'sighup' | 'network' | null = null;
  #lastTry: { at: Date; trigger: TryTrigger } | null = null;
  readonly #tries: Record<TryTrigger, number> = { start: 0, backoff: 0, sighup: 0, network: 0 };
  #pingTimer: NodeJS.Timeout | null = null;
  #presence: Presence = NO_PRESENCE;
  /** Set while a newer session of this device holds it: listens only with takeover "0" until one succeeds. */
  #replacedBy: string | null = null;

  constructor(opts: HomeSessionOptions) {
    super();
    this.#opts = opts;
    this.#domain = parseAddress(opts.identity.address).domain;
  }

  get state(): HomeConnectionState { return this.#state; }
  get since(): Date { return this.#since; }
  get lastError(): string | null { return this.#lastError; }
  get reflexiveTcp(): string | null { return this.#reflexiveTcp; }
  get device(): string { return this.#opts.device; }
  /** What the server last said about the user's devices; empty while offline. */
  get presence(): Presence { return this.#presence; }
  /** HOST:PORT of the newer session that replaced this device's, while that is why it is offline. */
  get replacedBy(): string | null { return this.#replacedBy; }
  /** When the next attempt is due, while waiting to reconnect; null otherwise. */
  get nextTryAt(): Date | null { return this.#nextTryAt; }
  /** The latest attempt to reach the server, and what started it. */
  get lastTry(): { at: Date; trigger: TryTrigger } | null { return this.#lastTry; }
  /** Attempts so far, by what started them. */
  get tries(): Readonly<Record<TryTrigger, number>> { return { ...this.#tries }; }
  get server(): string | null {
    return this.#connection ? `${this.#connection.endpoint.host}:${this.#connection.endpoint.port}` : null;
  }

  /** Starts connecting; resolves after the first attempt, whether or not it succeeded. */
  async start(): Promise<void> {
    this.#stopped = false;
    this.#replacedBy = null;
    await this.#connect('start');
  }

  /**
   * Tries at once instead of waiting for the backoff (SIGHUP, a network change). While
   * online, checks the link with a ping instead: after a network change the old TCP flow
   * may be dead without a word, and a failed ping reconnects. An attempt under way is left
   * to finish.
   */
  retryNow(trigger: 'sighup' | 'network'): void {
    if (this.#stopped) return;
    if (this.#state === 'connecting') {
      // An attempt is under way (perhaps on the old network): if it fails, the next one
      // starts at once rather than after the backoff.
      this.#retryAfterAttempt = trigger;
      return;
    }
    const connection = this.#connection;
    if (this.#state === 'online' && connection) {
      connection.call(COMMANDS.ping, {}, { timeoutMs: RETRY_PING_TIMEOUT_MS }).catch(() => {
        this.#opts.log.info({ trigger }, 'home server did not answer a ping after a network change; reconnecting');
        connection.socket.destroy();
      });
      return;
    }
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#nextTryAt = null;
    this.#attempt = 0;
    this.#opts.log.info({ trigger }, 'reconnecting to the home server now');
    void this.#connect(trigger);
  }

  #setState(state: HomeConnectionState): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#since = new Date();
    this.emit('state', state);
  }

  async #connect(trigger: TryTrigger): Promise<void> {
    if (this.#stopped) return;
    this.#nextTryAt = null;
    this.#lastTry = { at: new Date(), trigger };
    this.#tries[trigger] += 1;
    this.#setState('connecting');
    let connection: ServerConnection;
    try {
      connection = await openServerConnection({
        domain: this.#domain,
        resolve: this.#opts.resolve,
        trust: this.#opts.trust,
        credentials: { keyPem: this.#opts.identity.keyPem, certPem: this.#opts.identity.certPem },
        log: this.#opts.log,
      });
    } catch (err) {
      this.#failed(asVertexError(err, 'ServerUnavailable').message);
      return;
    }
    if (this.#stopped) {
      connection.close();
      return;
    }
    connection.peer.handle(COMMANDS.inbound, (args) => this.#opts.onInbound(args));
    const { onRelayReady, onRevoked } = this.#opts;
    if (onRelayReady) connection.peer.handle(COMMANDS.relayReady, (args) => onRelayReady(args));
    if (onRevoked) connection.peer.handle(COMMANDS.revoked, (args) => onRevoked(args));
    // Pushes on a connection that is no longer ours (a half-dead one we left) change nothing.
    connection.peer.handle(COMMANDS.presence, (args) => {
      if (this.#connection === connection) this.#setPresence(parsePresence(args));
      return {};
    });
    connection.peer.handle(COMMANDS.replaced, (args) => {
      if (this.#connection === connection) this.#onReplaced(connection, args.by ?? '');
      return {};
    });
    this.#connection = connection;
    connection.socket.once('close', () => {
      if (this.#connection !== connection) return;
      this.#connection = null;
      this.#stopPing();
      this.#setPresence(NO_PRESENCE);
      this.#failed('connection to the home server closed');
    });
    try {
      const seen = await connection.call(COMMANDS.whoAmI);
      this.#reflexiveTcp = seen.host ?? null;
      await this.#listen(connection);
    } catch (err) {
      if (this.#connection !== connection) return;
      this.#connection = null;
      connection.close();
      connection.socket.destroy();
      const e = asVertexError(err, 'ServerUnavailable');
      if (this.#replacedBy !== null && e.code === 'NotAllowed') this.#opts.log.info({ reason: e.message }, 'device still taken by the session that replaced this one');
      this.#failed(this.#replacedBy !== null ? this.#replacedText() : e.message);
      return;
    }
    this.#attempt = 0;
    this.#retryAfterAttempt = null;
    this.#lastError = null;
    this.#setState('online');
    this.#opts.log.info({ server: this.server }, 'home server session online');
    this.#startPing(connection);
  }

  #failed(reason: string): void {
    this.#lastError = reason;
    this.#setState('offline');
    if (this.#stopped) return;
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    const asked = this.#retryAfterAttempt;
    this.#retryAfterAttempt = null;
    if (asked !== null) {
      this.#retryTimer = null;
      this.#attempt = 0;
      this.#opts.log.info({ reason, trigger: asked }, 'home server session down; reconnecting now');
      setImmediate(() => void this.#connect(asked));
      return;
    }
    const delay = reconnectDelay(this.#attempt, (this.#opts.random ?? Math.random)());
    this.#attempt += 1;
    this.#nextTryAt = new Date(Date.now() + delay);
    this.#opts.log.info({ reason, retryInMs: delay }, 'home server session down; reconnecting');
    this.#retryTimer = setTimeout(() => { this.#retryTimer = null; void this.#connect('backoff'); }, delay);
    this.#retryTimer.unref();
  }

  async #listen(connection: ServerConnection): Promise<AmpArgs> {
    const waiting = this.#replacedBy !== null;
    const answer = await connection.call(COMMANDS.listen, {
      services: JSON.stringify(this.#opts.services()),
      device: this.#opts.device,
      ...(waiting && { takeover: '0' }),
    });
    if (this.#connection !== connection) return answer;
    if (waiting) {
      this.#opts.log.info({ device: this.#opts.device }, 'the session that replaced this device has gone; listening again');
      this.#replacedBy = null;
    }
    if (answer.replaced) {
      // Usually this agent's own previous run, not yet noticed gone by the server; if not, two
      // machines share a device name and the other one now says so in its status.
      this.#opts.log.warn({ device: this.#opts.device, previous: answer.replaced },
        'took over this device from another session; if that was not an earlier run of this node, give each machine its own device name');
    }
    this.#setPresence(parsePresence(answer));
    return answer;
  }

  #setPresence(presence: Presence): void {
    const changed = JSON.stringify(presence) !== JSON.stringify(this.#presence);
    this.#presence = presence;
    if (changed) {
      if (presence.conflicts.length > 0) this.#opts.log.info({ device: this.#opts.device, devices: presence.devices, conflicts: presence.conflicts }, 'services shared with other devices');
      this.emit('presence', presence);
    }
  }

  #replacedText(): string {
    const me = formatDeviceAddress(parseAddress(this.#opts.identity.address), this.#opts.device);
    return `replaced: a newer session (from ${this.#replacedBy}) listens as ${me}; this node listens again once it has gone; `
      + 'to run both, give each machine its own device name (agent.yaml device:, --device)';
  }

  #onReplaced(connection: ServerConnection, by: string): void {
    this.#replacedBy = by || 'unknown';
    this.#opts.log.warn({ device: this.#opts.device, by: this.#replacedBy }, 'replaced by a newer session of this device; not listening until it has gone');
    this.#connection = null;
    this.#stopPing();
    this.#setPresence(NO_PRESENCE);
    connection.close();
    // From the shortest backoff: the other node may be a start that fails at once.
    this.#attempt = 0;
    this.#failed(this.#replacedText());
    this.emit('replaced', this.#replacedBy);
  }

  /** A renewed certificate: reconnect with it (the server sees the new one at once). */
  setIdentity(identity: Identity): void {
    this.#opts = { ...this.#opts, identity };
    this.#connection?.socket.destroy();
  }

  /** Sends the current service set; called after expose/unexpose. */
  async relisten(): Promise<void> {
    if (this.#connection && this.#state === 'online') await this.#listen(this.#connection);
  }

  /** A command on the live session; ServerUnavailable while there is none. */
  call(command: string, args: AmpArgs = {}, opts?: { timeoutMs?: number }): Promise<AmpArgs> {
    const connection = this.#connection;
    if (!connection || this.#state !== 'online') {
      return Promise.reject(vertexError('ServerUnavailable', `${command}: no session with the home server of ${this.#domain}`));
    }
    return connection.call(command, args, opts);
  }

  #startPing(connection: ServerConnection): void {
    this.#pingTimer = setInterval(() => {
      connection.call(COMMANDS.ping, {}, { timeoutMs: KEEPALIVE_TIMEOUT_MS }).catch(() => {
        this.#opts.log.info('home server did not answer a ping; reconnecting');
        connection.socket.destroy();
      });
    }, KEEPALIVE_INTERVAL_MS);
    this.#pingTimer.unref();
  }

  #stopPing(): void {
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    this.#pingTimer = null;
  }

  stop(): void {
    this.#stopped = true;
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#nextTryAt = null;
    this.#stopPing();
    const connection = this.#connection;
    this.#connection = null;
    connection?.close();
    this.#setState('offline');
  }
}
