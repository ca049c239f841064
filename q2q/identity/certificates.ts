/**
 * Domain CAs, certificate requests, user certificates, and their checks
 * (ARCHITECTURE.md "Certificates").
 *
 * - A domain CA is self-signed, CN=<domain>, basicConstraints CA (critical,
 *   path length 0: it signs users only), keyUsage keyCertSign + cRLSign.
 * - A user certificate is v3, CN=<user@domain>, SAN URI:q2q:<user@domain>,
 *   EKU clientAuth + serverAuth, keyUsage digitalSignature, CA:false, SKI and
 *   AKI, a random positive 128-bit serial, and a lifetime of days.
 *
 * Building and signing go through @peculiar/x509 on WebCrypto (async).
 * Reading and verifying are synchronous, so that the TLS layer can call them
 * inside a handshake, and cheap, because every peer and server handshake
 * does: node:crypto's X509Certificate (OpenSSL) parses and checks
 * signatures, issuers and dates, and der.ts reads the serial, names and the
 * two extensions we judge by. @peculiar/x509's ASN.1 schema parser cost
 * ~7 ms of CPU per certificate, which capped the server at ~50 sessions/s.
 */
import * as crypto from 'node:crypto';
import { VertexError } from '../errors';
import { readCertificateFields, type CertificateFields } from './der';
import { generateKeyPair, importSigningKeys, keyAlgorithmOf, keyMatchesCertificate } from './keys';
import { domainOf, normaliseAddress, normaliseDomain } from './names';
import { OID, x509 } from './x509';

/** Tolerated clock difference between the issuer and the peers that check its certificates. */
export const CLOCK_SKEW_MS = 5 * 60 * 1000;
export const DEFAULT_CA_LIFETIME_DAYS = 3650;
/** RFC 5280 §4.1.2.2 allows 20 octets; 16 random octets leave room for the sign byte. */
export const SERIAL_BYTES = 16;
/** The SAN URI scheme that names a Q2Q address. */
export const Q2Q_URI_PREFIX = 'q2q:';

const DAY_MS = 24 * 60 * 60 * 1000;

export interface CertificateDescription {
  subjectCn: string;
  issuerCn: string;
  /** From the SAN URI `q2q:user@domain`, or null when there is none. */
  q2qAddress: string | null;
  /** Lowercase hex without leading zeros. */
  serial: string;
  notBefore: Date;
  notAfter: Date;
  /** `SHA256:` + unpadded base64 of the DER, as ssh prints key fingerprints. */
  fingerprint: string;
  isCa: boolean;
}

export interface IssuedCertificate {
  certPem: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export interface IssueUserCertificateOptions {
  caCertPem: string;
  caKeyPem: string;
  csrPem: string;
  expectedAddress: string;
  lifetimeMs: number;
  now?: Date;
  /** Serial source, for tests; defaults to crypto.randomBytes. */
  randomBytes?: (size: number) => Buffer;
}

export interface VerifyUserCertificateOptions {
  expectedAddress?: string;
  now?: Date;
}

/** Creates a self-signed domain CA with a fresh P-256 key. */
export async function createDomainCa(
  domain: string,
  opts: { lifetimeDays?: number; now?: Date } = {},
): Promise<{ certPem: string; keyPem: string }> {
  const name = normaliseDomain(domain, 'create domain ca');
  const lifetimeDays = opts.lifetimeDays ?? DEFAULT_CA_LIFETIME_DAYS;
  if (!Number.isFinite(lifetimeDays) || lifetimeDays <= 0) {
    throw new VertexError('BadRequest', `create domain ca ${name}: lifetime ${lifetimeDays} days must be positive`);
  }
  const { privateKeyPem: privateKey } = await generateKeyPair();
  const signer = await importSigningKeys(privateKey, `create domain ca ${name}`);
  const now = (opts.now ?? new Date()).getTime();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerialHex(crypto.randomBytes),
    name: [{ [OID.commonName]: [name] }],
    notBefore: wholeSecond(now - CLOCK_SKEW_MS),
    notAfter: wholeSecond(now + lifetimeDays * DAY_MS),
    keys: signer.keys,
    signingAlgorithm: signer.signingAlgorithm,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(signer.keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: privateKey };
}

/** A CSR for `address`: subject exactly CN=address, SAN URI:q2q:address, signed by the key. */
export async function createCsr(address: string, privateKeyPem: string): Promise<string> {
  const name = normaliseAddress(address, 'create certificate request');
  const signer = await importSigningKeys(privateKeyPem, `create certificate request for ${name}`);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ [OID.commonName]: [name] }],
    keys: signer.keys,
    signingAlgorithm: signer.signingAlgorithm,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: Q2Q_URI_PREFIX + name }])],
  });
  return csr.toString('pem');
}

