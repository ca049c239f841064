/**
 * `vertex ping`: reach a peer and report the route and round-trip time,
 * like `tailscale ping`.
 *
 * Every agent exposes PING_SERVICE, which echoes a few small probes and
 * hangs up. `vertex ping bob@b.test` connects to it and times each probe's
 * echo over the tunnel. `vertex ping -c N bob@b.test:ssh` connects to that
 * service N times (its protocol is not ours to speak) and reports each
 * connect's time; a connect completes only once the program behind the
 * service accepted, so a target that refuses fails the ping with Refused
 * (exit 4), never "connected".
 */
import type { Duplex } from 'node:stream';
import { vertexError } from '../q2q/errors';
import { systemClock, type Clock } from '../q2q/util/clock';

export const PING_SERVICE = 'vertex-ping';
export const PROBE_BYTES = 8;
/** The echo side hangs up after this many bytes: a probe stream is not a data channel. */
export const MAX_PING_BYTES = PROBE_BYTES * 64;
export const MAX_PING_COUNT = 50;
export const DEFAULT_PING_COUNT = 3;
/** How long one probe's echo may take. */
export const PROBE_TIMEOUT_MS = 5_000;

export interface PingResult {
  target: string;
  peer: string;
  /** The peer's device that answered (README "Several machines per user"). */
  device: string;
  route: string;
  connectMs: number;
  /**
   * 'echo': rttMs are round trips of probes over one stream to the ping service;
   * 'connect': a service was named, and rttMs are the times of `count` whole connects,
   * each one complete only once the program behind the service accepted.
   */
  kind: 'echo' | 'connect';
  /** In ms, one per probe or connect. */
  rttMs: number[];
}

export interface ConnectedStream {
  stream: Duplex;
  peer: string;
  device: string;
  route: string;
  connectMs: number;
}

/** The ping service's connection handler: echo, bounded. */
export function pingEchoHandler(stream: Duplex): void {
  let seen = 0;
  stream.on('error', () => stream.destroy());
  stream.on('data', (chunk: Buffer) => {
    seen += chunk.length;
    if (seen > MAX_PING_BYTES) {
      stream.destroy();
      return;
    }
    stream.write(chunk);
  });
  stream.on('end', () => stream.end());
  // Start the flow even if the stream was paused on its way here.
  stream.resume();
}

/**
 * Sends `count` probes one after another over `conn.stream` and times each
 * echo. The stream is closed at the end, also on failure.
 */
export async function runProbes(target: string, conn: ConnectedStream, count: number, clock: Clock = systemClock): Promise<PingResult> {
  const { stream } = conn;
  const rttMs: number[] = [];
  let buffered: Buffer = Buffer.alloc(0);
  let wake: (() => void) | undefined;
  let failure: Error | undefined;
  stream.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    wake?.();
  });
  stream.on('error', (err) => {
    failure = err;
    wake?.();
  });
  // An echo that ended will not echo again: as good as closed.
  for (const event of ['end', 'close']) {
    stream.on(event, () => {
      failure ??= new Error('the peer closed the ping stream');
      wake?.();
    });
  }
  stream.resume();
  try {
    for (let seq = 0; seq < count; seq++) {
      const probe = Buffer.alloc(PROBE_BYTES);
      probe.writeUInt32BE(seq, 0);
      probe.writeUInt32BE(0x70696e67, 4); // "ping"
      const sent = clock.now();
      stream.write(probe);
      await new Promise<void>((resolve, reject) => {
        const timer = clock.setTimer(() => {
          wake = undefined;
          reject(vertexError('Timeout', `ping ${target}: no echo of probe ${seq + 1} within ${PROBE_TIMEOUT_MS} ms`));
        }, PROBE_TIMEOUT_MS);
        const check = (): void => {
          if (buffered.length >= PROBE_BYTES) {
            timer.cancel();
            wake = undefined;
            const echoed = buffered.subarray(0, PROBE_BYTES);
            buffered = buffered.subarray(PROBE_BYTES);
            if (!echoed.equals(probe)) reject(vertexError('BadRequest', `ping ${target}: probe ${seq + 1} came back altered`));
            else resolve();
          } else if (failure) {
            timer.cancel();
            wake = undefined;
            reject(vertexError('ConnectionLost', `ping ${target}: ${failure.message} before echoing probe ${seq + 1}`, failure));
          }
        };
        wake = check;
        check();
      });
      rttMs.push(Math.round((clock.now() - sent) * 100) / 100);
    }
  } finally {
    stream.end();
    stream.destroy();
  }
  return { target, peer: conn.peer, device: conn.device, route: conn.route, connectMs: conn.connectMs, kind: 'echo', rttMs };
}

/** `bob+laptop@b.test`: the peer and the device that answered. */
function deviceName(peer: string, device: string): string {
  const at = peer.indexOf('@');
  return at < 0 || !device ? peer : `${peer.slice(0, at)}+${device}${peer.slice(at)}`;
}

/** One line per probe (or connect), as `vertex ping` prints them. */
export function formatPing(result: PingResult): string {
  const who = deviceName(result.peer, result.device);
  const head = result.kind === 'connect'
    ? `${result.target} via ${result.route}: ${who} accepted ${result.rttMs.length} connection${result.rttMs.length === 1 ? '' : 's'} to the service`
    : `${result.target} via ${result.route}: connected to ${who} in ${result.connectMs} ms`;
  if (result.rttMs.length === 0) return head;
  const label = result.kind === 'connect' ? 'connect' : 'probe';
  const lines = result.rttMs.map((ms, i) => `${label} ${i + 1}: ${ms} ms via ${result.route}`);
  const min = Math.min(...result.rttMs);
  const max = Math.max(...result.rttMs);
  const avg = Math.round((result.rttMs.reduce((a, b) => a + b, 0) / result.rttMs.length) * 100) / 100;
  return [head, ...lines, `rtt min/avg/max ${min}/${avg}/${max} ms`].join('\n');
}
