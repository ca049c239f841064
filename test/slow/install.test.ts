/**
 * Slow tier. Issue 13, "Install": `npm pack`, then `npm install -g
 * ./vertex-*.tgz` into a scratch prefix gives a `vertex` on PATH, `vertex
 * --version` works, SQLite's native module loads, and `systemd-analyze
 * verify` passes on the installed package's units with ExecStart= pointing
 * at that vertex.
 *
 * The pack runs on a copy of the sources (node_modules linked in), so the
 * `prepare` script really builds dist/ the way a fresh checkout does,
 * without rewriting this checkout's dist/ under other tests.
 *
 * The install is offline first (`--offline`): the packages come from npm's
 * cache. `npm ci` alone does not fill it enough: it caches tarballs and the
 * abbreviated metadata, while a global install asks for the full metadata
 * of each dependency. When that is missing (ENOTCACHED), the test says so
 * and installs with `--prefer-offline`, which fetches only the metadata
 * from npm's registry; from then on the cache holds it and the offline
 * install works. better-sqlite3 is compiled by node-gyp against the system's
 * Node headers (npm's nodedir), which is most of the minute this takes.
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describeWithTools, TOOLS } from '../helpers/system-tools';

const ROOT = path.resolve(__dirname, '../..');
const PKG = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string; scripts: Record<string, string>; files: string[] };
/** What the build needs (bench/ uses a test helper); tests, docs and local state stay behind. */
const COPIED = ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'bin', 'q2q', 'server', 'agent', 'cli', 'config', 'bench', 'systemd', 'test/helpers'];
const UNITS: ReadonlyArray<{ file: string; verifyAs: string; manager: 'system' | 'user' }> = [
  { file: 'vertex-server.service', verifyAs: 'vertex-server.service', manager: 'system' },
  { file: 'vertex-agent.service', verifyAs: 'vertex-agent.service', manager: 'system' },
  { file: 'vertex-agent@.service', verifyAs: 'vertex-agent@alice.service', manager: 'system' },
  { file: 'user/vertex-agent.service', verifyAs: 'vertex-agent.service', manager: 'user' },
];

/**
 * Compiling better-sqlite3 takes 1.5-4 minutes on a busy 2-core machine, so
 * the install gets 10 minutes. npm stops silently with exit 1 when it is
 * killed (the CI run of 630157b failed that way at the old 280 s), so a run
 * over time says so instead of showing an empty npm failure.
 */
const COMMAND_TIMEOUT_MS = 600_000;

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): SpawnSyncReturns<string> & { ms: number } {
  const started = Date.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: COMMAND_TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024, cwd: opts.cwd ?? ROOT, env: { ...process.env, ...opts.env } });
  return Object.assign(r, { ms: Date.now() - started });
}

function ok(r: SpawnSyncReturns<string> & { ms?: number }, what: string): string {
  if (r.status !== 0) {
    const over = r.ms !== undefined && r.ms >= COMMAND_TIMEOUT_MS - 1_000 ? ` after ${r.ms} ms, over this test's ${COMMAND_TIMEOUT_MS} ms: npm was stopped` : '';
    throw new Error(`${what}: exit ${r.status}${r.signal ? ` (${r.signal})` : ''}${over}\n${r.stdout}\n${r.stderr}`);
  }
  return r.stdout;
}

