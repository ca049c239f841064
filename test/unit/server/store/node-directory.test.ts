/**
 * The node directory's copy of presence in memory (issue 14), on a real
 * PostgreSQL: a change written by one node reaches the others' copies
 * through NOTIFY, a node that starts loads what is there, a node that stops
 * beating has its devices dropped, and a lost LISTEN connection sends reads
 * to the store until the copy is loaded again.
 */
import pg from 'pg';
import { PostgresAccountStore } from '../../../../server/store/postgres-store';
import { NODE_DEAD_AFTER_MS, NodeDirectory, PRESENCE_CHANNEL, type LookupSource } from '../../../../server/store/node-directory';
import { describePostgres, postgresDatabase } from '../../../helpers/postgres';
import { untilTrue } from '../../../helpers/net';

jest.setTimeout(60_000);

describePostgres('node directory: presence in memory', () => {
  const database = postgresDatabase();
  const open: Array<{ close(): Promise<void> }> = [];
  afterEach(async () => {
    for (const o of open.splice(0).reverse()) await o.close();
  });

  async function sql(url: string, text: string, values: unknown[] = []): Promise<pg.QueryResult> {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      return await c.query(text, values);
    } finally {
      await c.end();
    }
  }

  interface Node { dir: NodeDirectory; changes: string[]; lookups: LookupSource[] }

  async function schema(): Promise<string> {
    const url = await database().freshSchema();
    // The account store creates the tables (its migrations), as on a server.
    const store = await PostgresAccountStore.open({ url, listen: false });
    await store.close();
    return url;
  }

  async function node(url: string, name: string): Promise<Node> {
    const changes: string[] = [];
    const lookups: LookupSource[] = [];
    const dir = await NodeDirectory.open({
      url, name, endpoint: `127.0.0.1:${10_000 + open.length}`,
      onPresenceChange: (a) => changes.push(a), onLookup: (s) => lookups.push(s),
    });
    open.push(dir);
    return { dir, changes, lookups };
  }

  it('a listen on node A reaches node B\'s copy, and B answers from memory without a store query', async () => {
    const url = await schema();
    const a = await node(url, 'a');
    const b = await node(url, 'b');
    expect(b.dir.synced).toBe(true);
    await a.dir.put('bob@x.test', 'laptop', ['ssh']);
    await untilTrue('B told of bob\'s change', () => b.changes.includes('bob@x.test'));
    expect(await b.dir.devicesElsewhere('bob@x.test')).toEqual([{ device: 'laptop', node: 'a', services: ['ssh'] }]);
    // The row taken away behind the directory's back (no notification): B still answers from its copy,
    // so the answer above cost no query; a fresh read does query, and finds nothing.
    await sql(url, 'DELETE FROM presence');
    for (let i = 0; i < 10; i++) expect(await b.dir.devicesElsewhere('bob@x.test')).toHaveLength(1);
    expect(b.lookups.filter((s) => s === 'store')).toHaveLength(0);
    expect(await b.dir.devicesElsewhere('bob@x.test', { fresh: true })).toEqual([]);
    expect(b.lookups.filter((s) => s === 'store')).toHaveLength(1);
  });

  it('a change of services, a drop, and a device that moves between nodes', async () => {
    const url = await schema();
    const a = await node(url, 'a');
    const b = await node(url, 'b');
    const c = await node(url, 'c');
    await a.dir.put('dee@x.test', 'phone', ['echo']);
    await a.dir.put('dee@x.test', 'phone', ['echo', 'ssh']);
    await untilTrue('B sees both services', async () => (await b.dir.devicesElsewhere('dee@x.test'))[0]?.services.length === 2);
    // The phone moves to C: B's copy follows; A's drop afterwards names A, so the row (C's) stays.
    await c.dir.put('dee@x.test', 'phone', ['echo']);
    await a.dir.remove('dee@x.test', 'phone');
    await untilTrue('B sees the phone on C', async () => (await b.dir.devicesElsewhere('dee@x.test'))[0]?.node === 'c');
    // A sees it too (on another node), and C does not list its own device.
    await untilTrue('A sees the phone on C', async () => (await a.dir.devicesElsewhere('dee@x.test'))[0]?.node === 'c');
    // C applies its own change too (its own write comes back as a notification, after a's older ones).
    await untilTrue('C does not list its own device', async () => (await c.dir.devicesElsewhere('dee@x.test')).length === 0);
    await c.dir.remove('dee@x.test', 'phone');
    await untilTrue('B sees the phone gone', async () => (await b.dir.devicesElsewhere('dee@x.test')).length === 0);
    // A large service list (over NOTIFY's payload limit) is read from the row instead.
    const many = Array.from({ length: 256 }, (_, i) => `service-with-a-long-name-${i}`);
    await a.dir.put('dee@x.test', 'desk', many);
    await untilTrue('B sees the 256 services', async () => (await b.dir.devicesElsewhere('dee@x.test'))[0]?.services.length === 256);
    expect(b.lookups.filter((s) => s === 'store')).toHaveLength(0);
  });

  it('a node that starts loads the devices already listening elsewhere; a clean stop withdraws them', async () => {
    const url = await schema();
    const a = await node(url, 'a');
    await a.dir.put('eve@x.test', 'default', ['web']);
    const b = await node(url, 'b');
    expect(await b.dir.devicesElsewhere('eve@x.test')).toEqual([{ device: 'default', node: 'a', services: ['web'] }]);
    await a.dir.close();
    await untilTrue('B drops A\'s devices', async () => (await b.dir.devicesElsewhere('eve@x.test')).length === 0);
  });

  it('a node that stops beating (killed) has its devices dropped from the copy', async () => {
    const url = await schema();
    const b = await node(url, 'b');
    // A node that writes its row and one device, then dies: no beat, no withdraw.
    await sql(url, `INSERT INTO nodes (name, endpoint, started_at, seen_at) VALUES ('ghost', '127.0.0.1:1', 0, (extract(epoch from clock_timestamp()) * 1000)::bigint)`);
    await sql(url, `WITH w AS (INSERT INTO presence VALUES ('x.test', 'gus', 'default', 'ghost', '["ssh"]', 0) RETURNING 1)
      SELECT pg_notify('${PRESENCE_CHANNEL}', current_schema() || ' ' || $1) FROM w`, [JSON.stringify(['p', 'x.test', 'gus', 'default', 'ghost', ['ssh']])]);
    await untilTrue('B sees gus on the ghost node', async () => (await b.dir.devicesElsewhere('gus@x.test')).length === 1);
    const at = Date.now();
    await untilTrue('B drops the ghost\'s devices', async () => (await b.dir.devicesElsewhere('gus@x.test')).length === 0, 30_000);
    expect(Date.now() - at).toBeGreaterThan(NODE_DEAD_AFTER_MS / 2);
    // The copy drops them itself and says so, and then answers from memory. Waited for, not
    // asserted at once: on a loaded machine a query of the copy's may time out, and until it
    // has reloaded the directory rightly answers from the store (which says so too, from
    // seen_at), so the answer above may have come before the copy's drop.
    await untilTrue('B\'s copy tells of the drop', () => b.changes.filter((x) => x === 'gus@x.test').length >= 2, 30_000);
    await untilTrue('B answers from its copy again', async () => (await b.dir.devicesElsewhere('gus@x.test')).length === 0 && b.lookups.at(-1) === 'memory', 30_000);
  });

  it('nodes in another schema of the same database are not seen (notifications are per database)', async () => {
    const a = await node(await schema(), 'a');
    const url = await schema();
    const b = await node(url, 'b');
    const a2 = await node(url, 'a');
    await a.dir.put('fay@x.test', 'default', ['web']);
    // Notifications arrive in commit order: once B has a2's later change it has had (and ignored) a's.
    await a2.dir.put('hal@x.test', 'default', ['web']);
    await untilTrue('B sees hal from its own schema', async () => (await b.dir.devicesElsewhere('hal@x.test')).length === 1);
    expect(await b.dir.devicesElsewhere('fay@x.test')).toEqual([]);
  });

  it('a lost LISTEN connection: reads go to the store, then the copy is loaded again with what changed meanwhile', async () => {
    const url = await schema();
    const a = await node(url, 'a');
    const b = await node(url, 'b');
    await sql(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'vertex-node-b-listen'");
    await untilTrue('B notices', () => !b.dir.synced);
    await a.dir.put('gil@x.test', 'default', ['web']);
    expect(await b.dir.devicesElsewhere('gil@x.test')).toHaveLength(1);
    expect(b.lookups.at(-1)).toBe('store');
    await untilTrue('B listens again and has loaded the copy', () => b.dir.synced, 30_000);
    expect(await b.dir.devicesElsewhere('gil@x.test')).toEqual([{ device: 'default', node: 'a', services: ['web'] }]);
    expect(b.lookups.at(-1)).toBe('memory');
  });
});
