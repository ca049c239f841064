import fc from 'fast-check';
import { ReassemblyBuffer } from '../../../../../q2q/proto/ptcp/reassembly';

/** The naive reference: a map from offset to byte. */
class NaiveReassembly {
  bytes = new Map<number, number>();
  read = 0;
  insert(start: number, data: Buffer): number {
    let added = 0;
    for (let i = 0; i < data.length; i++) {
      const off = start + i;
      if (off >= this.read && !this.bytes.has(off)) {
        this.bytes.set(off, data[i] as number);
        added++;
      }
    }
    return added;
  }
  contiguousEnd(): number {
    let o = this.read;
    while (this.bytes.has(o)) o++;
    return o;
  }
  take(): Buffer {
    const end = this.contiguousEnd();
    const out: number[] = [];
    for (let o = this.read; o < end; o++) {
      out.push(this.bytes.get(o) as number);
      this.bytes.delete(o);
    }
    this.read = end;
    return Buffer.from(out);
  }
  runs(): Array<[number, number]> {
    const keys = [...this.bytes.keys()].filter((k) => k > this.contiguousEnd()).sort((a, b) => a - b);
    const runs: Array<[number, number]> = [];
    for (const k of keys) {
      const last = runs[runs.length - 1];
      if (last && last[1] === k) last[1] = k + 1;
      else runs.push([k, k + 1]);
    }
    return runs;
  }
}

const stream = Buffer.from(Array.from({ length: 400 }, (_, i) => (i * 7 + 3) & 0xff));

describe('ReassemblyBuffer against a naive reference', () => {
  it('agrees on stored bytes, contiguous end, reads and SACK runs for random segments', () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant('insert' as const), start: fc.integer({ min: 0, max: 380 }), len: fc.integer({ min: 1, max: 40 }) }),
      fc.record({ kind: fc.constant('read' as const) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 80 }), (ops) => {
        const real = new ReassemblyBuffer(0);
        const naive = new NaiveReassembly();
        let readReal: Buffer[] = [];
        let readNaive: Buffer[] = [];
        for (const o of ops) {
          if (o.kind === 'insert') {
            const data = stream.subarray(o.start, Math.min(stream.length, o.start + o.len));
            expect(real.insert(o.start, data)).toBe(naive.insert(o.start, data));
          } else {
            readReal = readReal.concat(real.read());
            readNaive.push(naive.take());
          }
          expect(real.contiguousEnd).toBe(naive.contiguousEnd());
          expect(real.bufferedBytes).toBe(naive.bytes.size);
          const runs = real.sackRanges(1000).map((r) => [r.start, r.end]).sort((a, b) => (a[0] as number) - (b[0] as number));
          expect(runs).toEqual(naive.runs());
        }
        expect(Buffer.concat(readReal)).toEqual(Buffer.concat(readNaive));
        expect(Buffer.concat(readReal)).toEqual(stream.subarray(0, real.readOffset));
      }),
      { numRuns: 300 },
    );
  });

  it('reports the block holding the latest segment first', () => {
    const r = new ReassemblyBuffer(0);
    r.insert(100, Buffer.alloc(10));
    r.insert(300, Buffer.alloc(10));
    r.insert(200, Buffer.alloc(10));
    expect(r.sackRanges(4)[0]).toEqual({ start: 200, end: 210 });
    expect(r.sackRanges(2)).toHaveLength(2);
  });

  it('reads at most the budget, splitting a piece', () => {
    const r = new ReassemblyBuffer(0);
    r.insert(0, stream.subarray(0, 100));
    expect(Buffer.concat(r.read(30))).toEqual(stream.subarray(0, 30));
    expect(r.unreadContiguous).toBe(70);
    expect(Buffer.concat(r.read())).toEqual(stream.subarray(30, 100));
  });
});
