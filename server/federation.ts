/**
 * Users of other domains: their certificates are checked against their
 * domain's CA, fetched from that domain's own server on first use and pinned
 * in <data_dir>/known_domains, with the same rules agents use.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { vertexError } from '../q2q/errors';
import { certificateFingerprint, checkPinnedCa, formatKnownDomainLine, parseKnownDomains, verifyUserCertificate } from '../q2q/identity';
import type { ServerResolver } from '../q2q/control/discovery';
import { openServerConnection, type CaTrust } from '../q2q/control/server-connection';
import type { Logger } from '../q2q/util/log';

export const KNOWN_DOMAINS_FILE = 'known_domains';

/** known_domains plus the CA certificates themselves, under the server's data directory. */
class ServerTrustFile implements CaTrust {
  readonly #file: string;
  readonly #caDir: string;

  constructor(dataDir: string) {
    this.#file = path.join(dataDir, KNOWN_DOMAINS_FILE);
    this.#caDir = path.join(dataDir, 'foreign-ca');
  }

  pinDomainCa(domain: string, caCertPem: string): 'new' | 'match' {
    const text = fs.existsSync(this.#file) ? fs.readFileSync(this.#file, 'utf8') : '';
    const result = checkPinnedCa(parseKnownDomains(text, this.#file), domain, caCertPem, this.#file);
    fs.mkdirSync(this.#caDir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(path.join(this.#caDir, `${domain}.pem`), caCertPem);
    if (result === 'new') fs.appendFileSync(this.#file, `${formatKnownDomainLine(domain, certificateFingerprint(caCertPem))}`);
    return result;
  }

  cached(domain: string): string | null {
    const file = path.join(this.#caDir, `${domain}.pem`);
    if (!fs.existsSync(file)) return null;
    const pem = fs.readFileSync(file, 'utf8');
    // Re-check the pin: the cached file is only a copy of what known_domains vouches for.
    this.pinDomainCa(domain, pem);
    return pem;
  }
}

export class Federation {
  readonly #trust: ServerTrustFile;
  readonly #resolve: ServerResolver;
  readonly #log: Logger;
  readonly #inflight = new Map<string, Promise<string>>();

  constructor(opts: { dataDir: string; resolve: ServerResolver; log: Logger }) {
    this.#trust = new ServerTrustFile(opts.dataDir);
    this.#resolve = opts.resolve;
    this.#log = opts.log;
  }

  /** The CA of a foreign domain, from the pinned copy or fetched from its server (once at a time). */
  async caFor(domain: string): Promise<string> {
    const cached = this.#trust.cached(domain);
    if (cached) return cached;
    let pending = this.#inflight.get(domain);
    if (!pending) {
      pending = (async () => {
        const connection = await openServerConnection({ domain, resolve: this.#resolve, trust: this.#trust, log: this.#log });
        connection.close();
        this.#log.info({ domain }, 'pinned foreign domain CA');
        return connection.caPem;
      })().finally(() => this.#inflight.delete(domain));
      this.#inflight.set(domain, pending);
    }
    return pending;
  }

  /** Verifies a foreign user's certificate; returns the address it names. */
  async authenticate(certPem: string, domain: string, address: string): Promise<string> {
    let ca: string;
    try {
      ca = await this.caFor(domain);
    } catch (err) {
      throw vertexError('CertificateInvalid', `cannot check a certificate of ${domain}: its server's CA is unavailable (${(err as Error).message})`, err);
    }
    verifyUserCertificate(certPem, ca, { expectedAddress: address });
    return address;
  }
}
