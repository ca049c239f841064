/**
 * Password and registration limits (issue 11, item 3; docs/security.md
 * "Limits and their defaults").
 *
 * Every attempt takes its hits from the store's counters (takeRateLimit:
 * checked and counted in one atomic step, all or none) BEFORE any scrypt
 * work, and a success gives its hits back. So the counters are failure
 * budgets in which an attempt still being checked already counts as a
 * failure: 50 guesses sent at once find 5 hits free, not 50 checks that all
 * pass before the first failure is recorded (the race of issue 11).
 *
 * Which budgets, and why:
 * - per (account, address): 5 per 15 min. The attacker's guesses at alice use
 *   up the attacker's address's budget for alice, not alice's own.
 * - per address: 20 per 15 min over all accounts, so one address cannot try
 *   5 guesses at each of many accounts.
 * - per account: 100 per 15 min from all addresses together (a distributed
 *   guesser), from addresses not known good for it. A token bucket: at most 6
 *   at once, then one per 9.5 s. An empty bucket does not lock the account:
 *   it refills, and an address that logged in to that account successfully
 *   in the last 30 days skips the per-account budget altogether, so a
 *   distributed flood slows new addresses down but never locks the owner out
 *   of the machines they use.
 *
 * Why a bucket for the per-account budget (a fixed window before, with a slow
 * lane of one attempt per 10 s once it was used up): every hit it allows is
 * a scrypt check (N=2^17, most of a second of a core). With a window, eight
 * addresses guessing at one account bought 40 checks back to back, a core
 * busy for half a minute for everyone else on the server (bench trust-load).
 * The bucket keeps the budget (at most 100 in any 15 min, which the slow lane
 * did not: it let up to 90 more through) but gives only 6 checks at once,
 * then a steady trickle of one per 9.5 s, whatever the number of addresses.
 * Its burst is one more than the per-(account, address) budget, so one
 * attacking address can never empty it: the owner's first attempt from
 * another address always finds a place (the slow lane's job before), and a
 * user on a new address still makes 5 attempts in a row (typos).
 * The per-address budget stays a window: spreading it would not bound the
 * server's work (a flood just uses more addresses), and it would cut what
 * the users behind one NAT address may get wrong in a row from 20 to a few.
 */
import { vertexError } from '../q2q/errors';
import type { AccountStore, RateLimitCounter } from './store/account-store';

/** `limit` per `windowMs`; with `burst`, a token bucket (RateLimitCounter): at most `burst` at once, refilled steadily, `limit` in any `windowMs`. */
export interface Budget { limit: number; windowMs: number; burst?: number }

export interface LoginLimits {
  perAccountAddress: Budget;
  perAddress: Budget;
  perAccount: Budget;
  /**
   * Once a fixed-window perAccount (no burst) is used up, attempts from
   * addresses not known good. A token bucket refills by itself and has none.
   */
  accountSlowLane: Budget;
  /** How long a successful login makes its address known good for that account. */
  knownGoodMs: number;
  registerPerAddress: Budget;
  invitePerAddress: Budget;
  /** Password checks that may wait for an account's one in flight; more are refused (AccountLocks). */
  maxWaitingPerAccount: number;
}

const MINUTE = 60_000;
export const DEFAULT_LOGIN_LIMITS: Readonly<LoginLimits> = Object.freeze({
  perAccountAddress: { limit: 5, windowMs: 15 * MINUTE },
  perAddress: { limit: 20, windowMs: 15 * MINUTE },
  perAccount: { limit: 100, windowMs: 15 * MINUTE, burst: 6 },
  accountSlowLane: { limit: 1, windowMs: 10_000 },
  knownGoodMs: 30 * 24 * 60 * MINUTE,
  registerPerAddress: { limit: 20, windowMs: 60 * MINUTE },
  invitePerAddress: { limit: 5, windowMs: 15 * MINUTE },
  maxWaitingPerAccount: 16,
});

/**
 * The budgets as they were before the per-account token bucket: every budget
 * a fixed window, and the slow lane behind the per-account one (test fault
 * `windowed-password-budgets`, server/test-faults.ts).
 */
export function windowedBudgets(limits: Partial<LoginLimits> = {}): Partial<LoginLimits> {
  const all: LoginLimits = { ...DEFAULT_LOGIN_LIMITS, ...limits };
  const windowed = (b: Budget): Budget => ({ limit: b.limit, windowMs: b.windowMs });
  return { ...limits, perAccount: windowed(all.perAccount) };
}

type LimitStore = Pick<AccountStore, 'takeRateLimit' | 'releaseRateLimit' | 'peekRateLimit'>;

/** Hits taken for one attempt: give them back with `release` when it succeeded. */
export interface Ticket { keys: string[] }

