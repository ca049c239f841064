import { isVertexError, VertexError, vertexError } from '../../../../q2q/errors';
import { AmpArgs, AmpPeer, AmpPeerOptions, AmpRemoteError, MAX_ERROR_DESCRIPTION_BYTES } from '../../../../q2q/proto/amp-peer';
import { ManualClock } from '../../../../q2q/util/clock';
import { AMP_MAX_VALUE_LENGTH, AmpBox, AmpDecoder, boxToStrings, encodeBox } from '../../../../q2q/wire/amp';

const IDENTIFY_ASK_HEX =
  '00045f61736b000131' + '00085f636f6d6d616e6400086964656e74696679' + '00077375626a656374000b6578616d706c652e636f6d' + '0000';
const ERROR_BOX_HEX =
  '00065f6572726f72000132000b5f6572726f725f636f646500104e6f53756368436f6e6e656374696f6e' +
  '00125f6572726f725f6465736372697074696f6e00032778270000';

interface Pair {
  clock: ManualClock;
  a: AmpPeer;
  b: AmpPeer;
  /** Boxes each side sent, decoded, in order. */
  fromA: AmpBox[];
  fromB: AmpBox[];
}

/** Two peers wired back to back; bytes flow synchronously inside send(). */
function pair(optsA: Partial<AmpPeerOptions> = {}, optsB: Partial<AmpPeerOptions> = {}): Pair {
  const clock = new ManualClock();
  const fromA: AmpBox[] = [];
  const fromB: AmpBox[] = [];
  const tapA = new AmpDecoder();
  const tapB = new AmpDecoder();
  const p: Partial<Pair> = { clock, fromA, fromB };
  p.a = new AmpPeer({
    clock,
    send: (bytes) => {
      fromA.push(...tapA.push(bytes));
      p.b!.receive(bytes);
    },
    ...optsA,
  });
  p.b = new AmpPeer({
    clock,
    send: (bytes) => {
      fromB.push(...tapB.push(bytes));
      p.a!.receive(bytes);
    },
    ...optsB,
  });
  return p as Pair;
}

/** A single peer whose output is captured, for feeding hand-made boxes. */
function lone(opts: Partial<AmpPeerOptions> = {}): { clock: ManualClock; peer: AmpPeer; sent: Buffer[] } {
  const clock = new ManualClock();
  const sent: Buffer[] = [];
  const peer = new AmpPeer({ clock, send: (bytes) => void sent.push(bytes), ...opts });
  return { clock, peer, sent };
}

async function rejection(promise: Promise<unknown>): Promise<VertexError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof VertexError) return err;
    throw err;
  }
  throw new Error('expected the promise to reject');
}

