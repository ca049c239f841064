/**
 * Authenticated control connections to listeners' servers, one per domain,
 * reused across connects (a second connection to the same peer does not pay
 * for another TLS handshake). Concurrent requests for a domain share one
 * connection attempt.
 */
import type { ServerResolver } from '../control/discovery';
import { openServerConnection, type CaTrust, type ServerConnection } from '../control/server-connection';
import type { Logger } from '../util/log';
import type { Identity } from './types';

export class ServerPool {
  readonly #connections = new Map<string, Promise<ServerConnection>>();

  constructor(
    readonly identity: Identity,
    readonly resolve: ServerResolver,
    readonly trust: CaTrust,
    readonly log: Logger,
  ) {}

  get(domain: string): Promise<ServerConnection> {
    const existing = this.#connections.get(domain);
    if (existing) return existing;
    const pending = openServerConnection({
      domain,
      resolve: this.resolve,
      trust: this.trust,
      credentials: { keyPem: this.identity.keyPem, certPem: this.identity.certPem },
      log: this.log,
    });
    this.#connections.set(domain, pending);
    pending.then(
      (connection) => connection.socket.once('close', () => {
        if (this.#connections.get(domain) === pending) this.#connections.delete(domain);
      }),
      () => this.#connections.delete(domain),
    );
    return pending;
  }

  /** Forgets a connection that failed a call, so the next one reconnects. */
  discard(domain: string, connection: ServerConnection): void {
    void this.#connections.get(domain)?.then((current) => {
      if (current === connection) {
        this.#connections.delete(domain);
        connection.close();
      }
    });
  }

  closeAll(): void {
    for (const pending of this.#connections.values()) pending.then((c) => c.close(), () => undefined);
    this.#connections.clear();
  }
}
