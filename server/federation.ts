/**
 * Users of other domains: their certificates are checked against their
 * domain's CA, fetched from that domain's own server on first use and pinned
 * in <data_dir>/known_domains, with the same rules agents use.
 *
 * The name of that domain comes from a client certificate that nothing has
 * verified yet (its issuer), so it is an attacker's input (issue 11): it is
 * checked as a DNS domain name, and against `federation.allow`, before it
 * reaches the file system or the resolver. Whatever goes wrong after that is
 * told to the client as one generic line with a stable code; the details
 * (which server, which address, which errno) go to the server log only, or a
 * stranger could use this server as a port scanner.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { formatAddress, parseAddress, parseDomain } from '../q2q/address';
import { asVertexError, VertexError, vertexError } from '../q2q/errors';
import { certificateFingerprint, checkPinnedCa, formatKnownDomainLine, parseKnownDomains, verifyUserCertificate } from '../q2q/identity';
import type { ServerEndpoint, ServerResolver } from '../q2q/control/discovery';
import { openServerConnection, type CaTrust } from '../q2q/control/server-connection';
import { COMMANDS } from '../q2q/control/protocol';
import type { Logger } from '../q2q/util/log';

export const KNOWN_DOMAINS_FILE = 'known_domains';

/** known_domains plus the CA certificates themselves, under the server's data directory. */
class ServerTrustFile implements CaTrust {
  readonly #file: string;
  readonly #caDir: string;
  readonly #checkName: (domain: string) => string;

  readonly #unsafeOld: boolean;

  /** `unsafeOld` (tests only): raw names and the old cache read, issue 11's forbidden behaviour. */
  constructor(dataDir: string, unsafeOld = false) {
    this.#file = path.join(dataDir, KNOWN_DOMAINS_FILE);
    this.#caDir = path.join(dataDir, 'foreign-ca');
    this.#unsafeOld = unsafeOld;
    this.#checkName = unsafeOld ? (d) => d.toLowerCase() : parseDomain;
  }

  /** Every path below is built from a checked domain name, never from raw input (defence in depth). */
  #caFile(domain: string): string {
    return path.join(this.#caDir, `${this.#checkName(domain)}.pem`);
  }

