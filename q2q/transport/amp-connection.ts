/**
 * Runs an AmpPeer over a Node Duplex (a TCP or TLS socket, or any stream).
 *
 * The stream and the peer live and die together:
 * - broken framing from the remote side destroys the stream at once, with a
 *   warning that says why; nothing else on the process is affected;
 * - the stream closing, erroring or ending fails the peer's pending calls
 *   with ConnectionLost;
 * - peer.close() ends the stream gracefully, and destroys it if the remote
 *   side has not closed within CLOSE_GRACE_MS.
 */
import type { Duplex } from 'node:stream';
import { VertexError, vertexError } from '../errors';
import { AmpPeer } from '../proto/amp-peer';
import { Clock, systemClock } from '../util/clock';
import { Logger, silentLogger } from '../util/log';
import type { AmpLimits } from '../wire/amp';

export interface AttachAmpOptions {
  log?: Logger;
  clock?: Clock;
  limits?: Partial<AmpLimits>;
  defaultTimeoutMs?: number;
}

/** How long a stream we ended may wait for the remote side's end before we destroy it. */
export const CLOSE_GRACE_MS = 5_000;

function gone(stream: Duplex): boolean {
  return stream.destroyed || stream.writableEnded;
}

export function attachAmp(stream: Duplex, opts: AttachAmpOptions = {}): AmpPeer {
  const log = opts.log ?? silentLogger;
  const clock = opts.clock ?? systemClock;

  const peer = new AmpPeer({
    clock,
    log,
    limits: opts.limits,
    defaultTimeoutMs: opts.defaultTimeoutMs,
    send: (bytes) => {
      if (!gone(stream)) stream.write(bytes);
    },
    onFatal: (err: VertexError) => {
      log.warn({ reason: err.message }, `closing amp connection: ${err.message}`);
      stream.destroy();
    },
    onClose: () => {
      if (gone(stream)) return;
      stream.end();
      const grace = clock.setTimer(() => stream.destroy(), CLOSE_GRACE_MS);
      stream.once('close', () => grace.cancel());
    },
  });

  stream.on('data', (chunk: Buffer | string) => {
    peer.receive(typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk);
  });
  // The remote side can send no more boxes, so it can answer nothing more:
  // waiting calls would only time out.
  stream.on('end', () => peer.close(vertexError('ConnectionLost', 'amp connection ended by the peer')));
  stream.on('error', (err: Error) => {
    log.debug({ err }, 'amp connection error');
    peer.close(vertexError('ConnectionLost', `amp connection error: ${err.message}`, err));
  });
  stream.on('close', () => peer.close(vertexError('ConnectionLost', 'amp connection closed')));
  return peer;
}
