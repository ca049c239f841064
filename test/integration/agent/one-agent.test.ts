/**
 * Issue 13: finding the running agent, and one agent per home.
 *
 * - Problem 7: `vertex status`, `expose`, `forward`, `connect` and `ping`
 *   find an agent started with `--config` elsewhere, without repeating it
 *   (its lock in the home names its socket), the per-user socket under
 *   $XDG_RUNTIME_DIR, and an explicit `--socket`.
 * - A second `vertex agent` for the same home refuses, says why, and never
 *   reaches its server (a trap listener counts connections).
 * - Problem 5: a second `npm start` (vertex demo) on the same data fails and
 *   changes none of the running demo's files.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { runVertex, startVertex, stopAll, tempDir } from '../../helpers/cli';
import { startWorld, type World } from '../../helpers/q2q-world';
import type { AgentStatus } from '../../../agent/daemon';
import { agentYaml, startEcho, vertexFor, run, type Closable } from './helpers';

describe('one agent per home, found without --config', () => {
  let world: World;
  let echo: Closable;
  let aliceHome: string;
  let elsewhere: string;
  const dirs: string[] = [];

  beforeAll(async () => {
    echo = await startEcho();
    world = await startWorld();
    const alice = await world.user('alice@a.test');
    const bob = await world.user('bob@b.test');
    aliceHome = alice.home.dir;
    elsewhere = tempDir('elsewhere');
    dirs.push(aliceHome, bob.home.dir, elsewhere);
    // bob: an echo service for alice to reach.
    fs.writeFileSync(path.join(bob.home.dir, 'agent.yaml'), agentYaml(world, bob.home.dir, `expose:\n  - { service: echo, target: "127.0.0.1:${echo.port}", allow: ["*"] }`));
    const bobAgent = startVertex(['--home', bob.home.dir, 'agent']);
    await bobAgent.waitFor(/control socket /);
  });

  afterAll(async () => {
    await stopAll();
    await echo?.close();
    for (const d of [...dirs, world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  it('problem 7: an agent started with --config elsewhere is found through the home alone', async () => {
    // The config, and so the socket, live outside the home; the home has no agent.yaml.
    const config = path.join(elsewhere, 'alice.yaml');
    fs.writeFileSync(config, agentYaml(world, elsewhere).replace(path.join(elsewhere, 'agent.sock'), path.join(elsewhere, 'ctl.sock')));
    const agent = startVertex(['--home', aliceHome, 'agent', '--config', config]);
    await agent.waitFor(/control socket /);
    const v = vertexFor(world, aliceHome);

    const status = await v.vertex(['status', '--json']);
    expect(status.stderr).toBe('');
    expect((JSON.parse(status.stdout) as AgentStatus).control?.socket).toBe(path.join(elsewhere, 'ctl.sock'));

    const ping = await v.vertex(['ping', 'bob@b.test', '--count', '1', '--json']);
    expect(ping.code).toBe(0);
    const exposed = await v.vertex(['expose', 'web', String(echo.port)]);
    expect(exposed.stdout).toMatch(/on the running agent/);
    const connect = await run(process.execPath, [...v.argv.slice(1), 'connect', 'bob@b.test:echo'], { input: 'through the found agent' });
    expect(connect.code).toBe(0);
    expect(connect.stdout.toString()).toBe('through the found agent');
    // It went through the agent: the tunnel shows in its status.
    const after = JSON.parse((await v.vertex(['status', '--json'])).stdout) as AgentStatus;
    expect(after.exposed.map((e) => e.service)).toContain('web');

    // An explicit --socket works from anywhere, even with another home.
    const named = await runVertex(['--home', elsewhere, '--socket', path.join(elsewhere, 'ctl.sock'), 'status', '--json']);
    expect((JSON.parse(named.stdout) as AgentStatus).identity).toBe('alice@a.test');
    await agent.stop();
  });

  it('problem 7: the per-user socket under $XDG_RUNTIME_DIR is found with no --home and no --config', async () => {
    const runtime = tempDir('xdg');
    const userHome = tempDir('user-home');
    dirs.push(runtime, userHome);
    fs.chmodSync(runtime, 0o700);
    const env = { XDG_RUNTIME_DIR: runtime, HOME: userHome, VERTEX_HOME: '' };
    // An agent whose config says control.socket: auto (the default).
    const config = path.join(elsewhere, 'auto.yaml');
    fs.writeFileSync(config, agentYaml(world, elsewhere).replace(/^control: .*$/m, ''));
    const agent = startVertex(['--home', aliceHome, 'agent', '--config', config], { env });
    await agent.waitFor(new RegExp(`control socket ${path.join(runtime, 'vertex', 'agent.sock')}`));
    const status = await runVertex(['status', '--json'], { env });
    expect(status.stderr).toBe('');
    expect((JSON.parse(status.stdout) as AgentStatus).identity).toBe('alice@a.test');
    await agent.stop();
  });

  it('a second `vertex agent` for the same home refuses, says why, and never reaches its server', async () => {
    const first = startVertex(['--home', aliceHome, 'agent', '--config', path.join(elsewhere, 'alice.yaml')]);
    await first.waitFor(/control socket /);
    const before = JSON.parse((await vertexFor(world, aliceHome).vertex(['status', '--json'])).stdout) as AgentStatus;

    // The second one's config names a trap as a.test's server: any connection there is a failure.
    let reached = 0;
    const trap = net.createServer((s) => {
      reached += 1;
      s.destroy();
    });
    await new Promise<void>((r) => trap.listen(0, '127.0.0.1', r));
    const trapPort = (trap.address() as net.AddressInfo).port;
    const second = path.join(elsewhere, 'second.yaml');
    fs.writeFileSync(second, [
      'version: 1',
      'socks: { listen: 127.0.0.1:0 }',
      `domains: { a.test: { server: "127.0.0.1:${trapPort}" } }`,
      `control: { socket: ${JSON.stringify(path.join(elsewhere, 'second.sock'))} }`,
      '',
    ].join('\n'));
    const r = await runVertex(['--home', aliceHome, 'agent', '--config', second]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(new RegExp(`another vertex agent \\(pid ${first.child.pid}\\) already runs for alice@a\\.test`));
    expect(r.stderr).toContain(path.join(elsewhere, 'ctl.sock'));
    expect(reached).toBe(0);
    await new Promise<void>((res) => trap.close(() => res()));

    // The first one never noticed.
    const after = JSON.parse((await vertexFor(world, aliceHome).vertex(['status', '--json'])).stdout) as AgentStatus;
    expect(after.server).toMatchObject({ state: 'online', since: before.server.since });
    await first.stop();
  });
});

describe('problem 5: a failed start never changes a running setup', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    await stopAll();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  /** Every file under `dir` with its SHA-256, leaving out SQLite's WAL files (the running server's own). */
  function snapshot(dir: string): Record<string, string> {
    const out: Record<string, string> = {};
    const walk = (d: string): void => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.isFile() && !/-(wal|shm)$/.test(e.name)) out[path.relative(dir, p)] = createHash('sha256').update(fs.readFileSync(p)).digest('hex');
      }
    };
    walk(dir);
    return out;
  }

  it('a second `npm start` on the same data fails and changes none of the first one\'s files', async () => {
    const dir = tempDir('demo-twice');
    dirs.push(dir);
    const data = path.join(dir, 'vertex-data');
    const first = startVertex(['demo', '--data', data, '--listen', '127.0.0.1:0', '--socks', '127.0.0.1:0'], { cwd: dir });
    await first.waitFor(/Ctrl-C stops everything/);
    const before = snapshot(data);

    // Another server port, as in the issue (`npm start -- --listen 127.0.0.1:8789`).
    const second = await runVertex(['demo', '--data', data, '--listen', '127.0.0.1:0', '--socks', '127.0.0.1:0']);
    expect(second.code).not.toBe(0);
    expect(second.stderr).toMatch(/another vertex agent \(pid \d+\) already runs for demo@localhost/);
    expect(snapshot(data)).toEqual(before);

    // The first demo still answers.
    const status = await runVertex(['--home', path.join(data, 'home'), 'status', '--json']);
    expect(JSON.parse(status.stdout)).toMatchObject({ identity: 'demo@localhost', server: { state: 'online' } });
    await first.stop();
  });
});
