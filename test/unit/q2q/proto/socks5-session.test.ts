import fc from 'fast-check';
import { vertexError } from '../../../../q2q/errors';
import { MAX_EARLY_DATA_BYTES, Socks5Session, type Socks5Action, type SocksAuth } from '../../../../q2q/proto/socks5-session';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

const GREET_NOAUTH = hex('05 01 00');
const GREET_BOTH = hex('05 02 00 02');
const GREET_USERPASS_ONLY = hex('05 01 02');
const AUTH_ALICE_SECRET = hex('01 05 616c696365 06 736563726574'); // alice / secret
const CONNECT_LITERAL = hex('05 01 00 03 0a 626f6240622e74657374 0007'); // bob@b.test:7
const CONNECT_IPV4 = hex('05 01 00 01 7f000001 0050');
const CONNECT_IPV6 = hex('05 01 00 04 00000000000000000000000000000001 01bb');
const REPLY_OK = '05000001000000000000';
const CREDS: SocksAuth = { username: 'alice', password: 'secret' };

function sends(actions: Socks5Action[]): string {
  return actions
    .filter((a): a is Extract<Socks5Action, { type: 'send' }> => a.type === 'send')
    .map((a) => a.data.toString('hex'))
    .join('');
}

function types(actions: Socks5Action[]): string[] {
  return actions.map((a) => a.type);
}

function closeOf(actions: Socks5Action[]): Extract<Socks5Action, { type: 'close' }> | undefined {
  return actions.find((a): a is Extract<Socks5Action, { type: 'close' }> => a.type === 'close');
}

/** A session driven to the point where it asked for a dial. */
function connecting(auth: SocksAuth = 'none'): Socks5Session {
  const s = new Socks5Session({ auth });
  if (auth === 'none') s.receive(Buffer.concat([GREET_NOAUTH, CONNECT_LITERAL]));
  else s.receive(Buffer.concat([GREET_BOTH, AUTH_ALICE_SECRET, CONNECT_LITERAL]));
  expect(s.state).toBe('connecting');
  return s;
}

describe('socks5 session without auth', () => {
  it('chooses method 0, asks for the dial, and replies success only once the dial succeeded', () => {
    const s = new Socks5Session({ auth: 'none' });
    const a1 = s.receive(GREET_NOAUTH);
    expect(sends(a1)).toBe('0500');
    expect(s.state).toBe('request');
    const a2 = s.receive(CONNECT_LITERAL);
    expect(a2).toEqual([{ type: 'connect', request: { host: 'bob@b.test', port: 7, addressType: 'domain' } }]);
    expect(sends(a2)).toBe('');
    const a3 = s.connectSucceeded();
    expect(types(a3)).toEqual(['send', 'established']);
    expect(sends(a3)).toBe(REPLY_OK);
    expect(s.state).toBe('established');
  });

  it.each([
    ['ATYP 1', CONNECT_IPV4, { host: '127.0.0.1', port: 80, addressType: 'ipv4' }],
    ['ATYP 3', CONNECT_LITERAL, { host: 'bob@b.test', port: 7, addressType: 'domain' }],
    ['ATYP 4', CONNECT_IPV6, { host: '::1', port: 443, addressType: 'ipv6' }],
  ])('passes the %s target to the dial', (_n, request, target) => {
    const s = new Socks5Session({ auth: 'none' });
    s.receive(GREET_NOAUTH);
    expect(s.receive(request)).toEqual([{ type: 'connect', request: target }]);
    expect(s.request).toEqual(target);
  });

  it('handles greeting and request pipelined in one chunk', () => {
    const s = new Socks5Session({ auth: 'none' });
    const actions = s.receive(Buffer.concat([GREET_BOTH, CONNECT_IPV4]));
    expect(types(actions)).toEqual(['send', 'connect']);
    expect(sends(actions)).toBe('0500');
  });

  it('handles the handshake fed one byte at a time', () => {
    const s = new Socks5Session({ auth: 'none' });
    const all: Socks5Action[] = [];
    for (const byte of Buffer.concat([GREET_NOAUTH, CONNECT_IPV6])) all.push(...s.receive(Uint8Array.of(byte)));
    expect(types(all)).toEqual(['send', 'connect']);
  });

  it('refuses a client that offers only user/pass with 0xFF and closes', () => {
    const s = new Socks5Session({ auth: 'none' });
    const actions = s.receive(GREET_USERPASS_ONLY);
    expect(sends(actions)).toBe('05ff');
    expect(closeOf(actions)?.reason).toBe('no-acceptable-method');
    expect(s.state).toBe('closed');
  });

  it('hands bytes sent after the request, before the reply, to the tunnel as early data', () => {
    const s = new Socks5Session({ auth: 'none' });
    s.receive(Buffer.concat([GREET_NOAUTH, CONNECT_IPV4, Buffer.from('GET / ')]));
    s.receive(Buffer.from('HTTP/1.0\r\n'));
    const actions = s.connectSucceeded();
    const established = actions.find((a) => a.type === 'established');
    expect(established).toEqual({ type: 'established', earlyData: Buffer.from('GET / HTTP/1.0\r\n') });
  });

  it('closes a client that floods before the reply', () => {
    const s = connecting();
    const actions = s.receive(Buffer.alloc(MAX_EARLY_DATA_BYTES + 1));
    expect(closeOf(actions)?.reason).toBe('early-data-overflow');
    expect(s.connectSucceeded()).toEqual([]);
  });
});

