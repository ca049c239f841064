import fc from 'fast-check';
import { SendScoreboard } from '../../../../../q2q/proto/ptcp/scoreboard';

const MSS = 10;

/** Naive reference: per-byte delivered state; SACK counts only whole segments inside a block. */
class NaiveBoard {
  acked = 0;
  sacked = new Set<number>();
  ack(cum: number, sacks: Array<{ start: number; end: number }>, segs: Array<[number, number]>): number {
    const delivered = (o: number): boolean => o < this.acked || this.sacked.has(o);
    let newly = 0;
    for (const [s, e] of segs) {
      const nowSacked = sacks.some((b) => b.start <= s && e <= b.end);
      for (let o = s; o < e; o++) {
        const after = o < cum || nowSacked || this.sacked.has(o);
        if (after && !delivered(o)) newly++;
        if (nowSacked) this.sacked.add(o);
      }
    }
    this.acked = Math.max(this.acked, cum);
    return newly;
  }
}

describe('SendScoreboard against a naive reference', () => {
  it('agrees on newly delivered bytes, una and the SACKed total for random ACKs', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 30 }),
        fc.array(fc.record({ cum: fc.nat(300), sacks: fc.array(fc.record({ a: fc.nat(30), b: fc.nat(30) }), { maxLength: 4 }) }), { maxLength: 30 }),
        (nsegs, acks) => {
          const total = nsegs * MSS;
          const sb = new SendScoreboard(MSS, 0);
          sb.write(Buffer.alloc(total));
          let t = 0;
          for (let seg = sb.peekNext(); seg; seg = sb.peekNext()) sb.markSent(seg, t++);
          expect(sb.inFlight).toBe(total);
          const segs: Array<[number, number]> = Array.from({ length: nsegs }, (_, i) => [i * MSS, (i + 1) * MSS]);
          const naive = new NaiveBoard();
          let cum = 0;
          for (const a of acks) {
            cum = Math.max(cum, Math.min(total, a.cum));
            const sacks = a.sacks
              .map((x) => ({ start: Math.min(x.a, x.b) * MSS, end: Math.max(x.a, x.b) * MSS }))
              .filter((b) => b.end > b.start && b.start >= cum && b.end <= total);
            const res = sb.onAck(cum, sacks);
            expect(res.newlyDelivered).toBe(naive.ack(cum, sacks, segs));
            expect(sb.una).toBe(cum);
            let sackedAbove = 0;
            for (const o of naive.sacked) if (o >= cum) sackedAbove++;
            expect(sb.sackedBytes).toBe(sackedAbove);
            expect(sb.inFlight).toBe(total - cum - sackedAbove);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('RACK marks a segment lost only after a later one is delivered and the window passes', () => {
    const sb = new SendScoreboard(MSS, 0);
    sb.write(Buffer.alloc(3 * MSS));
    for (let t = 0, seg = sb.peekNext(); seg; seg = sb.peekNext(), t += 1) sb.markSent(seg, t);
    const res = sb.onAck(0, [{ start: 20, end: 30 }]);
    expect(res.deliveredSentAt).toBe(2);
    expect(sb.detectLosses(2.5, res.deliveredSentAt, 5)).toEqual({ lostBytes: 0, recheckAt: 5 });
    expect(sb.detectLosses(6.5, res.deliveredSentAt, 5).lostBytes).toBe(20);
    expect(sb.peekNext()?.start).toBe(0);
    expect(sb.inFlight).toBe(0);
  });

  it('coalesces small writes into one segment until it is sent', () => {
    const sb = new SendScoreboard(MSS, 0);
    for (let i = 0; i < 5; i++) sb.write(Buffer.from([i, i]));
    expect(sb.segmentCount).toBe(1);
    const seg = sb.peekNext();
    expect(seg?.data).toEqual(Buffer.from([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]));
  });
});
