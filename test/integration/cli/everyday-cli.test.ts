/**
 * Issue 13, problem 6 and "a CLI people already know": the built `vertex`
 * as a user types it. `--resolve` is repeatable, one value per flag,
 * anywhere on the line (it was a greedy yargs array that swallowed the
 * command); `--version`, `completion`, `-v`, `--log-level` in `--help`,
 * log lines for people on a terminal (through `script`, a real pty) and JSON
 * on a pipe, errors as JSON under `--json`, no stack traces, Ctrl-C exits
 * 130, and the wording of the errors people meet first.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, runVertex, startServer, startVertex, stopAll, tempDir, VERTEX_BIN, type ServerHandle } from '../../helpers/cli';
import { PASSWORD } from '../../helpers/q2q-world';
import { itWithTools, TOOLS } from '../../helpers/system-tools';
import { shellWord } from '../agent/helpers';

/** Runs `command` (a shell line) with stdin, stdout and stderr on a pseudo-terminal, as typed in one; returns what the terminal showed. */
function onTerminal(command: string): Promise<{ code: number | null; shown: string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn('script', ['-qec', command, '/dev/null'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let shown = '';
    proc.stdout.on('data', (d: Buffer) => { shown += d.toString(); });
    proc.stderr.on('data', (d: Buffer) => { shown += d.toString(); });
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`no exit: ${shown}`)); }, 30_000);
    proc.on('error', reject);
    proc.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, shown: shown.replace(/\r\n/g, '\n') });
    });
  });
}

/** The keys of a JSON object's top level, as written (JSON.parse would hide a duplicate). */
function topLevelKeys(json: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  let i = 0;
  let expectKey = false;
  while (i < json.length) {
    const c = json[i];
    if (c === '"') {
      let j = i + 1;
      while (json[j] !== '"') j += json[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) keys.push(JSON.parse(json.slice(i, j + 1)) as string);
      expectKey = false;
      i = j + 1;
      continue;
    }
    if (c === '{' || c === '[') depth += 1;
    if (c === '}' || c === ']') depth -= 1;
    if ((c === '{' && depth === 1) || (c === ',' && depth === 1)) expectKey = true;
    i += 1;
  }
  return keys;
}

const STACK_LINE = /^\s+at .+\(.*:\d+:\d+\)$|^\s+at .+:\d+:\d+$/m;

