/**
 * Agents as users run them: `vertex agent` processes with agent.yaml in
 * their home, on top of the two-domain world of test/helpers/q2q-world.ts,
 * plus the local services bob exposes and a runner for the real clients.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { runVertex, startVertex, VERTEX_BIN, type RunResult, type VertexProcess } from '../../helpers/cli';
import { connectTcp, HANG_MS, listenOnPort0, until as untilValue } from '../../helpers/net';
import type { World } from '../../helpers/q2q-world';

export { connectTcp };

export const PAGE = '<!doctype html><html><head><title>bob</title></head><body><h1 id="greeting">hello from bob</h1></body></html>\n';

export interface Closable {
  port: number;
  close(): Promise<void>;
}

function track(server: net.Server): Set<net.Socket> {
  const sockets = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  return sockets;
}

const listen = (server: net.Server): Promise<number> => listenOnPort0(server);

function closer(server: net.Server, sockets: Set<net.Socket>): () => Promise<void> {
  return () => {
    for (const s of sockets) s.destroy();
    return new Promise((resolve) => server.close(() => resolve()));
  };
}

/** Every byte back; a half-close is answered with a half-close once the echo is out. */
export async function startEcho(): Promise<Closable> {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  const sockets = track(server);
  return { port: await listen(server), close: closer(server, sockets) };
}

/** `/` serves `page` (PAGE); `/slow` answers only when release() is called (to hold a tunnel open). */
export async function startWeb(page = PAGE): Promise<Closable & { release(): void; hosts: string[] }> {
  const waiting: http.ServerResponse[] = [];
  const hosts: string[] = [];
  const server = http.createServer((req, res) => {
    hosts.push(req.headers.host ?? '');
    res.setHeader('content-type', 'text/html; charset=utf-8');
    if (req.url === '/slow') waiting.push(res);
    else res.end(page);
  });
  const sockets = track(server);
  const port = await listen(server);
  return {
    port,
    hosts,
    release: () => {
      for (const res of waiting.splice(0)) res.end(page);
    },
    close: () => {
      server.closeAllConnections();
      return closer(server, sockets)();
    },
  };
}

export interface ProgramResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
  ms: number;
}

/** Runs a program with `input` on stdin; kills it (and fails) after `ms`. */
export function run(cmd: string, args: string[], opts: { input?: Buffer | string; ms?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<ProgramResult> {
  const ms = opts.ms ?? 30_000;
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...opts.env }, ...(opts.cwd && { cwd: opts.cwd }) });
    const out: Buffer[] = [];
    let err = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')}: no exit after ${ms} ms; stderr: ${err}`));
    }, ms);
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr: err, ms: Date.now() - started });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

/** A long-running client whose stdin stays open until end(); killed by pid in stopClients(). */
const clients = new Set<ChildProcess>();
export function spawnClient(cmd: string, args: string[]): ChildProcess & { output: () => string } {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  clients.add(child);
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  child.stdin?.on('error', () => undefined);
  child.on('close', () => clients.delete(child));
  return Object.assign(child, { output: () => output });
}

export async function stopClients(): Promise<void> {
  await Promise.all([...clients].map((c) => new Promise<void>((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) return resolve();
    c.once('close', () => resolve());
    c.kill('SIGKILL');
  })));
}


/** A quoted word for ssh's ProxyCommand, which runs through /bin/sh. */
export function shellWord(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** agent.yaml for a test agent: loopback only, both domains' servers named, the control socket in its home. */
export function agentYaml(world: World, home: string, extra = ''): string {
  return [
    'version: 1',
    // `extra` may bring its own socks section.
    /^socks:/m.test(extra) ? '' : 'socks: { listen: 127.0.0.1:0 }',
    `domains: { a.test: { server: "127.0.0.1:${world.a.port}" }, b.test: { server: "127.0.0.1:${world.b.port}" } }`,
    `control: { socket: ${JSON.stringify(path.join(home, 'agent.sock'))} }`,
    'peer_listen: 127.0.0.1:0',
    'advertise: [127.0.0.1]',
    'relay_delay_ms: 300',
    extra,
  ].join('\n');
}

export interface AgentHandle {
  proc: VertexProcess;
  home: string;
  socksPort: number;
  /** `vertex --home <home> ...args` (with the world's --resolve flags). */
  vertex(args: string[], opts?: { input?: string; timeoutMs?: number }): Promise<RunResult>;
  /** The argv prefix for running this user's vertex in other programs (ssh ProxyCommand). */
  argv: string[];
}

export function vertexFor(world: World, home: string): Pick<AgentHandle, 'vertex' | 'argv'> {
  const argv = [process.execPath, VERTEX_BIN, ...world.resolveArgs, '--home', home];
  return {
    argv,
    vertex: (args, opts) => runVertex([...world.resolveArgs, '--home', home, ...args], opts),
  };
}

/** Writes agent.yaml into `home` and starts `vertex agent` there, with `agentArgs` after `agent`. */
export async function startAgent(world: World, home: string, extraYaml = '', agentArgs: string[] = []): Promise<AgentHandle> {
  fs.writeFileSync(path.join(home, 'agent.yaml'), agentYaml(world, home, extraYaml));
  const proc = startVertex(['--home', home, 'agent', '--log-level', 'info', ...agentArgs]);
  const socks = await proc.waitFor(/socks5 listening on 127\.0\.0\.1:(\d+)/);
  await proc.waitFor(/control socket /);
  return { proc, home, socksPort: Number(socks[1]), ...vertexFor(world, home) };
}

/** The port in a `HOST:PORT` a command printed (a forward on port 0 reports the one it bound). */
export function portOf(listen: string): number {
  const port = Number(listen.slice(listen.lastIndexOf(':') + 1));
  if (!Number.isInteger(port) || port <= 0) throw new Error(`no port in ${JSON.stringify(listen)}`);
  return port;
}

/** Writes `payload`, half-closes, and collects what comes back until the other side ends. */
export function exchange(socket: net.Socket, payload: Buffer | string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    socket.on('data', (d: Buffer) => chunks.push(d));
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
    socket.end(payload);
  });
}

/** Polls until `probe` returns a value (test/helpers/net.ts); the error names what it waited for. */
export async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, ms = HANG_MS): Promise<T> {
  return untilValue(what, probe, ms);
}
