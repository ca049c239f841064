import * as net from 'node:net';
import { ForwardListener } from '../../../../agent/frontends/forward';
import { vertexError } from '../../../../q2q/errors';
import { readAll, socketPairs, type PairFactory } from '../socket-pair';

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

describe('ForwardListener', () => {
  let pairs: PairFactory;
  beforeEach(async () => {
    pairs = await socketPairs();
  });
  afterEach(() => pairs.close());

  it('tunnels each client, holding its first bytes until the dial finished', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const forward = new ForwardListener({
      listen: { host: '127.0.0.1', port: 0 },
      to: 'bob@b.test:echo',
      dial: async () => {
        await gate;
        const [mine, theirs] = await pairs.pair();
        theirs.pipe(theirs);
        return mine;
      },
    });
    const { port } = await forward.start();
    try {
      const client = await connect(port);
      const back = readAll(client);
      client.end('sent before the tunnel existed');
      release();
      expect((await back).toString()).toBe('sent before the tunnel existed');
    } finally {
      await forward.stop({ closeTunnels: true });
    }
  });

  it('closes the client when the dial fails, and keeps listening', async () => {
    let fail = true;
    const forward = new ForwardListener({
      listen: { host: '127.0.0.1', port: 0 },
      to: 'bob@b.test:echo',
      dial: async () => {
        if (fail) throw vertexError('Offline', 'bob@b.test is offline');
        const [mine, theirs] = await pairs.pair();
        theirs.end('ok');
        return mine;
      },
    });
    const { port } = await forward.start();
    try {
      const refused = await connect(port);
      refused.on('error', () => undefined);
      expect((await readAll(refused).catch(() => Buffer.alloc(0))).length).toBe(0);
      fail = false;
      expect((await readAll(await connect(port))).toString()).toBe('ok');
    } finally {
      await forward.stop({ closeTunnels: true });
    }
  });

  it('a port in use is a Usage error that names it', async () => {
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      const forward = new ForwardListener({ listen: { host: '127.0.0.1', port }, to: 'bob@b.test:echo', dial: async () => { throw new Error('unused'); } });
      await expect(forward.start()).rejects.toMatchObject({ code: 'Usage', message: expect.stringContaining(`127.0.0.1:${port} -> bob@b.test:echo: listen: address already in use`) });
    } finally {
      await new Promise<void>((r) => busy.close(() => r()));
    }
  });
});