describe('socks5 session with RFC 1929 credentials', () => {
  it('refuses a client offering only method 0 (a browser) with 0xFF', () => {
    const s = new Socks5Session({ auth: CREDS });
    const actions = s.receive(GREET_NOAUTH);
    expect(sends(actions)).toBe('05ff');
    expect(closeOf(actions)?.reason).toBe('no-acceptable-method');
  });

  it('chooses user/pass when offered both, and accepts the right credentials', () => {
    const s = new Socks5Session({ auth: CREDS });
    expect(sends(s.receive(GREET_BOTH))).toBe('0502');
    expect(s.state).toBe('auth');
    expect(sends(s.receive(AUTH_ALICE_SECRET))).toBe('0100');
    expect(s.state).toBe('request');
    expect(s.username).toBe('alice');
    expect(types(s.receive(CONNECT_LITERAL))).toEqual(['connect']);
  });

  it.each([
    ['wrong password', 'alice', 'secreT'],
    ['password prefix', 'alice', 'secre'],
    ['password with suffix', 'alice', 'secrets'],
    ['wrong username', 'alicf', 'secret'],
    ['swapped', 'secret', 'alice'],
    ['empty', '', ''],
  ])('refuses %s with status 1 and closes', (_n, username, password) => {
    const s = new Socks5Session({ auth: CREDS });
    s.receive(GREET_BOTH);
    const u = Buffer.from(username);
    const p = Buffer.from(password);
    const actions = s.receive(Buffer.concat([Buffer.from([1, u.length]), u, Buffer.from([p.length]), p, CONNECT_LITERAL]));
    expect(sends(actions)).toBe('0101');
    expect(closeOf(actions)?.reason).toBe('auth-failed');
    expect(types(actions)).not.toContain('connect');
    expect(s.username).toBeUndefined();
  });

  it('never puts the password into an action', () => {
    const s = new Socks5Session({ auth: CREDS });
    const wrong = s.receive(Buffer.concat([GREET_BOTH, hex('01 05 616c696365 07 68756e74657232')])); // hunter2
    expect(JSON.stringify(wrong)).not.toMatch(/hunter2|secret/);
  });
});

describe('socks5 session refusals', () => {
  it.each([
    ['BIND', hex('05 02 00 01 7f000001 0050'), '0507'],
    ['UDP ASSOCIATE', hex('05 03 00 01 00000000 0000'), '0507'],
    ['an unknown command', hex('05 09 00 01 7f000001 0050'), '0507'],
    ['an unknown address type', hex('05 01 00 02'), '0508'],
  ])('answers %s with the matching REP and closes', (_n, request, repPrefix) => {
    const s = new Socks5Session({ auth: 'none' });
    s.receive(GREET_NOAUTH);
    const actions = s.receive(request);
    expect(sends(actions).slice(0, 4)).toBe(repPrefix);
    expect(types(actions)).toEqual(['send', 'close']);
    expect(s.state).toBe('closed');
  });

  it('closes on garbage without sending anything, with a Socks5Decode error', () => {
    const s = new Socks5Session({ auth: 'none' });
    const actions = s.receive(Buffer.from('GET / HTTP/1.1\r\n'));
    expect(types(actions)).toEqual(['close']);
    const close = closeOf(actions);
    expect(close?.reason).toBe('decode-error');
    expect(close?.error?.code).toBe('Socks5Decode');
  });

  it('closes on a malformed request after a good greeting', () => {
    const s = new Socks5Session({ auth: 'none' });
    s.receive(GREET_NOAUTH);
    expect(closeOf(s.receive(hex('05 01 00 03 00 0050')))?.reason).toBe('decode-error');
  });

  it('ignores input once closed', () => {
    const s = new Socks5Session({ auth: 'none' });
    s.receive(Buffer.from('x'));
    expect(s.receive(GREET_NOAUTH)).toEqual([]);
    expect(s.state).toBe('closed');
  });

  it('treats input after established as a driver bug', () => {
    const s = connecting();
    s.connectSucceeded();
    expect(() => s.receive(Buffer.from('x'))).toThrow();
  });
});

