/**
 * The one place that loads @peculiar/x509. Its ASN.1 schema decorators need
 * reflect-metadata loaded first, and it signs through WebCrypto, so Node's
 * provider is installed here once. Every identity module imports x509 from
 * this file, never from the package directly.
 */
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto);

export { x509 };

/** Extension OIDs (RFC 5280 §4.2.1). Read extensions by OID string: class lookups are unreliable across copies of the library. */
export const OID = {
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  commonName: '2.5.4.3',
} as const;
