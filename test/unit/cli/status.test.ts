import type { AgentStatusReply as AgentStatus } from '../../../agent/control-protocol';
import { formatStatus } from '../../../cli/commands/status';

function status(nat?: 'easy' | 'hard' | 'unknown', devices: Partial<AgentStatus['devices']> = {}): AgentStatus {
  return {
    identity: 'alice@a.test',
    device: 'laptop',
    devices: { online: ['laptop'], conflicts: [], moreConflicts: 0, replacedBy: null, ...devices },
    certificate: { notAfter: '2027-01-01T00:00:00.000Z' },
    server: { state: 'online', server: '127.0.0.1:8788', since: '2026-12-02T10:00:00.000Z', lastError: null },
    reflexive: { tcp: '192.0.2.10:4000', udp: '192.0.2.10:4001', ...(nat ? { nat } : {}) },
    peerListen: '0.0.0.0:4000',
    receive: null,
    socks: null,
    control: null,
    exposed: [],
    forwards: [],
    tunnels: [],
  };
}

describe('vertex status text', () => {
  it('says what kind of NAT the agent is behind and what that means for punching', () => {
    const now = Date.parse('2026-12-02T10:00:00.000Z');
    expect(formatStatus(status('easy'), now)).toContain('udp 192.0.2.10:4001, NAT easy (one mapping for every destination: punching works)');
    expect(formatStatus(status('hard'), now)).toMatch(/NAT hard \(.*relay\)/);
    expect(formatStatus(status('unknown'), now)).toContain('NAT unknown');
    expect(formatStatus(status(), now)).not.toContain('NAT');
  });

  it('says in words when a service admits only its owner, and spells out *', () => {
    const exposed = (allow: string[]): AgentStatus => ({
      ...status(),
      exposed: [{ service: 'web', address: 'alice@a.test:web', target: '127.0.0.1:80', allow, source: 'cli' }],
    });
    expect(formatStatus(exposed(['alice@a.test']))).toContain('allow only alice@a.test (any of its devices)');
    expect(formatStatus(exposed(['*']))).toContain('allow * (any user of any domain)');
    expect(formatStatus(exposed(['*@a.test', 'bob@b.test']))).toContain('allow *@a.test, bob@b.test');
  });

  it('names the device, the other devices online, and the services they share', () => {
    const now = Date.parse('2026-12-02T10:00:00.000Z');
    expect(formatStatus(status(), now)).toContain('device       laptop (the only device of alice@a.test online)\n');
    const shared = formatStatus(status(undefined, {
      online: ['homeserver', 'laptop'],
      conflicts: [{ service: 'ssh', devices: ['homeserver', 'laptop'], chosen: 'homeserver' }],
    }), now);
    expect(shared).toContain('device       laptop (also online: homeserver)\n');
    expect(shared).toMatch(/conflicts {4}.*first device by name\n {4}ssh {2}on homeserver, laptop {2}alice@a\.test:ssh -> homeserver {2}this device: alice\+laptop@a\.test:ssh/);
    const chosen = formatStatus(status(undefined, {
      online: ['laptop', 'pi'], conflicts: [{ service: 'ssh', devices: ['laptop', 'pi'], chosen: 'laptop' }], moreConflicts: 2,
    }), now);
    expect(chosen).toContain('alice@a.test:ssh -> laptop (this device)');
    expect(chosen).toContain('(and 2 more)');
    expect(formatStatus(status(undefined, { online: [], replacedBy: '192.0.2.7:5000' }), now))
      .toContain('device       laptop (replaced by a newer session from 192.0.2.7:5000: not online as this device)');
  });

  it('lists peer sessions with route, streams, bytes and age', () => {
    const now = Date.parse('2026-12-02T10:00:00.000Z');
    expect(formatStatus(status(), now)).toContain('sessions     (none)');
    const text = formatStatus({
      ...status(),
      sessions: [{ id: '0123456789abcdef', peer: 'bob@b.test', device: 'laptop', role: 'caller', route: 'ptcp', state: 'open', streams: 3, bytesIn: 2048, bytesOut: 10, ageMs: 90_000 }],
    }, now);
    const line = text.split('\n').find((l) => l.includes('bob@b.test'));
    expect(line).toMatch(/bob@b\.test\s+laptop\s+caller\s+ptcp\s+open\s+3\s+1m\s?30s\s+2(\.0)? ?Ki?B\s+10 ?B\s+01234567/);
  });
});
