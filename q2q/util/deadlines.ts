/**
 * Deadlines for many short-lived things (a SOCKS handshake, a mux OPEN
 * waiting for its answer, a local connect) on one timer instead of a timer
 * each. Most of them finish long before their deadline, so a timer per item
 * costs a setTimeout and a clearTimeout (two timer-list operations and a
 * Timeout object) on every connection for nothing. Here an item is a Map
 * entry, and the single timer is armed for the earliest deadline; it is not
 * cancelled when items leave, it fires, finds what is due and re-arms for
 * the next.
 *
 * With one timeout for every item (the usual case) deadlines come in
 * insertion order and a sweep stops at the first item not yet due; with
 * mixed timeouts it looks at every item.
 */
import type { Clock, Timer } from './clock';

export class Deadlines<T> {
  readonly #clock: Clock;
  readonly #onExpire: (item: T) => void;
  readonly #due = new Map<T, number>();
  #timer: Timer | null = null;
  #armedAt = Infinity;
  #last = -Infinity;
  #sorted = true;

  constructor(clock: Clock, onExpire: (item: T) => void) {
    this.#clock = clock;
    this.#onExpire = onExpire;
  }

  get size(): number {
    return this.#due.size;
  }

  /** `item` expires `ms` from now (an item already here gets the new deadline). */
  add(item: T, ms: number): void {
    const at = this.#clock.now() + ms;
    this.#due.delete(item);
    this.#due.set(item, at);
    if (at < this.#last) this.#sorted = false;
    this.#last = at;
    if (at < this.#armedAt) this.#arm(at);
  }

  /** True if `item` was waiting. */
  delete(item: T): boolean {
    const had = this.#due.delete(item);
    if (this.#due.size === 0) this.#reset();
    return had;
  }

  /** Forgets every item and stops the timer. */
  clear(): void {
    this.#due.clear();
    this.#reset();
    this.#timer?.cancel();
    this.#timer = null;
    this.#armedAt = Infinity;
  }

  #reset(): void {
    this.#sorted = true;
    this.#last = -Infinity;
  }

  #arm(at: number): void {
    this.#timer?.cancel();
    this.#armedAt = at;
    this.#timer = this.#clock.setTimer(this.#fire, Math.max(0, at - this.#clock.now()));
  }

  readonly #fire = (): void => {
    this.#timer = null;
    this.#armedAt = Infinity;
    const now = this.#clock.now();
    const expired: T[] = [];
    let next = Infinity;
    for (const [item, at] of this.#due) {
      if (at <= now) expired.push(item);
      else if (this.#sorted) {
        next = at;
        break;
      } else if (at < next) next = at;
    }
    for (const item of expired) this.#due.delete(item);
    if (this.#due.size === 0) this.#reset();
    if (next !== Infinity && next < this.#armedAt) this.#arm(next);
    // Callbacks last: one may add or delete items (and re-arm).
    for (const item of expired) this.#onExpire(item);
  };
}
