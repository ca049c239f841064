/**
 * The smallest SOCKS5 CONNECT proxy Node can be: one process, no tunnel, no
 * TLS, no checks. socks-new-connection runs it beside our agents and ssh -D as
 * a floor: what a new connection costs in Node's event loop, sockets and
 * streams alone (bench/README.md, "New-connection cost: the Node floor").
 * ssh -D does two processes' work (ssh and sshd, a channel between them);
 * this does one's, so a Node design with a tunnel between two agents costs at
 * least about twice this floor's user CPU per connection.
 *
 * Not a proxy for anything but the bench: it trusts its client (the greeting
 * and the request each arrive in one read, as the bench's clients send them),
 * and answers success with a zero address once the target is connected.
 */
import * as net from 'node:net';
import { startProgram, type Proc } from './harness';

const SUCCESS = Buffer.from([5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
const NO_AUTH = Buffer.from([5, 0]);

/** Copies `from` into `to` with back-pressure, and its end. */
function forward(from: net.Socket, to: net.Socket): void {
  from.on('data', (chunk: Buffer) => {
    if (to.write(chunk)) return;
    from.pause();
    to.once('drain', () => from.resume());
  });
  from.once('end', () => to.end());
  from.once('close', () => to.destroy());
}

function serve(client: net.Socket): void {
  let greeted = false;
  client.on('error', () => client.destroy());
  const onRequest = (request: Buffer): void => {
    if (!greeted) {
      greeted = true;
      client.write(NO_AUTH);
      return;
    }
    client.off('data', onRequest);
    client.pause();
    // ATYP 1 (IPv4) or 3 (a name): the bench asks for 127.0.0.1 by address.
    const hostEnd = request[3] === 1 ? 8 : 5 + (request[4] ?? 0);
    const host = request[3] === 1 ? request.subarray(4, 8).join('.') : request.subarray(5, hostEnd).toString('latin1');
    const target = net.connect({ host, port: request.readUInt16BE(hostEnd), allowHalfOpen: true, noDelay: true });
    target.on('error', () => {
      target.destroy();
      client.destroy();
    });
    target.once('connect', () => {
      client.write(SUCCESS);
      forward(client, target);
      forward(target, client);
      client.resume();
    });
  };
  client.on('data', onRequest);
}

export interface NodeFloorProxy {
  port: number;
  proc: Proc;
}

/** Starts the floor proxy as a child process; resolves once it listens. */
export async function startNodeFloorProxy(): Promise<NodeFloorProxy> {
  const proc = startProgram(process.execPath, [__filename]);
  const m = await proc.waitFor(/^listening (\d+)$/m);
  return { port: Number(m[1]), proc };
}

if (require.main === module) {
  const server = net.createServer({ allowHalfOpen: true, noDelay: true }, serve);
  server.listen(0, '127.0.0.1', () => process.stdout.write(`listening ${(server.address() as net.AddressInfo).port}\n`));
}
