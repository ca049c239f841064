/**
 * The account store interface. The embedded default is SQLite
 * (sqlite-store.ts); the interface exists so a multi-node deployment can put
 * PostgreSQL behind it later without touching the server.
 */

export interface Account {
  domain: string;
  user: string;
  /** Self-describing scrypt hash (server/password.ts). */
  passwordHash: string;
  createdAt: number;
}

export interface IssuedCertificate {
  serial: string;
  domain: string;
  user: string;
  notBefore: number;
  notAfter: number;
  revokedAt: number | null;
}

export interface AccountStore {
  getAccount(domain: string, user: string): Account | null;
  /** Throws VertexError('NameTaken') if the account exists. */
  createAccount(domain: string, user: string, passwordHash: string): Account;
  /** Removes the account and revokes every certificate issued to it. Returns false if there was none. */
  removeAccount(domain: string, user: string): boolean;
  listAccounts(domain?: string): Account[];

  recordCertificate(cert: Omit<IssuedCertificate, 'revokedAt'>): void;
  /** Returns false if the serial was never issued. */
  revokeCertificate(serial: string): boolean;
  getCertificate(serial: string): IssuedCertificate | null;

  createInvite(domain: string, code: string, expiresAt: number): void;
  /** Atomically marks the invite used; false if unknown, used or expired. */
  consumeInvite(domain: string, code: string, now: number): boolean;

  close(): void;
}
