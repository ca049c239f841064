/**
 * Issue 13, "one agent per identity and machine", files:
 *
 * - bob's agent receives by itself (`receive:` in agent.yaml, with its
 *   directory and allow list): alice sends from her machine, where her own
 *   agent runs, and `vertex send` goes through that agent (its log records
 *   the tunnel); `vertex status` shows the receiver; a reload turns it off
 *   (sending then fails with exit 4) and on again with another allow list
 *   (alice is then denied, exit 5);
 * - `vertex receive` beside bob's agent goes through it: no second device
 *   goes online (before, it was `<device>-receive`), the files land in the
 *   receive's directory while it runs, and agent.yaml's `receive:` is back
 *   once it exits.
 *
 * On the code before this, `receive:` was an unknown key (bob's agent did
 * not start), send and receive ran nodes of their own.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AgentStatus } from '../../../agent/daemon';
import { startVertex, stopAll, tempDir } from '../../helpers/cli';
import { sha256, startWorld, type World } from '../../helpers/q2q-world';
import { agentYaml, startAgent, until, type AgentHandle } from './helpers';

describe('files through the agents', () => {
  let world: World;
  let alice: AgentHandle;
  let bob: AgentHandle;
  let inbox: string;
  let work: string;
  const dirs: string[] = [];

  async function status(agent: AgentHandle): Promise<AgentStatus> {
    const r = await agent.vertex(['status', '--json']);
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout) as AgentStatus;
  }

  function makeFile(name: string, bytes = 200_000): string {
    const file = path.join(work, name);
    fs.writeFileSync(file, randomBytes(bytes));
    return file;
  }

  async function reloadBob(extra: string): Promise<void> {
    fs.writeFileSync(path.join(bob.home, 'agent.yaml'), agentYaml(world, bob.home, 'device: homeserver\n' + extra));
    const from = bob.proc.output().length;
    bob.proc.child.kill('SIGHUP');
    await bob.proc.waitFor(/reloaded /, undefined, from);
  }

  beforeAll(async () => {
    world = await startWorld();
    const a = await world.user('alice@a.test');
    const b = await world.user('bob@b.test');
    work = tempDir('files');
    inbox = path.join(work, 'inbox', 'bob');
    dirs.push(a.home.dir, b.home.dir, work);
    alice = await startAgent(world, a.home.dir, 'device: desk');
    bob = await startAgent(world, b.home.dir, `device: homeserver\nreceive: { dir: ${JSON.stringify(inbox)}, allow: ["alice@a.test"] }`);
  }, 60_000);

  afterAll(async () => {
    await stopAll();
    for (const d of [...dirs, world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  it('the agent receives by itself into receive.dir; send goes through the sender\'s agent; status shows both', async () => {
    const before = await status(bob);
    expect(before.receive).toMatchObject({ by: 'agent.yaml', dir: fs.realpathSync(inbox), allow: ['alice@a.test'], received: 0 });
    expect(fs.statSync(inbox).mode & 0o777).toBe(0o700);
    expect((await bob.vertex(['status'])).stdout).toMatch(new RegExp(`receive {6}into ${fs.realpathSync(inbox).replace(/[/.]/g, '\\$&')} \\(allow alice@a\\.test; from agent\\.yaml\\); 0 received`));

    const file = makeFile('report.bin');
    const logFrom = alice.proc.output().length;
    const sent = await alice.vertex(['send', file, 'bob@b.test', '--json'], { timeoutMs: 60_000 });
    expect(sent.stderr).not.toMatch(/vertex: /);
    expect(sent.code).toBe(0);
    const event = JSON.parse(sent.stdout.trim().split('\n').pop() as string) as Record<string, unknown>;
    expect(event).toMatchObject({ event: 'sent', to: 'bob@b.test', via: 'agent' });
    // alice's agent dialled it: its log has the tunnel.
    await alice.proc.waitFor(/tunnel open.*bob@b\.test:file-transfer|bob@b\.test:file-transfer.*tunnel open/, undefined, logFrom);
    expect(sha256(fs.readFileSync(path.join(inbox, 'report.bin')))).toBe(sha256(fs.readFileSync(file)));
    const after = await until('bob\'s agent to count the transfer', async () => {
      const s = await status(bob);
      return s.receive?.received === 1 ? s : undefined;
    });
    expect(after.receive).toMatchObject({ failed: 0, active: 0 });
  }, 90_000);

  it('a reload turns receiving off (exit 4 for the sender) and on again with another allow list (exit 5 for alice)', async () => {
    await reloadBob('');
    expect((await status(bob)).receive).toBeNull();
    const file = makeFile('second.bin', 1000);
    const off = await alice.vertex(['send', file, 'bob@b.test'], { timeoutMs: 60_000 });
    expect(off.code).toBe(4);
    expect(off.stderr).toMatch(/vertex receive/);

    await reloadBob(`receive: { dir: ${JSON.stringify(inbox)}, allow: ["carol@a.test"] }`);
    expect((await status(bob)).receive).toMatchObject({ by: 'agent.yaml', allow: ['carol@a.test'] });
    const denied = await alice.vertex(['send', file, 'bob@b.test'], { timeoutMs: 60_000 });
    expect(denied.code).toBe(5);
    expect(fs.existsSync(path.join(inbox, 'second.bin'))).toBe(false);

    await reloadBob(`receive: { dir: ${JSON.stringify(inbox)}, allow: ["*@a.test"] }`);
    expect((await alice.vertex(['send', file, 'bob@b.test'], { timeoutMs: 60_000 })).code).toBe(0);
    expect(fs.existsSync(path.join(inbox, 'second.bin'))).toBe(true);
  }, 120_000);

  it('vertex receive beside the agent goes through it: no second device, files land in its DIR, agent.yaml\'s receive is back after', async () => {
    const mine = path.join(work, 'mine');
    fs.mkdirSync(mine);
    const receive = startVertex([...world.resolveArgs, '--home', bob.home, 'receive', mine, '--yes', '--from', 'alice@a.test', '--once', '--json']);
    const listening = await receive.waitFor(/\{"event":"listening".*\}/);
    expect(JSON.parse(listening[0])).toMatchObject({ address: 'bob@b.test', device: 'homeserver', via: 'agent' });

    const during = await status(bob);
    expect(during.receive).toMatchObject({ by: 'vertex receive', allow: ['alice@a.test'] });
    expect(during.devices.online).toEqual(['homeserver']);
    expect(during.server.state).toBe('online');
    // A second one is refused while the first is attached.
    const second = await bob.vertex(['receive', mine, '--yes']);
    expect(second.code).toBe(2);
    expect(second.stderr).toMatch(/another `vertex receive` is already attached/);

    const file = makeFile('for-the-terminal.bin');
    const sent = await alice.vertex(['send', file, 'bob@b.test', '--json'], { timeoutMs: 60_000 });
    expect(sent.code).toBe(0);
    expect(await until('vertex receive --once to exit', () => (receive.child.exitCode !== null ? receive.child.exitCode : undefined))).toBe(0);
    expect(receive.output()).toMatch(/"event":"received","from":"alice@a\.test"/);
    expect(sha256(fs.readFileSync(path.join(mine, 'for-the-terminal.bin')))).toBe(sha256(fs.readFileSync(file)));
    expect(fs.existsSync(path.join(inbox, 'for-the-terminal.bin'))).toBe(false);

    // Detached: the agent's own receiver takes offers again.
    await until('the agent to take the offers again', async () => ((await status(bob)).receive?.by === 'agent.yaml' ? true : undefined));
    const again = makeFile('back-to-the-agent.bin', 1000);
    expect((await alice.vertex(['send', again, 'bob@b.test'], { timeoutMs: 60_000 })).code).toBe(0);
    expect(fs.existsSync(path.join(inbox, 'back-to-the-agent.bin'))).toBe(true);
    expect((await status(bob)).devices.online).toEqual(['homeserver']);
  }, 120_000);

  it('Ctrl-C stops a vertex receive attached to the agent with exit 130, and the agent takes the offers again', async () => {
    const mine = path.join(work, 'interrupted');
    fs.mkdirSync(mine);
    const receive = startVertex([...world.resolveArgs, '--home', bob.home, 'receive', mine, '--yes', '--from', 'alice@a.test']);
    await receive.waitFor(/through the agent/);
    expect((await status(bob)).receive?.by).toBe('vertex receive');
    expect(await receive.stop('SIGINT')).toBe(130);
    expect(receive.output()).toContain('vertex: SIGINT, stopping');
    await until('the agent to take the offers again', async () => ((await status(bob)).receive?.by === 'agent.yaml' ? true : undefined));
  }, 60_000);

  it('receive.max_files in agent.yaml bounds one offer; the sender is told which limit, never where the files go', async () => {
    await reloadBob(`receive: { dir: ${JSON.stringify(inbox)}, allow: ["alice@a.test"], max_files: 2 }`);
    expect((await status(bob)).receive).toMatchObject({ by: 'agent.yaml', limits: { maxFiles: 2, maxNameBytes: 1_048_576 } });
    const three = ['one.bin', 'two.bin', 'three.bin'].map((n) => makeFile(n, 1000));
    const refused = await alice.vertex(['send', ...three, 'bob@b.test'], { timeoutMs: 60_000 });
    expect(refused.code).toBe(5);
    expect(refused.stderr).toMatch(/the offer has 3 files; this receiver takes at most 2 in one offer/);
    for (const n of ['one.bin', 'two.bin', 'three.bin']) expect(fs.existsSync(path.join(inbox, n))).toBe(false);
    expect((await alice.vertex(['send', ...three.slice(0, 2), 'bob@b.test'], { timeoutMs: 60_000 })).code).toBe(0);

    // The same name again: refused, and the sender hears of "the receiving directory", not bob's path.
    const again = await alice.vertex(['send', three[0] as string, 'bob@b.test'], { timeoutMs: 60_000 });
    expect(again.code).toBe(5);
    expect(again.stderr).toMatch(/"one\.bin" already exists in the receiving directory/);
    expect(again.stderr).not.toContain(work);
    expect(bob.proc.output()).toContain(fs.realpathSync(inbox));
  }, 120_000);
});
