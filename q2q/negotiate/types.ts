/**
 * The public shapes of Q2Q connections: what listenQ2Q/connectQ2Q take and
 * return. Front-ends (agent/, file transfer) build on these only.
 */
import type { TLSSocket } from 'node:tls';
import type { CaTrust } from '../control/server-connection';
import type { ServerResolver } from '../control/discovery';
import type { Logger } from '../util/log';

/** The routes a connection may take, in the dial ladder's order; the one list of them. */
export const ROUTE_NAMES = ['tcp', 'ptcp', 'relay'] as const;
export type RouteName = (typeof ROUTE_NAMES)[number];
export const ALL_ROUTES: readonly RouteName[] = ROUTE_NAMES;

/** A user's identity: the address, its private key and the certificate its domain issued. */
export interface Identity {
  address: string;
  keyPem: string;
  certPem: string;
}

/** What a connected stream knows about itself. */
export interface Q2QStreamInfo {
  readonly route: RouteName;
  /** The other end's address, verified by peer TLS. */
  readonly peer: string;
  readonly service: string;
  /**
   * The peer's certificate (PEM), as verified during peer TLS. Kept here because
   * a TLS 1.3 client socket stops reporting it once the session ticket arrives.
   */
  readonly peerCertificate: string;
  /** Milliseconds from the connect call to the stream being usable (caller side; 0 on the listener). */
  readonly connectMs: number;
}

/** A byte stream to a peer, end-to-end mutual TLS 1.3 on whatever route carried it. */
export type Q2QStream = TLSSocket & Q2QStreamInfo;

/** Trust decisions about domain CAs: pin on first use, and the pinned CA for verifying peers. */
export interface DomainTrust extends CaTrust {
  loadCaFor(domain: string): string | null;
}

export interface ServiceOptions {
  /** Who may connect: `*`, `*@domain`, `user@domain`. Default: the owner's own domain. */
  allow?: readonly string[];
  onConnection: (stream: Q2QStream) => void;
}

export interface Q2QOptions {
  resolve: ServerResolver;
  trust: DomainTrust;
  /** Which routes may be used, in order of preference. Default: all. */
  routes?: readonly RouteName[];
  /** How long direct attempts run alone before relay legs are opened. Default 1000 ms. */
  relayDelayMs?: number;
  /** Where a listener accepts direct TCP peer channels. Default 0.0.0.0:0. */
  peerListen?: { host: string; port: number };
  /** Addresses to advertise as direct candidates instead of the local interfaces. */
  advertise?: readonly string[];
  /** Overall limit for one connect. Default 15000 ms. */
  connectTimeoutMs?: number;
  log?: Logger;
}

export interface ConnectOptions {
  timeoutMs?: number;
}

export type HomeConnectionState = 'connecting' | 'online' | 'offline';

export interface NodeStatus {
  identity: string;
  certificateNotAfter: string;
  home: { state: HomeConnectionState; server: string | null; since: string; lastError: string | null };
  /** nat: the UDP mapping behaviour (q2q/negotiate/nat-type.ts); absent where a node cannot tell. */
  reflexive: { tcp: string | null; udp: string | null; nat?: 'easy' | 'hard' | 'unknown' };
  services: Array<{ service: string; allow: readonly string[] }>;
  peerListen: string | null;
}
