/**
 * Token-bucket pacing: segments leave at `rate` bytes/ms with bursts bounded by `burstBytes`.
 * Node timers have millisecond granularity, so the burst must cover at least a couple of
 * milliseconds of the rate or the timer itself becomes the bottleneck.
 */

/** Shortest wait the pacer asks for, so float rounding cannot make a timer fire again at once. */
export const PACER_MIN_WAIT_MS = 0.1;

export class Pacer {
  #tokens: number;
  #last: number | undefined;
  #rate = Infinity;
  #burst: number;

  constructor(initialBurstBytes: number) {
    this.#burst = initialBurstBytes;
    this.#tokens = initialBurstBytes;
  }

  /** Sets the rate in bytes per millisecond and the largest burst. */
  configure(rateBytesPerMs: number, burstBytes: number): void {
    this.#rate = rateBytesPerMs;
    this.#burst = burstBytes;
    if (this.#tokens > burstBytes) this.#tokens = burstBytes;
  }

  #refill(now: number): void {
    if (this.#last !== undefined && now > this.#last) {
      this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#last) * this.#rate);
    }
    this.#last = now;
  }

  /** True if `bytes` may leave now; the caller then calls consume(). */
  canSend(bytes: number, now: number): boolean {
    this.#refill(now);
    return this.#tokens >= bytes || this.#rate === Infinity;
  }

  consume(bytes: number): void {
    this.#tokens -= bytes;
  }

  /** When `bytes` will be allowed, in the same time base as `now`. */
  nextSendTime(bytes: number, now: number): number {
    this.#refill(now);
    if (this.#tokens >= bytes || this.#rate === Infinity) return now;
    return now + Math.max(PACER_MIN_WAIT_MS, (bytes - this.#tokens) / this.#rate);
  }

  get tokens(): number {
    return this.#tokens;
  }
}
