/**
 * What every benchmark needs: real `vertex` processes on loopback (servers,
 * agents), users registered over the real protocol, loopback sink and echo
 * peers in a separate process, figures printed as JSON lines, and cleanup.
 * Every process started here is tracked and killed by pid in cleanup(), and
 * every temporary directory is removed there.
 *
 * Runs from dist/ (compiled); paths to bin/vertex are resolved at run time.
 */
import { fork, spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { HomeStore } from '../agent/home-store';
import { parseAddress } from '../q2q/address';
import { registerAccount } from '../q2q/control/accounts';
import { createServerResolver, type ServerEndpoint, type ServerResolver } from '../q2q/control/discovery';
import { openServerConnection, type ServerConnection } from '../q2q/control/server-connection';
import { certificateFingerprint, checkPinnedCa, type PinResult } from '../q2q/identity';
import type { DomainTrust, Identity, Q2QOptions } from '../q2q/negotiate/types';

export const ROOT = path.resolve(__dirname, '..', '..');
export const VERTEX = path.join(ROOT, 'bin', 'vertex');
export const PASSWORD = 'bench password 0123';
const WAIT_MS = 60_000;

// ---- figures ----

export type Figure = Record<string, unknown> & { bench: string };

export function emit(figure: Figure): void {
  process.stdout.write(`${JSON.stringify(figure)}\n`);
}

/** Progress for a person watching; stderr, so stdout stays JSON lines. */
export function note(text: string): void {
  process.stderr.write(`bench: ${text}\n`);
}

export function round(value: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resident set size of a process in KiB, from /proc/<pid>/status (Linux). */
export function rssKb(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) throw new Error(`bench: no VmRSS in /proc/${pid}/status`);
  return Number(m[1]);
}

/** /proc reports CPU times in USER_HZ ticks, which Linux fixes at 100 per second for user space. */
const PROC_TICKS_PER_SECOND = 100;

function procStat(pid: number): string[] | null {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may hold spaces; the fields after it start past its closing parenthesis.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/**
 * CPU milliseconds a process has used so far, from /proc/<pid>/stat (10 ms resolution):
 * user (its own instructions) and system (the kernel's work for its system calls).
 */
function cpuTimesMs(pid: number): { user: number; system: number } {
  const fields = procStat(pid);
  if (!fields) return { user: 0, system: 0 };
  // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
  return { user: (Number(fields[11]) * 1000) / PROC_TICKS_PER_SECOND, system: (Number(fields[12]) * 1000) / PROC_TICKS_PER_SECOND };
}

/** CPU milliseconds (user + system) a process has used so far. */
export function cpuMs(pid: number): number {
  const t = cpuTimesMs(pid);
  return t.user + t.system;
}

/** The same for a process and every live descendant (sshd -i forks a privilege-separated child). */
export function treeCpuMs(root: number): number {
  return sumOverTree(root, cpuMs);
}

/** User CPU milliseconds alone (cpuTimesMs). */
export function userCpuMs(pid: number): number {
  return cpuTimesMs(pid).user;
}

/** User CPU milliseconds of a process and every live descendant. */
export function treeUserCpuMs(root: number): number {
  return sumOverTree(root, userCpuMs);
}

/**
 * Context switches of a process so far (/proc/<pid>/status): voluntary (it waited) and
 * involuntary (another task took its core: on a loaded machine, a woken reader preempting
 * the writer that woke it).
 */
export function contextSwitches(pid: number): { voluntary: number; involuntary: number } {
  let status: string;
  try {
    status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return { voluntary: 0, involuntary: 0 };
  }
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0);
  return { voluntary: field('voluntary_ctxt_switches'), involuntary: field('nonvoluntary_ctxt_switches') };
}

/** Context switches, both kinds, of a process and every live descendant. */
export function treeContextSwitches(root: number): number {
  return sumOverTree(root, (pid) => {
    const c = contextSwitches(pid);
    return c.voluntary + c.involuntary;
  });
}

/** `measure` summed over a process and every live descendant. */
function sumOverTree(root: number, measure: (pid: number) => number): number {
  const parents = new Map<number, number>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = procStat(Number(entry));
    // ppid is field 4 of the whole line, 2 after the name.
    if (fields) parents.set(Number(entry), Number(fields[1]));
  }
  let total = 0;
  const walk = (pid: number): void => {
    total += measure(pid);
    for (const [child, parent] of parents) if (parent === pid) walk(child);
  };
  walk(root);
  return total;
}

