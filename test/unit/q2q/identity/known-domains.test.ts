import { isVertexError, VertexError } from '../../../../q2q/errors';
import {
  certificateFingerprint,
  checkPinnedCa,
  createCsr,
  createDomainCa,
  formatKnownDomains,
  generateKeyPair,
  issueUserCertificate,
  parseKnownDomains,
} from '../../../../q2q/identity';
import { importSigningKeys } from '../../../../q2q/identity';
import { x509 } from '../../../../q2q/identity/x509';

const FILE = '/home/alice/.vertex/known_domains';

function thrown(fn: () => unknown): VertexError {
  try {
    fn();
  } catch (err) {
    if (isVertexError(err)) return err;
    throw err;
  }
  throw new Error('expected a VertexError, but nothing was thrown');
}

let ca: { certPem: string; keyPem: string };
let rogue: { certPem: string; keyPem: string };

beforeAll(async () => {
  ca = await createDomainCa('example.test');
  rogue = await createDomainCa('example.test');
});

describe('parseKnownDomains / formatKnownDomains', () => {
  const fpA = 'SHA256:' + 'A'.repeat(43);
  const fpB = 'SHA256:' + 'b+/9'.repeat(10) + 'xyz';

  it('reads pins, skipping comments and blank lines, and lowercases domains', () => {
    const text = `# pinned domain CAs\n\nexample.test ${fpA}\n   # indented comment\nB.Example.Test\t${fpB}\r\n\n`;
    const known = parseKnownDomains(text);
    expect([...known]).toEqual([
      ['example.test', fpA],
      ['b.example.test', fpB],
    ]);
  });

  it('round-trips through formatKnownDomains', () => {
    const known = new Map([
      ['example.test', fpA],
      ['b.example.test', fpB],
    ]);
    const text = formatKnownDomains(known);
    expect(text).toBe(`example.test ${fpA}\nb.example.test ${fpB}\n`);
    expect(parseKnownDomains(text)).toEqual(known);
    expect(formatKnownDomains(new Map())).toBe('');
  });

  it.each([
    ['one field', 'example.test'],
    ['three fields', `example.test ${fpA} extra`],
    ['a bad fingerprint', 'example.test SHA256:short'],
    ['a hex fingerprint', `example.test ${'ab:'.repeat(31)}ab`],
    ['a bad domain', `exa_mple.test ${fpA}`],
    ['two pins that disagree', `example.test ${fpA}\nexample.test ${fpB}`],
  ])('refuses a file with %s, naming the file and line', (_what, text) => {
    const err = thrown(() => parseKnownDomains(`# header\n${text}\n`, FILE));
    expect(err.code === 'Config' || err.code === 'InvalidName').toBe(true);
    expect(err.message).toContain(`${FILE} line`);
  });

  it('accepts the same pin twice', () => {
    expect(parseKnownDomains(`example.test ${fpA}\nexample.test ${fpA}\n`).get('example.test')).toBe(fpA);
  });
});

describe('checkPinnedCa', () => {
  it('says new for an unpinned domain and match for the pinned CA', () => {
    expect(checkPinnedCa(new Map(), 'example.test', ca.certPem, FILE)).toBe('new');
    const known = new Map([['example.test', certificateFingerprint(ca.certPem)]]);
    expect(checkPinnedCa(known, 'Example.Test', ca.certPem, FILE)).toBe('match');
  });

  it('refuses a changed CA with both fingerprints and the file to edit', () => {
    const pinned = certificateFingerprint(ca.certPem);
    const presented = certificateFingerprint(rogue.certPem);
    const err = thrown(() => checkPinnedCa(new Map([['example.test', pinned]]), 'example.test', rogue.certPem, FILE));
    expect(err.code).toBe('CaChanged');
    expect(err.message).toContain(pinned);
    expect(err.message).toContain(presented);
    expect(err.message).toContain(FILE);
    expect(err.message).toContain('example.test');
    expect(err.message).not.toContain('\n');
  });

  it('refuses a CA named for another domain', () => {
    expect(thrown(() => checkPinnedCa(new Map(), 'other.test', ca.certPem, FILE)).code).toBe('CertificateInvalid');
  });

  it('refuses a user certificate posing as the domain CA', async () => {
    const { privateKeyPem } = await generateKeyPair();
    const csrPem = await createCsr('alice@example.test', privateKeyPem);
    const user = await issueUserCertificate({
      caCertPem: ca.certPem,
      caKeyPem: ca.keyPem,
      csrPem,
      expectedAddress: 'alice@example.test',
      lifetimeMs: 60_000,
    });
    expect(thrown(() => checkPinnedCa(new Map(), 'example.test', user.certPem, FILE)).code).toBe('CertificateInvalid');
  });

  it('refuses a self-signed certificate that is not a CA', async () => {
    const { privateKeyPem } = await generateKeyPair();
    const signer = await importSigningKeys(privateKeyPem);
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      name: [{ CN: ['example.test'] }],
      keys: signer.keys,
      signingAlgorithm: signer.signingAlgorithm,
      extensions: [new x509.BasicConstraintsExtension(false, undefined, true)],
    });
    expect(thrown(() => checkPinnedCa(new Map(), 'example.test', cert.toString('pem'), FILE)).code).toBe('CertificateInvalid');
  });

  it('refuses garbage', () => {
    expect(thrown(() => checkPinnedCa(new Map(), 'example.test', 'not pem', FILE)).code).toBe('CertificateInvalid');
  });
});
