import { classifyMapping, mappingMarker, MappingObserver, MAX_NAT_SAMPLES, NAT_SAMPLE_TTL_MS, peerMapping, punchHopeless, type MappingSample } from '../../../../q2q/negotiate/nat-type';

const sample = (server: string, port: number, at: number, address = '203.0.113.66'): MappingSample => ({ server, address, port, at });

describe('classifyMapping', () => {
  const now = 1_000_000;

  it('is unknown with fewer than two servers', () => {
    expect(classifyMapping([], now)).toBe('unknown');
    expect(classifyMapping([sample('203.0.113.10:8788', 40000, now - 10)], now)).toBe('unknown');
    // Two answers from one server say nothing about other destinations.
    expect(classifyMapping([sample('203.0.113.10:8788', 40000, now - 10), sample('203.0.113.10:8788', 40001, now - 5)], now)).toBe('unknown');
  });

  it('is easy when two servers see the same ip:port (MASQUERADE keeps the port)', () => {
    expect(classifyMapping([sample('203.0.113.10:8788', 40000, now - 10), sample('203.0.113.11:8788', 40000, now - 5)], now)).toBe('easy');
  });

  it('is hard when two servers see different ports or addresses (--random-fully)', () => {
    expect(classifyMapping([sample('203.0.113.10:8788', 28404, now - 10), sample('203.0.113.11:8788', 17295, now - 5)], now)).toBe('hard');
    expect(classifyMapping([sample('203.0.113.10:8788', 40000, now - 10), sample('203.0.113.11:8788', 40000, now - 5, '198.51.100.9')], now)).toBe('hard');
  });

  it('a different server port counts as a different destination', () => {
    expect(classifyMapping([sample('203.0.113.10:8788', 1, now - 10), sample('203.0.113.10:8789', 2, now - 5)], now)).toBe('hard');
  });

  it('ignores stale answers and uses the newest answer per server', () => {
    const old = sample('203.0.113.11:8788', 9, now - NAT_SAMPLE_TTL_MS);
    expect(classifyMapping([sample('203.0.113.10:8788', 40000, now - 10), old], now)).toBe('unknown');
    expect(classifyMapping([
      sample('203.0.113.10:8788', 40000, now - 10),
      sample('203.0.113.11:8788', 41000, now - 500),
      sample('203.0.113.11:8788', 40000, now - 20),
    ], now)).toBe('easy');
  });
});

describe('MappingObserver', () => {
  it('replaces a server\'s answer, keeps a bounded number, and forgets on clear', () => {
    const o = new MappingObserver();
    o.record(sample('s1:1', 5, 100));
    o.record(sample('s2:1', 6, 101));
    expect(o.mapping(200)).toBe('hard');
    o.record(sample('s2:1', 5, 150));
    expect(o.mapping(200)).toBe('easy');
    for (let i = 0; i < 3 * MAX_NAT_SAMPLES; i++) o.record(sample(`x${i}:1`, 5, 300 + i));
    expect(o.servers(400).length).toBe(MAX_NAT_SAMPLES);
    o.clear();
    expect(o.mapping(400)).toBe('unknown');
  });
});

describe('markers in the candidate list', () => {
  it('round-trips easy and hard, and says nothing when unknown', () => {
    expect(mappingMarker('unknown')).toEqual([]);
    for (const m of ['easy', 'hard'] as const) {
      expect(peerMapping(JSON.stringify(['ptcp:203.0.113.66:40000', ...mappingMarker(m)]))).toBe(m);
    }
  });

  it('reads unknown from lists without a marker, garbage and non-strings', () => {
    expect(peerMapping(undefined)).toBe('unknown');
    expect(peerMapping('not json')).toBe('unknown');
    expect(peerMapping('{"nat":"hard"}')).toBe('unknown');
    expect(peerMapping(JSON.stringify(['tcp:192.0.2.2:1', 'nat:weird', 'nat:hard:extra', 7]))).toBe('unknown');
  });
});

describe('punchHopeless', () => {
  it('is true only when both ends are hard', () => {
    expect(punchHopeless('hard', 'hard')).toBe(true);
    for (const [a, b] of [['hard', 'easy'], ['easy', 'hard'], ['hard', 'unknown'], ['unknown', 'hard'], ['easy', 'easy']] as const) {
      expect(punchHopeless(a, b)).toBe(false);
    }
  });
});
