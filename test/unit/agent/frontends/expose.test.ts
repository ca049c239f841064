import * as net from 'node:net';
import { exposeHandler } from '../../../../agent/frontends/expose';
import { closed, readAll, socketPairs, type PairFactory } from '../socket-pair';

describe('exposeHandler', () => {
  let pairs: PairFactory;
  beforeEach(async () => {
    pairs = await socketPairs();
  });
  afterEach(() => pairs.close());

  it('joins each inbound stream to a new connection to the local target, with half-close', async () => {
    const target = net.createServer({ allowHalfOpen: true }, (s) => {
      readAll(s).then((got) => s.end(`got ${got.length} bytes`), () => undefined);
    });
    await new Promise<void>((r) => target.listen(0, '127.0.0.1', () => r()));
    const port = (target.address() as net.AddressInfo).port;
    try {
      const handle = exposeHandler({ host: '127.0.0.1', port });
      const [caller, inbound] = await pairs.pair();
      handle(inbound);
      const back = readAll(caller);
      caller.end(Buffer.alloc(70_000));
      expect((await back).toString()).toBe('got 70000 bytes');
    } finally {
      await new Promise<void>((r) => target.close(() => r()));
    }
  });

  it('closes the inbound stream when the local target refuses', async () => {
    const free = net.createServer();
    await new Promise<void>((r) => free.listen(0, '127.0.0.1', () => r()));
    const port = (free.address() as net.AddressInfo).port;
    await new Promise<void>((r) => free.close(() => r()));
    const [caller, inbound] = await pairs.pair();
    caller.on('error', () => undefined);
    caller.resume();
    const c = closed(inbound);
    exposeHandler({ host: '127.0.0.1', port })(inbound);
    await c;
  });
});
