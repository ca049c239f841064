/**
 * The agent's metrics (Prometheus, prom-client), in one module the daemon
 * is handed: the tunnel registry reports opens and closes here, the daemon
 * reports each connect's outcome, and the Q2Q node's events (`home` state
 * changes, `punch` outcomes) are watched. docs/deploy.md says what each
 * metric means and how to read the direct-versus-relayed rate.
 */
import type { EventEmitter } from 'node:events';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { isVertexError } from '../q2q/errors';
import type { MetricsSource } from '../q2q/util/metrics-http';
import type { TunnelEntry, TunnelInfo, TunnelObserver } from './tunnels';

const CONNECT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class AgentMetrics implements MetricsSource, TunnelObserver {
  readonly registry = new Registry();
  readonly #tunnels: Counter<'kind' | 'route'>;
  readonly #connects: Counter<'outcome'>;
  readonly #connectSeconds: Histogram<'route'>;
  readonly #punches: Counter<'outcome'>;
  readonly #reconnects: Counter;
  /** Bytes of tunnels that have closed, by route and direction; open tunnels are added at each scrape. */
  readonly #closedBytes = new Map<string, number>();
  #open: () => TunnelEntry[] = () => [];
  #homeOnline = false;
  #everOnline = false;

  constructor(opts: { identity?: string } = {}) {
    if (opts.identity) this.registry.setDefaultLabels({ identity: opts.identity });
    collectDefaultMetrics({ register: this.registry, prefix: 'vertex_agent_process_' });
    const registers = [this.registry];
    const self = this;
    this.#tunnels = new Counter({
      name: 'vertex_agent_tunnels_total', help: 'Tunnels opened, by front-end kind (socks, forward, connect, inbound) and route (tcp, ptcp, relay, direct)',
      labelNames: ['kind', 'route'], registers,
    });
    new Gauge({
      name: 'vertex_agent_tunnels_open', help: 'Tunnels open now, by route', labelNames: ['route'], registers,
      collect() {
        this.reset();
        for (const t of self.#open()) this.inc({ route: t.route });
      },
    });
    new Counter({
      name: 'vertex_agent_bytes_total', help: 'Tunnel bytes by route and direction (in: from the peer, out: to the peer)',
      labelNames: ['route', 'direction'], registers,
      collect() {
        const totals = new Map(self.#closedBytes);
        for (const t of self.#open()) {
          totals.set(`${t.route}|in`, (totals.get(`${t.route}|in`) ?? 0) + t.bytesIn);
          totals.set(`${t.route}|out`, (totals.get(`${t.route}|out`) ?? 0) + t.bytesOut);
        }
        this.reset();
        for (const [key, value] of totals) {
          const [route, direction] = key.split('|') as [string, string];
          this.inc({ route, direction }, value);
        }
      },
    });
    this.#connects = new Counter({
      name: 'vertex_agent_connects_total', help: 'Outgoing Q2Q connects, by outcome (ok or the error code)', labelNames: ['outcome'], registers,
    });
    this.#connectSeconds = new Histogram({
      name: 'vertex_agent_connect_seconds', help: 'Time to a connected tunnel, by the route that won', labelNames: ['route'], buckets: CONNECT_BUCKETS, registers,
    });
    this.#punches = new Counter({
      name: 'vertex_agent_punch_attempts_total', help: 'UDP hole-punch attempts by outcome (ok, failed, cancelled: another route won first, skipped: both NATs hard)',
      labelNames: ['outcome'], registers,
    });
    this.#reconnects = new Counter({ name: 'vertex_agent_reconnects_total', help: 'Times the control session to the home server came back after being lost', registers });
    new Gauge({
      name: 'vertex_agent_home_online', help: '1 while the control session to the home server is up', registers,
      collect() { this.set(self.#homeOnline ? 1 : 0); },
    });
  }

  /** Where the open tunnels are read at each scrape (the TunnelRegistry). */
  readTunnels(list: () => TunnelEntry[]): void {
    this.#open = list;
  }

  opened(info: TunnelInfo): void {
    this.#tunnels.inc({ kind: info.kind, route: info.route });
  }

  closed(info: TunnelInfo, bytesIn: number, bytesOut: number): void {
    this.#closedBytes.set(`${info.route}|in`, (this.#closedBytes.get(`${info.route}|in`) ?? 0) + bytesIn);
    this.#closedBytes.set(`${info.route}|out`, (this.#closedBytes.get(`${info.route}|out`) ?? 0) + bytesOut);
  }

  connected(route: string, connectMs: number): void {
    this.#connects.inc({ outcome: 'ok' });
    this.#connectSeconds.observe({ route }, connectMs / 1000);
  }

  connectFailed(err: unknown): void {
    this.#connects.inc({ outcome: isVertexError(err) ? err.code : 'Internal' });
  }

  /** Watches a Q2Q node's `home` (online/offline…) and `punch` events, when it emits them. */
  watchNode(node: unknown): void {
    const emitter = node as Partial<EventEmitter>;
    if (typeof emitter.on !== 'function') return;
    emitter.on('home', (state: string) => {
      const online = state === 'online';
      if (online && !this.#homeOnline && this.#everOnline) this.#reconnects.inc();
      if (online) this.#everOnline = true;
      this.#homeOnline = online;
    });
    emitter.on('punch', (outcome: string) => this.#punches.inc({ outcome }));
  }

  async metrics(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  async health(): Promise<string | null> {
    return this.#homeOnline ? null : 'not connected to the home server';
  }
}
