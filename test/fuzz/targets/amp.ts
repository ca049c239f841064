/**
 * Fuzz target: AMP boxes (q2q/wire/amp.ts) and the AmpPeer dispatcher.
 *
 * One input is a byte stream from a peer. It is decoded whole and in random
 * chunks (the two must agree), every decoded box and ListOf value must
 * re-encode to an equal one, and the same bytes go to an AmpPeer with
 * responders of every kind while it has calls of its own waiting: it must
 * never throw, everything it writes must be well-formed answers or errors
 * for tags it was asked with, and its calls may only fail with VertexErrors.
 */
import { ERROR_CODES, isVertexError, vertexError } from '../../../q2q/errors';
import { AmpPeer, type AmpPeerOptions } from '../../../q2q/proto/amp-peer';
import { ManualClock } from '../../../q2q/util/clock';
import { AmpDecoder, decodeListOf, encodeBox, encodeListOf, type AmpBox, type AmpLimits } from '../../../q2q/wire/amp';
import { AMP_UNHANDLED, AMP_UNKNOWN } from '../../../q2q/wire/amp-errors';
import { invariant, type FuzzTarget, type Rng } from '../engine';

export interface AmpImpl {
  decoder: (limits?: Partial<AmpLimits>) => Pick<AmpDecoder, 'push' | 'failed'>;
  peer: (opts: AmpPeerOptions) => AmpPeer;
}

export const REAL_AMP: AmpImpl = {
  decoder: (limits) => new AmpDecoder(limits),
  peer: (opts) => new AmpPeer(opts),
};

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
/** reference/vertex-q2q.md §3.6 */
const GOLDEN = [
  '0004 5f61736b 0001 31 0008 5f636f6d6d616e64 0008 6964656e74696679 0007 7375626a656374 000b 6578616d706c652e636f6d 0000',
  '0007 5f616e73776572 0001 61 0007 61646472657373 0011 3230332e302e3131332e373a3430303031 0000',
  '0006 5f6572726f72 0001 32 000b 5f6572726f725f636f6465 0010 4e6f53756368436f6e6e656374696f6e 0012 5f6572726f725f6465736372697074696f6e 0003 277827 0000',
].map(hex);
const GOLDEN_LIST = hex('0014 746370403230332e302e3131332e373a38373839 0007 7669727475616c');

const COMMANDS = ['echo', 'raw', 'fail', 'crash', 'async', 'bad-answer', 'big', 'none', 'identify', 'nope'];
const KEYS = ['_command', '_ask', '_answer', '_error', '_error_code', '_error_description', 'text', 'x', 'domain', '', 'k'.repeat(255)];
const WIRE_CODES = new Set<string>([...Object.keys(ERROR_CODES), AMP_UNHANDLED, AMP_UNKNOWN]);
const LIMITS: Array<Partial<AmpLimits>> = [{}, { maxBoxBytes: 64, maxKeys: 4 }, { maxBoxBytes: 1024, maxKeys: 8 }, { maxKeys: 0 }];

function box(fields: Record<string, string | Buffer>): Buffer {
  return encodeBox(fields);
}

function seeds(): Buffer[] {
  const requests = COMMANDS.map((command, i) => box({ _ask: (i + 1).toString(16), _command: command, text: 'héllo', x: GOLDEN_LIST }));
  return [
    ...GOLDEN,
    Buffer.concat(GOLDEN),
    ...requests,
    Buffer.concat(requests),
    box({ _command: 'echo', text: 'no answer wanted' }),
    box({ _answer: '1', value: 'for the first call' }),
    box({ _error: '2', _error_code: 'UNHANDLED', _error_description: "Unhandled Command: b'x'" }),
    box({ _error: '3', _error_code: 'Denied', _error_description: 'no' }),
    box({ _answer: '9', _error: '1' }),
    box({}),
    box({ list: encodeListOf(['a', '', 'bc']) }),
  ];
}

function generate(rng: Rng): Buffer {
  const boxes: Buffer[] = [];
  for (let n = 1 + rng.int(4); n > 0; n--) {
    const fields = new Map<string, Buffer>();
    for (let k = rng.int(6); k > 0; k--) {
      const key = rng.chance(0.7) ? rng.pick(KEYS) : rng.bytes(1 + rng.int(8)).toString('latin1');
      if (key === '' || fields.has(key)) continue;
      const value = key === '_command' ? Buffer.from(rng.pick(COMMANDS))
        : key === '_ask' || key === '_answer' || key === '_error' ? Buffer.from((1 + rng.int(5)).toString(16))
        : rng.chance(0.3) ? encodeListOf(Array.from({ length: rng.int(4) }, () => rng.bytes(rng.int(6))))
        : rng.bytes(rng.int(rng.chance(0.98) ? 16 : 70_000) % 65_536);
      fields.set(key, value);
    }
    try {
      boxes.push(encodeBox(fields));
    } catch {
      // a key our encoder refuses (too long once UTF-8): skip it
    }
  }
  return Buffer.concat(boxes);
}

