// PostgreSQL driver comparison for the account store (docs/postgres.md). Not part of npm run bench:
// it needs the candidate drivers, which the project does not depend on. Run it in a scratch directory:
//   npm i pg@8.23.1 postgres@3.4.10 postgres4@npm:postgres@4.2.0 && node postgres-drivers.mjs
// against a role that may create databases (the one .ci/run creates).
import pg from 'pg';
import postgres3 from 'postgres';
import postgres4 from 'postgres4';
const base = 'postgres://vertex_test:vertex_test@127.0.0.1:5432/';
const admin = new pg.Client(base + 'postgres'); await admin.connect();
await admin.query('DROP DATABASE IF EXISTS drvbench'); await admin.query('CREATE DATABASE drvbench');
const url = base + 'drvbench';
const setup = new pg.Client(url); await setup.connect();
await setup.query(`CREATE TABLE accounts (domain text, username text, password_hash text, created_at bigint, PRIMARY KEY(domain, username));
CREATE TABLE certs (serial text primary key, domain text, username text, revoked_at bigint);
CREATE TABLE events (id bigserial primary key, at bigint, kind text, domain text, username text, serial text);`);
const N = 2000;
for (let i = 0; i < N; i++) await setup.query('INSERT INTO accounts VALUES ($1,$2,$3,$4)', ['a.test', 'u' + i, 'h'.repeat(100), Date.now()]);
for (let i = 0; i < N; i++) await setup.query('INSERT INTO certs VALUES ($1,$2,$3,NULL)', ['s' + i, 'a.test', 'u' + i]);
await setup.end();

function pgDriver() {
  const pool = new pg.Pool({ connectionString: url, max: 10 });
  return {
    name: 'pg 8.23.1',
    get: (i) => pool.query({ name: 'get', text: 'SELECT * FROM accounts WHERE domain=$1 AND username=$2', values: ['a.test', 'u' + i] }).then((r) => r.rows[0]),
    insert: (k) => pool.query({ name: 'ins', text: 'INSERT INTO accounts VALUES ($1,$2,$3,$4) ON CONFLICT DO NOTHING', values: ['b.test', k, 'h', 1] }),
    tx: async (i) => {
      const c = await pool.connect();
      try {
        await c.query('BEGIN');
        const r = await c.query({ name: 'sel', text: 'SELECT * FROM certs WHERE serial=$1 FOR UPDATE', values: ['s' + i] });
        await c.query({ name: 'upd', text: 'UPDATE certs SET revoked_at=$1 WHERE serial=$2', values: [Date.now(), 's' + i] });
        await c.query({ name: 'ev', text: 'INSERT INTO events (at,kind,domain,username,serial) VALUES ($1,$2,$3,$4,$5)', values: [1, 'r', 'a.test', r.rows[0].username, 's' + i] });
        await c.query('COMMIT');
      } catch (e) { await c.query('ROLLBACK'); throw e; } finally { c.release(); }
    },
    end: () => pool.end(),
  };
}
function porsager(postgres, name) {
  const sql = postgres(url, { max: 10, prepare: true, onnotice: () => {} });
  return {
    name,
    get: (i) => sql`SELECT * FROM accounts WHERE domain=${'a.test'} AND username=${'u' + i}`.then((r) => r[0]),
    insert: (k) => sql`INSERT INTO accounts VALUES (${'b.test'},${k},${'h'},${1}) ON CONFLICT DO NOTHING`,
    tx: (i) => sql.begin(async (t) => {
      const r = await t`SELECT * FROM certs WHERE serial=${'s' + i} FOR UPDATE`;
      await t`UPDATE certs SET revoked_at=${Date.now()} WHERE serial=${'s' + i}`;
      await t`INSERT INTO events (at,kind,domain,username,serial) VALUES (${1},${'r'},${'a.test'},${r[0].username},${'s' + i})`;
    }),
    end: () => sql.end(),
  };
}
const cpu = {};
async function run(d, kind, count, conc, tag) {
  let next = 0;
  const t0 = process.hrtime.bigint(); const c0 = process.cpuUsage();
  await Promise.all(Array.from({ length: conc }, async () => {
    while (next < count) {
      const i = next++;
      if (kind === 'get') await d.get(i % N);
      else if (kind === 'insert') await d.insert(`${tag}-${i}`);
      else await d.tx(i % N);
    }
  }));
  const c = process.cpuUsage(c0); cpu[d.name+kind+conc] = ((cpu[d.name+kind+conc]??[])).concat([(c.user+c.system)/count]);
  return count / (Number(process.hrtime.bigint() - t0) / 1e9);
}
const drivers = [pgDriver(), porsager(postgres3, 'postgres 3.4.10'), porsager(postgres4, 'postgres 4.2.0')];
for (const d of drivers) { await run(d, 'get', 500, 8, 'w'); await run(d, 'tx', 100, 4, 'w'); } // warm-up
const results = {};
const ROUNDS = 5;
for (let round = 0; round < ROUNDS; round++) {
  for (const d of (round % 2 ? [...drivers].reverse() : drivers)) {
    for (const [kind, count, conc] of [['get', 3000, 1], ['get', 10000, 32], ['insert', 2000, 16], ['tx', 1000, 8]]) {
      const key = `${kind} c=${conc}`;
      const ops = await run(d, kind, count, conc, `${d.name}-${round}`);
      ((results[d.name] ??= {})[key] ??= []).push(ops);
    }
  }
}
const med = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
for (const [name, r] of Object.entries(results)) {
  console.log(JSON.stringify({ driver: name, ...Object.fromEntries(Object.entries(r).map(([k, v]) => [k, Math.round(med(v))])), cpuUsPerOp: Object.fromEntries(Object.entries(cpu).filter(([k])=>k.startsWith(name)).map(([k,v])=>[k.slice(name.length), Math.round(med(v))])) }));
}
for (const d of drivers) await d.end();
await admin.query('DROP DATABASE drvbench'); await admin.end();