function counter(key: string, budget: Budget): RateLimitCounter {
  return { key, limit: budget.limit, windowMs: budget.windowMs, ...(budget.burst !== undefined && { burst: budget.burst }) };
}

function retryMessage(context: string, retryAt: number, now: number): string {
  return `${context}; try again in ${Math.max(1, Math.ceil((retryAt - now) / 1000))} s`;
}

export class LoginRateLimiter {
  readonly #store: LimitStore;
  readonly #limits: LoginLimits;
  readonly #now: () => number;

  constructor(store: LimitStore, opts: { limits?: Partial<LoginLimits>; now?: () => number } = {}) {
    this.#store = store;
    this.#limits = { ...DEFAULT_LOGIN_LIMITS, ...opts.limits };
    this.#now = opts.now ?? Date.now;
  }

  get limits(): Readonly<LoginLimits> {
    return this.#limits;
  }

  /** Takes one password attempt at `account` from `address`, or throws RateLimited. */
  async takeLogin(account: string, address: string): Promise<Ticket> {
    const l = this.#limits;
    const now = this.#now();
    const base = [counter(`login:acct-addr:${account}|${address}`, l.perAccountAddress), counter(`login:addr:${address}`, l.perAddress)];
    const knownGood = await this.#store.peekRateLimit(this.#goodKey(account, address), now) > 0;
    const perAccount = [...base, counter(`login:acct:${account}`, l.perAccount)];
    const attempts = knownGood ? [base] : l.perAccount.burst !== undefined ? [perAccount] : [
      perAccount, [...base, counter(`login:acct-slow:${account}`, l.accountSlowLane)],
    ];
    let refused: { key: string; retryAt: number } | null = null;
    for (const counters of attempts) {
      const result = await this.#store.takeRateLimit(counters, now);
      if (result.ok) return { keys: counters.map((c) => c.key) };
      refused = result;
      // Only a full per-account window moves on to the slow lane.
      if (!result.key.startsWith('login:acct:')) break;
    }
    throw vertexError('RateLimited', retryMessage(`${account}: too many wrong passwords`, refused!.retryAt, now));
  }

  /** A right password: its hits do not count, and its address is known good for the account. */
  async loginSucceeded(ticket: Ticket, account: string, address: string): Promise<void> {
    const now = this.#now();
    await this.#store.releaseRateLimit(ticket.keys, now);
    await this.#store.takeRateLimit([{ key: this.#goodKey(account, address), limit: Number.MAX_SAFE_INTEGER, windowMs: this.#limits.knownGoodMs }], now);
  }

  /** Takes one registration from `address` (and, with an invitation, one invitation guess), or throws RateLimited. */
  async takeRegistration(address: string, withInvite: boolean): Promise<Ticket> {
    const l = this.#limits;
    const now = this.#now();
    const counters = [counter(`register:addr:${address}`, l.registerPerAddress)];
    if (withInvite) counters.push(counter(`register:invite:${address}`, l.invitePerAddress));
    const result = await this.#store.takeRateLimit(counters, now);
    if (!result.ok) {
      const what = result.key.startsWith('register:invite:') ? 'too many wrong invitation codes from your address' : 'too many registrations from your address';
      throw vertexError('RateLimited', retryMessage(`register: ${what}`, result.retryAt, now));
    }
    return { keys: counters.map((c) => c.key) };
  }

  /** A registration that used a valid invitation: the invitation guess does not count. */
  async inviteAccepted(address: string): Promise<void> {
    await this.#store.releaseRateLimit([`register:invite:${address}`], this.#now());
  }

  #goodKey(account: string, address: string): string {
    return `login:good:${account}|${address}`;
  }
}

/**
 * At most one password check per account at a time: later attempts wait
 * their turn (their hits are already taken, so waiting costs the attacker
 * budget, not the server scrypt work), at most `maxWaiting` of them; more are
 * refused with RateLimited.
 */
export class AccountLocks {
  readonly #queues = new Map<string, Array<() => void>>();

  constructor(readonly maxWaiting = 16) {}

  async run<T>(account: string, fn: () => Promise<T>): Promise<T> {
    const queue = this.#queues.get(account);
    if (queue) {
      if (queue.length >= this.maxWaiting) throw vertexError('RateLimited', `${account}: too many logins at once; try again in 1 s`);
      await new Promise<void>((resolve) => queue.push(resolve));
    } else {
      this.#queues.set(account, []);
    }
    try {
      return await fn();
    } finally {
      const waiting = this.#queues.get(account)!;
      const next = waiting.shift();
      if (next) next();
      else this.#queues.delete(account);
    }
  }

  /** Accounts with a check in flight (tests, metrics). */
  get busy(): number {
    return this.#queues.size;
  }
}
