/**
 * Q2Q/2 control protocol: command names and the version exchanged in the
 * first box. Both the server and the agent import these, so the vocabulary
 * lives in one place.
 */

export const PROTOCOL_VERSION = '2';
export const SOFTWARE = 'vertex/0.1.0';

/** The TCP and UDP port a domain's identity server listens on. */
export const DEFAULT_SERVER_PORT = 8788;

export const COMMANDS = {
  /** First box on every control connection: {version} → {version, software}. */
  hello: 'hello',
  /** {domain} → {ca}: the domain's CA certificate (PEM). */
  identify: 'identify',
  /** {address, password, csr, invite?} → {certificate, ca}. */
  register: 'register',
  /** {address, password, csr} → {certificate, ca}: a new certificate for an existing account (login). */
  sign: 'sign',
  /** {csr} → {certificate}: renewal, authenticated by the client certificate. */
  renew: 'renew',
  /** {} → {host, port}: the address the server sees for this TCP connection. */
  whoAmI: 'who-am-i',
  /** {} → {}. */
  ping: 'ping',
} as const;

/** Arguments larger than this are refused before any work is done. */
export const MAX_PASSWORD_LENGTH = 1024;
export const MIN_PASSWORD_LENGTH = 8;
export const MAX_PEM_LENGTH = 16 * 1024;
