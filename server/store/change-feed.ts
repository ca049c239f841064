/**
 * Follows an AccountStore's change feed: reads `eventsAfter(last)` when the
 * store says it may have grown (`onChange`: at once on PostgreSQL through
 * LISTEN/NOTIFY) and on a poll timer as the fallback, and hands each event
 * to `onEvent` once, in order. Reads never overlap; a wake-up during a read
 * makes one more read after it.
 */
import type { Logger } from '../../q2q/util/log';
import { silentLogger } from '../../q2q/util/log';
import type { AccountEvent, AccountStore } from './account-store';

export const DEFAULT_POLL_MS = 1_000;
/** A read that fails (the database is away) is retried at the next poll; this many in a row are logged once. */
const FAILURES_BEFORE_WARNING = 3;

export interface ChangeFeedOptions {
  store: AccountStore;
  onEvent: (event: AccountEvent) => void | Promise<void>;
  pollMs?: number;
  log?: Logger;
}

export class ChangeFeedFollower {
  readonly #opts: ChangeFeedOptions;
  readonly #log: Logger;
  #last = 0;
  #timer: NodeJS.Timeout | null = null;
  #unsubscribe: (() => void) | null = null;
  #reading: Promise<void> | null = null;
  #again = false;
  #failures = 0;
  #stopped = false;

  constructor(opts: ChangeFeedOptions) {
    this.#opts = opts;
    this.#log = opts.log ?? silentLogger;
  }

  /** The id of the last event handed on. */
  get position(): number {
    return this.#last;
  }

  /** Starts at the feed's current end: what happened before is already in the tables. */
  async start(): Promise<void> {
    this.#last = await this.#opts.store.latestEventId();
    this.#unsubscribe = this.#opts.store.onChange(() => this.wake());
    const pollMs = this.#opts.pollMs ?? DEFAULT_POLL_MS;
    this.#timer = setInterval(() => this.wake(), pollMs);
    this.#timer.unref();
  }

  /** Reads the feed now (or once more after the read in progress). Resolves when that read is done. */
  wake(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    if (this.#reading) {
      this.#again = true;
      return this.#reading;
    }
    this.#reading = this.#drain().finally(() => {
      this.#reading = null;
    });
    return this.#reading;
  }

  async #drain(): Promise<void> {
    do {
      this.#again = false;
      let events: AccountEvent[];
      try {
        events = await this.#opts.store.eventsAfter(this.#last);
        if (this.#failures >= FAILURES_BEFORE_WARNING) this.#log.info('change feed readable again');
        this.#failures = 0;
      } catch (err) {
        if (++this.#failures === FAILURES_BEFORE_WARNING) this.#log.warn({ reason: (err as Error).message }, 'change feed unreadable; retrying at each poll');
        return;
      }
      for (const event of events) {
        if (this.#stopped) return;
        this.#last = event.id;
        try {
          await this.#opts.onEvent(event);
        } catch (err) {
          this.#log.error({ err, event: event.id }, 'change feed handler failed');
        }
      }
      // A full page means there may be more: read on without waiting.
      if (events.length > 0) this.#again = true;
    } while (this.#again && !this.#stopped);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    await this.#reading;
  }
}
