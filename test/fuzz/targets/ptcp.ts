/**
 * Fuzz target: PTCP segments (q2q/wire/ptcp-segment.ts) and the connection
 * machine (q2q/proto/ptcp/connection.ts).
 *
 * An input whose first byte is even is one datagram: it must decode to a
 * segment that encodes back to exactly the same bytes, or be refused with
 * PtcpDecode. An odd first byte makes the rest a program for two connected
 * machines on a manual clock: deliver, drop, duplicate and reorder the
 * segments in flight, let time pass, write, end, pause reads, abort, and
 * inject forged segments (a real one with a field changed) or raw datagrams.
 * Nothing may throw; errors the machines report must be typed; what a side
 * delivers is a prefix of what the other wrote (unless forged data was
 * injected toward it); buffers and timers stay bounded and sane.
 */
import { isVertexError, type VertexError } from '../../../q2q/errors';
import { PtcpConnection, type PtcpAction, type PtcpConnectionOptions } from '../../../q2q/proto/ptcp/connection';
import {
  decodeSegment,
  encodeSegment,
  FLAG_ACK,
  FLAG_FIN,
  FLAG_KEEPALIVE,
  FLAG_RST,
  FLAG_SYN,
  PTCP_WINDOW_SHIFT,
  type PtcpSegment,
} from '../../../q2q/wire/ptcp-segment';
import { ByteReader, invariant, rngFrom, type FuzzTarget, type Rng } from '../engine';

export interface PtcpImpl {
  decode: (buf: Buffer) => PtcpSegment;
  connection: (opts: PtcpConnectionOptions) => PtcpConnection;
}

export const REAL_PTCP: PtcpImpl = {
  decode: decodeSegment,
  connection: (opts) => new PtcpConnection(opts),
};

/** Small buffers and segments, so a short program reaches full windows, losses and timeouts. */
const TUNABLES = { mss: 200, receiveBufferBytes: 4096, sendBufferBytes: 4096, initialRtoMs: 100, minRtoMs: 50, delayedAckMs: 10, keepaliveMs: 2_000, idleTimeoutMs: 6_000, connectTimeoutMs: 3_000, timeWaitMs: 500 };
const MACHINE_ERRORS = new Set(['PtcpReset', 'PtcpIdle', 'PtcpConnectTimeout']);
const MAX_QUEUE = 512;
const MAX_OPS = 400;

/** The byte at stream offset i of a side's writes: checkable without keeping what was written. */
const streamByte = (side: number, i: number) => (i * 31 + 7 + side * 101) & 0xff;

function normalise(seg: PtcpSegment): PtcpSegment {
  return { ...seg, window: (seg.window >>> PTCP_WINDOW_SHIFT) << PTCP_WINDOW_SHIFT };
}

function sameSegment(a: PtcpSegment, b: PtcpSegment): boolean {
  return a.flags === b.flags && a.srcId === b.srcId && a.dstId === b.dstId && a.seq === b.seq && a.ack === b.ack &&
    a.tsVal === b.tsVal && a.tsEcr === b.tsEcr && a.window === b.window && a.payload.equals(b.payload) &&
    a.sacks.length === b.sacks.length && a.sacks.every((s, i) => s.start === b.sacks[i]!.start && s.end === b.sacks[i]!.end);
}

const counters = { datagrams: 0, programs: 0, ops: 0, segmentsDecoded: 0 };

/** Decodes a datagram; it must re-encode to the same bytes. Throws PtcpDecode as it is. */
function decodeDatagram(impl: PtcpImpl, bytes: Buffer): PtcpSegment {
  counters.segmentsDecoded++;
  let seg: PtcpSegment;
  try {
    seg = impl.decode(bytes);
  } catch (err) {
    invariant(isVertexError(err, 'PtcpDecode'), `decodeSegment threw ${String(err)}`);
    throw err;
  }
  invariant(encodeSegment(seg).equals(bytes), 'a decoded segment does not encode back to its bytes');
  return seg;
}