describe('the vertex command line', () => {
  let server: ServerHandle;
  const dirs: string[] = [];

  beforeAll(async () => {
    server = await startServer(['example.com', 'other.test']);
  });

  afterAll(async () => {
    await stopAll();
    for (const d of [...dirs, server?.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  function home(): string {
    const dir = tempDir('cli-home');
    dirs.push(dir);
    return dir;
  }

  it('problem 6: `vertex --resolve D=H:P register alice@D` (the README\'s own line) registers', async () => {
    // No other flag between --resolve and the command: a greedy array took `register` as a second value.
    const r = await runVertex(['--resolve', `example.com=127.0.0.1:${server.port}`, 'register', 'alice@example.com', '--home', home(), '--password-stdin'], { input: PASSWORD });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^registered alice@example\.com; certificate /);
  });

  it('problem 6: --resolve after the command, between its arguments, and twice', async () => {
    const dir = home();
    const after = await runVertex(['--home', dir, 'register', 'bob@example.com', '--resolve', `example.com=127.0.0.1:${server.port}`, '--password-stdin'], { input: PASSWORD });
    expect(after.stderr).toBe('');
    expect(after.code).toBe(0);
    // Two flags, each with its one value; the second domain is the one used.
    const twice = await runVertex(['--resolve', 'example.com=127.0.0.1:1', '--home', dir, 'register', '--resolve', `other.test=127.0.0.1:${server.port}`, 'carol@other.test', '--password-stdin'], { input: PASSWORD });
    expect(twice.stderr).toBe('');
    expect(twice.code).toBe(0);
    expect(twice.stdout).toMatch(/^registered carol@other\.test;/);
  });

  it('a --resolve without its value is a usage error, not a swallowed word', async () => {
    const r = await runVertex(['register', 'dave@example.com', '--resolve']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/resolve/);
  });

  it('--version prints the package version', async () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const r = await runVertex(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
  });

  it('`vertex completion` prints a shell completion script that completes commands', async () => {
    const script = await runVertex(['completion']);
    expect(script.code).toBe(0);
    expect(script.stdout).toContain('complete -o bashdefault -o default -F');
    const words = await runVertex(['--get-yargs-completions', 'vertex', 'ag']);
    expect(words.stdout.split('\n')).toContain('agent');
  });

  it('--help describes --log-level, -v and --json', async () => {
    const r = await runVertex(['--help']);
    expect(r.stdout).toMatch(/--log-level\s+how much to log on stderr: trace, debug, info, warn, error, fatal, silent/);
    expect(r.stdout).toMatch(/-v, --verbose\s+log more/);
    expect(r.stdout).toMatch(/--json\s+machine-readable output/);
  });

  it('-v logs at info (JSON lines when stderr is a pipe), with no key written twice', async () => {
    const dir = tempDir('cli-server');
    dirs.push(dir);
    const quiet = await runVertex(['--resolve', `example.com=127.0.0.1:${server.port}`, '--home', home(), 'register', 'erin@example.com', '--password-stdin'], { input: PASSWORD });
    expect(quiet.stderr).toBe('');
    // The server's config says info; -vv asks for debug, and its lines come from child loggers
    // (server -> accounts, relay, ...) that each bind `component` again.
    const proc = startVertex(['-vv', 'server', '--listen', '127.0.0.1:0', '--data', dir, '--domain', 'v.test', '--registration', 'open']);
    const port = Number((await proc.waitFor(/listening on 127\.0\.0\.1:(\d+)/))[1]);
    const r = await runVertex(['--resolve', `v.test=127.0.0.1:${port}`, '--home', home(), 'register', 'ivan@v.test', '--password-stdin'], { input: PASSWORD });
    expect(r.code).toBe(0);
    await proc.waitFor(/"level":20/);
    await proc.stop();
    const lines = proc.output().split('\n').filter((l) => l.startsWith('{'));
    expect(lines.some((l) => (JSON.parse(l) as { level: number }).level === 20)).toBe(true);
    for (const line of lines) {
      const keys = topLevelKeys(line);
      expect({ line, duplicates: keys.filter((k, i) => keys.indexOf(k) !== i) }).toEqual({ line, duplicates: [] });
    }
  });

  itWithTools('log lines are for people when stderr is a terminal, JSON lines on a pipe', [TOOLS.script], async () => {
    const line = (dir: string) => `echo pw | ${[process.execPath, VERTEX_BIN, '-vv', '--home', dir, 'register', 'hal@nosuch.invalid', '--password-stdin'].map(shellWord).join(' ')}`;
    const tty = await onTerminal(line(home()));
    expect(tty.code).toBe(4);
    // time, level, message, key=value: no JSON object anywhere on the terminal.
    expect(tty.shown).toMatch(/^\d\d:\d\d:\d\d\.\d{3} DEBUG server endpoint failed domain=nosuch\.invalid /m);
    expect(tty.shown).not.toMatch(/^\{/m);
    expect(tty.shown).toMatch(/^vertex: cannot find the identity server for nosuch\.invalid/m);
    const piped = await runVertex(['-vv', '--home', home(), 'register', 'hal@nosuch.invalid', '--password-stdin'], { input: 'pw' });
    const logged = piped.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { level: number; msg: string });
    expect(logged).toContainEqual(expect.objectContaining({ level: 20, msg: 'server endpoint failed' }));
  });

  it('errors under --json are one JSON object with the stable code and the exit status', async () => {
    const r = await runVertex(['--json', '--socket', path.join(home(), 'none.sock'), 'status']);
    expect(r.code).not.toBe(0);
    const err = JSON.parse(r.stderr) as { error: { code: string; message: string; exit: number } };
    expect(err.error.exit).toBe(r.code);
    expect(typeof err.error.code).toBe('string');
    const usage = await runVertex(['--json', 'frobnicate']);
    expect(usage.code).toBe(2);
    expect(JSON.parse(usage.stderr)).toEqual({ error: { code: 'Usage', message: expect.stringMatching(/frobnicate/), exit: 2 } });
  });

  it('`vertex login` with a wrong password says "wrong password for alice@…", with no stack trace', async () => {
    const dir = home();
    const resolve = ['--resolve', `example.com=127.0.0.1:${server.port}`];
    expect((await runVertex([...resolve, '--home', dir, 'register', 'gina@example.com', '--password-stdin'], { input: PASSWORD })).code).toBe(0);
    const r = await runVertex([...resolve, '--home', home(), 'login', 'gina@example.com', '--password-stdin'], { input: 'not the password' });
    expect(r.code).toBe(3);
    expect(r.stderr).toBe('vertex: wrong password for gina@example.com\n');
    expect(r.stderr).not.toMatch(STACK_LINE);
  });

  it('an unknown domain says that SRV and <domain>:8788 were tried, and suggests --resolve', async () => {
    const r = await runVertex(['--home', home(), 'register', 'hal@nosuch.invalid', '--password-stdin'], { input: PASSWORD });
    expect(r.code).toBe(4);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('_q2q._tcp.nosuch.invalid');
    expect(r.stderr).toContain('nosuch.invalid:8788');
    expect(r.stderr).toContain('--resolve nosuch.invalid=HOST:PORT');
    expect(r.stderr).not.toMatch(STACK_LINE);
  });

  it('Ctrl-C (SIGINT) stops a running command cleanly with exit status 130; SIGTERM with 0', async () => {
    const dir = tempDir('cli-server');
    dirs.push(dir);
    const first = startVertex(['server', '--listen', '127.0.0.1:0', '--data', dir, '--domain', 'int.test']);
    await first.waitFor(/listening on/);
    expect(await first.stop('SIGINT')).toBe(130);
    const second = startVertex(['server', '--listen', '127.0.0.1:0', '--data', dir, '--domain', 'int.test']);
    await second.waitFor(/listening on/);
    expect(await second.stop('SIGTERM')).toBe(0);
  });
});
