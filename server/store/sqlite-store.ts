/**
 * AccountStore on embedded SQLite (better-sqlite3, WAL). WAL lets the admin
 * subcommands (`vertex server add-user`, `revoke`, …) write while a server
 * process reads the same file.
 */
import Database from 'better-sqlite3';
import { vertexError } from '../../q2q/errors';
import type { Account, AccountStore, IssuedCertificate } from './account-store';

const SCHEMA_VERSION = 1;

const SCHEMA = `
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
`;

interface AccountRow { domain: string; user: string; password_hash: string; created_at: number }
interface CertificateRow { serial: string; domain: string; user: string; not_before: number; not_after: number; revoked_at: number | null }

function toAccount(row: AccountRow): Account {
  return { domain: row.domain, user: row.user, passwordHash: row.password_hash, createdAt: row.created_at };
}

function toCertificate(row: CertificateRow): IssuedCertificate {
  return {
    serial: row.serial, domain: row.domain, user: row.user,
    notBefore: row.not_before, notAfter: row.not_after, revokedAt: row.revoked_at,
  };
}

export class SqliteAccountStore implements AccountStore {
  readonly #db: Database.Database;
  readonly #now: () => number;

  constructor(file: string, opts: { now?: () => number } = {}) {
    this.#now = opts.now ?? Date.now;
    try {
      this.#db = new Database(file);
      this.#db.pragma('journal_mode = WAL');
      this.#db.pragma('busy_timeout = 5000');
      this.#db.pragma('foreign_keys = ON');
      this.#db.exec(SCHEMA);
      this.#db.pragma(`user_version = ${SCHEMA_VERSION}`);
    } catch (err) {
      throw vertexError('Internal', `open account database ${file}: ${(err as Error).message}`, err);
    }
  }

  getAccount(domain: string, user: string): Account | null {
    const row = this.#db.prepare('SELECT * FROM accounts WHERE domain = ? AND user = ?').get(domain, user) as AccountRow | undefined;
    return row ? toAccount(row) : null;
  }

  createAccount(domain: string, user: string, passwordHash: string): Account {
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

  removeAccount(domain: string, user: string): boolean {
    const now = this.#now();
    const remove = this.#db.transaction(() => {
      this.#db.prepare('UPDATE certificates SET revoked_at = ? WHERE domain = ? AND user = ? AND revoked_at IS NULL')
        .run(now, domain, user);
      return this.#db.prepare('DELETE FROM accounts WHERE domain = ? AND user = ?').run(domain, user).changes > 0;
    });
    return remove();
  }

  listAccounts(domain?: string): Account[] {
    const rows = (domain === undefined
      ? this.#db.prepare('SELECT * FROM accounts ORDER BY domain, user').all()
      : this.#db.prepare('SELECT * FROM accounts WHERE domain = ? ORDER BY user').all(domain)) as AccountRow[];
    return rows.map(toAccount);
  }

  recordCertificate(cert: Omit<IssuedCertificate, 'revokedAt'>): void {
    this.#db.prepare('INSERT INTO certificates (serial, domain, user, not_before, not_after) VALUES (?, ?, ?, ?, ?)')
      .run(cert.serial, cert.domain, cert.user, cert.notBefore, cert.notAfter);
  }

  revokeCertificate(serial: string): boolean {
    return this.#db.prepare('UPDATE certificates SET revoked_at = COALESCE(revoked_at, ?) WHERE serial = ?')
      .run(this.#now(), serial.toLowerCase()).changes > 0;
  }

  getCertificate(serial: string): IssuedCertificate | null {
    const row = this.#db.prepare('SELECT * FROM certificates WHERE serial = ?').get(serial.toLowerCase()) as CertificateRow | undefined;
    return row ? toCertificate(row) : null;
  }

  createInvite(domain: string, code: string, expiresAt: number): void {
    this.#db.prepare('INSERT INTO invites (domain, code, expires_at) VALUES (?, ?, ?)').run(domain, code, expiresAt);
  }

  consumeInvite(domain: string, code: string, now: number): boolean {
    return this.#db.prepare(
      'UPDATE invites SET used_at = ? WHERE domain = ? AND code = ? AND used_at IS NULL AND expires_at > ?',
    ).run(now, domain, code, now).changes > 0;
  }

  close(): void {
    if (this.#db.open) this.#db.close();
  }
}
