import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isVertexError } from '../../../../q2q/errors';
import {
  CLOCK_SKEW_MS,
  certificateFingerprint,
  checkDomainCaCertificate,
  createCsr,
  createDomainCa,
  describeCertificate,
  generateKeyPair,
  importSigningKeys,
  issueUserCertificate,
  keyMatchesCertificate,
  verifyUserCertificate,
} from '../../../../q2q/identity';
import { x509 } from '../../../../q2q/identity/x509';
import { describeWithTools, TOOLS } from '../../../helpers/system-tools';

const DAY = 24 * 60 * 60 * 1000;
const ALICE = 'alice@example.test';

interface Ca {
  certPem: string;
  keyPem: string;
}

async function issueFor(ca: Ca, address: string, opts: { lifetimeMs?: number; now?: Date } = {}) {
  const { privateKeyPem } = await generateKeyPair();
  const csrPem = await createCsr(address, privateKeyPem);
  const issued = await issueUserCertificate({
    caCertPem: ca.certPem,
    caKeyPem: ca.keyPem,
    csrPem,
    expectedAddress: address,
    lifetimeMs: opts.lifetimeMs ?? 7 * DAY,
    ...(opts.now ? { now: opts.now } : {}),
  });
  return { ...issued, keyPem: privateKeyPem };
}

/** A CSR built by hand, for the shapes createCsr refuses to make. */
async function rawCsr(privateKeyPem: string, name: x509.JsonName | string, sanUris: string[] | null): Promise<string> {
  const signer = await importSigningKeys(privateKeyPem);
  const extensions = sanUris === null ? [] : [new x509.SubjectAlternativeNameExtension(sanUris.map((value) => ({ type: 'url' as const, value })))];
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name,
    keys: signer.keys,
    signingAlgorithm: signer.signingAlgorithm,
    extensions,
  });
  return csr.toString('pem');
}

