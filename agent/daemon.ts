/**
 * The agent daemon as a wiring diagram (STYLE.md, after wireguard-go's
 * main.go and tailscaled):
 *
 *     config -> identity (home) -> Q2QNode -> exposes -> SOCKS5 -> forwards -> control API
 *
 * start() brings the parts up in that order; stop() takes them down in
 * reverse. Nothing here reads argv, env or files: the CLI hands in the
 * config, the home store, the resolver, the logger and the node factory.
 *
 * Every tunnel, whichever front-end opened it, goes into one TunnelRegistry
 * for `vertex status`. reload() applies a new config's forwards and exposes
 * without touching tunnels that are already open. The parts with rules of
 * their own are units of their own: the expose and forward tables
 * (expose-table.ts, forward-table.ts), the reload diff (reload-plan.ts), the
 * file receiver (receive-service.ts), the runtime file (runtime-state.ts).
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import {
  formatDeviceAddress, formatServiceAddress, parseAddress, parseDeviceAddress, parseHostTarget, parseServiceAddress,
} from '../q2q/address';
import { asVertexError, vertexError } from '../q2q/errors';
import { describeCertificate } from '../q2q/identity';
import { defaultAllow } from '../q2q/negotiate/allow';
import type { ConnectOptions, DomainTrust, Identity, NodeStatus, Q2QOptions, SessionStatus, Q2QStream, ServiceOptions } from '../q2q/negotiate/types';
import type { ServerResolver } from '../q2q/control/discovery';
import { systemClock, type Clock } from '../q2q/util/clock';
import { silentLogger, type Logger } from '../q2q/util/log';
import { FORWARD_LISTEN, formatHostPort, parseHostPort, type AgentConfig, type HostPort } from '../config/schema';
import { ControlApi, type CallRequest, type OpenedStream, type StreamRequest } from './control-api';
import type { ReceiveEvent, ReceiveInfo, TunnelInfo as ControlTunnelInfo } from './control-protocol';
import { FILE_TRANSFER_SERVICE } from './file-transfer';
import { planReload, type EntrySource } from './reload-plan';
import { AgentReceiver, type ReceiveChange, type ReceiveStatus } from './receive-service';
import { parseAllowPattern } from '../config/schema';
import type { RuntimeState, RuntimeStateStore } from './runtime-state';
import { CertificateRenewer } from './renewal';
import { ExposeTable, type ExposeAdded, type ExposeSpec } from './expose-table';
import { ForwardTable, type ForwardSpec } from './forward-table';
import { connectLocal } from './frontends/expose';
import { Socks5Server, type SocksConnectRequest, type SocksDialInfo } from './frontends/socks5-server';
import { DEFAULT_PING_COUNT, MAX_PING_COUNT, PING_SERVICE, pingEchoHandler, runProbes, type PingResult } from './ping';
import { TunnelRegistry, type TunnelEntry, type TunnelKind } from './tunnels';
import type { AgentMetrics } from './metrics';

/** What the daemon needs from a Q2Q node; q2q/negotiate's Q2QNode is one. */
export interface AgentNode {
  start(): Promise<void>;
  /** May resolve once the home server lists the service (Q2QNode does). */
  expose(service: string, opts: ServiceOptions): void | Promise<void>;
  unexpose(service: string): void;
  connect(target: string, opts?: ConnectOptions): Promise<Q2QStream>;
  /** A stream at once on a live peer session (Q2QNode.connectEarly), or null; optional for nodes without sessions. */
  connectEarly?(target: string, opts?: ConnectOptions): Q2QStream | null;
  status(): NodeStatus;
  stop(): Promise<void>;
  /**
   * Takes a renewed certificate for new connections. Optional because
   * Q2QNode does not offer it yet; without it the renewed certificate is
   * stored and used from the agent's next start.
   */
  setIdentity?(identity: Identity): void;
  /** Tries the home server at once (SIGHUP); optional for nodes that cannot. */
  reconnectNow?(trigger: 'sighup' | 'network'): void;
}

export type CreateNode = (identity: Identity, options: Q2QOptions) => AgentNode;

export interface IdentitySource extends DomainTrust {
  loadIdentity(address?: string): Identity;
  saveIdentity(address: string, keyPem: string, certPem: string): void;
}

