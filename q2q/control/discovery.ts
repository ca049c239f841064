/**
 * Finding a domain's identity server: an explicit override (`--resolve`,
 * `domains:` in agent.yaml) first, then SRV `_q2q._tcp.<domain>`, then the
 * domain's own address on the default port.
 */
import { promises as dns } from 'node:dns';
import { DEFAULT_SERVER_PORT } from './protocol';

export interface ServerEndpoint {
  host: string;
  port: number;
  /**
   * How it was found: named by an override, an SRV record, or the domain's
   * own address on the default port (the last resort); errors say which.
   */
  via?: 'override' | 'srv' | 'default';
}

export type ServerResolver = (domain: string) => Promise<ServerEndpoint[]>;

export interface ResolverOptions {
  /** A domain's server, or its servers in the order to try them (the nodes of one domain). */
  overrides?: ReadonlyMap<string, ServerEndpoint | readonly ServerEndpoint[]> | Record<string, ServerEndpoint | readonly ServerEndpoint[]>;
  /** Injected for tests; defaults to node:dns. */
  resolveSrv?: (name: string) => Promise<Array<{ name: string; port: number; priority: number; weight: number }>>;
}

export function createServerResolver(opts: ResolverOptions = {}): ServerResolver {
  const overrides = opts.overrides instanceof Map
    ? opts.overrides
    : new Map(Object.entries(opts.overrides ?? {}));
  const resolveSrv = opts.resolveSrv ?? ((name: string) => dns.resolveSrv(name));
  return async (domain) => {
    const key = domain.toLowerCase();
    const override = overrides.get(key);
    if (override) return (Array.isArray(override) ? override : [override]).map((o: ServerEndpoint) => ({ ...o, via: 'override' as const }));
    try {
      const records = await resolveSrv(`_q2q._tcp.${key}`);
      if (records.length > 0) {
        return [...records]
          .sort((a, b) => a.priority - b.priority || b.weight - a.weight)
          .map((r) => ({ host: r.name, port: r.port, via: 'srv' as const }));
      }
    } catch {
      // No SRV record (ENOTFOUND/ENODATA) is the common case: fall through.
    }
    return [{ host: key, port: DEFAULT_SERVER_PORT, via: 'default' }];
  };
}
