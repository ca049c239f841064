/**
 * CUBIC congestion control (RFC 9438) driven by SACK/RACK loss detection: the connection
 * decides when a segment is lost; this class only sizes the window.
 *
 * - Slow start grows cwnd by the bytes newly acknowledged (RFC 3465 byte counting, with no
 *   per-ACK cap because the driver acknowledges a whole batch of datagrams at once).
 * - Congestion avoidance follows W(t) = C·(t − K)³ + W_max (segments, seconds), with the
 *   Reno-friendly estimate as a floor, so the window regains its pre-loss size in a time that
 *   does not depend on the round trip.
 * - One reduction per recovery episode, to β = 0.7 of the window (not ½): under random loss
 *   NewReno halved on nearly every round and kept the window at a few segments. The episode
 *   ends when the cumulative ACK passes the highest sequence sent at its start.
 * - A retransmission timeout collapses cwnd to one segment (RFC 5681 section 3.1).
 * - A recovery whose retransmissions all prove needless (Eifel) is undone: cwnd, ssthresh and
 *   the cubic epoch return to what they were, as Linux does on DSACK.
 */
import type { AckEvent, CongestionController, CongestionOptions, CongestionState, LossEvent } from './congestion';

/** RFC 9438 constants. */
export const CUBIC_BETA = 0.7;
export const CUBIC_C = 0.4;
/** Additive increase of the Reno-friendly estimate per RTT, in segments (RFC 9438 section 4.3). */
export const CUBIC_ALPHA = (3 * (1 - CUBIC_BETA)) / (1 + CUBIC_BETA);

/** Pacing gain in slow start and in congestion avoidance (Linux uses 200 % and 120 %). */
export const CUBIC_PACING_GAIN_SLOW_START = 2;
export const CUBIC_PACING_GAIN_AVOIDANCE = 1.25;

interface Snapshot {
  cwnd: number;
  ssthresh: number;
  wMax: number;
  k: number;
  epochStart: number | null;
  wEst: number;
}

export class Cubic implements CongestionController {
  readonly algorithm = 'cubic' as const;
  readonly #mss: number;
  readonly #max: number;
  #cwnd: number;
  #ssthresh = Infinity;
  #inRecovery = false;
  #recoveryPoint = 0;
  #undoable = false;
  #prior: Snapshot | null = null;
  /** Window before the last reduction, in bytes. */
  #wMax = 0;
  /** Seconds the cubic function takes to return to wMax. */
  #k = 0;
  /** Start of the current avoidance epoch, ms; null until the first avoidance ACK. */
  #epochStart: number | null = null;
  /** Reno-friendly window estimate, bytes. */
  #wEst = 0;

  constructor(opts: CongestionOptions) {
    this.#mss = opts.mss;
    this.#max = opts.maxWindowBytes;
    this.#cwnd = Math.min(this.#max, opts.initialWindowSegments * opts.mss);
  }

  get cwnd(): number {
    return this.#cwnd;
  }

  get ssthresh(): number {
    return this.#ssthresh;
  }

  get inRecovery(): boolean {
    return this.#inRecovery;
  }

  get inSlowStart(): boolean {
    return this.#cwnd < this.#ssthresh;
  }

