/**
 * Send-side scoreboard in stream offsets: the queue of segments written by the application
 * and not yet cumulatively acknowledged, with per-segment SACK, loss and transmit state.
 *
 * Data is cut into segments when written, so a retransmission repeats the original
 * boundaries and one SACK block always covers whole segments. Bytes "in flight" (RFC 6675
 * `pipe`) are those sent and neither acknowledged, SACKed nor declared lost.
 *
 * Loss detection is RACK (RFC 8985): a segment is lost once a segment sent after it has been
 * delivered and a reordering window has passed. Segments are also kept on a list ordered by
 * their last transmit time, so each check only looks at the oldest few.
 */
import type { RateTxState } from './delivery-rate';

export interface SendSegment extends RateTxState {
  start: number;
  end: number;
  data: Buffer;
  fin: boolean;
  /** Time of the latest transmission, ms; -1 before the first. */
  sentAt: number;
  sentCount: number;
  sacked: boolean;
  lost: boolean;
  acked: boolean;
  /** Whether its bytes are counted in `inFlight`. */
  counted: boolean;
  /** The latest transmission was a retransmission that is now known to have been needless. */
  prevT: SendSegment | null;
  nextT: SendSegment | null;
  inTimeList: boolean;
}

export interface AckResult {
  /** Bytes newly covered by the cumulative ACK or SACK. */
  newlyDelivered: number;
  /** Bytes newly cumulatively acknowledged (removed from the queue). */
  newlyAcked: number;
  /** Latest transmit time among newly delivered segments, -1 if none. */
  deliveredSentAt: number;
  /** Whether that latest-sent delivered segment had been retransmitted. */
  deliveredWasRetransmit: boolean;
  /** That latest-sent delivered segment (its delivery-rate state gives the rate sample). */
  latest: SendSegment | null;
  /** Whether a FIN segment was cumulatively acknowledged. */
  finAcked: boolean;
}

function makeSegment(start: number, data: Buffer, fin: boolean): SendSegment {
  return {
    start,
    end: start + (fin ? 1 : data.length),
    data,
    fin,
    sentAt: -1,
    sentCount: 0,
    sacked: false,
    lost: false,
    acked: false,
    counted: false,
    prevT: null,
    nextT: null,
    inTimeList: false,
    txDelivered: 0,
    txDeliveredTime: 0,
    txFirstSentTime: 0,
    txAppLimited: false,
  };
}

export class SendScoreboard {
  readonly #mss: number;
  #queue: SendSegment[] = [];
  #head = 0;
  /** Index (into #queue) of the first segment never sent. */
  #next = 0;
  #una: number;
  #writeEnd: number;
  #inFlight = 0;
  #sackedBytes = 0;
  #lostQueue: SendSegment[] = [];
  #timeHead: SendSegment | null = null;
  #timeTail: SendSegment | null = null;
  #finQueued = false;
  #highestSent: number;

  constructor(mss: number, initialOffset = 0) {
    this.#mss = mss;
    this.#una = initialOffset;
    this.#writeEnd = initialOffset;
    this.#highestSent = initialOffset;
  }

  /** Oldest unacknowledged offset. */
  get una(): number {
    return this.#una;
  }

  /** End of everything queued (data and FIN). */
  get writeEnd(): number {
    return this.#writeEnd;
  }

