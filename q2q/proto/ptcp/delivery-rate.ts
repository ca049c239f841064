/**
 * Delivery-rate estimation (draft-cheng-iccrg-delivery-rate-estimation-02): each segment
 * remembers, when sent, how much had been delivered so far and when; the ACK that delivers it
 * yields "bytes delivered between then and now / the longer of the send and ACK intervals".
 * Taking the longer interval keeps an ACK burst (ACK compression) or a send burst from
 * inflating the sample. Samples taken while the sender had nothing to send are marked
 * application-limited, so a controller can tell a quiet sender from a slow path.
 */

/** Per-segment state recorded at each (re)transmission. */
export interface RateTxState {
  /** Bytes delivered on the connection when the segment was sent. */
  txDelivered: number;
  /** Time of that delivery count, ms. */
  txDeliveredTime: number;
  /** Send time of the first segment of the flight this one belongs to, ms. */
  txFirstSentTime: number;
  txAppLimited: boolean;
  /** Latest send time, ms. */
  sentAt: number;
}

export interface RateSample {
  /** Bytes delivered over the interval. */
  delivered: number;
  intervalMs: number;
  /** Bytes per ms. */
  rate: number;
  isAppLimited: boolean;
  /** Delivery count when the sampled segment was sent (a new round starts past it). */
  priorDelivered: number;
}

export class DeliveryRateEstimator {
  #delivered = 0;
  #deliveredTime = 0;
  #firstSentTime = 0;
  /** Delivery count that ends the current application-limited period; 0 when not limited. */
  #appLimitedUntil = 0;

  /** Total bytes delivered (cumulatively acknowledged or SACKed). */
  get delivered(): number {
    return this.#delivered;
  }

  get appLimited(): boolean {
    return this.#appLimitedUntil !== 0;
  }

  /** Records the connection's delivery state in a segment about to be sent. */
  onSend(seg: RateTxState, now: number, inFlightBefore: number): void {
    if (inFlightBefore === 0) {
      // A new flight after idle: intervals start now, not at the last ACK long ago.
      this.#firstSentTime = now;
      this.#deliveredTime = now;
    }
    seg.txDelivered = this.#delivered;
    seg.txDeliveredTime = this.#deliveredTime;
    seg.txFirstSentTime = this.#firstSentTime;
    seg.txAppLimited = this.#appLimitedUntil !== 0;
  }

  /** The sender ran out of data with room left in its window. */
  markAppLimited(inFlight: number): void {
    this.#appLimitedUntil = Math.max(this.#delivered + inFlight, 1);
  }

  /**
   * Counts `newlyDelivered` bytes delivered at `now` and, given the most recently sent of the
   * segments this ACK delivered, returns a rate sample (null if the interval is not usable).
   * `minRttMs` discards intervals shorter than a round trip, which only measure bursts.
   */
  onAck(newlyDelivered: number, latest: RateTxState | null, now: number, minRttMs: number): RateSample | null {
    if (newlyDelivered <= 0) return null;
    this.#delivered += newlyDelivered;
    this.#deliveredTime = now;
    if (this.#appLimitedUntil !== 0 && this.#delivered > this.#appLimitedUntil) this.#appLimitedUntil = 0;
    if (!latest) return null;
    const sendElapsed = latest.sentAt - latest.txFirstSentTime;
    const ackElapsed = now - latest.txDeliveredTime;
    this.#firstSentTime = latest.sentAt;
    const intervalMs = Math.max(sendElapsed, ackElapsed);
    const delivered = this.#delivered - latest.txDelivered;
    if (!(intervalMs > 0) || delivered <= 0) return null;
    if (Number.isFinite(minRttMs) && intervalMs < minRttMs) return null;
    return { delivered, intervalMs, rate: delivered / intervalMs, isAppLimited: latest.txAppLimited, priorDelivered: latest.txDelivered };
  }
}
