/**
 * Vertex inside the NAT lab: the built `vertex server` for a.test and b.test
 * in the inet namespace, alice@a.test and bob@b.test registered through the
 * real CLI, `vertex agent` processes in the side hosts, bob's transfer
 * service (fixtures/xfer-service.js), and `vertex connect` runs from alice's
 * host with the route and connect time it reports.
 *
 * Every vertex process runs inside a lab namespace, so nothing it dials can
 * leave the lab, even when an agent is missing and `vertex connect` would
 * dial by itself.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SERVER_ADDRESS, SERVER_PORT, type LabProcess, type NetnsLab, type Side, type SideName } from './lab';

const ROOT = path.resolve(__dirname, '../..');
export const VERTEX_BIN = path.join(ROOT, 'bin', 'vertex');
const XFER_SERVICE = path.join(__dirname, 'fixtures', 'xfer-service.js');
export const XFER_PORT = 7000;
const PASSWORD = 'correct horse battery staple';
const USERS: Record<SideName, string> = { alice: 'alice@a.test', bob: 'bob@b.test' };

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

const serverOf = (domain: keyof typeof SERVER_ADDRESS): string => `${SERVER_ADDRESS[domain]}:${SERVER_PORT}`;
const RESOLVE_ARGS = ['--resolve', `a.test=${serverOf('a.test')}`, '--resolve', `b.test=${serverOf('b.test')}`];

export interface LabAgent {
  side: Side;
  address: string;
  home: string;
  proc: LabProcess;
  /** `vertex --home <home> ...args` inside this agent's host namespace. */
  vertex(args: string[], opts?: { input?: Buffer | string; timeoutMs?: number }): ReturnType<NetnsLab['run']>;
  status(): Promise<AgentStatusJson>;
  stop(): Promise<void>;
}

export interface AgentStatusJson {
  server: { state: string };
  reflexive: { tcp: string | null; udp: string | null; nat?: string };
  tunnels: Array<{ route: string; target: string; peer: string }>;
  /** Peer sessions (issue 12): each with the route it runs on. */
  sessions?: Array<{ peer: string; route: string; state: string; streams: number }>;
}

export interface ConnectResult {
  code: number | null;
  route: string | null;
  connectMs: number | null;
  received: Buffer;
  stderr: string;
  /** Wall time of the whole `vertex connect` process. */
  ms: number;
}

export interface OpenConnect {
  proc: LabProcess;
  stdin: NodeJS.WritableStream;
  /** Bytes read from the tunnel so far. */
  received: () => number;
  connected: Promise<{ route: string; connectMs: number }>;
  done: Promise<ConnectResult>;
}

export interface ServiceReport {
  n: number;
  receivedSha?: string;
  receivedBytes?: number;
  sentSha?: string;
  sentBytes?: number;
  error?: string;
}

export class LabWorld {
  readonly lab: NetnsLab;
  readonly homes: Record<SideName, string>;
  readonly #dirs: string[];
  readonly #agents = new Set<LabAgent>();

  private constructor(lab: NetnsLab, homes: Record<SideName, string>, dirs: string[]) {
    this.lab = lab;
    this.homes = homes;
    this.#dirs = dirs;
  }