interface Side {
  index: number;
  conn: PtcpConnection;
  /** Segments on their way to the other side. */
  out: PtcpSegment[];
  written: number;
  delivered: number;
  /** Forged or raw segments were injected toward this side: its data is no longer checkable. */
  tainted: boolean;
  paused: boolean;
  timerAt: number | null;
  errors: string[];
  closed: boolean;
}

function runProgram(impl: PtcpImpl, program: Buffer): string {
  const r = new ByteReader(program);
  const rng: Rng = rngFrom(r.u32());
  const random = (n: number) => rng.bytes(n);
  let now = 1_000;
  const make = (index: number): Side => ({
    index,
    conn: impl.connection({ localId: 1 + index * 1000 + (r.u8() % 100), random, ...TUNABLES }),
    out: [], written: 0, delivered: 0, tainted: false, paused: false, timerAt: null, errors: [], closed: false,
  });
  const a = make(0);
  const b = make(1);
  const other = (s: Side) => (s === a ? b : a);
  let last: PtcpSegment | null = null;

  const apply = (s: Side, actions: PtcpAction[]) => {
    invariant(actions.length < 20_000, `one poll returned ${actions.length} actions`);
    for (const action of actions) {
      switch (action.type) {
        case 'send': {
          // Through the codec, as the driver does.
          const wire = encodeSegment(action.segment);
          const back = decodeDatagram(impl, wire);
          invariant(sameSegment(back, normalise(action.segment)), 'a segment the machine sent does not survive encode/decode');
          s.out.push(back);
          last = back;
          if (s.out.length > MAX_QUEUE) s.out.shift();
          break;
        }
        case 'data':
          if (!s.tainted) {
            for (let i = 0; i < action.data.length; i++) {
              invariant(action.data[i] === streamByte(other(s).index, s.delivered + i), `side ${s.index} delivered a wrong byte at offset ${s.delivered + i}`);
            }
          }
          s.delivered += action.data.length;
          invariant(s.tainted || s.delivered <= other(s).written, `side ${s.index} delivered ${s.delivered} bytes of ${other(s).written} written`);
          break;
        case 'timer':
          invariant(action.at === null || Number.isFinite(action.at), `timer at ${action.at}`);
          s.timerAt = action.at;
          break;
        case 'error':
          invariant(isVertexError(action.error) && MACHINE_ERRORS.has((action.error as VertexError).code), `machine error ${String(action.error)}`);
          s.errors.push((action.error as VertexError).code);
          break;
        case 'closed':
          s.closed = true;
          break;
        case 'connected':
        case 'end':
        case 'drain':
          break;
        default: {
          const never: never = action;
          throw new Error(`unknown action ${JSON.stringify(never)}`);
        }
      }
    }
    const stats = s.conn.stats();
    invariant(stats.receiveBuffered <= 2 * TUNABLES.receiveBufferBytes, `side ${s.index} buffers ${stats.receiveBuffered} received bytes`);
    invariant(stats.sendBuffered <= s.written, `side ${s.index} holds ${stats.sendBuffered} bytes to send of ${s.written} written`);
  };
  const poll = () => {
    apply(a, a.conn.poll(now));
    apply(b, b.conn.poll(now));
  };
  const deliver = (to: Side, seg: PtcpSegment) => {
    if (to.conn.state === 'idle') {
      // The driver accepts a bare SYN for a connection it does not know.
      if ((seg.flags & (FLAG_SYN | FLAG_ACK | FLAG_RST)) === FLAG_SYN) to.conn.accept(seg, now);
      return;
    }
    to.conn.handleSegment(seg, now);
  };
  const fireTimers = () => {
    for (const s of [a, b]) {
      for (let i = 0; i < 100 && s.timerAt !== null && s.timerAt <= now; i++) {
        s.timerAt = null;
        s.conn.handleTimer(now);
        apply(s, s.conn.poll(now));
      }
    }
  };

  a.conn.connect(now);
  poll();
  counters.programs++;
  for (let ops = 0; ops < MAX_OPS && !r.done; ops++) {
    counters.ops++;
    const op = r.u8() % 18;
    switch (op) {
      case 0: case 1: {
        const from = op === 0 ? a : b;
        const seg = from.out.shift();
        if (seg) deliver(other(from), seg);
        break;
      }
      case 2: case 3:
        (op === 2 ? a : b).out.shift();
        break;
      case 4: {
        const seg = a.out[0];
        if (seg) deliver(b, seg);
        break;
      }
      case 5: case 6: {
        const q = (op === 5 ? a : b).out;
        if (q.length >= 2) [q[0], q[1]] = [q[1] as PtcpSegment, q[0] as PtcpSegment];
        break;
      }
      case 7:
        now += 1 + r.u8() * 4;
        fireTimers();
        break;
      case 8: case 9: {
        const s = op === 8 ? a : b;
        const n = 1 + r.u8() * 8;
        if ((s.conn.state === 'established' || s.conn.state === 'close-wait') && !s.conn.sendBufferFull) {
          const data = Buffer.allocUnsafe(n);
          for (let i = 0; i < n; i++) data[i] = streamByte(s.index, s.written + i);
          s.conn.write(data);
          s.written += n;
        }
        break;
      }
      case 10: case 11:
        (op === 10 ? a : b).conn.end();
        break;
      case 12: case 13: {
        const s = op === 12 ? a : b;
        s.paused = !s.paused;
        s.conn.setReadPaused(s.paused);
        break;
      }
      case 14: {
        // A real segment with one field changed, toward either side.
        const base = last as PtcpSegment | null;
        if (!base) break;
        const to = r.u8() & 1 ? a : b;
        const field = r.u8() % 9;
        const v = r.u32();
        const forged: PtcpSegment = { ...base, sacks: [...base.sacks] };
        if (field === 0) forged.seq = v;
        else if (field === 1) forged.ack = v;
        else if (field === 2) forged.flags = v & (FLAG_SYN | FLAG_ACK | FLAG_FIN | FLAG_RST | FLAG_KEEPALIVE);
        else if (field === 3) forged.window = (v & 0xffff) << PTCP_WINDOW_SHIFT;
        else if (field === 4) forged.sacks = [...forged.sacks, { start: v, end: (v + (r.u16() << 4)) >>> 0 }].slice(-4);
        else if (field === 5) forged.seq = (forged.seq + (v & 0xffff) - 0x8000) >>> 0;
        else if (field === 6) forged.ack = (forged.ack + (v & 0xffff) - 0x8000) >>> 0;
        else if (field === 7) forged.payload = Buffer.alloc(v % 1500, 0x5a);
        else forged.tsEcr = v;
        to.tainted = true;
        deliver(to, forged);
        break;
      }
      case 15: {
        const raw = r.take(r.u8());
        const to = r.u8() & 1 ? a : b;
        let seg: PtcpSegment | null = null;
        try {
          seg = decodeDatagram(impl, raw);
        } catch (err) {
          if (!isVertexError(err, 'PtcpDecode')) throw err;
        }
        if (seg) {
          to.tainted = true;
          deliver(to, seg);
        }
        break;
      }
      case 16:
        (r.u8() & 1 ? a : b).conn.abort(now);
        break;
      default:
        // Long quiet: keepalives, idle timeouts, time-wait.
        now += 1_000 + r.u8() * 40;
        fireTimers();
        break;
    }
    poll();
  }
  const flowed = (s: Side) => (s.delivered === 0 ? 'none' : s.delivered === other(s).written ? 'all' : 'some');
  return `${a.conn.state}/${b.conn.state} data ${flowed(a)}/${flowed(b)} errors ${[...new Set([...a.errors, ...b.errors])].sort().join(',')} forged ${a.tainted || b.tainted}`;
}

