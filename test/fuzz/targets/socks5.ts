/**
 * Fuzz target: SOCKS5 messages (q2q/wire/socks5.ts) and the server session
 * (q2q/proto/socks5-session.ts).
 *
 * One input is what a client sends. Every decoder reads it as its message:
 * a refusal must be Socks5Decode; a message must need exactly the bytes it
 * says (any shorter prefix is "need more") and encode back to the same bytes.
 * Then a session (no auth, or username/password, by the first byte) reads it
 * in random chunks and, if it asks to connect, is told the dial worked or
 * failed: it must never throw, what it sends must be valid server messages,
 * and chunking must not change what it does.
 */
import { isVertexError, vertexError } from '../../../q2q/errors';
import { Socks5Session, MAX_EARLY_DATA_BYTES, type Socks5Action, type SocksAuth } from '../../../q2q/proto/socks5-session';
import {
  decodeGreeting,
  decodeMethodSelection,
  decodeReply,
  decodeRequest,
  decodeUserPass,
  decodeUserPassStatus,
  encodeGreeting,
  encodeReply,
  encodeRequest,
  encodeUserPass,
  SOCKS_ATYP,
  type Decoded,
} from '../../../q2q/wire/socks5';
import { invariant, rngFrom, type FuzzTarget, type Rng } from '../engine';

type Decoder = (buf: Uint8Array) => Decoded<unknown> | null;

export interface Socks5Impl {
  /** Each decoder, and its encoder where there is one (null: this value has no encoding, e.g. an unknown ATYP). */
  decoders: Record<string, { decode: Decoder; encode?: (value: never) => Buffer | null; reserved?: number }>;
  session: (auth: SocksAuth) => Socks5Session;
}

const CREDENTIALS = { username: 'user', password: 'secret' };

type Request = Parameters<typeof encodeRequest>[0];
type Reply = { reply: number } & Parameters<typeof encodeReply>[1] & object;

export const REAL_SOCKS5: Socks5Impl = {
  decoders: {
    greeting: { decode: decodeGreeting, encode: (v: Parameters<typeof encodeGreeting>[0]) => encodeGreeting(v) },
    userpass: { decode: decodeUserPass, encode: (v: Parameters<typeof encodeUserPass>[0]) => encodeUserPass(v) },
    // Byte 2 (RSV) is read as anything and written as 0.
    request: { decode: decodeRequest, encode: (v: Request) => ((v.address.type as string) === 'unsupported' ? null : encodeRequest(v)), reserved: 2 },
    reply: { decode: decodeReply, encode: (v: Reply) => encodeReply(v.reply, { address: v.address, port: v.port }), reserved: 2 },
    'method selection': { decode: decodeMethodSelection },
    'username/password status': { decode: decodeUserPassStatus },
  },
  session: (auth) => new Socks5Session({ auth }),
};

function checkDecoders(impl: Socks5Impl, bytes: Buffer, rng: Rng): string[] {
  const decoded: string[] = [];
  for (const [name, { decode, encode, reserved }] of Object.entries(impl.decoders)) {
    let result: Decoded<unknown> | null;
    try {
      result = decode(bytes);
    } catch (err) {
      invariant(isVertexError(err, 'Socks5Decode'), `${name}: decode threw ${String(err)}`);
      continue;
    }
    if (result === null) continue;
    counters.messagesDecoded++;
    decoded.push(name);
    invariant(result.length >= 1 && result.length <= bytes.length, `${name}: length ${result.length} of ${bytes.length} bytes`);
    const exact = bytes.subarray(0, result.length);
    for (let i = 0; i < 4; i++) {
      const cut = rng.int(result.length);
      let shorter: Decoded<unknown> | null = null;
      try {
        shorter = decode(exact.subarray(0, cut));
      } catch (err) {
        invariant(isVertexError(err, 'Socks5Decode'), `${name}: decode threw ${String(err)}`);
        invariant(false, `${name}: a ${cut}-byte prefix of a good ${result.length}-byte message was refused (${(err as Error).message})`);
      }
      invariant(shorter === null, `${name}: a ${cut}-byte prefix of a ${result.length}-byte message decoded`);
    }
    if (encode) {
      const again = encode(result.value as never);
      const canonical = Buffer.from(exact);
      if (reserved !== undefined) canonical[reserved] = 0;
      if (again !== null) invariant(again.equals(canonical), `${name}: ${exact.toString('hex')} decodes to ${JSON.stringify(result.value)}, which encodes to ${again.toString('hex')}`);
    }
  }
  return decoded;
}