describe('AmpPeer: calls and answers', () => {
  it('answers a call from a synchronous responder', async () => {
    const { a, b } = pair();
    b.handle('echo', (args) => ({ got: args.text ?? '', n: String(Object.keys(args).length) }));
    await expect(a.call('echo', { text: 'héllo' })).resolves.toEqual({ got: 'héllo', n: '1' });
  });

  it('answers a call from an async responder', async () => {
    const { a, b } = pair();
    b.handle('slow', async (args) => {
      await Promise.resolve();
      return { twice: `${args.x}${args.x}` };
    });
    await expect(a.call('slow', { x: 'ab' })).resolves.toEqual({ twice: 'abab' });
  });

  it('resolves with no fields when the responder returns nothing', async () => {
    const { a, b } = pair();
    b.handle('noop', () => undefined);
    await expect(a.call('noop')).resolves.toEqual({});
  });

  it('works in both directions on one connection', async () => {
    const { a, b } = pair();
    a.handle('who', () => ({ me: 'a' }));
    b.handle('who', () => ({ me: 'b' }));
    await expect(a.call('who')).resolves.toEqual({ me: 'b' });
    await expect(b.call('who')).resolves.toEqual({ me: 'a' });
  });

  it('writes the §3.6 identify vector byte for byte for the first call', async () => {
    const { peer, sent } = lone();
    void peer.call('identify', { subject: 'example.com' }).catch(() => undefined);
    expect(Buffer.concat(sent).toString('hex')).toBe(IDENTIFY_ASK_HEX);
    peer.close();
  });

  it('tags asks with a lower-case hex counter from 1', async () => {
    const { a, b, fromA, fromB } = pair();
    b.handle('ping', () => ({}));
    for (let i = 0; i < 11; i++) await a.call('ping');
    expect(fromA.map((box) => box.get('_ask')?.toString())).toEqual(['1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b']);
    expect(fromB.map((box) => box.get('_answer')?.toString())).toEqual(['1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b']);
  });

  it('matches answers that arrive out of order to their calls', async () => {
    const { a, b } = pair();
    const release: Array<() => void> = [];
    b.handle('wait', (args) => new Promise<AmpArgs>((resolve) => release.push(() => resolve({ id: args.id ?? '' }))));
    const calls = ['1', '2', '3'].map((id) => a.call('wait', { id }));
    expect(a.pendingCalls).toBe(3);
    release[2]!();
    release[0]!();
    release[1]!();
    await expect(Promise.all(calls)).resolves.toEqual([{ id: '1' }, { id: '2' }, { id: '3' }]);
    expect(a.pendingCalls).toBe(0);
  });

  it('passes raw bytes both ways with callRaw and handleRaw', async () => {
    const { a, b } = pair();
    const der = Buffer.from([0x30, 0x82, 0xff, 0x00, 0xfe]);
    b.handleRaw('sign', (args) => new Map([['certificate', Buffer.concat([args.get('csr')!, Buffer.from([0xee])])]]));
    const answer = await a.callRaw('sign', { csr: der });
    expect(answer.get('certificate')!.toString('hex')).toBe('3082ff00feee');
  });

  it('does not show the dispatcher keys to responders', async () => {
    const { a, b } = pair();
    let seen: AmpArgs | undefined;
    b.handle('look', (args) => {
      seen = args;
    });
    await a.call('look', { x: '1' });
    expect(seen).toEqual({ x: '1' });
  });

  it('refuses to register a command twice', () => {
    const { peer } = lone();
    peer.handle('x', () => undefined);
    expect(() => peer.handle('x', () => undefined)).toThrow(VertexError);
  });
});

