/**
 * The PostgreSQL store on a real PostgreSQL (test/helpers/postgres.ts): the
 * store-compliance suite, then what only PostgreSQL does (migrations under
 * an advisory lock, LISTEN/NOTIFY wake-ups, commit-ordered event ids).
 */
import pg from 'pg';
import { isVertexError } from '../../../../q2q/errors';
import type { AccountEvent } from '../../../../server/store/account-store';
import { ChangeFeedFollower } from '../../../../server/store/change-feed';
import { EVENTS_LOCK, POSTGRES_SCHEMA_VERSION, PostgresAccountStore, redactUrl } from '../../../../server/store/postgres-store';
import { accountStoreSuite } from '../../../helpers/account-store-suite';
import { describePostgres, postgresDatabase } from '../../../helpers/postgres';

describePostgres('PostgreSQL account store', () => {
  const database = postgresDatabase();

  accountStoreSuite('PostgreSQL', async () => {
    const url = await database().freshSchema();
    let now = Date.now();
    const clock = () => now;
    const store = await PostgresAccountStore.open({ url, now: clock });
    const seconds: PostgresAccountStore[] = [];
    return {
      store,
      async second() {
        const s = await PostgresAccountStore.open({ url, now: clock });
        seconds.push(s);
        return s;
      },
      setNow(ms) { now = ms; },
      async cleanup() {
        for (const s of seconds) await s.close();
        await store.close();
      },
    };
  });

  describe('PostgresAccountStore', () => {
    const open: PostgresAccountStore[] = [];
    afterEach(async () => {
      for (const s of open.splice(0)) await s.close();
    });
    async function openStore(url: string, opts: { listen?: boolean } = {}): Promise<PostgresAccountStore> {
      const s = await PostgresAccountStore.open({ url, ...opts });
      open.push(s);
      return s;
    }

    it('nodes starting together on an empty database migrate it once, and all of them work', async () => {
      const url = await database().freshSchema();
      const stores = await Promise.all(Array.from({ length: 6 }, () => PostgresAccountStore.open({ url, listen: false })));
      open.push(...stores);
      const check = new pg.Client({ connectionString: url });
      await check.connect();
      try {
        const { rows } = await check.query<{ version: number }>('SELECT version FROM vertex_schema');
        expect(rows).toEqual([{ version: POSTGRES_SCHEMA_VERSION }]);
      } finally {
        await check.end();
      }
      await Promise.all(stores.map((s, i) => s.createAccount('a.test', `user${i}`, 'h')));
      expect(await stores[0]!.listAccounts('a.test')).toHaveLength(6);
    });

    it('without the migration lock, nodes starting together do collide (so the lock is what prevents it)', async () => {
      // The same first migration run bare from six connections at once: at least one fails.
      const url = await database().freshSchema();
      const ddl = 'CREATE TABLE IF NOT EXISTS vertex_schema (version integer NOT NULL); CREATE TABLE accounts (domain text, username text, PRIMARY KEY (domain, username))';
      const clients = Array.from({ length: 6 }, () => new pg.Client({ connectionString: url }));
      await Promise.all(clients.map((c) => c.connect()));
      try {
        const results = await Promise.allSettled(clients.map((c) => c.query(ddl)));
        expect(results.filter((r) => r.status === 'rejected').length).toBeGreaterThan(0);
      } finally {
        await Promise.all(clients.map((c) => c.end()));
      }
    });

    it('refuses a database whose schema is newer than it understands', async () => {
      const url = await database().freshSchema();
      await (await openStore(url, { listen: false })).close();
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      await c.query('UPDATE vertex_schema SET version = $1', [POSTGRES_SCHEMA_VERSION + 1]);
      await c.end();
      await expect(PostgresAccountStore.open({ url })).rejects.toThrow(/newer than this vertex understands/);
    });

    it("a change made through another handle wakes this handle's listener (LISTEN/NOTIFY), without a poll", async () => {
      const url = await database().freshSchema();
      const follower = await openStore(url);
      const admin = await openStore(url, { listen: false });
      await admin.createAccount('a.test', 'bob', 'h');
      await admin.recordCertificate({ serial: 'cc01', domain: 'a.test', user: 'bob', notBefore: 1, notAfter: 2 });
      const seen: AccountEvent[] = [];
      const feed = new ChangeFeedFollower({ store: follower, onEvent: (e) => { seen.push(e); }, pollMs: 3_600_000 });
      await feed.start();
      try {
        const woken = new Promise<void>((resolve) => { const off = follower.onChange(() => { off(); resolve(); }); });
        await admin.revokeCertificate('cc01');
        await woken;
        await feed.wake();
        expect(seen.map((e) => e.kind)).toEqual(['certificate-revoked']);
      } finally {
        await feed.stop();
      }
    });

    /**
     * A writer that has taken event id N but not yet committed (held open
     * here by a raw connection following the store's protocol) must keep a
     * later writer's event out of sight until N is visible: otherwise a
     * follower that reads N+1 first skips N for ever.
     */
    async function raceAgainstOpenWriter(orderEvents: boolean): Promise<{ visibleWhileOpen: number[]; held: number; revokedId: number }> {
      const url = await database().freshSchema();
      const store = await PostgresAccountStore.open({ url, listen: false, orderEvents });
      open.push(store);
      await store.createAccount('a.test', 'bob', 'h');
      await store.recordCertificate({ serial: 'ee01', domain: 'a.test', user: 'bob', notBefore: 1, notAfter: 2 });
      const writer = new pg.Client({ connectionString: url });
      await writer.connect();
      try {
        await writer.query('BEGIN');
        await writer.query('SELECT pg_advisory_xact_lock($1)', [EVENTS_LOCK.toString()]);
        const held = Number((await writer.query<{ id: string }>("INSERT INTO events (at, kind, domain, username, serial) VALUES (1, 'certificate-revoked', 'a.test', 'bob', 'x') RETURNING id")).rows[0]!.id);
        const revoking = store.revokeCertificate('ee01');
        // Wait (bounded) until the revocation has either finished or is blocked on a lock.
        let finished = false;
        void revoking.then(() => { finished = true; });
        for (let i = 0; i < 500 && !finished; i++) {
          const { rows } = await writer.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = 'vertex'");
          if ((rows[0] as { n: number }).n > 0) break;
          await new Promise((r) => setTimeout(r, 10));
        }
        const visibleWhileOpen = (await store.eventsAfter(0)).map((e) => e.id);
        await writer.query('COMMIT');
        await revoking;
        const revokedId = (await store.eventsAfter(held)).find((e) => e.kind === 'certificate-revoked' && e.user === 'bob' && (e as { serial: string }).serial === 'ee01')!.id;
        return { visibleWhileOpen, held, revokedId };
      } finally {
        await writer.end();
      }
    }

    it('event ids become visible in commit order: a later writer waits for the open one', async () => {
      const { visibleWhileOpen, held, revokedId } = await raceAgainstOpenWriter(true);
      expect(visibleWhileOpen).toEqual([]);
      expect(revokedId).toBeGreaterThan(held);
    });

    it('without the commit-order lock, a later id is visible while an earlier one is not (what the lock prevents)', async () => {
      const { visibleWhileOpen, held } = await raceAgainstOpenWriter(false);
      expect(visibleWhileOpen).toHaveLength(1);
      expect(visibleWhileOpen[0]).toBeGreaterThan(held);
    });

    it('a flood of takes spread over three nodes, on overlapping counters in different orders, is limited as one (no deadlock)', async () => {
      const url = await database().freshSchema();
      const nodes = [await openStore(url, { listen: false }), await openStore(url, { listen: false }), await openStore(url, { listen: false })];
      const user = { key: 'pw:user:alice', limit: 5, windowMs: 60_000 };
      const addr = { key: 'pw:addr:192.0.2.1', limit: 50, windowMs: 60_000 };
      const results = await Promise.all(Array.from({ length: 60 }, (_, i) =>
        nodes[i % 3]!.takeRateLimit(i % 2 ? [user, addr] : [addr, user], 1000)));
      expect(results.filter((r) => r.ok)).toHaveLength(5);
      expect(await nodes[0]!.peekRateLimit(user.key, 1000)).toBe(5);
      expect(await nodes[1]!.peekRateLimit(addr.key, 1000)).toBe(5);
    });

    it('an unreachable database is StorageUnavailable, and the message names it without the password', async () => {
      let error: unknown;
      try {
        await PostgresAccountStore.open({ url: 'postgres://vertex:secret@127.0.0.1:1/vertex' });
      } catch (err) {
        error = err;
      }
      expect(isVertexError(error, 'StorageUnavailable')).toBe(true);
      expect((error as Error).message).toContain('127.0.0.1:1');
      expect((error as Error).message).not.toContain('secret');
      expect(redactUrl('postgres://u:pw@h/db')).toBe('postgres://u:***@h/db');
    });
  });
});
