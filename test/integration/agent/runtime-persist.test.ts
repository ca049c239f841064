/**
 * Issue 13, problem 4: `vertex expose` and `vertex forward` on a running
 * agent persist across restarts (<home>/runtime.json, merged over
 * agent.yaml at start), agent.yaml is never rewritten, and replacing an
 * entry asks for --replace and never changes its allow list silently.
 * (Before: runtime entries vanished on restart, and `vertex expose ssh PORT`
 * silently replaced agent.yaml's `ssh` and reset its allow list.)
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stopAll } from '../../helpers/cli';
import { startWorld, type World } from '../../helpers/q2q-world';
import type { AgentStatus } from '../../../agent/daemon';
import { connectTcp, exchange, run, startAgent, startEcho, type AgentHandle, type Closable } from './helpers';

describe('runtime exposes and forwards persist', () => {
  let world: World;
  let alice: AgentHandle;
  let bob: AgentHandle;
  let bobHome: string;
  let first: Closable;
  let second: Closable;
  const dirs: string[] = [];
  const yaml = (): string => `expose:\n  - { service: ssh, target: "127.0.0.1:${first.port}", allow: ["alice@a.test"] }`;
  const sha = (file: string): string => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

  beforeAll(async () => {
    first = await startEcho();
    second = await startEcho();
    world = await startWorld();
    const aliceUser = await world.user('alice@a.test');
    const bobUser = await world.user('bob@b.test');
    bobHome = bobUser.home.dir;
    dirs.push(aliceUser.home.dir, bobHome);
    bob = await startAgent(world, bobHome, yaml());
    alice = await startAgent(world, aliceUser.home.dir);
  });

  afterAll(async () => {
    await stopAll();
    await Promise.all([first?.close(), second?.close()]);
    for (const d of [...dirs, world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  async function status(agent: AgentHandle): Promise<AgentStatus> {
    return JSON.parse((await agent.vertex(['status', '--json'])).stdout) as AgentStatus;
  }

  it('exposing a name that agent.yaml already exposes asks for --replace and changes nothing', async () => {
    const r = await bob.vertex(['expose', 'ssh', String(second.port)]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/expose ssh: already exposed -> 127\.0\.0\.1:\d+ \(allow alice@a\.test; from agent\.yaml\); add --replace/);
    const ssh = (await status(bob)).exposed.find((e) => e.service === 'ssh');
    expect(ssh).toMatchObject({ target: `127.0.0.1:${first.port}`, allow: ['alice@a.test'], source: 'config' });
  });

  it('--replace keeps the allow list unless --allow names a new one, and says so', async () => {
    const r = await bob.vertex(['expose', 'ssh', String(second.port), '--replace']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/replaced -> 127\.0\.0\.1:\d+, allow list kept/);
    const ssh = (await status(bob)).exposed.find((e) => e.service === 'ssh');
    expect(ssh).toMatchObject({ target: `127.0.0.1:${second.port}`, allow: ['alice@a.test'], source: 'cli' });
  });

  it('runtime exposes and forwards come back after a restart; agent.yaml is untouched', async () => {
    const yamlFile = path.join(bobHome, 'agent.yaml');
    const before = sha(yamlFile);
    expect((await bob.vertex(['expose', 'web', String(first.port), '--allow', '*'])).code).toBe(0);
    // Port 0: the system picks one, and the forward is kept on the port it got.
    const fwd = await alice.vertex(['forward', '0', 'bob@b.test:web']);
    expect(fwd.code).toBe(0);
    const port = Number(/forwarding 127\.0\.0\.1:(\d+) ->/.exec(fwd.stdout)?.[1]);

    await bob.proc.stop();
    bob = await startAgent(world, bobHome, yaml());
    await alice.proc.stop();
    alice = await startAgent(world, alice.home);

    const exposed = (await status(bob)).exposed.map((e) => ({ service: e.service, target: e.target, allow: e.allow, source: e.source }));
    expect(exposed).toEqual(expect.arrayContaining([
      { service: 'ssh', target: `127.0.0.1:${second.port}`, allow: ['alice@a.test'], source: 'cli' },
      { service: 'web', target: `127.0.0.1:${first.port}`, allow: ['*'], source: 'cli' },
    ]));
    expect((await status(alice)).forwards).toEqual([{ listen: `127.0.0.1:${port}`, to: 'bob@b.test:web', source: 'cli' }]);
    // The restored forward and expose carry bytes.
    expect((await exchange(await connectTcp(port), 'after restart')).toString()).toBe('after restart');
    // And the replaced ssh reaches the second target, through alice's agent.
    const c = await run(process.execPath, [...alice.argv.slice(1), 'connect', 'bob@b.test:ssh'], { input: 'to the second' });
    expect(c.stdout.toString()).toBe('to the second');
    expect(sha(yamlFile)).toBe(before);
    expect(JSON.parse(fs.readFileSync(path.join(bobHome, 'runtime.json'), 'utf8'))).toMatchObject({ version: 1 });
  });

  it('--remove is persisted too', async () => {
    expect((await bob.vertex(['expose', '--remove', 'web'])).code).toBe(0);
    await bob.proc.stop();
    bob = await startAgent(world, bobHome, yaml());
    expect((await status(bob)).exposed.map((e) => e.service)).toEqual(['ssh']);
  });
});
