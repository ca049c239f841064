/**
 * Opens the account store a server config names: `sqlite` (data_dir/vertex.db)
 * or a PostgreSQL URL shared by every node of a domain.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isVertexError, vertexError } from '../../q2q/errors';
import type { Logger } from '../../q2q/util/log';
import type { AccountStore } from './account-store';
import { isPostgresUrl, PostgresAccountStore, redactUrl } from './postgres-store';
import { SqliteAccountStore } from './sqlite-store';

export const DATABASE_FILE = 'vertex.db';

export interface OpenStoreOptions {
  /** `sqlite` or a postgres:// URL (config `store:`). */
  store: string;
  dataDir: string;
  /** Servers follow the change feed; admin commands only write and skip LISTEN. */
  follow?: boolean;
  log?: Logger;
}

export async function openAccountStore(opts: OpenStoreOptions): Promise<AccountStore> {
  if (isPostgresUrl(opts.store)) {
    return PostgresAccountStore.open({ url: opts.store, listen: opts.follow ?? true, ...(opts.log ? { log: opts.log } : {}) });
  }
  const file = path.join(opts.dataDir, DATABASE_FILE);
  tightenDatabaseFiles(file);
  const store = new SqliteAccountStore(file);
  // WAL mode has just created -wal and -shm (SQLite gives them the database's mode; checked anyway).
  tightenDatabaseFiles(file);
  return sqliteFailuresAsStorageUnavailable(store, opts.log);
}

/** The database and its WAL and shared-memory files hold password hashes: owner only (issue 11). */
export const DATABASE_MODE = 0o600;

function tightenDatabaseFiles(file: string): void {
  // Created here first, with the mode, so no other user can open it between creation and chmod.
  fs.closeSync(fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, DATABASE_MODE));
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    try {
      if ((fs.statSync(f).mode & 0o777) !== DATABASE_MODE) fs.chmodSync(f, DATABASE_MODE);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

/** SQLite result codes that mean the storage, not the request, failed; with the words a user sees. */
const SQLITE_UNAVAILABLE: ReadonlyArray<[RegExp, string]> = [
  [/^SQLITE_FULL/, 'disk full'],
  [/^SQLITE_READONLY/, 'the database is read-only'],
  [/^SQLITE_IOERR/, 'the disk reported an i/o error'],
  [/^SQLITE_CANTOPEN/, 'the database file cannot be opened'],
  [/^SQLITE_CORRUPT|^SQLITE_NOTADB/, 'the database file is damaged'],
  [/^SQLITE_BUSY|^SQLITE_LOCKED/, 'the database stayed locked by another process'],
];

/** What each store call was doing, for "the server could not <what>: disk full". */
const STORE_WORK: Readonly<Record<string, string>> = {
  createAccount: 'store the account',
  setPasswordHash: 'store the new password',
  removeAccount: 'remove the account',
  recordCertificate: 'record the certificate',
  revokeCertificate: 'record the revocation',
  createInvite: 'store the invitation',
  consumeInvite: 'use the invitation',
  // Rate-limit counters are written before any account is: on a full disk they fail first.
  takeRateLimit: 'write to its account store',
  releaseRateLimit: 'write to its account store',
  pruneRateLimits: 'write to its account store',
};

/**
 * A full disk, a read-only mount or an I/O error is a StorageUnavailable with
 * one plain line ("the server could not store the account: disk full"), not
 * an internal error: the operator can act on it, and the user can tell it is
 * not their fault. Other errors pass through untouched.
 */
function sqliteFailuresAsStorageUnavailable(store: AccountStore, log?: Logger): AccountStore {
  return new Proxy(store, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== 'function') return value;
      const method = (value as (...a: unknown[]) => unknown).bind(target);
      if (prop === 'onChange' || prop === 'close') return method;
      const translate = (err: unknown): unknown => {
        if (isVertexError(err)) return err;
        const code = String((err as { code?: unknown }).code ?? '');
        const found = SQLITE_UNAVAILABLE.find(([re]) => re.test(code));
        if (!found) return err;
        const work = STORE_WORK[String(prop)] ?? `use the account store (${String(prop)})`;
        // The operator is the one who can free the disk: say it in the server log too.
        log?.error({ code: 'StorageUnavailable', op: String(prop), sqlite: code, reason: (err as Error).message }, `account store failing: ${found[1]}`);
        return vertexError('StorageUnavailable', `the server could not ${work}: ${found[1]}`, err);
      };
      // Sync or async alike: a method keeps its shape, only its failures change.
      return (...args: unknown[]) => {
        let result: unknown;
        try {
          result = method(...args);
        } catch (err) {
          throw translate(err);
        }
        return result instanceof Promise ? result.catch((err: unknown) => { throw translate(err); }) : result;
      };
    },
  });
}

/** Where the accounts live, for messages: the SQLite file or the URL without its password. */
export function describeStore(store: string, dataDir: string): string {
  return isPostgresUrl(store) ? redactUrl(store) : path.join(dataDir, DATABASE_FILE);
}
