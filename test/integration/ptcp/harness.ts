/** Shared pieces of the PTCP integration tests (real loopback UDP). */
import { createHash, randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { PtcpSocket, type PtcpStream } from '../../../q2q/transport/ptcp-socket';
import { ImpairmentProxy, type Impairment } from '../../../bench/impairment-proxy';

export interface Pair {
  client: PtcpSocket;
  server: PtcpSocket;
  proxy: ImpairmentProxy | null;
  /** Where the client connects (the proxy when there is one). */
  port: number;
  close(): Promise<void>;
}

export async function pair(impairment?: Impairment, seed = 1): Promise<Pair> {
  const client = await PtcpSocket.bind({ host: '127.0.0.1' });
  const server = await PtcpSocket.bind({ host: '127.0.0.1' });
  const proxy = impairment ? await ImpairmentProxy.start({ target: { port: server.address().port }, up: impairment, down: impairment, seed }) : null;
  return {
    client,
    server,
    proxy,
    port: proxy ? proxy.port : server.address().port,
    async close() {
      await client.close();
      await server.close();
      await proxy?.close();
    },
  };
}

/** Reads a stream to its end; resolves with the byte count and SHA-256. */
export function drain(stream: Duplex): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    stream.on('data', (d: Buffer) => {
      hash.update(d);
      bytes += d.length;
    });
    stream.once('end', () => resolve({ bytes, sha256: hash.digest('hex') }));
    stream.once('error', reject);
  });
}

/** Writes `data` in 64 KB chunks honouring back-pressure, then ends the stream. */
export function pump(stream: Duplex, data: Buffer, chunk = 64 * 1024): Promise<void> {
  return new Promise((resolve, reject) => {
    let off = 0;
    stream.once('error', reject);
    const write = (): void => {
      while (off < data.length) {
        const piece = data.subarray(off, off + chunk);
        off += piece.length;
        if (!stream.write(piece)) {
          stream.once('drain', write);
          return;
        }
      }
      stream.end(() => resolve());
    };
    write();
  });
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

export function closed(stream: Duplex): Promise<void> {
  return new Promise((resolve) => (stream.destroyed ? resolve() : stream.once('close', () => resolve())));
}

/** Sends `up` client→server and `down` server→client at once; checks both byte-exact. */
export async function exchange(p: Pair, up: Buffer, down: Buffer): Promise<{ client: PtcpStream; server: PtcpStream }> {
  const accepted = new Promise<PtcpStream>((resolve) => p.server.listen(resolve));
  const client = await p.client.connect('127.0.0.1', p.port);
  const server = await accepted;
  const [gotDown, gotUp] = await Promise.all([drain(client), drain(server), pump(client, up), pump(server, down)]);
  expectResult(gotUp, up);
  expectResult(gotDown, down);
  await Promise.all([closed(client), closed(server)]);
  return { client, server };
}

function expectResult(got: { bytes: number; sha256: string }, want: Buffer): void {
  expect(got.bytes).toBe(want.length);
  expect(got.sha256).toBe(sha256(want));
}

export const payload = (size: number): Buffer => randomBytes(size);
