/**
 * The nodes of a multi-node domain and where each listening device is
 * (tables `nodes` and `presence`, created by the PostgreSQL migrations).
 *
 * - Each node upserts its row on start (name, node-to-node endpoint) and
 *   beats every HEARTBEAT_MS; a node whose beat is older than
 *   NODE_DEAD_AFTER_MS is dead, and its presence rows are ignored (they stay
 *   until it starts again, which deletes them, or an agent of theirs
 *   listens elsewhere, which moves the row).
 * - A `listen` writes (address, device) -> this node; a session that ends
 *   deletes its row only if it still names this node (the device may have
 *   moved to another node meanwhile).
 * - Times are the database's clock, so nodes' clocks need not agree.
 *
 * Writes for one (address, device) are applied in order (a listen then a
 * drop must not land as drop then listen).
 */
import pg from 'pg';
import { vertexError } from '../../q2q/errors';
import type { Logger } from '../../q2q/util/log';
import { silentLogger } from '../../q2q/util/log';

export const HEARTBEAT_MS = 2_000;
export const NODE_DEAD_AFTER_MS = 8_000;
const POOL_SIZE = 4;
const QUERY_TIMEOUT_MS = 10_000;
const DB_NOW = '(extract(epoch from clock_timestamp()) * 1000)::bigint';

export interface NodeInfo {
  name: string;
  /** host:port of its node-to-node listener. */
  endpoint: string;
}

export interface RemoteDevice {
  device: string;
  node: string;
  services: string[];
}

function split(address: string): { user: string; domain: string } {
  const at = address.lastIndexOf('@');
  return { user: address.slice(0, at), domain: address.slice(at + 1) };
}

export class NodeDirectory {
  readonly #pool: pg.Pool;
  readonly #name: string;
  readonly #log: Logger;
  readonly #chains = new Map<string, Promise<void>>();
  #beat: NodeJS.Timeout | null = null;
  #closed = false;

