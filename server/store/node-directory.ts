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
 *
 * Presence is read from memory (issue 14: an inbound costs no store query).
 * Every presence write sends, in the same statement, a NOTIFY on
 * PRESENCE_CHANNEL naming the change; each node LISTENs on a connection of
 * its own and applies the changes to its copy in the order PostgreSQL
 * delivers them (commit order). The copy is loaded at start after LISTEN is
 * up, with the notifications that arrive meanwhile applied after the load:
 * each change sets or clears one row, so replaying the changes since LISTEN
 * over a later snapshot ends in the database's state. While the LISTEN
 * connection is down the copy may miss changes, so reads go to the store
 * until it is back and the copy is loaded again. Node liveness comes from
 * the heartbeat query (every HEARTBEAT_MS, which reads every node's beat):
 * a node found dead has its devices dropped from the copy, and one found
 * alive again has them loaded back.
 */
import pg from 'pg';
import { vertexError } from '../../q2q/errors';
import type { Logger } from '../../q2q/util/log';
import { silentLogger } from '../../q2q/util/log';
import { PgListener } from './pg-listener';

export const HEARTBEAT_MS = 2_000;
export const NODE_DEAD_AFTER_MS = 8_000;
export const PRESENCE_CHANNEL = 'vertex_presence';
const POOL_SIZE = 4;
const QUERY_TIMEOUT_MS = 10_000;
const DB_NOW = '(extract(epoch from clock_timestamp()) * 1000)::bigint';
/** PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; a change with more services says "read the row" instead. */
const MAX_NOTIFY_PAYLOAD = 7_000;
/** A reload that failed while notifications flow is tried again after this long. */
const RELOAD_RETRY_MS = 10_000;

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

/** Where a presence read was answered from (counted in vertex_server_presence_lookups_total). */
export type LookupSource = 'memory' | 'store';

export interface NodeDirectoryOptions {
  url: string;
  name: string;
  endpoint: string;
  log?: Logger;
  /** The devices of `address` on other nodes changed in the copy (a notification, a node dead or back). */
  onPresenceChange?: (address: string) => void;
  /** Each devicesElsewhere, by where it was answered from. */
  onLookup?: (source: LookupSource) => void;
  /** A node certificate was revoked (by any node or admin command): connections that use it end. */
  onNodeCertificateRevoked?: (serial: string) => void;
  /** The copy was reloaded after the notifications were lost: revocations may have been missed meanwhile. */
  onResync?: () => void;
}

/**
 * One change, as sent in a notification (JSON array after the schema and a space):
 * put: ['p', domain, user, device, node, services]; remove: ['r', domain, user, device, node];
 * a node withdrew all its rows: ['n', node]; read the row: ['f', domain, user, device];
 * a node certificate was revoked: ['x', serial].
 */
type Change =
  | ['p', string, string, string, string, string[]]
  | ['r', string, string, string, string]
  | ['n', string]
  | ['f', string, string, string]
  | ['x', string];

interface Entry { node: string; services: string[] }

function split(address: string): { user: string; domain: string } {
  const at = address.lastIndexOf('@');
  return { user: address.slice(0, at), domain: address.slice(at + 1) };
}

export class NodeDirectory {
  readonly #pool: pg.Pool;
  readonly #opts: NodeDirectoryOptions;
  readonly #name: string;
  readonly #log: Logger;
  readonly #chains = new Map<string, Promise<void>>();
  #beat: NodeJS.Timeout | null = null;
  #closed = false;
  /** This node's row is written: close() withdraws it (not when open() refused a name in use). */
  #registered = false;
  /** The schema the tables are in: notifications are per database, so they name it and others' are ignored. */
  #schema = '';
  /** The copy: address -> device -> where it listens (other nodes only). */
  readonly #presence = new Map<string, Map<string, Entry>>();
  /** Liveness of the other nodes as of the last beat (or a change they sent since). */
  readonly #alive = new Map<string, boolean>();
  /** Node certificate serials found recorded and unrevoked (cleared by a revocation notice and a reload). */
  readonly #goodSerials = new Set<string>();
  readonly #listener: PgListener;
  /** The copy is complete (LISTEN up and loaded): reads are answered from it. */
  #synced = false;
  /** Notifications not applied yet, in arrival order. */
  readonly #queue: Change[] = [];
  #applying: Promise<void> | null = null;
  /** A load is running: notifications wait in the queue until it is in. */
  #loading = false;
  #loadTail: Promise<void> = Promise.resolve();

  private constructor(opts: NodeDirectoryOptions) {
    this.#opts = opts;
    this.#name = opts.name;
    this.#log = opts.log ?? silentLogger;
    this.#pool = new pg.Pool({
      connectionString: opts.url, max: POOL_SIZE, query_timeout: QUERY_TIMEOUT_MS, connectionTimeoutMillis: QUERY_TIMEOUT_MS,
      application_name: `vertex-node-${opts.name}`,
      types: { getTypeParser: ((oid: number, format?: string) => (oid === pg.types.builtins.INT8 ? Number : pg.types.getTypeParser(oid, format as 'text'))) as typeof pg.types.getTypeParser },
    });
    this.#pool.on('error', (err) => this.#log.warn({ reason: err.message }, 'node directory: idle connection lost'));
    this.#listener = new PgListener({
      url: opts.url, channel: PRESENCE_CHANNEL, applicationName: `vertex-node-${opts.name}-listen`, connectTimeoutMs: QUERY_TIMEOUT_MS,
      onNotification: (payload) => this.#onNotification(payload),
      onLost: (reason) => {
        this.#synced = false;
        if (reason) this.#log.warn({ reason }, 'node directory: presence notifications lost; reading presence from the store until they are back');
      },
      onRestored: () => void this.#reload().then(() => this.#log.info('node directory: presence notifications back')),
    });
  }

  get name(): string {
    return this.#name;
  }

  /** Whether reads are answered from memory now (false while the LISTEN connection is down). */
  get synced(): boolean {
    return this.#synced;
  }

  /**
   * Registers this node (the tables exist: the account store migrated them
   * first), forgets its presence rows from an earlier run, and loads the
   * other nodes' presence into memory. A live node of the same name
   * elsewhere is refused: two nodes must not share a name.
   */
  static async open(opts: NodeDirectoryOptions): Promise<NodeDirectory> {
    const dir = new NodeDirectory(opts);
    try {
      const { rows: schema } = await dir.#pool.query<{ s: string }>('SELECT current_schema() AS s');
      dir.#schema = schema[0]?.s ?? '';
      const { rows } = await dir.#pool.query<{ endpoint: string; alive: boolean }>(
        `SELECT endpoint, seen_at > ${DB_NOW} - $2 AS alive FROM nodes WHERE name = $1`, [opts.name, NODE_DEAD_AFTER_MS]);
      const other = rows[0];
      if (other?.alive && other.endpoint !== opts.endpoint) {
        throw vertexError('Usage', `node name "${opts.name}" is in use by a live node at ${other.endpoint}; give each node its own node.name`);
      }
      dir.#registered = true;
      await dir.#withdraw();
      await dir.#pool.query(
        `INSERT INTO nodes (name, endpoint, started_at, seen_at) VALUES ($1, $2, ${DB_NOW}, ${DB_NOW})
         ON CONFLICT (name) DO UPDATE SET endpoint = $2, started_at = ${DB_NOW}, seen_at = ${DB_NOW}`, [opts.name, opts.endpoint]);
      await dir.#heartbeat();
      await dir.#listener.start();
      await dir.#load();
    } catch (err) {
      await dir.close();
      throw err;
    }
    dir.#beat = setInterval(() => void dir.#heartbeat(), HEARTBEAT_MS);
    dir.#beat.unref();
    return dir;
  }

  /** This node's rows go, and the other nodes are told (their copies drop them). */
  async #withdraw(): Promise<void> {
    await this.#pool.query(
      `WITH gone AS (DELETE FROM presence WHERE node = $1) SELECT pg_notify('${PRESENCE_CHANNEL}', current_schema() || ' ' || $2)`,
      [this.#name, JSON.stringify(['n', this.#name])]);
  }

  /** Beats, and reads every node's liveness in the same query. */
  async #heartbeat(): Promise<void> {
    let rows: Array<{ name: string; alive: boolean }>;
    try {
      ({ rows } = await this.#pool.query<{ name: string; alive: boolean }>(
        `WITH beat AS (UPDATE nodes SET seen_at = ${DB_NOW} WHERE name = $1)
         SELECT name, seen_at > ${DB_NOW} - $2 AS alive FROM nodes WHERE name <> $1`, [this.#name, NODE_DEAD_AFTER_MS]));
    } catch (err) {
      // The copy keeps the last known liveness: a node that died meanwhile fails its forwards quickly.
      this.#log.warn({ reason: (err as Error).message }, 'node directory: heartbeat failed');
      return;
    }
    let revived = false;
    for (const { name, alive } of rows) {
      const was = this.#alive.get(name);
      this.#alive.set(name, alive);
      if (was === true && !alive) {
        this.#log.warn({ node: name }, 'node directory: a node stopped beating; its devices are offline here');
        this.#dropNode(name);
      } else if (was === false && alive) {
        revived = true;
      }
    }
    // A node that beats again still has its rows in the store (it did not restart, which would have withdrawn them): load them back.
    if (revived && this.#synced) void this.#reload();
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

  /** (address, device) listens here now. Resolves once written and announced (or the failure logged). */
  put(address: string, device: string, services: readonly string[]): Promise<void> {
    const { user, domain } = split(address);
    let payload = JSON.stringify(['p', domain, user, device, this.#name, [...services]] satisfies Change);
    if (Buffer.byteLength(payload) > MAX_NOTIFY_PAYLOAD) payload = JSON.stringify(['f', domain, user, device] satisfies Change);
    return this.#chain(`${address}/${device}`, 'presence write', () => this.#pool.query(
      `WITH w AS (
         INSERT INTO presence (domain, username, device, node, services, since) VALUES ($1, $2, $3, $4, $5, ${DB_NOW})
         ON CONFLICT (domain, username, device) DO UPDATE SET node = $4, services = $5, since = ${DB_NOW} RETURNING 1)
       SELECT pg_notify('${PRESENCE_CHANNEL}', current_schema() || ' ' || $6) FROM w`,
      [domain, user, device, this.#name, JSON.stringify([...services]), payload]));
  }

  /** (address, device) no longer listens here; a row that moved to another node stays (and nobody is told). */
  remove(address: string, device: string): Promise<void> {
    const { user, domain } = split(address);
    return this.#chain(`${address}/${device}`, 'presence delete', () => this.#pool.query(
      `WITH d AS (DELETE FROM presence WHERE domain = $1 AND username = $2 AND device = $3 AND node = $4 RETURNING 1)
       SELECT pg_notify('${PRESENCE_CHANNEL}', current_schema() || ' ' || $5) FROM d`,
      [domain, user, device, this.#name, JSON.stringify(['r', domain, user, device, this.#name] satisfies Change)]));
  }

  /**
   * The devices of `address` listening on other live nodes: from memory,
   * or from the store when the copy is not complete or `fresh` is asked
   * (a caller that found nothing in memory and wants to be sure a device
   * that came online a moment ago is not missed).
   */
  async devicesElsewhere(address: string, opts: { fresh?: boolean } = {}): Promise<RemoteDevice[]> {
    if (this.#synced && !opts.fresh) {
      this.#opts.onLookup?.('memory');
      const devices = this.#presence.get(address);
      if (!devices) return [];
      const found: RemoteDevice[] = [];
      for (const [device, e] of devices) if (this.#alive.get(e.node) !== false) found.push({ device, node: e.node, services: e.services });
      return found;
    }
    this.#opts.onLookup?.('store');
    const { user, domain } = split(address);
    const { rows } = await this.#pool.query<{ device: string; node: string; services: string }>(
      `SELECT p.device, p.node, p.services FROM presence p JOIN nodes n ON n.name = p.node
       WHERE p.domain = $1 AND p.username = $2 AND p.node <> $3 AND n.seen_at > ${DB_NOW} - $4`,
      [domain, user, this.#name, NODE_DEAD_AFTER_MS]);
    return rows.map((r) => ({ device: r.device, node: r.node, services: JSON.parse(r.services) as string[] }));
  }

  // ---- the copy ----

  #onNotification(payload: string): void {
    const space = payload.indexOf(' ');
    if (space < 0 || payload.slice(0, space) !== this.#schema) return;
    let change: Change;
    try {
      change = JSON.parse(payload.slice(space + 1)) as Change;
    } catch {
      this.#log.warn('node directory: unreadable presence notification ignored');
      return;
    }
    if (!Array.isArray(change)) return;
    this.#queue.push(change);
    this.#drain();
  }

  /** Applies queued changes in order (a read-the-row change waits for its read), unless a load is running. */
  #drain(): void {
    if (this.#applying || this.#loading) return;
    this.#applying = (async () => {
      while (this.#queue.length > 0 && !this.#loading && !this.#closed) {
        const change = this.#queue.shift() as Change;
        try {
          await this.#apply(change);
        } catch (err) {
          // The row could not be read: the copy may be wrong for this device until the next load; read the store meanwhile.
          this.#log.warn({ reason: (err as Error).message }, 'node directory: presence change not applied; reloading');
          this.#synced = false;
          void this.#reload();
        }
      }
    })().finally(() => {
      this.#applying = null;
      // Not when closed: the loop above would stop at once and come back here, for ever (microtasks only, so nothing else would run).
      if (this.#queue.length > 0 && !this.#loading && !this.#closed) this.#drain();
    });
  }

  async #apply(change: Change): Promise<void> {
    switch (change[0]) {
      case 'p': {
        const [, domain, user, device, node, services] = change;
        // A node that writes is alive, whatever its last beat said. One that was
        // found dead and did not restart (a long pause) still has rows the copy dropped: load them back.
        if (node !== this.#name && this.#alive.get(node) !== true) {
          if (this.#alive.get(node) === false) void this.#reload();
          this.#alive.set(node, true);
        }
        this.#set(`${user}@${domain}`, device, node === this.#name ? null : { node, services });
        return;
      }
      case 'r': {
        const [, domain, user, device, node] = change;
        const address = `${user}@${domain}`;
        if (this.#presence.get(address)?.get(device)?.node === node) this.#set(address, device, null);
        return;
      }
      case 'n':
        this.#dropNode(change[1]);
        return;
      case 'x':
        this.#goodSerials.delete(change[1]);
        try {
          this.#opts.onNodeCertificateRevoked?.(change[1]);
        } catch (err) {
          this.#log.error({ err }, 'node directory: node certificate revocation handler threw');
        }
        return;
      case 'f': {
        const [, domain, user, device] = change;
        const { rows } = await this.#pool.query<{ node: string; services: string }>(
          'SELECT node, services FROM presence WHERE domain = $1 AND username = $2 AND device = $3', [domain, user, device]);
        const row = rows[0];
        this.#set(`${user}@${domain}`, device, row && row.node !== this.#name ? { node: row.node, services: JSON.parse(row.services) as string[] } : null);
        return;
      }
      default:
    }
  }

  #set(address: string, device: string, entry: Entry | null): void {
    const devices = this.#presence.get(address);
    if (entry) {
      if (devices) devices.set(device, entry);
      else this.#presence.set(address, new Map([[device, entry]]));
    } else {
      if (!devices?.delete(device)) return;
      if (devices.size === 0) this.#presence.delete(address);
    }
    this.#changed(address);
  }

  #dropNode(node: string): void {
    for (const [address, devices] of this.#presence) {
      let dropped = false;
      for (const [device, e] of devices) {
        if (e.node === node) {
          devices.delete(device);
          dropped = true;
        }
      }
      if (devices.size === 0) this.#presence.delete(address);
      if (dropped) this.#changed(address);
    }
  }

  #changed(address: string): void {
    try {
      this.#opts.onPresenceChange?.(address);
    } catch (err) {
      this.#log.error({ err }, 'node directory: presence change handler threw');
    }
  }

  /** Loads the copy from the store; notifications arriving meanwhile are applied after it. Loads run one at a time. */
  #load(): Promise<void> {
    const next = this.#loadTail.catch(() => undefined).then(() => this.#loadOnce());
    this.#loadTail = next;
    return next;
  }

  async #loadOnce(): Promise<void> {
    this.#loading = true;
    try {
      await this.#applying;
      const { rows } = await this.#pool.query<{ domain: string; username: string; device: string; node: string; services: string }>(
        'SELECT domain, username, device, node, services FROM presence WHERE node <> $1', [this.#name]);
      const before = new Set(this.#presence.keys());
      this.#presence.clear();
      for (const r of rows) {
        const address = `${r.username}@${r.domain}`;
        const devices = this.#presence.get(address) ?? new Map<string, Entry>();
        devices.set(r.device, { node: r.node, services: JSON.parse(r.services) as string[] });
        this.#presence.set(address, devices);
      }
      this.#synced = this.#listener.listening;
      for (const address of new Set([...before, ...this.#presence.keys()])) this.#changed(address);
    } finally {
      this.#loading = false;
      this.#drain();
    }
  }

  async #reload(): Promise<void> {
    try {
      await this.#load();
      // Revocations sent while the notifications were lost: the node checks its connections again.
      this.#goodSerials.clear();
      this.#opts.onResync?.();
    } catch (err) {
      this.#log.warn({ reason: (err as Error).message }, 'node directory: presence not loaded; reading it from the store meanwhile');
      this.#synced = false;
      // Tried again later while notifications flow (a lost LISTEN connection reloads when it is back).
      if (!this.#closed && this.#listener.listening) setTimeout(() => void this.#reload(), RELOAD_RETRY_MS).unref();
    }
  }

  // ---- node certificates ----

  /** Records a node certificate this node issued itself, so that the other nodes admit it. */
  async recordNodeCertificate(cert: { serial: string; domain: string; notBefore: number; notAfter: number }): Promise<void> {
    await this.#pool.query(
      'INSERT INTO node_certificates (serial, domain, node, not_before, not_after) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (serial) DO NOTHING',
      [cert.serial, cert.domain, this.#name, cert.notBefore, cert.notAfter]);
    this.#goodSerials.add(cert.serial);
  }

  /**
   * Whether a node certificate of `domain` for `node` is recorded and not
   * revoked. Answered from memory once found good (a revocation notice takes
   * it out), so a pooled node connection or a relay leg costs no query.
   */
  async nodeCertificateGood(serial: string, domain: string, node: string): Promise<boolean> {
    if (this.#goodSerials.has(serial)) return true;
    const { rows } = await this.#pool.query<{ revoked: boolean }>(
      'SELECT revoked_at IS NOT NULL AS revoked FROM node_certificates WHERE serial = $1 AND domain = $2 AND node = $3', [serial, domain, node]);
    const good = rows[0] !== undefined && !rows[0].revoked;
    if (good && this.#synced) this.#goodSerials.add(serial);
    return good;
  }

  // ---- the rest ----

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

  /** The other nodes alive as of the last heartbeat (memory only: no query). */
  aliveNodes(): string[] {
    return [...this.#alive].filter(([, alive]) => alive).map(([name]) => name).sort();
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
    this.#synced = false;
    this.#queue.length = 0;
    if (this.#beat) clearInterval(this.#beat);
    await this.#listener.close();
    await Promise.all([...this.#chains.values()]);
    if (this.#registered) {
      try {
        await this.#withdraw();
        await this.#pool.query('UPDATE nodes SET seen_at = 0 WHERE name = $1', [this.#name]);
      } catch (err) {
        this.#log.warn({ reason: (err as Error).message }, 'node directory: could not withdraw this node');
      }
    }
    await this.#pool.end().catch(() => undefined);
  }
}

/**
 * Revokes a node certificate (`vertex server revoke SERIAL` on a PostgreSQL
 * store) and tells the running nodes in the same statement, so they close
 * the node-to-node connections that use it. Null when no node certificate
 * has that serial; revoking twice is not an error.
 */
export async function revokeNodeCertificate(url: string, serial: string, now = Date.now()): Promise<{ domain: string; node: string } | null> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: QUERY_TIMEOUT_MS, application_name: 'vertex-admin' });
  await client.connect();
  try {
    const { rows } = await client.query<{ domain: string; node: string }>(
      `WITH r AS (UPDATE node_certificates SET revoked_at = COALESCE(revoked_at, $2) WHERE serial = $1 RETURNING domain, node)
       SELECT domain, node, pg_notify('${PRESENCE_CHANNEL}', current_schema() || ' ' || $3) FROM r`,
      [serial, now, JSON.stringify(['x', serial] satisfies Change)]);
    return rows[0] ? { domain: rows[0].domain, node: rows[0].node } : null;
  } finally {
    await client.end().catch(() => undefined);
  }
}
