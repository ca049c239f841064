/**
 * The transport interface: every route to a peer is a dialer that yields a
 * raw byte channel (a Duplex) to the peer's agent, over which the peer
 * session then runs its mutual TLS. tcp and ptcp dial a candidate address
 * directly; relay dials the listener's server, which splices the channel to
 * the listener's own leg. negotiate/ladder.ts races them; tests replace all
 * three with an in-memory network (test/helpers/memory-network.ts).
 */
import type { Duplex } from 'node:stream';

/** The routes a connection may take, in the dial ladder's order; the one list of them. */
export const ROUTE_NAMES = ['tcp', 'ptcp', 'relay'] as const;
export type RouteName = (typeof ROUTE_NAMES)[number];
export const ALL_ROUTES: readonly RouteName[] = ROUTE_NAMES;

/** Routes that reach the peer without the relay. */
export type DirectRoute = 'tcp' | 'ptcp';
export const DIRECT_ROUTES: readonly DirectRoute[] = ['tcp', 'ptcp'];

export interface DirectTarget {
  host: string;
  port: number;
}

export interface DialOptions {
  /** Aborting gives the attempt up: it rejects, and nothing more is sent for it. */
  signal: AbortSignal;
  /** Date.now() past which the attempt gives up by itself. */
  deadline: number;
}

/** One dialer per route. Each rejects with a VertexError saying where and why. */
export interface PeerDialers {
  /** A TCP connection to a candidate (half-open allowed, Nagle off). */
  tcp(target: DirectTarget, opts: DialOptions): Promise<Duplex>;
  /** A PTCP connection to a candidate, punched for the inbound `token`. */
  ptcp(target: DirectTarget, token: string, opts: DialOptions): Promise<Duplex>;
  /** A relay leg through `domain`'s server for the inbound `token`. */
  relay(domain: string, token: string, opts: DialOptions): Promise<Duplex>;
}
