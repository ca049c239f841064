/**
 * The server's metrics (Prometheus, prom-client), in one module that the
 * rest of the server is handed: every instrumentation point is one call on
 * ServerMetrics, or a wrapper applied here (instrumentCommands,
 * instrumentStore), so the code being measured barely changes.
 * docs/deploy.md says what each metric means.
 *
 * Every series carries `node` (this server node), so the nodes of one
 * domain can be told apart and summed.
 */
import * as os from 'node:os';
import type { Duplex } from 'node:stream';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { isVertexError } from '../q2q/errors';
import type { AmpPeer } from '../q2q/proto/amp-peer';
import type { MetricsSource } from '../q2q/util/metrics-http';
import { isThenable } from '../q2q/util/thenable';
import type { AccountStore } from './store/account-store';

/** Commands whose outcomes are counted by account event as well (registration, login, renewal). */
const ACCOUNT_EVENTS: Readonly<Record<string, string>> = { register: 'registration', sign: 'login', renew: 'renewal' };
const STORE_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export interface ServerGauges {
  sessions(): number;
  onlineAgents(): number;
  relayActive(): number;
  /** Connections without a valid client certificate (server/admission.ts). */
  unauthenticated?(): { open: number; underPressure: boolean };
}

export class ServerMetrics implements MetricsSource {
  readonly registry = new Registry();
  readonly #commands: Counter<'command' | 'outcome'>;
  readonly #accountEvents: Counter<'event' | 'outcome'>;
  readonly #rateLimited: Counter<'command'>;
  readonly #relayPairs: Counter;
  readonly #relayBytes: Counter;
  readonly #storeSeconds: Histogram<'op' | 'outcome'>;
  readonly #nodeForwards: Counter<'outcome'>;
  readonly #nodeLegs: Counter<'outcome'>;
  readonly #nodeTokens: Counter<'outcome'>;
  readonly #presenceLookups: Counter<'source'>;
  readonly #unauthenticatedRefused: Counter<'reason'>;
  #gauges: ServerGauges | null = null;
  #ready: () => Promise<void> = async () => { throw new Error('starting'); };

