/**
 * Every tunnel the agent carries, whatever front-end opened it: SOCKS5
 * clients, forwards, `vertex connect` pipes through the control API, and
 * inbound connections to exposed services. `vertex status` lists them with
 * their route, age and bytes (INTERFACE.md "vertex status").
 *
 * Bytes are read from the stream's own `bytesRead`/`bytesWritten` counters
 * when status is asked for, so counting costs nothing on the data path. For
 * a TLS stream Node counts application bytes, not record overhead.
 */
import type { Duplex } from 'node:stream';
import type { RouteName } from '../q2q/negotiate/types';
import { systemClock, type Clock } from '../q2q/util/clock';

export type TunnelKind = 'socks' | 'forward' | 'connect' | 'inbound';
/** The Q2Q route, or `direct` for a SOCKS passthrough to an ordinary host. */
export type TunnelRoute = RouteName | 'direct';

export interface TunnelInfo {
  kind: TunnelKind;
  /** What was asked for: `bob@b.test:http`, or `host:port` for a passthrough. */
  target: string;
  /** The other end's verified address; for inbound tunnels the caller. */
  peer: string;
  /** The other end's device (Q2QStream.device); absent for a passthrough. */
  device?: string;
  route: TunnelRoute;
  /** The local end: a client address, a forward's listen address, `control`. */
  local: string;
  /** Milliseconds the connect took; 0 for inbound tunnels. */
  connectMs: number;
}

export interface TunnelEntry extends TunnelInfo {
  id: number;
  /** Wall-clock start, ISO 8601. */
  startedAt: string;
  ageMs: number;
  /** Bytes received from the peer. */
  bytesIn: number;
  /** Bytes sent to the peer. */
  bytesOut: number;
}

/** Told of every tunnel's open and close (the agent's metrics). */
export interface TunnelObserver {
  opened(info: TunnelInfo): void;
  closed(info: TunnelInfo, bytesIn: number, bytesOut: number): void;
}

interface Counted {
  bytesRead?: number;
  bytesWritten?: number;
}

interface Record_ {
  id: number;
  info: TunnelInfo;
  stream: Duplex;
  startedWall: number;
  startedMono: number;
  /** The counters when the tunnel was handed over: what the handshake before it used is not the tunnel's. */
  baseRead: number;
  baseWritten: number;
}

export class TunnelRegistry {
  readonly #clock: Clock;
  readonly #wallNow: () => number;
  readonly #tunnels = new Map<number, Record_>();
  readonly #observer: TunnelObserver | undefined;
  #nextId = 1;

  constructor(opts: { clock?: Clock; wallNow?: () => number; observer?: TunnelObserver } = {}) {
    this.#clock = opts.clock ?? systemClock;
    this.#wallNow = opts.wallNow ?? Date.now;
    this.#observer = opts.observer;
  }

  get size(): number {
    return this.#tunnels.size;
  }

  /**
   * Registers the peer-side stream of a tunnel; it leaves the registry when
   * the stream closes. Returns the tunnel's id.
   */
  add(info: TunnelInfo, stream: Duplex): number {
    const id = this.#nextId++;
    const counted = stream as Duplex & Counted;
    this.#tunnels.set(id, {
      id,
      info,
      stream,
      startedWall: this.#wallNow(),
      startedMono: this.#clock.now(),
      baseRead: counted.bytesRead ?? 0,
      baseWritten: counted.bytesWritten ?? 0,
    });
    this.#observer?.opened(info);
    const remove = (): void => {
      const record = this.#tunnels.get(id);
      if (!record) return;
      this.#tunnels.delete(id);
      if (this.#observer) {
        const [bytesIn, bytesOut] = this.#bytes(record);
        this.#observer.closed(info, bytesIn, bytesOut);
      }
    };
    if (stream.destroyed) remove();
    else stream.once('close', remove);
    return id;
  }

  #bytes(t: Record_): [number, number] {
    const counted = t.stream as Duplex & Counted;
    return [Math.max(0, (counted.bytesRead ?? 0) - t.baseRead), Math.max(0, (counted.bytesWritten ?? 0) - t.baseWritten)];
  }

  list(): TunnelEntry[] {
    const now = this.#clock.now();
    return [...this.#tunnels.values()].map((t) => {
      const [bytesIn, bytesOut] = this.#bytes(t);
      return {
        id: t.id,
        ...t.info,
        startedAt: new Date(t.startedWall).toISOString(),
        ageMs: Math.max(0, Math.round(now - t.startedMono)),
        bytesIn,
        bytesOut,
      };
    });
  }

  /** Destroys every tunnel still open; used at the end of a stop. */
  destroyAll(): void {
    for (const t of [...this.#tunnels.values()]) t.stream.destroy();
    this.#tunnels.clear();
  }

  /** Resolves when no tunnel is left or after `ms`, whichever is first. */
  drain(ms: number): Promise<void> {
    if (this.#tunnels.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = this.#clock.setTimer(done, ms);
      const pending = [...this.#tunnels.values()].filter((t) => !t.stream.destroyed);
      let left = pending.length;
      function done(): void {
        timer?.cancel();
        resolve();
      }
      if (left === 0) return done();
      for (const t of pending) {
        t.stream.once('close', () => {
          left -= 1;
          if (left === 0) done();
        });
      }
    });
  }
}
