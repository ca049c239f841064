/**
 * der.ts reads a handful of certificate fields for the hot path. Golden
 * vectors pin the element and OID decoding; certificates of random shape are
 * read both by der.ts and by @peculiar/x509 (the reader it replaced), which
 * must agree; mutated certificates must be read or refused with
 * CertificateInvalid, never crash the reader.
 */
import * as crypto from 'node:crypto';
import fc from 'fast-check';
import { isVertexError } from '../../../../q2q/errors';
import { childrenOf, decodeOid, readCertificateFields, readElement } from '../../../../q2q/identity/der';
import { createDomainCa, generateKeyPair, importSigningKeys, type SigningKeys } from '../../../../q2q/identity';
import { OID, x509 } from '../../../../q2q/identity/x509';

const hex = (h: string) => Buffer.from(h.replace(/\s+/g, ''), 'hex');

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return isVertexError(err) ? err.code : `not a VertexError: ${String(err)}`;
  }
  return 'nothing thrown';
}

describe('readElement', () => {
  it('reads short and long length forms', () => {
    expect(readElement(hex('04 03 aabbcc'), 0, 5)).toEqual({ tag: 0x04, start: 2, end: 5 });
    const long = Buffer.concat([hex('04 81 80'), Buffer.alloc(0x80, 1)]);
    expect(readElement(long, 0, long.length)).toEqual({ tag: 0x04, start: 3, end: 3 + 0x80 });
    const longer = Buffer.concat([hex('30 82 0100'), Buffer.alloc(0x100, 1)]);
    expect(readElement(longer, 0, longer.length)).toEqual({ tag: 0x30, start: 4, end: 4 + 0x100 });
  });

  it('refuses what DER does not allow or what runs past its container', () => {
    expect(codeOf(() => readElement(hex('30 80 0000'), 0, 4))).toBe('CertificateInvalid'); // indefinite length
    expect(codeOf(() => readElement(hex('04 05 aabb'), 0, 4))).toBe('CertificateInvalid'); // contents past the end
    expect(codeOf(() => readElement(hex('04 82 00'), 0, 3))).toBe('CertificateInvalid'); // length bytes past the end
    expect(codeOf(() => readElement(hex('04 85 0000000001 00'), 0, 8))).toBe('CertificateInvalid'); // five length bytes
    expect(codeOf(() => readElement(hex('1f 81 01 00'), 0, 4))).toBe('CertificateInvalid'); // multi-byte tag
    expect(codeOf(() => readElement(hex('04'), 0, 1))).toBe('CertificateInvalid'); // no length byte
    // A child may not run past its parent even when the buffer goes on.
    expect(codeOf(() => childrenOf(hex('30 03 04 02 aa bb'), { tag: 0x30, start: 2, end: 5 }))).toBe('CertificateInvalid');
  });

  it('lists the children of a constructed element', () => {
    const seq = hex('30 06 0201 05 0401 ff');
    const outer = readElement(seq, 0, seq.length);
    expect(childrenOf(seq, outer).map((c) => c.tag)).toEqual([0x02, 0x04]);
  });
});

describe('decodeOid', () => {
  const oid = (h: string) => {
    const b = hex(h);
    return decodeOid(b, readElement(b, 0, b.length));
  };

  it('decodes golden vectors', () => {
    expect(oid('06 03 551d11')).toBe('2.5.29.17');
    expect(oid('06 03 550403')).toBe('2.5.4.3');
    expect(oid('06 07 2a8648ce3d0201')).toBe('1.2.840.10045.2.1');
    expect(oid('06 02 8837')).toBe('2.999');
    expect(oid('06 01 00')).toBe('0.0');
  });

  it('refuses an empty OID and one that ends inside an arc', () => {
    expect(codeOf(() => oid('06 00'))).toBe('CertificateInvalid');
    expect(codeOf(() => oid('06 02 55 9d'))).toBe('CertificateInvalid');
  });
});

/** What @peculiar/x509 reads from the same certificate: the behaviour der.ts must keep. */
function referenceFields(pem: string) {
  const cert = new x509.X509Certificate(pem);
  const sanUris: string[] = [];
  for (const ext of cert.extensions) {
    if (ext.type !== OID.subjectAltName) continue;
    for (const name of new x509.SubjectAlternativeNameExtension(ext.rawData).names.items) if (name.type === 'url') sanUris.push(name.value);
  }
  const bc = cert.extensions.find((e) => e.type === OID.basicConstraints);
  return {
    // The reference drops the 00 sign octet DER puts before a serial whose top bit is set; the value is the same.
    serial: BigInt('0x' + cert.serialNumber),
    issuerCommonNames: cert.issuerName.getField(OID.commonName),
    subjectCommonNames: cert.subjectName.getField(OID.commonName),
    sanUris,
    basicConstraintsCa: bc !== undefined && new x509.BasicConstraintsExtension(bc.rawData).ca,
  };
}

