/**
 * Accounts and certificates: registration (open | invite | closed), password
 * logins that issue a certificate, renewal, and checking the certificates
 * clients present. Pure policy over an AccountStore and the domain CAs; no
 * sockets.
 */
import { randomBytes } from 'node:crypto';
import { parseAddress, formatAddress } from '../q2q/address';
import { vertexError } from '../q2q/errors';
import { describeCertificate, issueUserCertificate, verifyUserCertificate } from '../q2q/identity';
import { MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, MAX_PEM_LENGTH } from '../q2q/control/protocol';
import type { Logger } from '../q2q/util/log';
import type { AccountStore } from './store/account-store';
import type { DomainCa } from './ca-store';
import { DUMMY_PASSWORD_HASH, hashPassword, needsRehash, verifyPassword } from './password';
import { AccountLocks, LoginRateLimiter, type LoginLimits } from './rate-limiter';

import type { RegistrationMode } from '../config/schema';

export type { RegistrationMode };

export const INVITE_LIFETIME_MS = 7 * 24 * 3600 * 1000;

export interface AccountServiceOptions {
  store: AccountStore;
  cas: Map<string, DomainCa>;
  registration: RegistrationMode;
  certificateLifetimeMs: number;
  log: Logger;
  now?: () => number;
  /** Password and registration budgets (server.yaml limits:); defaults in rate-limiter.ts. */
  loginLimits?: Partial<LoginLimits>;
}

export interface IssuedIdentity {
  certPem: string;
  caPem: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export function validatePassword(password: string, context: string): void {
  if (password.length < MIN_PASSWORD_LENGTH) {
    throw vertexError('BadRequest', `${context}: password too short; use at least ${MIN_PASSWORD_LENGTH} characters`);
  }
  if (password.length > MAX_PASSWORD_LENGTH) {
    throw vertexError('BadRequest', `${context}: password longer than ${MAX_PASSWORD_LENGTH} characters`);
  }
}

export function newInviteCode(): string {
  // A code that starts with '-' reads as a flag: `vertex register --invite -4Tm…` failed (1 in 64).
  for (;;) {
    const code = randomBytes(12).toString('base64url');
    if (!code.startsWith('-')) return code;
  }
}

export class AccountService {
  readonly #store: AccountStore;
  readonly #cas: Map<string, DomainCa>;
  readonly #registration: RegistrationMode;
  readonly #lifetimeMs: number;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #limiter: LoginRateLimiter;
  readonly #locks: AccountLocks;

  constructor(opts: AccountServiceOptions) {
    this.#store = opts.store;
    this.#cas = opts.cas;
    this.#registration = opts.registration;
    this.#lifetimeMs = opts.certificateLifetimeMs;
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
    this.#limiter = new LoginRateLimiter(opts.store, { now: this.#now, ...(opts.loginLimits ? { limits: opts.loginLimits } : {}) });
    this.#locks = new AccountLocks(this.#limiter.limits.maxWaitingPerAccount);
  }

