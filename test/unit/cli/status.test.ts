import type { AgentStatus } from '../../../agent/daemon';
import { formatStatus } from '../../../cli/commands/status';

function status(nat?: 'easy' | 'hard' | 'unknown'): AgentStatus {
  return {
    identity: 'alice@a.test',
    certificate: { notAfter: '2027-01-01T00:00:00.000Z' },
    server: { state: 'online', server: '127.0.0.1:8788', since: '2026-12-02T10:00:00.000Z', lastError: null },
    reflexive: { tcp: '192.0.2.10:4000', udp: '192.0.2.10:4001', ...(nat ? { nat } : {}) },
    peerListen: '0.0.0.0:4000',
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
});
