/**
 * The stdio front-end, for `vertex connect` as an ssh ProxyCommand: a
 * readable (stdin) and a writable (stdout) joined to a tunnel, half-close
 * kept both ways. End of input ends our sending side of the tunnel while
 * the answer keeps coming; the tunnel's end ends the output (closing a pipe,
 * shutting down a socket) while input may still flow.
 *
 * Settles when the tunnel has closed and the output has taken every byte.
 * A tunnel that fails rejects; an output whose reader went away (EPIPE)
 * just ends the session, as for any filter in a pipeline.
 */
import type { Duplex, Readable, Writable } from 'node:stream';
import { vertexError } from '../../q2q/errors';

export interface JoinStdioOptions {
  /**
   * Says what a tunnel failure means to the user. When the tunnel is the agent's control
   * socket, a reset only says the agent dropped it; the reason is in the agent's log.
   */
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
    tunnel.once('close', () => {
      tunnelClosed = true;
      if (!failed && !outputGone && !tunnel.readableEnded) failed = vertexError('ConnectionLost', 'tunnel: closed by the other side before it finished');
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