  get domains(): string[] {
    return [...this.#cas.keys()];
  }

  caFor(domain: string): DomainCa {
    const ca = this.#cas.get(domain.toLowerCase());
    if (!ca) {
      throw vertexError('UnknownDomain', `this server does not serve ${domain}; it serves ${this.domains.join(', ')}`);
    }
    return ca;
  }

  async register(req: { address: string; password: string; csrPem: string; invite?: string; sourceAddress: string }): Promise<IssuedIdentity> {
    const address = parseAddress(req.address);
    const name = formatAddress(address);
    this.caFor(address.domain);
    validatePassword(req.password, `register ${name}`);
    this.#checkPemSize(req.csrPem, 'register');
    switch (this.#registration) {
      case 'closed':
        throw vertexError('RegistrationClosed', `register ${name}: this server does not accept registrations; ask its operator to run \`vertex server add-user ${name}\``);
      case 'invite':
        if (!req.invite) throw vertexError('BadInvite', `register ${name}: this server needs an invitation code (--invite CODE)`);
        break;
      case 'open':
        break;
      default: {
        const never: never = this.#registration;
        throw new Error(`unknown registration mode ${String(never)}`);
      }
    }
    // Counted before any store lookup or scrypt work, atomically (rate-limiter.ts).
    await this.#limiter.takeRegistration(req.sourceAddress, this.#registration === 'invite');
    if (await this.#store.getAccount(address.domain, address.user)) {
      throw vertexError('NameTaken', `register ${name}: the name is taken; choose another or use \`vertex login ${name}\``);
    }
    // Check the CSR before the account exists, so a bad request leaves nothing behind.
    const issued = await this.#issue(name, req.csrPem);
    // A wrong code fails here, before the scrypt work (registerAccount still checks and uses it atomically).
    if (this.#registration === 'invite' && !await this.#store.inviteUsable(address.domain, req.invite ?? '', this.#now())) {
      throw vertexError('BadInvite', `register ${name}: the invitation code is unknown, used or expired`);
    }
    const passwordHash = await hashPassword(req.password);
    // The invite, the account and its first certificate in one transaction: a server
    // that dies part way (a node killed, issue 14) leaves all or nothing behind.
    await this.#store.registerAccount({
      domain: address.domain, user: address.user, passwordHash,
      certificate: { serial: issued.serial, notBefore: issued.notBefore.getTime(), notAfter: issued.notAfter.getTime() },
      ...(this.#registration === 'invite' && { invite: { code: req.invite ?? '', now: this.#now() } }),
    });
    if (this.#registration === 'invite') await this.#limiter.inviteAccepted(req.sourceAddress);
    this.#log.info({ address: name, serial: issued.serial, source: req.sourceAddress }, 'account registered');
    return issued;
  }

  async signWithPassword(req: { address: string; password: string; csrPem: string; sourceAddress: string }): Promise<IssuedIdentity> {
    const address = parseAddress(req.address);
    const name = formatAddress(address);
    this.caFor(address.domain);
    this.#checkPemSize(req.csrPem, 'sign');
    if (req.password.length > MAX_PASSWORD_LENGTH) throw vertexError('BadPassword', `sign ${name}: wrong password`);
    // The attempt is counted (atomically, all budgets or none) before any
    // scrypt work, and only one check per account runs at a time.
    const ticket = await this.#limiter.takeLogin(name, req.sourceAddress);
    await this.#locks.run(name, async () => {
      const account = await this.#store.getAccount(address.domain, address.user);
      const ok = await verifyPassword(req.password, account?.passwordHash ?? DUMMY_PASSWORD_HASH);
      if (!account) throw vertexError('NoSuchUser', `sign ${name}: no such account on this server`);
      if (!ok) {
        this.#log.warn({ address: name, source: req.sourceAddress }, 'wrong password');
        throw vertexError('BadPassword', `sign ${name}: wrong password`);
      }
      await this.#limiter.loginSucceeded(ticket, name, req.sourceAddress);
      if (needsRehash(account.passwordHash)) {
        // Old parameters (N=2^14 before issue 11): the password is known right now, so upgrade the hash.
        await this.#store.setPasswordHash(address.domain, address.user, await hashPassword(req.password));
        this.#log.info({ address: name }, 'password hash upgraded to current scrypt parameters');
      }
    });
    const issued = await this.#issue(name, req.csrPem);
    await this.#record(name, issued);
    this.#log.info({ address: name, serial: issued.serial, source: req.sourceAddress }, 'certificate issued');
    return issued;
  }

