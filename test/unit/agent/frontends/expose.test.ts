import * as net from 'node:net';
import { exposeHandler, exposePrepare } from '../../../../agent/frontends/expose';
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

  describe('exposePrepare', () => {
    async function serve(onConnection: (s: net.Socket) => void): Promise<{ port: number; close: () => Promise<void> }> {
      const target = net.createServer({ allowHalfOpen: true }, onConnection);
      await new Promise<void>((r) => target.listen(0, '127.0.0.1', () => r()));
      return { port: (target.address() as net.AddressInfo).port, close: () => new Promise<void>((r) => target.close(() => r())) };
    }

    it('holds what a target says at once for the stream, which gets it first and then the rest', async () => {
      const target = await serve((s) => {
        s.write('banner\n');
        s.on('data', (d: Buffer) => s.write(d));
        s.on('end', () => s.end());
      });
      try {
        const local = await exposePrepare({ host: '127.0.0.1', port: target.port }, 'bob@b.test:banner')();
        // The banner is read but left in the socket's buffer, and nothing ended it.
        await new Promise((r) => setImmediate(r));
        const [caller, inbound] = await pairs.pair();
        exposeHandler({ host: '127.0.0.1', port: target.port })(inbound, local);
        const back = readAll(caller);
        caller.end('echo me');
        expect((await back).toString()).toBe('banner\necho me');
      } finally {
        await target.close();
      }
    });

    it('resolves for a target that says nothing until spoken to, and for one that only closes', async () => {
      const quiet = await serve((s) => {
        s.on('data', (d: Buffer) => s.end(`got ${d.toString()}`));
      });
      const closer = await serve((s) => s.end());
      try {
        const local = await exposePrepare({ host: '127.0.0.1', port: quiet.port }, 'bob@b.test:quiet')();
        expect(local.readableLength).toBe(0);
        const [caller, inbound] = await pairs.pair();
        exposeHandler({ host: '127.0.0.1', port: quiet.port })(inbound, local);
        const back = readAll(caller);
        caller.end('hi');
        expect((await back).toString()).toBe('got hi');

        // An end read during the wait is not lost: the caller still sees the stream end.
        const ending = await exposePrepare({ host: '127.0.0.1', port: closer.port }, 'bob@b.test:closer')();
        await new Promise((r) => setTimeout(r, 20));
        const [caller2, inbound2] = await pairs.pair();
        exposeHandler({ host: '127.0.0.1', port: closer.port })(inbound2, ending);
        const back2 = readAll(caller2);
        caller2.end();
        expect((await back2).length).toBe(0);
      } finally {
        await quiet.close();
        await closer.close();
      }
    });
  });
});