/**
 * Runs a full garbage collection in a process started with
 * `--inspect=127.0.0.1:0` (see INSPECT_ARGS), through its inspector
 * (HeapProfiler.collectGarbage), so that an RSS figure counts live memory
 * rather than garbage V8 has not yet got round to: left alone, V8 returns it
 * only when its memory reducer happens to run, 10 s or more later, or never
 * while anything keeps allocating. A short-lived helper does the talking,
 * because Node 20 has a WebSocket client only behind a flag.
 */
const GC_SCRIPT = `
const ws = new WebSocket(process.argv[1]);
const timer = setTimeout(() => { console.error('no answer from the inspector'); process.exit(1); }, 10000);
let id = 0;
const collect = () => ws.send(JSON.stringify({ id: ++id, method: 'HeapProfiler.collectGarbage' }));
ws.onopen = collect;
ws.onmessage = (m) => {
  const answer = JSON.parse(String(m.data));
  if (answer.id !== id) return;
  if (answer.error) { console.error(JSON.stringify(answer.error)); process.exit(1); }
  // Twice: the first collection's finalizers may free more. Then the JS heap's size.
  if (id < 2) return collect();
  if (id === 2) return ws.send(JSON.stringify({ id: ++id, method: 'Runtime.getHeapUsage' }));
  clearTimeout(timer);
  process.stdout.write('heap ' + answer.result.usedSize + '\\n');
  ws.close();
  process.exit(0);
};
ws.onerror = (e) => { console.error(String(e.message ?? e)); process.exit(1); };
`;

/** Node flags for a process whose memory is measured with memoryAfterGc (loopback inspector on a random port). */
export const INSPECT_ARGS = ['--inspect=127.0.0.1:0'];

/** Forces the collection and returns the JS heap's used size in bytes afterwards. */
export async function collectGarbage(proc: Proc): Promise<number> {
  const url = (await proc.waitFor(/Debugger listening on (ws:\/\/\S+)/))[1] as string;
  const helper = track(spawn(process.execPath, ['--experimental-websocket', '--no-warnings', '-e', GC_SCRIPT, url], { stdio: ['ignore', 'pipe', 'pipe'] }), 'gc helper');
  const code = await helper.exited;
  const heap = /heap (\d+)/.exec(helper.output());
  if (code !== 0 || !heap) throw new Error(`bench: forcing a garbage collection in pid ${proc.pid} failed: ${helper.output()}`);
  return Number(heap[1]);
}

/**
 * RSS and used JS heap in KiB right after a forced full garbage collection
 * (the process must run with INSPECT_ARGS). RSS minus heap is roughly the
 * native side: OpenSSL, libuv, buffers.
 */
export async function memoryAfterGc(proc: Proc): Promise<{ rssKB: number; heapKB: number }> {
  const heap = await collectGarbage(proc);
  await sleep(200);
  return { rssKB: rssKb(proc.pid), heapKB: Math.round(heap / 1024) };
}

/**
 * Runs `fn` over `items` with at most `limit` in flight; results in input
 * order. After a failure no new item starts, and it throws the first error
 * only once the items in flight have settled, so nothing runs on behind it.
 */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  let failure: { err: unknown } | null = null;
  const worker = async () => {
    while (!failure && next < items.length) {
      const i = next++;
      try {
        results[i] = await fn(items[i] as T, i);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw (failure as { err: unknown }).err;
  return results;
}

// ---- processes and temporary directories ----

const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();

export function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `vertex-bench-${prefix}-`));
  tempDirs.add(dir);
  return dir;
}

