/**
 * Issue 4, "what it must show" 1, 2, 4, 5, 6 and 7: real `vertex server`
 * processes for a.test and b.test, real `vertex agent` processes for alice
 * and bob, and the programs users run (curl, ncat, Chromium, plain TCP).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes, createHash } from 'node:crypto';
import { stopAll, tempDir } from '../../helpers/cli';
import { startWorld, type World } from '../../helpers/q2q-world';
import type { AgentStatus } from '../../../agent/daemon';
import { describeWithTools, itWithTools, TOOLS } from '../../helpers/system-tools';
import {
  connectTcp,
  exchange,
  PAGE,
  portOf,
  run,
  spawnClient,
  startAgent,
  startEcho,
  startWeb,
  stopClients,
  until,
  vertexFor,
  type AgentHandle,
  type Closable,
} from './helpers';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describeWithTools('agents with real clients', [TOOLS.curl, TOOLS.ncat], () => {
  let world: World;
  let alice: AgentHandle;
  let bob: AgentHandle;
  let echo: Closable;
  let web: Awaited<ReturnType<typeof startWeb>>;
  let proxy: string;
  const dirs: string[] = [];

  beforeAll(async () => {
    echo = await startEcho();
    web = await startWeb();
    world = await startWorld();
    const aliceUser = await world.user('alice@a.test');
    const bobUser = await world.user('bob@b.test');
    dirs.push(aliceUser.home.dir, bobUser.home.dir);
    bob = await startAgent(world, bobUser.home.dir, `expose:\n  - { service: echo, target: "127.0.0.1:${echo.port}", allow: ["*@a.test"] }`);
    alice = await startAgent(world, aliceUser.home.dir, 'ports: { 7: echo }');
    proxy = `127.0.0.1:${alice.socksPort}`;
    // bob's web page goes online through the control API of his running agent.
    const added = await bob.vertex(['expose', 'http', `127.0.0.1:${web.port}`, '--allow', '*@a.test']);
    expect(added.stderr).toBe('');
    expect(added.stdout).toMatch(/exposed bob@b\.test:http -> 127\.0\.0\.1:\d+ \(allow \*@a\.test\) on the running agent/);
  });

  afterAll(async () => {
    web?.release();
    await stopClients();
    await stopAll();
    await Promise.all([echo?.close(), web?.close()]);
    for (const d of [...dirs, world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  it('1: curl --socks5-hostname fetches bob\'s exposed page by the DNS-safe name (port 80 -> http)', async () => {
    const r = await run('curl', ['-sS', '--max-time', '30', '--socks5-hostname', proxy, 'http://bob.b.test.q2q/']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toBe(PAGE);
    expect(web.hosts).toContain('bob.b.test.q2q');
  });

  it('2: ncat --proxy-type socks5 with the literal bob@b.test reaches the echo service, half-close included', async () => {
    // alice's `ports:` maps 7 to "echo"; ncat ends its side when its input ends and still reads the echo.
    const payload = randomBytes(256 * 1024);
    const r = await run('ncat', ['--proxy', proxy, '--proxy-type', 'socks5', 'bob@b.test', '7'], { input: payload });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(sha(r.stdout)).toBe(sha(payload));
    // Port 9 means the service "9", which bob does not expose: REP 0x05.
    const refused = await run('ncat', ['--proxy', proxy, '--proxy-type', 'socks5', 'bob@b.test', '9'], { input: 'x' });
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/refused/i);
  });

  it('3: a second connect to a service sends its request before the answer; a service withdrawn meanwhile resets that client, the next gets the SOCKS refusal', async () => {
    // Port 8081 means the service "8081" (alice's ports: map has only 7).
    const url = 'http://bob.b.test.q2q:8081/';
    for (const service of ['8081', '8082']) {
      const added = await bob.vertex(['expose', service, `127.0.0.1:${web.port}`, '--allow', '*@a.test']);
      expect(added.code).toBe(0);
    }
    // The first connect waits for bob's answer; the second is early (its GET follows the OPEN).
    for (let i = 0; i < 2; i++) {
      const r = await run('curl', ['-sS', '--max-time', '30', '--socks5-hostname', proxy, url]);
      expect(r.stderr).toBe('');
      expect(r.stdout.toString()).toBe(PAGE);
    }
    // A forward (to another service, whose answers are remembered apart): early too, once answered.
    const forwarding = await alice.vertex(['forward', '0', 'bob@b.test:8082', '--json']);
    expect(forwarding.code).toBe(0);
    const fwdPort = portOf((JSON.parse(forwarding.stdout) as { listen: string }).listen);
    const get = 'GET / HTTP/1.1\r\nHost: bob.b.test.q2q\r\nConnection: close\r\n\r\n';
    for (let i = 0; i < 2; i++) expect((await exchange(await connectTcp(fwdPort), get)).toString()).toContain(PAGE);
    for (const service of ['8081', '8082']) expect((await bob.vertex(['expose', '--remove', service])).code).toBe(0);
    // The forward's next client is reset (an early stream refused), not ended. On a loaded
    // machine the reset can come before this process has seen its connect complete: then the
    // connect itself fails with it.
    await expect(connectTcp(fwdPort).then((s) => exchange(s, get))).rejects.toMatchObject({ code: 'ECONNRESET' });
    // echo and http stay exposed to alice, so the session stays and the next connect is early:
    // curl got its SOCKS success and sent its GET; bob refuses the stream; curl gets a reset,
    // never an end it could take for an empty answer (that would be exit 52). The reset meets
    // curl in its read (56) or, on a loaded machine where the refusal outruns curl's GET, in its
    // send (55): either way the connection was reset, not ended.
    const logFrom = alice.proc.output().length;
    const cut = await run('curl', ['-sS', '--max-time', '30', '--socks5-hostname', proxy, url]);
    expect([55, 56]).toContain(cut.code);
    expect(cut.stderr).toMatch(/reset by peer|broken pipe/i);
    await until('alice logs the refusal', () => /stream refused after its early data/.test(alice.proc.output().slice(logFrom)) || undefined);
    // The next one waits for the answer again: the SOCKS refusal, as without early streams.
    const refused = await run('curl', ['-sS', '--max-time', '30', '--socks5-hostname', proxy, url]);
    expect(refused.code).toBe(97);
    expect(refused.stderr).toMatch(/SOCKS/);
  });

  async function userHome(address: string): Promise<string> {
    const u = await world.user(address);
    dirs.push(u.home.dir);
    return u.home.dir;
  }

  it('4: vertex forward on the running agent, and in the foreground without one: a plain TCP client gets echoed bytes', async () => {
    // Port 0: the agent binds a free port and says which.
    const added = await alice.vertex(['forward', '127.0.0.1:0', 'bob@b.test:echo']);
    expect(added.stderr).toBe('');
    const m = /^forwarding (127\.0\.0\.1:\d+) -> bob@b\.test:echo on the running agent; kept across restarts$/m.exec(added.stdout);
    expect(m).not.toBeNull();
    const port = portOf(m?.[1] ?? '');
    const payload = randomBytes(300_000);
    expect(sha(await exchange(await connectTcp(port), payload))).toBe(sha(payload));
    const removed = await alice.vertex(['forward', '--remove', String(port)]);
    expect(removed.code).toBe(0);
    await expect(connectTcp(port)).rejects.toMatchObject({ code: 'ECONNREFUSED' });

    // erin has no agent: the forward runs in the foreground until SIGTERM.
    const erin = await userHome('erin@a.test');
    fs.writeFileSync(path.join(erin, 'agent.yaml'), fs.readFileSync(path.join(alice.home, 'agent.yaml'), 'utf8').replace(alice.home, erin));
    const { argv } = vertexFor(world, erin);
    const fg = spawnClient(argv[0] as string, [...argv.slice(1), 'forward', '0', 'bob@b.test:echo']);
    const port2 = await until('the foreground forward', () => /forward 127\.0\.0\.1:(\d+) -> bob@b\.test:echo/.exec(fg.output())?.[1]).then(Number);
    expect(fg.output()).toMatch(/in the foreground/);
    expect((await exchange(await connectTcp(port2), 'plain tcp')).toString()).toBe('plain tcp');
    fg.kill('SIGTERM');
    await new Promise((resolve) => fg.once('close', resolve));
    expect(fg.exitCode).toBe(0);
  });

  itWithTools('5: headless Chromium loads bob\'s page through the SOCKS5 proxy', [TOOLS.chromium], async () => {
    const profile = tempDir('chromium');
    dirs.push(profile);
    const r = await run('chromium', [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--user-data-dir=${profile}`, `--proxy-server=socks5://${proxy}`, '--dump-dom', 'http://bob.b.test.q2q/',
    ], { ms: 60_000 });
    expect(r.stdout.toString()).toContain('<h1 id="greeting">hello from bob</h1>');
  }, 90_000);

  it('6: vertex status --json lists the open tunnels of each front-end with their routes', async () => {
    const forwarding = await alice.vertex(['forward', '0', 'bob@b.test:echo', '--json']);
    expect(forwarding.code).toBe(0);
    const fwdPort = portOf((JSON.parse(forwarding.stdout) as { listen: string }).listen);
    const curl = spawnClient('curl', ['-sS', '--max-time', '30', '--socks5-hostname', proxy, 'http://bob.b.test.q2q/slow']);
    const ncat = spawnClient('ncat', ['--proxy', proxy, '--proxy-type', 'socks5', 'bob@b.test', '7']);
    const held = await connectTcp(fwdPort);
    held.write('hold');
    const connect = spawnClient(alice.argv[0] as string, [...alice.argv.slice(1), 'connect', 'bob@b.test:echo']);
    connect.stdin?.write('ping\n');

    const status = await until('four tunnels in alice\'s status', async () => {
      const r = await alice.vertex(['status', '--json']);
      const s = JSON.parse(r.stdout) as AgentStatus;
      return s.tunnels.length >= 4 ? s : undefined;
    });
    expect(status.identity).toBe('alice@a.test');
    expect(status.server.state).toBe('online');
    expect(Date.parse(status.certificate.notAfter)).toBeGreaterThan(Date.now());
    const seen = status.tunnels.map((t) => `${t.kind} ${t.target} ${t.route}`).sort();
    expect(seen).toEqual([
      'connect bob@b.test:echo tcp',
      'forward bob@b.test:echo tcp',
      'socks bob@b.test:echo tcp',
      'socks bob@b.test:http tcp',
    ]);
    for (const t of status.tunnels) {
      expect(t.peer).toBe('bob@b.test');
      expect(t.ageMs).toBeGreaterThanOrEqual(0);
      expect(typeof t.bytesIn).toBe('number');
    }
    const fwd = status.tunnels.find((t) => t.kind === 'forward');
    expect(fwd?.bytesOut).toBe(4);
    // Peer sessions (issue 12): the four tunnels are streams on one session to bob.
    const toBob = (status.sessions ?? []).filter((x) => x.peer === 'bob@b.test' && x.state === 'open');
    expect(toBob).toHaveLength(1);
    expect(toBob[0]).toMatchObject({ role: 'caller', route: 'tcp' });
    expect(toBob[0]?.streams).toBeGreaterThanOrEqual(4);

    const human = await alice.vertex(['status']);
    expect(human.stdout).toMatch(/tunnels\n\s+ID\s+KIND\s+TARGET\s+PEER\s+DEVICE\s+ROUTE\s+AGE\s+IN\s+OUT/);
    expect(human.stdout).toMatch(/forward\s+bob@b\.test:echo\s+bob@b\.test\s+[a-z0-9-]+\s+tcp/);
    expect(human.stdout).toMatch(/sessions\n\s+PEER\s+DEVICE\s+ROLE\s+ROUTE\s+STATE\s+STREAMS\s+AGE\s+IN\s+OUT\s+ID\n\s+bob@b\.test\s+\S+\s+caller\s+tcp\s+open\s+\d+/);
    const bobStatus = JSON.parse((await bob.vertex(['status', '--json'])).stdout) as AgentStatus;
    expect(bobStatus.tunnels.filter((t) => t.kind === 'inbound' && t.peer === 'alice@a.test').length).toBeGreaterThanOrEqual(3);

    web.release();
    held.destroy();
    for (const c of [curl, ncat, connect]) c.kill('SIGTERM');
    await until('the tunnels to close', async () => {
      const s = JSON.parse((await alice.vertex(['status', '--json'])).stdout) as AgentStatus;
      return s.tunnels.length === 0 ? true : undefined;
    });
  });

  describe('7: bad input', () => {
    it('a name that is not a Q2Q name gets REP 0x02 with passthrough off', async () => {
      const r = await run('curl', ['-sS', '--max-time', '30', '--socks5-hostname', proxy, 'http://example.com/']);
      expect(r.code).toBe(97);
      expect(r.stderr).toMatch(/\(2\)/);
    });

    it('an offline peer gets REP 0x04 (host unreachable)', async () => {
      await userHome('carol@b.test');
      // No time bound here (a busy machine): the limits only turn a hang into a failure.
      const r = await run('curl', ['-sS', '--max-time', '60', '--socks5-hostname', proxy, 'http://carol.b.test.q2q/'], { ms: 90_000 });
      expect(r.code).toBe(97);
      expect(r.stderr).toMatch(/\(4\)/);
    });

    it('a wrong SOCKS password is refused per RFC 1929, the right one works', async () => {
      const dave = await startAgent(world, await userHome('dave@a.test'), 'socks: { listen: 127.0.0.1:0, auth: { username: dave, password: s3cret } }');
      const wrong = await run('curl', ['-sS', '--max-time', '30', '--proxy-user', 'dave:wrong', '--socks5-hostname', `127.0.0.1:${dave.socksPort}`, 'http://bob.b.test.q2q/']);
      expect(wrong.code).toBe(97);
      expect(wrong.stderr).toMatch(/User was rejected by the SOCKS5 server/);
      const none = await run('curl', ['-sS', '--max-time', '30', '--socks5-hostname', `127.0.0.1:${dave.socksPort}`, 'http://bob.b.test.q2q/']);
      expect(none.code).toBe(97);
      const right = await run('curl', ['-sS', '--max-time', '30', '--proxy-user', 'dave:s3cret', '--socks5-hostname', `127.0.0.1:${dave.socksPort}`, 'http://bob.b.test.q2q/']);
      expect(right.stderr).toBe('');
      expect(right.stdout.toString()).toBe(PAGE);
    });

    it('garbage in the SOCKS handshake closes that connection and the agent keeps serving', async () => {
      const raw = await connectTcp(alice.socksPort);
      const closed = new Promise<void>((resolve) => {
        raw.on('end', () => resolve());
        raw.on('close', () => resolve());
        raw.on('error', () => undefined);
      });
      raw.resume();
      raw.write('GET / HTTP/1.1\r\nHost: example.com\r\n\r\n');
      await closed;
      raw.destroy();
      const r = await run('curl', ['-sS', '--max-time', '30', '--socks5-hostname', proxy, 'http://bob.b.test.q2q/']);
      expect(r.code).toBe(0);
      expect(r.stdout.toString()).toBe(PAGE);
    });

    it('a config error names the file, the line and the key, and exits 6', async () => {
      const dir = tempDir('badcfg');
      dirs.push(dir);
      const file = path.join(dir, 'agent.yaml');
      fs.writeFileSync(file, 'version: 1\nidentity: alice@a.test\nsocks:\n  listen: nowhere\n');
      const r = await alice.vertex(['agent', '--config', file]);
      expect(r.code).toBe(6);
      expect(r.stderr).toContain(`${file}:4: socks.listen`);
      expect(r.stdout).toBe('');
    });
  });
});