function sameBoxes(a: AmpBox[], b: AmpBox[]): boolean {
  if (a.length !== b.length) return false;
  return a.every((box, i) => {
    const other = b[i] as AmpBox;
    if (box.size !== other.size) return false;
    for (const [k, v] of box) if (!other.get(k)?.equals(v)) return false;
    return true;
  });
}

/** Decodes `bytes` in the given chunks: the boxes, and the AmpDecode error if any. */
function decodeChunks(impl: AmpImpl, limits: Partial<AmpLimits>, bytes: Buffer, cuts: number[]): { boxes: AmpBox[]; error: string | null } {
  const decoder = impl.decoder(limits);
  const boxes: AmpBox[] = [];
  let start = 0;
  for (const end of [...cuts, bytes.length]) {
    try {
      boxes.push(...decoder.push(bytes.subarray(start, end)));
    } catch (err) {
      invariant(isVertexError(err, 'AmpDecode'), `decoder threw ${String(err)}`);
      invariant(decoder.failed, 'the decoder threw but does not say it failed');
      try {
        decoder.push(Buffer.from([0, 0]));
        invariant(false, 'a failed decoder accepted more input');
      } catch (again) {
        if (!isVertexError(again, 'AmpDecode')) throw again;
      }
      return { boxes, error: (err as Error).message };
    }
    start = end;
  }
  return { boxes, error: null };
}

const counters = { boxesDecoded: 0, peerRuns: 0, answersWritten: 0 };

function checkDecoded(boxes: AmpBox[], limits: Partial<AmpLimits>): void {
  const maxKeys = limits.maxKeys ?? 64;
  counters.boxesDecoded += boxes.length;
  for (const b of boxes) {
    invariant(b.size <= maxKeys, `a box with ${b.size} keys passed a limit of ${maxKeys}`);
    const bytes = encodeBox(b);
    invariant(bytes.length <= (limits.maxBoxBytes ?? 256 * 1024), `a box of ${bytes.length} bytes passed the limit`);
    const again = new AmpDecoder().push(bytes);
    invariant(sameBoxes(again, [b]), 'a decoded box does not survive encode/decode');
    for (const value of b.values()) {
      let items: Buffer[];
      try {
        items = decodeListOf(value);
      } catch (err) {
        if (isVertexError(err, 'AmpDecode')) continue;
        throw err;
      }
      invariant(encodeListOf(items).equals(value), 'a ListOf value does not survive decode/encode');
    }
  }
}

/** The peer: responders of every kind, three calls waiting, fed the input. */
async function runPeer(impl: AmpImpl, input: Buffer, cuts: number[], asked: Set<string>): Promise<string> {
  counters.peerRuns++;
  const clock = new ManualClock();
  const out: Buffer[] = [];
  let fatal = 0;
  const peer = impl.peer({ clock, send: (bytes) => void out.push(Buffer.from(bytes)), onFatal: () => void fatal++ });
  peer.handle('echo', (args) => args);
  peer.handleRaw('raw', (args) => args);
  peer.handle('fail', () => {
    throw vertexError('Denied', 'fail: not allowed');
  });
  peer.handle('crash', () => {
    throw new TypeError('a bug in a responder');
  });
  peer.handle('async', async (args) => ({ got: String(Object.keys(args).length) }));
  peer.handle('bad-answer', () => ({ _answer: 'x' }));
  peer.handle('big', () => ({ blob: 'b'.repeat(70_000) }));
  peer.handle('none', () => undefined);
  const settled: unknown[] = [];
  // A call of its own waiting, which the input may answer (tag 1) or leave to close().
  const call = peer.call('a').then(() => undefined, (err: unknown) => void settled.push(err));
  let start = 0;
  for (const end of [...cuts, input.length]) {
    peer.receive(input.subarray(start, end));
    start = end;
  }
  // Let async responders answer.
  await Promise.resolve();
  await Promise.resolve();
  const framingBroke = fatal > 0;
  invariant(fatal <= 1, `onFatal called ${fatal} times`);
  invariant(!framingBroke || peer.closed, 'framing broke but the peer is still open');
  peer.close();
  await call;
  for (const err of settled) invariant(isVertexError(err), `a call failed with ${String(err)}`);
  // Everything the peer wrote: answers and errors, well-formed, for tags it was asked with.
  const written = new AmpDecoder({ maxBoxBytes: 1 << 20 }).push(Buffer.concat(out));
  let answers = 0;
  let errors = 0;
  for (const b of written) {
    if (b.has('_command')) continue; // our own call
    const tag = b.get('_answer') ?? b.get('_error');
    invariant(tag !== undefined, `the peer wrote a box that is neither a call, an answer nor an error: ${[...b.keys()]}`);
    invariant(!(b.has('_answer') && b.has('_error')), 'a box that is both an answer and an error');
    invariant(asked.has(tag.toString('hex')), `an answer for tag ${tag.toString('hex')}, which was never asked`);
    if (b.has('_error')) {
      errors++;
      const code = b.get('_error_code')?.toString() ?? '';
      invariant(WIRE_CODES.has(code), `error code ${JSON.stringify(code)} is not ours`);
      invariant(b.has('_error_description'), 'an error without a description');
    } else {
      answers++;
    }
  }
  counters.answersWritten += answers + errors;
  return `peer answers=${Math.min(answers, 3)} errors=${Math.min(errors, 3)} fatal=${framingBroke}`;
}