export interface Proc {
  child: ChildProcess;
  pid: number;
  output: () => string;
  waitFor: (re: RegExp, timeoutMs?: number) => Promise<RegExpMatchArray>;
  exited: Promise<number | null>;
  stop: () => Promise<void>;
}

function track(child: ChildProcess, name: string): Proc {
  children.add(child);
  let out = '';
  const waiters = new Set<() => void>();
  const onData = (d: Buffer) => {
    // Only the beginning matters (ports, readiness); a chatty process must not grow this without bound.
    if (out.length < 1 << 20) out += d.toString();
    for (const w of waiters) w();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = new Promise<number | null>((resolve) => {
    let done = false;
    const finish = (code: number | null): void => {
      if (done) return;
      done = true;
      children.delete(child);
      for (const w of waiters) w();
      resolve(code);
    };
    child.on('close', finish);
    // A forked child whose IPC channel the parent disconnected can exit without 'close' ever
    // coming (Node 20): its output is in well within a second of 'exit'.
    child.on('exit', (code) => setTimeout(() => finish(code), 1000));
  });
  if (child.pid === undefined) throw new Error(`bench: could not start ${name}`);
  return {
    child,
    pid: child.pid,
    output: () => out,
    exited,
    waitFor: (re, timeoutMs = WAIT_MS) => new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`bench: ${name}: timed out after ${timeoutMs} ms waiting for ${re}:\n${out.slice(-4000)}`)), timeoutMs);
      const check = () => {
        const m = out.match(re);
        if (m) done(null, m);
        else if (child.exitCode !== null || child.signalCode !== null) done(new Error(`bench: ${name} exited before ${re}:\n${out.slice(-4000)}`));
      };
      const done = (err: Error | null, m?: RegExpMatchArray) => {
        clearTimeout(timer);
        waiters.delete(check);
        if (err) reject(err);
        else resolve(m as RegExpMatchArray);
      };
      waiters.add(check);
      check();
    }),
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** `node bin/vertex ...args` as a child process. */
export function startVertex(args: string[], opts: { nodeArgs?: string[]; cwd?: string } = {}): Proc {
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), VERTEX, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: opts.cwd ?? ROOT,
  });
  return track(child, `vertex ${args.slice(0, 2).join(' ')}`);
}

/** Another program (sshd, ssh), tracked like the vertex processes: killed by pid when the bench ends. */
export function startProgram(command: string, args: string[], opts: { stdio?: StdioOptions } = {}): Proc {
  const child = spawn(command, args, { stdio: opts.stdio ?? ['ignore', 'pipe', 'pipe'] });
  return track(child, `${path.basename(command)} ${args.slice(0, 2).join(' ')}`);
}

/** A compiled bench module run as a child with an IPC channel (`process.send`). */
/**
 * `ownSession`: the child calls setsid (`detached`). With the kernel's
 * autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled, on here),
 * a session is one scheduling group and groups share the cores fairly, so
 * the child's CPU then comes out of its own share, not out of this
 * process's group (which holds the servers it started).
 */
export function forkBench(file: string, args: string[], nodeArgs: string[] = [], opts: { ownSession?: boolean } = {}): Proc {
  const child = fork(file, args, { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], execArgv: nodeArgs, ...(opts.ownSession && { detached: true }) });
  return track(child, `${path.basename(file)} ${args.join(' ')}`);
}

/** Kills every process started here (by pid) and removes every temporary directory. */
export async function cleanup(): Promise<void> {
  await Promise.all([...children].map((child) => new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('close', () => resolve());
    child.kill('SIGKILL');
  })));
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

/** For `node dist/bench/<file>.js <name>`: runs one bench, cleans up, sets the exit code. */
export function runStandalone(benches: Record<string, () => Promise<void>>, name: string | undefined): void {
  const fn = name === undefined ? undefined : benches[name];
  if (!fn) {
    process.stderr.write(`usage: node ${path.relative(process.cwd(), process.argv[1] ?? '')} ${Object.keys(benches).join('|')}\n`);
    process.exitCode = 2;
    return;
  }
  fn().catch((err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exitCode = 1;
  }).finally(() => cleanup().then(() => process.exit()));
}

