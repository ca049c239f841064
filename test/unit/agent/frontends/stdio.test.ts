import { PassThrough } from 'node:stream';
import { joinStdio } from '../../../../agent/frontends/stdio';
import { ManualClock } from '../../../../q2q/util/clock';
import { readAll, socketPairs, type PairFactory } from '../socket-pair';

async function waitFor(check: () => boolean): Promise<void> {
  for (let i = 0; i < 3_000 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(check()).toBe(true);
}

describe('joinStdio', () => {
  let pairs: PairFactory;
  beforeEach(async () => {
    pairs = await socketPairs();
  });
  afterEach(() => pairs.close());

  it('input end half-closes the tunnel; the answer still reaches the output, which then ends', async () => {
    const [tunnel, remote] = await pairs.pair();
    const input = new PassThrough();
    const output = new PassThrough();
    const outputText = readAll(output);
    const done = joinStdio(input, output, tunnel);
    const atRemote = readAll(remote);
    input.end('request');
    expect((await atRemote).toString()).toBe('request');
    remote.end('answer sent after the request ended');
    await done;
    expect((await outputText).toString()).toBe('answer sent after the request ended');
  });

  it('the remote ending first ends the output, and the session once input is idle, with input still open (issue 13, problem 2)', async () => {
    const [tunnel, remote] = await pairs.pair();
    const clock = new ManualClock();
    const input = new PassThrough();
    const output = new PassThrough();
    const outputText = readAll(output);
    const atRemote = readAll(remote);
    let settled = false;
    const done = joinStdio(input, output, tunnel, { clock, idleAfterEndMs: 1_000 }).finally(() => { settled = true; });
    input.write('request');
    remote.end('answer');
    expect((await outputText).toString()).toBe('answer');
    await waitFor(() => clock.pendingTimers() === 1);
    clock.advance(999);
    await new Promise((r) => setImmediate(r));
    expect(settled).toBe(false);
    clock.advance(1);
    // Our end goes back: the remote sees a clean close, and the session settles without input ending.
    expect((await atRemote).toString()).toBe('request');
    await done;
    expect(input.writableEnded).toBe(false);
  });

  it('input still flowing after the remote ended reaches the remote whole (a half-close, as the NAT lab\'s upload)', async () => {
    const [tunnel, remote] = await pairs.pair();
    const clock = new ManualClock();
    const input = new PassThrough();
    const output = new PassThrough();
    const outputText = readAll(output);
    const atRemote = readAll(remote);
    const done = joinStdio(input, output, tunnel, { clock, idleAfterEndMs: 1_000 });
    const sent: Buffer[] = [];
    const piece = (i: number) => Buffer.alloc(16 * 1024, i);
    input.write(piece(0));
    sent.push(piece(0));
    remote.end('done talking');
    expect((await outputText).toString()).toBe('done talking');
    for (let i = 1; i <= 20; i++) {
      // Each piece comes before the idle time runs out, so the upload goes on.
      clock.advance(900);
      input.write(piece(i));
      sent.push(piece(i));
      await new Promise((r) => setImmediate(r));
    }
    input.end();
    expect((await atRemote).equals(Buffer.concat(sent))).toBe(true);
    await done;
  });

  it('can fail: stopping input at the remote\'s end (the old behaviour) loses the rest of the upload', async () => {
    const [tunnel, remote] = await pairs.pair();
    const input = new PassThrough();
    const output = new PassThrough();
    output.resume();
    const atRemote = readAll(remote);
    const done = joinStdio(input, output, tunnel, { idleAfterEndMs: 0 });
    input.write('first');
    remote.end();
    await new Promise((r) => setTimeout(r, 50));
    input.write('second');
    input.end();
    expect((await atRemote).toString()).toBe('first');
    await done;
  });

  it('a tunnel cut off mid-way rejects with ConnectionLost', async () => {
    const [tunnel, remote] = await pairs.pair();
    const input = new PassThrough();
    const output = new PassThrough();
    output.resume();
    const done = joinStdio(input, output, tunnel);
    remote.resetAndDestroy();
    await expect(done).rejects.toMatchObject({ code: 'ConnectionLost' });
  });

  it('a failure is described by the caller when it knows more (the agent dropped the tunnel)', async () => {
    const [tunnel, remote] = await pairs.pair();
    const input = new PassThrough();
    const output = new PassThrough();
    output.resume();
    const done = joinStdio(input, output, tunnel, { describeFailure: (err) => `agent dropped it (${(err as NodeJS.ErrnoException).code})` });
    remote.resetAndDestroy();
    await expect(done).rejects.toMatchObject({ code: 'ConnectionLost', message: 'agent dropped it (ECONNRESET)' });
  });

  it('an output whose reader left (EPIPE) ends the session quietly', async () => {
    const [tunnel, remote] = await pairs.pair();
    remote.on('error', () => undefined);
    const input = new PassThrough();
    const output = new PassThrough();
    const done = joinStdio(input, output, tunnel);
    output.emit('error', Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
    await expect(done).resolves.toBeUndefined();
  });
});