export interface AgentDaemonOptions {
  config: AgentConfig;
  home: IdentitySource;
  resolve: ServerResolver;
  createNode: CreateNode;
  /** The control API's unix socket; null runs without one (foreground `vertex expose`/`forward`). */
  controlSocket: string | null;
  /** The agent's metrics (agent/metrics.ts): told of tunnels, connects and the node's events. */
  metrics?: AgentMetrics;
  /** Gets a new certificate for `current` from its home server; without it the agent does not renew. */
  renew?: (current: Identity) => Promise<Identity>;
  /** Run the SOCKS5 front-end; default true. */
  socks?: boolean;
  /**
   * Where exposes and forwards added at runtime persist (agent/runtime-state.ts);
   * without it they last until the agent stops (foreground expose/forward).
   */
  runtime?: RuntimeStateStore;
  log?: Logger;
  clock?: Clock;
}

/** After stop() closes the front-ends, how long open tunnels may finish on their own. */
export const STOP_DRAIN_MS = 500;
/**
 * Connects running at once; the rest wait their turn. A burst (a browser's
 * parallel requests, a test's 200 clients) otherwise starts every dial
 * ladder together, and on a small machine they all run out of time.
 */
export const MAX_CONCURRENT_DIALS = 16;
/** An incoming transfer announced to `vertex receive` is closed unless claimed within this long. */
export const INCOMING_CLAIM_MS = 30_000;
/** SOCKS names remembered by #socksTarget; past this the memory starts over. */
const SOCKS_TARGET_CACHE = 1024;
/** A passthrough dial to an ordinary host gives up after this long. */
export const PASSTHROUGH_CONNECT_TIMEOUT_MS = 10_000;

export type { EntrySource };

export type { ExposeSpec, ForwardSpec };

export interface AgentStatus {
  identity: string;
  /** This agent's device name (agent.yaml `device:`, --device, else from the host name). */
  device: string;
  /** The identity's devices as the home server describes them (NodeStatus.devices). */
  devices: NodeStatus['devices'];
  certificate: { notAfter: string };
  server: NodeStatus['home'];
  reflexive: NodeStatus['reflexive'];
  peerListen: string | null;
  socks: { listen: string; auth: 'none' | 'userpass'; passthrough: boolean } | null;
  control: { socket: string } | null;
  exposed: Array<{ service: string; address: string; target: string; allow: readonly string[]; source: EntrySource }>;
  forwards: Array<{ listen: string; to: string; source: EntrySource }>;
  /** Who takes files sent to this device (agent.yaml `receive:` or an attached `vertex receive`); null: nobody. */
  receive: ReceiveStatus | null;
  tunnels: TunnelEntry[];
  /** Peer sessions with their route, streams, bytes and age (NodeStatus.sessions). */
  sessions: SessionStatus[];
}

export interface ReloadSummary {
  exposes: { added: string[]; removed: string[] };
  forwards: { added: string[]; removed: string[] };
  /** What became of agent.yaml's `receive:`. */
  receive: ReceiveChange;
  /** Config sections that changed but take effect only after a restart. */
  needRestart: string[];
}

type State = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

export class AgentDaemon {
  readonly #opts: AgentDaemonOptions;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly tunnels: TunnelRegistry;
  #config: AgentConfig;
  #state: State = 'new';
  #identity: Identity | undefined;
  #node: AgentNode | undefined;
  #socks: Socks5Server | undefined;
  #socksAddress: HostPort | undefined;
  #control: ControlApi | undefined;
  #renewer: CertificateRenewer | undefined;
  #receiver: AgentReceiver | undefined;
  #dialsRunning = 0;
  readonly #dialQueue: Array<() => void> = [];
  /** SOCKS host and port → Q2Q target or null (#socksTarget); `ports` needs a restart to change (reload-plan.ts). */
  readonly #socksTargets = new Map<string, string | null>();
  readonly #exposes: ExposeTable;
  readonly #forwards: ForwardTable;
  /** Senders announced to an attached `vertex receive`, waiting for its receive-accept. */
  readonly #incoming = new Map<string, { stream: Q2QStream; timer: { cancel(): void } }>();

