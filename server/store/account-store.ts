/**
 * The account store interface. The embedded default is SQLite
 * (sqlite-store.ts); a multi-node deployment puts PostgreSQL behind the same
 * interface. Every method is async so that both can serve it.
 *
 * Changes that must reach running servers (a revocation, a removed account)
 * are also written, in the same transaction, to an append-only change feed.
 * A server follows it (server/store/change-feed.ts: `eventsAfter`, polled,
 * and woken early by `onChange`) to close live sessions: the admin
 * subcommands (`vertex server revoke`, `remove-user`) run as other processes,
 * and with several nodes any node may make the change.
 */

export interface Account {
  domain: string;
  user: string;
  /** Self-describing scrypt hash (server/password.ts). */
  passwordHash: string;
  createdAt: number;
}

export interface IssuedCertificate {
  serial: string;
  domain: string;
  user: string;
  notBefore: number;
  notAfter: number;
  revokedAt: number | null;
}

/** One entry of the change feed. `id` grows strictly; consumers remember the last one they saw. */
export type AccountEvent =
  | { id: number; at: number; kind: 'certificate-revoked'; domain: string; user: string; serial: string }
  | { id: number; at: number; kind: 'account-removed'; domain: string; user: string };

export const MAX_EVENTS_PER_READ = 1000;

/**
 * One counter of a takeRateLimit. Without `burst`: at most `limit` hits per
 * fixed window of `windowMs` that starts at its first hit. With `burst`: a
 * token bucket that holds at most `burst` hits and refills steadily, so that
 * `limit` per `windowMs` still holds for any span of that length (one hit
 * every windowMs / (limit - burst + 1): rateLimitInterval). A flood then
 * gets `burst` at once and one per interval after, never `limit` in a row.
 * A key is always taken with the same kind of counter (a row of the other
 * kind is read as the hits it holds).
 */
export interface RateLimitCounter { key: string; limit: number; windowMs: number; burst?: number }
export type RateLimitResult = { ok: true } | { ok: false; key: string; retryAt: number };
/** Counters per takeRateLimit call (a request's keys: address, account, both). */
export const MAX_RATE_LIMIT_KEYS = 8;

/**
 * A counter's stored row. A window: `hits` taken in the window that ends at
 * `windowEnds`, `intervalMs` 0. A token bucket: `windowEnds` is when it is
 * full again (its theoretical arrival time), `intervalMs` the time one hit
 * takes to refill, `hits` the hits in use when it was written (for reading
 * only). Either way a row whose windowEnds has passed is the same as no row,
 * so pruning by windowEnds serves both.
 */
export interface RateLimitRow { hits: number; windowEnds: number; intervalMs: number }

/** A token bucket's burst: at least 1, at most its limit. */
export function rateLimitBurst(c: Pick<RateLimitCounter, 'limit' | 'burst'>): number {
  return Math.min(Math.max(1, Math.floor(c.burst ?? 1)), Math.max(1, c.limit));
}

/**
 * The refill time of one hit of a token-bucket counter (whole ms, at least
 * 1): `burst` at the start of a span of windowMs and one per interval after
 * make at most `limit` in it.
 */
export function rateLimitInterval(c: Pick<RateLimitCounter, 'limit' | 'windowMs' | 'burst'>): number {
  return Math.max(1, Math.ceil(c.windowMs / (Math.max(1, c.limit) - rateLimitBurst(c) + 1)));
}

/** Hits in use in a row at `now` (0 for no row or an ended one). */
export function rateLimitHitsInUse(row: RateLimitRow | undefined, now: number): number {
  if (!row || row.windowEnds <= now) return 0;
  return row.intervalMs > 0 ? Math.ceil((row.windowEnds - now) / row.intervalMs) : row.hits;
}

/**
 * The one decision both stores make inside their transaction: one hit from
 * counter `c` whose row is `row` (undefined when there is none), at `now`.
 * Returns the row to write, or when the hit would be allowed again.
 */