function pemToDer(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

function derToPem(der: Buffer, label: string): string {
  const b64 = der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

async function expectCode(promise: Promise<unknown> | (() => unknown), code: string): Promise<void> {
  try {
    if (typeof promise === 'function') promise();
    else await promise;
  } catch (err) {
    if (!isVertexError(err)) throw err;
    expect(err.code).toBe(code);
    return;
  }
  throw new Error(`expected VertexError ${code}, but nothing was thrown`);
}

let ca: Ca;
let otherCa: Ca;

beforeAll(async () => {
  ca = await createDomainCa('example.test');
  otherCa = await createDomainCa('example.test');
});

describe('generateKeyPair', () => {
  it('makes a P-256 key pair as PKCS#8 and SPKI PEM', async () => {
    const { privateKeyPem, publicKeyPem } = await generateKeyPair();
    expect(privateKeyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(publicKeyPem).toMatch(/^-----BEGIN PUBLIC KEY-----\n/);
    const key = crypto.createPrivateKey(privateKeyPem);
    expect(key.asymmetricKeyType).toBe('ec');
    expect(key.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(crypto.createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' })).toBe(publicKeyPem);
  });
});

describe('createDomainCa', () => {
  it('is a self-signed CA named for the domain, with keyCertSign and cRLSign', async () => {
    const now = new Date('2030-01-01T00:00:00Z');
    const made = await createDomainCa('Example.TEST', { now });
    const info = describeCertificate(made.certPem);
    expect(info.subjectCn).toBe('example.test');
    expect(info.issuerCn).toBe('example.test');
    expect(info.isCa).toBe(true);
    expect(info.q2qAddress).toBeNull();
    expect(info.notAfter.getTime() - now.getTime()).toBe(3650 * DAY);
    const cert = new x509.X509Certificate(made.certPem);
    const bc = cert.getExtension<x509.BasicConstraintsExtension>('2.5.29.19');
    expect(bc?.critical).toBe(true);
    const ku = new x509.KeyUsagesExtension(cert.getExtension('2.5.29.15')!.rawData);
    expect(ku.critical).toBe(true);
    expect(ku.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
    expect(await cert.isSelfSigned()).toBe(true);
    expect(keyMatchesCertificate(made.keyPem, made.certPem)).toBe(true);
  });

  it('honours lifetimeDays and refuses a bad domain', async () => {
    const now = new Date('2030-01-01T00:00:00Z');
    const made = await createDomainCa('a.test', { lifetimeDays: 30, now });
    expect(describeCertificate(made.certPem).notAfter.getTime()).toBe(now.getTime() + 30 * DAY);
    await expectCode(createDomainCa('bad domain'), 'InvalidName');
    await expectCode(createDomainCa('../etc'), 'InvalidName');
  });

  it('gives two CAs for the same domain different serials and fingerprints', () => {
    expect(describeCertificate(ca.certPem).serial).not.toBe(describeCertificate(otherCa.certPem).serial);
    expect(certificateFingerprint(ca.certPem)).not.toBe(certificateFingerprint(otherCa.certPem));
  });
});

describe('createCsr', () => {
  it('requests exactly CN=address with SAN URI:q2q:address, signed by the key', async () => {
    const { privateKeyPem } = await generateKeyPair();
    const csr = new x509.Pkcs10CertificateRequest(await createCsr('Alice@Example.test', privateKeyPem));
    expect(csr.subject).toBe('CN=alice@example.test');
    const san = new x509.SubjectAlternativeNameExtension(csr.getExtension('2.5.29.17')!.rawData);
    expect(san.names.toJSON()).toEqual([{ type: 'url', value: 'q2q:alice@example.test' }]);
    expect(await csr.verify()).toBe(true);
  });

  it('refuses an address that is not user@domain', async () => {
    const { privateKeyPem } = await generateKeyPair();
    await expectCode(createCsr('alice', privateKeyPem), 'InvalidName');
    await expectCode(createCsr('al ice@example.test', privateKeyPem), 'InvalidName');
    await expectCode(createCsr('a@b@example.test', privateKeyPem), 'InvalidName');
  });
});

describe('issueUserCertificate', () => {
  it('issues a v3 user certificate with the fields the design asks for', async () => {
    const now = new Date('2030-06-01T12:00:00.250Z');
    const lifetimeMs = 7 * DAY;
    const issued = await issueFor(ca, ALICE, { now, lifetimeMs });
    const info = describeCertificate(issued.certPem);
    expect(info).toMatchObject({ subjectCn: ALICE, issuerCn: 'example.test', q2qAddress: ALICE, isCa: false, serial: issued.serial });
    expect(issued.notBefore.getTime()).toBe(Math.floor((now.getTime() - CLOCK_SKEW_MS) / 1000) * 1000);
    expect(issued.notAfter.getTime()).toBe(Math.floor((now.getTime() + lifetimeMs) / 1000) * 1000);
    expect(info.notBefore).toEqual(issued.notBefore);
    expect(info.notAfter).toEqual(issued.notAfter);
    expect(issued.serial).toMatch(/^[0-9a-f]{1,32}$/);

    const cert = new x509.X509Certificate(issued.certPem);
    const eku = new x509.ExtendedKeyUsageExtension(cert.getExtension('2.5.29.37')!.rawData);
    expect([...eku.usages].sort()).toEqual([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth].sort());
    const ku = new x509.KeyUsagesExtension(cert.getExtension('2.5.29.15')!.rawData);
    expect(ku.usages).toBe(x509.KeyUsageFlags.digitalSignature);
    const aki = new x509.AuthorityKeyIdentifierExtension(cert.getExtension('2.5.29.35')!.rawData);
    const caSki = new x509.SubjectKeyIdentifierExtension(new x509.X509Certificate(ca.certPem).getExtension('2.5.29.14')!.rawData);
    expect(aki.keyId).toBe(caSki.keyId);
    expect(cert.getExtension('2.5.29.14')).not.toBeNull();
    expect(keyMatchesCertificate(issued.keyPem, issued.certPem)).toBe(true);
    expect(new crypto.X509Certificate(issued.certPem).checkIssued(new crypto.X509Certificate(ca.certPem))).toBe(true);
  });

  it('gives every certificate its own serial', async () => {
    const a = await issueFor(ca, ALICE);
    const b = await issueFor(ca, ALICE);
    expect(a.serial).not.toBe(b.serial);
  });

  it('uses the random source for a 128-bit serial', async () => {
    const { privateKeyPem } = await generateKeyPair();
    const csrPem = await createCsr(ALICE, privateKeyPem);
    const issued = await issueUserCertificate({
      caCertPem: ca.certPem,
      caKeyPem: ca.keyPem,
      csrPem,
      expectedAddress: ALICE,
      lifetimeMs: DAY,
      randomBytes: (n) => Buffer.alloc(n, 0xff),
    });
    expect(issued.serial).toBe('f'.repeat(32));
    expect(describeCertificate(issued.certPem).serial).toBe('f'.repeat(32));
  });

  it('refuses a CSR whose CN names someone else', async () => {
    const { privateKeyPem } = await generateKeyPair();
    const csrPem = await createCsr('mallory@example.test', privateKeyPem);
    await expectCode(
      issueUserCertificate({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem, expectedAddress: ALICE, lifetimeMs: DAY }),
      'BadCertificateRequest',
    );
  });

  it.each<[string, x509.JsonName | string, string[] | null]>([
    ['a wrong CN with the right SAN', [{ CN: ['mallory@example.test'] }], ['q2q:alice@example.test']],
    ['an extra RDN', [{ CN: [ALICE] }, { O: ['evil'] }], ['q2q:alice@example.test']],
    ['an upper-case CN', [{ CN: ['Alice@example.test'] }], ['q2q:alice@example.test']],
    ['no SAN', [{ CN: [ALICE] }], null],
    ['a SAN for someone else', [{ CN: [ALICE] }], ['q2q:mallory@example.test']],
    ['an extra SAN name', [{ CN: [ALICE] }], ['q2q:alice@example.test', 'q2q:mallory@example.test']],
    ['a non-q2q SAN', [{ CN: [ALICE] }], ['https://alice.example.test']],
  ])('refuses a CSR with %s', async (_what, name, sans) => {
    const { privateKeyPem } = await generateKeyPair();
    const csrPem = await rawCsr(privateKeyPem, name, sans);
    await expectCode(
      issueUserCertificate({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem, expectedAddress: ALICE, lifetimeMs: DAY }),
      'BadCertificateRequest',
    );
  });

  it('refuses to issue for an address outside the CA domain', async () => {
    const { privateKeyPem } = await generateKeyPair();
    const csrPem = await createCsr('alice@other.test', privateKeyPem);
    await expectCode(
      issueUserCertificate({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem, expectedAddress: 'alice@other.test', lifetimeMs: DAY }),
      'BadCertificateRequest',
    );
  });

  it('refuses a CSR whose signature does not verify', async () => {
    const { privateKeyPem } = await generateKeyPair();
    const der = pemToDer(await createCsr(ALICE, privateKeyPem));
    // The last bytes are the ECDSA signature's s value; changing one keeps the DER readable.
    der.writeUInt8(der.readUInt8(der.length - 2) ^ 0x01, der.length - 2);
    await expectCode(
      issueUserCertificate({
        caCertPem: ca.certPem,
        caKeyPem: ca.keyPem,
        csrPem: derToPem(der, 'CERTIFICATE REQUEST'),
        expectedAddress: ALICE,
        lifetimeMs: DAY,
      }),
      'BadCertificateRequest',
    );
  });

  it('refuses garbage and an RSA key', async () => {
    await expectCode(
      issueUserCertificate({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem: 'not a csr', expectedAddress: ALICE, lifetimeMs: DAY }),
      'BadCertificateRequest',
    );
    const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const rsaKeys = {
      privateKey: await crypto.webcrypto.subtle.importKey(
        'pkcs8',
        rsa.privateKey.export({ type: 'pkcs8', format: 'der' }),
        { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
        true,
        ['sign'],
      ),
      publicKey: await crypto.webcrypto.subtle.importKey(
        'spki',
        rsa.publicKey.export({ type: 'spki', format: 'der' }),
        { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
        true,
        ['verify'],
      ),
    };
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      name: [{ CN: [ALICE] }],
      keys: rsaKeys,
      signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: 'q2q:' + ALICE }])],
    });
    await expectCode(
      issueUserCertificate({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem: csr.toString('pem'), expectedAddress: ALICE, lifetimeMs: DAY }),
      'BadCertificateRequest',
    );
  });

  it('accepts an Ed25519 key', async () => {
    const ed = crypto.generateKeyPairSync('ed25519');
    const keyPem = ed.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    const csrPem = await createCsr(ALICE, keyPem);
    const issued = await issueUserCertificate({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem, expectedAddress: ALICE, lifetimeMs: DAY });
    expect(keyMatchesCertificate(keyPem, issued.certPem)).toBe(true);
    verifyUserCertificate(issued.certPem, ca.certPem, { expectedAddress: ALICE });
  });

  it('refuses a CA key that does not match the CA certificate, and a bad lifetime', async () => {
    const { privateKeyPem } = await generateKeyPair();
    const csrPem = await createCsr(ALICE, privateKeyPem);
    await expectCode(
      issueUserCertificate({ caCertPem: ca.certPem, caKeyPem: otherCa.keyPem, csrPem, expectedAddress: ALICE, lifetimeMs: DAY }),
      'CertificateInvalid',
    );
    await expectCode(
      issueUserCertificate({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem, expectedAddress: ALICE, lifetimeMs: 0 }),
      'BadRequest',
    );
  });
});

describe('verifyUserCertificate', () => {
  let alice: Awaited<ReturnType<typeof issueFor>>;
  beforeAll(async () => {
    alice = await issueFor(ca, ALICE, { lifetimeMs: 7 * DAY });
  });

  it('accepts a current certificate from the CA, with or without the expected address', () => {
    expect(() => verifyUserCertificate(alice.certPem, ca.certPem, {})).not.toThrow();
    expect(() => verifyUserCertificate(alice.certPem, ca.certPem, { expectedAddress: 'ALICE@example.test' })).not.toThrow();
  });

  it('refuses a certificate for another address', async () => {
    await expectCode(() => verifyUserCertificate(alice.certPem, ca.certPem, { expectedAddress: 'bob@example.test' }), 'CertificateInvalid');
  });

  it('refuses a certificate from another CA', async () => {
    await expectCode(() => verifyUserCertificate(alice.certPem, otherCa.certPem, {}), 'CertificateInvalid');
  });

  it('refuses a tampered certificate', async () => {
    const der = pemToDer(alice.certPem);
    const at = der.indexOf(Buffer.from('alice@example.test'));
    expect(at).toBeGreaterThan(0);
    der[at] = 'm'.charCodeAt(0);
    const tampered = derToPem(der, 'CERTIFICATE');
    expect(describeCertificate(tampered).subjectCn).toBe('mlice@example.test');
    await expectCode(() => verifyUserCertificate(tampered, ca.certPem, {}), 'CertificateInvalid');
  });

  it('refuses a certificate outside its validity', async () => {
    await expectCode(() => verifyUserCertificate(alice.certPem, ca.certPem, { now: new Date(alice.notAfter.getTime() + 1000) }), 'CertificateInvalid');
    await expectCode(() => verifyUserCertificate(alice.certPem, ca.certPem, { now: new Date(alice.notBefore.getTime() - 1000) }), 'CertificateInvalid');
    expect(() => verifyUserCertificate(alice.certPem, ca.certPem, { now: new Date(alice.notAfter.getTime() - 1000) })).not.toThrow();
  });

  it('refuses a CA certificate presented as a user certificate, and garbage', async () => {
    await expectCode(() => verifyUserCertificate(ca.certPem, ca.certPem, {}), 'CertificateInvalid');
    await expectCode(() => verifyUserCertificate('garbage', ca.certPem, {}), 'CertificateInvalid');
    await expectCode(() => verifyUserCertificate(alice.certPem, 'garbage', {}), 'CertificateInvalid');
  });

  it('refuses a certificate the CA signed for an address in another domain', async () => {
    const signer = await importSigningKeys(ca.keyPem);
    const { privateKeyPem } = await generateKeyPair();
    const subjectKey = await importSigningKeys(privateKeyPem);
    const cert = await x509.X509CertificateGenerator.create({
      subject: [{ CN: ['alice@other.test'] }],
      issuer: new x509.X509Certificate(ca.certPem).subjectName,
      notBefore: new Date(Date.now() - DAY),
      notAfter: new Date(Date.now() + DAY),
      publicKey: subjectKey.keys.publicKey,
      signingKey: signer.keys.privateKey,
      signingAlgorithm: signer.signingAlgorithm,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: 'q2q:alice@other.test' }]),
      ],
    });
    const pem = cert.toString('pem');
    expect(new crypto.X509Certificate(pem).checkIssued(new crypto.X509Certificate(ca.certPem))).toBe(true);
    await expectCode(() => verifyUserCertificate(pem, ca.certPem, {}), 'CertificateInvalid');
  });

  it('refuses a user certificate used as the CA', async () => {
    await expectCode(() => verifyUserCertificate(alice.certPem, alice.certPem, {}), 'CertificateInvalid');
  });
});