export function ampTarget(impl: AmpImpl = REAL_AMP): FuzzTarget {
  return {
    name: 'amp',
    codes: ['AmpDecode'],
    dictionary: [...KEYS.filter((k) => k !== ''), ...COMMANDS, 'UNHANDLED', 'UNKNOWN'].map((t) => {
      const b = Buffer.from(t);
      return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
    }),
    counters,
    // Room for a box with a 65,535-byte value, now and then.
    maxInputBytes: 70_000,
    sources: ['q2q/wire/amp.ts', 'q2q/proto/amp-peer.ts', 'q2q/wire/amp-errors.ts'],
    seeds,
    generate,
    async run(input, rng) {
      const limits = rng.pick(LIMITS);
      const cuts = Array.from({ length: rng.int(6) }, () => rng.int(input.length + 1)).sort((a, b) => a - b);
      const whole = decodeChunks(impl, limits, input, []);
      const chunked = decodeChunks(impl, limits, input, cuts);
      invariant(whole.error === chunked.error, `whole and chunked decoding disagree: ${whole.error} / ${chunked.error}`);
      if (whole.error === null) invariant(sameBoxes(whole.boxes, chunked.boxes), 'whole and chunked decoding give different boxes');
      checkDecoded(chunked.boxes, limits);
      // The tags the peer may answer: every _ask of the boxes that decode with its limits (the default ones).
      const asked = new Set<string>();
      const forPeer = limits === LIMITS[0] ? chunked : decodeChunks(impl, {}, input, cuts);
      for (const b of forPeer.boxes) {
        const ask = b.get('_ask');
        if (ask !== undefined && !b.has('_answer') && !b.has('_error')) asked.add(ask.toString('hex'));
      }
      const peer = await runPeer(impl, input, cuts, asked);
      const kinds = [...new Set(chunked.boxes.map((b) => (b.has('_answer') ? 'answer' : b.has('_error') ? 'error' : b.has('_command') ? `cmd:${COMMANDS.includes(b.get('_command')!.toString()) ? b.get('_command')!.toString() : '?'}` : 'other')))].sort();
      const feature = `${kinds.join(',')} | ${peer}`;
      // A stream the decoder refused counts as a typed refusal (its message is the feature).
      if (whole.error !== null) throw vertexError('AmpDecode', `${whole.error} (${feature})`);
      return feature;
    },
  };
}

/**
 * Broken on purpose, to show the harness catches it (test/fuzz/can-fail.test.ts):
 *  plain-error  the decoder throws a plain Error on a box of five or more keys
 *  wrong-code   the decoder refuses such a box with the wrong code (Internal)
 *  peer-throws  the peer's receive() throws on a request for an unknown command
 */
export function faultyAmp(fault: string): AmpImpl {
  const broken = (boxes: AmpBox[]) => {
    if (!boxes.some((b) => b.size >= 5)) return;
    if (fault === 'plain-error') throw new Error('injected: a plain error in the decoder');
    if (fault === 'wrong-code') throw vertexError('Internal', 'injected: the wrong code');
  };
  class BrokenDecoder extends AmpDecoder {
    override push(chunk: Buffer): AmpBox[] {
      const boxes = super.push(chunk);
      broken(boxes);
      return boxes;
    }
  }
  class BrokenPeer extends AmpPeer {
    override receive(bytes: Buffer): void {
      if (bytes.includes('nope')) throw new Error('injected: receive() threw');
      super.receive(bytes);
    }
  }
  switch (fault) {
    case 'plain-error':
    case 'wrong-code':
      return { ...REAL_AMP, decoder: (limits) => new BrokenDecoder(limits) };
    case 'peer-throws':
      return { ...REAL_AMP, peer: (opts) => new BrokenPeer(opts) };
    default:
      throw new Error(`amp: unknown fault ${fault}; known: plain-error, wrong-code, peer-throws`);
  }
}