/** What a session did, as comparable text. */
function describeActions(actions: Socks5Action[]): string[] {
  return actions.map((a) => {
    switch (a.type) {
      case 'send': return `send ${a.data.toString('hex')}`;
      case 'connect': return `connect ${a.request.addressType} ${JSON.stringify(a.request.host)}:${a.request.port}`;
      case 'established': return `established +${a.earlyData.length}`;
      case 'close': return `close ${a.reason}${a.error ? ` ${a.error.code}` : ''}`;
      default: {
        const never: never = a;
        throw new Error(`unknown action ${JSON.stringify(never)}`);
      }
    }
  });
}

const DIAL_ERRORS = [
  vertexError('Offline', 'bob@b.test is not online'),
  vertexError('Denied', 'not allowed'),
  vertexError('NotExposed', 'no such service'),
  vertexError('Unreachable', 'no route'),
  Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }),
  'a string',
];

const counters = { messagesDecoded: 0, sessions: 0, connects: 0 };

function runSession(impl: Socks5Impl, auth: SocksAuth, dial: number, bytes: Buffer, cuts: number[]): string[] {
  counters.sessions++;
  const session = impl.session(auth);
  const actions: Socks5Action[] = [];
  let connects = 0;
  let start = 0;
  for (const end of [...cuts, bytes.length]) {
    if (session.state === 'established' || session.state === 'closed') break;
    const got = session.receive(bytes.subarray(start, end));
    start = end;
    actions.push(...got);
    for (const a of got) {
      if (a.type === 'connect') connects++;
      if (a.type === 'send') {
        // Only server messages: a method selection, a username/password status, or a reply.
        const ok = [decodeMethodSelection, decodeUserPassStatus, decodeReply].some((d) => {
          try {
            return d(a.data)?.length === a.data.length;
          } catch {
            return false;
          }
        });
        invariant(ok, `the session sent ${a.data.toString('hex')}, which is no server message`);
      }
    }
  }
  invariant(connects <= 1, `${connects} connect actions`);
  counters.connects += connects;
  if (session.state === 'connecting') {
    const outcome = dial % 4 === 0 ? session.connectSucceeded(dial & 4 ? { address: { type: 'ipv6', host: '2001:db8::1' }, port: 8080 } : undefined)
      : session.connectFailed(DIAL_ERRORS[dial % DIAL_ERRORS.length]);
    actions.push(...outcome);
  }
  for (const a of actions) {
    if (a.type === 'established') invariant(a.earlyData.length <= MAX_EARLY_DATA_BYTES + bytes.length, 'unbounded early data');
  }
  // A closed session ignores what comes after.
  if (session.state === 'closed') invariant(session.receive(Buffer.from([5, 1, 0])).length === 0, 'a closed session answered');
  return describeActions(actions);
}

function seeds(): Buffer[] {
  const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
  const name = Buffer.from('bob@b.test');
  return [
    hex('00 05 01 00  05 01 00 01 7f000001 0050'),
    Buffer.concat([hex('00 050100 050100'), Buffer.from([3, name.length]), name, hex('0016')]),
    Buffer.concat([hex('01 050102 01'), Buffer.from([4]), Buffer.from('user'), Buffer.from([6]), Buffer.from('secret'), hex('050100 04'), Buffer.alloc(16, 0), hex('01bb')]),
    hex('00 050100 050200 01 0a000001 0016'),
    hex('00 050100 050100 09 0000'),
    hex('00 050100 050100 03 00 0050'),
    hex('00 05 00'),
    hex('00 04 01 00'),
    Buffer.concat([hex('00 050100 050100 03 ff'), Buffer.alloc(255, 0x61), hex('0050'), Buffer.from('GET / HTTP/1.1\r\n\r\n')]),
  ];
}

