/**
 * Opens the account store a server config names: `sqlite` (data_dir/vertex.db)
 * or a PostgreSQL URL shared by every node of a domain.
 */
import * as path from 'node:path';
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
  return new SqliteAccountStore(path.join(opts.dataDir, DATABASE_FILE));
}

/** Where the accounts live, for messages: the SQLite file or the URL without its password. */
export function describeStore(store: string, dataDir: string): string {
  return isPostgresUrl(store) ? redactUrl(store) : path.join(dataDir, DATABASE_FILE);
}
