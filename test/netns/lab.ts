/**
 * The NAT lab: network namespaces joined by veth pairs, with Linux NAT on
 * the home routers (TESTING.md "The NAT lab").
 *
 *                         +----------------- inet -----------------+
 *                         | a.test 203.0.113.10   b.test 203.0.113.11 |
 *                         |      (identity servers, on lo)          |
 *                         | 203.0.113.65/30          198.51.100.1/30 |
 *                         +-------|---------------------------|-----+
 *                  203.0.113.66/30|                           |198.51.100.2/30
 *                          +------+------+             +------+------+
 *     alice's edge:        | router a-r  |             | router b-r  |   bob's edge
 *     (or alice herself    | NAT, filter |             | NAT, filter |   (or bob himself
 *      when public)        +------+------+             +------+------+    when public)
 *                     192.0.2.1/26|                           |192.0.2.65/26
 *                          +------+------+             +------+------+
 *                          | alice  a-h  |             | bob    b-h  |
 *                          | 192.0.2.2   |             | 192.0.2.66  |
 *                          +-------------+             +-------------+
 *
 * inet routes between the two WAN links, so there is always a routing hop
 * between the NATs (a low-TTL probe dies there), and it has no route to the
 * LANs. Every veth pair is created with both ends inside lab namespaces and
 * no namespace gets an interface in the host's namespace: no lab packet can
 * leave the machine. Addresses are RFC 5737 documentation ranges only.
 *
 * Namespaces are named `vxlab-<pid>-<random>-<role>`: unique per run, and a
 * later run deletes the names a dead run left behind. teardown() kills the
 * lab's processes by pid and deletes the namespaces; it also runs on SIGINT,
 * SIGTERM and process exit.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { inCi, missingToolsLine, TOOLS } from '../helpers/system-tools';

const LAB_TOOLS = [TOOLS.iptables, TOOLS.conntrack, TOOLS.sshd, TOOLS.ssh];

export type SideName = 'alice' | 'bob';
/** public: the host sits on the internet; easy: MASQUERADE; hard: MASQUERADE --random-fully. */
export type SideKind = 'public' | 'easy' | 'hard';

export interface SideSpec {
  kind: SideKind;
  /** Home-router filtering: only ESTABLISHED/RELATED traffic forwarded inward. Default true. */
  filtering?: boolean;
  /** Drop every UDP datagram the router would forward, both ways. */
  blockUdp?: boolean;
}

export interface Side {
  name: SideName;
  spec: SideSpec;
  /** Namespace of the host that runs the agent. */
  host: string;
  /** Namespace of the NAT router, or null for a public host. */
  router: string | null;
  /** The host's own address. */
  hostAddress: string;
  /** The address the internet sees: the router's WAN, or the public host's. */
  wanAddress: string;
}

export const SERVER_ADDRESS = { 'a.test': '203.0.113.10', 'b.test': '203.0.113.11' } as const;
export const SERVER_PORT = 8788;

const PLAN: Record<SideName, { inetIf: string; inet: string; wan: string; wanPrefix: number; lanRouter: string; lanHost: string; lanPrefix: number }> = {
  alice: { inetIf: 'to-a', inet: '203.0.113.65', wan: '203.0.113.66', wanPrefix: 30, lanRouter: '192.0.2.1', lanHost: '192.0.2.2', lanPrefix: 26 },
  bob: { inetIf: 'to-b', inet: '198.51.100.1', wan: '198.51.100.2', wanPrefix: 30, lanRouter: '192.0.2.65', lanHost: '192.0.2.66', lanPrefix: 26 },
};

const NS_PREFIX = 'vxlab';
const COMMAND_TIMEOUT_MS = 10_000;

export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Why the lab cannot run here, or null when it can: not root, a broken `ip netns`, or (outside
 * CI) missing iptables/conntrack/sshd. Under CI those programs are installed by .ci/run, so a
 * missing one is not a reason to skip: requireLabTools() then fails the run.
 */
export function labSkipReason(): string | null {
  if (process.platform !== 'linux') return `the NAT lab needs Linux network namespaces (platform is ${process.platform})`;
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return 'the NAT lab needs root (ip netns, iptables); run the suite as root, as CI does';
  const probe = `${NS_PREFIX}-probe-${process.pid}-${randomBytes(3).toString('hex')}`;
  const add = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' });
  if (add.error || add.status !== 0) return `ip netns is unavailable: ${add.error?.message ?? add.stderr.trim()}`;
  spawnSync('ip', ['netns', 'delete', probe]);
  const missing = missingToolsLine('the NAT lab', LAB_TOOLS);
  return missing && !inCi() ? missing : null;
}

