/**
 * The operator's HTTP endpoint, for the server and the agent alike (config
 * `metrics: { listen }`; off unless configured, loopback unless told
 * otherwise):
 *
 * - `GET /metrics`: Prometheus text exposition format;
 * - `GET /health`: 200 `ok` once the process can serve (the server: its
 *   account store answers), else 503 with the reason, for load balancers;
 * - `GET /live`: 200 while the process runs.
 *
 * Only GET and HEAD, no request bodies, nothing else served.
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from './log';
import { silentLogger } from './log';

export interface MetricsSource {
  /** The exposition text and its content type. */
  metrics(): Promise<{ contentType: string; body: string }>;
  /** null when ready, else why not (one line). */
  health(): Promise<string | null>;
}

/** A health check that takes longer than this counts as failed. */
export const HEALTH_TIMEOUT_MS = 2_000;

async function checkHealth(source: MetricsSource): Promise<string | null> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(`no answer within ${HEALTH_TIMEOUT_MS} ms`), HEALTH_TIMEOUT_MS);
  });
  try {
    return await Promise.race([source.health().catch((err: Error) => err.message || String(err)), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export class MetricsHttpServer {
  readonly #server: http.Server;
  readonly #log: Logger;

  constructor(source: MetricsSource, opts: { log?: Logger } = {}) {
    this.#log = opts.log ?? silentLogger;
    this.#server = http.createServer((req, res) => {
      void this.#serve(source, req, res);
    });
    this.#server.headersTimeout = 10_000;
    this.#server.requestTimeout = 10_000;
    this.#server.keepAliveTimeout = 5_000;
  }

  async #serve(source: MetricsSource, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const send = (status: number, type: string, body: string): void => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    try {
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'text/plain', 'method not allowed\n');
      const url = (req.url ?? '/').split('?')[0];
      if (url === '/metrics') {
        const { contentType, body } = await source.metrics();
        return send(200, contentType, body);
      }
      if (url === '/health') {
        const problem = await checkHealth(source);
        return problem === null ? send(200, 'text/plain', 'ok\n') : send(503, 'text/plain', `not ready: ${problem}\n`);
      }
      if (url === '/live') return send(200, 'text/plain', 'ok\n');
      return send(404, 'text/plain', 'not found; try /metrics or /health\n');
    } catch (err) {
      this.#log.warn({ reason: (err as Error).message }, 'metrics request failed');
      if (!res.headersSent) send(500, 'text/plain', 'internal error\n');
      else res.destroy();
    }
  }

  async listen(host: string, port: number): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host, port }, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    return this.#server.address() as AddressInfo;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
