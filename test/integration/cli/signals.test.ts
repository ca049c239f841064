/**
 * The one signal helper (cli/signals.ts) in a process of its own, the built
 * one, with real signals.
 *
 * A command that has finished keeps its handlers until the process is gone:
 * `vertex receive --once` used to remove them before its last steps, and a
 * SIGTERM that landed there (the devices test stops the receive as soon as
 * the sender exits) killed it, so its parent saw "killed by SIGTERM" and no
 * exit status. Here the child holds itself in that last stretch, so the
 * signal lands there every time; the `dispose` run shows the old order fails.
 */
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { ROOT } from '../../helpers/cli';

const SIGNALS_JS = path.join(ROOT, 'dist', 'cli', 'signals.js');

/**
 * A child that installs the stop handlers, then (after `before`, if any)
 * finishes with status 3 the way the mode says and stays in its exit path
 * until a signal arrives; returns how it ended.
 */
function child(mode: 'finish' | 'dispose', before?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  const script = `
    const { onStopSignals } = require(${JSON.stringify(SIGNALS_JS)});
    const signals = onStopSignals(() => process.stdout.write('stopping\\n'), { exit: false, announce: false });
    const hold = setInterval(() => undefined, 60000);
    const finish = () => {
      const status = ${mode === 'finish' ? 'signals.finish(3)' : '(signals.dispose(), signals.exitCode(3))'};
      process.stdout.write('finished ' + status + '\\n');
      // The rest of the exit path (closing sockets, flushing): the signal lands here.
      setTimeout(() => { clearInterval(hold); process.exit(status); }, 60000);
    };
    if (process.argv[1] === 'wait') process.stdin.once('data', finish); else finish();
    process.stdout.write('ready\\n');
  `;
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, ['-e', script, before ? 'wait' : 'now'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let stderr = '';
    proc.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    let sentBefore = false;
    let sentLate = false;
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (before && !sentBefore && out.includes('ready')) {
        sentBefore = true;
        proc.kill(before);
      }
      if (before && sentBefore && out.includes('stopping') && !out.includes('finished')) proc.stdin.write('go\n');
      if (!sentLate && out.includes('finished')) {
        sentLate = true;
        proc.kill('SIGTERM');
      }
    });
    // A hang guard only: every case ends on a signal it was sent.
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`child did not end: ${out}`)); }, 30_000);
    proc.on('error', reject);
    proc.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr });
    });
  });
}

describe('stop signals after a command has finished', () => {
  it('a SIGTERM in the exit path exits with the command\'s own status, not killed by the signal', async () => {
    expect(await child('finish')).toEqual({ code: 3, signal: null, stderr: '' });
  });

  it('a Ctrl-C before the finish still makes it 130, and a later SIGTERM keeps that', async () => {
    expect(await child('finish', 'SIGINT')).toEqual({ code: 130, signal: null, stderr: '' });
  });

  it('can fail: with the handlers removed first (the old order) the same SIGTERM kills the process', async () => {
    expect(await child('dispose')).toEqual({ code: null, signal: 'SIGTERM', stderr: '' });
  });
});