  /**
   * Servers for both domains in inet, and both users registered (pinning
   * both CAs). `store`: each domain's account store (a postgres:// URL the
   * inet namespace can reach); default SQLite.
   */
  static async start(lab: NetnsLab, opts: { store?: Partial<Record<'a.test' | 'b.test', string>> } = {}): Promise<LabWorld> {
    const dirs: string[] = [];
    const tmp = (prefix: string) => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), `vertex-lab-${prefix}-`));
      dirs.push(dir);
      return dir;
    };
    const homes = { alice: tmp('alice'), bob: tmp('bob') };
    const world = new LabWorld(lab, homes, dirs);
    const servers = (['a.test', 'b.test'] as const).map((domain) => {
      const proc = lab.spawn(lab.inet, process.execPath, [
        VERTEX_BIN, ...RESOLVE_ARGS, '--log-level', 'info', 'server',
        '--listen', serverOf(domain), '--data', tmp(`server-${domain}`), '--domain', domain,
        // The lab registers its users itself.
        '--registration', 'open',
        ...(opts.store?.[domain] ? ['--store', opts.store[domain] as string] : []),
      ]);
      return proc.waitFor(new RegExp(`listening on ${SERVER_ADDRESS[domain].replace(/\./g, '\\.')}:${SERVER_PORT}`));
    });
    await Promise.all(servers);
    for (const side of ['alice', 'bob'] as const) {
      const r = await lab.run(lab.inet, process.execPath, [VERTEX_BIN, ...RESOLVE_ARGS, '--home', homes[side], 'register', USERS[side], '--password-stdin'], { input: PASSWORD });
      if (r.code !== 0) throw new Error(`register ${USERS[side]}: ${r.stderr}`);
    }
    return world;
  }

  /** agent.yaml for a lab agent: both servers named, the control socket in its home, interface addresses advertised. */
  static agentYaml(home: string, extra: string): string {
    return [
      'version: 1',
      'socks: { listen: 127.0.0.1:0 }',
      `domains: { a.test: { server: "${serverOf('a.test')}" }, b.test: { server: "${serverOf('b.test')}" } }`,
      `control: { socket: ${JSON.stringify(path.join(home, 'agent.sock'))} }`,
      extra,
    ].join('\n');
  }

  /**
   * Starts `vertex agent` in the side's host and waits until its home session
   * is online and, unless UDP is blocked on that side, its reflexive UDP address is known.
   */
  async startAgent(side: Side, extraYaml = ''): Promise<LabAgent> {
    const needUdp = !side.spec.blockUdp;
    const home = this.homes[side.name];
    fs.writeFileSync(path.join(home, 'agent.yaml'), LabWorld.agentYaml(home, extraYaml));
    const proc = this.lab.spawn(side.host, process.execPath, [VERTEX_BIN, '--home', home, 'agent', '--log-level', 'debug']);
    await proc.waitFor(/control socket /);
    const vertex: LabAgent['vertex'] = (args, opts) => this.lab.run(side.host, process.execPath, [VERTEX_BIN, '--home', home, ...args], opts);
    const agent: LabAgent = {
      side, home, proc, vertex,
      address: USERS[side.name],
      status: async () => {
        const r = await vertex(['status', '--json'], { timeoutMs: 10_000 });
        if (r.code !== 0) throw new Error(`vertex status in ${side.host}: ${r.stderr}`);
        return JSON.parse(r.stdout) as AgentStatusJson;
      },
      stop: async () => {
        this.#agents.delete(agent);
        await proc.stop();
      },
    };
    this.#agents.add(agent);
    const deadline = Date.now() + 15_000;
    for (;;) {
      const status = await agent.status();
      if (status.server.state === 'online' && (!needUdp || status.reflexive.udp)) break;
      if (Date.now() > deadline) throw new Error(`agent ${agent.address}: not online with a reflexive udp address: ${JSON.stringify(status)}\n${proc.output()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    return agent;
  }

  /** Bob's transfer service on 127.0.0.1:XFER_PORT in his host; each connection gets `bytes` random bytes, paced when paceMs > 0. */
  async startService(side: Side, bytes: number, paceMs = 0): Promise<{ proc: LabProcess; report: (n: number, timeoutMs?: number) => Promise<ServiceReport> }> {
    const proc = this.lab.spawn(side.host, process.execPath, [XFER_SERVICE, '127.0.0.1', String(XFER_PORT), String(bytes), String(paceMs)]);
    await proc.waitFor(/"listening"/);
    return {
      proc,
      report: async (n, timeoutMs = 30_000) => {
        const m = await proc.waitFor(new RegExp(`^\\{"n":${n},.*\\}$`, 'm'), timeoutMs);
        return JSON.parse(m[0]) as ServiceReport;
      },
    };
  }

  /** `vertex connect TARGET` from alice's host through her agent: payload on stdin, the answer from stdout. */
  async connect(agent: LabAgent, target: string, payload: Buffer, opts: { timeoutS?: number; processMs?: number } = {}): Promise<ConnectResult> {
    const r = await agent.vertex(['--log-level', 'info', 'connect', target, '--timeout', String(opts.timeoutS ?? 15)], {
      input: payload, timeoutMs: opts.processMs ?? 60_000,
    });
    const m = /"route":"(\w+)","connectMs":(\d+)/.exec(r.stderr);
    return { code: r.code, route: m?.[1] ?? null, connectMs: m ? Number(m[2]) : null, received: r.stdoutBytes, stderr: r.stderr, ms: r.ms };
  }

  /**
   * `vertex connect TARGET` left running: `write` feeds its stdin (end() closes it),
   * `connected` resolves with the route once the tunnel is up, `done` when the process exits.
   */
  openConnect(agent: LabAgent, target: string, opts: { timeoutS?: number } = {}): OpenConnect {
    const started = Date.now();
    const proc = this.lab.spawn(agent.side.host, process.execPath, [
      VERTEX_BIN, '--home', agent.home, '--log-level', 'info', 'connect', target, '--timeout', String(opts.timeoutS ?? 15),
    ], { stdin: 'pipe' });
    const chunks: Buffer[] = [];
    proc.child.stdout?.on('data', (d: Buffer) => chunks.push(d));
    const stdin = proc.child.stdin;
    if (!stdin) throw new Error('vertex connect: no stdin pipe');
    return {
      proc,
      stdin,
      received: () => chunks.reduce((n, c) => n + c.length, 0),
      connected: proc.waitFor(/"route":"(\w+)","connectMs":(\d+)/, 30_000).then((m) => ({ route: m[1] ?? '', connectMs: Number(m[2]) })),
      done: proc.exited.then((code) => {
        const m = /"route":"(\w+)","connectMs":(\d+)/.exec(proc.stderr());
        return { code, route: m?.[1] ?? null, connectMs: m ? Number(m[2]) : null, received: Buffer.concat(chunks), stderr: proc.stderr(), ms: Date.now() - started };
      }),
    };
  }

  async stopAgents(): Promise<void> {
    await Promise.all([...this.#agents].map((a) => a.stop()));
  }

  /** Removes temporary directories; the lab's teardown kills the processes. */
  cleanup(): void {
    for (const dir of this.#dirs) fs.rmSync(dir, { recursive: true, force: true });
  }
}
