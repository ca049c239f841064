import { PassThrough } from 'node:stream';
import { joinStdio } from '../../../../agent/frontends/stdio';
import { readAll, socketPairs, type PairFactory } from '../socket-pair';

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

  it('the remote ending first ends the output and the session, with input still open (issue 13, problem 2)', async () => {
    const [tunnel, remote] = await pairs.pair();
    const input = new PassThrough();
    const output = new PassThrough();
    const outputText = readAll(output);
    const atRemote = readAll(remote);
    const done = joinStdio(input, output, tunnel);
    input.write('request');
    remote.end('answer');
    expect((await outputText).toString()).toBe('answer');
    // Our end goes back: the remote sees a clean close, and the session settles without input ending.
    expect((await atRemote).toString()).toBe('request');
    await done;
    expect(input.writableEnded).toBe(false);
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