describeWithTools('npm pack, a global install in a scratch prefix, and the units pointed at it', [TOOLS.systemdAnalyze], () => {
  let work: string;
  let prefix: string;
  let tarball: string;

  beforeAll(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-install-'));
    prefix = path.join(work, 'prefix');
  });
  afterAll(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it('npm pack builds dist/ through prepare and packs bin/vertex (executable), dist/ and the units, no tests', () => {
    expect(PKG.scripts['prepare']).toBe('npm run build');
    const src = path.join(work, 'src');
    fs.mkdirSync(src);
    for (const item of COPIED) fs.cpSync(path.join(ROOT, item), path.join(src, item), { recursive: true });
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(src, 'node_modules'));
    ok(run('npm', ['pack', '--pack-destination', work], { cwd: src }), 'npm pack');
    tarball = path.join(work, `${PKG.name}-${PKG.version}.tgz`);
    expect(fs.existsSync(tarball)).toBe(true);

    const listing = ok(run('tar', ['tzvf', tarball]), 'tar').split('\n');
    const names = listing.map((l) => l.split(/\s+/).at(-1) ?? '');
    expect(names).toEqual(expect.arrayContaining([
      'package/bin/vertex', 'package/dist/cli/main.js', 'package/dist/server/identity-server.js', 'package/config/agent.example.yaml',
      'package/systemd/vertex-server.service', 'package/systemd/README.md',
    ]));
    expect(listing.find((l) => l.endsWith(' package/bin/vertex'))).toMatch(/^-rwxr-xr-x/);
    expect(names.filter((n) => /^package\/(test|dist\/test|dist\/bench|bench)\//.test(n))).toEqual([]);
  }, 660_000);

  it('npm install -g into a scratch prefix gives a vertex on PATH whose --version works and whose SQLite loads', () => {
    const install = (mode: string): SpawnSyncReturns<string> =>
      // JOBS=max: node-gyp compiles better-sqlite3 on every core.
      run('npm', ['install', '-g', mode, '--no-audit', '--no-fund', '--prefix', prefix, tarball], { cwd: work, env: { JOBS: 'max' } });
    let r = install('--offline');
    if (r.status !== 0 && /ENOTCACHED/.test(r.stderr)) {
      process.stderr.write('install test: npm\'s cache lacks the full metadata a global install asks for; installing with --prefer-offline (npm registry only)\n');
      r = install('--prefer-offline');
    }
    ok(r, 'npm install -g');

    const bin = path.join(prefix, 'bin');
    const found = ok(run('sh', ['-c', 'command -v vertex && vertex --version'], { cwd: work, env: { PATH: `${bin}:${process.env['PATH'] ?? ''}` } }), 'vertex on PATH').trim().split('\n');
    expect(found[0]).toBe(path.join(bin, 'vertex'));
    expect(found[1]).toContain(PKG.version);
    // The native module was built for this Node: the identity server's store works.
    const lib = path.join(prefix, 'lib', 'node_modules', PKG.name);
    const sqlite = run(process.execPath, ['-e', `const D = require(${JSON.stringify(path.join(lib, 'node_modules', 'better-sqlite3'))}); process.stdout.write(String(new D(':memory:').prepare('select 41 + 1 as x').get().x))`]);
    expect(ok(sqlite, 'better-sqlite3')).toBe('42');
    expect(ok(run(path.join(bin, 'vertex'), ['server', '--help'], { cwd: work }), 'vertex server --help')).toMatch(/--config/);
  }, 1_260_000);

  it.each(UNITS)('systemd-analyze verify passes on the installed $file with ExecStart= at the installed vertex', ({ file, verifyAs, manager }) => {
    const installed = path.join(prefix, 'lib', 'node_modules', PKG.name, 'systemd', file);
    const text = fs.readFileSync(installed, 'utf8');
    // The units name the bare command, found by systemd in /usr/local/bin or /usr/bin; here it is the scratch prefix's.
    expect(text).toMatch(/^ExecStart=vertex /m);
    const dir = fs.mkdtempSync(path.join(work, 'unit-'));
    const runtime = path.join(dir, 'runtime');
    fs.mkdirSync(runtime, { mode: 0o700 });
    fs.writeFileSync(path.join(dir, path.basename(file)), text.replace(/^ExecStart=vertex /m, `ExecStart=${path.join(prefix, 'bin', 'vertex')} `));
    const r = run('systemd-analyze', [...(manager === 'user' ? ['--user'] : []), 'verify', '--man=no', path.join(dir, verifyAs)], {
      env: { XDG_RUNTIME_DIR: runtime, SYSTEMD_LOG_COLOR: '0', SYSTEMD_PAGER: '' },
    });
    expect(`${r.stdout}${r.stderr}`.trim()).toBe('');
    expect(r.status).toBe(0);
  });
});
