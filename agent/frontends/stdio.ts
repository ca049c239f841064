/**
 * The stdio front-end, for `vertex connect` as an ssh ProxyCommand: a
 * readable (stdin) and a writable (stdout) joined to a tunnel.
 *
 * The session ends when the tunnel ends, in either direction:
 *
 * - end of input half-closes the tunnel (our side sends its end) while the
 *   answer keeps coming; the session ends when the far side ends too;
 * - the far side's end ends the output and the session at once, with input
 *   still open: nothing more can be answered, and a ProxyCommand or a
 *   `... | vertex connect | wc -c` pipeline must not wait for stdin to close
 *   (issue 13, problem 2). Our end is sent back, so the far side sees a
 *   clean close too.
 *
 * Settles when the tunnel has closed and the output has taken every byte.
 * A tunnel that breaks (an error, or a close before its end) rejects with
 * ConnectionLost and a one-line reason; an output whose reader went away
 * (EPIPE) just ends the session, as for any filter in a pipeline.
 */
import type { Duplex, Readable, Writable } from 'node:stream';
import { vertexError } from '../../q2q/errors';

export interface JoinStdioOptions {
  /** Says what a tunnel failure means to the user, in one line. */
  describeFailure?: (err: Error) => string;
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
    tunnel.once('end', () => {
      // The far side is done: stop reading input and end our side too.
      input.unpipe(tunnel);
      input.pause();
      if (!tunnel.writableEnded) tunnel.end();
    });
    tunnel.once('close', () => {
      tunnelClosed = true;
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
