/**
 * The agent's exposed services (agent.yaml `expose:` and `vertex expose`):
 * which local target each service name reaches, who may connect, and where
 * the entry came from. Issue 13 took this table out of AgentDaemon.
 *
 * The rules it keeps:
 *
 * - an existing name is replaced only when asked (`--replace`), and a
 *   replaced entry keeps its allow list unless the new one names one: an
 *   allow list never changes silently (issue 13, problem 4);
 * - an entry without `allow` admits its owner alone, on any of the owner's
 *   devices (INTERFACE.md, secure defaults);
 * - `vertex-ping` and `file-transfer` are not names a user can expose: the
 *   agent serves them itself.
 *
 * Every change goes to the node (`expose`/`unexpose`), and `onChange` tells
 * the daemon, which follows with the ping service's allow list. Saving the
 * runtime entries is the daemon's: it knows when a change is the user's
 * (and not the agent's start or a reload).
 */
import type * as net from 'node:net';
import { formatHostPort, type HostPort } from '../config/schema';
import { parseService } from '../q2q/address';
import { vertexError } from '../q2q/errors';
import type { ServiceOptions } from '../q2q/negotiate/types';
import { silentLogger, type Logger } from '../q2q/util/log';
import { FILE_TRANSFER_SERVICE } from './file-transfer';
import { exposeHandler, exposePrepare } from './frontends/expose';
import { PING_SERVICE } from './ping';
import type { EntrySource } from './reload-plan';
import type { TunnelRegistry } from './tunnels';

export interface ExposeSpec {
  service: string;
  target: HostPort;
  allow?: readonly string[];
}

export interface ExposeEntry {
  readonly service: string;
  readonly target: HostPort;
  readonly allow: readonly string[];
  readonly source: EntrySource;
}

export interface ExposeAdded {
  address: string;
  target: string;
  allow: readonly string[];
  replaced?: { target: string; allow: readonly string[]; source: EntrySource };
}

export interface ExposeTableOptions {
  /** Where services go online: the agent's Q2Q node. */
  node: () => { expose(service: string, opts: ServiceOptions): void; unexpose(service: string): void };
  /** This agent's address, `alice@a.test`. */
  address: () => string;
  /** The allow list of an entry that names none: the owner alone. */
  defaultAllow: () => string[];
  /** Where inbound connections are recorded for `vertex status`. */
  tunnels: TunnelRegistry;
  /** After every add or remove. */
  onChange?: () => void;
  log?: Logger;
}

export class ExposeTable {
  readonly #opts: ExposeTableOptions;
  readonly #log: Logger;
  readonly #entries = new Map<string, ExposeEntry>();

  constructor(opts: ExposeTableOptions) {
    this.#opts = opts;
    this.#log = opts.log ?? silentLogger;
  }

  get(service: string): ExposeEntry | undefined {
    return this.#entries.get(service);
  }

  entries(): ExposeEntry[] {
    return [...this.#entries.values()];
  }

  /** Every pattern some exposed service admits (the ping service admits the same callers). */
  allowPatterns(): Set<string> {
    const out = new Set<string>();
    for (const e of this.#entries.values()) for (const pattern of e.allow) out.add(pattern);
    return out;
  }

  /**
   * `vertex expose` and its control op: a name already exposed is replaced
   * only with `replace`, and then keeps its allow list unless `spec.allow`
   * names a new one.
   */
  add(spec: ExposeSpec, source: EntrySource, opts: { replace?: boolean } = {}): ExposeAdded {
    const service = parseService(spec.service);
    const current = this.#entries.get(service);
    if (current && !opts.replace) {
      throw vertexError(
        'Usage',
        `expose ${service}: already exposed -> ${formatHostPort(current.target)} (allow ${current.allow.join(', ')}; from ${current.source === 'config' ? 'agent.yaml' : 'vertex expose'}); add --replace to replace it`,
      );
    }
    const allow = spec.allow && spec.allow.length > 0 ? spec.allow : current?.allow;
    const entry = this.apply({ ...spec, ...(allow && { allow }) }, source);
    return {
      address: `${this.#opts.address()}:${entry.service}`,
      target: formatHostPort(entry.target),
      allow: entry.allow,
      ...(current && { replaced: { target: formatHostPort(current.target), allow: current.allow, source: current.source } }),
    };
  }

  /**
   * Puts `spec` online as it is, over whatever the name had (agent start,
   * reload, and add once it has checked): the checks that hold for every
   * entry, whatever its source, are here.
   */
  apply(spec: ExposeSpec, source: EntrySource): ExposeEntry {
    const service = parseService(spec.service);
    if (service === PING_SERVICE) throw vertexError('Usage', `expose ${service}: the name is reserved for vertex ping`);
    if (service === FILE_TRANSFER_SERVICE) throw vertexError('Usage', `expose ${service}: the name is reserved for receiving files (receive: in agent.yaml, or vertex receive)`);
    const me = this.#opts.address();
    const name = `${me}:${service}`;
    const allow = spec.allow && spec.allow.length > 0 ? [...spec.allow] : this.#opts.defaultAllow();
    const log = this.#log.child({ service });
    const local = formatHostPort(spec.target);
    const handler = exposeHandler(spec.target, { log });
    this.#opts.node().expose(service, {
      allow,
      prepare: exposePrepare(spec.target, name, { log }),
      onConnection: (stream, prepared) => {
        // At debug, like the caller's SOCKS tunnels (daemon.ts): the peer session is logged at info.
        log.debug({ peer: stream.peer, route: stream.route }, 'inbound connection');
        this.#opts.tunnels.add({
          kind: 'inbound', target: name, peer: stream.peer, device: stream.device, route: stream.route, local, connectMs: stream.connectMs,
        }, stream);
        handler(stream, prepared as net.Socket | undefined);
      },
    });
    const entry: ExposeEntry = { service, target: spec.target, allow, source };
    this.#entries.set(service, entry);
    log.info({ target: local, allow }, 'service exposed');
    this.#opts.onChange?.();
    return entry;
  }

  /** Takes the service offline; NotExposed when this agent does not expose it. */
  remove(serviceText: string): ExposeEntry {
    const service = parseService(serviceText);
    const entry = this.#entries.get(service);
    if (!entry) throw vertexError('NotExposed', `unexpose ${service}: this agent does not expose it`);
    this.#entries.delete(service);
    this.#opts.node().unexpose(service);
    this.#log.info({ service }, 'service unexposed');
    this.#opts.onChange?.();
    return entry;
  }

  /** Forgets every entry without telling the node (the node is stopping, which withdraws them all). */
  clear(): void {
    this.#entries.clear();
  }
}