describe('AmpPeer: request-level errors keep the connection', () => {
  it('carries a VertexError code and message to the caller', async () => {
    const { a, b } = pair();
    b.handle('sign', () => {
      throw vertexError('NoSuchUser', 'sign bob@b.test: no such account');
    });
    const err = await rejection(a.call('sign', { user: 'bob' }));
    expect(err.code).toBe('NoSuchUser');
    expect(err.message).toBe('sign bob@b.test: no such account');
    expect(a.closed).toBe(false);
    expect(b.closed).toBe(false);
  });

  it('carries a rejected promise the same way', async () => {
    const { a, b } = pair();
    b.handle('listen', async () => {
      throw vertexError('NotAllowed', 'listen: not allowed');
    });
    expect((await rejection(a.call('listen'))).code).toBe('NotAllowed');
  });

  it('hides the text of foreign errors behind Internal', async () => {
    const { a, b, fromB } = pair();
    b.handle('boom', () => {
      throw new Error('secret /etc/shadow path');
    });
    b.handle('boom-async', async () => {
      throw new TypeError('another secret');
    });
    for (const command of ['boom', 'boom-async']) {
      const err = await rejection(a.call(command));
      expect(err.code).toBe('Internal');
      expect(err.message).toBe('internal error');
    }
    const wire = fromB.map((box) => JSON.stringify(boxToStrings(box))).join('');
    expect(wire).not.toContain('secret');
    expect(wire).not.toContain('at ');
  });

  it('answers an unknown command with UnknownCommand', async () => {
    const { a } = pair();
    const err = await rejection(a.call('frobnicate'));
    expect(err.code).toBe('UnknownCommand');
    expect(err.message).toContain('frobnicate');
  });

  it('keeps working after errors', async () => {
    const { a, b } = pair();
    b.handle('fail', () => {
      throw new Error('x');
    });
    b.handle('ok', () => ({ fine: 'yes' }));
    await rejection(a.call('fail'));
    await rejection(a.call('nope'));
    await expect(a.call('ok')).resolves.toEqual({ fine: 'yes' });
  });

  it('maps an error code it does not know to Internal, keeping the description', async () => {
    const { peer } = lone();
    // The §3.6 error box answers tag 2.
    void peer.call('first').catch(() => undefined);
    const second = peer.call('Retrieve-Connection', { identifier: 'x' });
    peer.receive(Buffer.from(ERROR_BOX_HEX, 'hex'));
    const err = await rejection(second);
    expect(err.code).toBe('Internal');
    expect(err.message).toBe("'x'");
    peer.close();
  });

  it('answers with an error instead of an answer too big to encode', async () => {
    const { a, b } = pair();
    b.handle('big', () => ({ blob: 'x'.repeat(AMP_MAX_VALUE_LENGTH + 1) }));
    b.handle('wide', () => Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`k${i}`, 'v'])));
    b.handle('sneaky', () => ({ _answer: '99' }));
    for (const command of ['big', 'wide', 'sneaky']) {
      const err = await rejection(a.call(command));
      expect(err.code).toBe('Internal');
      expect(err.message).toContain('answer cannot be encoded');
    }
    expect(b.closed).toBe(false);
  });

  it('cuts an over-long error description instead of failing', async () => {
    const { a, b } = pair();
    b.handle('wordy', () => {
      throw vertexError('BadRequest', `wordy: ${'é'.repeat(100_000)}`);
    });
    const err = await rejection(a.call('wordy'));
    expect(err.code).toBe('BadRequest');
    expect(Buffer.byteLength(err.message)).toBeLessThanOrEqual(MAX_ERROR_DESCRIPTION_BYTES);
    expect(err.message).not.toContain('\ufffd');
  });

  it('rejects arguments that cannot be framed without sending anything', async () => {
    const { peer, sent, clock } = lone();
    expect((await rejection(peer.call('x', { v: 'x'.repeat(AMP_MAX_VALUE_LENGTH + 1) }))).code).toBe('AmpEncode');
    expect((await rejection(peer.call('x', { _ask: '7' }))).code).toBe('AmpEncode');
    expect(() => peer.callNoAnswer('x', { _command: 'y' })).toThrow(VertexError);
    expect(sent).toHaveLength(0);
    expect(clock.pendingTimers()).toBe(0);
  });

  it('ignores a box that is neither a request nor an answer', async () => {
    const { peer } = lone();
    peer.receive(encodeBox({ hello: 'there' }));
    expect(peer.closed).toBe(false);
  });
});

