/**
 * Runs Twisted's AMP (Debian's python3-twisted) for the interop tier.
 *
 * Always /usr/bin/python3: the `python3` first on PATH may be another Python
 * (pyenv here) without Twisted. Where Twisted is missing the tier is skipped
 * with one line naming the package (failed under CI); it never crashes.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tempDir } from '../../helpers/cli';
import { inCi } from '../../helpers/system-tools';

/** VERTEX_TWISTED_PYTHON overrides it (to see the skip, point it at a Python without Twisted). */
export const TWISTED_PYTHON = process.env.VERTEX_TWISTED_PYTHON ?? '/usr/bin/python3';
export const TWISTED_PACKAGE = 'python3-twisted';
const HERE = __dirname;

let availability: string | null | undefined;

/** Null when Twisted's AMP and TLS can run here, else why not. */
export function twistedMissing(): string | null {
  if (availability !== undefined) return availability;
  const probe = spawnSync(TWISTED_PYTHON, ['-c', 'import twisted.protocols.amp, twisted.internet.ssl, OpenSSL'], { encoding: 'utf8' });
  availability = probe.status === 0 ? null : `${TWISTED_PYTHON} cannot import twisted (${(probe.error?.message ?? probe.stderr).trim().split('\n').pop()})`;
  return availability;
}

/**
 * describe() when Twisted is here. Otherwise, as for the other system tiers
 * (test/helpers/system-tools.ts): one line on stderr naming the package and a
 * skipped block, or under CI, where .ci/run installs it, one failing test.
 */
export function describeWithTwisted(name: string, fn: () => void): void {
  const missing = twistedMissing();
  if (missing === null) {
    describe(name, fn);
    return;
  }
  const line = `${name} needs Twisted: apt-get update && apt-get install -y ${TWISTED_PACKAGE} (${missing})`;
  if (inCi()) {
    describe(name, () => {
      it('has Twisted', () => {
        throw new Error(`${line} (.ci/run installs it; this CI setup is broken)`);
      });
    });
    return;
  }
  process.stderr.write(`skipped: ${line}\n`);
  describe.skip(name, fn);
}

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type Line = Record<string, JsonValue>;

/** Runs amp_client.py with `plan` and returns the lines it printed. */
export function runTwistedClient(plan: unknown, timeoutMs = 120_000): Promise<Line[]> {
  const dir = tempDir('twisted-plan');
  const file = path.join(dir, 'plan.json');
  fs.writeFileSync(file, JSON.stringify(plan));
  return new Promise((resolve, reject) => {
    const child = spawn(TWISTED_PYTHON, [path.join(HERE, 'amp_client.py'), file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`twisted client: no exit after ${timeoutMs} ms\n${stdout}\n${stderr}`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      fs.rmSync(dir, { recursive: true, force: true });
      const lines = stdout.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Line);
      const fatal = lines.find((l) => 'fatal' in l);
      if (code !== 0 || fatal || !lines.some((l) => l.done === true)) {
        reject(new Error(`twisted client exited ${code}: ${String(fatal?.fatal ?? '')}\n${stderr}`));
        return;
      }
      resolve(lines);
    });
  });
}

export interface TwistedServer {
  port: number;
  /** Lines the server printed (events), in order. */
  lines: Line[];
  stop: () => Promise<void>;
}

/** Starts amp_server.py on a loopback port chosen by the OS. */
export function startTwistedServer(args: string[] = []): Promise<TwistedServer> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(TWISTED_PYTHON, [path.join(HERE, 'amp_server.py'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: Line[] = [];
    let buffered = '';
    let stderr = '';
    let started = false;
    const exited = new Promise<void>((done) => child.once('close', () => done()));
    const stop = async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    };
    child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.stdout?.on('data', (d: Buffer) => {
      buffered += d.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const text = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (text.trim() === '') continue;
        const line = JSON.parse(text) as Line;
        lines.push(line);
        if (!started && typeof line.port === 'number') {
          started = true;
          resolve({ port: line.port, lines, stop });
        }
      }
    });
    child.once('error', reject);
    child.once('close', (code) => {
      if (!started) reject(new Error(`twisted server exited ${code} before listening:\n${stderr}`));
    });
  });
}