function seeds(): Buffer[] {
  const seg = (over: Partial<PtcpSegment>): Buffer =>
    encodeSegment({ flags: FLAG_ACK, srcId: 7, dstId: 9, seq: 1000, ack: 2000, tsVal: 5, tsEcr: 4, window: 65_536, sacks: [], payload: Buffer.alloc(0), ...over });
  const datagrams = [
    seg({ flags: FLAG_SYN, dstId: 0, ack: 0, tsEcr: 0 }),
    seg({ flags: FLAG_SYN | FLAG_ACK }),
    seg({ payload: Buffer.from('hello ptcp') }),
    seg({ sacks: [{ start: 2100, end: 2200 }, { start: 2300, end: 2400 }] }),
    seg({ flags: FLAG_FIN | FLAG_ACK }),
    seg({ flags: FLAG_RST }),
    seg({ flags: FLAG_KEEPALIVE | FLAG_ACK }),
  ].map((d) => Buffer.concat([Buffer.from([0]), d]));
  const rng = rngFrom(42);
  const programs = [
    // handshake, some data each way, both close
    [1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 7, 10, 8, 50, 0, 0, 0, 1, 1, 9, 30, 1, 1, 0, 10, 11, 0, 1, 0, 1, 7, 200, 0, 1],
    // loss and reordering
    [1, 0, 0, 0, 1, 0, 1, 0, 8, 200, 8, 200, 2, 5, 0, 0, 7, 50, 0, 0, 1, 1, 7, 100, 0, 1, 0, 1],
    // forged and raw segments
    [1, 0, 0, 0, 1, 0, 1, 0, 8, 20, 14, 1, 5, 0, 0, 1, 0, 14, 0, 4, 0, 0, 0, 5, 0, 9, 15, 8, ...rng.bytes(8), 0],
    // paused reader, full window, long quiet
    [1, 0, 0, 0, 1, 0, 1, 0, 13, 8, 255, 8, 255, 0, 0, 0, 0, 1, 1, 17, 9, 17, 17, 13, 1, 1],
  ].map((p) => Buffer.from(p));
  return [...datagrams, ...programs];
}

