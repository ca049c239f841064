/**
 * The identity layer: keys, domain CAs, certificate requests, user
 * certificates, their checks, and CA pinning (known_domains). Pure logic
 * over PEM strings; file I/O belongs to the agent and the server.
 */
export { generateKeyPair, importSigningKeys, keyMatchesCertificate, parsePrivateKey } from './keys';
export type { KeyAlgorithm, SigningAlgorithm, SigningKeys } from './keys';
export {
  CLOCK_SKEW_MS,
  DEFAULT_CA_LIFETIME_DAYS,
  Q2Q_URI_PREFIX,
  SERIAL_BYTES,
  certificateFingerprint,
  checkDomainCaCertificate,
  createCsr,
  createDomainCa,
  describeCertificate,
  fingerprintOfDer,
  issueUserCertificate,
  normaliseSerial,
  verifyUserCertificate,
} from './certificates';
export type {
  CertificateDescription,
  IssuedCertificate,
  IssueUserCertificateOptions,
  VerifyUserCertificateOptions,
} from './certificates';
export { caChangedMessage, checkPinnedCa, formatKnownDomainLine, formatKnownDomains, parseKnownDomains } from './known-domains';
export type { PinResult } from './known-domains';
export { domainOf, normaliseAddress, normaliseDomain } from './names';
export { identitySecureContext } from './secure-context';
export type { TlsCredentials } from './secure-context';
