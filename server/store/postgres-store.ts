/**
 * AccountStore on PostgreSQL (driver: `pg`; docs/postgres.md has the
 * measurement that chose it), for a domain served by several nodes. Every
 * node and every admin command opens its own handle on one database.
 *
 * - Migrations: MIGRATIONS[i] takes the schema from version i to i + 1. They
 *   run on open, each in its own transaction, while holding a session-level
 *   advisory lock, so nodes that start together on an empty database do not
 *   race: the first migrates, the others wait and then find nothing to do.
 * - The change feed: `events` rows are written in the transaction that makes
 *   the change, which also sends NOTIFY. Each handle LISTENs on one
 *   dedicated connection and wakes its followers; they still poll, which
 *   covers a lost notification (the LISTEN connection reconnects).
 * - Event ids are assigned in commit order: writers take a transaction-level
 *   advisory lock before inserting an event, so a follower that has read id
 *   N never later sees a smaller id commit (a plain sequence does not promise
 *   that: a transaction can take id 5 and commit after one that took 6).
 */
import pg from 'pg';
import { isVertexError, vertexError } from '../../q2q/errors';
import type { Logger } from '../../q2q/util/log';
import { silentLogger } from '../../q2q/util/log';
import { PgListener } from './pg-listener';
import { MAX_EVENTS_PER_READ, type Account, type AccountEvent, type AccountStore, type IssuedCertificate } from './account-store';

import {
  MAX_RATE_LIMIT_KEYS, rateLimitHitsInUse, takeRateLimitHit, type RateLimitCounter, type RateLimitResult, type RateLimitRow,
} from './account-store';
export { MAX_RATE_LIMIT_KEYS, type RateLimitCounter, type RateLimitResult };

/** Advisory lock keys (one 64-bit key space per database; these are ours). */
const MIGRATION_LOCK = 0x7665_7274_0001n; // "vert" 1
export const EVENTS_LOCK = 0x7665_7274_0002n;
export const NOTIFY_CHANNEL = 'vertex_events';
/** Connections per handle (a node's requests share them). */
export const DEFAULT_POOL_SIZE = 10;
/** A query or connect that takes longer fails with StorageUnavailable rather than hanging a request. */
const CONNECT_TIMEOUT_MS = 10_000;
const QUERY_TIMEOUT_MS = 30_000;

