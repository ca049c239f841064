import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DEFAULT_IDENTITY_FILE, HomeStore, writeFileAtomic } from '../../../agent/home-store';
import { isVertexError, type VertexError } from '../../../q2q/errors';
import {
  certificateFingerprint,
  createCsr,
  createDomainCa,
  generateKeyPair,
  issueUserCertificate,
  parseKnownDomains,
} from '../../../q2q/identity';

const HOUR = 60 * 60 * 1000;

interface Ca {
  certPem: string;
  keyPem: string;
}

async function identityFor(ca: Ca, address: string): Promise<{ keyPem: string; certPem: string }> {
  const { privateKeyPem } = await generateKeyPair();
  const csrPem = await createCsr(address, privateKeyPem);
  const issued = await issueUserCertificate({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem, expectedAddress: address, lifetimeMs: HOUR });
  return { keyPem: privateKeyPem, certPem: issued.certPem };
}

function thrown(fn: () => unknown): VertexError {
  try {
    fn();
  } catch (err) {
    if (isVertexError(err)) return err;
    throw err;
  }
  throw new Error('expected a VertexError, but nothing was thrown');
}

function mode(p: string): number {
  return fs.statSync(p).mode & 0o777;
}

let caA: Ca;
let caAChanged: Ca;
let caB: Ca;
let alice: { keyPem: string; certPem: string };
let carol: { keyPem: string; certPem: string };
let tmp: string;
let home: HomeStore;

beforeAll(async () => {
  caA = await createDomainCa('a.test');
  caAChanged = await createDomainCa('a.test');
  caB = await createDomainCa('b.test');
  alice = await identityFor(caA, 'alice@a.test');
  carol = await identityFor(caB, 'carol@b.test');
});

beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-home-'));
  home = new HomeStore(path.join(tmp, 'home'));
});