  constructor(opts: AgentDaemonOptions) {
    this.#opts = opts;
    this.#config = opts.config;
    this.#log = (opts.log ?? silentLogger).child({ component: 'agent' });
    this.#clock = opts.clock ?? systemClock;
    this.tunnels = new TunnelRegistry({ clock: this.#clock, ...(opts.metrics ? { observer: opts.metrics } : {}) });
    opts.metrics?.readTunnels(() => this.tunnels.list());
    this.#exposes = new ExposeTable({
      node: () => this.#requireNode(),
      address: () => this.address,
      defaultAllow: () => this.#defaultAllow(),
      tunnels: this.tunnels,
      onChange: () => this.#exposePing(),
      log: this.#log,
    });
    // A forward reports a failed connect by closing its client either way: it takes streams early.
    this.#forwards = new ForwardTable({ dial: (target, local) => this.#dialQ2Q(target, 'forward', local, { early: true }), log: this.#log });
  }

  get address(): string {
    return this.#requireIdentity().address;
  }

  get socksAddress(): HostPort | undefined {
    return this.#socksAddress;
  }

  get forwardAddresses(): Array<{ listen: HostPort; to: string }> {
    return this.#forwards.addresses();
  }

  async start(): Promise<void> {
    if (this.#state !== 'new') throw new Error(`agent: start in state ${this.#state}`);
    this.#state = 'starting';
    const config = this.#config;
    try {
      const identity = this.#opts.home.loadIdentity(config.identity);
      this.#identity = identity;
      this.#log.info({ identity: identity.address }, 'agent starting');
      const node = this.#opts.createNode(identity, {
        resolve: this.#opts.resolve,
        trust: this.#opts.home,
        ...(config.device !== undefined && { device: config.device }),
        routes: config.routes,
        relayDelayMs: config.relayDelayMs,
        peerListen: config.peerListen,
        ...(config.advertise && { advertise: config.advertise }),
        log: this.#log,
      });
      this.#node = node;
      this.#opts.metrics?.watchNode(node);
      await node.start();

      const renew = this.#opts.renew;
      if (renew) {
        this.#renewer = new CertificateRenewer({
          identity,
          renew,
          onRenewed: (next) => {
            this.#opts.home.saveIdentity(next.address, next.keyPem, next.certPem);
            this.#identity = next;
            node.setIdentity?.(next);
          },
          clock: this.#clock,
          log: this.#log,
        });
        this.#renewer.start();
      }

      const runtime = this.#opts.runtime?.load();
      const runtimeServices = new Set(runtime?.expose.map((e) => e.service) ?? []);
      for (const e of config.expose) if (!runtimeServices.has(e.service)) this.#exposes.apply(e, 'config');
      for (const e of runtime?.expose ?? []) {
        try {
          this.#exposes.apply({ service: e.service, target: parseHostPort(e.target, { minPort: 1 }), allow: e.allow }, 'cli');
        } catch (err) {
          this.#log.warn({ service: e.service, file: this.#opts.runtime?.where, err: asVertexError(err).message }, 'runtime expose not applied');
        }
      }
      const me = identity.address;
      this.#receiver = new AgentReceiver({
        node,
        defaultAllow: () => this.#defaultAllow(),
        onInbound: (stream) => {
          this.tunnels.add({
            kind: 'inbound', target: `${me}:${FILE_TRANSFER_SERVICE}`, peer: stream.peer, device: stream.device, route: stream.route, local: 'receive', connectMs: stream.connectMs,
          }, stream);
        },
        onAllowChange: () => this.#exposePing(),
        log: this.#log,
      });
      this.#receiver.configure(config.receive);
      this.#exposePing();

      if (this.#opts.socks ?? true) {
        const socks = new Socks5Server({
          listen: config.socks.listen,
          auth: config.socks.auth,
          dial: (req, info) => this.#dialSocks(req, info),
          log: this.#log,
          clock: this.#clock,
        });
        this.#socks = socks;
        this.#socksAddress = await socks.start();
      }

      const runtimeForwards = new Set(runtime?.forwards.map((f) => f.listen) ?? []);
      for (const f of config.forwards) if (!runtimeForwards.has(formatHostPort(f.listen))) await this.#forwards.open(f, 'config');
      for (const f of runtime?.forwards ?? []) {
        try {
          await this.#forwards.open({ listen: parseHostPort(f.listen, FORWARD_LISTEN), to: f.to }, 'cli');
        } catch (err) {
          // A persisted forward whose port is taken now must not keep the agent down.
          this.#log.warn({ forward: f.listen, file: this.#opts.runtime?.where, err: asVertexError(err).message }, 'runtime forward not applied');
        }
      }

      if (this.#opts.controlSocket !== null) {
        const control = new ControlApi({
          socketPath: this.#opts.controlSocket,
          handlers: {
            call: (request) => this.#handleControl(request),
            open: (request) => this.#openControl(request),
          },
          log: this.#log,
        });
        this.#control = control;
        await control.start();
      }
    } catch (err) {
      await this.#teardown();
      this.#state = 'stopped';
      throw err;
    }
    this.#state = 'running';
    this.#log.info({ identity: this.address }, 'agent running');
  }

  /** Front-ends close, open tunnels get STOP_DRAIN_MS to finish, then the node says goodbye to its server. */
  async stop(): Promise<void> {
    if (this.#state === 'stopped' || this.#state === 'stopping') return;
    this.#state = 'stopping';
    await this.#teardown();
    this.#state = 'stopped';
    this.#log.info('agent stopped');
  }

  async #teardown(): Promise<void> {
    const step = async (what: string, fn: () => Promise<void> | void): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        this.#log.warn({ err: asVertexError(err).message }, `agent stop: ${what} failed`);
      }
    };
    this.#renewer?.stop();
    this.#renewer = undefined;
    this.#receiver?.stop();
    this.#receiver = undefined;
    const control = this.#control;
    this.#control = undefined;
    if (control) await step('control api', () => control.stop());
    await this.#forwards.closeAll(step);
    await step('tunnel drain', () => this.tunnels.drain(STOP_DRAIN_MS));
    const socks = this.#socks;
    this.#socks = undefined;
    if (socks) await step('socks5', () => socks.stop());
    this.tunnels.destroyAll();
    const node = this.#node;
    this.#node = undefined;
    this.#exposes.clear();
    // No unexpose first: ending the home session withdraws every service at once.
    if (node) await step('q2q node', () => node.stop());
  }

  // ---- status ----

  status(): AgentStatus {
    const node = this.#requireNode();
    const identity = this.#requireIdentity();
    const ns = node.status();
    const socks = this.#socksAddress;
    return {
      identity: identity.address,
      device: ns.device,
      // Every agent exposes the ping service: that it is shared is no news.
      devices: { ...ns.devices, conflicts: ns.devices.conflicts.filter((c) => c.service !== PING_SERVICE) },
      // After a renewal the node may still report the certificate it started with.
      certificate: { notAfter: this.#renewer ? describeCertificate(identity.certPem).notAfter.toISOString() : ns.certificateNotAfter },
      server: ns.home,
      reflexive: ns.reflexive,
      peerListen: ns.peerListen,
      socks: socks
        ? { listen: formatHostPort(socks), auth: this.#config.socks.auth === 'none' ? 'none' : 'userpass', passthrough: this.#config.socks.passthrough }
        : null,
      control: this.#control ? { socket: this.#control.socketPath } : null,
      exposed: this.#exposes.entries().map((e) => ({
        service: e.service,
        address: `${identity.address}:${e.service}`,
        target: formatHostPort(e.target),
        allow: e.allow,
        source: e.source,
      })),
      forwards: this.#forwards.entries().map((f) => ({
        listen: f.listener.address ? formatHostPort(f.listener.address) : f.key,
        to: f.to,
        source: f.source,
      })),
      receive: this.#receiver?.status() ?? null,
      tunnels: this.tunnels.list(),
      sessions: ns.sessions ?? [],
    };
  }

  // ---- exposes ----

  /**
   * Puts `target` online as me:service (agent/expose-table.ts has the rules:
   * --replace, allow lists that never change silently, reserved names).
   * Runtime (`cli`) entries persist when the daemon has a runtime store.
   */
  addExpose(spec: ExposeSpec, source: EntrySource = 'cli', opts: { replace?: boolean } = {}): ExposeAdded {
    this.#requireRunning();
    const added = this.#exposes.add(spec, source, opts);
    if (source === 'cli') this.#persist();
    return added;
  }

  removeExpose(serviceText: string): { fromConfig: boolean } {
    this.#requireRunning();
    const entry = this.#exposes.remove(serviceText);
    this.#persist();
    return { fromConfig: this.#config.expose.some((e) => e.service === entry.service) };
  }

  /** Writes the runtime entries to the runtime store, if there is one. */
  #persist(): void {
    const store = this.#opts.runtime;
    if (!store) return;
    const state: RuntimeState = {
      expose: this.#exposes.entries().filter((e) => e.source === 'cli').map((e) => ({ service: e.service, target: formatHostPort(e.target), allow: [...e.allow] })),
      forwards: this.#forwards.entries().filter((f) => f.source === 'cli').map((f) => ({ listen: f.key, to: f.to })),
    };
    try {
      store.save(state);
    } catch (err) {
      this.#log.error({ file: store.where, err: asVertexError(err).message }, 'runtime entries not saved; they last until the agent stops');
    }
  }

  /**
   * vertex-ping admits whoever some exposed service admits, and the owner
   * (issue 11): a caller no service allows learns nothing from a ping, not
   * even the addresses a connect would hand out.
   */
  #exposePing(): void {
    const node = this.#node;
    if (!node) return;
    const allow = new Set<string>(this.#defaultAllow());
    for (const pattern of this.#exposes.allowPatterns()) allow.add(pattern);
    for (const pattern of this.#receiver?.allow() ?? []) allow.add(pattern);
    node.expose(PING_SERVICE, { allow: [...allow], onConnection: pingEchoHandler });
  }

  // ---- forwards ----

  async addForward(spec: ForwardSpec, source: EntrySource = 'cli', opts: { replace?: boolean } = {}): Promise<{ listen: string; to: string; replaced?: { to: string } }> {
    this.#requireRunning();
    const added = await this.#forwards.add(spec, source, opts);
    if (source === 'cli') this.#persist();
    return added;
  }

  async removeForward(listenText: string): Promise<void> {
    this.#requireRunning();
    await this.#forwards.remove(listenText);
    this.#persist();
  }

  // ---- reload ----

  /**
   * Applies a new config's `forwards` and `expose`. Entries the file no
   * longer has are removed (their open tunnels stay), new or changed ones
   * added; entries added through the CLI are kept unless the file now
   * claims the same port or service. Other changed sections are reported
   * in `needRestart`.
   */
  async reload(next: AgentConfig): Promise<ReloadSummary> {
    this.#requireRunning();
    const prev = this.#config;
    const plan = planReload(prev, next, {
      exposes: this.#exposes.entries(),
      forwards: this.#forwards.entries().map((f) => ({ key: f.key, to: f.to, source: f.source })),
      defaultAllow: this.#defaultAllow(),
    });
    const summary: ReloadSummary = { exposes: { added: [], removed: [] }, forwards: { added: [], removed: [] }, receive: 'unchanged', needRestart: plan.needRestart };

    for (const service of plan.exposes.remove) {
      this.removeExpose(service);
      summary.exposes.removed.push(service);
    }
    for (const wanted of plan.exposes.apply) {
      try {
        this.#exposes.apply(wanted, 'config');
        summary.exposes.added.push(wanted.service);
      } catch (err) {
        this.#log.warn({ service: wanted.service, err: asVertexError(err).message }, 'reload: expose failed');
      }
    }

    for (const key of plan.forwards.remove) {
      const entry = await this.#forwards.close(key);
      if (entry) summary.forwards.removed.push(entry.listener.address ? formatHostPort(entry.listener.address) : key);
    }
    for (const wanted of plan.forwards.add) {
      const key = formatHostPort(wanted.listen);
      try {
        const { listener } = await this.#forwards.open(wanted, 'config');
        // The bound address: the port the system chose for a port-0 entry.
        summary.forwards.added.push(listener.address ? formatHostPort(listener.address) : key);
      } catch (err) {
        this.#log.warn({ forward: key, err: asVertexError(err).message }, 'reload: forward failed');
      }
    }

    try {
      summary.receive = this.#receiver?.configure(next.receive) ?? 'unchanged';
    } catch (err) {
      // A directory that cannot be made: the receive: in force stays.
      this.#log.warn({ err: asVertexError(err).message }, 'reload: receive not applied');
      next = { ...next, ...(prev.receive ? { receive: prev.receive } : { receive: undefined }) };
    }

    this.#config = { ...prev, forwards: next.forwards, expose: next.expose, ...(next.receive ? { receive: next.receive } : { receive: undefined }) };
    this.#log.info(summary, 'config reloaded');
    if (summary.needRestart.length > 0) this.#log.warn({ sections: summary.needRestart }, 'reload: these changes take effect after a restart');
    return summary;
  }

  /** An expose without `allow` admits its owner alone, on any of the owner's devices. */
  #defaultAllow(): string[] {
    return defaultAllow(this.address);
  }

  // ---- dialling ----

  /** Connects to `user@domain:service` and records the tunnel. */
  async #dialQ2Q(target: string, kind: TunnelKind, local: string, opts: ConnectOptions = {}, client?: { readonly aborted: boolean }): Promise<Q2QStream> {
    const node = this.#requireNode();
    // A free slot is taken without a wait (an await costs a turn of the microtask queue).
    if (this.#dialsRunning < MAX_CONCURRENT_DIALS) this.#dialsRunning += 1;
    else await this.#dialSlot();
    let stream: Q2QStream;
    try {
      if (client?.aborted) throw vertexError('ConnectionLost', `connect ${target}: the client left before its turn to dial`);
      stream = await node.connect(target, opts);
    } catch (err) {
      this.#opts.metrics?.connectFailed(err);
      throw err;
    } finally {
      this.#releaseDialSlot();
    }
    return this.#tunnelOpened(stream, kind, target, local);
  }

  /** A connected stream counted (metrics), listed (`vertex status`) and logged. */
  #tunnelOpened(stream: Q2QStream, kind: TunnelKind, target: string, local: string): Q2QStream {
    this.#opts.metrics?.connected(stream.route, stream.connectMs);
    this.tunnels.add({ kind, target, peer: stream.peer, device: stream.device, route: stream.route, local, connectMs: stream.connectMs }, stream);
    // SOCKS and forward tunnels come by the dozen (a browser's page load) and each is a stream
    // on a peer session whose open and close are logged at info; a line for each would cost
    // more than the stream itself (a write and a wake-up of the log's reader, bench/README.md
    // "Peer sessions"), as ssh and sshd log channels only at debug. A tunnel a command asked
    // for (`vertex connect`, `vertex send`) is rare and stays at info.
    const level = kind === 'socks' || kind === 'forward' ? 'debug' : 'info';
    this.#log[level]({ kind, target, device: stream.device, route: stream.route, connectMs: stream.connectMs, ...(stream.early && { early: true }) }, 'tunnel open');
    return stream;
  }

  /**
   * A stream opened before the peer's answer (Q2QNode.connectEarly), counted and listed as
   * #dialQ2Q would, or null. No dial slot: nothing is negotiated.
   */
  #earlyStream(target: string, kind: TunnelKind, local: string): Q2QStream | null {
    const stream = this.#requireNode().connectEarly?.(target) ?? null;
    return stream && this.#tunnelOpened(stream, kind, target, local);
  }

  /** Waits for a slot when all are taken (#dialQ2Q takes a free one itself). */
  async #dialSlot(): Promise<void> {
    // The slot is handed over by #releaseDialSlot, so the count stays the same.
    await new Promise<void>((resolve) => this.#dialQueue.push(resolve));
  }

  #releaseDialSlot(): void {
    const next = this.#dialQueue.shift();
    if (next) next();
    else this.#dialsRunning -= 1;
  }

  #dialSocks(req: SocksConnectRequest, client: SocksDialInfo): Promise<Duplex> | Duplex {
    let target: string | null;
    try {
      target = this.#socksTarget(req.host, req.port);
    } catch (err) {
      return Promise.reject(err);
    }
    // Early (ConnectOptions.early): on a session whose peer accepted this service before, the
    // reply goes out without waiting for this stream's answer, and the client's request follows
    // the OPEN at once; a refusal then resets the client (socks5-server.ts) instead of a SOCKS error.
    if (target) return this.#earlyStream(target, 'socks', client.clientAddress) ?? this.#dialQ2Q(target, 'socks', client.clientAddress, { early: true }, client);
    return this.#dialDirect(req, client.clientAddress);
  }

  async #dialDirect(req: SocksConnectRequest, clientAddress: string): Promise<Duplex> {
    const where = req.host.includes(':') ? `[${req.host}]:${req.port}` : `${req.host}:${req.port}`;
    if (!this.#config.socks.passthrough) {
      throw vertexError('NotAllowed', `socks ${where}: not a q2q name (use user.domain.q2q or user@domain); passthrough is off`);
    }
    const socket = await connectDirect(req.host, req.port);
    this.tunnels.add({ kind: 'socks', target: where, peer: where, route: 'direct', local: clientAddress, connectMs: 0 }, socket);
    return socket;
  }

  /**
   * The Q2Q target a SOCKS host and port stand for (`bob@b.test:http`), or null for an
   * ordinary host. A browser asks for the same few names over and over, so the answers are
   * remembered (a malformed name throws every time and is never remembered).
   */
  #socksTarget(host: string, port: number): string | null {
    const key = `${port} ${host}`;
    const known = this.#socksTargets.get(key);
    if (known !== undefined) return known;
    const parsed = parseHostTarget(host, port, this.#config.ports);
    const target = parsed ? formatServiceAddress(parsed) : null;
    if (this.#socksTargets.size >= SOCKS_TARGET_CACHE) this.#socksTargets.clear();
    this.#socksTargets.set(key, target);
    return target;
  }

  // ---- control API ----

  async #handleControl(request: CallRequest): Promise<unknown> {
    switch (request.op) {
      case 'status':
        return this.status();
      case 'expose-add': {
        const { service, allow, replace } = request.args;
        const target = parseHostPort(request.args.target, { minPort: 1, defaultHost: '127.0.0.1', code: 'Usage' });
        return this.addExpose({ service, target, ...(allow && { allow }) }, 'cli', { replace: replace === true });
      }
      case 'expose-remove':
        return { service: request.args.service, ...this.removeExpose(request.args.service) };
      case 'forward-add': {
        const listen = parseHostPort(request.args.listen, { ...FORWARD_LISTEN, code: 'Usage' });
        return this.addForward({ listen, to: request.args.to }, 'cli', { replace: request.args.replace === true });
      }
      case 'forward-remove':
        await this.removeForward(request.args.listen);
        return { listen: request.args.listen };
      case 'ping':
        return this.ping(request.args.target, request.args.count ?? DEFAULT_PING_COUNT);
      default: {
        const never: never = request;
        throw vertexError('BadRequest', `control request: unknown op ${String((never as { op: unknown }).op)}`);
      }
    }
  }

  async #openControl(request: StreamRequest): Promise<OpenedStream> {
    this.#requireRunning();
    switch (request.op) {
      case 'connect': {
        const target = formatServiceAddress(parseServiceAddress(request.args.target));
        const { timeoutMs } = request.args;
        const stream = await this.#dialQ2Q(target, 'connect', 'control', timeoutMs === undefined ? {} : { timeoutMs });
        const info: ControlTunnelInfo = { target, peer: stream.peer, device: stream.device, route: stream.route, connectMs: stream.connectMs };
        return { stream, info, framed: request.args.framed === true };
      }
      case 'receive':
        return await this.#attachReceive(request.args.allow);
      case 'receive-accept': {
        const waiting = this.#incoming.get(request.args.id);
        if (!waiting) throw vertexError('BadRequest', `receive-accept: no incoming transfer ${request.args.id} (taken, or given up after ${INCOMING_CLAIM_MS} ms)`);
        this.#incoming.delete(request.args.id);
        waiting.timer.cancel();
        const { stream } = waiting;
        const info: ControlTunnelInfo = { target: `${this.address}:${FILE_TRANSFER_SERVICE}`, peer: stream.peer, device: stream.device, route: stream.route, connectMs: stream.connectMs };
        return { stream, info, framed: true };
      }
      default: {
        const never: never = request;
        throw vertexError('BadRequest', `control request: unknown op ${String((never as { op: unknown }).op)}`);
      }
    }
  }

  /**
   * `vertex receive` through the agent: the file-transfer service is the
   * client's while its control connection lasts. Each sender is announced
   * on that connection; the client claims it with `receive-accept` on a
   * new one, and a sender nobody claims in time is closed.
   */
  async #attachReceive(allowText: readonly string[] | undefined): Promise<OpenedStream> {
    const receiver = this.#receiver;
    if (!receiver) throw vertexError('Internal', `agent is ${this.#state}: no receiver`);
    const allow = allowText && allowText.length > 0 ? allowText.map((p) => parseAllowPattern(p)) : this.#defaultAllow();
    const mine = new Set<string>();
    let detach: () => void = () => undefined;
    const events = new Duplex({
      read() {},
      write(_chunk, _encoding, callback) {
        callback();
      },
      final(callback) {
        detach();
        this.push(null);
        callback();
      },
      destroy(err, callback) {
        detach();
        callback(err);
      },
    });
    const attached = receiver.attach({
      allow,
      onStream: (stream) => {
        const id = randomBytes(12).toString('hex');
        const timer = this.#clock.setTimer(() => {
          this.#incoming.delete(id);
          mine.delete(id);
          stream.destroy();
        }, INCOMING_CLAIM_MS);
        this.#incoming.set(id, { stream, timer });
        mine.add(id);
        const event: ReceiveEvent = { event: 'incoming', id, peer: stream.peer, device: stream.device, route: stream.route };
        events.push(`${JSON.stringify(event)}\n`);
      },
    });
    detach = () => {
      attached.detach();
      // Senders announced but never claimed go with the client.
      for (const id of mine) {
        const waiting = this.#incoming.get(id);
        this.#incoming.delete(id);
        waiting?.timer.cancel();
        waiting?.stream.destroy();
      }
      mine.clear();
    };
    const info: ReceiveInfo = { address: this.address, device: this.#requireNode().status().device, service: FILE_TRANSFER_SERVICE, allow, displaced: attached.displaced };
    // The answer (and the client's "listening") waits until the home server lists the service.
    await attached.ready;
    return { stream: events, info, framed: false };
  }

  /** `vertex ping`: probes over the ping service, or a timed connect to a named service. */
  async ping(targetText: string, count = DEFAULT_PING_COUNT): Promise<PingResult> {
    this.#requireRunning();
    if (!Number.isInteger(count) || count < 1 || count > MAX_PING_COUNT) throw vertexError('Usage', `ping: count must be 1-${MAX_PING_COUNT}`);
    const node = this.#requireNode();
    return pingWith((t) => node.connect(t), targetText, count, this.#clock);
  }

  /** SIGHUP: reach the home server now rather than after the backoff (issue 13). */
  reconnectNow(): void {
    this.#node?.reconnectNow?.('sighup');
  }

  // ---- helpers ----

  #requireRunning(): void {
    if (this.#state !== 'running') throw vertexError('Internal', `agent is ${this.#state}`);
  }

  #requireNode(): AgentNode {
    if (!this.#node) throw vertexError('Internal', `agent is ${this.#state}: no q2q node`);
    return this.#node;
  }

  #requireIdentity(): Identity {
    if (!this.#identity) throw vertexError('Internal', `agent is ${this.#state}: no identity loaded`);
    return this.#identity;
  }
}