describe('AmpPeer: error codes as Twisted reads them (issue 15)', () => {
  it('answers an unknown command with UNHANDLED, our code first in the description', () => {
    const { peer, sent } = lone();
    peer.receive(encodeBox({ _ask: '7', _command: 'frobnicate' }));
    const [box] = new AmpDecoder().push(Buffer.concat(sent));
    expect(boxToStrings(box!)).toEqual({
      _error: '7',
      _error_code: 'UNHANDLED',
      _error_description: 'UnknownCommand: unknown command "frobnicate"',
    });
  });

  it('answers an internal failure with UNKNOWN and keeps the connection', () => {
    const { peer, sent } = lone();
    peer.handle('boom', () => {
      throw new Error('secret');
    });
    peer.receive(encodeBox({ _ask: '1', _command: 'boom' }));
    const [box] = new AmpDecoder().push(Buffer.concat(sent));
    expect(boxToStrings(box!)).toEqual({ _error: '1', _error_code: 'UNKNOWN', _error_description: 'Internal: internal error' });
    expect(peer.closed).toBe(false);
  });

  it('sends every other code as it is', () => {
    const { peer, sent } = lone();
    peer.handle('login', () => {
      throw vertexError('BadPassword', 'sign alice@a.test: wrong password');
    });
    peer.receive(encodeBox({ _ask: '1', _command: 'login' }));
    const [box] = new AmpDecoder().push(Buffer.concat(sent));
    expect(boxToStrings(box!)).toEqual({ _error: '1', _error_code: 'BadPassword', _error_description: 'sign alice@a.test: wrong password' });
  });

  it.each([
    // [what the peer sends: code, description] -> [our code, our message]
    ['UNHANDLED', "Unhandled Command: b'frob'", 'UnknownCommand', "Unhandled Command: b'frob'"],
    ['UNHANDLED', 'UnknownCommand: unknown command "frob"', 'UnknownCommand', 'unknown command "frob"'],
    ['UNKNOWN', 'Unknown Error', 'Internal', 'Unknown Error'],
    ['UNKNOWN', 'Internal: internal error', 'Internal', 'internal error'],
    ['UnknownCommand', 'unknown command "frob"', 'UnknownCommand', 'unknown command "frob"'],
    ['Internal', 'internal error', 'Internal', 'internal error'],
    ['NoSuchUser', "'alice'", 'NoSuchUser', "'alice'"],
    ['NoSuchConnection', "'x'", 'Internal', "'x'"],
    ['UNHANDLED', 'Internal: not the prefix of this code', 'UnknownCommand', 'Internal: not the prefix of this code'],
  ])('maps _error_code %s (%s) to %s', async (wireCode, description, code, message) => {
    const { peer } = lone();
    const call = peer.call('x');
    peer.receive(encodeBox({ _error: '1', _error_code: wireCode, _error_description: description }));
    const err = await rejection(call);
    expect(err).toBeInstanceOf(AmpRemoteError);
    expect(err.code).toBe(code);
    expect(err.message).toBe(message);
    expect((err as AmpRemoteError).remoteCode).toBe(wireCode);
  });

  it('round-trips our codes between two peers exactly as before the mapping', async () => {
    const { a, b } = pair();
    b.handle('boom', () => {
      throw new Error('x');
    });
    b.handle('deny', () => {
      throw vertexError('Denied', 'deny: not on the list');
    });
    const unknown = await rejection(a.call('frob'));
    expect([unknown.code, unknown.message]).toEqual(['UnknownCommand', 'unknown command "frob"']);
    const internal = await rejection(a.call('boom'));
    expect([internal.code, internal.message]).toEqual(['Internal', 'internal error']);
    const denied = await rejection(a.call('deny'));
    expect([denied.code, denied.message]).toEqual(['Denied', 'deny: not on the list']);
  });

  it('echoes a tag that is not UTF-8 byte for byte', () => {
    // Regression (fuzz): the tag went through a UTF-8 string, so 0xff came back as ef bf bd
    // and the asker could not match its answer.
    const { peer, sent } = lone();
    peer.handle('ping', () => ({}));
    const tag = Buffer.from([0xff, 0x00, 0x80]);
    peer.receive(encodeBox(new Map([['_ask', tag], ['_command', Buffer.from('ping')]])));
    peer.receive(encodeBox(new Map([['_ask', tag], ['_command', Buffer.from('nope')]])));
    const boxes = new AmpDecoder().push(Buffer.concat(sent));
    expect(boxes.map((box) => box.get('_answer') ?? box.get('_error'))).toEqual([tag, tag]);
  });

  it('refuses an argument that is not UTF-8 with BadRequest instead of replacement characters', async () => {
    const { a, b } = pair();
    const got: string[] = [];
    b.handle('identify', (args) => {
      got.push(args.domain ?? '');
      return {};
    });
    const err = await rejection(a.callRaw('identify', { domain: Buffer.from([0x61, 0xff]) }));
    expect(err.code).toBe('BadRequest');
    expect(err.message).toContain('"domain"');
    expect(got).toEqual([]);
    await expect(a.callRaw('identify', { domain: Buffer.from('a.test') })).resolves.toEqual(new Map());
  });
});