// ---- servers, users, agents ----

/** Pins domain CAs in memory, like HomeStore does on disk (same checks, no files). */
export class MemoryTrust implements DomainTrust {
  readonly #cas = new Map<string, string>();

  pinDomainCa(domain: string, caCertPem: string): PinResult {
    const pins = new Map<string, string>();
    const known = this.#cas.get(domain);
    if (known) pins.set(domain, certificateFingerprint(known));
    const result = checkPinnedCa(pins, domain, caCertPem, 'bench memory trust');
    if (result === 'new') this.#cas.set(domain, caCertPem);
    return result;
  }

  loadCaFor(domain: string): string | null {
    return this.#cas.get(domain) ?? null;
  }
}

export interface ServerHandle {
  proc: Proc;
  port: number;
  dataDir: string;
  domains: string[];
}

export const BENCH_LIMITS = 'registrations_per_address: 1000000, unauthenticated_per_address: 1000000';

/** yaml: extra server.yaml lines (a config file is written only when given). */
export async function startServer(
  domains: string[],
  opts: { dataDir?: string; resolve?: Record<string, number>; nodeArgs?: string[]; yaml?: string; defaultLimits?: boolean } = {},
): Promise<ServerHandle> {
  const dataDir = opts.dataDir ?? tempDir('server');
  let configArgs: string[] = [];
  // The benches register and connect hundreds of users from 127.0.0.1 at once: the per-address
  // registration and unauthenticated-connection limits (docs/security.md) are raised unless a bench
  // measures them (defaultLimits) or writes its own limits.
  if (!opts.yaml && !opts.defaultLimits) opts = { ...opts, yaml: `limits: { ${BENCH_LIMITS} }` };
  if (opts.yaml) {
    const file = path.join(dataDir, 'bench-server.yaml');
    fs.mkdirSync(dataDir, { recursive: true });
    fs.writeFileSync(file, `version: 1\ndomains: ${JSON.stringify(domains)}\n${opts.yaml}\n`);
    configArgs = ['--config', file];
  }
  const resolveArgs = Object.entries(opts.resolve ?? {}).flatMap(([d, port]) => ['--resolve', `${d}=127.0.0.1:${port}`]);
  const proc = startVertex([
    // --resolve takes several values: it must follow the subcommand, not precede it.
    'server', ...configArgs, '--listen', '127.0.0.1:0', '--data', dataDir, '--log-level', 'warn', '--registration', 'open',
    ...domains.flatMap((d) => ['--domain', d]), ...resolveArgs,
  ], { nodeArgs: opts.nodeArgs ?? [] });
  const port = Number((await proc.waitFor(/listening on 127\.0\.0\.1:(\d+)/))[1]);
  return { proc, port, dataDir, domains };
}

/** Server endpoints by domain, changeable while running (a restarted server gets a new port). */
export class Endpoints {
  readonly map = new Map<string, ServerEndpoint>();
  readonly resolve: ServerResolver = createServerResolver({ overrides: this.map });

  set(domain: string, port: number): void {
    this.map.set(domain, { host: '127.0.0.1', port });
  }

  resolveArgs(): string[] {
    return [...this.map].flatMap(([d, e]) => ['--resolve', `${d}=${e.host}:${e.port}`]);
  }

  portOf(domain: string): number {
    const e = this.map.get(domain);
    if (!e) throw new Error(`bench: no server for ${domain}`);
    return e.port;
  }
}

/**
 * A server hashes two passwords at once: with more registrations in flight on a busy machine the
 * last answer comes far later than the client's usual 10 s wait.
 */
const REGISTER_WAIT_MS = 120_000;

/**
 * Registers `addresses` (all of one domain) over the real protocol, with up
 * to `parallel` requests in flight, each on a control connection of its own
 * as `vertex register` makes: a connection without a certificate lives at
 * most 60 s (server/admission.ts), so one reused for registration after
 * registration was closed under the later ones on a busy machine. The
 * server hashes each password with scrypt, so this is slow on purpose.
 */
