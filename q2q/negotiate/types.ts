/**
 * The public shapes of Q2Q connections: what listenQ2Q/connectQ2Q take and
 * return. Front-ends (agent/, file transfer) build on these only.
 */
import type { Duplex } from 'node:stream';
import type { CaTrust } from '../control/server-connection';
import type { ServerResolver } from '../control/discovery';
import type { RouteName } from '../transport/route';
import type { Conflict } from '../control/protocol';
import type { Logger } from '../util/log';
import type { SessionStatus } from './peer-session';

export { ALL_ROUTES, ROUTE_NAMES, type RouteName } from '../transport/route';
export type { SessionStatus } from './peer-session';

/** A user's identity: the address, its private key and the certificate its domain issued. */
export interface Identity {
  address: string;
  keyPem: string;
  certPem: string;
}

/** What ServiceOptions.prepare knows of the stream being opened. */
export interface PrepareInfo {
  /** True once the caller has sent bytes on the stream (it spoke first). */
  peerSpoke(): boolean;
}

/** What a connected stream knows about itself. */
export interface Q2QStreamInfo {
  readonly route: RouteName;
  /** The other end's address, verified by peer TLS. */
  readonly peer: string;
  /**
   * The other end's device (README "Several machines per user"): on the caller
   * side the device that answered, as its server names it; on the listener side
   * the device the caller said it is; '' when the peer did not say. A label
   * among one address's machines, not a separate identity: peer TLS proves
   * `peer`, not `device`. Peer sessions are keyed on (peer, device).
   */
  readonly device: string;
  readonly service: string;
  /**
   * The peer's certificate (PEM), as verified during peer TLS. Kept here because
   * a TLS 1.3 client socket stops reporting it once the session ticket arrives.
   */
  readonly peerCertificate: string;
  /** Milliseconds from the connect call to the stream being usable (caller side; 0 on the listener). */
  readonly connectMs: number;
  /** The peer session that carries the stream (both ends see the same id). */
  readonly sessionId?: string;
  /**
   * Returned before the peer accepted it (ConnectOptions.early): a refusal arrives
   * as the stream's error (NotExposed, Denied, Refused, ...) instead of connect's.
   */
  readonly early?: boolean;
}

/**
 * A byte stream to a peer: one stream of the peer session, which is mutual
 * TLS 1.3 end to end on whatever route carries it. It behaves like a TCP
 * socket: half-close, back-pressure, and an abort that the other end sees
 * as an error, never as a clean end.
 */
export type Q2QStream = Duplex & Q2QStreamInfo & { readonly bytesRead: number; readonly bytesWritten: number };

/** Trust decisions about domain CAs: pin on first use, and the pinned CA for verifying peers. */
export interface DomainTrust extends CaTrust {
  loadCaFor(domain: string): string | null;
}

export interface ServiceOptions {
  /**
   * Who may connect: `*`, `*@domain`, `*@*.domain`, `user@domain` (allow.ts).
   * Default: the owner alone, on any of the owner's devices.
   */
  allow?: readonly string[];
  /**
   * Optional: runs once the caller is authenticated and allowed, before the caller's
   * connect resolves (an exposed service connects to its local target here). A rejection
   * refuses the connection with the error's code (Refused unless it carries another), so
   * the caller learns at connect time that nothing answers behind the service, instead
   * of getting a stream that closes at once. What it resolves to goes to onConnection.
   * `peerSpoke()` tells whether the caller's first bytes are already here (they may
   * come before the accept, ConnectOptions.early): a target that is spoken to first
   * will not speak first, so there is nothing of its own to wait for.
   */
  prepare?: (opening: PrepareInfo) => Promise<unknown>;
  onConnection: (stream: Q2QStream, prepared?: unknown) => void;
}

export interface Q2QOptions {
  resolve: ServerResolver;
  /**
   * This node's device name, one DNS label without '--' (q2q/address.ts).
   * Default: the host name's first label (deviceFromHostname(os.hostname())).
   */
  device?: string;
  trust: DomainTrust;
  /** Which routes may be used, in order of preference. Default: all. */
  routes?: readonly RouteName[];
  /** How long direct attempts run alone before relay legs are opened. Default 1000 ms. */
  relayDelayMs?: number;
  /** Where a listener accepts direct TCP peer channels. Default 0.0.0.0:0. */
  peerListen?: { host: string; port: number };
  /** Addresses to advertise as direct candidates instead of the local interfaces. */
  advertise?: readonly string[];
  /**
   * Connections as streams on one peer session per peer device (issue 12), or
   * the per-connection path (one inbound, TLS handshake and claim each). Both
   * ends must use the same. Default: true, unless VERTEX_PEER_SESSIONS=0 (node.ts).
   */
  peerSessions?: boolean;
  /** Overall limit for one connect. Default 15000 ms. */
  connectTimeoutMs?: number;
  log?: Logger;
  /**
   * @internal Tests only: replaces the sanity check on where a listener sends punch
   * probes (probe-targets.ts punchTargets), to show that a test catches its absence.
   */
  /**
   * @internal Tests only: the machine's interface addresses as one string, in place of
   * os.networkInterfaces(), so a test can change "the network" and see the node react.
   */
  networkAddresses?: () => string;
  punchTargetPolicy?: (candidates: ReadonlyArray<{ host: string; port: number }>, local: { addresses: readonly string[]; broadcasts: readonly string[] }) => Array<{ host: string; port: number }>;
}

export interface ConnectOptions {
  timeoutMs?: number;
  /**
   * Over a live peer session whose peer accepted this service before, return the
   * stream at once, before the peer's answer: the first bytes written go out right
   * behind the OPEN instead of a round trip later. A refusal (the service was
   * withdrawn meanwhile, the program behind it is down) then destroys the stream
   * with the reason, and the next connect waits for the answer again. For callers
   * that cannot report the reason exactly anyway (a port forward) or that report
   * success before the answer (the SOCKS proxy). Ignored on the per-connection path.
   */
  early?: boolean;
}

export type HomeConnectionState = 'connecting' | 'online' | 'offline';

export interface NodeStatus {
  identity: string;
  device: string;
  /**
   * The user's devices as the home server describes them: every device online
   * (this one included), the services this device shares with others and which
   * device unqualified callers reach, and who replaced this device's session
   * if that is why it is offline.
   */
  devices: { online: string[]; conflicts: Conflict[]; moreConflicts: number; replacedBy: string | null };
  certificateNotAfter: string;
  home: {
    state: HomeConnectionState; server: string | null; since: string; lastError: string | null;
    /** While offline: when the next attempt to reach the server is due (ISO time). */
    nextTry?: string | null;
    /** The latest attempt, and what started it: start, backoff, sighup or network. */
    lastTry?: { at: string; trigger: string } | null;
    /** Attempts so far by what started them (start, backoff, sighup, network). */
    tries?: Record<string, number>;
  };
  /** nat: the UDP mapping behaviour (q2q/negotiate/nat-type.ts); absent where a node cannot tell. */
  reflexive: { tcp: string | null; udp: string | null; nat?: 'easy' | 'hard' | 'unknown' };
  services: Array<{ service: string; allow: readonly string[] }>;
  peerListen: string | null;
  /** Peer sessions, each with its route, open streams, bytes and age (none on the per-connection path). */
  sessions?: SessionStatus[];
}
