/**
 * At most `limit` tasks run at once; the rest wait their turn, first come
 * first served. A task learns whether it waited (what it was asked to do may
 * have changed meanwhile). A task's errors are its own to handle: one that
 * rejects frees its place, and nothing more is done with the rejection.
 */
export class Pacer {
  readonly #limit: number;
  readonly #waiting: Array<() => void> = [];
  #active = 0;

  constructor(limit: number) {
    if (!(limit >= 1)) throw new RangeError(`pacer: a limit of ${limit}`);
    this.#limit = limit;
  }

  /** Tasks running now. */
  get active(): number {
    return this.#active;
  }

  /** Tasks waiting for their turn. */
  get waiting(): number {
    return this.#waiting.length;
  }

  run(task: (waited: boolean) => Promise<unknown>): void {
    if (this.#active < this.#limit) this.#start(task, false);
    else this.#waiting.push(() => this.#start(task, true));
  }

  /** Drops every task that has not started (the work they were for is gone). */
  clear(): void {
    this.#waiting.length = 0;
  }

  #start(task: (waited: boolean) => Promise<unknown>, waited: boolean): void {
    this.#active += 1;
    let settled: Promise<unknown>;
    try {
      settled = task(waited);
    } catch (err) {
      settled = Promise.reject(err);
    }
    settled.then(this.#done, this.#done);
  }

  readonly #done = (): void => {
    this.#active -= 1;
    this.#waiting.shift()?.();
  };
}