/** MIGRATIONS[i] takes the schema from version i to i + 1. Never edit a released step; add one. */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE accounts (
    domain        text   NOT NULL,
    username      text   NOT NULL,
    password_hash text   NOT NULL,
    created_at    bigint NOT NULL,
    PRIMARY KEY (domain, username)
  );
  CREATE TABLE certificates (
    serial     text   PRIMARY KEY,
    domain     text   NOT NULL,
    username   text   NOT NULL,
    not_before bigint NOT NULL,
    not_after  bigint NOT NULL,
    revoked_at bigint
  );
  CREATE INDEX certificates_by_user ON certificates (domain, username);
  CREATE TABLE invites (
    domain     text   NOT NULL,
    code       text   NOT NULL,
    expires_at bigint NOT NULL,
    used_at    bigint,
    PRIMARY KEY (domain, code)
  );
  CREATE TABLE events (
    id       bigserial PRIMARY KEY,
    at       bigint NOT NULL,
    kind     text   NOT NULL,
    domain   text   NOT NULL,
    username text   NOT NULL,
    serial   text
  );
  `,
  `
  CREATE TABLE rate_limits (
    key         text    PRIMARY KEY,
    hits        integer NOT NULL,
    window_ends bigint  NOT NULL
  );
  CREATE INDEX rate_limits_by_end ON rate_limits (window_ends);
  `,
  // The nodes of a multi-node domain and which node holds which listening
  // device (server/store/node-directory.ts). Rows are soft state: a node
  // rewrites its own on start, and rows of a node that stopped beating are ignored.
  `
  CREATE TABLE nodes (
    name       text   PRIMARY KEY,
    endpoint   text   NOT NULL,
    started_at bigint NOT NULL,
    seen_at    bigint NOT NULL
  );
  CREATE TABLE presence (
    domain   text   NOT NULL,
    username text   NOT NULL,
    device   text   NOT NULL,
    node     text   NOT NULL,
    services text   NOT NULL,
    since    bigint NOT NULL,
    PRIMARY KEY (domain, username, device)
  );
  CREATE INDEX presence_by_node ON presence (node);
  `,
  // The CA each domain's nodes must share: the first node to start records
  // its fingerprint, and a node with another CA refuses to start.
  `
  CREATE TABLE domain_cas (
    domain      text   PRIMARY KEY,
    fingerprint text   NOT NULL,
    first_node  text   NOT NULL,
    recorded_at bigint NOT NULL
  );
  `,
  // Node certificates (server/node-identity.ts): each node records the serial
  // of every certificate it issues itself, and the node-to-node mesh admits
  // only recorded, unrevoked ones (`vertex server revoke SERIAL`).
  `
  CREATE TABLE node_certificates (
    serial     text   PRIMARY KEY,
    domain     text   NOT NULL,
    node       text   NOT NULL,
    not_before bigint NOT NULL,
    not_after  bigint NOT NULL,
    revoked_at bigint
  );
  CREATE INDEX node_certificates_by_node ON node_certificates (domain, node);
  `,
  // Token-bucket counters (RateLimitCounter.burst): the refill time of one
  // hit; 0 for a fixed-window counter, what every row was before.
  `
  ALTER TABLE rate_limits ADD COLUMN interval_ms bigint NOT NULL DEFAULT 0;
  `,
];
export const POSTGRES_SCHEMA_VERSION = MIGRATIONS.length;

interface AccountRow { domain: string; username: string; password_hash: string; created_at: number }
interface CertificateRow { serial: string; domain: string; username: string; not_before: number; not_after: number; revoked_at: number | null }
interface EventRow { id: number; at: number; kind: string; domain: string; username: string; serial: string | null }

function toAccount(row: AccountRow): Account {
  return { domain: row.domain, user: row.username, passwordHash: row.password_hash, createdAt: row.created_at };
}

function toCertificate(row: CertificateRow): IssuedCertificate {
  return {
    serial: row.serial, domain: row.domain, user: row.username,
    notBefore: row.not_before, notAfter: row.not_after, revokedAt: row.revoked_at,
  };
}

function toEvent(row: EventRow): AccountEvent {
  if (row.kind === 'certificate-revoked') {
    return { id: row.id, at: row.at, kind: 'certificate-revoked', domain: row.domain, user: row.username, serial: row.serial ?? '' };
  }
  return { id: row.id, at: row.at, kind: 'account-removed', domain: row.domain, user: row.username };
}

/** bigint columns as JS numbers: every one here is a millisecond time or an event id, far below 2^53. */
const TYPES = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === pg.types.builtins.INT8 ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

/** The URL without its password, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'postgres://(unparsable url)';
  }
}

export function isPostgresUrl(text: string): boolean {
  return /^postgres(ql)?:\/\//i.test(text);
}

const UNAVAILABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'EPIPE']);

/** Errors that mean "the database is not there" (rather than a bug or a constraint): StorageUnavailable. */
function isUnavailable(err: unknown): boolean {
  const e = err as { code?: string; message?: string };
  if (e.code && UNAVAILABLE_CODES.has(e.code)) return true;
  // 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now, 08xxx connection exceptions, 53300 too many connections.
  if (e.code && (/^08/.test(e.code) || /^57P0/.test(e.code) || e.code === '53300')) return true;
  return /Connection terminated|timeout exceeded when trying to connect|Query read timeout|connection timeout/i.test(e.message ?? '');
}

export interface PostgresStoreOptions {
  /** `postgres://user@host:port/database`; the password may come from PGPASSWORD or ~/.pgpass instead of the URL. */
  url: string;
  now?: () => number;
  poolSize?: number;
  /** Wake followers on NOTIFY (a server); admin commands, which only write, turn it off. */
  listen?: boolean;
  log?: Logger;
  /** Tests only: false drops the commit-order lock on events, to show what it prevents. */
  orderEvents?: boolean;
}

