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
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { vertexError } from '../errors';
import { certificateFingerprint } from '../identity';
import type { Identity } from './types';

export function tlsClientOver(raw: Duplex, identity: Identity, expectedPeerCertPem: string, what: string, timeoutMs: number): Promise<tls.TLSSocket> {
  const expected = certificateFingerprint(expectedPeerCertPem);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      socket: raw,
      key: identity.keyPem,
      cert: identity.certPem,
      minVersion: 'TLSv1.3',
      // Identity is checked below by exact certificate, not by hostname or public roots.
      rejectUnauthorized: false,
    });
    const timer = setTimeout(() => fail(vertexError('Timeout', `${what}: peer TLS handshake took longer than ${timeoutMs} ms`)), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      raw.destroy();
      reject(err);
    };
    socket.once('secureConnect', () => {
      const peer = socket.getPeerX509Certificate();
      if (!peer || certificateFingerprint(peer.toString()) !== expected) {
        return fail(vertexError('CertificateInvalid', `${what}: the peer presented a certificate other than the one its server vouched for`));
      }
      clearTimeout(timer);
      socket.removeListener('error', fail);
      resolve(socket);
    });
    socket.once('error', fail);
  });
}

export function tlsServerOver(raw: Duplex, identity: Identity, what: string, timeoutMs: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = new tls.TLSSocket(raw as never, {
      isServer: true,
      secureContext: tls.createSecureContext({ key: identity.keyPem, cert: identity.certPem, minVersion: 'TLSv1.3' }),
      requestCert: true,
      rejectUnauthorized: false,
    });
    const timer = setTimeout(() => fail(vertexError('Timeout', `${what}: peer TLS handshake took longer than ${timeoutMs} ms`)), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      raw.destroy();
      reject(err);
    };
    socket.once('secure', () => {
      clearTimeout(timer);
      socket.removeListener('error', fail);
      resolve(socket);
    });
    socket.once('error', fail);
  });
}