/** Ping through any connect function (the agent's node, or a one-off connectQ2Q). */
export async function pingWith(connect: (target: string) => Promise<Q2QStream>, targetText: string, count: number, clock: Clock = systemClock): Promise<PingResult> {
  const colon = targetText.indexOf(':', targetText.indexOf('@') + 1);
  if (colon < 0) {
    const { address, device } = parseDeviceAddress(targetText);
    const named = formatDeviceAddress(address, device);
    const stream = await connect(`${named}:${PING_SERVICE}`);
    return runProbes(named, { stream, peer: stream.peer, device: stream.device, route: stream.route, connectMs: stream.connectMs }, count, clock);
  }
  // A named service: `count` whole connects, timed like probes. Each resolves only once
  // the program behind the service accepted (ServiceOptions.prepare), so a refusing target
  // rejects here with Refused.
  const target = formatServiceAddress(parseServiceAddress(targetText));
  const times: number[] = [];
  let last: Q2QStream | undefined;
  for (let i = 0; i < count; i++) {
    const started = clock.now();
    const stream = await connect(target);
    stream.destroy();
    times.push(Math.round((clock.now() - started) * 100) / 100);
    last = stream;
  }
  const s = last as Q2QStream;
  return { target, peer: s.peer, device: s.device, route: s.route, connectMs: s.connectMs, kind: 'connect', rttMs: times };
}


function connectDirect(host: string, port: number): Promise<net.Socket> {
  return connectLocal({ host, port }, PASSTHROUGH_CONNECT_TIMEOUT_MS).catch((err: unknown) => {
    // Keep the errno as the cause: the SOCKS reply code is chosen from it.
    throw asVertexError(err, 'Internal', `passthrough ${host}:${port}`);
  });
}
