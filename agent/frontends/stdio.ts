/**
 * The stdio front-end, for `vertex connect` as an ssh ProxyCommand: a
 * readable (stdin) and a writable (stdout) joined to a tunnel.
 *
 * The session ends when the tunnel ends, in either direction:
 *
 * - end of input half-closes the tunnel (our side sends its end) while the
 *   answer keeps coming; the session ends when the far side ends too;
 * - the far side's end ends the output; input that is still flowing keeps
 *   going to the far side (a half-close: a service may say its piece, end
 *   its writes and still read, as TCP allows), and once input has been idle
 *   for `idleAfterEndMs` (1 s) we stop reading it and send our end, so a
 *   ProxyCommand or a `... | vertex connect | wc -c` pipeline does not wait
 *   for stdin to close (issue 13, problem 2). socat's `-t` is the same idea;
 *   going idle, not a fixed time, decides, so an upload still under way is
 *   never cut (the NAT lab lost the last 40 KB of a 256 KB upload to the
 *   old 'stop at once'). The far side sees a clean close.
 *
 * Settles when the tunnel has closed and the output has taken every byte.
 * A tunnel that breaks (an error, or a close before its end) rejects with
 * ConnectionLost and a one-line reason; an output whose reader went away
 * (EPIPE) just ends the session, as for any filter in a pipeline.
 */
import type { Duplex, Readable, Writable } from 'node:stream';
import { vertexError } from '../../q2q/errors';
import { systemClock, type Clock, type Timer } from '../../q2q/util/clock';

/** How long input may sit idle after the far side ended before we end ours. */
export const IDLE_AFTER_END_MS = 1_000;

export interface JoinStdioOptions {
  /** Says what a tunnel failure means to the user, in one line. */
  describeFailure?: (err: Error) => string;
  /** Input idle this long after the far side's end ends the session [IDLE_AFTER_END_MS]. */
  idleAfterEndMs?: number;
  clock?: Clock;
}

export function joinStdio(input: Readable, output: Writable, tunnel: Duplex, opts: JoinStdioOptions = {}): Promise<void> {
  const describe = opts.describeFailure ?? ((err: Error) => `tunnel: ${err.message}`);
  return new Promise((resolve, reject) => {
    let failed: Error | undefined;
    let tunnelClosed = false;
    let outputDone = false;
    /** The output's reader left; tearing the tunnel down after that is our doing, not a failure. */
    let outputGone = false;
    const settle = (): void => {
      if (failed) {
        reject(failed);
        return;
      }
      if (tunnelClosed && outputDone) resolve();
    };
    tunnel.on('error', (err) => {
      failed ??= vertexError('ConnectionLost', describe(err), err);
    });
    const clock = opts.clock ?? systemClock;
    const idleAfterEndMs = opts.idleAfterEndMs ?? IDLE_AFTER_END_MS;
    let idleTimer: Timer | undefined;
    const stopInput = (): void => {
      idleTimer?.cancel();
      idleTimer = undefined;
      input.off('data', onInputAfterEnd);
      input.unpipe(tunnel);
      input.pause();
      if (!tunnel.writableEnded) tunnel.end();
    };
    const armIdle = (): void => {
      idleTimer?.cancel();
      idleTimer = clock.setTimer(() => {
        // Input held back by the tunnel's back-pressure is not idle.
        if (tunnel.writableNeedDrain && !tunnel.destroyed) armIdle();
        else stopInput();
      }, idleAfterEndMs);
    };
    function onInputAfterEnd(): void {
      armIdle();
    }
    tunnel.once('end', () => {
      // The far side is done writing. Our input may still be on its way
      // (a half-close); we end our side once it ends or goes idle.
      if (input.readableEnded || tunnel.writableEnded) return;
      input.on('data', onInputAfterEnd);
      input.once('end', () => {
        idleTimer?.cancel();
        idleTimer = undefined;
      });
      armIdle();
    });
    tunnel.once('close', () => {
      tunnelClosed = true;
      idleTimer?.cancel();
      idleTimer = undefined;
      if (!failed && !outputGone && !tunnel.readableEnded) failed = vertexError('ConnectionLost', describe(new Error('closed by the other side before it finished')));
      if (failed) {
        input.unpipe(tunnel);
        outputDone = true;
      }
      settle();
    });
    output.on('error', (err: NodeJS.ErrnoException) => {
      // The reader of our output is gone; nothing more can be delivered.
      outputDone = true;
      outputGone = true;
      if (err.code !== 'EPIPE') failed ??= vertexError('Internal', `output: ${err.message}`, err);
      tunnel.destroy();
      settle();
    });
    output.once('finish', () => {
      outputDone = true;
      settle();
    });
    input.on('error', (err) => {
      failed ??= vertexError('Internal', `input: ${err.message}`, err);
      tunnel.destroy();
    });
    input.pipe(tunnel);
    tunnel.pipe(output);
  });
}
