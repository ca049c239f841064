/**
 * AccountStore on embedded SQLite (better-sqlite3, WAL). WAL lets the admin
 * subcommands (`vertex server add-user`, `revoke`, …) write while a server
 * process reads the same file. better-sqlite3 is synchronous; the async
 * methods only satisfy the shared interface.
 *
 * The schema is versioned by `PRAGMA user_version`: each entry of
 * MIGRATIONS moves it one step, inside a transaction, so a database of any
 * earlier version opens.
 */
import Database from 'better-sqlite3';
import { vertexError } from '../../q2q/errors';
import {
  MAX_EVENTS_PER_READ, MAX_RATE_LIMIT_KEYS, rateLimitHitsInUse, takeRateLimitHit, type Account, type AccountEvent, type AccountStore,
  type IssuedCertificate, type RateLimitCounter, type RateLimitResult, type RateLimitRow,
} from './account-store';

/** MIGRATIONS[i] takes the schema from version i to i + 1. */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE IF NOT EXISTS accounts (
    domain        TEXT    NOT NULL,
    user          TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (domain, user)
  );
  CREATE TABLE IF NOT EXISTS certificates (
    serial     TEXT    PRIMARY KEY,
    domain     TEXT    NOT NULL,
    user       TEXT    NOT NULL,
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    revoked_at INTEGER
  );
  CREATE INDEX IF NOT EXISTS certificates_by_user ON certificates (domain, user);
  CREATE TABLE IF NOT EXISTS invites (
    domain     TEXT    NOT NULL,
    code       TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    PRIMARY KEY (domain, code)
  );
  `,
  `
  CREATE TABLE events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    kind   TEXT    NOT NULL,
    domain TEXT    NOT NULL,
    user   TEXT    NOT NULL,
    serial TEXT
  );
  `,
  `
  CREATE TABLE rate_limits (
    key         TEXT    PRIMARY KEY,
    hits        INTEGER NOT NULL,
    window_ends INTEGER NOT NULL
  );
  CREATE INDEX rate_limits_by_end ON rate_limits (window_ends);
  `,
  // Token-bucket counters (RateLimitCounter.burst): the refill time of one
  // hit; 0 for a fixed-window counter, what every row was before.
  `
  ALTER TABLE rate_limits ADD COLUMN interval_ms INTEGER NOT NULL DEFAULT 0;
  `,
];
export const SCHEMA_VERSION = MIGRATIONS.length;

interface AccountRow { domain: string; user: string; password_hash: string; created_at: number }
interface CertificateRow { serial: string; domain: string; user: string; not_before: number; not_after: number; revoked_at: number | null }
interface EventRow { id: number; at: number; kind: string; domain: string; user: string; serial: string | null }

function toAccount(row: AccountRow): Account {
  return { domain: row.domain, user: row.user, passwordHash: row.password_hash, createdAt: row.created_at };
}

function toCertificate(row: CertificateRow): IssuedCertificate {
  return {
    serial: row.serial, domain: row.domain, user: row.user,
    notBefore: row.not_before, notAfter: row.not_after, revokedAt: row.revoked_at,
  };
}

function toEvent(row: EventRow): AccountEvent {
  if (row.kind === 'certificate-revoked') {
    return { id: row.id, at: row.at, kind: 'certificate-revoked', domain: row.domain, user: row.user, serial: row.serial ?? '' };
  }
  return { id: row.id, at: row.at, kind: 'account-removed', domain: row.domain, user: row.user };
}

function migrate(db: Database.Database): void {
  const from = db.pragma('user_version', { simple: true }) as number;
  if (from > SCHEMA_VERSION) {
    throw new Error(`schema version ${from} is newer than this vertex understands (${SCHEMA_VERSION}); upgrade vertex`);
  }
  for (let version = from; version < SCHEMA_VERSION; version++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[version] as string);
      db.pragma(`user_version = ${version + 1}`);
    }).immediate();
  }
}

export class SqliteAccountStore implements AccountStore {
  readonly #db: Database.Database;
  readonly #now: () => number;
  readonly #listeners = new Set<() => void>();

  constructor(file: string, opts: { now?: () => number } = {}) {
    this.#now = opts.now ?? Date.now;
    try {
      this.#db = new Database(file);
      this.#db.pragma('journal_mode = WAL');
      this.#db.pragma('busy_timeout = 5000');
      this.#db.pragma('foreign_keys = ON');
      migrate(this.#db);
    } catch (err) {
      throw vertexError('Internal', `open account database ${file}: ${(err as Error).message}`, err);
    }
  }

  async getAccount(domain: string, user: string): Promise<Account | null> {
    const row = this.#db.prepare('SELECT * FROM accounts WHERE domain = ? AND user = ?').get(domain, user) as AccountRow | undefined;
    return row ? toAccount(row) : null;
  }

  async createAccount(domain: string, user: string, passwordHash: string): Promise<Account> {
    const createdAt = this.#now();
    try {
      this.#db.prepare('INSERT INTO accounts (domain, user, password_hash, created_at) VALUES (?, ?, ?, ?)')
        .run(domain, user, passwordHash, createdAt);
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
        throw vertexError('NameTaken', `register ${user}@${domain}: the name is taken`);
      }
      throw err;
    }
    return { domain, user, passwordHash, createdAt };
  }

  async registerAccount(req: Parameters<AccountStore['registerAccount']>[0]): Promise<Account> {
    const createdAt = this.#now();
    const { domain, user } = req;
    const register = this.#db.transaction(() => {
      if (req.invite && this.#db.prepare(
        'UPDATE invites SET used_at = ? WHERE domain = ? AND code = ? AND used_at IS NULL AND expires_at > ?',
      ).run(req.invite.now, domain, req.invite.code, req.invite.now).changes === 0) {
        throw vertexError('BadInvite', `register ${user}@${domain}: the invitation code is unknown, used or expired`);
      }
      try {
        this.#db.prepare('INSERT INTO accounts (domain, user, password_hash, created_at) VALUES (?, ?, ?, ?)').run(domain, user, req.passwordHash, createdAt);
      } catch (err) {
        if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') throw vertexError('NameTaken', `register ${user}@${domain}: the name is taken`);
        throw err;
      }
      this.#db.prepare('INSERT INTO certificates (serial, domain, user, not_before, not_after) VALUES (?, ?, ?, ?, ?)')
        .run(req.certificate.serial, domain, user, req.certificate.notBefore, req.certificate.notAfter);
    });
    register.immediate();
    return { domain, user, passwordHash: req.passwordHash, createdAt };
  }

  async setPasswordHash(domain: string, user: string, passwordHash: string): Promise<boolean> {
    return this.#db.prepare('UPDATE accounts SET password_hash = ? WHERE domain = ? AND user = ?')
      .run(passwordHash, domain, user).changes > 0;
  }

  async removeAccount(domain: string, user: string): Promise<boolean> {
    const now = this.#now();
    const remove = this.#db.transaction(() => {
      const removed = this.#db.prepare('DELETE FROM accounts WHERE domain = ? AND user = ?').run(domain, user).changes > 0;
      if (!removed) return false;
      this.#db.prepare('UPDATE certificates SET revoked_at = ? WHERE domain = ? AND user = ? AND revoked_at IS NULL')
        .run(now, domain, user);
      this.#db.prepare("INSERT INTO events (at, kind, domain, user) VALUES (?, 'account-removed', ?, ?)").run(now, domain, user);
      return true;
    });
    const removed = remove.immediate();
    if (removed) this.#wake();
    return removed;
  }

  async listAccounts(domain?: string): Promise<Account[]> {
    const rows = (domain === undefined
      ? this.#db.prepare('SELECT * FROM accounts ORDER BY domain, user').all()
      : this.#db.prepare('SELECT * FROM accounts WHERE domain = ? ORDER BY user').all(domain)) as AccountRow[];
    return rows.map(toAccount);
  }

  async recordCertificate(cert: Omit<IssuedCertificate, 'revokedAt'>): Promise<void> {
    this.#db.prepare('INSERT INTO certificates (serial, domain, user, not_before, not_after) VALUES (?, ?, ?, ?, ?)')
      .run(cert.serial, cert.domain, cert.user, cert.notBefore, cert.notAfter);
  }

  async revokeCertificate(serialText: string): Promise<boolean> {
    const serial = serialText.toLowerCase();
    const now = this.#now();
    let changed = false;
    const revoke = this.#db.transaction(() => {
      const row = this.#db.prepare('SELECT * FROM certificates WHERE serial = ?').get(serial) as CertificateRow | undefined;
      if (!row) return false;
      if (row.revoked_at === null) {
        this.#db.prepare('UPDATE certificates SET revoked_at = ? WHERE serial = ?').run(now, serial);
        this.#db.prepare("INSERT INTO events (at, kind, domain, user, serial) VALUES (?, 'certificate-revoked', ?, ?, ?)")
          .run(now, row.domain, row.user, serial);
        changed = true;
      }
      return true;
    });
    const known = revoke.immediate();
    if (changed) this.#wake();
    return known;
  }

  async getCertificate(serial: string): Promise<IssuedCertificate | null> {
    const row = this.#db.prepare('SELECT * FROM certificates WHERE serial = ?').get(serial.toLowerCase()) as CertificateRow | undefined;
    return row ? toCertificate(row) : null;
  }

  async createInvite(domain: string, code: string, expiresAt: number): Promise<void> {
    this.#db.prepare('INSERT INTO invites (domain, code, expires_at) VALUES (?, ?, ?)').run(domain, code, expiresAt);
  }

  async inviteUsable(domain: string, code: string, now: number): Promise<boolean> {
    return this.#db.prepare('SELECT 1 FROM invites WHERE domain = ? AND code = ? AND used_at IS NULL AND expires_at > ?').get(domain, code, now) !== undefined;
  }

  async consumeInvite(domain: string, code: string, now: number): Promise<boolean> {
    return this.#db.prepare(
      'UPDATE invites SET used_at = ? WHERE domain = ? AND code = ? AND used_at IS NULL AND expires_at > ?',
    ).run(now, domain, code, now).changes > 0;
  }

  /**
   * Same semantics as the PostgreSQL store's. One IMMEDIATE transaction takes
   * the write lock first, so a server and an admin process (or two servers on
   * one file) never both pass a check before either counts.
   */
  async takeRateLimit(counters: readonly RateLimitCounter[], now: number): Promise<RateLimitResult> {
    if (counters.length > MAX_RATE_LIMIT_KEYS) throw new Error(`takeRateLimit: at most ${MAX_RATE_LIMIT_KEYS} counters`);
    if (counters.length === 0) return { ok: true };
    const select = this.#db.prepare('SELECT hits, window_ends, interval_ms FROM rate_limits WHERE key = ?');
    const upsert = this.#db.prepare(
      'INSERT INTO rate_limits (key, hits, window_ends, interval_ms) VALUES (?, ?, ?, ?) '
      + 'ON CONFLICT (key) DO UPDATE SET hits = excluded.hits, window_ends = excluded.window_ends, interval_ms = excluded.interval_ms');
    const take = this.#db.transaction((): RateLimitResult => {
      const state = new Map<string, RateLimitRow | undefined>();
      for (const c of counters) {
        if (!state.has(c.key)) {
          const row = select.get(c.key) as { hits: number; window_ends: number; interval_ms: number } | undefined;
          state.set(c.key, row && { hits: row.hits, windowEnds: row.window_ends, intervalMs: row.interval_ms });
        }
        const hit = takeRateLimitHit(state.get(c.key), c, now);
        if (!hit.ok) return { ok: false, key: c.key, retryAt: hit.retryAt };
        state.set(c.key, hit.row);
      }
      for (const [key, row] of state) upsert.run(key, row!.hits, row!.windowEnds, row!.intervalMs);
      return { ok: true };
    });
    return take.immediate();
  }

  async releaseRateLimit(keys: readonly string[], now: number): Promise<void> {
    // A window gives back one hit; a token bucket one interval (not past now: a full bucket stays full).
    const release = this.#db.prepare(
      'UPDATE rate_limits SET hits = MAX(hits - 1, 0), window_ends = CASE WHEN interval_ms > 0 THEN MAX(window_ends - interval_ms, ?) ELSE window_ends END '
      + 'WHERE key = ? AND window_ends > ?');
    this.#db.transaction(() => { for (const key of new Set(keys)) release.run(now, key, now); }).immediate();
  }

  async peekRateLimit(key: string, now: number): Promise<number> {
    const row = this.#db.prepare('SELECT hits, window_ends, interval_ms FROM rate_limits WHERE key = ?').get(key) as
      { hits: number; window_ends: number; interval_ms: number } | undefined;
    return rateLimitHitsInUse(row && { hits: row.hits, windowEnds: row.window_ends, intervalMs: row.interval_ms }, now);
  }

  async pruneRateLimits(now: number): Promise<number> {
    return this.#db.prepare('DELETE FROM rate_limits WHERE window_ends <= ?').run(now).changes;
  }

  async eventsAfter(after: number, limit = MAX_EVENTS_PER_READ): Promise<AccountEvent[]> {
    const rows = this.#db.prepare('SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?').all(after, limit) as EventRow[];
    return rows.map(toEvent);
  }

  async latestEventId(): Promise<number> {
    const row = this.#db.prepare('SELECT MAX(id) AS id FROM events').get() as { id: number | null };
    return row.id ?? 0;
  }

  /** Wakes on this handle's own changes only; other processes' are found by polling. */
  onChange(listener: () => void): () => void {
    const own = (): void => listener();
    this.#listeners.add(own);
    return () => this.#listeners.delete(own);
  }

  #wake(): void {
    // After the caller's await resumes, as a notification from another process would arrive.
    for (const listener of this.#listeners) queueMicrotask(listener);
  }

  async ping(): Promise<void> {
    try {
      this.#db.prepare('SELECT 1').get();
    } catch (err) {
      throw vertexError('StorageUnavailable', `account store: ping: ${(err as Error).message}`, err);
    }
  }

  async close(): Promise<void> {
    this.#listeners.clear();
    if (this.#db.open) this.#db.close();
  }
}
