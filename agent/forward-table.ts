/**
 * The agent's forwards (agent.yaml `forwards:` and `vertex forward`): local
 * listening ports, each tunnelling to one remote service. Issue 13 took this
 * table out of AgentDaemon.
 *
 * Entries are keyed by their listen address as written. Port 0 listens on a
 * port the system picks, and the bound address is what status, the CLI's
 * answer and the log report. A config entry keeps its written address as its
 * key (so a reload matches it again); a CLI entry on port 0 is keyed by the
 * bound address, so several can coexist.
 *
 * An existing listen address is replaced only when asked (`--replace`).
 * Removing a forward stops its listener; tunnels already open through it
 * stay up.
 */
import type { Duplex } from 'node:stream';
import { FORWARD_LISTEN, formatHostPort, parseHostPort, type HostPort } from '../config/schema';
import { formatServiceAddress, parseServiceAddress } from '../q2q/address';
import { vertexError } from '../q2q/errors';
import { silentLogger, type Logger } from '../q2q/util/log';
import { ForwardListener } from './frontends/forward';
import type { EntrySource } from './reload-plan';

export interface ForwardSpec {
  listen: HostPort;
  to: string;
}

export interface ForwardEntry {
  /** The written listen address (config entries), or the bound one (port-0 cli entries). */
  readonly key: string;
  readonly listener: ForwardListener;
  /** `bob@b.test:ssh`, normalised. */
  readonly to: string;
  readonly source: EntrySource;
}

export interface ForwardTableOptions {
  /** Opens the tunnel for one accepted client (`local`: the client's address). */
  dial: (target: string, local: string) => Promise<Duplex>;
  log?: Logger;
}

export class ForwardTable {
  readonly #opts: ForwardTableOptions;
  readonly #log: Logger;
  readonly #entries = new Map<string, ForwardEntry>();

  constructor(opts: ForwardTableOptions) {
    this.#opts = opts;
    this.#log = opts.log ?? silentLogger;
  }

  get(key: string): ForwardEntry | undefined {
    return this.#entries.get(key);
  }

  entries(): ForwardEntry[] {
    return [...this.#entries.values()];
  }

  /** Where each forward listens (the bound address), for `vertex status` and the CLI. */
  addresses(): Array<{ listen: HostPort; to: string }> {
    return this.entries().flatMap((f) => (f.listener.address ? [{ listen: f.listener.address, to: f.to }] : []));
  }

  /** `vertex forward` and its control op: an existing listen address is replaced only with `replace`. */
  async add(spec: ForwardSpec, source: EntrySource, opts: { replace?: boolean } = {}): Promise<{ listen: string; to: string; replaced?: { to: string } }> {
    const key = formatHostPort(spec.listen);
    // A port-0 entry from the CLI gets a port of its own: it never stands in another's place.
    const current = spec.listen.port === 0 && source === 'cli' ? undefined : this.#entries.get(key);
    if (current && opts.replace) {
      this.#entries.delete(key);
      await current.listener.stop();
    } else if (current) {
      throw vertexError('Usage', `forward ${key}: already forwarding to ${current.to} (from ${current.source === 'config' ? 'agent.yaml' : 'vertex forward'}); add --replace to replace it`);
    }
    const entry = await this.open(spec, source);
    return { listen: formatHostPort(entry.listener.address ?? spec.listen), to: entry.to, ...(current && { replaced: { to: current.to } }) };
  }

  /** Starts listening for `spec` (agent start, reload, and add once it has checked). */
  async open(spec: ForwardSpec, source: EntrySource): Promise<ForwardEntry> {
    const target = formatServiceAddress(parseServiceAddress(spec.to));
    const ephemeral = spec.listen.port === 0 && source === 'cli';
    let key = formatHostPort(spec.listen);
    if (!ephemeral && this.#entries.has(key)) throw vertexError('Usage', `forward ${key}: already forwarding to ${this.#entries.get(key)?.to}`);
    const listener = new ForwardListener({
      listen: spec.listen,
      to: target,
      dial: ({ address }) => this.#opts.dial(target, address),
      log: this.#log,
    });
    const bound = await listener.start();
    if (ephemeral) key = formatHostPort(bound);
    const entry: ForwardEntry = { key, listener, to: target, source };
    this.#entries.set(key, entry);
    return entry;
  }

  /**
   * `vertex forward --remove`: by the address as written or as bound (a
   * port-0 entry is known by the port it got). Usage error when there is none.
   */
  async remove(listenText: string): Promise<ForwardEntry> {
    const key = formatHostPort(parseHostPort(listenText, { ...FORWARD_LISTEN, code: 'Usage' }));
    const entry = this.#entries.get(key) ?? this.entries().find((f) => f.listener.address && formatHostPort(f.listener.address) === key);
    if (!entry) throw vertexError('Usage', `forward ${key}: no such forward on this agent`);
    return this.close(entry.key) as Promise<ForwardEntry>;
  }

  /** Stops the forward under `key` (a reload's removal); undefined when there is none. */
  async close(key: string): Promise<ForwardEntry | undefined> {
    const entry = this.#entries.get(key);
    if (!entry) return undefined;
    this.#entries.delete(key);
    await entry.listener.stop();
    return entry;
  }

  /** Stops every listener (the agent is stopping); `step` reports a failure without stopping the rest. */
  async closeAll(step: (what: string, fn: () => Promise<void>) => Promise<void>): Promise<void> {
    for (const f of this.entries()) await step(`forward ${f.key}`, () => f.listener.stop());
    this.#entries.clear();
  }
}
