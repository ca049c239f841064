/**
 * The one signal helper: every command that runs until stopped uses it.
 *
 * - The first SIGINT or SIGTERM calls `stop` (once). With `exit` (the
 *   default) the process then exits: 130 after SIGINT (Ctrl-C, 128 + 2, what
 *   shells report for an interrupted program) and 0 after SIGTERM (a service
 *   manager asked for a stop and got a clean one), 1 if stopping failed.
 * - A second signal exits at once with the same status.
 * - Once the command has finished (`finish`), a stop signal exits at once
 *   with the command's own status. The handlers stay until the process is
 *   gone: removing them puts back the default action, and a SIGTERM in the
 *   last milliseconds of a finished `vertex receive --once` then killed it,
 *   so its parent saw "killed by SIGTERM" instead of its status.
 * - SIGHUP is not handled here: the agent uses it to reload and reconnect.
 */
import { EXIT } from './exit-codes';

export const SIGNAL_EXIT: Readonly<Record<'SIGINT' | 'SIGTERM', number>> = { SIGINT: 130, SIGTERM: EXIT.ok };

export interface StopSignals {
  /** The signal that asked for the stop, once one has. */
  readonly signal: NodeJS.Signals | null;
  /** The exit status for the signal seen (SIGNAL_EXIT), or `fallback` when none was. */
  exitCode(fallback: number): number;
  /**
   * The command is done and on its way out: returns the status to exit with
   * (exitCode(status)), and from now on a stop signal exits at once with it
   * instead of stopping anything.
   */
  finish(status: number): number;
  /** Removes the handlers (for a process that goes on with other work). */
  dispose(): void;
}

export interface StopSignalOptions {
  /** Exit once `stop` has settled; default true. */
  exit?: boolean;
  /** Print `vertex: SIGINT, stopping` on stderr; default true. */
  announce?: boolean;
}

export function onStopSignals(stop: (signal: NodeJS.Signals) => Promise<void> | void, opts: StopSignalOptions = {}): StopSignals {
  let seen: NodeJS.Signals | null = null;
  let finished: number | null = null;
  const codeFor = (signal: NodeJS.Signals): number => SIGNAL_EXIT[signal as 'SIGINT' | 'SIGTERM'] ?? EXIT.other;
  const handler = (signal: NodeJS.Signals): void => {
    if (finished !== null) process.exit(finished);
    if (seen) process.exit(codeFor(seen));
    seen = signal;
    if (opts.announce ?? true) process.stderr.write(`vertex: ${signal}, stopping\n`);
    Promise.resolve()
      .then(() => stop(signal))
      .then(
        () => {
          if (opts.exit ?? true) process.exit(codeFor(signal));
        },
        (err: unknown) => {
          process.stderr.write(`vertex: stopping failed: ${err instanceof Error ? err.message : String(err)}\n`);
          process.exit(EXIT.other);
        },
      );
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return {
    get signal() {
      return seen;
    },
    exitCode: (fallback) => (seen ? codeFor(seen) : fallback),
    finish: (status) => {
      finished ??= seen ? codeFor(seen) : status;
      return finished;
    },
    dispose: () => {
      process.off('SIGINT', handler);
      process.off('SIGTERM', handler);
    },
  };
}