  state(): CongestionState {
    return { algorithm: 'cubic', phase: this.#inRecovery ? 'recovery' : this.inSlowStart ? 'slow-start' : 'avoidance' };
  }

  /** gain × cwnd / SRTT: the window spread over a round trip, a little faster to fill it. */
  pacingRate(srttMs: number | undefined): number {
    if (srttMs === undefined) return Infinity;
    const gain = this.inSlowStart ? CUBIC_PACING_GAIN_SLOW_START : CUBIC_PACING_GAIN_AVOIDANCE;
    return (gain * this.#cwnd) / Math.max(srttMs, 0.05);
  }

  /** The cubic window `t` ms into the epoch, bytes. */
  cubicWindow(tMs: number): number {
    const t = tMs / 1000 - this.#k;
    return this.#wMax + CUBIC_C * t * t * t * this.#mss;
  }

  /**
   * Called for every ACK that newly acknowledges or SACKs data. An application-limited
   * sender (it did not fill cwnd) gets no growth. `now` and `srttMs` drive the cubic function.
   */
  onAck(ev: AckEvent): void {
    const { ackedBytes, cumAck, appLimited, now, srttMs } = ev;
    if (this.#inRecovery) {
      if (cumAck >= this.#recoveryPoint) {
        this.#inRecovery = false;
        this.#undoable = false;
      } else {
        return;
      }
    }
    if (ackedBytes <= 0) return;
    if (appLimited) {
      // An application-limited sender learns nothing about the path, and the idle time must
      // not count as growth (RFC 9438 section 5.8): the next epoch restarts from this cwnd.
      this.#epochStart = null;
      return;
    }
    if (this.#cwnd < this.#ssthresh) {
      this.#cwnd = Math.min(this.#max, this.#cwnd + ackedBytes);
      return;
    }
    if (this.#epochStart === null) {
      this.#epochStart = now;
      if (this.#wMax <= this.#cwnd) {
        this.#wMax = this.#cwnd;
        this.#k = 0;
      } else {
        this.#k = Math.cbrt((this.#wMax - this.#cwnd) / this.#mss / CUBIC_C);
      }
      this.#wEst = this.#cwnd;
    }
    const t = now - this.#epochStart;
    const target = Math.min(Math.max(this.cubicWindow(t + srttMs), this.#cwnd), 1.5 * this.#cwnd);
    this.#wEst += (CUBIC_ALPHA * this.#mss * ackedBytes) / this.#cwnd;
    let next = this.#cwnd;
    if (this.#wEst > target) {
      next = this.#wEst;
    } else {
      next += ((target - this.#cwnd) * ackedBytes) / this.#cwnd;
    }
    this.#cwnd = Math.min(this.#max, Math.max(this.#cwnd, Math.floor(next)));
  }

  #save(): void {
    this.#prior = { cwnd: this.#cwnd, ssthresh: this.#ssthresh, wMax: this.#wMax, k: this.#k, epochStart: this.#epochStart, wEst: this.#wEst };
  }

  #reduce(flightBytes: number): void {
    const w = Math.max(this.#cwnd, flightBytes);
    // Fast convergence: a window that did not regain the previous maximum releases bandwidth.
    this.#wMax = w < this.#wMax ? (w * (1 + CUBIC_BETA)) / 2 : w;
    const reduced = Math.floor(Math.min(this.#cwnd, Math.max(flightBytes, 2 * this.#mss)) * CUBIC_BETA);
    this.#ssthresh = Math.max(reduced, 2 * this.#mss);
    this.#epochStart = null;
  }

  /** A loss was detected; starts a recovery episode unless one is running. Returns true if it started one. */
  onLoss(ev: LossEvent): boolean {
    if (this.#inRecovery) return false;
    const flightBytes = ev.inFlight + ev.lostBytes;
    const highestSent = ev.highestSent;
    this.#save();
    this.#undoable = true;
    this.#inRecovery = true;
    this.#recoveryPoint = highestSent;
    this.#reduce(flightBytes);
    this.#cwnd = this.#ssthresh;
    return true;
  }

  /** The retransmission timer expired. */
  onRto(flightBytes: number, highestSent: number): void {
    if (!this.#inRecovery || !this.#undoable) this.#save();
    this.#undoable = true;
    this.#reduce(flightBytes);
    this.#cwnd = this.#mss;
    this.#inRecovery = true;
    this.#recoveryPoint = highestSent;
  }

  /** Every retransmission of the current episode was spurious: restore the window. */
  undo(): void {
    if (!this.#undoable || !this.#prior) return;
    this.#undoable = false;
    const p = this.#prior;
    this.#cwnd = Math.max(this.#cwnd, p.cwnd);
    this.#ssthresh = Math.max(this.#ssthresh, p.ssthresh);
    this.#wMax = p.wMax;
    this.#k = p.k;
    this.#epochStart = p.epochStart;
    this.#wEst = p.wEst;
    this.#inRecovery = false;
  }
}
