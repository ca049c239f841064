/**
 * Peer TLS: mutual TLS 1.3 end to end between the two agents, on whatever
 * raw channel the route produced (a TCP socket, a relay leg, a PTCP stream).
 *
 * The caller is the TLS client. It accepts only the exact certificate the
 * listener's server vouched for in the inbound answer (already checked
 * against the listener's pinned domain CA). The listener is the TLS server;
 * it accepts only the exact certificate its server forwarded with the
 * inbound request, bound to the token the caller then claims inside TLS.
 */
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { vertexError } from '../errors';
import { certificateFingerprint, fingerprintOfDer, identitySecureContext } from '../identity';
import type { Identity } from './types';

/**
 * A raw channel as node:tls should see it. Over a stream that is not a
 * net.Socket, node:tls wraps it in a JSStreamSocket, which destroys the TLS
 * socket as soon as the wrapped stream emits 'close' (node
 * lib/internal/js_stream_socket.js) and so throws away decrypted bytes the
 * application has not read yet: a slow reader lost the last 16 KiB over ptcp
 * and relay. This Duplex passes bytes, back-pressure, half-close and errors
 * through, and closes only when TLS destroys it, after the reader is done.
 */
export class HeldOpen extends Duplex {
  readonly #raw: Duplex;
  #rawEnded = false;

  constructor(raw: Duplex) {
    super({ allowHalfOpen: true, autoDestroy: false });
    this.#raw = raw;
    raw.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) raw.pause();
    });
    raw.once('end', () => {
      this.#rawEnded = true;
      this.push(null);
    });
    raw.once('error', (err) => this.destroy(err));
    raw.once('close', () => {
      if (!this.#rawEnded && !this.destroyed) this.destroy(new Error('the channel closed before its end'));
    });
  }

  override _read(): void {
    this.#raw.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#raw.write(chunk, callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (this.#raw.destroyed) callback();
    else this.#raw.end(callback);
  }

  // _read/_write/_final/_destroy are the documented methods a Duplex implements
  // (node's "API for stream implementers"), not node internals.
  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    if (err) this.#raw.destroy(err);
    else this.#raw.destroy();
    callback(err);
  }
}

const forTls = (raw: Duplex): Duplex => (raw instanceof net.Socket ? raw : new HeldOpen(raw));

/**
 * Waits for `socket` (wrapping `raw`) to finish its handshake, emitted as
 * `event`, and for `check` to accept it; on timeout or error both are destroyed.
 */
function handshake(socket: tls.TLSSocket, raw: Duplex, event: 'secureConnect' | 'secure', what: string, timeoutMs: number, check: () => Error | null): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      raw.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(vertexError('Timeout', `${what}: peer TLS handshake took longer than ${timeoutMs} ms`)), timeoutMs);
    // A peer that refuses our certificate closes without a TLS alert reaching us as an error; without this the wait ran to the timeout.
    const closedEarly = () => fail(vertexError('ConnectionLost', `${what}: the channel closed during the peer TLS handshake`));
    socket.once(event, () => {
      const refused = check();
      if (refused) return fail(refused);
      clearTimeout(timer);
      socket.removeListener('error', fail);
      socket.removeListener('close', closedEarly);
      resolve(socket);
    });
    socket.once('error', fail);
    socket.once('close', closedEarly);
  });
}

/** One secure context per identity, shared by every peer connection (see identity/secure-context.ts). */
export const peerSecureContext = identitySecureContext;

export function tlsClientOver(raw: Duplex, identity: Identity, expectedPeerCertPem: string, what: string, timeoutMs: number): Promise<tls.TLSSocket> {
  const expected = certificateFingerprint(expectedPeerCertPem);
  const socket = tls.connect({
    socket: forTls(raw),
    secureContext: peerSecureContext(identity),
    // Identity is checked below by exact certificate, not by hostname or public roots.
    rejectUnauthorized: false,
  });
  return handshake(socket, raw, 'secureConnect', what, timeoutMs, () => {
    const peer = socket.getPeerX509Certificate();
    return peer && fingerprintOfDer(peer.raw) === expected
      ? null
      : vertexError('CertificateInvalid', `${what}: the peer presented a certificate other than the one its server vouched for`);
  });
}

export function tlsServerOver(raw: Duplex, identity: Identity, what: string, timeoutMs: number): Promise<tls.TLSSocket> {
  const socket = new tls.TLSSocket(forTls(raw) as never, {
    isServer: true,
    secureContext: peerSecureContext(identity),
    requestCert: true,
    rejectUnauthorized: false,
  });
  // Which certificate is acceptable depends on the token claimed next (node.ts).
  return handshake(socket, raw, 'secure', what, timeoutMs, () => null);
}
