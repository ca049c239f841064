/**
 * One PostgreSQL connection that LISTENs on one channel and comes back after
 * it is lost. The account store (change feed) and the node directory
 * (presence) each keep one.
 *
 * NOTIFY is not queued for a listener that is away: whatever was sent while
 * the connection was down is gone. So the owner hears `onLost` when the
 * connection breaks and `onRestored` once LISTEN is up again, and catches up
 * from the tables in between (the store polls its events, the directory
 * reloads presence). Reconnects back off from 250 ms, doubling to 10 s.
 */
import pg from 'pg';

const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 10_000;
/** close() waits this long at most: end() on a connection that already broke may never settle. */
const CLOSE_WAIT_MS = 2_000;

export interface PgListenerOptions {
  url: string;
  channel: string;
  /** Shown in pg_stat_activity, so an operator can tell the connections apart. */
  applicationName: string;
  connectTimeoutMs: number;
  /** A notification on the channel ('' when it carried no payload). */
  onNotification: (payload: string) => void;
  /** The connection broke (`reason` when the driver gave one): notifications are lost until onRestored. */
  onLost: (reason: string | null) => void;
  /** LISTEN is up again after a loss; what was sent meanwhile was missed. */
  onRestored: () => void;
}

export class PgListener {
  readonly #opts: PgListenerOptions;
  #client: pg.Client | null = null;
  #timer: NodeJS.Timeout | null = null;
  #retryMs = RETRY_MIN_MS;
  #closed = false;

  constructor(opts: PgListenerOptions) {
    this.#opts = opts;
  }

  /** Whether the LISTEN connection is up now. */
  get listening(): boolean {
    return this.#client !== null;
  }

  /** The first connection. It throws when PostgreSQL cannot be reached: the owner's open() fails with it. */
  async start(): Promise<void> {
    await this.#connect();
  }

  async #connect(): Promise<void> {
    const client = new pg.Client({ connectionString: this.#opts.url, connectionTimeoutMillis: this.#opts.connectTimeoutMs, application_name: this.#opts.applicationName });
    client.on('notification', (msg) => {
      if (msg.channel === this.#opts.channel) this.#opts.onNotification(msg.payload ?? '');
    });
    client.on('error', (err) => this.#lost(client, err.message));
    client.on('end', () => this.#lost(client, null));
    try {
      await client.connect();
      await client.query(`LISTEN ${this.#opts.channel}`);
    } catch (err) {
      // Not ours yet (#lost ignores it): end it here so a half-open connection does not linger.
      client.removeAllListeners('end');
      await client.end().catch(() => undefined);
      throw err;
    }
    if (this.#closed) {
      client.removeAllListeners('end');
      await client.end().catch(() => undefined);
      return;
    }
    this.#client = client;
    this.#retryMs = RETRY_MIN_MS;
  }

  #lost(dead: pg.Client, reason: string | null): void {
    if (this.#closed || this.#client !== dead) return;
    this.#client = null;
    dead.removeAllListeners('end');
    dead.end().catch(() => undefined);
    this.#opts.onLost(reason);
    this.#retryLater();
  }

  #retryLater(): void {
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (this.#closed) return;
      this.#connect().then(
        () => {
          if (this.#client) this.#opts.onRestored();
        },
        () => {
          this.#retryMs = Math.min(this.#retryMs * 2, RETRY_MAX_MS);
          this.#retryLater();
        },
      );
    }, this.#retryMs);
    this.#timer.unref();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    const client = this.#client;
    this.#client = null;
    if (!client) return;
    client.removeAllListeners('end');
    await Promise.race([client.end().catch(() => undefined), new Promise((resolve) => setTimeout(resolve, CLOSE_WAIT_MS).unref())]);
  }
}