export async function registerMany(addresses: readonly string[], endpoints: Endpoints, trust: MemoryTrust | HomeStore, parallel = 4): Promise<Identity[]> {
  const domain = parseAddress(addresses[0] ?? '').domain;
  return mapLimit(addresses, parallel, async (address) => {
    const connection = await openServerConnection({ domain, resolve: endpoints.resolve, trust, connectTimeoutMs: REGISTER_WAIT_MS });
    try {
      const made = await registerAccount(connection, address, PASSWORD);
      return { address: made.address, keyPem: made.keyPem, certPem: made.certPem };
    } finally {
      connection.close();
    }
  });
}

/** A home directory holding one registered identity, as `vertex register` leaves it. */
export async function registerHome(address: string, endpoints: Endpoints): Promise<{ home: string; store: HomeStore; identity: Identity }> {
  const home = tempDir('home');
  const store = new HomeStore(home);
  const [identity] = await registerMany([address], endpoints, store, 1);
  if (!identity) throw new Error(`bench: register ${address} returned nothing`);
  store.saveIdentity(identity.address, identity.keyPem, identity.certPem);
  return { home, store, identity };
}

export function nodeOptions(endpoints: Endpoints, trust: DomainTrust, extra: Partial<Q2QOptions> = {}): Q2QOptions {
  return {
    resolve: endpoints.resolve,
    trust,
    peerListen: { host: '127.0.0.1', port: 0 },
    relayDelayMs: 300,
    ...extra,
  };
}

export interface AgentHandle {
  proc: Proc;
  home: string;
  socksPort: number;
}

/** Writes agent.yaml into `home` and starts `vertex agent` there (loopback only). */
/** `peer`: where the agent's peer listener binds and the address it advertises for it (loopback by default). */
export async function startAgent(home: string, endpoints: Endpoints, extraYaml = '', nodeArgs: string[] = [], peer = { listen: '127.0.0.1:0', advertise: '127.0.0.1' }): Promise<AgentHandle> {
  const domains = [...endpoints.map].map(([d, e]) => `${d}: { server: "${e.host}:${e.port}" }`).join(', ');
  const yaml = [
    'version: 1',
    'socks: { listen: 127.0.0.1:0 }',
    `domains: { ${domains} }`,
    `control: { socket: ${JSON.stringify(path.join(home, 'agent.sock'))} }`,
    `peer_listen: ${peer.listen}`,
    `advertise: [${peer.advertise}]`,
    'relay_delay_ms: 300',
    'log: { level: warn }',
    extraYaml,
  ].join('\n');
  const config = path.join(home, 'agent.yaml');
  fs.writeFileSync(config, `${yaml}\n`);
  const proc = startVertex(['--home', home, 'agent', '--config', config, '--log-level', 'info'], { nodeArgs });
  const socks = await proc.waitFor(/socks5 listening on 127\.0\.0\.1:(\d+)/);
  await proc.waitFor(/control socket /);
  return { proc, home, socksPort: Number(socks[1]) };
}

// ---- loopback peers ----

/**
 * A separate process with loopback services, so that the receiving end
 * never shares an event loop with the sender:
 *   sink:  counts bytes; when the client half-closes, answers "<count>\n" and ends;
 *   hello: writes one byte at once, then echoes whatever arrives (half-close honoured);
 *   tls:   the sink behind plain Node TLS 1.3 (only when a key and certificate are
 *          given): the ceiling any TLS tunnel in Node can reach on this machine;
 *   http:  node:http answering every request with HTTP_BODY_BYTES (a small
 *          subresource of a page), closing the connection when asked to.
 * It prints "ports <sink> <hello> <tls|0> <http>" when ready.
 */
/** The body of every answer of the loopback peer's HTTP server: a small subresource (an icon, a script). */
export const HTTP_BODY_BYTES = 2048;

