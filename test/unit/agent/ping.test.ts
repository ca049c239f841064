import { MAX_PING_BYTES, PING_SERVICE, formatPing, pingEchoHandler, runProbes } from '../../../agent/ping';
import { pingWith } from '../../../agent/daemon';
import { vertexError } from '../../../q2q/errors';
import type { Q2QStream } from '../../../q2q/negotiate/types';
import { ManualClock } from '../../../q2q/util/clock';
import { closed, readAll, socketPairs, type PairFactory } from './socket-pair';

describe('ping', () => {
  let pairs: PairFactory;
  beforeEach(async () => {
    pairs = await socketPairs();
  });
  afterEach(() => pairs.close());

  it('times each probe over the echo service and closes the stream', async () => {
    const [mine, theirs] = await pairs.pair();
    pingEchoHandler(theirs);
    const c = closed(mine);
    const result = await runProbes('bob@b.test', { stream: mine, peer: 'bob@b.test', device: 'laptop', route: 'ptcp', connectMs: 42 }, 4);
    expect(result).toMatchObject({ target: 'bob@b.test', peer: 'bob@b.test', device: 'laptop', route: 'ptcp', connectMs: 42 });
    expect(result.rttMs).toHaveLength(4);
    for (const ms of result.rttMs) expect(ms).toBeGreaterThanOrEqual(0);
    await c;
    expect(formatPing(result)).toMatch(/^bob@b\.test via ptcp: connected to bob\+laptop@b\.test in 42 ms\nprobe 1: .* ms via ptcp\n(.|\n)*rtt min\/avg\/max /);
  });

  it('a peer that never echoes is a Timeout naming the probe; one that hangs up is ConnectionLost', async () => {
    const [mine, theirs] = await pairs.pair();
    theirs.resume();
    const clock = new ManualClock();
    const pending = runProbes('bob@b.test', { stream: mine, peer: 'bob@b.test', device: 'laptop', route: 'tcp', connectMs: 1 }, 2, clock);
    await new Promise((r) => setImmediate(r));
    clock.advance(5000);
    await expect(pending).rejects.toMatchObject({ code: 'Timeout', message: expect.stringContaining('probe 1') });

    const [mine2, theirs2] = await pairs.pair();
    theirs2.on('data', () => theirs2.destroy());
    await expect(runProbes('bob@b.test', { stream: mine2, peer: 'bob@b.test', device: 'laptop', route: 'tcp', connectMs: 1 }, 2)).rejects.toMatchObject({ code: 'ConnectionLost' });
  });

  it('the echo side hangs up on a stream that sends more than probes', async () => {
    const [mine, theirs] = await pairs.pair();
    pingEchoHandler(theirs);
    mine.on('error', () => undefined);
    const ended = readAll(mine).catch(() => Buffer.alloc(0));
    mine.write(Buffer.alloc(MAX_PING_BYTES + 1));
    await ended;
    expect(theirs.destroyed).toBe(true);
  });

  it('pingWith probes the ping service for user@domain, and times `count` connects for user@domain:service', async () => {
    const targets: string[] = [];
    const connect = async (target: string): Promise<Q2QStream> => {
      targets.push(target);
      const [mine, theirs] = await pairs.pair();
      pingEchoHandler(theirs);
      const device = /\+([a-z0-9-]+)@/.exec(target)?.[1] ?? 'homeserver';
      return Object.assign(mine, { route: 'relay', peer: 'bob@b.test', device, service: target.split(':')[1], connectMs: 7 }) as unknown as Q2QStream;
    };
    expect((await pingWith(connect, 'Bob@B.test', 1)).rttMs).toHaveLength(1);
    expect(await pingWith(connect, 'bob@b.test:ssh', 3)).toEqual({ target: 'bob@b.test:ssh', peer: 'bob@b.test', device: 'homeserver', route: 'relay', connectMs: 7, kind: 'connect', rttMs: [expect.any(Number), expect.any(Number), expect.any(Number)] });
    const named = await pingWith(connect, 'Bob+Laptop@b.test', 1);
    expect(named).toMatchObject({ target: 'bob+laptop@b.test', device: 'laptop' });
    expect(formatPing(named)).toMatch(/^bob\+laptop@b\.test via relay: connected to bob\+laptop@b\.test in 7 ms/);
    expect(targets).toEqual([`bob@b.test:${PING_SERVICE}`, 'bob@b.test:ssh', 'bob@b.test:ssh', 'bob@b.test:ssh', `bob+laptop@b.test:${PING_SERVICE}`]);
    // A refusing target: the connect rejects, and so does the ping (never "connected").
    const refusing = async (): Promise<Q2QStream> => { throw vertexError('Refused', 'bob@b.test:dead: the service is exposed, but the program behind it refused the connection'); };
    await expect(pingWith(refusing, 'bob@b.test:dead', 5)).rejects.toMatchObject({ code: 'Refused' });
    await expect(pingWith(connect, 'not-an-address', 1)).rejects.toMatchObject({ code: 'InvalidName' });
  });
});
