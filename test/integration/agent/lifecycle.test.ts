/**
 * The agent process's life: its control socket, `vertex expose` and `vertex
 * ping` through it or without it, SIGHUP reloading forwards and exposes
 * without dropping an open tunnel, SIGTERM stopping cleanly, and the CLI's
 * answers to bad input.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stopAll } from '../../helpers/cli';
import { refusedPort } from '../../helpers/net';
import { startWorld, type World } from '../../helpers/q2q-world';
import type { AgentStatus } from '../../../agent/daemon';
import { agentYaml, connectTcp, exchange, portOf, run, spawnClient, startAgent, startEcho, startWeb, stopClients, until, type AgentHandle, type Closable } from './helpers';

describe('agent lifecycle', () => {
  let world: World;
  let alice: AgentHandle;
  let bob: AgentHandle;
  let bobHome: string;
  let echo: Closable;
  let web: Awaited<ReturnType<typeof startWeb>>;
  const dirs: string[] = [];

  beforeAll(async () => {
    echo = await startEcho();
    web = await startWeb();
    world = await startWorld();
    const aliceUser = await world.user('alice@a.test');
    const bobUser = await world.user('bob@b.test');
    bobHome = bobUser.home.dir;
    dirs.push(aliceUser.home.dir, bobHome);
    bob = await startAgent(world, bobHome, `expose:\n  - { service: echo, target: "127.0.0.1:${echo.port}", allow: ["*"] }`);
    alice = await startAgent(world, aliceUser.home.dir);
  });

  afterAll(async () => {
    await stopClients();
    await stopAll();
    await Promise.all([echo?.close(), web?.close()]);
    for (const d of [...dirs, world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  async function status(agent: AgentHandle): Promise<AgentStatus> {
    const r = await agent.vertex(['status', '--json']);
    if (r.code !== 0) throw new Error(`vertex status exited ${r.code}: ${r.stderr}`);
    return JSON.parse(r.stdout) as AgentStatus;
  }

  it('serves its control API on a socket only its user can open', () => {
    expect(fs.statSync(path.join(alice.home, 'agent.sock')).mode & 0o777).toBe(0o600);
  });

  it('vertex ping reports the route and round-trip times, through the agent and without one', async () => {
    const r = await alice.vertex(['ping', 'bob@b.test', '--count', '2']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^bob@b\.test via tcp: connected to bob\+[a-z0-9-]+@b\.test in \d+ ms\nprobe 1: [\d.]+ ms via tcp\nprobe 2: [\d.]+ ms via tcp\nrtt min\/avg\/max /);
    const json = JSON.parse((await alice.vertex(['ping', 'bob@b.test:echo', '--count', '1', '--json'])).stdout) as { route: string; rttMs: number[]; connectMs: number };
    expect(json).toMatchObject({ route: 'tcp', kind: 'connect', rttMs: [expect.any(Number)] });
    // With a config whose control socket has no agent behind it: a one-off connection of its own.
    const alone = path.join(alice.home, 'alone.yaml');
    fs.writeFileSync(alone, agentYaml(world, alice.home).replace(path.join(alice.home, 'agent.sock'), path.join(alice.home, 'none.sock')));
    const direct = await alice.vertex(['ping', 'bob@b.test', '--count', '1', '--config', alone]);
    expect(direct.stderr).toBe('');
    expect(direct.stdout).toMatch(/^bob@b\.test via tcp: connected to bob\+[a-z0-9-]+@b\.test in \d+ ms\nprobe 1: /);
    const offline = await alice.vertex(['ping', 'nobody@b.test']);
    expect(offline.code).toBe(4);
    expect(offline.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('vertex ping of a service whose program refuses reports the refusal and exits 4; -c counts connects to a service (issue 13, problem 8)', async () => {
    const port = await refusedPort();
    const exposed = await bob.vertex(['expose', 'dead', `127.0.0.1:${port}`, '--allow', '*']);
    expect(exposed.code).toBe(0);
    try {
      const alone = path.join(alice.home, 'alone-dead.yaml');
      fs.writeFileSync(alone, agentYaml(world, alice.home).replace(path.join(alice.home, 'agent.sock'), path.join(alice.home, 'none.sock')));
      // Through the running agent, and with a connection of its own.
      for (const extra of [[], ['--config', alone]]) {
        const r = await alice.vertex(['ping', 'bob@b.test:dead', ...extra]);
        expect(r.code).toBe(4);
        expect(r.stdout).toBe('');
        expect(r.stderr.trim().split('\n')).toHaveLength(1);
        expect(r.stderr).toMatch(/bob@b\.test:dead: the service is exposed, but the program behind it refused the connection/);
        // The caller learns that it refused, not where bob's program lives.
        expect(r.stderr).not.toContain(String(port));
        const json = await alice.vertex(['ping', 'bob@b.test:dead', '--json', ...extra]);
        expect(json.code).toBe(4);
        expect(JSON.parse(json.stdout || json.stderr)).toMatchObject({ error: { code: 'Refused' } });
      }
      // -c with a service: that many connects, each timed.
      const five = await alice.vertex(['ping', 'bob@b.test:echo', '-c', '5']);
      expect(five.code).toBe(0);
      expect(five.stdout).toMatch(/^bob@b\.test:echo via tcp: bob\+[a-z0-9-]+@b\.test accepted 5 connections to the service\n(connect \d: [\d.]+ ms via tcp\n){5}rtt min\/avg\/max /);
      const json = JSON.parse((await alice.vertex(['ping', 'bob@b.test:echo', '-c', '5', '--json'])).stdout) as { rttMs: number[] };
      expect(json.rttMs).toHaveLength(5);
    } finally {
      await bob.vertex(['expose', '--remove', 'dead']);
    }
  });

  it('vertex expose adds to the running agent and --remove takes it away; without an agent it runs in the foreground', async () => {
    const added = await alice.vertex(['expose', 'web', String(web.port)]);
    expect(added.stdout).toMatch(new RegExp(`exposed alice@a\\.test:web -> 127\\.0\\.0\\.1:${web.port} \\(allow only alice@a\\.test \\(any of its devices\\)\\) on the running agent`));
    expect((await status(alice)).exposed.map((e) => `${e.service} ${e.source}`)).toEqual(['web cli']);
    const removed = await alice.vertex(['expose', '--remove', 'web']);
    expect(removed.code).toBe(0);
    expect((await status(alice)).exposed).toEqual([]);
    const again = await alice.vertex(['expose', '--remove', 'web']);
    expect(again.code).toBe(4);

    // carol has no agent: the expose runs in this process until SIGTERM, and alice (allowed) reaches it.
    const carol = await world.user('carol@a.test');
    dirs.push(carol.home.dir);
    fs.writeFileSync(path.join(carol.home.dir, 'agent.yaml'), agentYaml(world, carol.home.dir));
    const fg = spawnClient(alice.argv[0] as string, [...alice.argv.slice(1, -1), carol.home.dir, 'expose', 'echo', `127.0.0.1:${echo.port}`, '--allow', 'alice@a.test']);
    await until('the foreground expose', () => (/expose carol@a\.test:echo -> /.test(fg.output()) ? true : undefined));
    const reply = await run(alice.argv[0] as string, [...alice.argv.slice(1), 'connect', 'carol@a.test:echo'], { input: 'to carol' });
    expect(reply.stdout.toString()).toBe('to carol');
    fg.kill('SIGTERM');
    await new Promise((resolve) => fg.once('close', resolve));
    expect(fg.exitCode).toBe(0);
  });

  it('SIGHUP applies a changed agent.yaml: forwards and exposes change, an open tunnel stays up', async () => {
    const file = path.join(alice.home, 'agent.yaml');
    const original = fs.readFileSync(file, 'utf8');
    try {
      await reloadSteps(file, original);
    } finally {
      fs.writeFileSync(file, original);
    }
  });

  /** Sends SIGHUP and waits for the agent's "reloaded" line; returns the forwards it added (bound addresses). */
  async function reload(): Promise<string[]> {
    const mark = alice.proc.output().length;
    alice.proc.child.kill('SIGHUP');
    const line = await alice.proc.waitFor(/vertex agent: reloaded [^\n]*?: (\{.*\})\n/, undefined, mark);
    return (JSON.parse(line[1] as string) as { forwards: { added: string[] } }).forwards.added;
  }

  async function reloadSteps(file: string, original: string): Promise<void> {
    // Port 0: the agent picks a free port and reports the one it bound.
    fs.writeFileSync(file, `${original}\nforwards:\n  - { listen: "127.0.0.1:0", to: "bob@b.test:echo" }\n`);
    const [first] = await reload();
    expect(first).toMatch(/^127\.0\.0\.1:\d+$/);
    const p1 = portOf(first as string);
    const open = await connectTcp(p1);
    open.write('before ');
    await until('the tunnel through the first forward', async () => ((await status(alice)).tunnels.length === 1 ? true : undefined));

    // Another forward (another loopback address) replaces it, and an expose comes in.
    fs.writeFileSync(file, `${original}\nforwards:\n  - { listen: "127.0.0.2:0", to: "bob@b.test:echo" }\nexpose:\n  - { service: web, target: "127.0.0.1:${web.port}" }\n`);
    const [second] = await reload();
    const p2 = portOf(second as string);
    const s = await status(alice);
    expect(s.forwards.map((f) => f.listen)).toEqual([`127.0.0.2:${p2}`]);
    expect(s.exposed.map((e) => e.service)).toEqual(['web']);
    await expect(connectTcp(p1)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect((await exchange(await connectTcp(p2, '127.0.0.2'), 'new')).toString()).toBe('new');
    expect((await exchange(open, 'after')).toString()).toBe('before after');

    // A broken file is reported and changes nothing.
    fs.writeFileSync(file, `${original}\nforwards: nonsense\n`);
    const mark = alice.proc.output().length;
    alice.proc.child.kill('SIGHUP');
    await alice.proc.waitFor(/config not applied/, undefined, mark);
    expect(alice.proc.output().slice(mark)).toMatch(/agent\.yaml:\d+: forwards: expected a list/);
    // (The CLI reads the same file to find the socket, so put it back before asking.)
    fs.writeFileSync(file, original);
    expect((await status(alice)).forwards.map((f) => f.listen)).toEqual([`127.0.0.2:${p2}`]);
  }

  it('bad input on the command line: usage errors exit 2, no agent is a clear error', async () => {
    const badPort = await alice.vertex(['forward', 'abc', 'bob@b.test:echo']);
    expect(badPort.code).toBe(2);
    expect(badPort.stderr).toMatch(/abc/);
    const badTarget = await alice.vertex(['forward', '9999', 'bob@b.test']);
    expect(badTarget.code).toBe(2);
    expect(badTarget.stderr).toMatch(/user@domain:service/);
    const badService = await alice.vertex(['expose', 'no_such!', '80']);
    expect(badService.code).toBe(2);
    const emptyHome = path.join(bobHome, 'empty-home');
    fs.mkdirSync(emptyHome);
    const noAgent = await run(alice.argv[0] as string, [alice.argv[1] as string, '--home', emptyHome, 'status'], { env: { XDG_RUNTIME_DIR: '', RUNTIME_DIRECTORY: '' } });
    expect(noAgent.code).toBe(1);
    expect(noAgent.stderr).toMatch(/no agent is running \(looked at .*agent\.sock \(control\.socket: auto\)\)/);
  });

  it('SIGTERM stops the agent cleanly: exit 0, socket gone, peers see it offline', async () => {
    const code = await bob.proc.stop('SIGTERM');
    expect(code).toBe(0);
    expect(fs.existsSync(path.join(bobHome, 'agent.sock'))).toBe(false);
    const r = await run('curl', ['-sS', '--max-time', '30', '--socks5-hostname', `127.0.0.1:${alice.socksPort}`, 'http://bob.b.test.q2q/']);
    expect(r.stderr).toMatch(/\(4\)/);
  });
});
