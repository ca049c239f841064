/**
 * NewReno congestion control (RFC 5681 / RFC 6582) driven by SACK-based loss detection
 * (the connection decides when a segment is lost; this class only sizes the window).
 *
 * - Slow start grows cwnd by the bytes newly acknowledged (RFC 3465 byte counting, with
 *   no per-ACK cap because the driver acknowledges a whole batch of datagrams at once).
 * - Congestion avoidance grows cwnd by about one segment per window of acknowledged bytes.
 * - One reduction per recovery episode: ssthresh = max(flight / 2, 2 segments), cwnd = ssthresh.
 *   The episode ends when the cumulative ACK passes the highest sequence sent at its start.
 * - A retransmission timeout collapses cwnd to one segment (RFC 5681 section 3.1).
 * - If every retransmission of an episode turns out spurious (the receiver reports the
 *   original as a duplicate), the reduction is undone, as Linux does with DSACK.
 */

export interface CongestionOptions {
  mss: number;
  initialWindowSegments: number;
  /** Upper bound on cwnd, so an unbounded application-limited sender cannot grow it forever. */
  maxWindowBytes: number;
}

export class NewReno {
  readonly #mss: number;
  readonly #max: number;
  #cwnd: number;
  #ssthresh = Infinity;
  #avoidanceCredit = 0;
  #inRecovery = false;
  #recoveryPoint = 0;
  #priorCwnd = 0;
  #priorSsthresh = Infinity;
  #undoable = false;

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

  /**
   * Called for every ACK that newly acknowledges or SACKs data. `cumAck` is the cumulative
   * acknowledgement offset; `appLimited` means the sender did not fill cwnd, so growth is withheld.
   */
  onAck(ackedBytes: number, cumAck: number, appLimited: boolean): void {
    if (this.#inRecovery) {
      if (cumAck >= this.#recoveryPoint) {
        this.#inRecovery = false;
        this.#undoable = false;
      } else {
        return;
      }
    }
    if (ackedBytes <= 0 || appLimited) return;
    if (this.#cwnd < this.#ssthresh) {
      this.#cwnd = Math.min(this.#max, this.#cwnd + ackedBytes);
    } else {
      this.#avoidanceCredit += ackedBytes;
      if (this.#avoidanceCredit >= this.#cwnd) {
        this.#avoidanceCredit -= this.#cwnd;
        this.#cwnd = Math.min(this.#max, this.#cwnd + this.#mss);
      }
    }
  }

  /** A loss was detected; starts a recovery episode unless one is running. Returns true if it started one. */
  onLoss(flightBytes: number, highestSent: number): boolean {
    if (this.#inRecovery) return false;
    this.#priorCwnd = this.#cwnd;
    this.#priorSsthresh = this.#ssthresh;
    this.#undoable = true;
    this.#inRecovery = true;
    this.#recoveryPoint = highestSent;
    this.#ssthresh = Math.max(Math.floor(flightBytes / 2), 2 * this.#mss);
    this.#cwnd = this.#ssthresh;
    this.#avoidanceCredit = 0;
    return true;
  }

  /** The retransmission timer expired. */
  onRto(flightBytes: number, highestSent: number): void {
    if (!this.#inRecovery || !this.#undoable) {
      this.#priorCwnd = this.#cwnd;
      this.#priorSsthresh = this.#ssthresh;
    }
    this.#undoable = true;
    this.#ssthresh = Math.max(Math.floor(Math.max(flightBytes, this.#cwnd) / 2), 2 * this.#mss);
    this.#cwnd = this.#mss;
    this.#inRecovery = true;
    this.#recoveryPoint = highestSent;
    this.#avoidanceCredit = 0;
  }

  /** Every retransmission of the current episode was spurious: restore the window. */
  undo(): void {
    if (!this.#undoable) return;
    this.#undoable = false;
    this.#cwnd = Math.max(this.#cwnd, this.#priorCwnd);
    this.#ssthresh = Math.max(this.#ssthresh, this.#priorSsthresh);
    this.#inRecovery = false;
  }
}
