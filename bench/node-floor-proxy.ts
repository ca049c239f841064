/**
 * The least a SOCKS proxy in Node can do per connection, as floors for
 * socks-new-connection (bench/README.md, "New-connection cost: the Node floor"):
 *
 * - one process (`proxy`): a SOCKS5 CONNECT proxy that connects to the target
 *   itself. No tunnel, no TLS, no checks.
 * - two processes (`near` and `far`), the shape of ssh -D and of our two
 *   agents: `near` answers SOCKS and, for each CONNECT, opens a plain TCP
 *   connection to `far`, writes `host port\n` and replies success at once (the
 *   request pipelined, as our early streams do); `far` reads the line, connects
 *   to the target and joins the two. No TLS, no multiplexing, no checks, no
 *   accounting: what two Node processes cost a connection before any of the
 *   work a tunnel between identities does.
 *
 * Not a proxy for anything but the bench: it trusts its client (the greeting,
 * the request and `far`'s line each arrive in one read, as the bench sends
 * them), and answers success with a zero address.
 */
import * as net from 'node:net';
import { startProgram, type Proc } from './harness';

const SUCCESS = Buffer.from([5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
const NO_AUTH = Buffer.from([5, 0]);
const NEWLINE = 0x0a;
const SOCKET_OPTIONS = { allowHalfOpen: true, noDelay: true } as const;

/**
 * Copies `from` into `to` with back-pressure, and its end. Not agent/frontends/join.ts: the
 * floor is what Node costs without our code, so it has none of its teardown or gathering.
 */
function forward(from: net.Socket, to: net.Socket): void {
  from.on('data', (chunk: Buffer) => {
    if (to.write(chunk)) return;
    from.pause();
    to.once('drain', () => from.resume());
  });
  from.once('end', () => to.end());
  from.once('close', () => to.destroy());
}

function joinSockets(a: net.Socket, b: net.Socket): void {
  const fail = (): void => {
    a.destroy();
    b.destroy();
  };
  a.on('error', fail);
  b.on('error', fail);
  forward(a, b);
  forward(b, a);
}

/** Answers the greeting, then hands the CONNECT's host and port on (the client paused). */
function socksServe(client: net.Socket, onConnect: (host: string, port: number) => void): void {
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
    // ATYP 1 (IPv4) or 3 (a name).
    const hostEnd = request[3] === 1 ? 8 : 5 + (request[4] ?? 0);
    const host = request[3] === 1 ? request.subarray(4, 8).join('.') : request.subarray(5, hostEnd).toString('latin1');
    onConnect(host, request.readUInt16BE(hostEnd));
  };
  client.on('data', onRequest);
}

function oneProcess(client: net.Socket): void {
  socksServe(client, (host, port) => {
    const target = net.connect({ host, port, ...SOCKET_OPTIONS });
    target.once('connect', () => {
      client.write(SUCCESS);
      joinSockets(client, target);
      client.resume();
    });
    target.on('error', () => client.destroy());
  });
}

function near(farPort: number): (client: net.Socket) => void {
  return (client) => socksServe(client, (host, port) => {
    const far = net.connect({ host: '127.0.0.1', port: farPort, ...SOCKET_OPTIONS });
    far.write(`${host} ${port}\n`);
    client.write(SUCCESS);
    joinSockets(client, far);
    client.resume();
  });
}

function far(from: net.Socket): void {
  from.on('error', () => from.destroy());
  from.once('data', (chunk: Buffer) => {
    from.pause();
    const at = chunk.indexOf(NEWLINE);
    const [host, port] = chunk.subarray(0, at).toString('latin1').split(' ');
    const rest = chunk.subarray(at + 1);
    const target = net.connect({ host, port: Number(port), ...SOCKET_OPTIONS });
    target.on('error', () => from.destroy());
    target.once('connect', () => {
      if (rest.length > 0) target.write(rest);
      joinSockets(from, target);
      from.resume();
    });
  });
}

export interface NodeFloorProxy {
  /** Where SOCKS clients connect. */
  port: number;
  procs: Proc[];
  stop(): Promise<void>;
}

async function startMode(args: string[]): Promise<{ port: number; proc: Proc }> {
  const proc = startProgram(process.execPath, [__filename, ...args]);
  const m = await proc.waitFor(/^listening (\d+)$/m);
  return { port: Number(m[1]), proc };
}

/** The one-process floor. */
export async function startNodeFloorProxy(): Promise<NodeFloorProxy> {
  const { port, proc } = await startMode(['proxy']);
  return { port, procs: [proc], stop: () => proc.stop() };
}

/** The two-process floor: SOCKS clients connect to `near`, which reaches the target through `far`. */
export async function startNodeFloorPair(): Promise<NodeFloorProxy> {
  const farEnd = await startMode(['far']);
  const nearEnd = await startMode(['near', String(farEnd.port)]);
  return {
    port: nearEnd.port, procs: [nearEnd.proc, farEnd.proc],
    stop: async () => {
      await nearEnd.proc.stop();
      await farEnd.proc.stop();
    },
  };
}

if (require.main === module) {
  const [mode, farPort] = process.argv.slice(2);
  const serve = mode === 'far' ? far : mode === 'near' ? near(Number(farPort)) : oneProcess;
  const server = net.createServer(SOCKET_OPTIONS, serve);
  server.listen(0, '127.0.0.1', () => process.stdout.write(`listening ${(server.address() as net.AddressInfo).port}\n`));
}