const PEER_SCRIPT = `
const net = require('node:net'), tls = require('node:tls'), http = require('node:http');
const sinkHandler = (s) => {
  let n = 0;
  s.on('data', (d) => { n += d.length; });
  s.on('end', () => s.end(n + '\\n'));
  s.on('error', () => s.destroy());
};
const sink = net.createServer({ allowHalfOpen: true }, sinkHandler);
const hello = net.createServer({ allowHalfOpen: true }, (s) => {
  s.on('error', () => s.destroy());
  s.write('!');
  s.pipe(s);
});
const key = process.env.VERTEX_BENCH_TLS_KEY, cert = process.env.VERTEX_BENCH_TLS_CERT;
const secure = key && cert ? tls.createServer({ key, cert, minVersion: 'TLSv1.3', allowHalfOpen: true }, sinkHandler) : null;
const listen = (server) => new Promise((resolve) => server ? server.listen(0, '127.0.0.1', () => resolve(server.address().port)) : resolve(0));
const body = Buffer.alloc(${HTTP_BODY_BYTES}, 0x61);
const web = http.createServer((req, res) => {
  req.resume();
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
  res.end(body);
});
Promise.all([listen(sink), listen(hello), listen(secure), listen(web)]).then((ports) => process.stdout.write('ports ' + ports.join(' ') + '\\n'));
`;

export interface LoopbackPeer {
  proc: Proc;
  sinkPort: number;
  helloPort: number;
  /** 0 unless started with a key and certificate. */
  tlsSinkPort: number;
  /** node:http, HTTP_BODY_BYTES per answer. */
  httpPort: number;
}

export async function startLoopbackPeer(tlsIdentity?: { keyPem: string; certPem: string }): Promise<LoopbackPeer> {
  const env = { ...process.env, ...(tlsIdentity && { VERTEX_BENCH_TLS_KEY: tlsIdentity.keyPem, VERTEX_BENCH_TLS_CERT: tlsIdentity.certPem }) };
  const proc = track(spawn(process.execPath, ['-e', PEER_SCRIPT], { stdio: ['ignore', 'pipe', 'pipe'], env }), 'loopback peer');
  const m = await proc.waitFor(/ports (\d+) (\d+) (\d+) (\d+)/);
  return { proc, sinkPort: Number(m[1]), helloPort: Number(m[2]), tlsSinkPort: Number(m[3]), httpPort: Number(m[4]) };
}

export const CHUNK = Buffer.alloc(64 * 1024, 0x5a);

/**
 * Writes to a connected stream that ends at a sink (directly or through a
 * tunnel) for `ms`, with back-pressure, then half-closes and waits for the
 * sink's count, which must equal what was sent. Returns MB/s (10^6 bytes)
 * from the first write to the count. Timed rather than sized, so that a
 * fast baseline is measured over as long as a slow tunnel.
 */
export function pushToSink(stream: NodeJS.ReadWriteStream & { destroy(): void }, ms: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let answer = '';
    let sent = 0;
    stream.on('data', (d: Buffer) => { answer += d.toString(); });
    stream.once('error', reject);
    stream.once('end', () => {
      const elapsed = performance.now() - t0;
      stream.destroy();
      const counted = Number(answer.trim());
      if (counted !== sent) reject(new Error(`bench: the sink counted ${answer.trim() || 'nothing'}, not ${sent} bytes`));
      else resolve(sent / 1e6 / (elapsed / 1000));
    });
    const t0 = performance.now();
    const pump = () => {
      while (performance.now() - t0 < ms) {
        sent += CHUNK.length;
        if (!stream.write(CHUNK)) {
          stream.once('drain', pump);
          return;
        }
      }
      stream.end();
    };
    pump();
  });
}

/** Plain Node TLS 1.3 to the loopback peer's TLS sink (its certificate is not checked: a baseline only). */
export function connectTls(port: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, minVersion: 'TLSv1.3', rejectUnauthorized: false });
    s.once('secureConnect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

export function connectTcp(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Resolves when the first byte arrives on `stream`. */
export function firstByte(stream: NodeJS.ReadableStream): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.once('data', () => resolve());
    stream.once('error', reject);
    stream.once('end', () => reject(new Error('bench: stream ended before its first byte')));
  });
}