export class PostgresAccountStore implements AccountStore {
  readonly #pool: pg.Pool;
  readonly #url: string;
  readonly #now: () => number;
  readonly #log: Logger;
  readonly #listeners = new Set<() => void>();
  #listener: PgListener | null = null;
  #closed = false;
  readonly #orderEvents: boolean;

  private constructor(opts: PostgresStoreOptions) {
    this.#orderEvents = opts.orderEvents ?? true;
    this.#url = opts.url;
    this.#now = opts.now ?? Date.now;
    this.#log = opts.log ?? silentLogger;
    this.#pool = new pg.Pool({
      connectionString: opts.url,
      max: opts.poolSize ?? DEFAULT_POOL_SIZE,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      query_timeout: QUERY_TIMEOUT_MS,
      application_name: 'vertex',
      types: TYPES,
    });
    // An idle pooled connection that dies (a database restart) must not crash the node.
    this.#pool.on('error', (err) => this.#log.warn({ reason: err.message }, 'account store: idle connection lost'));
  }

  /** Connects, migrates (under the migration lock) and, unless `listen: false`, starts LISTEN. */
  static async open(opts: PostgresStoreOptions): Promise<PostgresAccountStore> {
    const store = new PostgresAccountStore(opts);
    try {
      await store.#migrate();
      if (opts.listen !== false) await store.#startListening();
    } catch (err) {
      await store.close();
      throw store.#wrap(err, `open account store ${redactUrl(opts.url)}`);
    }
    return store;
  }

  #wrap(err: unknown, context: string): Error {
    if (isVertexError(err)) return err;
    const reason = (err as Error).message ?? String(err);
    if (isUnavailable(err)) return vertexError('StorageUnavailable', `${context}: ${reason}`, err);
    return vertexError('Internal', `${context}: ${reason}`, err);
  }

  async #query<R extends pg.QueryResultRow>(what: string, text: string, values: unknown[] = []): Promise<pg.QueryResult<R>> {
    try {
      return await this.#pool.query<R>(text, values);
    } catch (err) {
      throw this.#wrap(err, `account store: ${what}`);
    }
  }

  /** Runs `fn` in one transaction on one connection; rolls back if it throws. */
  async #transaction<T>(what: string, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (err) {
      throw this.#wrap(err, `account store: ${what}`);
    }
    let broken = false;
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      try {
        await client.query('ROLLBACK');
      } catch {
        broken = true;
      }
      throw this.#wrap(err, `account store: ${what}`);
    } finally {
      client.release(broken);
    }
  }

  async #migrate(): Promise<void> {
    const client = await this.#pool.connect();
    let broken = false;
    try {
      // Session-level: held across the per-step transactions below, released
      // when we unlock, or by the server if this process dies.
      await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK.toString()]);
      try {
        await client.query('CREATE TABLE IF NOT EXISTS vertex_schema (version integer NOT NULL)');
        const { rows } = await client.query<{ version: number }>('SELECT version FROM vertex_schema');
        let from = rows[0]?.version ?? 0;
        if (rows.length === 0) await client.query('INSERT INTO vertex_schema (version) VALUES (0)');
        if (from > POSTGRES_SCHEMA_VERSION) {
          throw vertexError('Internal', `schema version ${from} is newer than this vertex understands (${POSTGRES_SCHEMA_VERSION}); upgrade vertex`);
        }
        for (; from < POSTGRES_SCHEMA_VERSION; from++) {
          await client.query('BEGIN');
          try {
            await client.query(MIGRATIONS[from] as string);
            await client.query('UPDATE vertex_schema SET version = $1', [from + 1]);
            await client.query('COMMIT');
          } catch (err) {
            await client.query('ROLLBACK');
            throw err;
          }
          this.#log.info({ version: from + 1 }, 'account store: schema migrated');
        }
      } finally {
        await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK.toString()]);
      }
    } catch (err) {
      broken = !isVertexError(err);
      throw err;
    } finally {
      client.release(broken);
    }
  }

  async #startListening(): Promise<void> {
    this.#listener = new PgListener({
      url: this.#url, channel: NOTIFY_CHANNEL, applicationName: 'vertex-listen', connectTimeoutMs: CONNECT_TIMEOUT_MS,
      onNotification: () => this.#wake(),
      onLost: (reason) => {
        if (reason) this.#log.warn({ reason }, 'account store: change notifications lost; polling until they are back');
      },
      onRestored: () => {
        this.#log.info('account store: change notifications back');
        // Changes made while we were not listening are found by this read.
        this.#wake();
      },
    });
    await this.#listener.start();
  }

  #wake(): void {
    for (const listener of this.#listeners) {
      try {
        listener();
      } catch (err) {
        this.#log.error({ err }, 'account store: change listener threw');
      }
    }
  }

  /** Appends one change-feed row inside `client`'s transaction, in commit order, and notifies on commit. */
  async #appendEvent(client: pg.PoolClient, at: number, kind: AccountEvent['kind'], domain: string, user: string, serial: string | null): Promise<void> {
    if (this.#orderEvents) await client.query('SELECT pg_advisory_xact_lock($1)', [EVENTS_LOCK.toString()]);
    await client.query('INSERT INTO events (at, kind, domain, username, serial) VALUES ($1, $2, $3, $4, $5)', [at, kind, domain, user, serial]);
    await client.query(`NOTIFY ${NOTIFY_CHANNEL}`);
  }

  async getAccount(domain: string, user: string): Promise<Account | null> {
    const { rows } = await this.#query<AccountRow>('get account', 'SELECT * FROM accounts WHERE domain = $1 AND username = $2', [domain, user]);
    return rows[0] ? toAccount(rows[0]) : null;
  }

  async createAccount(domain: string, user: string, passwordHash: string): Promise<Account> {
    const createdAt = this.#now();
    // ON CONFLICT DO NOTHING: a taken name is an answer, not an error that aborts a transaction.
    const { rowCount } = await this.#query('create account',
      'INSERT INTO accounts (domain, username, password_hash, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING',
      [domain, user, passwordHash, createdAt]);
    if (rowCount === 0) throw vertexError('NameTaken', `register ${user}@${domain}: the name is taken`);
    return { domain, user, passwordHash, createdAt };
  }

  async registerAccount(req: Parameters<AccountStore['registerAccount']>[0]): Promise<Account> {
    const createdAt = this.#now();
    const { domain, user } = req;
    return this.#transaction('register account', async (client) => {
      if (req.invite) {
        const used = await client.query(
          'UPDATE invites SET used_at = $1 WHERE domain = $2 AND code = $3 AND used_at IS NULL AND expires_at > $1', [req.invite.now, domain, req.invite.code]);
        if (!used.rowCount) throw vertexError('BadInvite', `register ${user}@${domain}: the invitation code is unknown, used or expired`);
      }
      const created = await client.query(
        'INSERT INTO accounts (domain, username, password_hash, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING',
        [domain, user, req.passwordHash, createdAt]);
      // Thrown inside the transaction: the invite is given back by the rollback.
      if (!created.rowCount) throw vertexError('NameTaken', `register ${user}@${domain}: the name is taken`);
      await client.query(
        'INSERT INTO certificates (serial, domain, username, not_before, not_after) VALUES ($1, $2, $3, $4, $5)',
        [req.certificate.serial, domain, user, req.certificate.notBefore, req.certificate.notAfter]);
      return { domain, user, passwordHash: req.passwordHash, createdAt };
    });
  }

  async setPasswordHash(domain: string, user: string, passwordHash: string): Promise<boolean> {
    const { rowCount } = await this.#query('set password hash', 'UPDATE accounts SET password_hash = $1 WHERE domain = $2 AND username = $3', [passwordHash, domain, user]);
    return (rowCount ?? 0) > 0;
  }

  async removeAccount(domain: string, user: string): Promise<boolean> {
    const now = this.#now();
    return this.#transaction('remove account', async (client) => {
      const removed = await client.query('DELETE FROM accounts WHERE domain = $1 AND username = $2', [domain, user]);
      if (!removed.rowCount) return false;
      await client.query('UPDATE certificates SET revoked_at = $1 WHERE domain = $2 AND username = $3 AND revoked_at IS NULL', [now, domain, user]);
      await this.#appendEvent(client, now, 'account-removed', domain, user, null);
      return true;
    });
  }

  async listAccounts(domain?: string): Promise<Account[]> {
    const { rows } = domain === undefined
      ? await this.#query<AccountRow>('list accounts', 'SELECT * FROM accounts ORDER BY domain, username')
      : await this.#query<AccountRow>('list accounts', 'SELECT * FROM accounts WHERE domain = $1 ORDER BY username', [domain]);
    return rows.map(toAccount);
  }

  async recordCertificate(cert: Omit<IssuedCertificate, 'revokedAt'>): Promise<void> {
    await this.#query('record certificate',
      'INSERT INTO certificates (serial, domain, username, not_before, not_after) VALUES ($1, $2, $3, $4, $5)',
      [cert.serial, cert.domain, cert.user, cert.notBefore, cert.notAfter]);
  }

  async revokeCertificate(serialText: string): Promise<boolean> {
    const serial = serialText.toLowerCase();
    const now = this.#now();
    return this.#transaction('revoke certificate', async (client) => {
      const { rows } = await client.query<CertificateRow>('SELECT * FROM certificates WHERE serial = $1 FOR UPDATE', [serial]);
      const row = rows[0];
      if (!row) return false;
      if (row.revoked_at === null) {
        await client.query('UPDATE certificates SET revoked_at = $1 WHERE serial = $2', [now, serial]);
        await this.#appendEvent(client, now, 'certificate-revoked', row.domain, row.username, serial);
      }
      return true;
    });
  }

  async getCertificate(serial: string): Promise<IssuedCertificate | null> {
    const { rows } = await this.#query<CertificateRow>('get certificate', 'SELECT * FROM certificates WHERE serial = $1', [serial.toLowerCase()]);
    return rows[0] ? toCertificate(rows[0]) : null;
  }

  async createInvite(domain: string, code: string, expiresAt: number): Promise<void> {
    await this.#query('create invite', 'INSERT INTO invites (domain, code, expires_at) VALUES ($1, $2, $3)', [domain, code, expiresAt]);
  }

  async inviteUsable(domain: string, code: string, now: number): Promise<boolean> {
    const { rowCount } = await this.#query('check invite',
      'SELECT 1 FROM invites WHERE domain = $1 AND code = $2 AND used_at IS NULL AND expires_at > $3', [domain, code, now]);
    return (rowCount ?? 0) > 0;
  }

  async consumeInvite(domain: string, code: string, now: number): Promise<boolean> {
    const { rowCount } = await this.#query('consume invite',
      'UPDATE invites SET used_at = $1 WHERE domain = $2 AND code = $3 AND used_at IS NULL AND expires_at > $1',
      [now, domain, code]);
    return (rowCount ?? 0) > 0;
  }

  /**
   * The shared rate-limit counters (same semantics as the SQLite store's):
   * one transaction that creates missing rows, locks every row in key order
   * (so two nodes taking overlapping sets cannot deadlock), decides, and
   * writes all or none. Nodes sharing the database therefore count as one.
   */
  async takeRateLimit(counters: readonly RateLimitCounter[], now: number): Promise<RateLimitResult> {
    if (counters.length > MAX_RATE_LIMIT_KEYS) throw new Error(`takeRateLimit: at most ${MAX_RATE_LIMIT_KEYS} counters`);
    if (counters.length === 0) return { ok: true };
    const keys = [...new Set(counters.map((c) => c.key))].sort();
    return this.#transaction('take rate limit', async (client) => {
      await client.query(
        'INSERT INTO rate_limits (key, hits, window_ends) SELECT k, 0, 0 FROM unnest($1::text[]) AS k ORDER BY k ON CONFLICT (key) DO NOTHING',
        [keys]);
      const { rows } = await client.query<{ key: string; hits: number; window_ends: number; interval_ms: number }>(
        'SELECT key, hits, window_ends, interval_ms FROM rate_limits WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE', [keys]);
      const state = new Map<string, RateLimitRow | undefined>(
        rows.map((r) => [r.key, { hits: r.hits, windowEnds: r.window_ends, intervalMs: r.interval_ms }]));
      for (const c of counters) {
        const hit = takeRateLimitHit(state.get(c.key), c, now);
        if (!hit.ok) return { ok: false, key: c.key, retryAt: hit.retryAt };
        state.set(c.key, hit.row);
      }
      const written = [...state].map(([key, row]) => ({ key, ...row! }));
      await client.query(
        'UPDATE rate_limits AS r SET hits = n.hits, window_ends = n.window_ends, interval_ms = n.interval_ms '
        + 'FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) AS n(key, hits, window_ends, interval_ms) WHERE r.key = n.key',
        [written.map((w) => w.key), written.map((w) => w.hits), written.map((w) => w.windowEnds), written.map((w) => w.intervalMs)]);
      return { ok: true };
    });
  }

  async releaseRateLimit(keys: readonly string[], now: number): Promise<void> {
    if (keys.length === 0) return;
    // A window gives back one hit; a token bucket one interval (not past now: a full bucket stays full).
    await this.#query('release rate limit',
      'UPDATE rate_limits SET hits = GREATEST(hits - 1, 0), '
      + 'window_ends = CASE WHEN interval_ms > 0 THEN GREATEST(window_ends - interval_ms, $2) ELSE window_ends END '
      + 'WHERE key = ANY($1::text[]) AND window_ends > $2', [[...new Set(keys)], now]);
  }

  async peekRateLimit(key: string, now: number): Promise<number> {
    const { rows } = await this.#query<{ hits: number; window_ends: number; interval_ms: number }>(
      'peek rate limit', 'SELECT hits, window_ends, interval_ms FROM rate_limits WHERE key = $1', [key]);
    const row = rows[0];
    return rateLimitHitsInUse(row && { hits: row.hits, windowEnds: row.window_ends, intervalMs: row.interval_ms }, now);
  }

  async pruneRateLimits(now: number): Promise<number> {
    const { rowCount } = await this.#query('prune rate limits', 'DELETE FROM rate_limits WHERE window_ends <= $1', [now]);
    return rowCount ?? 0;
  }

  async eventsAfter(after: number, limit = MAX_EVENTS_PER_READ): Promise<AccountEvent[]> {
    const { rows } = await this.#query<EventRow>('read change feed', 'SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2', [after, limit]);
    return rows.map(toEvent);
  }

  async latestEventId(): Promise<number> {
    const { rows } = await this.#query<{ id: number | null }>('read change feed', 'SELECT MAX(id) AS id FROM events');
    return rows[0]?.id ?? 0;
  }

  onChange(listener: () => void): () => void {
    const own = (): void => listener();
    this.#listeners.add(own);
    return () => this.#listeners.delete(own);
  }

  async ping(): Promise<void> {
    await this.#query('ping', 'SELECT 1');
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#listeners.clear();
    await this.#listener?.close();
    await this.#pool.end().catch(() => undefined);
  }
}