/** Under CI, root without the tools is a broken setup, not a reason to skip: .ci/run installs them. */
export function requireLabTools(): void {
  const missing = missingToolsLine('the NAT lab', LAB_TOOLS);
  if (missing) throw new Error(missing);
}

function runSync(cmd: string, args: string[]): CommandResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: COMMAND_TIMEOUT_MS });
  return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? (r.error?.message ?? '') };
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Deletes lab namespaces whose creating process is gone (a crashed run). */
function sweepStale(): void {
  const list = runSync('ip', ['netns', 'list']).stdout;
  for (const line of list.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = new RegExp(`^${NS_PREFIX}-(\\d+)-`).exec(name);
    if (m && !pidAlive(Number(m[1]))) runSync('ip', ['netns', 'delete', name]);
  }
}

export interface LabProcess {
  child: ChildProcess;
  output: () => string;
  stdout: () => string;
  stderr: () => string;
  waitFor: (re: RegExp, timeoutMs?: number) => Promise<RegExpMatchArray>;
  exited: Promise<number | null>;
  stop: () => Promise<void>;
}

export class NetnsLab {
  readonly prefix: string;
  readonly inet: string;
  readonly sides = new Map<SideName, Side>();
  readonly #namespaces: string[] = [];
  readonly #children = new Set<ChildProcess>();
  #torn = false;
  #built = 0;
  readonly #onSignal = (signal: NodeJS.Signals) => {
    this.teardownSync();
    process.kill(process.pid, signal);
  };
  readonly #onExit = () => this.teardownSync();

  private constructor() {
    this.prefix = `${NS_PREFIX}-${process.pid}-${randomBytes(3).toString('hex')}`;
    this.inet = `${this.prefix}-inet`;
  }

  /** The internet namespace with the two server addresses; sides are added per scenario. */
  static create(): NetnsLab {
    sweepStale();
    const lab = new NetnsLab();
    process.once('SIGINT', lab.#onSignal);
    process.once('SIGTERM', lab.#onSignal);
    process.once('exit', lab.#onExit);
    try {
      lab.#addNamespace(lab.inet);
      lab.ip(lab.inet, ['addr', 'add', `${SERVER_ADDRESS['a.test']}/32`, 'dev', 'lo']);
      lab.ip(lab.inet, ['addr', 'add', `${SERVER_ADDRESS['b.test']}/32`, 'dev', 'lo']);
      lab.sysctl(lab.inet, 'net.ipv4.ip_forward', '1');
    } catch (err) {
      lab.teardownSync();
      throw err;
    }
    return lab;
  }

  // ---- commands inside namespaces ----

  /** Runs a command to completion; throws with its stderr when it fails. */
  must(cmd: string, args: string[]): string {
    const r = runSync(cmd, args);
    if (r.code !== 0) throw new Error(`lab: ${cmd} ${args.join(' ')}: exit ${r.code}: ${r.stderr.trim()}`);
    return r.stdout;
  }

  ip(ns: string, args: string[]): string {
    return this.must('ip', ['-n', ns, ...args]);
  }

  exec(ns: string, cmd: string, args: string[]): string {
    return this.must('ip', ['netns', 'exec', ns, cmd, ...args]);
  }

  sysctl(ns: string, key: string, value: string): void {
    this.exec(ns, 'sysctl', ['-qw', `${key}=${value}`]);
  }

  iptables(ns: string, args: string[]): void {
    this.exec(ns, 'iptables', ['-w', ...args]);
  }

  /** Forgets every NAT mapping and connection the router's conntrack holds. */
  flushConntrack(ns: string): void {
    const r = runSync('ip', ['netns', 'exec', ns, 'conntrack', '-F']);
    // conntrack -F prints a summary on stderr and exits 0; only a failure to run matters.
    if (r.code !== 0) throw new Error(`lab: conntrack -F in ${ns}: ${r.stderr.trim()}`);
  }

  /** Drops forwarded packets at random on a side's router (no netem here: iptables statistic). */
  setLoss(side: SideName, probability: number): void {
    const router = this.side(side).router;
    if (!router) throw new Error(`lab: ${side} has no router to drop packets on`);
    this.iptables(router, ['-I', 'FORWARD', '1', '-m', 'statistic', '--mode', 'random', '--probability', String(probability), '-j', 'DROP']);
  }

  clearLoss(side: SideName, probability: number): void {
    const router = this.side(side).router;
    if (!router) return;
    this.iptables(router, ['-D', 'FORWARD', '-m', 'statistic', '--mode', 'random', '--probability', String(probability), '-j', 'DROP']);
  }

  setUdpBlocked(side: SideName, blocked: boolean): void {
    const router = this.side(side).router;
    if (!router) throw new Error(`lab: ${side} has no router to block UDP on`);
    this.iptables(router, [blocked ? '-I' : '-D', 'FORWARD', ...(blocked ? ['1'] : []), '-p', 'udp', '-j', 'DROP']);
  }

  /** Counts packets a router's iptables rule matched (for assertions that a rule took effect). */
  forwardCounters(ns: string): string {
    return this.exec(ns, 'iptables', ['-w', '-L', 'FORWARD', '-v', '-n', '-x']);
  }

  /** Starts a long-running process inside a namespace; it is killed by pid in teardown. */
  spawn(ns: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; stdin?: 'pipe' | 'ignore' } = {}): LabProcess {
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], {
      env: { ...process.env, ...opts.env },
      stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe'],
    });
    this.#children.add(child);
    let all = '';
    let out = '';
    let err = '';
    const listeners = new Set<() => void>();
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      all += d.toString();
      for (const l of listeners) l();
    });
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
      all += d.toString();
      for (const l of listeners) l();
    });
    child.stdin?.on('error', () => undefined);
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => {
      this.#children.delete(child);
      for (const l of listeners) l();
      resolve(code);
    }));
    return {
      child,
      output: () => all,
      stdout: () => out,
      stderr: () => err,
      exited,
      waitFor: (re, timeoutMs = 20_000) => new Promise((resolve, reject) => {
        const check = () => {
          const m = all.match(re);
          if (m) {
            cleanup();
            resolve(m);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            cleanup();
            reject(new Error(`${cmd} in ${ns} exited (${child.exitCode ?? child.signalCode}) before ${re}:\n${all}`));
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`timed out after ${timeoutMs} ms waiting for ${re} from ${cmd} in ${ns}:\n${all}`));
        }, timeoutMs);
        const cleanup = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      }),
      stop: async () => {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          const timer = setTimeout(() => child.kill('SIGKILL'), 3_000);
          await exited;
          clearTimeout(timer);
        }
      },
    };
  }

  /** Runs a command inside a namespace to completion, with `input` on stdin; killed after timeoutMs. */
  run(ns: string, cmd: string, args: string[], opts: { input?: Buffer | string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<CommandResult & { stdoutBytes: Buffer; ms: number }> {
    const started = Date.now();
    const proc = this.spawn(ns, cmd, args, { stdin: 'pipe', ...(opts.env && { env: opts.env }) });
    const chunks: Buffer[] = [];
    proc.child.stdout?.on('data', (d: Buffer) => chunks.push(d));
    proc.child.stdin?.end(opts.input ?? '');
    const timeoutMs = opts.timeoutMs ?? 30_000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        proc.child.kill('SIGKILL');
        reject(new Error(`${cmd} ${args.join(' ')} in ${ns}: no exit after ${timeoutMs} ms\n${proc.output()}`));
      }, timeoutMs);
      void proc.exited.then((code) => {
        clearTimeout(timer);
        const stdoutBytes = Buffer.concat(chunks);
        resolve({ code, stdout: stdoutBytes.toString(), stdoutBytes, stderr: proc.stderr(), ms: Date.now() - started });
      });
    });
  }

  // ---- topology ----

  side(name: SideName): Side {
    const side = this.sides.get(name);
    if (!side) throw new Error(`lab: no side ${name}`);
    return side;
  }

  /** Builds one side: a public host on the internet, or a host behind a NAT router. */
  addSide(name: SideName, spec: SideSpec): Side {
    if (this.sides.has(name)) throw new Error(`lab: side ${name} exists`);
    const plan = PLAN[name];
    // A fresh name for every side built, so nothing of an earlier scenario's side is reused.
    const tag = `${name === 'alice' ? 'a' : 'b'}${++this.#built}`;
    const host = `${this.prefix}-${tag}-h`;
    const router = spec.kind === 'public' ? null : `${this.prefix}-${tag}-r`;
    try {
      this.#buildSide(name, spec, host, router);
    } catch (err) {
      this.#deleteSide(plan.inetIf, [host, router]);
      throw err;
    }
    return this.side(name);
  }

  #buildSide(name: SideName, spec: SideSpec, host: string, router: string | null): void {
    const plan = PLAN[name];
    const edge = router ?? host;
    this.#addNamespace(host);
    if (router) this.#addNamespace(router);
    // inet <-> edge: the WAN link.
    this.#link(this.inet, plan.inetIf, `${plan.inet}/${plan.wanPrefix}`, edge, 'wan', `${plan.wan}/${plan.wanPrefix}`);
    this.ip(edge, ['route', 'add', 'default', 'via', plan.inet]);
    const side: Side = { name, spec, host, router, hostAddress: router ? plan.lanHost : plan.wan, wanAddress: plan.wan };
    if (router) {
      this.#link(router, 'lan', `${plan.lanRouter}/${plan.lanPrefix}`, host, 'eth0', `${plan.lanHost}/${plan.lanPrefix}`);
      this.ip(host, ['route', 'add', 'default', 'via', plan.lanRouter]);
      this.sysctl(router, 'net.ipv4.ip_forward', '1');
      this.iptables(router, ['-t', 'nat', '-A', 'POSTROUTING', '-o', 'wan', '-j', 'MASQUERADE', ...(spec.kind === 'hard' ? ['--random-fully'] : [])]);
      if (spec.filtering ?? true) {
        this.iptables(router, ['-A', 'FORWARD', '-i', 'wan', '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT']);
        this.iptables(router, ['-A', 'FORWARD', '-i', 'wan', '-j', 'DROP']);
      }
    }
    this.sides.set(name, side);
    if (spec.blockUdp) this.setUdpBlocked(name, true);
  }

  /** Removes a side: its processes must be stopped first (stopProcessesIn). */
  removeSide(name: SideName): void {
    const side = this.sides.get(name);
    if (!side) return;
    this.sides.delete(name);
    this.#deleteSide(PLAN[name].inetIf, [side.host, side.router]);
  }

  #deleteSide(inetIf: string, namespaces: Array<string | null>): void {
    // A namespace goes away asynchronously; deleting inet's veth end removes the pair at once,
    // so the next side can use the name.
    runSync('ip', ['-n', this.inet, 'link', 'delete', inetIf]);
    for (const ns of namespaces) {
      if (!ns || !this.#namespaces.includes(ns)) continue;
      runSync('ip', ['netns', 'delete', ns]);
      this.#namespaces.splice(this.#namespaces.indexOf(ns), 1);
    }
  }

  #addNamespace(ns: string): void {
    this.must('ip', ['netns', 'add', ns]);
    this.#namespaces.push(ns);
    this.ip(ns, ['link', 'set', 'lo', 'up']);
  }

  /** A veth pair created straight into two lab namespaces: neither end ever exists in the host's. */
  #link(nsA: string, ifA: string, addrA: string, nsB: string, ifB: string, addrB: string): void {
    this.ip(nsA, ['link', 'add', ifA, 'type', 'veth', 'peer', 'name', ifB, 'netns', nsB]);
    this.ip(nsA, ['addr', 'add', addrA, 'dev', ifA]);
    this.ip(nsB, ['addr', 'add', addrB, 'dev', ifB]);
    this.ip(nsA, ['link', 'set', ifA, 'up']);
    this.ip(nsB, ['link', 'set', ifB, 'up']);
  }

  // ---- teardown ----

  /** Kills every process the lab started (by pid) and waits for them. */
  async stopProcesses(): Promise<void> {
    await Promise.all([...this.#children].map((child) => new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('close', () => resolve());
      child.kill('SIGKILL');
    })));
  }

  async teardown(): Promise<void> {
    await this.stopProcesses();
    this.teardownSync();
  }

  /** Synchronous, for signal and exit handlers: SIGKILL by pid, then delete every namespace. */
  teardownSync(): void {
    if (this.#torn) return;
    this.#torn = true;
    process.off('SIGINT', this.#onSignal);
    process.off('SIGTERM', this.#onSignal);
    process.off('exit', this.#onExit);
    for (const child of this.#children) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    for (const ns of this.#namespaces.splice(0).reverse()) runSync('ip', ['netns', 'delete', ns]);
    this.sides.clear();
  }

  /** Namespaces of this lab that still exist (for the teardown test). */
  existing(): string[] {
    return runSync('ip', ['netns', 'list']).stdout.split('\n').map((l) => l.split(' ')[0] ?? '').filter((n) => n.startsWith(this.prefix));
  }
}
