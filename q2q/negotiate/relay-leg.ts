/**
 * An agent's relay leg: a plain TCP connection to the listener's server,
 * opened with a request signed with our certificate's key and proving the
 * inbound token (q2q/transport/relay-leg.ts). Once the server has both legs
 * it answers ok, and from then on the socket is a raw pipe to the other
 * side, over which the peers run their own TLS: the same net.Socket the tcp
 * route yields, so peer TLS runs natively on it and aborts are carried the
 * same way (q2q/transport/tcp-close.ts).
 */
import type * as net from 'node:net';
import { isVertexError, vertexError } from '../errors';
import type { ServerResolver } from '../control/discovery';
import { RELAY_PAIRING_TIMEOUT_MS } from '../control/protocol';
import { dialRelayLeg, legRequest } from '../transport/relay-leg';
import type { Identity } from './types';

export async function openRelayLeg(opts: {
  domain: string;
  token: string;
  identity: Identity;
  resolve: ServerResolver;
  timeoutMs?: number;
}): Promise<net.Socket> {
  const endpoints = await opts.resolve(opts.domain);
  if (endpoints.length === 0) throw vertexError('ServerUnavailable', `relay: no server address for ${opts.domain}`);
  const timeoutMs = opts.timeoutMs ?? RELAY_PAIRING_TIMEOUT_MS;
  const request = legRequest(opts.identity, opts.domain, opts.token);
  let lastError: unknown;
  // A domain served by several nodes lists them all: any node pairs the legs (server/node-mesh.ts),
  // so one that cannot be reached is skipped. A server's refusal is its answer.
  for (const endpoint of endpoints) {
    try {
      const { socket } = await dialRelayLeg(endpoint, request, {
        what: `relay via ${opts.domain} server at ${endpoint.host}:${endpoint.port}`,
        timeoutMs,
      });
      return socket;
    } catch (err) {
      lastError = err;
      if (!isVertexError(err, 'ServerUnavailable')) break;
    }
  }
  throw lastError;
}
