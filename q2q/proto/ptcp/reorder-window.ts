/**
 * RACK reordering window (RFC 8985 section 6.2), adapted to paths whose round trip is
 * mostly jitter rather than propagation.
 *
 * RFC 8985 sizes the window as `reo_wnd_mult * min_rtt / 4`, doubling the multiplier on
 * each DSACK-proven spurious retransmission and capping the window at SRTT. On loopback
 * through a jittering proxy min_rtt is a fraction of a millisecond while datagrams are
 * reordered by tens of milliseconds, so that window needs many spurious recoveries (each a
 * needless retransmission) to grow, and its SRTT cap stays below the reordering it must cover.
 * Two additions fix that:
 *
 * - a measured extent: when a retransmission is proven needless, the original's round trip
 *   beyond the path's minimum is how late a segment can arrive without being lost, so the
 *   window jumps to it at once;
 * - the cap is SRTT + 4·RTTVAR (the RFC 6298 timeout before its floor), which grows with
 *   the jitter itself, instead of SRTT.
 *
 * Like RFC 8985 (step 4), the window shrinks again after 16 loss recoveries without a
 * spurious one: the multiplier resets and the measured extent halves.
 */

/** Loss recoveries without a spurious retransmission before the window shrinks (RFC 8985). */
export const REORDER_DECAY_RECOVERIES = 16;
/** Upper bound of the multiplier (RFC 8985 allows the window to reach SRTT; 1024·min_rtt/4 never binds first). */
export const MAX_REORDER_MULTIPLIER = 1024;
/** Floor of the min_rtt base, ms: on loopback min_rtt is near zero and the multiplier would need too many steps. */
export const REORDER_MIN_BASE_MS = 1;

export interface ReorderPathState {
  minRttMs: number;
  srttMs: number | undefined;
  rttvarMs: number;
}

export class ReorderWindow {
  #seen = false;
  #mult = 1;
  #extentMs = 0;
  #quietRecoveries = 0;

  /** Whether reordering has been observed (RFC 8985: until then DupThresh-style loss detection is allowed). */
  get seen(): boolean {
    return this.#seen;
  }

  get multiplier(): number {
    return this.#mult;
  }

  get extentMs(): number {
    return this.#extentMs;
  }

  /** A segment sent before one already delivered was delivered later: reordering exists. */
  onReordering(): void {
    this.#seen = true;
  }

  /**
   * A retransmission was proven needless. `lateByMs` is how far the original's round trip
   * exceeded the path's minimum (0 if unknown).
   */
  onSpurious(lateByMs: number): void {
    this.#seen = true;
    this.#mult = Math.min(MAX_REORDER_MULTIPLIER, this.#mult * 2);
    if (Number.isFinite(lateByMs) && lateByMs > this.#extentMs) this.#extentMs = lateByMs;
    this.#quietRecoveries = 0;
  }

  /** A loss recovery episode started. */
  onRecovery(): void {
    this.#quietRecoveries++;
    if (this.#quietRecoveries >= REORDER_DECAY_RECOVERIES) {
      this.#quietRecoveries = 0;
      this.#mult = 1;
      this.#extentMs /= 2;
    }
  }

  /** The window in ms, given the current path estimates; `dupThreshMet` allows 0 before any reordering. */
  window(path: ReorderPathState, dupThreshMet: boolean): number {
    if (!this.#seen && dupThreshMet) return 0;
    const base = Number.isFinite(path.minRttMs) ? Math.max(path.minRttMs, REORDER_MIN_BASE_MS) : REORDER_MIN_BASE_MS;
    const wanted = Math.max((this.#mult * base) / 4, this.#extentMs);
    if (path.srttMs === undefined) return wanted;
    return Math.min(wanted, Math.max(path.srttMs, path.srttMs + 4 * path.rttvarMs));
  }
}
