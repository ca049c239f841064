/**
 * Receive-side reassembly in stream offsets (the connection unwraps 32-bit sequence numbers
 * before calling in). Holds every byte received but not yet handed to the application: the
 * in-order part waiting for a paused reader and the out-of-order part above a hole. Pieces
 * are kept sorted and non-overlapping; only bytes not already held are stored.
 */

interface Piece {
  start: number;
  end: number;
  data: Buffer;
}

export interface OffsetRange {
  start: number;
  end: number;
}

export class ReassemblyBuffer {
  #pieces: Piece[] = [];
  #read: number;
  #contiguous: number;
  #buffered = 0;
  #lastInserted = -1;

  constructor(initialOffset = 0) {
    this.#read = initialOffset;
    this.#contiguous = initialOffset;
  }

  /** Offset of the next byte the application will get. */
  get readOffset(): number {
    return this.#read;
  }

  /** End of the data received without holes (the cumulative ACK point). */
  get contiguousEnd(): number {
    return this.#contiguous;
  }

  /** Bytes held, in order or not. */
  get bufferedBytes(): number {
    return this.#buffered;
  }

  /** Bytes held that are in order but not yet read. */
  get unreadContiguous(): number {
    return this.#contiguous - this.#read;
  }

  get pieceCount(): number {
    return this.#pieces.length;
  }

  /** Highest offset held (exclusive), or the contiguous end when nothing is out of order. */
  get highestEnd(): number {
    const last = this.#pieces[this.#pieces.length - 1];
    return last ? Math.max(last.end, this.#contiguous) : this.#contiguous;
  }

  /** Index of the first piece whose end is greater than `offset`. */
  #firstEndingAfter(offset: number): number {
    let lo = 0;
    let hi = this.#pieces.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.#pieces[mid] as Piece).end <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Stores `data` at `start`; returns how many bytes were new (0 means a complete duplicate). */
  insert(start: number, data: Buffer): number {
    let s = Math.max(start, this.#contiguous);
    const end = start + data.length;
    if (end <= s) return 0;
    this.#lastInserted = start;
    const pieces = this.#pieces;
    const last = pieces[pieces.length - 1];
    // Fast path: appending after everything held.
    if (!last || s >= last.end) {
      this.#add(pieces.length, s, end, data.subarray(s - start));
      this.#advance();
      return end - s;
    }
    let added = 0;
    let i = this.#firstEndingAfter(s);
    while (s < end) {
      const next = pieces[i];
      if (!next || next.start >= end) {
        this.#add(i, s, end, data.subarray(s - start, end - start));
        added += end - s;
        break;
      }
      if (next.start > s) {
        this.#add(i, s, next.start, data.subarray(s - start, next.start - start));
        added += next.start - s;
        i++;
      }
      s = next.end;
      i++;
    }
    if (added > 0) this.#advance();
    return added;
  }

  #add(index: number, start: number, end: number, data: Buffer): void {
    this.#pieces.splice(index, 0, { start, end, data });
    this.#buffered += end - start;
  }

  #advance(): void {
    // Pieces below #contiguous are in order already; find the first piece at or above it.
    let i = this.#firstEndingAfter(this.#contiguous);
    for (;;) {
      const p = this.#pieces[i];
      if (!p || p.start > this.#contiguous) break;
      this.#contiguous = p.end;
      i++;
    }
  }

  /** Pops in-order data, at most `maxBytes` (whole pieces, the last one split if needed). */
  read(maxBytes = Infinity): Buffer[] {
    const out: Buffer[] = [];
    let budget = maxBytes;
    let n = 0;
    const pieces = this.#pieces;
    while (n < pieces.length && budget > 0) {
      const p = pieces[n] as Piece;
      if (p.start !== this.#read || p.start >= this.#contiguous) break;
      const len = p.end - p.start;
      if (len <= budget) {
        out.push(p.data);
        budget -= len;
        this.#read = p.end;
        this.#buffered -= len;
        n++;
      } else {
        out.push(p.data.subarray(0, budget));
        p.data = p.data.subarray(budget);
        p.start += budget;
        this.#read = p.start;
        this.#buffered -= budget;
        budget = 0;
      }
    }
    if (n > 0) pieces.splice(0, n);
    return out;
  }

  /**
   * Out-of-order runs above the contiguous end, merged, at most `max` of them: the run
   * holding the most recently inserted data first (RFC 2018 section 4), then the highest.
   */
  sackRanges(max: number): OffsetRange[] {
    const runs: OffsetRange[] = [];
    let i = this.#firstEndingAfter(this.#contiguous);
    for (; i < this.#pieces.length; i++) {
      const p = this.#pieces[i] as Piece;
      const prev = runs[runs.length - 1];
      if (prev && prev.end === p.start) prev.end = p.end;
      else runs.push({ start: p.start, end: p.end });
    }
    if (runs.length === 0 || max <= 0) return [];
    const out: OffsetRange[] = [];
    const recent = runs.findIndex((r) => r.start <= this.#lastInserted && this.#lastInserted < r.end);
    if (recent >= 0) out.push(runs[recent] as OffsetRange);
    for (let j = runs.length - 1; j >= 0 && out.length < max; j--) {
      if (j !== recent) out.push(runs[j] as OffsetRange);
    }
    return out;
  }
}