describe('socks5 session dial outcome', () => {
  it.each([
    ['Denied', '02'],
    ['NotAllowed', '02'],
    ['Offline', '04'],
    ['Unreachable', '04'],
    ['NotExposed', '05'],
    ['Internal', '01'],
  ] as const)('replies to a %s dial error with REP 0x%s and closes', (code, rep) => {
    const s = connecting();
    const actions = s.connectFailed(vertexError(code, `dial bob@b.test:7: ${code}`));
    expect(sends(actions)).toBe(`05${rep}0001000000000000`);
    const close = closeOf(actions);
    expect(close?.reason).toBe('dial-failed');
    expect(close?.error?.code).toBe(code);
  });

  it('maps a raw ECONNREFUSED from a passthrough dial to REP 0x05', () => {
    const s = connecting();
    const err = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9'), { code: 'ECONNREFUSED' });
    expect(sends(s.connectFailed(err)).slice(0, 4)).toBe('0505');
  });

  it('ignores a dial outcome that arrives when no dial is pending', () => {
    const s = new Socks5Session({ auth: 'none' });
    expect(s.connectSucceeded()).toEqual([]);
    expect(s.connectFailed(new Error('x'))).toEqual([]);
    const done = connecting();
    done.connectSucceeded();
    expect(done.connectFailed(new Error('late'))).toEqual([]);
  });
});

describe('socks5 session timers and half-close', () => {
  it.each(['greeting', 'auth', 'request'])('closes on the handshake timeout in state %s', (state) => {
    const s = new Socks5Session({ auth: CREDS });
    if (state !== 'greeting') s.receive(GREET_BOTH);
    if (state === 'request') s.receive(AUTH_ALICE_SECRET);
    expect(s.state).toBe(state);
    expect(closeOf(s.handshakeTimedOut())?.reason).toBe('handshake-timeout');
    expect(s.state).toBe('closed');
  });

  it('leaves a pending dial alone when the handshake timer fires', () => {
    const s = connecting();
    expect(s.handshakeTimedOut()).toEqual([]);
    expect(s.state).toBe('connecting');
  });

  it('closes when the client ends during the handshake', () => {
    const s = new Socks5Session({ auth: 'none' });
    s.receive(GREET_NOAUTH);
    expect(closeOf(s.clientEnded())?.reason).toBe('client-ended');
  });

  it('closes when the client ends while the dial runs, so a late tunnel is refused', () => {
    const s = connecting();
    expect(closeOf(s.clientEnded())?.reason).toBe('client-ended');
    expect(s.connectSucceeded()).toEqual([]);
  });

  it('leaves the end to the pipe once established', () => {
    const s = connecting();
    s.connectSucceeded();
    expect(s.clientEnded()).toEqual([]);
    expect(s.state).toBe('established');
  });
});

describe('socks5 session properties', () => {
  it('gives the same outcome however the handshake is split into chunks', () => {
    const transcript = Buffer.concat([GREET_BOTH, AUTH_ALICE_SECRET, CONNECT_IPV6, Buffer.from('early')]);
    const reference = new Socks5Session({ auth: CREDS });
    const refActions = [...reference.receive(transcript), ...reference.connectSucceeded()];
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: transcript.length - 1 }), { maxLength: 12 }), (cuts) => {
        const points = [0, ...cuts.sort((a, b) => a - b), transcript.length];
        const s = new Socks5Session({ auth: CREDS });
        const actions: Socks5Action[] = [];
        for (let i = 0; i + 1 < points.length; i += 1) actions.push(...s.receive(transcript.subarray(points[i], points[i + 1])));
        actions.push(...s.connectSucceeded());
        expect(actions).toEqual(refActions);
      }),
    );
  });

  it('never throws on arbitrary client bytes, and sends nothing after a close', () => {
    fc.assert(
      fc.property(
        fc.constantFrom<SocksAuth>('none', CREDS),
        fc.array(fc.uint8Array({ minLength: 1, maxLength: 40 }), { maxLength: 8 }),
        (auth, chunks) => {
          const s = new Socks5Session({ auth });
          let closed = false;
          for (const chunk of [GREET_BOTH, ...chunks]) {
            for (const a of s.receive(chunk)) {
              expect(closed).toBe(false);
              if (a.type === 'close') closed = true;
            }
          }
          if (closed) expect(s.state).toBe('closed');
        },
      ),
      { numRuns: 1000 },
    );
  });
});