describe('AmpPeer: no-answer commands', () => {
  it('runs the responder and sends nothing back, even on error', () => {
    const { a, b, fromA, fromB } = pair();
    const got: string[] = [];
    b.handle('write', (args) => {
      got.push(args.body ?? '');
    });
    b.handle('explode', () => {
      throw new Error('x');
    });
    a.callNoAnswer('write', { id: '1', body: 'data' });
    a.callNoAnswer('explode');
    a.callNoAnswer('unknown-thing');
    expect(got).toEqual(['data']);
    expect(fromA.every((box) => !box.has('_ask'))).toBe(true);
    expect(fromB).toHaveLength(0);
    expect(b.closed).toBe(false);
  });

  it('throws ConnectionLost when closed', () => {
    const { peer } = lone();
    peer.close();
    expect(() => peer.callNoAnswer('write')).toThrow(expect.objectContaining({ code: 'ConnectionLost' }));
  });
});

describe('AmpPeer: timeouts', () => {
  it('rejects with Timeout after the call timeout, and not before', async () => {
    const { peer, clock } = lone();
    const call = peer.call('ping', {}, { timeoutMs: 1000 });
    let settled = false;
    call.catch(() => undefined).finally(() => {
      settled = true;
    });
    clock.advance(999);
    await Promise.resolve();
    expect(settled).toBe(false);
    clock.advance(1);
    const err = await rejection(call);
    expect(err.code).toBe('Timeout');
    expect(err.message).toBe('ping: no answer after 1000 ms');
    expect(peer.pendingCalls).toBe(0);
  });

  it('uses the default timeout, 30 s unless configured', async () => {
    const dflt = lone();
    const call = dflt.peer.call('ping');
    dflt.clock.advance(29_999);
    expect(dflt.peer.pendingCalls).toBe(1);
    dflt.clock.advance(1);
    expect((await rejection(call)).code).toBe('Timeout');

    const custom = lone({ defaultTimeoutMs: 50 });
    const fast = custom.peer.call('ping');
    custom.clock.advance(50);
    expect((await rejection(fast)).code).toBe('Timeout');
  });

  it('ignores an answer that arrives after the timeout', async () => {
    const { peer, clock } = lone();
    const call = peer.call('ping', {}, { timeoutMs: 10 });
    clock.advance(10);
    expect((await rejection(call)).code).toBe('Timeout');
    peer.receive(encodeBox({ _answer: '1' }));
    expect(peer.closed).toBe(false);
  });

  it('cancels the timer when the answer arrives', async () => {
    const { a, b, clock } = pair();
    b.handle('ping', () => ({}));
    await a.call('ping');
    expect(clock.pendingTimers()).toBe(0);
  });

  it('waits for ever with timeoutMs Infinity', () => {
    const { peer, clock } = lone();
    void peer.call('ping', {}, { timeoutMs: Infinity }).catch(() => undefined);
    expect(clock.pendingTimers()).toBe(0);
    peer.close();
  });
});

