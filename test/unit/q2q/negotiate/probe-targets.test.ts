import { localHost, MAX_PUNCH_TARGETS, probeRefusal, punchTargets, type LocalHost, type ProbeTarget } from '../../../../q2q/negotiate/probe-targets';

const LOCAL: LocalHost = { addresses: ['127.0.0.1', '::1', '192.0.2.10', '2001:db8::10'], broadcasts: ['192.0.2.255'] };

/** What issue 11 forbids: probes to loopback, unspecified, multicast, broadcast or our own host, and more than a few targets. */
function violations(targets: readonly ProbeTarget[]): string[] {
  const bad = targets.filter((t) => probeRefusal(t.host, LOCAL) !== null).map((t) => `${t.host}:${t.port}`);
  if (targets.length > MAX_PUNCH_TARGETS) bad.push(`${targets.length} targets`);
  return bad;
}

const HOSTILE: ProbeTarget[] = [
  '127.0.0.1', '127.8.9.10', '0.0.0.0', '224.0.0.251', '239.255.255.250', '255.255.255.255', '240.0.0.1',
  '192.0.2.10', '192.0.2.255', '::', '::1', 'ff02::1', 'fe80::1', '::ffff:127.0.0.1', '2001:db8::10', '2001:DB8:0::10',
].map((host) => ({ host, port: 22 }));

describe('punch probe targets', () => {
  it('refuses every hostile candidate and keeps ordinary ones', () => {
    for (const t of HOSTILE) expect([t.host, probeRefusal(t.host, LOCAL)]).toEqual([t.host, expect.any(String)]);
    for (const host of ['203.0.113.7', '198.51.100.20', '192.0.2.11', '10.0.0.5', '2001:db8::11']) expect(probeRefusal(host, LOCAL)).toBeNull();
  });

  it('the listener probes none of 16 hostile candidates; the old behaviour (all of them) fails the same check', () => {
    expect(violations(punchTargets(HOSTILE, LOCAL))).toEqual([]);
    expect(punchTargets(HOSTILE, LOCAL)).toEqual([]);
    expect(violations(HOSTILE).length).toBeGreaterThan(0);
  });

  it('keeps at most MAX_PUNCH_TARGETS distinct candidates, in the caller\'s order', () => {
    const many = Array.from({ length: 16 }, (_, i) => ({ host: `203.0.113.${i + 1}`, port: 4000 }));
    const dup = [{ host: '203.0.113.1', port: 4000 }, { host: '203.0.113.1', port: 4000 }, { host: '203.0.113.1', port: 4001 }];
    expect(punchTargets(many, LOCAL)).toEqual(many.slice(0, MAX_PUNCH_TARGETS));
    expect(violations(punchTargets(many, LOCAL))).toEqual([]);
    expect(violations(many)).toEqual(['16 targets']);
    expect(punchTargets(dup, LOCAL)).toEqual([dup[0], dup[2]]);
    expect(punchTargets([{ host: '203.0.113.1', port: 0 }], LOCAL)).toEqual([]);
  });

  it('reads the host\'s addresses and IPv4 directed broadcasts from its interfaces', () => {
    const local = localHost({
      lo: [{ address: '127.0.0.1', netmask: '255.0.0.0', family: 'IPv4', mac: '', internal: true, cidr: '127.0.0.1/8' }],
      eth0: [
        { address: '198.51.100.7', netmask: '255.255.255.0', family: 'IPv4', mac: '', internal: false, cidr: '198.51.100.7/24' },
        { address: '203.0.113.9', netmask: '255.255.255.255', family: 'IPv4', mac: '', internal: false, cidr: '203.0.113.9/32' },
      ],
    });
    expect(local.addresses).toEqual(['127.0.0.1', '198.51.100.7', '203.0.113.9']);
    expect(local.broadcasts).toEqual(['127.255.255.255', '198.51.100.255']);
    expect(probeRefusal('198.51.100.255', local)).not.toBeNull();
    expect(probeRefusal('198.51.100.8', local)).toBeNull();
    // The real host: its own addresses are never targets.
    const real = localHost();
    for (const a of real.addresses) expect(probeRefusal(a, real)).not.toBeNull();
  });
});
