import * as tls from 'node:tls';

/** A key and the certificate that goes with it, PEM. */
export interface TlsCredentials {
  keyPem: string;
  certPem: string;
}

/**
 * Secure contexts by identity certificate, least recently used first. A
 * context holds the parsed key and certificate: building one costs ~4 ms of
 * CPU and ~24 KB of native memory per connection, and every connection made
 * with an identity (peer TLS, control connections, relay legs) can share one. Keyed by the certificate PEM, so that a
 * renewed identity (Q2QNode.setIdentity) gets a new context and the old one
 * ages out; the key PEM is compared too, so a key swapped under the same
 * certificate is never served from the old context.
 */
const SECURE_CONTEXT_ENTRIES = 8;
const secureContexts = new Map<string, { keyPem: string; context: tls.SecureContext }>();

export function identitySecureContext(identity: TlsCredentials): tls.SecureContext {
  const cached = secureContexts.get(identity.certPem);
  if (cached && cached.keyPem === identity.keyPem) {
    secureContexts.delete(identity.certPem);
    secureContexts.set(identity.certPem, cached);
    return cached.context;
  }
  const context = tls.createSecureContext({ key: identity.keyPem, cert: identity.certPem, minVersion: 'TLSv1.3' });
  secureContexts.delete(identity.certPem);
  secureContexts.set(identity.certPem, { keyPem: identity.keyPem, context });
  if (secureContexts.size > SECURE_CONTEXT_ENTRIES) secureContexts.delete(secureContexts.keys().next().value as string);
  return context;
}
