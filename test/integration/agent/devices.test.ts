/**
 * Issue 13, "several machines per user": bob runs an agent on his laptop
 * (agent.yaml `device: laptop`) and one on his home server (`--device
 * homeserver`), each logged in with its own key and certificate and each
 * exposing its own real sshd and web page as `ssh` and `http`; only the
 * laptop exposes `echo`. Both are online together, and alice reaches:
 *
 * - each device by name: ssh config `Host *.q2q` with bob--laptop.b.test.q2q
 *   and bob--homeserver.b.test.q2q, the literal bob+laptop@b.test as a
 *   ProxyCommand target, Chromium and curl through SOCKS;
 * - an unqualified name: `echo` (one device has it) reaches that device;
 *   `ssh` and `http` (both have them) reach the first device by name,
 *   homeserver, and both agents' `vertex status` show the conflict.
 *
 * Then `vertex receive` runs as bob beside the laptop's agent, in the same
 * home, without taking it offline; and a node that takes over a device's name
 * leaves the old one saying so in its status instead of silently offline, and
 * the old one is back by itself once the other has gone.
 *
 * On the code before devices, the second of bob's sessions took the first
 * offline (server/broker.ts kept one session per address): the first test
 * fails there (shown by putting that broker back, see the closing notes).
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AgentStatus } from '../../../agent/daemon';
import type { PingResult } from '../../../agent/ping';
import { runVertex, startVertex, stopAll, tempDir } from '../../helpers/cli';
import { PASSWORD, sha256, startWorld, type World } from '../../helpers/q2q-world';
import { startSshd, type Sshd } from '../../helpers/sshd';
import { describeWithTools, itWithTools, TOOLS } from '../../helpers/system-tools';
import {
  run, shellWord, spawnClient, startAgent, startEcho, startWeb, stopClients, until, vertexFor,
  type AgentHandle, type Closable,
} from './helpers';

const page = (device: string) => `<!doctype html><html><head><title>${device}</title></head><body><h1 id="greeting">hello from bob's ${device}</h1></body></html>\n`;

describeWithTools('several machines per user', [TOOLS.ssh, TOOLS.sshd, TOOLS.curl, TOOLS.ncat], () => {
  let world: World;
  let laptop: AgentHandle;
  let homeserver: AgentHandle;
  let alice: AgentHandle;
  let sshdLaptop: Sshd;
  let sshdHome: Sshd;
  let webLaptop: Awaited<ReturnType<typeof startWeb>>;
  let webHome: Awaited<ReturnType<typeof startWeb>>;
  let echo: Closable;
  let work: string;
  let sshConfig: string;
  const dirs: string[] = [];

  /** A new home for bob on another machine: `vertex login` gives it its own key and certificate. */
  async function bobLogsIn(): Promise<string> {
    const home = tempDir('home');
    dirs.push(home);
    const r = await runVertex([...world.resolveArgs, '--home', home, 'login', 'bob@b.test', '--password-stdin'], { input: PASSWORD });
    if (r.code !== 0) throw new Error(`login bob@b.test: ${r.stderr}`);
    return home;
  }

  async function status(agent: AgentHandle): Promise<AgentStatus> {
    const r = await agent.vertex(['status', '--json']);
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout) as AgentStatus;
  }

  /** Runs `echo $SSH_CONNECTION` over ssh and returns the port of the sshd that answered. */
  async function sshdPortVia(args: string[]): Promise<number> {
    const r = await run('ssh', [...args, 'echo', '$SSH_CONNECTION'], { ms: 30_000 });
    expect(r.stderr.replace(/^\{.*\}\n/gm, '')).toBe('');
    expect(r.code).toBe(0);
    // client-ip client-port server-ip server-port
    return Number(r.stdout.toString().trim().split(' ')[3]);
  }

  beforeAll(async () => {
    work = tempDir('devices');
    dirs.push(work);
    for (const d of ['sshd-laptop', 'sshd-homeserver']) fs.mkdirSync(path.join(work, d));
    sshdLaptop = await startSshd(path.join(work, 'sshd-laptop'));
    sshdHome = await startSshd(path.join(work, 'sshd-homeserver'));
    webLaptop = await startWeb(page('laptop'));
    webHome = await startWeb(page('homeserver'));
    echo = await startEcho();

    world = await startWorld();
    const bobUser = await world.user('bob@b.test');
    const aliceUser = await world.user('alice@a.test');
    dirs.push(bobUser.home.dir, aliceUser.home.dir);
    const serverHome = await bobLogsIn();

    const allowAlice = 'allow: ["alice@a.test"]';
    laptop = await startAgent(world, bobUser.home.dir, [
      'device: laptop',
      'expose:',
      `  - { service: ssh, target: "127.0.0.1:${sshdLaptop.port}", ${allowAlice} }`,
      `  - { service: http, target: "127.0.0.1:${webLaptop.port}", ${allowAlice} }`,
      `  - { service: echo, target: "127.0.0.1:${echo.port}", ${allowAlice} }`,
    ].join('\n'));
    homeserver = await startAgent(world, serverHome, [
      'expose:',
      `  - { service: ssh, target: "127.0.0.1:${sshdHome.port}", ${allowAlice} }`,
      `  - { service: http, target: "127.0.0.1:${webHome.port}", ${allowAlice} }`,
    ].join('\n'), ['--device', 'homeserver']);
    alice = await startAgent(world, aliceUser.home.dir, 'ports: { 7: echo, 2222: ssh }');

    sshConfig = path.join(work, 'ssh_config');
    fs.writeFileSync(sshConfig, [
      'Host *.q2q',
      `    ProxyCommand ${[...alice.argv, 'connect', '%h', '%p'].map(shellWord).join(' ')}`,
      '    User root',
      `    IdentityFile ${sshdLaptop.userKey}`,
      `    IdentityFile ${sshdHome.userKey}`,
      '    IdentitiesOnly yes',
      '    BatchMode yes',
      `    UserKnownHostsFile ${path.join(work, 'known_hosts')}`,
      '    StrictHostKeyChecking accept-new',
      '    LogLevel ERROR',
      '',
    ].join('\n'));
  }, 120_000);

  afterAll(async () => {
    webLaptop?.release();
    webHome?.release();
    await stopClients();
    await stopAll();
    await Promise.all([webLaptop?.close(), webHome?.close(), echo?.close(), sshdLaptop?.close(), sshdHome?.close()]);
    for (const d of [...dirs, world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  it("both devices stay online together: each one's own service answers, and each status names its device, the other one, and the names they share", async () => {
    // The laptop came online first; the home server's session must not take it offline.
    // A name only the laptop exposes reaches the laptop, though the home server sorts first.
    const payload = randomBytes(64 * 1024);
    const r = await run(alice.argv[0] as string, [...alice.argv.slice(1), '--log-level', 'info', 'connect', 'bob@b.test:echo'], { input: payload });
    expect(r.stderr).not.toMatch(/^vertex: /m);
    expect(r.code).toBe(0);
    expect(sha256(r.stdout)).toBe(sha256(payload));
    expect(r.stderr).toContain('"device":"laptop"');

    // The laptop learns of the home server by a push from the server, not by asking.
    const laptopStatus = await until('the laptop to see the home server online', async () => {
      const s = await status(laptop);
      return s.devices.online.length === 2 ? s : undefined;
    });
    const homeStatus = await status(homeserver);
    for (const [s, device] of [[laptopStatus, 'laptop'], [homeStatus, 'homeserver']] as const) {
      expect(s.identity).toBe('bob@b.test');
      expect(s.device).toBe(device);
      expect(s.server.state).toBe('online');
      expect(s.devices).toEqual({
        online: ['homeserver', 'laptop'],
        conflicts: [
          { service: 'http', devices: ['homeserver', 'laptop'], chosen: 'homeserver' },
          { service: 'ssh', devices: ['homeserver', 'laptop'], chosen: 'homeserver' },
        ],
        moreConflicts: 0,
        replacedBy: null,
      });
    }
    const text = (await laptop.vertex(['status'])).stdout;
    expect(text).toContain('device       laptop (also online: homeserver)');
    expect(text).toMatch(/conflicts {4}.*\n {4}http {2}on homeserver, laptop {2}bob@b\.test:http -> homeserver {2}this device: bob\+laptop@b\.test:http\n {4}ssh /);
    expect((await homeserver.vertex(['status'])).stdout).toMatch(/bob@b\.test:ssh -> homeserver \(this device\)/);
  });

  it('ssh reaches each device by name from ssh config (Host *.q2q), and the unqualified name reaches the first by name', async () => {
    const cfg = ['-F', sshConfig];
    expect(await sshdPortVia([...cfg, 'bob--laptop.b.test.q2q'])).toBe(sshdLaptop.port);
    expect(await sshdPortVia([...cfg, 'bob--homeserver.b.test.q2q'])).toBe(sshdHome.port);
    expect(await sshdPortVia([...cfg, 'BOB--Laptop.b.test.q2q'])).toBe(sshdLaptop.port);
    // ssh and http are exposed by both: "homeserver" < "laptop".
    expect(await sshdPortVia([...cfg, 'bob.b.test.q2q'])).toBe(sshdHome.port);
    // alice's ports: map applies to the device forms too (2222 -> ssh).
    expect(await sshdPortVia([...cfg, '-p', '2222', 'bob--laptop.b.test.q2q'])).toBe(sshdLaptop.port);
    // The literal form, as a ProxyCommand target and as a host with a port.
    // (ssh's own host name is only a name for known_hosts here: the ProxyCommand has the target.)
    const literal = (target: string[], alias: string) => [...cfg, '-o', `ProxyCommand=${[...alice.argv, 'connect', ...target].map(shellWord).join(' ')}`, alias];
    expect(await sshdPortVia(literal(['bob+laptop@b.test:ssh'], 'laptop.literal.q2q'))).toBe(sshdLaptop.port);
    expect(await sshdPortVia(literal(['bob+laptop@b.test', '22'], 'laptop.literal.q2q'))).toBe(sshdLaptop.port);
    expect(await sshdPortVia(literal(['bob+homeserver@b.test:ssh'], 'homeserver.literal.q2q'))).toBe(sshdHome.port);
    expect(sshdLaptop.log()).toMatch(/Accepted publickey for root/);
    expect(sshdHome.log()).toMatch(/Accepted publickey for root/);

    // A device that is not online, or does not expose the service: exit 4 and one line that names it.
    const offline = await run(alice.argv[0] as string, [...alice.argv.slice(1), 'connect', 'bob+phone@b.test:ssh']);
    expect(offline.code).toBe(4);
    expect(offline.stderr).toContain('bob+phone@b.test is not online');
    const notExposed = await run(alice.argv[0] as string, [...alice.argv.slice(1), 'connect', 'bob--homeserver.b.test.q2q', '7']);
    expect(notExposed.code).toBe(4);
    expect(notExposed.stderr).toContain('bob+homeserver@b.test does not expose "echo"');
  }, 120_000);

  itWithTools('Chromium and curl through SOCKS reach the device the DNS-safe name picks; ncat takes the literal form', [TOOLS.chromium], async () => {
    const proxy = `127.0.0.1:${alice.socksPort}`;
    const profile = tempDir('chromium');
    dirs.push(profile);
    const chromium = await run('chromium', [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--user-data-dir=${profile}`, `--proxy-server=socks5://${proxy}`, '--dump-dom', 'http://bob--laptop.b.test.q2q/',
    ], { ms: 60_000 });
    expect(chromium.stdout.toString()).toContain("<h1 id=\"greeting\">hello from bob's laptop</h1>");
    expect(webLaptop.hosts).toContain('bob--laptop.b.test.q2q');

    const curl = async (url: string) => {
      const r = await run('curl', ['-sS', '--max-time', '10', '--socks5-hostname', proxy, url]);
      expect(r.stderr).toBe('');
      return r.stdout.toString();
    };
    expect(await curl('http://bob--homeserver.b.test.q2q/')).toBe(page('homeserver'));
    expect(await curl('http://bob.b.test.q2q/')).toBe(page('homeserver'));
    expect(await curl('http://bob--laptop.b.test.q2q/')).toBe(page('laptop'));

    const payload = randomBytes(32 * 1024);
    const ncat = await run('ncat', ['--proxy', proxy, '--proxy-type', 'socks5', 'bob+laptop@b.test', '7'], { input: payload });
    expect(ncat.stderr).toBe('');
    expect(sha256(ncat.stdout)).toBe(sha256(payload));
    // A device that does not expose echo: SOCKS refuses (REP 0x05), as for any service not exposed.
    const refused = await run('ncat', ['--proxy', proxy, '--proxy-type', 'socks5', 'bob+homeserver@b.test', '7'], { input: 'x' });
    expect(refused.code).not.toBe(0);
  }, 120_000);

  it('vertex ping and the tunnels in vertex status show the device that answered', async () => {
    const ping = async (target: string) => {
      const r = await alice.vertex(['ping', target, '--count', '1', '--json']);
      expect(r.stderr).toBe('');
      return JSON.parse(r.stdout) as PingResult;
    };
    expect(await ping('bob+laptop@b.test')).toMatchObject({ target: 'bob+laptop@b.test', peer: 'bob@b.test', device: 'laptop' });
    expect(await ping('bob@b.test')).toMatchObject({ target: 'bob@b.test', device: 'homeserver' });
    expect((await alice.vertex(['ping', 'bob+laptop@b.test', '--count', '1'])).stdout).toMatch(/^bob\+laptop@b\.test via \w+: connected to bob\+laptop@b\.test in /);

    // Two tunnels held open: one to each device.
    const toLaptop = spawnClient(alice.argv[0] as string, [...alice.argv.slice(1), 'connect', 'bob@b.test:echo']);
    toLaptop.stdin?.write('hold\n');
    const toHome = spawnClient('curl', ['-sS', '--max-time', '30', '--socks5-hostname', `127.0.0.1:${alice.socksPort}`, 'http://bob--homeserver.b.test.q2q/slow']);
    const aliceStatus = await until('both tunnels in alice\'s status', async () => {
      const s = await status(alice);
      return s.tunnels.length >= 2 ? s : undefined;
    });
    expect(aliceStatus.tunnels.map((t) => `${t.target} ${t.peer} ${t.device}`).sort()).toEqual([
      'bob+homeserver@b.test:http bob@b.test homeserver',
      'bob@b.test:echo bob@b.test laptop',
    ]);
    const text = (await alice.vertex(['status'])).stdout;
    expect(text).toMatch(/connect\s+bob@b\.test:echo\s+bob@b\.test\s+laptop\s+tcp/);
    expect(text).toMatch(/socks\s+bob\+homeserver@b\.test:http\s+bob@b\.test\s+homeserver\s+tcp/);
    // The listener's side names the caller's device too.
    const inbound = (await status(laptop)).tunnels.find((t) => t.kind === 'inbound' && t.target === 'bob@b.test:echo');
    expect(inbound).toMatchObject({ peer: 'alice@a.test', device: aliceStatus.device });

    webHome.release();
    toLaptop.kill('SIGTERM');
    toHome.kill('SIGTERM');
    await until('the tunnels to close', async () => ((await status(alice)).tunnels.length === 0 ? true : undefined));
  }, 60_000);

  it('vertex receive runs beside the laptop\'s agent, in the same home, without taking it offline', async () => {
    const inbox = path.join(work, 'inbox');
    fs.mkdirSync(inbox);
    const receive = startVertex([...world.resolveArgs, '--home', laptop.home, 'receive', inbox, '--yes', '--from', 'alice@a.test', '--once', '--json']);
    await receive.waitFor(/"event":"listening"/);
    const cfg = ['-F', sshConfig];
    // While it runs: the laptop agent's own services answer, by device and by a name only it exposes.
    expect(await sshdPortVia([...cfg, 'bob--laptop.b.test.q2q'])).toBe(sshdLaptop.port);
    const echoed = await run(alice.argv[0] as string, [...alice.argv.slice(1), 'connect', 'bob@b.test:echo'], { input: 'still here' });
    expect(echoed.stdout.toString()).toBe('still here');
    expect((await status(laptop)).server.state).toBe('online');

    const file = path.join(work, 'report.txt');
    fs.writeFileSync(file, randomBytes(100_000).toString('hex'));
    const sent = await alice.vertex(['send', file, 'bob@b.test', '--json'], { timeoutMs: 60_000 });
    expect(sent.code).toBe(0);
    expect(await receive.stop()).toBe(0);
    expect(sha256(fs.readFileSync(path.join(inbox, 'report.txt')))).toBe(sha256(fs.readFileSync(file)));

    // After it exits: still online, still reachable.
    const after = await status(laptop);
    expect(after.server.state).toBe('online');
    expect(after.devices.replacedBy).toBeNull();
    expect(await sshdPortVia([...cfg, 'bob--laptop.b.test.q2q'])).toBe(sshdLaptop.port);
  }, 120_000);

  it("a node that takes over a device's name leaves that device saying so, without taking turns, and it is back by itself once the other has gone", async () => {
    const elsewhere = await bobLogsIn();
    const inbox = path.join(work, 'inbox-2');
    fs.mkdirSync(inbox);
    const usurper = startVertex([...world.resolveArgs, '--home', elsewhere, 'receive', inbox, '--yes', '--device', 'homeserver', '--json']);
    await usurper.waitFor(/"event":"listening"/);
    const logFrom = homeserver.proc.output().length;
    const replaced = await until('the home server agent to say it was replaced', async () => {
      const s = await status(homeserver);
      return s.devices.replacedBy !== null ? s : undefined;
    });
    expect(replaced.server.state).not.toBe('online');
    expect(replaced.server.lastError).toMatch(/^replaced: a newer session \(from 127\.0\.0\.1:\d+\) listens as bob\+homeserver@b\.test; this node listens again once it has gone/);
    expect((await homeserver.vertex(['status'])).stdout).toMatch(/device {7}homeserver \(replaced by a newer session from 127\.0\.0\.1:\d+/);
    // It asks again, but only for a free device: refused, and the receive keeps the name.
    await homeserver.proc.waitFor(/device still taken by the session that replaced this one/, undefined, logFrom);
    expect(usurper.output()).not.toContain('"event":"failed"');
    // The home server's ssh is gone with it, so the unqualified name now reaches the laptop
    // (whose host key is not the one ssh saw under that name before).
    expect(await sshdPortVia(['-F', sshConfig, '-o', `UserKnownHostsFile=${path.join(work, 'known_hosts-2')}`, 'bob.b.test.q2q'])).toBe(sshdLaptop.port);
    expect((await status(laptop)).server.state).toBe('online');

    expect(await usurper.stop()).toBe(0);
    // Its next try (reconnect backoff: 1, 2, 4, 8 s ...) finds the device free.
    const back = await until('the home server agent to be online again', async () => {
      const s = await status(homeserver);
      return s.server.state === 'online' && s.devices.replacedBy === null ? s : undefined;
    }, 60_000);
    expect(back.devices.online).toEqual(['homeserver', 'laptop']);
    expect(await sshdPortVia(['-F', sshConfig, 'bob--homeserver.b.test.q2q'])).toBe(sshdHome.port);
  }, 120_000);
});