/**
 * Checks a CSR against the account it claims and signs a user certificate
 * for its key. Only the CSR's key is taken from it; every other field of the
 * certificate is ours, so a CSR cannot smuggle in extensions.
 */
export async function issueUserCertificate(opts: IssueUserCertificateOptions): Promise<IssuedCertificate> {
  const address = normaliseAddress(opts.expectedAddress, 'issue certificate');
  const context = `issue certificate for ${address}`;
  if (!Number.isFinite(opts.lifetimeMs) || opts.lifetimeMs <= 0) {
    throw new VertexError('BadRequest', `${context}: lifetime ${opts.lifetimeMs} ms must be positive`);
  }
  const csr = await checkCsr(opts.csrPem, address, context);

  const caRead = readCertificate(opts.caCertPem, `${context}: ca certificate`);
  if (!keyMatchesCertificate(opts.caKeyPem, opts.caCertPem)) {
    throw new VertexError('CertificateInvalid', `${context}: the ca key does not match the ca certificate`);
  }
  if (!caRead.fields.basicConstraintsCa) {
    throw new VertexError('CertificateInvalid', `${context}: the issuer certificate ${subjectText(caRead.x509)} is not a ca`);
  }
  const caDomain = (caRead.fields.subjectCommonNames[0] ?? '').toLowerCase();
  if (caDomain !== domainOf(address)) {
    throw new VertexError('BadCertificateRequest', `${context}: the ca of ${caDomain || subjectText(caRead.x509)} cannot issue for another domain`);
  }
  // Signing needs the CA as @peculiar/x509 objects: its subject name, key identifier and public key.
  const caCert = parsePeculiar(opts.caCertPem, `${context}: ca certificate`);
  const signer = await importSigningKeys(opts.caKeyPem, `${context}: ca key`);

  const now = (opts.now ?? new Date()).getTime();
  const serialHex = randomSerialHex(opts.randomBytes ?? crypto.randomBytes);
  const caKeyId = caCert.getExtension<x509.SubjectKeyIdentifierExtension>(OID.subjectKeyIdentifier);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialHex,
    subject: [{ [OID.commonName]: [address] }],
    issuer: caCert.subjectName,
    notBefore: wholeSecond(now - CLOCK_SKEW_MS),
    notAfter: wholeSecond(now + opts.lifetimeMs),
    publicKey: csr.publicKey,
    signingKey: signer.keys.privateKey,
    signingAlgorithm: signer.signingAlgorithm,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth, x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: Q2Q_URI_PREFIX + address }]),
      await x509.SubjectKeyIdentifierExtension.create(csr.publicKey),
      caKeyId
        ? new x509.AuthorityKeyIdentifierExtension(caKeyId.keyId)
        : await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), serial: normaliseSerial(cert.serialNumber), notBefore: cert.notBefore, notAfter: cert.notAfter };
}

/** Reads the fields the rest of Vertex cares about. Unreadable input throws CertificateInvalid. */
export function describeCertificate(certPem: string): CertificateDescription {
  const cert = readCertificate(certPem, 'describe certificate');
  return {
    subjectCn: cert.fields.subjectCommonNames[0] ?? '',
    issuerCn: cert.fields.issuerCommonNames[0] ?? '',
    q2qAddress: q2qAddressOf(cert.fields),
    serial: normaliseSerial(cert.fields.serialHex),
    // Copies: Dates are mutable and the read certificate is shared.
    notBefore: new Date(cert.notBefore.getTime()),
    notAfter: new Date(cert.notAfter.getTime()),
    fingerprint: fingerprintOfDer(cert.x509.raw),
    isCa: cert.fields.basicConstraintsCa,
  };
}

/** Needs only OpenSSL's parse, not der.ts's fields: any certificate OpenSSL reads has a fingerprint. */
export function certificateFingerprint(certPem: string): string {
  const cached = readCache.get(certPem);
  return fingerprintOfDer(cached ? cached.x509.raw : parseX509(certPem, 'fingerprint certificate').raw);
}

/** `SHA256:` + unpadded base64, the way `ssh-keygen -l` prints fingerprints. */
export function fingerprintOfDer(der: Uint8Array): string {
  return 'SHA256:' + crypto.createHash('sha256').update(der).digest('base64').replace(/=+$/, '');
}

/**
 * Throws CertificateInvalid unless `certPem` is a current, non-CA user
 * certificate signed by `caCertPem` that names a Q2Q address in the CA's
 * domain (and the expected address, when given).
 */
