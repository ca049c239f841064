/** Connected loopback TCP pairs for unit tests, with allowHalfOpen on both ends. */
import * as net from 'node:net';

export interface PairFactory {
  pair(): Promise<[net.Socket, net.Socket]>;
  close(): Promise<void>;
}

export async function socketPairs(): Promise<PairFactory> {
  const waiting: Array<(s: net.Socket) => void> = [];
  const sockets = new Set<net.Socket>();
  const track = (s: net.Socket): void => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  };
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    track(s);
    waiting.shift()?.(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  return {
    async pair() {
      const accepted = new Promise<net.Socket>((resolve) => waiting.push(resolve));
      const client = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
      track(client);
      await new Promise<void>((resolve, reject) => {
        client.once('connect', () => resolve());
        client.once('error', reject);
      });
      return [client, await accepted];
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Collects what `s` receives until it ends. */
export function readAll(s: net.Socket | NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    s.on('data', (d: Buffer) => chunks.push(d));
    s.once('end', () => resolve(Buffer.concat(chunks)));
    s.once('error', reject);
    s.resume();
  });
}

/** Resolves on the socket's next 'close'; call it before whatever closes the socket. */
export function closed(s: net.Socket): Promise<void> {
  return new Promise((resolve) => s.once('close', () => resolve()));
}