export function takeRateLimitHit(row: RateLimitRow | undefined, c: RateLimitCounter, now: number):
  { ok: true; row: RateLimitRow } | { ok: false; retryAt: number } {
  const live = row && row.windowEnds > now ? row : undefined;
  if (c.burst === undefined) {
    const hits = rateLimitHitsInUse(live, now);
    const windowEnds = live ? live.windowEnds : now + c.windowMs;
    if (hits >= c.limit) return { ok: false, retryAt: windowEnds };
    return { ok: true, row: { hits: hits + 1, windowEnds, intervalMs: 0 } };
  }
  const interval = rateLimitInterval(c);
  // When the bucket is full again; a window row counts as that many hits in use.
  const full = !live ? now : live.intervalMs > 0 ? live.windowEnds : now + live.hits * interval;
  // A hit is allowed while at most burst - 1 are in use: the bucket may be at most that far from full.
  const slack = (rateLimitBurst(c) - 1) * interval;
  if (full - now > slack) return { ok: false, retryAt: full - slack };
  const windowEnds = full + interval;
  return { ok: true, row: { hits: Math.ceil((windowEnds - now) / interval), windowEnds, intervalMs: interval } };
}

export interface AccountStore {
  getAccount(domain: string, user: string): Promise<Account | null>;
  /** Throws VertexError('NameTaken') if the account exists. */
  createAccount(domain: string, user: string, passwordHash: string): Promise<Account>;
  /**
   * A registration, all or nothing in one transaction (issue 14: a node that
   * dies part way leaves no half-made account): consumes the invitation
   * code when one is given (BadInvite when it is unknown, used or expired),
   * creates the account (NameTaken when it exists) and records its first
   * certificate. On an error nothing is written.
   */
  registerAccount(req: {
    domain: string; user: string; passwordHash: string;
    certificate: { serial: string; notBefore: number; notAfter: number };
    invite?: { code: string; now: number };
  }): Promise<Account>;
  /** Replaces the stored hash (a rehash with stronger parameters); false if there is no such account. */
  setPasswordHash(domain: string, user: string, passwordHash: string): Promise<boolean>;
  /** Removes the account and revokes every certificate issued to it. Returns false if there was none. */
  removeAccount(domain: string, user: string): Promise<boolean>;
  listAccounts(domain?: string): Promise<Account[]>;

  recordCertificate(cert: Omit<IssuedCertificate, 'revokedAt'>): Promise<void>;
  /** Returns false if the serial was never issued. Revoking twice is not an error (true). */
  revokeCertificate(serial: string): Promise<boolean>;
  getCertificate(serial: string): Promise<IssuedCertificate | null>;

  createInvite(domain: string, code: string, expiresAt: number): Promise<void>;
  /** Whether the invite could be used now (a read: registerAccount still decides); lets a wrong code fail before any scrypt work. */
  inviteUsable(domain: string, code: string, now: number): Promise<boolean>;
  /** Atomically marks the invite used; false if unknown, used or expired. */
  consumeInvite(domain: string, code: string, now: number): Promise<boolean>;

  /**
   * Takes one hit from every counter, all or none, atomically (one
   * transaction): if any counter is at its limit nothing is counted and the
   * first full one is named with the time its window ends. Counters live in
   * the store so that nodes sharing it count as one, and a takeRateLimit
   * checks and counts in one step, so concurrent requests cannot all pass a
   * check before any of them is counted.
   */
  takeRateLimit(counters: readonly RateLimitCounter[], now: number): Promise<RateLimitResult>;
  /** Gives back one hit to each key whose window is still open (a success that should not count); a token bucket gets one interval back. */
  releaseRateLimit(keys: readonly string[], now: number): Promise<void>;
  /** Hits counted for `key` in its open window, or a token bucket's hits in use (0 when none). */
  peekRateLimit(key: string, now: number): Promise<number>;
  /** Deletes counters whose window ended; returns how many. */
  pruneRateLimits(now: number): Promise<number>;

  /** Change-feed entries with id > `after`, oldest first, at most `limit` (default MAX_EVENTS_PER_READ). */
  eventsAfter(after: number, limit?: number): Promise<AccountEvent[]>;
  /** The newest change-feed id (0 when empty): where a server that just started begins to follow. */
  latestEventId(): Promise<number>;
  /**
   * Calls `listener` soon after the change feed may have grown, so a follower
   * can read it at once instead of at its next poll. PostgreSQL wakes on any
   * handle's change (LISTEN/NOTIFY); SQLite only on this handle's own. A
   * wake-up is a hint: followers still poll. Returns the unsubscribe.
   */
  onChange(listener: () => void): () => void;

  /** Resolves when the store answers a query (health checks); throws VertexError('StorageUnavailable') otherwise. */
  ping(): Promise<void>;

  close(): Promise<void>;
}