  constructor(opts: { node?: string } = {}) {
    this.registry.setDefaultLabels({ node: opts.node ?? os.hostname() });
    collectDefaultMetrics({ register: this.registry, prefix: 'vertex_server_process_' });
    const registers = [this.registry];
    const self = this;
    new Gauge({
      name: 'vertex_server_sessions', help: 'Control sessions open on this node', registers,
      collect() { this.set(self.#gauges?.sessions() ?? 0); },
    });
    new Gauge({
      name: 'vertex_server_online_agents', help: 'Agents listening (online) through this node', registers,
      collect() { this.set(self.#gauges?.onlineAgents() ?? 0); },
    });
    new Gauge({
      name: 'vertex_server_relay_active_pairs', help: 'Relayed connections spliced now', registers,
      collect() { this.set(self.#gauges?.relayActive() ?? 0); },
    });
    new Gauge({
      name: 'vertex_server_unauthenticated_connections', help: 'Connections without a valid client certificate open now (in TLS, registering, logging in)', registers,
      collect() { this.set(self.#gauges?.unauthenticated?.().open ?? 0); },
    });
    new Gauge({
      name: 'vertex_server_unauthenticated_pressure', help: '1 while new connections from addresses not known good are rationed (docs/security.md)', registers,
      collect() { this.set(self.#gauges?.unauthenticated?.().underPressure ? 1 : 0); },
    });
    this.#unauthenticatedRefused = new Counter({
      name: 'vertex_server_unauthenticated_refused_total',
      help: 'Connections closed at accept, before TLS, by reason (address: per-address cap; shed: under pressure, not known good; full: every other one busy)',
      labelNames: ['reason'], registers,
    });
    this.#commands = new Counter({
      name: 'vertex_server_commands_total', help: 'Control commands answered, by command and outcome (ok or the error code)',
      labelNames: ['command', 'outcome'], registers,
    });
    this.#accountEvents = new Counter({
      name: 'vertex_server_account_events_total', help: 'Registrations, logins (password sign) and renewals, by outcome (ok or the error code)',
      labelNames: ['event', 'outcome'], registers,
    });
    this.#rateLimited = new Counter({
      name: 'vertex_server_rate_limited_total', help: 'Requests refused by a rate limit, by command', labelNames: ['command'], registers,
    });
    this.#relayPairs = new Counter({ name: 'vertex_server_relay_pairs_total', help: 'Relay legs paired and spliced', registers });
    this.#relayBytes = new Counter({ name: 'vertex_server_relay_bytes_total', help: 'Bytes carried by the relay (both directions)', registers });
    this.#nodeForwards = new Counter({
      name: 'vertex_server_node_forwards_total', help: 'Inbound requests forwarded to the node holding the listener, by outcome (ok or the error code)',
      labelNames: ['outcome'], registers,
    });
    this.#nodeLegs = new Counter({
      name: 'vertex_server_node_relay_legs_total', help: 'Relay legs carried to the node where their token pairs, by outcome',
      labelNames: ['outcome'], registers,
    });
    this.#nodeTokens = new Counter({
      name: 'vertex_server_node_relay_tokens_total', help: 'Relay token ids this node told another node of (counted per node told): sent, or failed (the node was not reached)',
      labelNames: ['outcome'], registers,
    });
    this.#presenceLookups = new Counter({
      name: 'vertex_server_presence_lookups_total', help: 'Reads of where the devices on other nodes are, by source (memory: the copy the store\'s notifications keep; store: a query)',
      labelNames: ['source'], registers,
    });
    this.#storeSeconds = new Histogram({
      name: 'vertex_server_store_seconds', help: 'Account store call latency, by operation and outcome',
      labelNames: ['op', 'outcome'], buckets: STORE_BUCKETS, registers,
    });
  }

  /** The live figures read at each scrape, and the readiness check (the store answers). */
  attach(gauges: ServerGauges, ready: () => Promise<void>): void {
    this.#gauges = gauges;
    this.#ready = ready;
  }

  unauthenticatedRefused(reason: string): void {
    this.#unauthenticatedRefused.inc({ reason });
  }

  command(command: string, outcome: string): void {
    this.#commands.inc({ command, outcome });
    const event = ACCOUNT_EVENTS[command];
    if (event) this.#accountEvents.inc({ event, outcome });
    if (outcome === 'RateLimited') this.#rateLimited.inc({ command });
  }

  /** A relay pair was spliced: count it, and the bytes each leg delivers. */
  relaySpliced(a: Duplex, b: Duplex): void {
    this.#relayPairs.inc();
    const count = (chunk: Buffer): void => this.#relayBytes.inc(chunk.length);
    a.on('data', count);
    b.on('data', count);
  }

  /** An inbound this node forwarded to another node (server/node-mesh.ts), and how it ended. */
  nodeForward(outcome: string): void {
    this.#nodeForwards.inc({ outcome });
  }

  /** A relay leg this node carried to another node, or could not. */
  nodeRelayLeg(outcome: string): void {
    this.#nodeLegs.inc({ outcome });
  }

  /** Relay token ids registered here and told to another node (server/node-mesh.ts), or that could not be. */
  nodeRelayTokens(outcome: 'sent' | 'failed', count: number): void {
    this.#nodeTokens.inc({ outcome }, count);
  }

  /** A read of the other nodes' devices (server/store/node-directory.ts), answered from memory or by a store query. */
  presenceLookup(source: 'memory' | 'store'): void {
    this.#presenceLookups.inc({ source });
  }

  storeCall(op: string, seconds: number, outcome: string): void {
    this.#storeSeconds.observe({ op, outcome }, seconds);
  }

  async metrics(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  async health(): Promise<string | null> {
    try {
      await this.#ready();
      return null;
    } catch (err) {
      return (err as Error).message || String(err);
    }
  }
}

function outcomeOf(err: unknown): string {
  return isVertexError(err) ? err.code : 'Internal';
}

/**
 * Counts every command `peer` answers, by outcome: wraps the responders
 * registered after this call (a control session's handlers).
 */
export function instrumentCommands(peer: AmpPeer, metrics: ServerMetrics): void {
  const handle = peer.handle.bind(peer);
  peer.handle = (command, responder) => handle(command, (args) => {
    let result: ReturnType<typeof responder>;
    try {
      result = responder(args);
    } catch (err) {
      metrics.command(command, outcomeOf(err));
      throw err;
    }
    if (isThenable(result)) {
      result.then(() => metrics.command(command, 'ok'), (err) => metrics.command(command, outcomeOf(err)));
    } else {
      metrics.command(command, 'ok');
    }
    return result;
  });
}

/** The store, with every call timed into vertex_server_store_seconds. */
export function instrumentStore(store: AccountStore, metrics: ServerMetrics): AccountStore {
  return new Proxy(store, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== 'function' || prop === 'onChange' || prop === 'close') {
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      }
      const op = String(prop);
      return async (...args: unknown[]) => {
        const started = process.hrtime.bigint();
        try {
          const result = await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
          metrics.storeCall(op, Number(process.hrtime.bigint() - started) / 1e9, 'ok');
          return result;
        } catch (err) {
          // A refused request (NameTaken) is an answer, not a store failure.
          metrics.storeCall(op, Number(process.hrtime.bigint() - started) / 1e9, isVertexError(err, 'StorageUnavailable') || !isVertexError(err) ? 'error' : 'ok');
          throw err;
        }
      };
    },
  });
}