  /** End of the highest segment ever sent. */
  get highestSent(): number {
    return this.#highestSent;
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  get sackedBytes(): number {
    return this.#sackedBytes;
  }

  /** Bytes held (queued and unacknowledged), FIN excluded. */
  get bufferedBytes(): number {
    return Math.max(0, this.#writeEnd - this.#una - (this.#finQueued ? 1 : 0));
  }

  get finQueued(): boolean {
    return this.#finQueued;
  }

  get segmentCount(): number {
    return this.#queue.length - this.#head;
  }

  get hasLost(): boolean {
    this.#trimLost();
    return this.#lostQueue.length > 0;
  }

  get hasUnsent(): boolean {
    return this.#next < this.#queue.length;
  }

  /** Whether everything queued has been acknowledged. */
  get allAcked(): boolean {
    return this.#una === this.#writeEnd;
  }

  /** Appends application data, cut into segments of at most mss bytes. */
  write(data: Buffer): void {
    if (this.#finQueued) throw new Error('ptcp scoreboard: write after fin');
    let off = 0;
    const tail = this.#queue[this.#queue.length - 1];
    if (tail && this.#next < this.#queue.length && tail.sentCount === 0 && tail.data.length < this.#mss) {
      // Coalesce a small unsent tail so many small writes do not become many small datagrams.
      const take = Math.min(this.#mss - tail.data.length, data.length);
      tail.data = Buffer.concat([tail.data, data.subarray(0, take)]);
      tail.end += take;
      off = take;
    }
    while (off < data.length) {
      const take = Math.min(this.#mss, data.length - off);
      this.#queue.push(makeSegment(this.#writeEnd + off, data.subarray(off, off + take), false));
      off += take;
    }
    this.#writeEnd += data.length;
  }

  writeFin(): void {
    if (this.#finQueued) return;
    this.#finQueued = true;
    this.#queue.push(makeSegment(this.#writeEnd, Buffer.alloc(0), true));
    this.#writeEnd += 1;
  }

  #trimLost(): void {
    while (this.#lostQueue.length > 0) {
      const s = this.#lostQueue[0] as SendSegment;
      if (s.lost && !s.acked && !s.sacked) break;
      this.#lostQueue.shift();
    }
  }

  /** The next segment to transmit: a lost one first, else the first never sent. */
  peekNext(): SendSegment | undefined {
    this.#trimLost();
    if (this.#lostQueue.length > 0) return this.#lostQueue[0];
    return this.#queue[this.#next];
  }

  /** The highest-offset segment sent and still outstanding (for a tail-loss probe). */
  lastOutstanding(): SendSegment | undefined {
    for (let i = this.#next - 1; i >= this.#head; i--) {
      const s = this.#queue[i] as SendSegment;
      if (!s.sacked && !s.acked) return s;
    }
    return undefined;
  }

  /** Records a transmission of `seg` (which must be peekNext() or lastOutstanding()). */
  markSent(seg: SendSegment, now: number): void {
    if (seg.lost) {
      seg.lost = false;
      if (this.#lostQueue[0] === seg) this.#lostQueue.shift();
    }
    if (seg.sentCount === 0) {
      this.#next++;
      if (seg.end > this.#highestSent) this.#highestSent = seg.end;
    }
    seg.sentAt = now;
    seg.sentCount++;
    if (!seg.counted) {
      seg.counted = true;
      this.#inFlight += seg.end - seg.start;
    }
    this.#unlinkTime(seg);
    this.#appendTime(seg);
  }

  #appendTime(seg: SendSegment): void {
    seg.prevT = this.#timeTail;
    seg.nextT = null;
    if (this.#timeTail) this.#timeTail.nextT = seg;
    else this.#timeHead = seg;
    this.#timeTail = seg;
    seg.inTimeList = true;
  }

  #unlinkTime(seg: SendSegment): void {
    if (!seg.inTimeList) return;
    if (seg.prevT) seg.prevT.nextT = seg.nextT;
    else this.#timeHead = seg.nextT;
    if (seg.nextT) seg.nextT.prevT = seg.prevT;
    else this.#timeTail = seg.prevT;
    seg.prevT = null;
    seg.nextT = null;
    seg.inTimeList = false;
  }

  #uncount(seg: SendSegment): void {
    if (seg.counted) {
      seg.counted = false;
      this.#inFlight -= seg.end - seg.start;
    }
  }

  /** Index of the first live segment whose end is greater than `offset`. */
  #indexAfter(offset: number): number {
    let lo = this.#head;
    let hi = this.#next;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.#queue[mid] as SendSegment).end <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * Applies a cumulative ACK and SACK ranges (already unwrapped to offsets and validated to
   * lie within [una, highestSent]).
   */
  onAck(cumAck: number, sacks: ReadonlyArray<{ start: number; end: number }>): AckResult {
    const result: AckResult = { newlyDelivered: 0, newlyAcked: 0, deliveredSentAt: -1, deliveredWasRetransmit: false, latest: null, finAcked: false };
    const deliver = (seg: SendSegment): void => {
      if (seg.sentAt > result.deliveredSentAt) {
        result.deliveredSentAt = seg.sentAt;
        result.deliveredWasRetransmit = seg.sentCount > 1;
        result.latest = seg;
      }
    };
    if (cumAck > this.#una) {
      while (this.#head < this.#next) {
        const seg = this.#queue[this.#head] as SendSegment;
        if (seg.end > cumAck) {
          if (seg.start < cumAck && !seg.fin) {
            // A partial acknowledgement: keep the remainder as its own segment.
            const cut = cumAck - seg.start;
            if (seg.counted) this.#inFlight -= cut;
            if (seg.sacked) {
              this.#sackedBytes -= cut;
            } else {
              result.newlyDelivered += cut;
              deliver(seg);
            }
            seg.data = seg.data.subarray(cut);
            seg.start = cumAck;
            result.newlyAcked += cut;
          }
          break;
        }
        const len = seg.end - seg.start;
        if (!seg.sacked) {
          result.newlyDelivered += len;
          deliver(seg);
        } else {
          this.#sackedBytes -= len;
        }
        result.newlyAcked += len;
        if (seg.fin) result.finAcked = true;
        this.#uncount(seg);
        this.#unlinkTime(seg);
        seg.acked = true;
        this.#queue[this.#head] = undefined as unknown as SendSegment;
        this.#head++;
      }
      this.#una = Math.max(this.#una, Math.min(cumAck, this.#highestSent));
      if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
        this.#queue = this.#queue.slice(this.#head);
        this.#next -= this.#head;
        this.#head = 0;
      }
    }
    for (const block of sacks) {
      if (block.end <= this.#una) continue;
      for (let i = this.#indexAfter(block.start); i < this.#next; i++) {
        const seg = this.#queue[i] as SendSegment;
        if (seg.start >= block.end) break;
        if (seg.sacked || seg.start < block.start || seg.end > block.end) continue;
        seg.sacked = true;
        const len = seg.end - seg.start;
        this.#sackedBytes += len;
        result.newlyDelivered += len;
        deliver(seg);
        this.#uncount(seg);
        this.#unlinkTime(seg);
      }
    }
    return result;
  }

  /**
   * RACK loss detection: marks lost every outstanding segment sent before `deliveredSentAt`
   * whose `sentAt + waitMs` has passed. Returns the bytes newly marked lost and, if some
   * segment is waiting for its window, the time to check again.
   */
  detectLosses(now: number, deliveredSentAt: number, waitMs: number): { lostBytes: number; recheckAt: number | null } {
    let lostBytes = 0;
    let seg = this.#timeHead;
    while (seg && seg.sentAt < deliveredSentAt) {
      const nextSeg: SendSegment | null = seg.nextT;
      if (seg.sentAt + waitMs <= now) {
        lostBytes += this.#markLost(seg);
      } else {
        return { lostBytes, recheckAt: seg.sentAt + waitMs };
      }
      seg = nextSeg;
    }
    return { lostBytes, recheckAt: null };
  }

  #markLost(seg: SendSegment): number {
    this.#unlinkTime(seg);
    if (seg.lost || seg.sacked || seg.acked) return 0;
    seg.lost = true;
    this.#uncount(seg);
    this.#insertLost(seg);
    return seg.end - seg.start;
  }

  #insertLost(seg: SendSegment): void {
    // Keep the lost queue in offset order so retransmissions fill the lowest hole first.
    const q = this.#lostQueue;
    let i = q.length;
    while (i > 0 && (q[i - 1] as SendSegment).start > seg.start) i--;
    q.splice(i, 0, seg);
  }

  /** Retransmission timeout: every outstanding, un-SACKed segment is lost. Returns the bytes marked. */
  markAllLost(): number {
    let bytes = 0;
    for (let i = this.#head; i < this.#next; i++) {
      const seg = this.#queue[i] as SendSegment;
      if (!seg.sacked && !seg.lost) bytes += this.#markLost(seg);
    }
    return bytes;
  }

  /** Segment covering `offset`, for tests. */
  segmentAt(offset: number): SendSegment | undefined {
    const i = this.#indexAfter(offset);
    const seg = this.#queue[i];
    return seg && seg.start <= offset ? seg : undefined;
  }
}
