/**
 * A relay leg: a TLS connection to the listener's server (ALPN q2q-relay/2,
 * authenticated by our certificate) that names the inbound token. Once the
 * server has both legs it answers ok, and from then on the socket is a raw
 * pipe to the other side, over which the peers run their own TLS.
 */
import { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { isErrorCode, vertexError } from '../errors';
import type { ServerResolver } from '../control/discovery';
import { checkServerCa, connectTls, type CaTrust } from '../control/server-connection';
import { ALPN_RELAY, RELAY_PAIRING_TIMEOUT_MS } from '../control/protocol';
import { preambleError, readPreamble, writePreamble } from '../transport/preamble';
import type { Identity } from './types';

/** How long an ended leg may keep flushing after the stream over it was destroyed. */
export const LEG_FLUSH_LINGER_MS = 10_000;

/**
 * The leg as a plain Duplex for peer TLS to run over. Handed a TLSSocket,
 * node:tls would stack the peer TLS on the leg's own native handle, and
 * destroying the peer TLS (which it does right after both close_notify
 * alerts) would tear that handle down before the leg flushed its queued
 * bytes: the tail of a transfer was lost. Through this Duplex, a destroy after
 * a clean end waits for the leg to finish writing (bounded by
 * LEG_FLUSH_LINGER_MS); back-pressure and half-close pass through.
 */
export class RelayLegStream extends Duplex {
  readonly #leg: TLSSocket;

  constructor(leg: TLSSocket) {
    super({ allowHalfOpen: true });
    this.#leg = leg;
    leg.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) leg.pause();
    });
    let ended = false;
    leg.once('end', () => {
      ended = true;
      this.push(null);
    });
    leg.once('error', (err) => this.destroy(err));
    // After a clean end the bytes already pushed must still be read: only a leg
    // that closed without ending cuts the stream off.
    leg.once('close', () => {
      if (!ended && !this.destroyed) this.destroy(vertexError('ConnectionLost', 'relay leg closed before it ended'));
    });
  }

  override _read(): void {
    this.#leg.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#leg.write(chunk, callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.#leg.end(callback);
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const leg = this.#leg;
    if (err || leg.destroyed) {
      leg.destroy();
    } else {
      // A clean close: finish writing, keep reading until the far side ends too, and
      // let the socket close by itself. Closing with unread bytes would send a TCP RST,
      // which makes the far side's kernel throw away what it has not yet read.
      leg.removeAllListeners('data');
      leg.on('data', () => undefined);
      leg.resume();
      if (!leg.writableEnded) leg.end();
      setTimeout(() => leg.destroy(), LEG_FLUSH_LINGER_MS).unref();
    }
    callback(err);
  }
}

export async function openRelayLeg(opts: {
  domain: string;
  token: string;
  identity: Identity;
  resolve: ServerResolver;
  trust: CaTrust;
  timeoutMs?: number;
}): Promise<RelayLegStream> {
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
    return new RelayLegStream(socket);
  } catch (err) {
    socket.destroy();
    throw err;
  }
}
