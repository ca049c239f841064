/**
 * The services a node exposes, and who may use each: the listener checks
 * a service's allow list when an inbound request names it and again for
 * every stream opened on a peer session, against the session's
 * authenticated peer (allow.ts has the patterns).
 */
import { parseService } from '../address';
import { vertexError } from '../errors';
import { defaultAllow, isAllowed } from './allow';
import type { ServiceOptions } from './types';

export class ServiceTable {
  readonly #services = new Map<string, ServiceOptions>();
  readonly #owner: () => string;
  readonly #label: () => string;

  /**
   * `owner` is the node's own address (the default allow list names it);
   * `label` how refusals name this node, e.g. with its device (bob+laptop@b.test).
   */
  constructor(owner: () => string, label?: () => string) {
    this.#owner = owner;
    this.#label = label ?? owner;
  }

  set(service: string, opts: ServiceOptions): string {
    const name = parseService(service);
    this.#services.set(name, opts);
    return name;
  }

  delete(service: string): boolean {
    return this.#services.delete(parseService(service));
  }

  has(service: string): boolean {
    return this.#services.has(service);
  }

  names(): string[] {
    return [...this.#services.keys()];
  }

  allowOf(opts: ServiceOptions): readonly string[] {
    return opts.allow ?? defaultAllow(this.#owner());
  }

  entries(): Array<{ service: string; allow: readonly string[] }> {
    return [...this.#services].map(([service, o]) => ({ service, allow: this.allowOf(o) }));
  }

  /** The service `peer` may use, or NotExposed / Denied. */
  check(service: string, peer: string): ServiceOptions {
    const opts = this.#services.get(service);
    if (!opts) throw vertexError('NotExposed', `${this.#label()} does not expose "${service}"`);
    if (!isAllowed(this.allowOf(opts), peer)) throw vertexError('Denied', `${this.#label()}:${service} does not allow ${peer}`);
    return opts;
  }

  /** True if `peer` may use at least one service. */
  offersAnything(peer: string): boolean {
    for (const opts of this.#services.values()) if (isAllowed(this.allowOf(opts), peer)) return true;
    return false;
  }
}
