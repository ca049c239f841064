/**
 * Node certificates (server/node-identity.ts): issued by the domain CA and
 * marked as a node; the mark is what node-to-node TLS checks, so a user
 * certificate of the same CA, or a node mark for another domain, is refused.
 */
import { X509Certificate } from 'node:crypto';
import { createCsr, createDomainCa, describeCertificate, generateKeyPair, issueUserCertificate, verifyUserCertificate } from '../../../q2q/identity';
import { issueNodeCertificate, nodeNameOf, parseNodeName } from '../../../server/node-identity';

const DOMAIN = 'n.test';

async function domainCa(domain = DOMAIN) {
  const ca = await createDomainCa(domain);
  return { domain, ...ca, fingerprint: describeCertificate(ca.certPem).fingerprint };
}

describe('node certificates', () => {
  it('are issued by the domain CA, carry the node mark, and are not CAs', async () => {
    const ca = await domainCa();
    const node = await issueNodeCertificate(ca, 'n1');
    const cert = new X509Certificate(node.certPem);
    expect(cert.verify(new X509Certificate(ca.certPem).publicKey)).toBe(true);
    expect(cert.ca).toBe(false);
    expect(cert.subjectAltName).toBe(`URI:q2q-node://${DOMAIN}/n1`);
    expect(nodeNameOf(cert, DOMAIN)).toBe('n1');
    expect(cert.keyUsage).toEqual(expect.arrayContaining(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']));
  });

  it('a node certificate is no user certificate: it names no q2q address', async () => {
    const ca = await domainCa();
    const node = await issueNodeCertificate(ca, 'n1');
    expect(() => verifyUserCertificate(node.certPem, ca.certPem)).toThrow(/no q2q: URI/);
  });

  it('a user certificate of the same CA, or a node mark for another domain, is not a node', async () => {
    const ca = await domainCa();
    const { privateKeyPem } = await generateKeyPair();
    const user = await issueUserCertificate({
      caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem: await createCsr(`alice@${DOMAIN}`, privateKeyPem),
      expectedAddress: `alice@${DOMAIN}`, lifetimeMs: 3_600_000,
    });
    expect(() => nodeNameOf(new X509Certificate(user.certPem), DOMAIN)).toThrow(/node certificate/);
    const other = await issueNodeCertificate(await domainCa('other.test'), 'n1');
    expect(() => nodeNameOf(new X509Certificate(other.certPem), DOMAIN)).toThrow(/node certificate/);
  });

  it('node names are one DNS label', () => {
    expect(parseNodeName('N1')).toBe('n1');
    expect(() => parseNodeName('n1.example')).toThrow(/one DNS label/);
    expect(() => parseNodeName('-n1')).toThrow(/one DNS label/);
  });
});
