/**
 * Drives the built `vertex` CLI as a user would: real processes, real
 * sockets on loopback. Every process started here is tracked and killed by
 * pid in stopAll().
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HANG_MS } from './net';

export const ROOT = path.resolve(__dirname, '../..');
export const VERTEX_BIN = path.join(ROOT, 'bin', 'vertex');

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `vertex-${prefix}-`));
}

/** Runs `vertex ...args` to completion (bounded by timeoutMs) and returns its output. */
export function runVertex(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [VERTEX_BIN, ...args], {
      env: { ...process.env, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`vertex ${args.join(' ')}: no exit after ${opts.timeoutMs ?? 30000} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, opts.timeoutMs ?? 30000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(opts.input ?? '');
  });
}

export interface VertexProcess {
  child: ChildProcess;
  output: () => string;
  /**
   * Resolves with the first match of `re` in stdout+stderr from offset `from`
   * on (take `output().length` before an action to wait for what it logs);
   * rejects when the process exits first, or after timeoutMs (a hang guard).
   */
  waitFor: (re: RegExp, timeoutMs?: number, from?: number) => Promise<RegExpMatchArray>;
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
}

const running = new Set<ChildProcess>();

export function startVertex(args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): VertexProcess {
  const child = spawn(process.execPath, [VERTEX_BIN, ...args], {
    env: { ...process.env, ...opts.env },
    cwd: opts.cwd ?? ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let output = '';
  const listeners = new Set<() => void>();
  const onData = (d: Buffer) => {
    output += d.toString();
    for (const l of listeners) l();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => {
    running.delete(child);
    for (const l of listeners) l();
    resolve(code);
  }));
  return {
    child,
    output: () => output,
    waitFor: (re, timeoutMs = HANG_MS, from = 0) => new Promise((resolve, reject) => {
      const check = () => {
        const m = output.slice(from).match(re);
        if (m) { cleanup(); resolve(m); return; }
        if (child.exitCode !== null || child.signalCode !== null) {
          cleanup(); reject(new Error(`process exited (${child.exitCode ?? child.signalCode}) before ${re}:\n${output}`));
        }
      };
      const timer = setTimeout(() => { cleanup(); reject(new Error(`timed out after ${timeoutMs} ms waiting for ${re}:\n${output}`)); }, timeoutMs);
      const cleanup = () => { clearTimeout(timer); listeners.delete(check); };
      listeners.add(check);
      check();
    }),
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        const code = await exited;
        clearTimeout(timer);
        return code;
      }
      return exited;
    },
  };
}

export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((child) => new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('close', () => resolve());
    child.kill('SIGKILL');
  })));
}

export interface ServerHandle {
  proc: VertexProcess;
  port: number;
  dataDir: string;
  resolveArg: (domain: string) => string[];
}

export interface StartServerOptions {
  dataDir?: string;
  extraArgs?: string[];
  listen?: string;
  /**
   * `--registration`: open unless said otherwise, since most tests register their users
   * themselves; 'default' passes no flag (the server's default, invite).
   */
  registration?: 'open' | 'invite' | 'closed' | 'default';
  env?: NodeJS.ProcessEnv;
}

/** Starts `vertex server` on a free loopback port for the given domains. */
export async function startServer(domains: string[], opts: StartServerOptions = {}): Promise<ServerHandle> {
  const dataDir = opts.dataDir ?? tempDir('server');
  const registration = opts.registration ?? 'open';
  const args = [
    'server', '--listen', opts.listen ?? '127.0.0.1:0', '--data', dataDir, ...domains.flatMap((d) => ['--domain', d]),
    ...(registration === 'default' ? [] : ['--registration', registration]), ...(opts.extraArgs ?? []),
  ];
  const proc = startVertex(args, { ...(opts.env ? { env: opts.env } : {}) });
  const m = await proc.waitFor(/listening on 127\.0\.0\.1:(\d+)/);
  const port = Number(m[1]);
  return { proc, port, dataDir, resolveArg: (domain) => ['--resolve', `${domain}=127.0.0.1:${port}`] };
}
