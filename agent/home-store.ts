/**
 * The agent's home directory (`--home`, INTERFACE.md "Files"):
 *
 *     <home>/
 *       identities/<user@domain>/key.pem    private key, mode 0600
 *       identities/<user@domain>/cert.pem   certificate from the domain CA
 *       default-identity                    the address to use when none is named
 *       known_domains                       pinned domain CA fingerprints
 *       cas/<domain>.pem                    the pinned CA certificates themselves
 *       agent.yaml                          (config; not handled here)
 *
 * Directories this store creates are 0700. Every file is written to a
 * temporary name, synced and renamed, so a crash never leaves half a key.
 * The pinned CA certificates are kept beside their fingerprints so that the
 * agent can verify peers of a domain without asking that domain's server.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { asVertexError, VertexError } from '../q2q/errors';
import {
  certificateFingerprint,
  checkPinnedCa,
  describeCertificate,
  formatKnownDomainLine,
  keyMatchesCertificate,
  normaliseAddress,
  normaliseDomain,
  parseKnownDomains,
  type PinResult,
} from '../q2q/identity';

export const IDENTITIES_DIR = 'identities';
export const CAS_DIR = 'cas';
export const KEY_FILE = 'key.pem';
export const CERT_FILE = 'cert.pem';
export const DEFAULT_IDENTITY_FILE = 'default-identity';
export const KNOWN_DOMAINS_FILE = 'known_domains';

const DIR_MODE = 0o700;
const KEY_MODE = 0o600;
const PUBLIC_MODE = 0o644;

const KNOWN_DOMAINS_HEADER =
  '# Pinned domain CAs (like ssh known_hosts): one "domain SHA256:fingerprint" per line.\n' +
  '# Vertex adds a line the first time it meets a domain and refuses a different CA later.\n' +
  '# Remove a line only when you know that domain replaced its CA.\n';

export interface StoredIdentity {
  address: string;
  keyPem: string;
  certPem: string;
}

export class HomeStore {
  readonly dir: string;

  constructor(homeDir: string) {
    this.dir = path.resolve(homeDir);
  }

  identityDir(address: string): string {
    return path.join(this.dir, IDENTITIES_DIR, normaliseAddress(address, 'identity'));
  }

  hasIdentity(address: string): boolean {
    const dir = this.identityDir(address);
    return fs.existsSync(path.join(dir, KEY_FILE)) && fs.existsSync(path.join(dir, CERT_FILE));
  }

  /** Stores a key and its certificate, after checking that they belong together and to `address`. */
  saveIdentity(address: string, keyPem: string, certPem: string): void {
    const name = normaliseAddress(address, 'save identity');
    const named = describeCertificate(certPem).q2qAddress;
    if (named === null || named.toLowerCase() !== name) {
      throw new VertexError('CertificateInvalid', `save identity ${name}: the certificate names ${named ?? 'no q2q address'}`);
    }
    if (!keyMatchesCertificate(keyPem, certPem)) {
      throw new VertexError('CertificateInvalid', `save identity ${name}: the key does not match the certificate`);
    }
    const dir = this.identityDir(name);
    this.#makePrivateDir(path.join(this.dir, IDENTITIES_DIR));
    this.#makePrivateDir(dir);
    // Key first: if we stop between the two, loadIdentity reports the mismatch instead of using a stale key.
    writeFileAtomic(path.join(dir, KEY_FILE), keyPem, KEY_MODE);
    writeFileAtomic(path.join(dir, CERT_FILE), certPem, PUBLIC_MODE);
  }

  /**
   * The named identity, or without a name: the one in `default-identity`,
   * else the only one. Throws NoIdentity when there is none to choose.
   */
  loadIdentity(address?: string): StoredIdentity {
    const name = address === undefined ? this.#chooseIdentity() : normaliseAddress(address, 'load identity');
    if (!this.hasIdentity(name)) {
      throw new VertexError('NoIdentity', `no identity for ${name} in ${this.dir}: run \`vertex register ${name}\` first`);
    }
    const dir = this.identityDir(name);
    const keyPem = readText(path.join(dir, KEY_FILE));
    const certPem = readText(path.join(dir, CERT_FILE));
    const context = `load identity ${name} from ${dir}`;
    const named = describeCertificate(certPem).q2qAddress;
    if (named === null || named.toLowerCase() !== name) {
      throw new VertexError('CertificateInvalid', `${context}: ${CERT_FILE} names ${named ?? 'no q2q address'}`);
    }
    if (!keyMatchesCertificate(keyPem, certPem)) {
      throw new VertexError('CertificateInvalid', `${context}: ${KEY_FILE} does not match ${CERT_FILE}; run \`vertex login ${name}\` for a new pair`);
    }
    return { address: name, keyPem, certPem };
  }

  /** Addresses with both a key and a certificate, sorted. */
  listIdentities(): string[] {
    const root = path.join(this.dir, IDENTITIES_DIR);
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(root, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw asVertexError(err, 'Internal', `list identities in ${root}`);
    }
    const found: string[] = [];
    for (const entry of entries) {
      if (!entry.isDirectory()) continue;
      let name: string;
      try {
        name = normaliseAddress(entry.name);
      } catch {
        continue;
      }
      if (name === entry.name && this.hasIdentity(name)) found.push(name);
    }
    return found.sort();
  }

  setDefaultIdentity(address: string): void {
    const name = normaliseAddress(address, 'set default identity');
    if (!this.hasIdentity(name)) {
      throw new VertexError('NoIdentity', `set default identity: no identity for ${name} in ${this.dir}: run \`vertex register ${name}\` first`);
    }
    writeFileAtomic(path.join(this.dir, DEFAULT_IDENTITY_FILE), `${name}\n`, PUBLIC_MODE);
  }

  knownDomainsPath(): string {
    return path.join(this.dir, KNOWN_DOMAINS_FILE);
  }

  /**
   * Checks a domain's CA against known_domains: pins it on first sight
   * ('new'), accepts it when it matches ('match'), and throws CaChanged
   * when it differs. The certificate itself is kept in cas/<domain>.pem.
   */
  pinDomainCa(domain: string, caCertPem: string): PinResult {
    const name = normaliseDomain(domain, 'pin domain ca');
    const file = this.knownDomainsPath();
    const text = readTextIfExists(file);
    const result = checkPinnedCa(parseKnownDomains(text ?? '', file), name, caCertPem, file);
    const caFile = this.#caFile(name);
    const stored = readTextIfExists(caFile);
    if (stored === null || !sameCertificate(stored, caCertPem)) {
      this.#makeHomeDir();
      this.#makePrivateDir(path.join(this.dir, CAS_DIR));
      writeFileAtomic(caFile, caCertPem, PUBLIC_MODE);
    }
    if (result === 'new') {
      const line = formatKnownDomainLine(name, certificateFingerprint(caCertPem));
      if (text === null) {
        writeFileAtomic(file, KNOWN_DOMAINS_HEADER + line, PUBLIC_MODE);
      } else {
        // Appending (O_APPEND) keeps lines other processes added since we read the file.
        fs.appendFileSync(file, (text === '' || text.endsWith('\n') ? '' : '\n') + line);
      }
    }
    return result;
  }

  /**
   * The pinned CA certificate of a domain, or null when the domain is not
   * pinned or its certificate was never stored. A stored certificate that no
   * longer matches its pin is refused.
   */
  loadCaFor(domain: string): string | null {
    const name = normaliseDomain(domain, 'load domain ca');
    const file = this.knownDomainsPath();
    const text = readTextIfExists(file);
    if (text === null) return null;
    const pinned = parseKnownDomains(text, file).get(name);
    if (pinned === undefined) return null;
    const caFile = this.#caFile(name);
    const pem = readTextIfExists(caFile);
    if (pem === null) return null;
    let actual: string;
    try {
      actual = certificateFingerprint(pem);
    } catch (err) {
      throw new VertexError('CertificateInvalid', `load domain ca ${name}: ${caFile} is not a readable certificate`, { cause: err });
    }
    if (actual !== pinned) {
      throw new VertexError(
        'CertificateInvalid',
        `load domain ca ${name}: ${caFile} has fingerprint ${actual}, but ${file} pins ${pinned}; delete ${caFile} to fetch it again`,
      );
    }
    return pem;
  }

  #caFile(domain: string): string {
    return path.join(this.dir, CAS_DIR, `${domain}.pem`);
  }

  #chooseIdentity(): string {
    const all = this.listIdentities();
    const preferred = readTextIfExists(path.join(this.dir, DEFAULT_IDENTITY_FILE))?.trim();
    if (preferred) {
      const name = normaliseAddress(preferred, `${path.join(this.dir, DEFAULT_IDENTITY_FILE)}`);
      if (all.includes(name)) return name;
      throw new VertexError(
        'NoIdentity',
        `${path.join(this.dir, DEFAULT_IDENTITY_FILE)} names ${name}, which has no identity in ${this.dir}: run \`vertex register ${name}\` first`,
      );
    }
    const only = all[0];
    if (all.length === 1 && only !== undefined) return only;
    if (all.length === 0) {
      throw new VertexError('NoIdentity', `no identity in ${this.dir}: run \`vertex register user@domain\` first`);
    }
    throw new VertexError(
      'NoIdentity',
      `several identities in ${this.dir} (${all.join(', ')}) and no ${DEFAULT_IDENTITY_FILE}: name one, or write it to ${path.join(this.dir, DEFAULT_IDENTITY_FILE)}`,
    );
  }

  /** The home directory itself is made private only when we create it; an existing one is the user's choice. */
  #makeHomeDir(): void {
    if (!fs.existsSync(this.dir)) fs.mkdirSync(this.dir, { recursive: true, mode: DIR_MODE });
  }

  #makePrivateDir(dir: string): void {
    this.#makeHomeDir();
    fs.mkdirSync(dir, { recursive: true, mode: DIR_MODE });
    fs.chmodSync(dir, DIR_MODE);
  }
}

/** Writes through a unique temporary name, syncs, then renames over `file`. */
export function writeFileAtomic(file: string, text: string, mode: number): void {
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  let fd: number | null = null;
  try {
    fd = fs.openSync(tmp, 'wx', mode);
    fs.fchmodSync(fd, mode);
    fs.writeSync(fd, text);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(tmp, file);
  } catch (err) {
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw asVertexError(err, 'Internal', `write ${file}`);
  }
  syncDir(path.dirname(file));
}

/** Makes the rename itself durable; some filesystems refuse to sync a directory, which only costs durability. */
function syncDir(dir: string): void {
  let fd: number | null = null;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // Durability of the rename is best effort; the data file itself is already synced.
  } finally {
    if (fd !== null) fs.closeSync(fd);
  }
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw asVertexError(err, 'Internal', `read ${file}`);
  }
}

function readTextIfExists(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw asVertexError(err, 'Internal', `read ${file}`);
  }
}

function sameCertificate(a: string, b: string): boolean {
  try {
    return certificateFingerprint(a) === certificateFingerprint(b);
  } catch {
    return false;
  }
}