export function verifyUserCertificate(certPem: string, caCertPem: string, opts: VerifyUserCertificateOptions = {}): void {
  const cert = readCertificate(certPem, 'verify certificate');
  const ca = readCertificate(caCertPem, 'verify certificate: ca certificate');
  const who = q2qAddressOf(cert.fields);
  const context = `verify certificate ${who ?? subjectText(cert.x509)}`;
  const caName = ca.fields.subjectCommonNames[0] ?? subjectText(ca.x509);

  if (!ca.fields.basicConstraintsCa) throw new VertexError('CertificateInvalid', `${context}: issuer ${caName} is not a ca certificate`);
  // checkIssued matches names and key identifiers and, in OpenSSL 3, refuses an issuer whose keyUsage lacks keyCertSign.
  if (!cert.x509.checkIssued(ca.x509) || !cert.x509.verify(ca.x509.publicKey)) {
    throw new VertexError('CertificateInvalid', `${context}: not signed by the ca of ${caName}`);
  }
  const now = opts.now ?? new Date();
  if (now.getTime() < cert.notBefore.getTime()) {
    throw new VertexError('CertificateInvalid', `${context}: not valid before ${cert.notBefore.toISOString()}`);
  }
  if (now.getTime() > cert.notAfter.getTime()) {
    throw new VertexError('CertificateInvalid', `${context}: expired at ${cert.notAfter.toISOString()}`);
  }
  if (cert.fields.basicConstraintsCa) throw new VertexError('CertificateInvalid', `${context}: is a ca certificate, not a user certificate`);
  if (who === null) throw new VertexError('CertificateInvalid', `${context}: has no q2q: URI in its subject alternative name`);
  // A domain CA vouches for its own users only, whatever else it signed.
  if (domainOf(who.toLowerCase()) !== caName.toLowerCase()) {
    throw new VertexError('CertificateInvalid', `${context}: the ca of ${caName} cannot vouch for an address in another domain`);
  }
  if (opts.expectedAddress !== undefined && who.toLowerCase() !== opts.expectedAddress.toLowerCase()) {
    throw new VertexError('CertificateInvalid', `${context}: names ${who}, expected ${opts.expectedAddress.toLowerCase()}`);
  }
}

/**
 * Throws CertificateInvalid unless `caCertPem` is a self-signed CA certificate
 * whose CN is `domain`: the only shape a domain's pinnable root may have.
 */
export function checkDomainCaCertificate(domain: string, caCertPem: string): void {
  const name = domain.toLowerCase();
  const context = `check ca certificate for ${name}`;
  const ca = readCertificate(caCertPem, context);
  if (!ca.x509.checkIssued(ca.x509) || !ca.x509.verify(ca.x509.publicKey)) {
    throw new VertexError('CertificateInvalid', `${context}: not self-signed`);
  }
  if (!ca.fields.basicConstraintsCa) throw new VertexError('CertificateInvalid', `${context}: not a ca (basicConstraints CA is missing)`);
  const cns = ca.fields.subjectCommonNames;
  if (cns.length !== 1 || cns[0]?.toLowerCase() !== name) {
    throw new VertexError('CertificateInvalid', `${context}: its subject is ${subjectText(ca.x509)}, expected CN=${name}`);
  }
}

async function checkCsr(csrPem: string, address: string, context: string): Promise<x509.Pkcs10CertificateRequest> {
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch (err) {
    throw new VertexError('BadCertificateRequest', `${context}: not a readable PEM certificate request`, { cause: err });
  }
  let signatureOk: boolean;
  try {
    signatureOk = await csr.verify();
  } catch (err) {
    throw new VertexError('BadCertificateRequest', `${context}: the request signature cannot be checked`, { cause: err });
  }
  if (!signatureOk) throw new VertexError('BadCertificateRequest', `${context}: the request signature does not verify`);

  try {
    keyAlgorithmOf(crypto.createPublicKey({ key: Buffer.from(csr.publicKey.rawData), format: 'der', type: 'spki' }), context);
  } catch (err) {
    const detail = err instanceof VertexError ? err.message : `${context}: unreadable public key`;
    throw new VertexError('BadCertificateRequest', detail, { cause: err });
  }

  const rdns = csr.subjectName.toJSON();
  const cns = csr.subjectName.getField(OID.commonName);
  const onlyCn = rdns.length === 1 && Object.keys(rdns[0] ?? {}).length === 1 && cns.length === 1;
  if (!onlyCn || cns[0] !== address) {
    throw new VertexError('BadCertificateRequest', `${context}: the request subject is ${JSON.stringify(csr.subject)}, expected exactly CN=${address}`);
  }

  const sans = csr.extensions.filter((e) => e.type === OID.subjectAltName);
  const expectedUri = Q2Q_URI_PREFIX + address;
  if (sans.length !== 1) {
    throw new VertexError('BadCertificateRequest', `${context}: the request must carry one subjectAltName with URI:${expectedUri}`);
  }
  const names = new x509.SubjectAlternativeNameExtension(sans[0]!.rawData).names.items;
  if (names.length !== 1 || names[0]?.type !== 'url' || names[0].value !== expectedUri) {
    const got = names.map((n) => `${n.type}:${n.value}`).join(', ');
    throw new VertexError('BadCertificateRequest', `${context}: the request subjectAltName is [${got}], expected exactly URI:${expectedUri}`);
  }
  return csr;
}

