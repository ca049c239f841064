/**
 * Node certificates: how the nodes of one domain know each other.
 *
 * Every node of a domain holds the domain CA (the same key.pem/cert.pem under
 * data_dir/ca/<domain>/, copied to each node: docs/deploy.md). At start a
 * node issues itself a certificate from that CA, marked as a node:
 *
 * - subject CN=<node name>.node.<domain> (for people reading logs);
 * - SAN URI `q2q-node://<domain>/<node name>`, the mark that counts. A user
 *   certificate carries `q2q:user@domain` instead, and the CA signs a user's
 *   CSR with its own fields only (q2q/identity issueUserCertificate), so no
 *   user can obtain a node certificate, and a node certificate has no
 *   q2q: address, so no user check ever accepts it;
 * - EKU serverAuth + clientAuth (node-to-node TLS is mutual), CA:false, a
 *   random serial, a short life (NODE_CERT_LIFETIME_MS), reissued before it
 *   ends (node-mesh.ts).
 *
 * The key never leaves the process: a restart issues a new one.
 */
import * as crypto from 'node:crypto';
import { generateKeyPair, importSigningKeys } from '../q2q/identity';
import { OID, x509 } from '../q2q/identity/x509';
import { vertexError } from '../q2q/errors';
import type { DomainCa } from './ca-store';

export const NODE_URI_SCHEME = 'q2q-node://';
export const NODE_CERT_LIFETIME_MS = 7 * 24 * 3_600_000;
/** A node name: one DNS label. */
export const NODE_NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export interface NodeCredentials {
  domain: string;
  name: string;
  keyPem: string;
  certPem: string;
  notAfter: number;
}

export function parseNodeName(text: string): string {
  const name = text.toLowerCase();
  if (!NODE_NAME_RE.test(name)) throw vertexError('Usage', `node name "${text}": use one DNS label (letters, digits, '-')`);
  return name;
}

export function nodeUri(domain: string, name: string): string {
  return `${NODE_URI_SCHEME}${domain}/${name}`;
}

/** Issues this node's certificate for `ca`'s domain. */
export async function issueNodeCertificate(ca: DomainCa, name: string, now = Date.now()): Promise<NodeCredentials> {
  const { privateKeyPem } = await generateKeyPair();
  const subjectKeys = await importSigningKeys(privateKeyPem, `node ${name}`);
  const caSigner = await importSigningKeys(ca.keyPem, `node ${name}: ca key`);
  const caCert = new x509.X509Certificate(ca.certPem);
  const notAfter = new Date(Math.floor((now + NODE_CERT_LIFETIME_MS) / 1000) * 1000);
  const serial = crypto.randomBytes(16);
  serial[0] = (serial[0] as number) & 0x7f;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial.toString('hex'),
    subject: [{ [OID.commonName]: [`${name}.node.${ca.domain}`] }],
    issuer: caCert.subjectName,
    notBefore: new Date(Math.floor((now - 5 * 60_000) / 1000) * 1000),
    notAfter,
    publicKey: subjectKeys.keys.publicKey,
    signingKey: caSigner.keys.privateKey,
    signingAlgorithm: caSigner.signingAlgorithm,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth, x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: nodeUri(ca.domain, name) }]),
      await x509.SubjectKeyIdentifierExtension.create(subjectKeys.keys.publicKey),
    ],
  });
  return { domain: ca.domain, name, keyPem: privateKeyPem, certPem: cert.toString('pem'), notAfter: notAfter.getTime() };
}

/**
 * The node name a peer's certificate carries for `domain`, or a
 * CertificateInvalid error. Call only on a certificate TLS already verified
 * against the domain CA (rejectUnauthorized with `ca`): this checks the mark.
 */
export function nodeNameOf(cert: crypto.X509Certificate, domain: string): string {
  if (cert.ca) throw vertexError('CertificateInvalid', 'node certificate: is a CA');
  const uris = (cert.subjectAltName ?? '').split(/,\s*/).filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
  const prefix = `${NODE_URI_SCHEME}${domain}/`;
  const uri = uris.find((u) => u.toLowerCase().startsWith(prefix));
  const name = uri?.slice(prefix.length).toLowerCase();
  if (!name || !NODE_NAME_RE.test(name)) throw vertexError('CertificateInvalid', `node certificate: no ${prefix}<name> in its subject alternative name`);
  return name;
}