describe('AmpPeer: fatal framing errors and close', () => {
  it('on garbage: reports once, fails pending calls with ConnectionLost, ignores further input', async () => {
    const fatal: VertexError[] = [];
    const closes: VertexError[] = [];
    const { peer, clock } = lone({ onFatal: (err) => fatal.push(err), onClose: (err) => closes.push(err) });
    let handled = 0;
    peer.handle('ping', () => {
      handled++;
    });
    const call = peer.call('ping');
    peer.receive(Buffer.from([0x01, 0x2c, 0x41]));
    expect(fatal).toHaveLength(1);
    expect(fatal[0]!.code).toBe('AmpDecode');
    expect(fatal[0]!.message).toContain('key length 300 exceeds 255');
    const err = await rejection(call);
    expect(err.code).toBe('ConnectionLost');
    expect(peer.closed).toBe(true);
    expect(closes).toHaveLength(1);
    expect(clock.pendingTimers()).toBe(0);
    peer.receive(encodeBox({ _command: 'ping' }));
    expect(handled).toBe(0);
    expect(fatal).toHaveLength(1);
  });

  it('treats an oversized box as fatal, per its limits', () => {
    const fatal: VertexError[] = [];
    const { peer } = lone({ limits: { maxBoxBytes: 100 }, onFatal: (err) => fatal.push(err) });
    peer.receive(encodeBox({ _command: 'x', blob: 'y'.repeat(200) }));
    expect(fatal.map((e) => e.code)).toEqual(['AmpDecode']);
    expect(peer.closed).toBe(true);
  });

  it('close() fails pending calls, cancels timers and is idempotent', async () => {
    const closes: VertexError[] = [];
    const { peer, clock } = lone({ onClose: (err) => closes.push(err) });
    const calls = [peer.call('a'), peer.call('b')];
    peer.close();
    peer.close();
    const errs = await Promise.all(calls.map(rejection));
    expect(errs.map((e) => e.code)).toEqual(['ConnectionLost', 'ConnectionLost']);
    expect(errs[0]!.message).toContain('a:');
    expect(clock.pendingTimers()).toBe(0);
    expect(closes).toHaveLength(1);
    expect(peer.closed).toBe(true);
  });

  it('close(err) fails pending calls with that error', async () => {
    const { peer } = lone();
    const call = peer.call('a');
    const reason = vertexError('ServerUnavailable', 'server went away');
    peer.close(reason);
    expect(await rejection(call)).toBe(reason);
  });

  it('rejects calls made after close without sending', async () => {
    const { peer, sent } = lone();
    peer.close();
    expect((await rejection(peer.call('a'))).code).toBe('ConnectionLost');
    expect(sent).toHaveLength(0);
  });

  it('does not send an answer that completes after close', async () => {
    const { peer, sent } = lone();
    let finish: (() => void) | undefined;
    peer.handle('slow', () => new Promise<void>((resolve) => (finish = resolve)));
    peer.receive(encodeBox({ _ask: '1', _command: 'slow' }));
    peer.close();
    finish!();
    await new Promise((resolve) => setImmediate(resolve));
    expect(sent).toHaveLength(0);
  });

  it('closes with ConnectionLost when send throws', async () => {
    const peer = new AmpPeer({
      clock: new ManualClock(),
      send: () => {
        throw new Error('EPIPE');
      },
    });
    const err = await rejection(peer.call('x'));
    expect(err.code).toBe('ConnectionLost');
    expect(peer.closed).toBe(true);
  });

  it('only ever rejects calls with VertexError on random input', async () => {
    // Not a property test: a fixed corpus of nasty inputs, each fed to a fresh peer.
    const inputs = [
      Buffer.from('GET / HTTP/1.1\r\n\r\n'),
      Buffer.from([0, 0, 0, 0, 0xff, 0xff]),
      encodeBox({ _answer: 'zz' }),
      encodeBox({ _error: '1' }),
      encodeBox({ _error: '1', _error_code: 'Offline' }),
      encodeBox({ _ask: '1' }),
      encodeBox({ _command: '' }),
    ];
    for (const input of inputs) {
      const { peer } = lone();
      const call = peer.call('x').then(
        () => 'resolved',
        (err: unknown) => (isVertexError(err) ? err.code : 'not a VertexError'),
      );
      peer.receive(input);
      peer.close();
      expect(['ConnectionLost', 'Internal', 'Offline']).toContain(await call);
    }
  });
});
