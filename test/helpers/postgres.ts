/**
 * A real PostgreSQL for the multi-node tier (TESTING.md tier 5).
 *
 * `VERTEX_TEST_POSTGRES` names a role that may create databases; the default
 * is the role .ci/run creates on the local cluster. Each test file that
 * calls `postgresDatabase()` gets a database of its own, dropped in
 * `afterAll`; `freshSchema()` hands out an empty schema inside it (cheaper
 * than a database per test case).
 *
 * Without a reachable PostgreSQL, `describePostgres` fails in CI (`CI=true`)
 * with a message that says so, and elsewhere prints one line naming the
 * package and skips.
 */
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import pg from 'pg';

export const TEST_POSTGRES_URL = process.env['VERTEX_TEST_POSTGRES'] ?? 'postgres://vertex_test:vertex_test@127.0.0.1:5432/postgres';
const PROBE_TIMEOUT_MS = 3_000;

function withDatabase(url: string, database: string, params: Record<string, string> = {}): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u.toString();
}

export interface TestDatabase {
  /** A URL for the database itself (public schema). */
  url: string;
  name: string;
  /** A URL whose connections use a new, empty schema of this database. */
  freshSchema(): Promise<string>;
}

async function adminQuery(sql: string): Promise<void> {
  const admin = new pg.Client({ connectionString: TEST_POSTGRES_URL, connectionTimeoutMillis: PROBE_TIMEOUT_MS });
  await admin.connect();
  try {
    await admin.query(sql);
  } finally {
    await admin.end();
  }
}

/**
 * Registers beforeAll/afterAll for a database of this test file's own.
 * Call inside `describePostgres`.
 */
export function postgresDatabase(): () => TestDatabase {
  let db: TestDatabase | null = null;
  const name = `vertex_test_${process.pid}_${crypto.randomBytes(4).toString('hex')}`;
  beforeAll(async () => {
    await adminQuery(`CREATE DATABASE ${name}`);
    const url = withDatabase(TEST_POSTGRES_URL, name);
    let schemas = 0;
    db = {
      url,
      name,
      async freshSchema() {
        const schema = `s${++schemas}_${crypto.randomBytes(3).toString('hex')}`;
        const client = new pg.Client({ connectionString: url });
        await client.connect();
        try {
          await client.query(`CREATE SCHEMA ${schema}`);
        } finally {
          await client.end();
        }
        return withDatabase(TEST_POSTGRES_URL, name, { options: `-c search_path=${schema}` });
      },
    };
  });
  afterAll(async () => {
    if (db) await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });
  return () => {
    if (!db) throw new Error('postgresDatabase(): used outside a test');
    return db;
  };
}

/**
 * `describe` for tests that need PostgreSQL. Unreachable: in CI, one failing
 * test that says so; elsewhere one printed line and a skip. Jest collects
 * tests synchronously, so the probe runs synchronously (a child process),
 * once per test file.
 */
export function describePostgres(name: string, fn: () => void): void {
  const problem = postgresProblemSync();
  if (problem === null) {
    describe(name, fn);
    return;
  }
  const why = `PostgreSQL is not reachable at ${redacted()}: ${problem}`;
  if (process.env['CI'] === 'true') {
    describe(name, () => {
      it('has a reachable PostgreSQL (the multi-node tier needs one)', () => {
        throw new Error(`${why}. .ci/run installs the postgresql package, starts the cluster and creates the role`);
      });
    });
    return;
  }
  process.stderr.write(`skipped: ${name}: ${why} (install the postgresql package and run the setup in .ci/run, or set VERTEX_TEST_POSTGRES)\n`);
  describe.skip(name, fn);
}

/** True when the test PostgreSQL answers (probed once per file). */
export function postgresReachable(): boolean {
  return postgresProblemSync() === null;
}

/**
 * The database of `url` through a Unix socket of our own, for processes in
 * other network namespaces (the NAT lab), which share the file system but not
 * this loopback: a socket file `.s.PGSQL.<port>` in a fresh directory,
 * forwarded to the database's TCP address. The returned URL names the
 * directory as its host, as libpq and node-postgres read it.
 */
export async function postgresOverUnixSocket(url: string): Promise<{ url: string; close(): Promise<void> }> {
  const u = new URL(url);
  const target = { host: u.hostname, port: Number(u.port || 5432) };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-pgsock-'));
  fs.chmodSync(dir, 0o755);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => { client.destroy(); upstream.destroy(); });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path.join(dir, `.s.PGSQL.${target.port}`), () => resolve());
  });
  u.hostname = 'localhost';
  u.searchParams.set('host', dir);
  return {
    url: u.toString(),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

let syncProblem: string | null | undefined;

function postgresProblemSync(): string | null {
  if (syncProblem !== undefined) return syncProblem;
  const script = `
    const pg = require('pg');
    const c = new pg.Client({ connectionString: process.argv[1], connectionTimeoutMillis: ${PROBE_TIMEOUT_MS} });
    c.connect().then(() => c.query('SELECT 1')).then(() => { c.end(); process.stdout.write('ok'); },
      (e) => { process.stdout.write(String(e.message || e)); process.exit(0); });`;
  const r = spawnSync(process.execPath, ['-e', script, TEST_POSTGRES_URL], { encoding: 'utf8', timeout: PROBE_TIMEOUT_MS * 3, cwd: path.join(__dirname, '..', '..') });
  syncProblem = r.stdout === 'ok' ? null : (r.stdout || r.stderr || `probe exited ${r.status}`).trim().split('\n')[0] ?? 'probe failed';
  return syncProblem;
}

function redacted(): string {
  const u = new URL(TEST_POSTGRES_URL);
  if (u.password) u.password = '***';
  return u.toString();
}
