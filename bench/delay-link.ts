/**
 * A link with a round-trip time, for benches that compare protocols by their
 * round trips (a new connection through SOCKS: ssh -D waits for the channel's
 * confirmation before its reply, an early stream does not). This kernel has no
 * netem, so the delay is added in userland: a TCP relay in a process of its
 * own that holds every chunk, and every end, for `oneWayMs` in each direction,
 * in order. It listens on `listenHost` with the same port number as its
 * target on `targetHost` (both on loopback: 127.0.0.2 -> 127.0.0.1), so an
 * agent that advertises `listenHost` for its peer listener is reached
 * through it.
 *
 * Not a model of loss or bandwidth: only latency. Timers fire at whole
 * milliseconds and no earlier than asked, so the real one-way delay is
 * oneWayMs to oneWayMs + ~1.
 */
import { startProgram, type Proc } from './harness';

const SCRIPT = `
const net = require('node:net');
const [listenHost, targetHost, wanted, delay] = [process.argv[1], process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const carry = (from, to) => {
  from.on('data', (chunk) => setTimeout(() => { if (!to.destroyed) to.write(chunk); }, delay));
  from.on('end', () => setTimeout(() => { if (!to.destroyed) to.end(); }, delay));
  from.on('error', () => setTimeout(() => to.destroy(), delay));
};
const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
  const upstream = net.connect({ host: targetHost, port: server.address().port, allowHalfOpen: true, noDelay: true });
  carry(client, upstream);
  carry(upstream, client);
});
server.listen(wanted, listenHost, () => process.stdout.write('delay link up ' + server.address().port + '\\n'));
`;

export interface DelayLink {
  proc: Proc;
  /** The port, on both hosts. */
  port: number;
  stop(): Promise<void>;
}

/** A delay link from listenHost:port to targetHost:port, `oneWayMs` each way; port 0: a free one on listenHost. */
export async function startDelayLink(listenHost: string, targetHost: string, port: number, oneWayMs: number): Promise<DelayLink> {
  const proc = startProgram(process.execPath, ['-e', SCRIPT, listenHost, targetHost, String(port), String(oneWayMs)]);
  const up = await proc.waitFor(/delay link up (\d+)/);
  return { proc, port: Number(up[1]), stop: () => proc.stop() };
}
