/**
 * Issue 13, problem 2: `vertex connect` ends when the tunnel ends, in both
 * directions, through the running agent and without one.
 *
 * - The issue's own pipeline, `(printf 'GET / HTTP/1.0\r\n\r\n'; sleep N) |
 *   vertex connect bob@b.test:http | wc -c`, prints its count when the
 *   response ends, while the sleep still holds stdin open (it used to wait
 *   for stdin to close).
 * - End of input first: the answer still comes, then a clean exit 0.
 * - The far agent restarting breaks the tunnel: `vertex connect` exits 4
 *   with one line on stderr that says why (it used to sit in CLOSE-WAIT).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stopAll, VERTEX_BIN } from '../../helpers/cli';
import { startWorld, type World } from '../../helpers/q2q-world';
import { agentYaml, PAGE, startAgent, startEcho, startWeb, run, type AgentHandle, type Closable } from './helpers';
import { untilTrue } from '../../helpers/net';

/** A shell-quoted word. */
function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

describe('vertex connect ends when the tunnel ends', () => {
  let world: World;
  let alice: AgentHandle;
  let bob: AgentHandle;
  let bobHome: string;
  let web: Awaited<ReturnType<typeof startWeb>>;
  let echo: Closable;
  let alone: string;
  const dirs: string[] = [];
  const groups: ChildProcess[] = [];

  const bobYaml = (): string => `expose:\n  - { service: http, target: "127.0.0.1:${web.port}", allow: ["*"] }\n  - { service: echo, target: "127.0.0.1:${echo.port}", allow: ["*"] }`;

  beforeAll(async () => {
    web = await startWeb();
    echo = await startEcho();
    world = await startWorld();
    const aliceUser = await world.user('alice@a.test');
    const bobUser = await world.user('bob@b.test');
    bobHome = bobUser.home.dir;
    dirs.push(aliceUser.home.dir, bobHome);
    bob = await startAgent(world, bobHome, bobYaml());
    alice = await startAgent(world, aliceUser.home.dir);
    // The same identity with a control socket nobody listens on: connect dials by itself.
    alone = path.join(alice.home, 'alone.yaml');
    fs.writeFileSync(alone, agentYaml(world, alice.home).replace(path.join(alice.home, 'agent.sock'), path.join(alice.home, 'none.sock')));
  });

  afterAll(async () => {
    for (const g of groups) if (g.pid && g.exitCode === null) try { process.kill(-g.pid, 'SIGKILL'); } catch { /* gone */ }
    await stopAll();
    await Promise.all([web?.close(), echo?.close()]);
    for (const d of [...dirs, world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  /** Runs the issue's pipeline in its own process group and resolves with what wc printed. */
  function pipeline(extra: string[]): Promise<string> {
    const vertex = [process.execPath, VERTEX_BIN, ...alice.argv.slice(2), ...extra, 'connect', 'bob@b.test:http'].map(q).join(' ');
    // The sleep outlives the test on purpose: wc must print while stdin is still open.
    const sh = spawn('sh', ['-c', `(printf 'GET / HTTP/1.0\\r\\n\\r\\n'; sleep 600) | ${vertex} | wc -c`], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    groups.push(sh);
    return new Promise((resolve, reject) => {
      let out = '';
      let err = '';
      sh.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.endsWith('\n')) resolve(out.trim());
      });
      sh.stderr?.on('data', (d: Buffer) => (err += d.toString()));
      sh.once('close', () => reject(new Error(`pipeline ended without output; stderr: ${err}`)));
    });
  }

  it.each([
    ['through the running agent', false],
    ['without an agent', true],
  ])('the pipeline prints its count when the response ends, %s', async (_what, withoutAgent) => {
    const count = await pipeline(withoutAgent ? ['--config', alone] : []);
    // Headers plus the page: more than the page alone.
    expect(Number(count)).toBeGreaterThan(Buffer.byteLength(PAGE));
  }, 30_000);

  it.each([
    ['through the running agent', false],
    ['without an agent', true],
  ])('end of input first: the whole answer, then exit 0 with nothing on stderr, %s', async (_what, withoutAgent) => {
    const payload = 'x'.repeat(100_000);
    const r = await run(process.execPath, [...alice.argv.slice(1), ...(withoutAgent ? ['--config', alone] : []), 'connect', 'bob@b.test:echo'], { input: payload, ms: 20_000 });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toBe(payload);
  });

  it('the far agent restarting breaks the tunnel: exit 4 and one line that says why', async () => {
    const connect = spawn(process.execPath, [...alice.argv.slice(1), 'connect', 'bob@b.test:echo'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    connect.stdout.on('data', (d: Buffer) => (out += d.toString()));
    connect.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => connect.once('close', (code) => resolve(code)));
    // The tunnel works, and stdin stays open.
    connect.stdin.write('hello\n');
    await untilTrue('the echo through the tunnel', () => out.includes('hello'));
    expect(out).toBe('hello\n');

    const started = Date.now();
    await bob.proc.stop('SIGTERM');
    const code = await exited;
    const ms = Date.now() - started;
    process.stdout.write(`vertex connect exited ${ms} ms after the far agent was told to stop; it said: ${err}`);
    expect(code).toBe(4);
    expect(err.trim().split('\n')).toHaveLength(1);
    expect(err).toMatch(/^vertex: tunnel to bob@b\.test:echo broke off: /);
    connect.stdin.destroy();
    bob = await startAgent(world, bobHome, bobYaml());
  }, 90_000);
});