/**
 * The checks verifyUserCertificate makes from the certificate's own fields
 * (basicConstraints, SAN, CA shape), each on a certificate the CA really
 * signed, so that only the check under test can refuse it.
 */
describe('verifyUserCertificate: checks on what the CA signed', () => {
  const userKeyUsage = () => new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true);

  async function signedBy(issuer: Ca, extensions: x509.Extension[], opts: { subject?: string; issuerName?: string } = {}): Promise<string> {
    const signer = await importSigningKeys(issuer.keyPem);
    const subjectKey = await importSigningKeys((await generateKeyPair()).privateKeyPem);
    const cert = await x509.X509CertificateGenerator.create({
      subject: opts.subject ?? `CN=${ALICE}`,
      issuer: opts.issuerName ?? new x509.X509Certificate(issuer.certPem).subjectName.toString(),
      notBefore: new Date(Date.now() - DAY),
      notAfter: new Date(Date.now() + DAY),
      publicKey: subjectKey.keys.publicKey,
      signingKey: signer.keys.privateKey,
      signingAlgorithm: signer.signingAlgorithm,
      extensions: [
        ...extensions,
        await x509.AuthorityKeyIdentifierExtension.create(signer.keys.publicKey),
      ],
    });
    return cert.toString('pem');
  }

  async function selfSignedCa(domain: string, extensions: x509.Extension[]): Promise<Ca> {
    const { privateKeyPem } = await generateKeyPair();
    const signer = await importSigningKeys(privateKeyPem);
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      name: `CN=${domain}`,
      notBefore: new Date(Date.now() - DAY),
      notAfter: new Date(Date.now() + DAY),
      keys: signer.keys,
      signingAlgorithm: signer.signingAlgorithm,
      extensions: [...extensions, await x509.SubjectKeyIdentifierExtension.create(signer.keys.publicKey)],
    });
    return { certPem: cert.toString('pem'), keyPem: privateKeyPem };
  }

  const aliceSan = () => new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `q2q:${ALICE}` }]);

  it('accepts the hand-built control certificate, so each refusal below is the check under test', async () => {
    const pem = await signedBy(ca, [new x509.BasicConstraintsExtension(false, undefined, true), userKeyUsage(), aliceSan()]);
    expect(() => verifyUserCertificate(pem, ca.certPem, { expectedAddress: ALICE })).not.toThrow();
  });

  it('refuses a certificate marked CA:TRUE even when its keyUsage cannot sign certificates', async () => {
    // OpenSSL's X509_check_ca (X509Certificate.ca) says false for this one; basicConstraints alone decides.
    const pem = await signedBy(ca, [new x509.BasicConstraintsExtension(true, undefined, true), userKeyUsage(), aliceSan()]);
    expect(new crypto.X509Certificate(pem).ca).toBe(false);
    expect(describeCertificate(pem).isCa).toBe(true);
    await expectCode(() => verifyUserCertificate(pem, ca.certPem, {}), 'CertificateInvalid');
  });

  it('refuses a certificate without a q2q: URI: no SAN, or a SAN of another scheme', async () => {
    const bc = () => new x509.BasicConstraintsExtension(false, undefined, true);
    const noSan = await signedBy(ca, [bc(), userKeyUsage()]);
    const https = await signedBy(ca, [bc(), userKeyUsage(), new x509.SubjectAlternativeNameExtension([{ type: 'url', value: 'https://alice.example.test' }])]);
    const dns = await signedBy(ca, [bc(), userKeyUsage(), new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: 'alice.example.test' }])]);
    for (const pem of [noSan, https, dns]) {
      expect(describeCertificate(pem).q2qAddress).toBeNull();
      await expectCode(() => verifyUserCertificate(pem, ca.certPem, {}), 'CertificateInvalid');
    }
  });

  it('reads the q2q: URI among other SAN names, and refuses one for another address', async () => {
    const san = new x509.SubjectAlternativeNameExtension([
      { type: 'dns', value: 'alice.example.test' },
      { type: 'url', value: 'https://alice.example.test' },
      { type: 'url', value: 'q2q:bob@example.test' },
    ]);
    const pem = await signedBy(ca, [new x509.BasicConstraintsExtension(false, undefined, true), userKeyUsage(), san]);
    expect(describeCertificate(pem).q2qAddress).toBe('bob@example.test');
    expect(() => verifyUserCertificate(pem, ca.certPem, { expectedAddress: 'bob@example.test' })).not.toThrow();
    await expectCode(() => verifyUserCertificate(pem, ca.certPem, { expectedAddress: ALICE }), 'CertificateInvalid');
  });

  it('refuses a certificate carrying two SAN extensions', async () => {
    const pem = await signedBy(ca, [
      new x509.BasicConstraintsExtension(false, undefined, true),
      aliceSan(),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: 'q2q:mallory@example.test' }]),
    ]);
    await expectCode(() => verifyUserCertificate(pem, ca.certPem, {}), 'CertificateInvalid');
  });

  it('refuses an issuer without basicConstraints CA, even one that names the domain and signed the certificate', async () => {
    const notCa = await selfSignedCa('example.test', [new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)]);
    const pem = await signedBy(notCa, [new x509.BasicConstraintsExtension(false, undefined, true), aliceSan()]);
    expect(new crypto.X509Certificate(pem).verify(new crypto.X509Certificate(notCa.certPem).publicKey)).toBe(true);
    await expectCode(() => verifyUserCertificate(pem, notCa.certPem, {}), 'CertificateInvalid');
    await expectCode(() => checkDomainCaCertificate('example.test', notCa.certPem), 'CertificateInvalid');
  });

  it('refuses an issuer whose keyUsage does not allow signing certificates', async () => {
    const weakCa = await selfSignedCa('example.test', [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    ]);
    const pem = await signedBy(weakCa, [new x509.BasicConstraintsExtension(false, undefined, true), aliceSan()]);
    await expectCode(() => verifyUserCertificate(pem, weakCa.certPem, {}), 'CertificateInvalid');
  });

  it('refuses a certificate whose issuer name is not the CA, though the CA key signed it', async () => {
    const pem = await signedBy(ca, [new x509.BasicConstraintsExtension(false, undefined, true), aliceSan()], { issuerName: 'CN=other.test' });
    await expectCode(() => verifyUserCertificate(pem, ca.certPem, {}), 'CertificateInvalid');
  });

  it('checks every time: a certificate accepted once is refused once it expires', async () => {
    const alice = await issueFor(ca, ALICE, { lifetimeMs: DAY });
    expect(() => verifyUserCertificate(alice.certPem, ca.certPem, {})).not.toThrow();
    await expectCode(() => verifyUserCertificate(alice.certPem, ca.certPem, { now: new Date(alice.notAfter.getTime() + 1000) }), 'CertificateInvalid');
    await expectCode(() => verifyUserCertificate(alice.certPem, otherCa.certPem, {}), 'CertificateInvalid');
  });

  it('hands out its own dates: a caller changing them changes nothing for the next', async () => {
    const alice = await issueFor(ca, ALICE, { lifetimeMs: DAY });
    const first = describeCertificate(alice.certPem);
    first.notAfter.setTime(first.notAfter.getTime() + 365 * DAY);
    expect(describeCertificate(alice.certPem).notAfter.getTime()).toBe(alice.notAfter.getTime());
    await expectCode(() => verifyUserCertificate(alice.certPem, ca.certPem, { now: new Date(alice.notAfter.getTime() + 1000) }), 'CertificateInvalid');
  });
});

