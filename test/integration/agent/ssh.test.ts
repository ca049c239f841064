/**
 * Issue 4, "what it must show" 3: bob exposes a throw-away real sshd as
 * `ssh`; OpenSSH reaches it with `ProxyCommand vertex connect %h %p`, and
 * scp moves 20 MB through the same ProxyCommand with the same SHA-256 at the
 * far end: once through alice's running agent, once with no agent (the
 * ProxyCommand dials by itself).
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stopAll, tempDir } from '../../helpers/cli';
import { startWorld, type World } from '../../helpers/q2q-world';
import { describeWithTools, TOOLS } from '../../helpers/system-tools';
import { startSshd, type Sshd } from '../../helpers/sshd';
import { run, spawnClient, startAgent, stopClients, until, vertexFor, type AgentHandle } from './helpers';

const FILE_BYTES = 20 * 1024 * 1024;

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A quoted word for ssh's ProxyCommand, which runs through /bin/sh. */
function shellWord(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

describeWithTools('OpenSSH through vertex connect', [TOOLS.ssh, TOOLS.sshd], () => {
  let world: World;
  let bob: AgentHandle;
  let bobHome: string;
  const bobYaml = (): string => `expose:\n  - { service: ssh, target: "127.0.0.1:${sshd.port}", allow: ["alice@a.test"] }`;
  let alice: AgentHandle;
  let aliceHome: string;
  let work: string;
  let sshd: Sshd;
  const dirs: string[] = [];

  beforeAll(async () => {
    work = tempDir('ssh');
    dirs.push(work);
    // A throw-away sshd (TESTING.md) on a port of its own (port 0, read back).
    sshd = await startSshd(work);

    world = await startWorld();
    const bobUser = await world.user('bob@b.test');
    const aliceUser = await world.user('alice@a.test');
    aliceHome = aliceUser.home.dir;
    dirs.push(bobUser.home.dir, aliceHome);
    bobHome = bobUser.home.dir;
    bob = await startAgent(world, bobHome, bobYaml());
    alice = await startAgent(world, aliceHome);
  });

  afterAll(async () => {
    await stopClients();
    await stopAll();
    await sshd?.close();
    for (const d of [...dirs, world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  function sshOptions(proxyArgv: string[]): string[] {
    return [
      ...sshd.clientOptions(),
      '-o', `ProxyCommand=${[...proxyArgv, '--log-level', 'info', 'connect', '%h', '%p'].map(shellWord).join(' ')}`,
    ];
  }

  async function sshAndScp(proxyArgv: string[], via: 'agent' | 'direct'): Promise<void> {
    const opts = sshOptions(proxyArgv);
    const r = await run('ssh', [...opts, '-l', 'root', 'bob.b.test.q2q', 'echo', 'ran-on-$(hostname)'], { ms: 30_000 });
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toMatch(/^ran-on-/);
    // vertex connect says on stderr (which ssh passes through) how it got there.
    expect(r.stderr).toContain(`"via":"${via}"`);

    const file = path.join(work, `payload-${via}`);
    const dest = path.join(work, `received-${via}`);
    const payload = randomBytes(FILE_BYTES);
    fs.writeFileSync(file, payload);
    const scp = await run('scp', [...opts, '-q', file, `root@bob.b.test.q2q:${dest}`], { ms: 60_000 });
    expect(scp.stderr.replace(/^\{.*\}\n/gm, '')).toBe('');
    expect(scp.code).toBe(0);
    expect(sha(fs.readFileSync(dest))).toBe(sha(payload));
  }

  it('ssh runs a command and scp copies 20 MB intact through the running agent', async () => {
    await sshAndScp(alice.argv, 'agent');
    expect(sshd.log()).toMatch(/Accepted publickey for root/);
  }, 90_000);

  it('the same without an agent: vertex connect dials by itself', async () => {
    // A config whose control socket has no agent behind it.
    const alone = path.join(work, 'alone.yaml');
    fs.writeFileSync(alone, fs.readFileSync(path.join(aliceHome, 'agent.yaml'), 'utf8').replace(path.join(aliceHome, 'agent.sock'), path.join(work, 'no-agent.sock')));
    await sshAndScp([...vertexFor(world, aliceHome).argv, '--config', alone], 'direct');
  }, 90_000);

  it('issue 13, problem 2: ssh through ProxyCommand exits when the far agent restarts, and says why', async () => {
    // An interactive-like session: the remote command waits on stdin, which stays open.
    const ssh = spawnClient('ssh', [...sshOptions(alice.argv), '-l', 'root', 'bob.b.test.q2q', 'echo ready; cat']);
    await until('the ssh session to be up', () => (ssh.output().includes('ready') ? true : undefined), 30_000);
    const exited = new Promise<number | null>((resolve) => ssh.once('close', (code) => resolve(code)));
    const started = Date.now();
    await bob.proc.stop('SIGTERM');
    const code = await exited;
    const ms = Date.now() - started;
    process.stdout.write(`ssh exited ${ms} ms after the far agent was told to stop\n`);
    expect(code).toBe(255);
    // The issue's bound is 2 s (measured: about 0.5 s); 10 s is slack for a loaded machine. Before, ssh never exited.
    expect(ms).toBeLessThan(10_000);
    // vertex connect's own line, passed through by ssh.
    expect(ssh.output()).toMatch(/vertex: tunnel to bob@b\.test:ssh broke off: /);
    bob = await startAgent(world, bobHome, bobYaml());
  }, 60_000);

  it('a ProxyCommand to a host that is not a Q2Q name fails at once with a message and exit 5', async () => {
    const r = await run(alice.argv[0] as string, [...alice.argv.slice(1), 'connect', 'example.com', '22'], { ms: 10_000 });
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/not a q2q name/);
  });
});