  private constructor(url: string, name: string, log: Logger) {
    this.#name = name;
    this.#log = log;
    this.#pool = new pg.Pool({
      connectionString: url, max: POOL_SIZE, query_timeout: QUERY_TIMEOUT_MS, connectionTimeoutMillis: QUERY_TIMEOUT_MS,
      application_name: `vertex-node-${name}`,
      types: { getTypeParser: ((oid: number, format?: string) => (oid === pg.types.builtins.INT8 ? Number : pg.types.getTypeParser(oid, format as 'text'))) as typeof pg.types.getTypeParser },
    });
    this.#pool.on('error', (err) => this.#log.warn({ reason: err.message }, 'node directory: idle connection lost'));
  }

  get name(): string {
    return this.#name;
  }

  /**
   * Registers this node (the tables exist: the account store migrated them
   * first) and forgets its presence rows from an earlier run. A live node
   * of the same name elsewhere is refused: two nodes must not share a name.
   */
  static async open(opts: { url: string; name: string; endpoint: string; log?: Logger }): Promise<NodeDirectory> {
    const dir = new NodeDirectory(opts.url, opts.name, opts.log ?? silentLogger);
    try {
      const { rows } = await dir.#pool.query<{ endpoint: string; alive: boolean }>(
        `SELECT endpoint, seen_at > ${DB_NOW} - $2 AS alive FROM nodes WHERE name = $1`, [opts.name, NODE_DEAD_AFTER_MS]);
      const other = rows[0];
      if (other?.alive && other.endpoint !== opts.endpoint) {
        throw vertexError('Usage', `node name "${opts.name}" is in use by a live node at ${other.endpoint}; give each node its own node.name`);
      }
      await dir.#pool.query('DELETE FROM presence WHERE node = $1', [opts.name]);
      await dir.#pool.query(
        `INSERT INTO nodes (name, endpoint, started_at, seen_at) VALUES ($1, $2, ${DB_NOW}, ${DB_NOW})
         ON CONFLICT (name) DO UPDATE SET endpoint = $2, started_at = ${DB_NOW}, seen_at = ${DB_NOW}`, [opts.name, opts.endpoint]);
    } catch (err) {
      await dir.#pool.end().catch(() => undefined);
      throw err;
    }
    dir.#beat = setInterval(() => void dir.#heartbeat(), HEARTBEAT_MS);
    dir.#beat.unref();
    return dir;
  }

  async #heartbeat(): Promise<void> {
    try {
      await this.#pool.query(`UPDATE nodes SET seen_at = ${DB_NOW} WHERE name = $1`, [this.#name]);
    } catch (err) {
      this.#log.warn({ reason: (err as Error).message }, 'node directory: heartbeat failed');
    }
  }

  #chain(key: string, what: string, fn: () => Promise<unknown>): Promise<void> {
    const previous = this.#chains.get(key) ?? Promise.resolve();
    const next = previous.then(fn).then(() => undefined, (err: Error) => {
      this.#log.warn({ key, reason: err.message }, `node directory: ${what} failed`);
    });
    this.#chains.set(key, next);
    void next.then(() => {
      if (this.#chains.get(key) === next) this.#chains.delete(key);
    });
    return next;
  }

  /** (address, device) listens here now. Resolves once written (or the failure logged). */
  put(address: string, device: string, services: readonly string[]): Promise<void> {
    const { user, domain } = split(address);
    return this.#chain(`${address}/${device}`, 'presence write', () => this.#pool.query(
      `INSERT INTO presence (domain, username, device, node, services, since) VALUES ($1, $2, $3, $4, $5, ${DB_NOW})
       ON CONFLICT (domain, username, device) DO UPDATE SET node = $4, services = $5, since = ${DB_NOW}`,
      [domain, user, device, this.#name, JSON.stringify([...services])]));
  }

  /** (address, device) no longer listens here; a row that moved to another node stays. */
  remove(address: string, device: string): Promise<void> {
    const { user, domain } = split(address);
    return this.#chain(`${address}/${device}`, 'presence delete', () => this.#pool.query(
      'DELETE FROM presence WHERE domain = $1 AND username = $2 AND device = $3 AND node = $4', [domain, user, device, this.#name]));
  }

  /** The devices of `address` listening on other live nodes. */
  async devicesElsewhere(address: string): Promise<RemoteDevice[]> {
    const { user, domain } = split(address);
    const { rows } = await this.#pool.query<{ device: string; node: string; services: string }>(
      `SELECT p.device, p.node, p.services FROM presence p JOIN nodes n ON n.name = p.node
       WHERE p.domain = $1 AND p.username = $2 AND p.node <> $3 AND n.seen_at > ${DB_NOW} - $4`,
      [domain, user, this.#name, NODE_DEAD_AFTER_MS]);
    return rows.map((r) => ({ device: r.device, node: r.node, services: JSON.parse(r.services) as string[] }));
  }

  /**
   * Checks that this node holds the same CA for `domain` as the nodes before
   * it (the first node records its fingerprint); a different CA, such as one
   * a node created because its copy was missing, is refused.
   */
  async checkDomainCa(domain: string, fingerprint: string): Promise<void> {
    await this.#pool.query(
      `INSERT INTO domain_cas (domain, fingerprint, first_node, recorded_at) VALUES ($1, $2, $3, ${DB_NOW}) ON CONFLICT (domain) DO NOTHING`,
      [domain, fingerprint, this.#name]);
    const { rows } = await this.#pool.query<{ fingerprint: string; first_node: string }>('SELECT fingerprint, first_node FROM domain_cas WHERE domain = $1', [domain]);
    const row = rows[0];
    if (row && row.fingerprint !== fingerprint) {
      throw vertexError('CaChanged', `node ${this.#name}: its CA for ${domain} (${fingerprint}) is not the one the other nodes use (${row.fingerprint}, first on node ${row.first_node}); copy data_dir/ca/${domain}/ from that node (docs/deploy.md)`);
    }
  }

  /** Other live nodes, by name. */
  async liveNodes(): Promise<NodeInfo[]> {
    const { rows } = await this.#pool.query<NodeInfo>(
      `SELECT name, endpoint FROM nodes WHERE name <> $1 AND seen_at > ${DB_NOW} - $2 ORDER BY name`, [this.#name, NODE_DEAD_AFTER_MS]);
    return rows;
  }

  async node(name: string): Promise<NodeInfo | null> {
    const { rows } = await this.#pool.query<NodeInfo>('SELECT name, endpoint FROM nodes WHERE name = $1', [name]);
    return rows[0] ?? null;
  }

  /** A clean stop: this node's rows go at once, so other nodes stop forwarding here now rather than after NODE_DEAD_AFTER_MS. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#beat) clearInterval(this.#beat);
    await Promise.all([...this.#chains.values()]);
    try {
      await this.#pool.query('DELETE FROM presence WHERE node = $1', [this.#name]);
      await this.#pool.query('UPDATE nodes SET seen_at = 0 WHERE name = $1', [this.#name]);
    } catch (err) {
      this.#log.warn({ reason: (err as Error).message }, 'node directory: could not withdraw this node');
    }
    await this.#pool.end().catch(() => undefined);
  }
}