describe('checkDomainCaCertificate', () => {
  it('accepts a domain CA for its domain only, and refuses a user certificate', async () => {
    expect(() => checkDomainCaCertificate('EXAMPLE.test', ca.certPem)).not.toThrow();
    await expectCode(() => checkDomainCaCertificate('other.test', ca.certPem), 'CertificateInvalid');
    const alice = await issueFor(ca, ALICE);
    await expectCode(() => checkDomainCaCertificate('example.test', alice.certPem), 'CertificateInvalid');
    await expectCode(() => checkDomainCaCertificate('example.test', 'garbage'), 'CertificateInvalid');
  });
});

describe('keyMatchesCertificate and fingerprints', () => {
  it('matches only the certified key', async () => {
    const alice = await issueFor(ca, ALICE);
    const { privateKeyPem: stranger } = await generateKeyPair();
    expect(keyMatchesCertificate(alice.keyPem, alice.certPem)).toBe(true);
    expect(keyMatchesCertificate(stranger, alice.certPem)).toBe(false);
    await expectCode(() => keyMatchesCertificate('nope', alice.certPem), 'CertificateInvalid');
    await expectCode(() => keyMatchesCertificate(alice.keyPem, 'nope'), 'CertificateInvalid');
  });

  it('prints SHA256:<unpadded base64> of the DER, the same in both functions', () => {
    const fp = certificateFingerprint(ca.certPem);
    expect(fp).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    expect(describeCertificate(ca.certPem).fingerprint).toBe(fp);
    const hex = new crypto.X509Certificate(ca.certPem).fingerprint256.replace(/:/g, '');
    expect(fp).toBe('SHA256:' + Buffer.from(hex, 'hex').toString('base64').replace(/=+$/, ''));
  });
});