export function socks5Target(impl: Socks5Impl = REAL_SOCKS5): FuzzTarget {
  return {
    name: 'socks5',
    codes: ['Socks5Decode'],
    dictionary: ['@', '.q2q', 'bob@b.test', ':', '\u0000', 'xn--'].map((t) => Buffer.from(t)),
    counters,
    seeds,
    generate: (rng) => {
      const atyp = rng.pick([SOCKS_ATYP.Ipv4, SOCKS_ATYP.Domain, SOCKS_ATYP.Ipv6, rng.int(256)]);
      const addr = atyp === SOCKS_ATYP.Ipv4 ? rng.bytes(4) : atyp === SOCKS_ATYP.Ipv6 ? rng.bytes(16) : atyp === SOCKS_ATYP.Domain ? (() => { const n = rng.bytes(rng.int(40)); return Buffer.concat([Buffer.from([n.length]), n]); })() : Buffer.alloc(0);
      const methods = rng.bytes(1 + rng.int(4));
      return Buffer.concat([Buffer.from([rng.int(256), 5, methods.length]), methods, Buffer.from([5, rng.int(4), 0, atyp]), addr, rng.bytes(2), rng.bytes(rng.int(8))]);
    },
    run(input) {
      const mode = input[0] ?? 0;
      const bytes = input.subarray(1);
      const rng = rngFrom(mode * 7919 + bytes.length);
      const decoded = checkDecoders(impl, bytes, rng);
      const auth: SocksAuth = mode & 1 ? CREDENTIALS : 'none';
      const cuts = Array.from({ length: rng.int(5) }, () => rng.int(bytes.length + 1)).sort((x, y) => x - y);
      const whole = runSession(impl, auth, mode >> 1, bytes, []);
      const chunked = runSession(impl, auth, mode >> 1, bytes, cuts);
      invariant(JSON.stringify(whole) === JSON.stringify(chunked), `chunking changed what the session did:\n${whole.join('\n')}\n---\n${chunked.join('\n')}`);
      const summary = whole.map((line) => line.replace(/ .*/, (m) => (line.startsWith('close') ? m : ''))).join(',');
      return `${decoded.join('+')} | ${auth === 'none' ? 'noauth' : 'userpass'} | ${summary}`;
    },
  };
}

/**
 * Broken on purpose (test/fuzz/can-fail.test.ts):
 *  plain-error     decodeRequest throws a plain Error on an IPv6 address
 *  session-throws  the session throws when a client offers more than three methods
 */
export function faultySocks5(fault: string): Socks5Impl {
  switch (fault) {
    case 'plain-error':
      return {
        ...REAL_SOCKS5,
        decoders: {
          ...REAL_SOCKS5.decoders,
          request: {
            decode: (buf) => {
              const r = decodeRequest(buf);
              if (r?.value.address.type === 'ipv6') throw new Error('injected: a plain error in the decoder');
              return r;
            },
          },
        },
      };
    case 'session-throws':
      return {
        ...REAL_SOCKS5,
        session: (auth) => new (class extends Socks5Session {
          override receive(chunk: Uint8Array): Socks5Action[] {
            if (this.state === 'greeting' && chunk[0] === 5 && (chunk[1] ?? 0) > 3) throw new RangeError('injected: the session threw');
            return super.receive(chunk);
          }
        })({ auth }),
      };
    default:
      throw new Error(`socks5: unknown fault ${fault}; known: plain-error, session-throws`);
  }
}
