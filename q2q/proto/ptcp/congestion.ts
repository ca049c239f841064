/**
 * The interface between a PTCP connection and its congestion controller. The connection
 * detects loss (SACK/RACK, RTO, Eifel) and measures delivery; a controller only turns those
 * events into a window (`cwnd`) and a pacing rate.
 *
 * Two controllers exist: BBR (`bbr.ts`, the default: a model of the path's bottleneck rate
 * and round-trip time, so random loss does not shrink the window) and CUBIC (`cubic.ts`,
 * RFC 9438, loss-based; kept for comparison and for paths where a loss-based response is
 * wanted).
 */
import type { RateSample } from './delivery-rate';

export type CongestionAlgorithm = 'bbr' | 'cubic';

export interface CongestionOptions {
  mss: number;
  initialWindowSegments: number;
  /** Upper bound on cwnd, so an application-limited sender cannot grow it forever. */
  maxWindowBytes: number;
}

/** What one ACK that newly delivered data tells the controller. */
export interface AckEvent {
  now: number;
  /** Bytes newly acknowledged or SACKed by this ACK. */
  ackedBytes: number;
  /** Cumulative acknowledgement offset after this ACK. */
  cumAck: number;
  /** Bytes still in flight after this ACK (RFC 6675 pipe). */
  inFlight: number;
  /** The sender did not fill the window before this ACK. */
  appLimited: boolean;
  /** Smoothed RTT, ms (0 before the first sample). */
  srttMs: number;
  /** RFC 6298 RTTVAR, ms: how much round trips vary (jitter, not only queueing). */
  rttVarMs: number;
  /** Round trip of the newest segment this ACK delivered, if it was sent once. */
  rttMs: number | undefined;
  /** Delivery-rate sample (draft-cheng-iccrg-delivery-rate-estimation), if one was taken. */
  rate: RateSample | null;
}

export interface LossEvent {
  now: number;
  /** Bytes in flight after the newly lost segments were taken out. */
  inFlight: number;
  lostBytes: number;
  /** End of the highest segment sent: the recovery episode lasts until it is acknowledged. */
  highestSent: number;
}

/** What a controller reports about itself, for stats and diagnosis. */
export interface CongestionState {
  algorithm: CongestionAlgorithm;
  /** BBR mode, or CUBIC's slow-start / avoidance / recovery. */
  phase: string;
  /** Bottleneck bandwidth estimate in bytes per ms (BBR only). */
  btlBw?: number;
  /** Windowed minimum RTT in ms (BBR only). */
  minRttMs?: number;
}

export interface CongestionController {
  readonly algorithm: CongestionAlgorithm;
  state(): CongestionState;
  readonly cwnd: number;
  /** Slow-start threshold (Infinity where the algorithm has none). */
  readonly ssthresh: number;
  readonly inRecovery: boolean;
  /** Pacing rate in bytes per ms, given the smoothed RTT; Infinity before there is a basis. */
  pacingRate(srttMs: number | undefined): number;
  onAck(ev: AckEvent): void;
  /** A loss was detected; returns true if it started a recovery episode. */
  onLoss(ev: LossEvent): boolean;
  /** The retransmission timer expired. */
  onRto(inFlight: number, highestSent: number): void;
  /** Every retransmission of the current episode was spurious: restore the window. */
  undo(): void;
}
