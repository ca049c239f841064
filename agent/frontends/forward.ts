/**
 * A local forward (`forwards:` in agent.yaml, `vertex forward`): a TCP
 * listener whose every connection is tunnelled to one remote service.
 *
 * The client socket is paused from accept until the tunnel exists, so
 * nothing it sends is lost or read too early; when the dial fails, the
 * client is closed (the failure is logged with its reason; a plain TCP
 * client has no other channel to hear it on).
 */
import { FRONTEND_BACKLOG, listenOn } from '../../q2q/transport/listen';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { asVertexError } from '../../q2q/errors';
import { silentLogger, type Logger } from '../../q2q/util/log';
import { joinStreams } from './join';

export interface ForwardOptions {
  listen: { host: string; port: number };
  /** `user@domain:service`, for logs. */
  to: string;
  /** Opens the tunnel for one accepted client. */
  dial: (client: { address: string }) => Promise<Duplex>;
  log?: Logger;
}

function formatAddress(host: string | undefined, port: number | undefined): string {
  if (host === undefined) return 'unknown';
  return host.includes(':') ? `[${host}]:${port ?? 0}` : `${host}:${port ?? 0}`;
}

export class ForwardListener {
  readonly to: string;
  readonly #opts: ForwardOptions;
  readonly #log: Logger;
  readonly #clients = new Set<net.Socket>();
  #server: net.Server | undefined;
  #bound: { host: string; port: number } | undefined;

  constructor(opts: ForwardOptions) {
    this.#opts = opts;
    this.to = opts.to;
    this.#log = (opts.log ?? silentLogger).child({ component: 'forward', to: opts.to });
  }

  /** The bound address once started. */
  get address(): { host: string; port: number } | undefined {
    return this.#bound;
  }

  async start(): Promise<{ host: string; port: number }> {
    if (this.#server) throw new Error('forward: already started');
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => this.#accept(s));
    const { host, port } = this.#opts.listen;
    try {
      await listenOn(server, { host, port, backlog: FRONTEND_BACKLOG });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'EADDRINUSE' ? 'address already in use' : code === 'EACCES' ? 'permission denied' : undefined;
      throw asVertexError(err, 'Usage', `forward ${formatAddress(host, port)} -> ${this.to}: listen${why ? `: ${why}` : ''}`);
    }
    server.on('error', (err) => this.#log.warn({ err }, 'forward listener error'));
    this.#server = server;
    const addr = server.address() as net.AddressInfo;
    this.#bound = { host: addr.address, port: addr.port };
    this.#log.info({ listen: formatAddress(addr.address, addr.port) }, 'forward listening');
    return this.#bound;
  }

  /**
   * Stops accepting. Tunnels already open are left alone unless
   * `closeTunnels`, so a reload that drops this forward does not cut the
   * sessions that are using it.
   */
  async stop(opts: { closeTunnels?: boolean } = {}): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    if (opts.closeTunnels) for (const c of this.#clients) c.destroy();
    // server.close() waits for open connections; those are not ours to wait for here.
    await Promise.race([closed, new Promise<void>((resolve) => setImmediate(resolve))]);
  }

  #accept(client: net.Socket): void {
    const address = formatAddress(client.remoteAddress, client.remotePort);
    const log = this.#log.child({ client: address });
    this.#clients.add(client);
    client.on('close', () => this.#clients.delete(client));
    client.on('error', (err) => log.debug({ err: err.message }, 'forward client error'));
    client.setNoDelay(true);
    let pending: Promise<Duplex>;
    try {
      pending = this.#opts.dial({ address });
    } catch (err) {
      pending = Promise.reject(err);
    }
    pending.then(
      (tunnel) => {
        if (client.destroyed) {
          tunnel.destroy();
          return;
        }
        // A stream returned before the peer's answer (ConnectOptions.early) and refused after
        // all, or aborted later, resets the client (join.ts resetAOnError).
        void joinStreams(client, tunnel, { log, resetAOnError: (tunnel as { early?: boolean }).early === true });
        client.resume();
      },
      (err: unknown) => {
        const e = asVertexError(err, 'Unreachable');
        log.info({ code: e.code, reason: e.message }, 'forward dial failed');
        client.destroy();
      },
    );
  }
}