afterEach(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('identities', () => {
  it('saves key.pem 0600 in 0700 directories and loads it back', () => {
    expect(home.hasIdentity('alice@a.test')).toBe(false);
    home.saveIdentity('Alice@A.test', alice.keyPem, alice.certPem);
    const dir = home.identityDir('alice@a.test');
    expect(dir).toBe(path.join(tmp, 'home', 'identities', 'alice@a.test'));
    expect(mode(path.join(dir, 'key.pem'))).toBe(0o600);
    expect(mode(dir)).toBe(0o700);
    expect(mode(path.join(tmp, 'home', 'identities'))).toBe(0o700);
    expect(mode(path.join(tmp, 'home'))).toBe(0o700);
    expect(fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8')).toBe(alice.certPem);
    expect(home.hasIdentity('alice@a.test')).toBe(true);
    expect(home.loadIdentity('alice@a.test')).toEqual({ address: 'alice@a.test', keyPem: alice.keyPem, certPem: alice.certPem });
  });

  it('tightens an identity directory that already existed with loose modes', () => {
    fs.mkdirSync(path.join(tmp, 'home', 'identities', 'alice@a.test'), { recursive: true, mode: 0o755 });
    fs.chmodSync(path.join(tmp, 'home', 'identities'), 0o755);
    fs.chmodSync(path.join(tmp, 'home', 'identities', 'alice@a.test'), 0o755);
    home.saveIdentity('alice@a.test', alice.keyPem, alice.certPem);
    expect(mode(path.join(tmp, 'home', 'identities'))).toBe(0o700);
    expect(mode(home.identityDir('alice@a.test'))).toBe(0o700);
  });

  it('replaces a stored key without leaving temporary files', async () => {
    home.saveIdentity('alice@a.test', alice.keyPem, alice.certPem);
    const renewed = await identityFor(caA, 'alice@a.test');
    home.saveIdentity('alice@a.test', renewed.keyPem, renewed.certPem);
    expect(home.loadIdentity().keyPem).toBe(renewed.keyPem);
    expect(fs.readdirSync(home.identityDir('alice@a.test')).sort()).toEqual(['cert.pem', 'key.pem']);
    expect(mode(path.join(home.identityDir('alice@a.test'), 'key.pem'))).toBe(0o600);
  });

  it('refuses to save a key that does not match, or a certificate for someone else', () => {
    expect(thrown(() => home.saveIdentity('alice@a.test', carol.keyPem, alice.certPem)).code).toBe('CertificateInvalid');
    expect(thrown(() => home.saveIdentity('alice@a.test', carol.keyPem, carol.certPem)).code).toBe('CertificateInvalid');
    expect(home.hasIdentity('alice@a.test')).toBe(false);
  });

  it('refuses addresses that could escape the home directory', () => {
    for (const bad of ['../x@a.test', 'alice@../../etc', 'alice/x@a.test', 'alice@a.test/..']) {
      expect(thrown(() => home.identityDir(bad)).code).toBe('InvalidName');
    }
  });

  it('says how to get an identity when there is none', () => {
    const err = thrown(() => home.loadIdentity());
    expect(err.code).toBe('NoIdentity');
    expect(err.message).toBe(`no identity in ${home.dir}: run \`vertex register user@domain\` first`);
    expect(thrown(() => home.loadIdentity('alice@a.test')).code).toBe('NoIdentity');
  });

  it('uses the only identity, and default-identity when there are several', () => {
    home.saveIdentity('carol@b.test', carol.keyPem, carol.certPem);
    expect(home.loadIdentity().address).toBe('carol@b.test');
    home.saveIdentity('alice@a.test', alice.keyPem, alice.certPem);
    expect(home.listIdentities()).toEqual(['alice@a.test', 'carol@b.test']);
    expect(thrown(() => home.loadIdentity()).code).toBe('NoIdentity');
    home.setDefaultIdentity('carol@b.test');
    expect(fs.readFileSync(path.join(home.dir, DEFAULT_IDENTITY_FILE), 'utf8')).toBe('carol@b.test\n');
    expect(home.loadIdentity().address).toBe('carol@b.test');
    home.setDefaultIdentity('alice@a.test');
    expect(home.loadIdentity().address).toBe('alice@a.test');
    expect(thrown(() => home.setDefaultIdentity('dave@a.test')).code).toBe('NoIdentity');
  });

  it('lists only complete identities', () => {
    home.saveIdentity('alice@a.test', alice.keyPem, alice.certPem);
    fs.mkdirSync(path.join(home.dir, 'identities', 'half@a.test'));
    fs.writeFileSync(path.join(home.dir, 'identities', 'half@a.test', 'key.pem'), alice.keyPem);
    fs.mkdirSync(path.join(home.dir, 'identities', 'not an address'));
    expect(home.listIdentities()).toEqual(['alice@a.test']);
    expect(new HomeStore(path.join(tmp, 'nowhere')).listIdentities()).toEqual([]);
  });

  it('refuses to load a tampered certificate or a mismatched pair', () => {
    home.saveIdentity('alice@a.test', alice.keyPem, alice.certPem);
    const certFile = path.join(home.identityDir('alice@a.test'), 'cert.pem');
    fs.writeFileSync(certFile, carol.certPem);
    expect(thrown(() => home.loadIdentity('alice@a.test')).code).toBe('CertificateInvalid');
    fs.writeFileSync(certFile, alice.certPem.replace(/[A-Za-z0-9]{10}\n/, '!!!!!!!!!!\n'));
    expect(thrown(() => home.loadIdentity('alice@a.test')).code).toBe('CertificateInvalid');
    fs.writeFileSync(certFile, alice.certPem);
    fs.writeFileSync(path.join(home.identityDir('alice@a.test'), 'key.pem'), carol.keyPem);
    expect(thrown(() => home.loadIdentity('alice@a.test')).code).toBe('CertificateInvalid');
  });
});

describe('pinned domain CAs', () => {
  it('pins on first sight, matches afterwards, and stores the CA for offline use', () => {
    expect(home.loadCaFor('a.test')).toBeNull();
    expect(home.pinDomainCa('a.test', caA.certPem)).toBe('new');
    const text = fs.readFileSync(home.knownDomainsPath(), 'utf8');
    expect(parseKnownDomains(text).get('a.test')).toBe(certificateFingerprint(caA.certPem));
    expect(text).toMatch(/^#/);
    expect(home.pinDomainCa('A.Test', caA.certPem)).toBe('match');
    expect(home.loadCaFor('a.test')).toBe(caA.certPem);
    expect(home.pinDomainCa('b.test', caB.certPem)).toBe('new');
    const known = parseKnownDomains(fs.readFileSync(home.knownDomainsPath(), 'utf8'));
    expect([...known.keys()]).toEqual(['a.test', 'b.test']);
    expect(home.loadCaFor('b.test')).toBe(caB.certPem);
    expect(mode(path.join(home.dir, 'cas'))).toBe(0o700);
  });

  it('refuses a changed CA, naming both fingerprints and the file, and changes nothing', () => {
    home.pinDomainCa('a.test', caA.certPem);
    const before = fs.readFileSync(home.knownDomainsPath(), 'utf8');
    const err = thrown(() => home.pinDomainCa('a.test', caAChanged.certPem));
    expect(err.code).toBe('CaChanged');
    expect(err.message).toContain(certificateFingerprint(caA.certPem));
    expect(err.message).toContain(certificateFingerprint(caAChanged.certPem));
    expect(err.message).toContain(home.knownDomainsPath());
    expect(fs.readFileSync(home.knownDomainsPath(), 'utf8')).toBe(before);
    expect(home.loadCaFor('a.test')).toBe(caA.certPem);
  });

  it('accepts the new CA once the user removes its line', () => {
    home.pinDomainCa('a.test', caA.certPem);
    home.pinDomainCa('b.test', caB.certPem);
    const file = home.knownDomainsPath();
    fs.writeFileSync(file, fs.readFileSync(file, 'utf8').split('\n').filter((l) => !l.startsWith('a.test ')).join('\n'));
    expect(home.loadCaFor('a.test')).toBeNull();
    expect(home.pinDomainCa('a.test', caAChanged.certPem)).toBe('new');
    expect(home.loadCaFor('a.test')).toBe(caAChanged.certPem);
    expect(home.loadCaFor('b.test')).toBe(caB.certPem);
  });

  it('keeps lines written by hand and appends after a missing final newline', () => {
    fs.mkdirSync(home.dir, { recursive: true });
    fs.writeFileSync(home.knownDomainsPath(), `# mine\nb.test ${certificateFingerprint(caB.certPem)}`);
    expect(home.pinDomainCa('b.test', caB.certPem)).toBe('match');
    expect(home.pinDomainCa('a.test', caA.certPem)).toBe('new');
    const text = fs.readFileSync(home.knownDomainsPath(), 'utf8');
    expect(text.startsWith('# mine\n')).toBe(true);
    expect([...parseKnownDomains(text).keys()]).toEqual(['b.test', 'a.test']);
  });

  it('refuses a stored CA file that no longer matches its pin', () => {
    home.pinDomainCa('a.test', caA.certPem);
    fs.writeFileSync(path.join(home.dir, 'cas', 'a.test.pem'), caAChanged.certPem);
    expect(thrown(() => home.loadCaFor('a.test')).code).toBe('CertificateInvalid');
  });

  it('refuses a certificate that is not the CA of that domain', () => {
    expect(thrown(() => home.pinDomainCa('a.test', caB.certPem)).code).toBe('CertificateInvalid');
    expect(thrown(() => home.pinDomainCa('a.test', alice.certPem)).code).toBe('CertificateInvalid');
    expect(fs.existsSync(home.knownDomainsPath())).toBe(false);
  });

  it('refuses a corrupt known_domains instead of trusting anew', () => {
    fs.mkdirSync(home.dir, { recursive: true });
    fs.writeFileSync(home.knownDomainsPath(), 'a.test not-a-fingerprint\n');
    const err = thrown(() => home.pinDomainCa('a.test', caA.certPem));
    expect(err.code).toBe('Config');
    expect(err.message).toContain(home.knownDomainsPath());
  });
});

describe('writeFileAtomic', () => {
  it('sets the mode exactly and leaves no temporary file when the target cannot be written', () => {
    const file = path.join(tmp, 'f.pem');
    writeFileAtomic(file, 'one', 0o600);
    expect(mode(file)).toBe(0o600);
    writeFileAtomic(file, 'two', 0o644);
    expect(fs.readFileSync(file, 'utf8')).toBe('two');
    expect(mode(file)).toBe(0o644);
    fs.mkdirSync(path.join(tmp, 'dir.pem'));
    fs.writeFileSync(path.join(tmp, 'dir.pem', 'x'), 'x');
    expect(thrown(() => writeFileAtomic(path.join(tmp, 'dir.pem'), 'three', 0o600)).code).toBe('Internal');
    expect(fs.readdirSync(tmp).sort()).toEqual(['dir.pem', 'f.pem']);
  });
});