/** The address of the first SAN URI `q2q:…` (scheme in any case), as written after the scheme. */
function q2qAddressOf(fields: CertificateFields): string | null {
  const uri = fields.sanUris.find((u) => u.toLowerCase().startsWith(Q2Q_URI_PREFIX));
  return uri === undefined ? null : uri.slice(Q2Q_URI_PREFIX.length);
}

/** The subject as one line, for messages only: OpenSSL prints one attribute per line. */
function subjectText(cert: crypto.X509Certificate): string {
  return cert.subject.split('\n').join(', ');
}

/** A certificate as OpenSSL parsed it, with the fields der.ts reads and its dates as Dates. Never mutated once made. */
interface ReadCertificate {
  readonly x509: crypto.X509Certificate;
  readonly fields: Readonly<CertificateFields>;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/**
 * Certificates read recently, by PEM, least recently used first. The same few
 * come back on every handshake (the domain CA, a peer's certificate checked
 * twice, a server session's certificate described then verified), and
 * X509Certificate's constructor alone costs ~150 µs on Node 20. Only
 * parsing is remembered: every check (signature, dates, names) runs on each
 * call, so a cached entry never vouches for anything by itself.
 */
const READ_CACHE_ENTRIES = 128;
const readCache = new Map<string, ReadCertificate>();

function readCertificate(pem: string, context: string): ReadCertificate {
  const cached = readCache.get(pem);
  if (cached) {
    readCache.delete(pem);
    readCache.set(pem, cached);
    return cached;
  }
  const cert = parseX509(pem, context);
  let fields: CertificateFields;
  try {
    fields = readCertificateFields(cert.raw);
  } catch (err) {
    // OpenSSL accepted it but the fields we judge by are unreadable: the sender's error, never ours.
    const reason = err instanceof Error ? err.message : String(err);
    throw new VertexError('CertificateInvalid', `${context}: ${reason}`, { cause: err });
  }
  Object.freeze(fields.issuerCommonNames);
  Object.freeze(fields.subjectCommonNames);
  Object.freeze(fields.sanUris);
  const read: ReadCertificate = Object.freeze({
    x509: cert,
    fields: Object.freeze(fields),
    notBefore: certificateDate(cert.validFrom, context),
    notAfter: certificateDate(cert.validTo, context),
  });
  readCache.set(pem, read);
  if (readCache.size > READ_CACHE_ENTRIES) readCache.delete(readCache.keys().next().value as string);
  return read;
}

function parseX509(pem: string, context: string): crypto.X509Certificate {
  try {
    return new crypto.X509Certificate(pem);
  } catch (err) {
    throw new VertexError('CertificateInvalid', `${context}: not a readable PEM certificate`, { cause: err });
  }
}

/**
 * X509Certificate gives dates as OpenSSL prints them ("Jan  1 00:00:00 2030 GMT"),
 * which Date reads. A date it cannot read would compare false both ways and
 * pass a validity check, so it is refused.
 */
function certificateDate(printed: string, context: string): Date {
  const date = new Date(printed);
  if (Number.isNaN(date.getTime())) throw new VertexError('CertificateInvalid', `${context}: unreadable validity date ${JSON.stringify(printed)}`);
  return date;
}

function parsePeculiar(pem: string, context: string): x509.X509Certificate {
  try {
    return new x509.X509Certificate(pem);
  } catch (err) {
    throw new VertexError('CertificateInvalid', `${context}: not a readable PEM certificate`, { cause: err });
  }
}

/** Draws before giving up on a random source that only returns zeros. */
const MAX_SERIAL_DRAWS = 4;

/** Random positive serial as hex; a zero draw (2^-128) is redrawn, since the library would silently replace it. */
function randomSerialHex(randomBytes: (size: number) => Buffer): string {
  for (let draw = 0; draw < MAX_SERIAL_DRAWS; draw++) {
    const bytes = randomBytes(SERIAL_BYTES);
    if (bytes.length === SERIAL_BYTES && bytes.some((b) => b !== 0)) return bytes.toString('hex');
  }
  throw new VertexError('Internal', `random serial: ${MAX_SERIAL_DRAWS} draws of ${SERIAL_BYTES} bytes gave no usable value`);
}

/** One spelling for a serial everywhere (database, logs, describe): lowercase hex, no leading zeros. */
export function normaliseSerial(hex: string): string {
  return BigInt('0x' + hex).toString(16);
}

/** X.509 times have whole seconds; rounding here makes the returned dates equal the certificate's. */
function wholeSecond(ms: number): Date {
  return new Date(Math.floor(ms / 1000) * 1000);
}
