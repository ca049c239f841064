/**
 * Retransmission timeout per RFC 6298: SRTT/RTTVAR smoothing, RTO = SRTT + max(G, 4*RTTVAR),
 * clamped to [minRto, maxRto], doubled on each timeout (section 5.5) and recomputed from the
 * next sample (samples come from timestamps, so Karn's ambiguity does not arise).
 */

export const RTT_ALPHA = 1 / 8;
export const RTT_BETA = 1 / 4;
export const RTT_K = 4;

export interface RttEstimatorOptions {
  initialRtoMs: number;
  minRtoMs: number;
  maxRtoMs: number;
  /** Clock granularity G of RFC 6298 section 2. */
  granularityMs: number;
}

export class RttEstimator {
  readonly #opts: RttEstimatorOptions;
  #srtt: number | undefined;
  #rttvar = 0;
  #minRtt = Infinity;
  #latest = 0;
  #backoff = 1;

  constructor(opts: RttEstimatorOptions) {
    this.#opts = opts;
  }

  /** Feeds one round-trip sample in milliseconds. */
  sample(rttMs: number): void {
    if (!(rttMs >= 0) || !Number.isFinite(rttMs)) return;
    this.#latest = rttMs;
    if (rttMs < this.#minRtt) this.#minRtt = rttMs;
    if (this.#srtt === undefined) {
      this.#srtt = rttMs;
      this.#rttvar = rttMs / 2;
    } else {
      this.#rttvar = (1 - RTT_BETA) * this.#rttvar + RTT_BETA * Math.abs(this.#srtt - rttMs);
      this.#srtt = (1 - RTT_ALPHA) * this.#srtt + RTT_ALPHA * rttMs;
    }
    this.#backoff = 1;
  }

  /** Doubles the timeout after a retransmission timer expiry (RFC 6298 5.5). */
  backoff(): void {
    this.#backoff = Math.min(this.#backoff * 2, 1 << 16);
  }

  get backoffFactor(): number {
    return this.#backoff;
  }

  get hasSample(): boolean {
    return this.#srtt !== undefined;
  }

  get srtt(): number | undefined {
    return this.#srtt;
  }

  get rttvar(): number {
    return this.#rttvar;
  }

  get minRtt(): number {
    return this.#minRtt;
  }

  get latest(): number {
    return this.#latest;
  }

  /** The base timeout without backoff. */
  get baseRto(): number {
    const o = this.#opts;
    if (this.#srtt === undefined) return Math.min(o.maxRtoMs, Math.max(o.minRtoMs, o.initialRtoMs));
    const rto = this.#srtt + Math.max(o.granularityMs, RTT_K * this.#rttvar);
    return Math.min(o.maxRtoMs, Math.max(o.minRtoMs, rto));
  }

  get rto(): number {
    return Math.min(this.#opts.maxRtoMs, this.baseRto * this.#backoff);
  }
}
