/**
 * The LISTEN connection shared by the account store and the node directory,
 * on a real PostgreSQL: notifications arrive, a killed connection is
 * reported lost and comes back (with onRestored, so the owner catches up),
 * and close() leaves no connection behind.
 */
import pg from 'pg';
import { randomBytes } from 'node:crypto';
import { PgListener } from '../../../../server/store/pg-listener';
import { describePostgres, postgresDatabase } from '../../../helpers/postgres';
import { untilTrue } from '../../../helpers/net';

jest.setTimeout(60_000);

describePostgres('PgListener', () => {
  const database = postgresDatabase();

  async function sql(url: string, text: string): Promise<pg.QueryResult> {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      return await c.query(text);
    } finally {
      await c.end();
    }
  }

  it('hears notifications, reports a lost connection, comes back and closes cleanly', async () => {
    const url = await database().freshSchema();
    const tag = randomBytes(4).toString('hex');
    const channel = `vertex_test_${tag}`;
    const applicationName = `vertex-test-listen-${tag}`;
    const heard: string[] = [];
    const events: string[] = [];
    const listener = new PgListener({
      url, channel, applicationName, connectTimeoutMs: 10_000,
      onNotification: (payload) => heard.push(payload),
      onLost: () => events.push('lost'),
      onRestored: () => events.push('restored'),
    });
    try {
      await listener.start();
      expect(listener.listening).toBe(true);
      await sql(url, `NOTIFY ${channel}, 'one'`);
      await sql(url, `NOTIFY vertex_test_other_${tag}, 'not ours'`);
      await untilTrue('first notification', () => heard.includes('one'));

      await sql(url, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '${applicationName}'`);
      await untilTrue('the loss is reported', () => events.includes('lost'));
      await untilTrue('LISTEN is back', () => events.includes('restored') && listener.listening, 30_000);
      await sql(url, `NOTIFY ${channel}, 'two'`);
      await untilTrue('a notification after the reconnect', () => heard.includes('two'));
      expect(heard).toEqual(['one', 'two']);
      expect(events).toEqual(['lost', 'restored']);
    } finally {
      await listener.close();
    }
    expect(listener.listening).toBe(false);
    const { rows } = await sql(url, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = '${applicationName}'`);
    expect(rows[0].n).toBe(0);
  });

  it('start() fails when PostgreSQL cannot be reached, and leaves nothing running', async () => {
    const listener = new PgListener({
      url: 'postgres://nobody:nothing@127.0.0.1:1/none', channel: 'vertex_test', applicationName: 'vertex-test-unreachable', connectTimeoutMs: 2_000,
      onNotification: () => undefined, onLost: () => undefined, onRestored: () => undefined,
    });
    await expect(listener.start()).rejects.toThrow();
    expect(listener.listening).toBe(false);
    await listener.close();
  });
});
