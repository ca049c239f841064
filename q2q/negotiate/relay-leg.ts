/**
 * A relay leg: a TLS connection to the listener's server (ALPN q2q-relay/2,
 * authenticated by our certificate) that names the inbound token. Once the
 * server has both legs it answers ok, and from then on the socket is a raw
 * pipe to the other side, over which the peers run their own TLS.
 */
import type { TLSSocket } from 'node:tls';
import { isErrorCode, vertexError } from '../errors';
import type { ServerResolver } from '../control/discovery';
import { checkServerCa, connectTls, type CaTrust } from '../control/server-connection';
import { ALPN_RELAY, RELAY_PAIRING_TIMEOUT_MS } from '../control/protocol';
import { preambleError, readPreamble, writePreamble } from '../transport/preamble';
import type { Identity } from './types';

export async function openRelayLeg(opts: {
  domain: string;
  token: string;
  identity: Identity;
  resolve: ServerResolver;
  trust: CaTrust;
  timeoutMs?: number;
}): Promise<TLSSocket> {
  const [endpoint] = await opts.resolve(opts.domain);
  if (!endpoint) throw vertexError('ServerUnavailable', `relay: no server address for ${opts.domain}`);
  const timeoutMs = opts.timeoutMs ?? RELAY_PAIRING_TIMEOUT_MS;
  const socket = await connectTls(endpoint, opts.domain, { keyPem: opts.identity.keyPem, certPem: opts.identity.certPem }, timeoutMs, ALPN_RELAY);
  try {
    opts.trust.pinDomainCa(opts.domain, checkServerCa(opts.domain, socket.getPeerX509Certificate()));
    writePreamble(socket, { token: opts.token });
    const answer = await readPreamble(socket, `relay via ${opts.domain}`, timeoutMs);
    const refused = preambleError(answer);
    if (refused) throw vertexError(isErrorCode(refused.code) ? refused.code : 'Internal', refused.description);
    return socket;
  } catch (err) {
    socket.destroy();
    throw err;
  }
}