const label = fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,10}$/);
const printable = fc.stringMatching(/^[A-Za-z0-9 '()+,./:=?-]{1,20}$/);
const unicode = fc.string({ unit: 'grapheme', minLength: 1, maxLength: 12 });
/** BMPString holds UTF-16 code units; the generator writes UniversalString the same way, so both stay in the BMP. */
const bmp = fc.string({ unit: fc.integer({ min: 0x20, max: 0xd7ff }).map((c) => String.fromCharCode(c)), minLength: 1, maxLength: 12 });
/** One attribute value, in each string type the reader handles. */
const commonName = fc.oneof(
  printable.map((s) => ({ printableString: s })),
  label.map((s) => ({ ia5String: s })),
  unicode.map((s) => ({ utf8String: s })),
  bmp.map((s) => ({ bmpString: s })),
  bmp.map((s) => ({ universalString: s })),
);
/** A Name of 0-3 RDNs, each a CN or an O, so that CNs are not always first. */
const name = fc.array(
  fc.oneof(commonName.map((v) => ({ [OID.commonName]: [v] })), printable.map((s) => ({ '2.5.4.10': [{ printableString: s }] }))),
  { minLength: 1, maxLength: 3 },
);
const shape = fc.record({
  serial: fc.uint8Array({ minLength: 1, maxLength: 20 }).map((b) => Buffer.from(b).toString('hex')),
  subject: name,
  issuer: name,
  uris: fc.option(fc.array(fc.oneof(label.map((l) => `q2q:${l}@${l}.test`), label.map((l) => `https://${l}.test/`)), { maxLength: 3 }), { nil: null }),
  dnsNames: fc.array(label.map((l) => `${l}.test`), { maxLength: 2 }),
  ca: fc.option(fc.boolean(), { nil: null }),
});

type Shape = typeof shape extends fc.Arbitrary<infer T> ? T : never;

describe('readCertificateFields', () => {
  let keys: SigningKeys;
  beforeAll(async () => {
    keys = await importSigningKeys((await generateKeyPair()).privateKeyPem);
  });

  async function build(s: Shape): Promise<string> {
    const extensions: x509.Extension[] = [];
    if (s.ca !== null) extensions.push(new x509.BasicConstraintsExtension(s.ca, undefined, true));
    if (s.uris !== null) {
      const names = [...s.dnsNames.map((value) => ({ type: 'dns' as const, value })), ...s.uris.map((value) => ({ type: 'url' as const, value }))];
      if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names));
    }
    extensions.push(new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true));
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: s.serial,
      subject: new x509.Name(s.subject),
      issuer: new x509.Name(s.issuer),
      notBefore: new Date('2030-01-01T00:00:00Z'),
      notAfter: new Date('2031-01-01T00:00:00Z'),
      publicKey: keys.keys.publicKey,
      signingKey: keys.keys.privateKey,
      signingAlgorithm: keys.signingAlgorithm,
      extensions,
    });
    return cert.toString('pem');
  }

  it('agrees with @peculiar/x509 on certificates of random shape', async () => {
    await fc.assert(
      fc.asyncProperty(shape, async (s) => {
        const pem = await build(s);
        const { serialHex, ...ours } = readCertificateFields(new crypto.X509Certificate(pem).raw);
        expect({ ...ours, serial: BigInt('0x' + serialHex) }).toEqual(referenceFields(pem));
      }),
      { numRuns: 150 },
    );
  });

  it('reads a domain CA as a CA with its one CN', async () => {
    const ca = await createDomainCa('example.test');
    const fields = readCertificateFields(new crypto.X509Certificate(ca.certPem).raw);
    expect(fields).toMatchObject({ basicConstraintsCa: true, subjectCommonNames: ['example.test'], issuerCommonNames: ['example.test'], sanUris: [] });
  });

  it('gives the serial content octets as written, sign octet included', async () => {
    const pem = await build({ serial: 'ff01', subject: [{ [OID.commonName]: [{ utf8String: 'x' }] }], issuer: [{ [OID.commonName]: [{ utf8String: 'y' }] }], uris: null, dnsNames: [], ca: null });
    expect(readCertificateFields(new crypto.X509Certificate(pem).raw).serialHex).toBe('00ff01');
  });

  it('refuses a certificate with the same extension twice', async () => {
    const extensions = [
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: 'q2q:alice@example.test' }]),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: 'q2q:mallory@example.test' }]),
    ];
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: '01', subject: 'CN=alice@example.test', issuer: 'CN=example.test',
      notBefore: new Date('2030-01-01T00:00:00Z'), notAfter: new Date('2031-01-01T00:00:00Z'),
      publicKey: keys.keys.publicKey, signingKey: keys.keys.privateKey, signingAlgorithm: keys.signingAlgorithm, extensions,
    });
    expect(codeOf(() => readCertificateFields(Buffer.from(cert.rawData)))).toBe('CertificateInvalid');
  });

  it('reads or refuses with CertificateInvalid any mutation of a real certificate, never crashes', async () => {
    const ca = await createDomainCa('example.test');
    const der = new crypto.X509Certificate(ca.certPem).raw;
    fc.assert(
      fc.property(
        fc.array(fc.record({ at: fc.nat({ max: der.length - 1 }), byte: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 4 }),
        fc.nat({ max: der.length }),
        (edits, cut) => {
          const mutated = Buffer.from(der);
          for (const e of edits) mutated[e.at] = e.byte;
          const input = mutated.subarray(0, cut === 0 ? der.length : cut);
          try {
            readCertificateFields(input);
          } catch (err) {
            if (!isVertexError(err, 'CertificateInvalid')) throw err;
          }
        },
      ),
      { numRuns: 3000 },
    );
  });
});
