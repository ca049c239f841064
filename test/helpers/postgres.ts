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