  pinDomainCa(domain: string, caCertPem: string): 'new' | 'match' {
    const file = this.#caFile(domain);
    const text = fs.existsSync(this.#file) ? fs.readFileSync(this.#file, 'utf8') : '';
    const result = checkPinnedCa(parseKnownDomains(text, this.#file), domain, caCertPem, this.#file);
    fs.mkdirSync(this.#caDir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(file, caCertPem);
    if (result === 'new') fs.appendFileSync(this.#file, `${formatKnownDomainLine(domain, certificateFingerprint(caCertPem))}`);
    return result;
  }

  /** Whether `domain`'s CA is pinned here (a domain this server already federates with). */
  pinned(domain: string): boolean {
    return fs.existsSync(this.#caFile(domain));
  }

  cached(domain: string): string | null {
    const file = this.#caFile(domain);
    if (!fs.existsSync(file)) return null;
    // No pin (an operator removed the line after CaChanged): the copy is stale; fetch afresh.
    const text = fs.existsSync(this.#file) ? fs.readFileSync(this.#file, 'utf8') : '';
    if (!this.#unsafeOld && !parseKnownDomains(text, this.#file).has(domain.toLowerCase())) return null;
    const pem = fs.readFileSync(file, 'utf8');
    // Re-check the pin: the cached file is only a copy of what known_domains vouches for.
    this.pinDomainCa(domain, pem);
    return pem;
  }
}

export interface FederationOptions {
  dataDir: string;
  resolve: ServerResolver;
  log: Logger;
  /** Only these domains' users are admitted (server.yaml federation.allow); absent: any valid domain. */
  allow?: readonly string[];
  /** This server's own domains, named in messages ("b.test's server could not reach ..."). */
  localDomains?: readonly string[];
  /**
   * Tests only, never set by the CLI: the behaviour issue 11 forbids (raw
   * names, no allow list, network details to the client), so the federation
   * tests can show that they catch it.
   */
  unsafeForTests?: { rawNames?: boolean; ignoreAllow?: boolean; detailedRefusals?: boolean };
}

/** The errno-style code at the bottom of an error chain (ECONNREFUSED, ENOTFOUND), else its message. */
function rootCause(err: unknown): string {
  let e: unknown = err;
  for (let depth = 0; depth < 8 && e instanceof Error; depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) return code;
    if (!(e.cause instanceof Error)) break;
    e = e.cause;
  }
  return err instanceof Error ? err.message : String(err);
}

function where(endpoint: ServerEndpoint): string {
  const host = endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host;
  return `${host}:${endpoint.port}`;
}

/** What to try, by how the server was found. */
function hint(domain: string, endpoint: ServerEndpoint | undefined): string {
  if (endpoint?.via === 'override') return 'check federation.servers or --resolve';
  if (endpoint?.via === 'srv') return `check the SRV record _q2q._tcp.${domain}, or name the server in federation.servers or with --resolve ${domain}=HOST:PORT`;
  return `there is no SRV record _q2q._tcp.${domain}; name its server in federation.servers or with --resolve ${domain}=HOST:PORT`;
}

export class Federation {
  readonly #trust: ServerTrustFile;
  readonly #resolve: ServerResolver;
  readonly #log: Logger;
  readonly #allow: ReadonlySet<string> | null;
  readonly #self: string;
  readonly #unsafe: NonNullable<FederationOptions['unsafeForTests']>;
  readonly #inflight = new Map<string, Promise<string>>();

  constructor(opts: FederationOptions) {
    this.#unsafe = opts.unsafeForTests ?? {};
    this.#trust = new ServerTrustFile(opts.dataDir, this.#unsafe.rawNames === true);
    this.#resolve = opts.resolve;
    this.#log = opts.log;
    this.#allow = opts.allow ? new Set(opts.allow.map((d) => parseDomain(d))) : null;
    this.#self = opts.localDomains?.[0] ?? 'this';
  }

  /**
   * The CA of a foreign domain, from the pinned copy or fetched from its
   * server (once at a time). `domain` must already be checked; failures
   * carry the detailed, operator-facing message.
   */
  async caFor(domain: string, address = `a user of ${domain}`): Promise<string> {
    const cached = this.#trust.cached(domain);
    if (cached) return cached;
    let pending = this.#inflight.get(domain);
    if (!pending) {
      pending = this.#fetchCa(domain, address).finally(() => this.#inflight.delete(domain));
      this.#inflight.set(domain, pending);
    }
    return pending;
  }

  async #fetchCa(domain: string, address: string): Promise<string> {
    const context = `cannot check a certificate of ${address}`;
    const endpoints = await this.#resolve(domain);
    let failure: VertexError | null = null;
    for (const endpoint of endpoints) {
      try {
        // One endpoint at a time, so the message can say which one failed.
        const connection = await openServerConnection({ domain, resolve: async () => [endpoint], trust: this.#trust, log: this.#log });
        connection.close();
        this.#log.info({ domain, server: where(endpoint) }, 'pinned foreign domain CA');
        return connection.caPem;
      } catch (err) {
        const e = asVertexError(err, 'ServerUnavailable');
        // A connect failure ends in an errno (or our connect timeout); anything later is the server's answer.
        const cause = rootCause(e);
        const what = e.code === 'Timeout' ? 'did not answer (timeout)'
          : e.code === 'ServerUnavailable' && /^E[A-Z]+$/.test(cause) ? `did not answer (${cause})`
          : `answered, but ${e.message}`;
        failure = vertexError(e.code === 'CaChanged' ? 'CaChanged' : 'ServerUnavailable', `${context}: ${domain}'s server at ${where(endpoint)} ${what}; ${hint(domain, endpoint)}`, e);
        if (e.code === 'CaChanged') break;
      }
    }
    throw failure ?? vertexError('ServerUnavailable', `${context}: no server address found for ${domain}; ${hint(domain, undefined)}`);
  }

  /**
   * Whether `name` is a domain whose certificates this server may ask about:
   * a valid name, allowed by federation.allow, with its CA already pinned.
   * Only such domains' servers are ever dialled for cert-status, so an agent's
   * question cannot make this server dial a name of its choosing.
   */
  federates(name: string): boolean {
    try {
      const domain = parseDomain(name);
      if (this.#allow && !this.#allow.has(domain)) return false;
      return this.#trust.pinned(domain);
    } catch {
      return false;
    }
  }

  /**
   * One cert-status question to `domain`'s own server, about serials it
   * issued; the answer lists those it says are revoked. `domain` must pass
   * federates(). Failures carry the operator-facing detail (logged, never
   * passed to clients).
   */
  async askCertStatus(domain: string, serials: string[]): Promise<string[]> {
    const connection = await openServerConnection({ domain, resolve: this.#resolve, trust: this.#trust, log: this.#log, connectTimeoutMs: 5_000 });
    try {
      const answer = await connection.call(COMMANDS.certStatus, {
        certificates: JSON.stringify(serials.map((serial) => ({ domain, serial }))),
      }, { timeoutMs: 5_000 });
      const list = JSON.parse(answer.revoked ?? '[]') as unknown;
      if (!Array.isArray(list)) throw vertexError('ProtocolVersion', `${domain}'s server answered cert-status without a list`);
      return list.filter((s): s is string => typeof s === 'string');
    } catch (err) {
      const e = asVertexError(err, 'ServerUnavailable');
      this.#log.warn({ domain, code: e.code, reason: e.message }, 'cert-status question to the issuing server failed');
      throw e;
    } finally {
      connection.close();
    }
  }

  /**
   * Verifies a foreign user's certificate, given its unverified issuer name
   * and q2q address; returns the address. Errors are safe to show to an
   * unauthenticated client: one line, a stable code, no network details.
   */
  async authenticate(certPem: string, issuer: string, claimedAddress: string): Promise<string> {
    let domain: string;
    let address: string;
    try {
      domain = this.#unsafe.rawNames ? issuer.toLowerCase() : parseDomain(issuer);
      address = this.#unsafe.rawNames ? claimedAddress : formatAddress(parseAddress(claimedAddress));
    } catch (err) {
      this.#log.warn({ issuer: JSON.stringify(issuer.slice(0, 300)), reason: (err as Error).message }, 'client certificate refused: its issuer or address is not a valid name');
      throw vertexError('CertificateInvalid', 'client certificate refused: its issuer or q2q address is not a valid name');
    }
    if (this.#allow && !this.#allow.has(domain) && !this.#unsafe.ignoreAllow) {
      this.#log.info({ domain, address }, 'client certificate refused: domain not in federation.allow');
      throw vertexError('NotAllowed', `client certificate refused: ${this.#self} does not federate with ${domain}`);
    }
    let ca: string;
    try {
      ca = await this.caFor(domain, address);
    } catch (err) {
      const e = asVertexError(err, 'ServerUnavailable');
      this.#log.warn({ code: e.code, domain, address, reason: e.message }, 'foreign domain CA unavailable');
      if (this.#unsafe.detailedRefusals) throw e;
      throw vertexError(
        e.code === 'CaChanged' ? 'CaChanged' : 'ServerUnavailable',
        `cannot verify certificate from ${domain}: ${this.#self}'s server could not get ${domain}'s CA; its operator can see why in the server log`,
      );
    }
    verifyUserCertificate(certPem, ca, { expectedAddress: address });
    return address;
  }
}
