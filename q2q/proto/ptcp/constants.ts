/**
 * PTCP tunables (implementation choices, not wire constants; those live in
 * q2q/wire/ptcp-segment.ts).
 */
import type { CongestionAlgorithm } from './congestion';

export interface PtcpTunables {
  /** Payload bytes per segment (ARCHITECTURE.md: 1200 by default). */
  mss: number;
  /** Bytes received and not yet consumed by the application before the window closes. */
  receiveBufferBytes: number;
  /** Bytes written and not yet acknowledged before the writer is told to wait. */
  sendBufferBytes: number;
  initialRtoMs: number;
  minRtoMs: number;
  maxRtoMs: number;
  /** Longest an ACK for a single in-order segment is held back (RFC 1122 allows 500 ms). */
  delayedAckMs: number;
  /** Acknowledge at once after this many unacknowledged data segments. */
  ackEverySegments: number;
  /** Send a keepalive after this long without hearing from the peer (also keeps NAT mappings). */
  keepaliveMs: number;
  /**
   * While a keepalive goes unanswered, probe again this often: a live peer answers every
   * probe at once, so a few lost datagrams do not pass for a dead peer.
   */
  keepaliveIntervalMs: number;
  /**
   * Dead-peer timeout: fail with PtcpIdle after this long without hearing from the peer.
   * Probing starts at keepaliveMs, so a live peer is heard from well before this.
   */
  idleTimeoutMs: number;
  /** Fail an active open with PtcpConnectTimeout after this long without a SYN-ACK. */
  connectTimeoutMs: number;
  /** How long the side that closed last lingers to re-acknowledge a retransmitted FIN. */
  timeWaitMs: number;
  initialWindowSegments: number;
  maxCwndBytes: number;
  pacing: boolean;
  /** BBR (model-based, tolerates random loss) or CUBIC (loss-based); see congestion.ts. */
  congestion: CongestionAlgorithm;
}

export const PTCP_DEFAULTS: Readonly<PtcpTunables> = Object.freeze({
  mss: 1200,
  receiveBufferBytes: 4 * 1024 * 1024,
  sendBufferBytes: 2 * 1024 * 1024,
  initialRtoMs: 1000,
  minRtoMs: 200,
  maxRtoMs: 60_000,
  delayedAckMs: 25,
  ackEverySegments: 2,
  // A dead peer is noticed within 10 s (issue 11): first probe after 2.5 s of silence,
  // then one a second, and dead after 7.5 s, so five probes must all be lost first.
  keepaliveMs: 2_500,
  keepaliveIntervalMs: 1_000,
  idleTimeoutMs: 7_500,
  connectTimeoutMs: 10_000,
  timeWaitMs: 2_000,
  initialWindowSegments: 10,
  maxCwndBytes: 32 * 1024 * 1024,
  pacing: true,
  congestion: 'bbr',
});

/** RFC 6675 DupThresh: SACKed segments above a hole before it counts as lost without waiting. */
export const DUP_THRESH = 3;
/** Pacing bursts cover this many ms of the rate, since Node timers tick in whole ms. */
export const PACING_BURST_MS = 4;
export const PACING_MIN_BURST_SEGMENTS = 16;
/** Half-open passive connections a socket keeps at once. */
export const MAX_HALF_OPEN = 1024;
/** Floor of the tail-loss-probe timeout (RFC 8985 suggests 10 ms). */
export const TLP_MIN_MS = 10;
/**
 * Longest a verdict of silence (PtcpIdle, PtcpConnectTimeout, a half-open connection given
 * up) waits for the driver to read the input that reached its socket before the deadline
 * (PtcpConnection.handleTimer). A starved process can hold seconds of the peer's segments
 * unread in its own socket buffer; past this bound the verdict is taken anyway, so a socket
 * that never catches up still notices a dead peer.
 */
export const MAX_INPUT_LAG_MS = 30_000;
/** The dead-peer timeout is at least keepaliveMs plus this many RTOs (see PtcpConnection #deadAt). */
export const DEAD_PEER_RTOS = 2;
/** Upper bound of the round-trip-scaled dead-peer timeout (idleTimeoutMs still applies if longer). */
export const MAX_DEAD_PEER_MS = 60_000;
