/**
 * CertStatusCache (server/cert-status.ts): how long another domain's answer
 * about its certificates is believed, on an injected clock. The cross-domain
 * bound in docs/security.md rests on these rules.
 */
import { CertStatusCache, DEFAULT_CERT_STATUS_TTL_MS, parseCertStatusRequest, PerSourceLimit } from '../../../server/cert-status';
import { vertexError } from '../../../q2q/errors';

function issuer() {
  const revoked = new Set<string>();
  let up = true;
  const asked: string[][] = [];
  return {
    revoked, asked,
    down: () => { up = false; },
    up: () => { up = true; },
    ask: async (_domain: string, serials: string[]) => {
      asked.push(serials);
      if (!up) throw vertexError('ServerUnavailable', 'connect ECONNREFUSED 127.0.0.1:1');
      return serials.filter((s) => revoked.has(s));
    },
  };
}

describe('CertStatusCache', () => {
  it('believes a good answer for ttl, then asks again: a revocation is seen at most ttl after it was made', async () => {
    let now = 0;
    const b = issuer();
    const cache = new CertStatusCache({ ask: b.ask, ttlMs: 30_000, now: () => now });
    expect([...await cache.revoked('b.test', ['abc'])]).toEqual([]);
    b.revoked.add('abc');
    now = 29_999;
    expect([...await cache.revoked('b.test', ['abc'])]).toEqual([]);
    expect(b.asked).toHaveLength(1);
    now = 30_000;
    expect([...await cache.revoked('b.test', ['abc'])]).toEqual(['abc']);
    expect(b.asked).toHaveLength(2);
  });

  it('keeps a revoked answer for good, also when the issuer goes away', async () => {
    let now = 0;
    const b = issuer();
    b.revoked.add('abc');
    const cache = new CertStatusCache({ ask: b.ask, ttlMs: 1_000, now: () => now });
    expect([...await cache.revoked('b.test', ['abc'])]).toEqual(['abc']);
    b.down();
    now = 1_000_000;
    expect([...await cache.revoked('b.test', ['abc'])]).toEqual(['abc']);
    expect(b.asked).toHaveLength(1);
  });

  it('fails closed: past ttl with the issuer unreachable, the answer is ServerUnavailable, never "good"', async () => {
    let now = 0;
    const b = issuer();
    const cache = new CertStatusCache({ ask: b.ask, ttlMs: 1_000, now: () => now });
    await cache.revoked('b.test', ['abc']);
    b.down();
    now = 500;
    expect([...await cache.revoked('b.test', ['abc'])]).toEqual([]);
    now = 1_000;
    await expect(cache.revoked('b.test', ['abc'])).rejects.toMatchObject({ code: 'ServerUnavailable' });
    b.up();
    expect([...await cache.revoked('b.test', ['abc'])]).toEqual([]);
  });

  it('counts only serials it asked about, normalised, and shares one question between concurrent callers', async () => {
    const b = issuer();
    const cache = new CertStatusCache({ ask: async (d, serials) => { await b.ask(d, serials); return ['0ABC', 'def', 'not hex']; } });
    const [x, y] = await Promise.all([cache.revoked('b.test', ['00abc', '123']), cache.revoked('b.test', ['abc', '123'])]);
    expect([...x]).toEqual(['abc']);
    expect([...y]).toEqual(['abc']);
    expect(b.asked).toEqual([['abc', '123']]);
    // 'def' was never asked about: the issuer's extra claim is not recorded.
    expect(b.asked).toHaveLength(1);
    expect(DEFAULT_CERT_STATUS_TTL_MS).toBeLessThanOrEqual(30_000);
  });

  it('gathers the questions of many callers at once into one call per 256 serials (a burst of one domain\'s users)', async () => {
    const b = issuer();
    b.revoked.add('7');
    const cache = new CertStatusCache({ ask: b.ask });
    const answers = await Promise.all(Array.from({ length: 300 }, (_, i) => cache.revoked('b.test', [(i + 1).toString(16)])));
    expect(b.asked.map((a) => a.length)).toEqual([256, 44]);
    expect(answers.map((a) => [...a]).filter((a) => a.length > 0)).toEqual([['7']]);
  });

  it('a failed question fails every caller waiting on it, and nothing is left unhandled', async () => {
    const b = issuer();
    b.down();
    const cache = new CertStatusCache({ ask: b.ask });
    const results = await Promise.allSettled([cache.revoked('b.test', ['1']), cache.revoked('b.test', ['2', '1'])]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect(b.asked).toEqual([['1', '2']]);
  });

  it('asks in batches of at most 256 serials', async () => {
    const b = issuer();
    const cache = new CertStatusCache({ ask: b.ask });
    await cache.revoked('b.test', Array.from({ length: 600 }, (_, i) => (i + 1).toString(16)));
    expect(b.asked.map((a) => a.length)).toEqual([256, 256, 88]);
  });
});

describe('cert-status requests and rate', () => {
  it('parses at most 256 {domain, serial} entries with hex serials', () => {
    expect(parseCertStatusRequest('[{"domain":"B.test","serial":"00AB"}]')).toEqual([{ domain: 'b.test', serial: 'ab' }]);
    for (const bad of ['', 'x', '{}', '[{"domain":"b.test"}]', '[{"domain":"b.test","serial":"zz"}]', JSON.stringify(Array(257).fill({ domain: 'b.test', serial: '1' }))]) {
      expect(() => parseCertStatusRequest(bad)).toThrow(expect.objectContaining({ code: 'BadRequest' }));
    }
  });

  it('limits questions per source address with a token bucket', () => {
    let now = 0;
    const limit = new PerSourceLimit({ perSecond: 2, burst: 3, now: () => now });
    expect([1, 2, 3, 4].map(() => limit.take('192.0.2.1'))).toEqual([true, true, true, false]);
    expect(limit.take('192.0.2.2')).toBe(true);
    now = 500;
    expect(limit.take('192.0.2.1')).toBe(true);
    expect(limit.take('192.0.2.1')).toBe(false);
  });
});
