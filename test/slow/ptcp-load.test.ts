/**
 * Slow tier: the full-size load case of test/integration/ptcp/behaviour.test.ts (which runs
 * 200 connections of 128 KB each way in `npm test`). 200 connections of 1 MB each way over one
 * socket pair, byte-exact; under a second `npm test` this took over 120 s.
 */
import { closed, drain, pair, payload, pump, sha256 } from '../integration/ptcp/harness';

const MB = 1_000_000;

describe('ptcp driver under load', () => {
  it('carries 200 concurrent connections over one socket pair, 1 MB each way', async () => {
    const p = await pair();
    try {
      const up = payload(MB);
      const down = payload(MB);
      const serverSides: Promise<unknown>[] = [];
      p.server.listen((s) => {
        serverSides.push(Promise.all([drain(s).then((r) => expect(r.sha256).toBe(sha256(up))), pump(s, down)]));
      });
      const results = await Promise.all(
        Array.from({ length: 200 }, async () => {
          const c = await p.client.connect('127.0.0.1', p.port);
          const [got] = await Promise.all([drain(c), pump(c, up)]);
          await closed(c);
          return got;
        }),
      );
      for (const r of results) expect(r.sha256).toBe(sha256(down));
      expect(serverSides).toHaveLength(200);
      await Promise.all(serverSides);
    } finally {
      await p.close();
    }
  });
});
