/**
 * Issue 6, "what it must show": Vertex across real Linux NATs in the
 * network-namespace lab (test/netns/lab.ts). Each scenario asserts the
 * route, the SHA-256 of a transfer both ways and the time to connect, and
 * prints its figures as one JSON line ({"natlab": ...}).
 *
 * Root only: without root or `ip netns` the suite says why and is skipped.
 */
import { randomBytes } from 'node:crypto';
import { labSkipReason, NetnsLab, requireLabTools, type SideName, type SideSpec } from './lab';
import { LabWorld, sha256, type LabAgent } from './lab-world';

const SKIP = labSkipReason();
if (SKIP) process.stderr.write(`NAT lab skipped: ${SKIP}\n`);
const describeLab = SKIP ? describe.skip : describe;

const KiB = 1024;
const TARGET = 'bob@b.test:xfer';

function figure(scenario: string, data: Record<string, unknown>): void {
  process.stderr.write(`${JSON.stringify({ natlab: scenario, ...data })}\n`);
}

describeLab('NAT lab', () => {
  let lab: NetnsLab;
  let world: LabWorld;

  beforeAll(async () => {
    requireLabTools();
    lab = NetnsLab.create();
    world = await LabWorld.start(lab);
  }, 60_000);

  afterAll(async () => {
    await world?.stopAgents();
    await lab?.teardown();
    world?.cleanup();
  });

  interface Sides {
    alice: LabAgent;
    bob: LabAgent;
    service: Awaited<ReturnType<LabWorld['startService']>>;
    served: number;
  }

  /** Builds both sides, starts bob's service and both agents; tears the sides down afterwards. */
  function withSides(specs: Record<SideName, SideSpec>, opts: { bytes?: number; aliceYaml?: string; bobYaml?: string } = {}): () => Sides {
    let sides: Sides | undefined;
    beforeAll(async () => {
      const a = lab.addSide('alice', specs.alice);
      const b = lab.addSide('bob', specs.bob);
      const service = await world.startService(b, opts.bytes ?? 256 * KiB);
      const bob = await world.startAgent(b, `expose:\n  - { service: xfer, target: "127.0.0.1:7000", allow: ["alice@a.test"] }\n${opts.bobYaml ?? ''}`);
      const alice = await world.startAgent(a, opts.aliceYaml ?? '');
      sides = { alice, bob, service, served: 0 };
    }, 60_000);
    afterAll(async () => {
      await world.stopAgents();
      await sides?.service.proc.stop();
      lab.removeSide('alice');
      lab.removeSide('bob');
    });
    return () => {
      if (!sides) throw new Error('sides not built');
      return sides;
    };
  }

  /** One connection through alice's agent; asserts SHA-256 both ways and returns route and time. */
  async function transfer(s: Sides, bytes = 256 * KiB): Promise<{ route: string | null; connectMs: number | null }> {
    const payload = randomBytes(bytes);
    const r = await world.connect(s.alice, TARGET, payload);
    if (r.code !== 0) throw new Error(`vertex connect exited ${r.code}:\n${r.stderr}\n--- alice agent ---\n${s.alice.proc.output().slice(-4000)}\n--- bob agent ---\n${s.bob.proc.output().slice(-4000)}`);
    s.served += 1;
    const report = await s.service.report(s.served);
    expect(report.error).toBeUndefined();
    expect(report.receivedSha).toBe(sha256(payload));
    // A short answer names its length and the log, not just two hashes.
    expect({ bytes: r.received.length, sha: sha256(r.received), log: sha256(r.received) === report.sentSha ? '' : r.stderr })
      .toEqual({ bytes: report.sentBytes, sha: report.sentSha, log: '' });
    return { route: r.route, connectMs: r.connectMs };
  }

  describe('3. easy NAT <-> easy NAT, home-router filtering on both', () => {
    const sides = withSides({ alice: { kind: 'easy' }, bob: { kind: 'easy' } });

    it('punches through: ptcp in 20 out of 20 attempts', async () => {
      const results = [];
      for (let i = 0; i < 20; i++) results.push(await transfer(sides()));
      const times = results.map((r) => r.connectMs ?? -1);
      figure('easy-easy', { routes: results.map((r) => r.route), connectMs: times });
      expect(results.map((r) => r.route)).toEqual(Array(20).fill('ptcp'));
      for (const t of times) expect(t).toBeLessThan(2_000);
    }, 120_000);
  });

  describe('1. public <-> public', () => {
    const sides = withSides({ alice: { kind: 'public' }, bob: { kind: 'public' } });

    it('connects over tcp', async () => {
      const results = [await transfer(sides()), await transfer(sides()), await transfer(sides())];
      figure('public-public', { routes: results.map((r) => r.route), connectMs: results.map((r) => r.connectMs) });
      for (const r of results) {
        expect(r.route).toBe('tcp');
        expect(r.connectMs).toBeLessThan(1_000);
      }
    }, 60_000);
  });

  describe('2. easy NAT alice <-> public bob with a reachable port', () => {
    const sides = withSides({ alice: { kind: 'easy' }, bob: { kind: 'public' } });

    it('connects over tcp', async () => {
      const results = [await transfer(sides()), await transfer(sides()), await transfer(sides())];
      figure('easy-public', { routes: results.map((r) => r.route), connectMs: results.map((r) => r.connectMs) });
      for (const r of results) {
        expect(r.route).toBe('tcp');
        expect(r.connectMs).toBeLessThan(1_000);
      }
    }, 60_000);
  });

  describe('5. hard NAT <-> hard NAT', () => {
    const sides = withSides({ alice: { kind: 'hard' }, bob: { kind: 'hard' } });

    it('goes to the relay, decided within 3 s', async () => {
      const results = [await transfer(sides()), await transfer(sides()), await transfer(sides())];
      figure('hard-hard', { routes: results.map((r) => r.route), connectMs: results.map((r) => r.connectMs) });
      for (const r of results) {
        expect(r.route).toBe('relay');
        expect(r.connectMs).toBeLessThan(3_000);
      }
    }, 60_000);
  });

  describe('6. UDP blocked on alice\'s router', () => {
    const sides = withSides({ alice: { kind: 'easy', blockUdp: true }, bob: { kind: 'easy' } });

    it('falls back to tcp or relay without hanging', async () => {
      const results = [await transfer(sides()), await transfer(sides())];
      figure('udp-blocked', { routes: results.map((r) => r.route), connectMs: results.map((r) => r.connectMs) });
      for (const r of results) {
        expect(['tcp', 'relay']).toContain(r.route);
        expect(r.connectMs).toBeLessThan(5_000);
      }
    }, 60_000);
  });

  describe('4. easy NAT <-> hard NAT', () => {
    const sides = withSides({ alice: { kind: 'easy' }, bob: { kind: 'hard' } });

    it('connects over ptcp or the relay; the rate is reported', async () => {
      const results = [];
      for (let i = 0; i < 10; i++) results.push(await transfer(sides()));
      const ptcp = results.filter((r) => r.route === 'ptcp').length;
      figure('easy-hard', { routes: results.map((r) => r.route), connectMs: results.map((r) => r.connectMs), ptcpRate: ptcp / results.length });
      for (const r of results) {
        expect(['ptcp', 'relay']).toContain(r.route);
        expect(r.connectMs).toBeLessThan(3_000);
      }
    }, 90_000);
  });
});