  /**
   * A new certificate for `name`, asked for with its current certificate
   * (serial `currentSerial`). The caller checks that certificate when the
   * request is made (ControlSession); a revocation or removal that lands
   * while the new one is being issued is caught here, after it is recorded:
   * then the new certificate is revoked too and nothing is returned, so a
   * revoked certificate can never be traded for a good one (issue 11).
   */
  async renew(name: string, csrPem: string, currentSerial?: string): Promise<IssuedIdentity> {
    this.#checkPemSize(csrPem, 'renew');
    const address = parseAddress(name);
    if (!await this.#store.getAccount(address.domain, address.user)) throw vertexError('NoSuchUser', `renew ${name}: the account was removed`);
    const issued = await this.#issue(name, csrPem);
    await this.#record(name, issued);
    if (currentSerial !== undefined) {
      const current = await this.#store.getCertificate(currentSerial);
      const account = await this.#store.getAccount(address.domain, address.user);
      if (!current || current.revokedAt !== null || !account) {
        await this.#store.revokeCertificate(issued.serial);
        this.#log.warn({ address: name, serial: currentSerial, withdrawn: issued.serial }, 'renewal withdrawn: the certificate was revoked meanwhile');
        throw vertexError('CertificateRevoked', `renew ${name}: certificate ${currentSerial} is revoked`);
      }
    }
    this.#log.info({ address: name, serial: issued.serial }, 'certificate renewed');
    return issued;
  }

  /**
   * cert-status for this server's own domains: which of these serials are
   * not good. A serial this server never issued for that domain counts as
   * revoked (no certificate of ours can carry it), and so does one whose
   * account is gone.
   */
  async revokedAmong(entries: ReadonlyArray<{ domain: string; serial: string }>): Promise<string[]> {
    const revoked: string[] = [];
    for (const { domain, serial } of entries) {
      if (!this.#cas.has(domain)) continue;
      const record = await this.#store.getCertificate(serial);
      if (!record || record.domain !== domain || record.revokedAt !== null || !await this.#store.getAccount(record.domain, record.user)) {
        revoked.push(serial);
      }
    }
    return revoked;
  }

  /**
   * Checks a certificate a client presented in TLS: issued by one of our CAs,
   * in date, for an existing account, not revoked. Returns the address it names.
   */
  async authenticateCertificate(certPem: string): Promise<string> {
    const info = describeCertificate(certPem);
    const ca = this.#cas.get(info.issuerCn.toLowerCase());
    if (!ca) throw vertexError('CertificateInvalid', `client certificate issued by "${info.issuerCn}", which this server does not serve`);
    verifyUserCertificate(certPem, ca.certPem, { now: new Date(this.#now()) });
    const name = info.q2qAddress ?? '';
    const address = parseAddress(name);
    const record = await this.#store.getCertificate(info.serial);
    if (!record) throw vertexError('CertificateInvalid', `client certificate ${info.serial} was not issued by this server`);
    if (record.revokedAt !== null) throw vertexError('CertificateRevoked', `client certificate ${info.serial} for ${name} is revoked`);
    if (!await this.#store.getAccount(address.domain, address.user)) throw vertexError('NoSuchUser', `client certificate names ${name}, which no longer exists`);
    return formatAddress(address);
  }

  #checkPemSize(pem: string, command: string): void {
    if (pem.length > MAX_PEM_LENGTH) throw vertexError('BadRequest', `${command}: certificate request larger than ${MAX_PEM_LENGTH} bytes`);
  }

  async #issue(name: string, csrPem: string): Promise<IssuedIdentity> {
    const ca = this.caFor(parseAddress(name).domain);
    const cert = await issueUserCertificate({
      caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem, expectedAddress: name,
      lifetimeMs: this.#lifetimeMs, now: new Date(this.#now()),
    });
    return { certPem: cert.certPem, caPem: ca.certPem, serial: cert.serial, notBefore: cert.notBefore, notAfter: cert.notAfter };
  }

  async #record(name: string, issued: IssuedIdentity): Promise<void> {
    const address = parseAddress(name);
    await this.#store.recordCertificate({
      serial: issued.serial, domain: address.domain, user: address.user,
      notBefore: issued.notBefore.getTime(), notAfter: issued.notAfter.getTime(),
    });
  }
}