export function ptcpTarget(impl: PtcpImpl = REAL_PTCP): FuzzTarget {
  return {
    name: 'ptcp',
    codes: ['PtcpDecode'],
    counters,
    seeds,
    generate: (rng) => {
      if (rng.chance(0.3)) return Buffer.concat([Buffer.from([0]), rng.bytes(32 + rng.int(40))]);
      const ops = Array.from({ length: 20 + rng.int(200) }, () => rng.int(256));
      return Buffer.from([1, ...rng.bytes(5), ...ops]);
    },
    run(input) {
      if (input.length === 0 || (input[0] as number) % 2 === 0) {
        counters.datagrams++;
        const seg = decodeDatagram(impl, input.subarray(1));
        return `segment flags=${seg.flags} sacks=${seg.sacks.length} payload=${seg.payload.length > 0}`;
      }
      return runProgram(impl, input.subarray(1));
    },
  };
}

/**
 * Broken on purpose (test/fuzz/can-fail.test.ts):
 *  plain-error   the decoder throws a plain Error on a segment with three or more SACK blocks
 *  machine-throws the machine throws a TypeError on a segment whose window is zero
 *  unbounded     the machine keeps out-of-window data (simulated: it reports far too many bytes buffered)
 */
export function faultyPtcp(fault: string): PtcpImpl {
  switch (fault) {
    case 'plain-error':
      return {
        ...REAL_PTCP,
        decode: (buf) => {
          const seg = decodeSegment(buf);
          if (seg.sacks.length >= 3) throw new Error('injected: a plain error in the decoder');
          return seg;
        },
      };
    case 'machine-throws':
      return {
        ...REAL_PTCP,
        connection: (opts) => new (class extends PtcpConnection {
          override handleSegment(seg: PtcpSegment, now: number): void {
            if (seg.window === 0 && seg.flags & FLAG_ACK) throw new TypeError('injected: the machine threw');
            super.handleSegment(seg, now);
          }
        })(opts),
      };
    case 'unbounded':
      return {
        ...REAL_PTCP,
        connection: (opts) => new (class extends PtcpConnection {
          #extra = 0;
          override handleSegment(seg: PtcpSegment, now: number): void {
            this.#extra += seg.payload.length;
            super.handleSegment(seg, now);
          }
          override stats() {
            const s = super.stats();
            return { ...s, receiveBuffered: s.receiveBuffered + this.#extra * 4 };
          }
        })(opts),
      };
    default:
      throw new Error(`ptcp: unknown fault ${fault}; known: plain-error, machine-throws, unbounded`);
  }
}