describeWithTools('openssl agrees', [TOOLS.openssl], () => {

  it('reads an issued certificate as the design describes it', async () => {
    const alice = await issueFor(ca, ALICE);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-cert-'));
    try {
      const certFile = path.join(dir, 'cert.pem');
      const caFile = path.join(dir, 'ca.pem');
      fs.writeFileSync(certFile, alice.certPem);
      fs.writeFileSync(caFile, ca.certPem);
      const text = execFileSync('openssl', ['x509', '-noout', '-text', '-in', certFile], { encoding: 'utf8' });
      expect(text).toContain('URI:q2q:alice@example.test');
      expect(text).toContain('CA:FALSE');
      expect(text).toContain('TLS Web Client Authentication');
      expect(text).toContain('TLS Web Server Authentication');
      expect(text).toContain('Public Key Algorithm: id-ecPublicKey');
      expect(text).toContain('NIST CURVE: P-256');
      expect(text).toContain('Signature Algorithm: ecdsa-with-SHA256');
      expect(text).toContain('Version: 3 (0x2)');
      expect(text).toContain('Subject: CN = alice@example.test');
      expect(text).toContain('Issuer: CN = example.test');
      const verify = execFileSync('openssl', ['verify', '-CAfile', caFile, '-purpose', 'sslclient', certFile], { encoding: 'utf8' });
      expect(verify.trim()).toBe(`${certFile}: OK`);
      const caText = execFileSync('openssl', ['x509', '-noout', '-text', '-in', caFile], { encoding: 'utf8' });
      expect(caText).toMatch(/Basic Constraints: critical\s+CA:TRUE/);
      expect(caText).toContain('Certificate Sign, CRL Sign');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
