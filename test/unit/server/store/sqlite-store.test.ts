import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { SCHEMA_VERSION, SqliteAccountStore } from '../../../../server/store/sqlite-store';
import { accountStoreSuite } from '../../../helpers/account-store-suite';

accountStoreSuite('SQLite', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-store-'));
  const file = path.join(dir, 'vertex.db');
  let now = Date.now();
  const clock = () => now;
  const store = new SqliteAccountStore(file, { now: clock });
  const seconds: SqliteAccountStore[] = [];
  return {
    store,
    async second() {
      const s = new SqliteAccountStore(file, { now: clock });
      seconds.push(s);
      return s;
    },
    setNow(ms) { now = ms; },
    async cleanup() {
      for (const s of seconds) await s.close();
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
});

describe('SqliteAccountStore', () => {
  let dir: string;
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-store-')); });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('uses WAL journaling', async () => {
    const store = new SqliteAccountStore(path.join(dir, 'vertex.db'));
    await store.createAccount('a.test', 'alice', 'h');
    expect(fs.existsSync(path.join(dir, 'vertex.db-wal'))).toBe(true);
    await store.close();
  });

  it('migrates a version-1 database (before the change feed) without losing accounts', async () => {
    const file = path.join(dir, 'vertex.db');
    const v1 = new Database(file);
    v1.exec(`CREATE TABLE accounts (domain TEXT NOT NULL, user TEXT NOT NULL, password_hash TEXT NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (domain, user));
      CREATE TABLE certificates (serial TEXT PRIMARY KEY, domain TEXT NOT NULL, user TEXT NOT NULL, not_before INTEGER NOT NULL, not_after INTEGER NOT NULL, revoked_at INTEGER);
      CREATE TABLE invites (domain TEXT NOT NULL, code TEXT NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER, PRIMARY KEY (domain, code));
      INSERT INTO accounts VALUES ('a.test', 'alice', 'h', 1);
      INSERT INTO certificates VALUES ('aa01', 'a.test', 'alice', 1, 2, NULL);`);
    v1.pragma('user_version = 1');
    v1.close();
    const store = new SqliteAccountStore(file);
    try {
      expect((await store.getAccount('a.test', 'alice'))?.passwordHash).toBe('h');
      expect(await store.revokeCertificate('aa01')).toBe(true);
      expect((await store.eventsAfter(0)).map((e) => e.kind)).toEqual(['certificate-revoked']);
    } finally {
      await store.close();
    }
    const check = new Database(file);
    expect(check.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    check.close();
  });

  it('refuses a database from a newer vertex, with a message that says so', () => {
    const file = path.join(dir, 'vertex.db');
    const future = new Database(file);
    future.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    future.close();
    expect(() => new SqliteAccountStore(file)).toThrow(/newer than this vertex understands/);
  });
});
