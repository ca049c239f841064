/**
 * Issue 11, "what must hold" 5 and 7 (the agent's half): an expose without
 * --allow admits only its owner, on any of the owner's devices; a stranger
 * who registers on a server whose registration is open reaches nothing; and
 * vertex-ping admits only callers some service admits (and the owner),
 * handing out no address to anyone else.
 *
 * Real servers, a real `vertex agent`, `vertex connect` and `vertex ping`;
 * the raw `inbound` goes over an authenticated control connection, as any
 * registered user can send it. Each refusal is set against the behaviour it
 * forbids (the old default `*@domain`, written out) to show the test catches
 * an admission.
 */
import * as fs from 'node:fs';
import { openServerConnection, type ServerConnection } from '../../../q2q/control/server-connection';
import { COMMANDS } from '../../../q2q/control/protocol';
import { createServerResolver } from '../../../q2q/control/discovery';
import type { HomeStore } from '../../../agent/home-store';
import { stopAll } from '../../helpers/cli';
import type { World } from '../../helpers/q2q-world';
import { startAgent, startEcho, vertexFor, type AgentHandle, type Closable } from '../agent/helpers';
import { loginElsewhere, startOpenWorld } from './world';

describe('secure defaults: an expose without --allow admits only its owner', () => {
  let world: World;
  let bob: AgentHandle;
  let echo: Closable;
  let stranger: { home: HomeStore; vertex: AgentHandle['vertex'] };
  let alice: { home: HomeStore; vertex: AgentHandle['vertex'] };
  let bobLaptop: AgentHandle['vertex'];
  const dirs: string[] = [];
  const controls: ServerConnection[] = [];

  beforeAll(async () => {
    echo = await startEcho();
    world = await startOpenWorld();
    const bobUser = await world.user('bob@b.test');
    const strangerUser = await world.user('stranger@b.test');
    const aliceUser = await world.user('alice@a.test');
    const laptop = await loginElsewhere(world, 'bob@b.test');
    dirs.push(bobUser.home.dir, strangerUser.home.dir, aliceUser.home.dir, laptop);
    bob = await startAgent(world, bobUser.home.dir, [
      'expose:',
      `  - { service: svc, target: "127.0.0.1:${echo.port}" }`,
      `  - { service: for-alice, target: "127.0.0.1:${echo.port}", allow: ["alice@a.test"] }`,
    ].join('\n'));
    stranger = { home: strangerUser.home, ...vertexFor(world, strangerUser.home.dir) };
    alice = { home: aliceUser.home, ...vertexFor(world, aliceUser.home.dir) };
    bobLaptop = vertexFor(world, laptop).vertex;
  }, 120_000);

  afterAll(async () => {
    for (const c of controls) c.close();
    await stopAll();
    await echo?.close();
    for (const d of [...dirs, world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  /** A raw inbound as `who`, over its own authenticated control connection to b.test. */
  async function rawInbound(home: HomeStore, address: string, service: string): Promise<{ ok: Record<string, string> } | { code: string }> {
    const identity = home.loadIdentity(address);
    const connection = await openServerConnection({
      domain: 'b.test',
      resolve: createServerResolver({ overrides: world.endpoints }),
      trust: home,
      credentials: { keyPem: identity.keyPem, certPem: identity.certPem },
    });
    controls.push(connection);
    try {
      return { ok: await connection.call(COMMANDS.inbound, { to: 'bob@b.test', service, candidates: '[]', routes: '["tcp","ptcp","relay"]' }) };
    } catch (err) {
      return { code: (err as { code: string }).code };
    }
  }

  it('vertex status and the agent say the default in words', async () => {
    const status = await bob.vertex(['status']);
    expect(status.stdout).toMatch(/bob@b\.test:svc\s+->\s+127\.0\.0\.1:\d+\s+allow only bob@b\.test \(any of its devices\)/);
    const json = JSON.parse((await bob.vertex(['status', '--json'])).stdout) as { exposed: Array<{ service: string; allow: string[] }> };
    expect(json.exposed.find((e) => e.service === 'svc')?.allow).toEqual(['bob@b.test']);
  });

  it('a stranger of the same domain is denied (exit 5); the owner on another device gets through', async () => {
    const denied = await stranger.vertex(['connect', 'bob@b.test:svc'], { input: 'hello' });
    expect(denied.code).toBe(5);
    expect(denied.stdout).toBe('');
    expect(denied.stderr.trim().split('\n')).toHaveLength(1);
    expect(denied.stderr).toMatch(/does not allow stranger@b\.test/);

    const mine = await bobLaptop(['connect', 'bob@b.test:svc'], { input: 'from my laptop' });
    expect(mine.stderr).toBe('');
    expect([mine.code, mine.stdout]).toEqual([0, 'from my laptop']);
  });

  it('the old default written out (*@b.test) lets the same stranger in: the check above can fail', async () => {
    const added = await bob.vertex(['expose', 'domain-wide', String(echo.port), '--allow', '*@b.test']);
    expect(added.code).toBe(0);
    const admitted = await stranger.vertex(['connect', 'bob@b.test:domain-wide'], { input: 'hello' });
    expect([admitted.code, admitted.stdout]).toEqual([0, 'hello']);
    await bob.vertex(['expose', '--remove', 'domain-wide']);
  });

  it('vertex-ping: a caller no service admits is denied and gets no candidates; one that a service admits is answered', async () => {
    const denied = await stranger.vertex(['ping', 'bob@b.test', '--count', '1']);
    expect(denied.code).toBe(5);
    expect(await rawInbound(stranger.home, 'stranger@b.test', 'vertex-ping')).toEqual({ code: 'Denied' });
    expect(await rawInbound(stranger.home, 'stranger@b.test', 'svc')).toEqual({ code: 'Denied' });

    const allowed = await alice.vertex(['ping', 'bob@b.test', '--count', '1']);
    expect(allowed.stderr).toBe('');
    expect(allowed.stdout).toMatch(/^bob@b\.test via \w+: connected to bob\+[a-z0-9-]+@b\.test in \d+ ms\nprobe 1: /);
    // An admitted caller does get addresses: so the Denied answers above are what hid them.
    const answer = await rawInbound(alice.home, 'alice@a.test', 'vertex-ping');
    expect('ok' in answer && JSON.parse(answer.ok.candidates ?? '[]').some((c: string) => /^(tcp|ptcp):/.test(c))).toBe(true);
  });
});
