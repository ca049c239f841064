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
  /** Agent → its home server: {services: JSON string[]} → {}. Replaces the set. */
  listen: 'listen',
  /** Caller → listener's server: {to, service, candidates, routes} → {token, candidates, certificate, relay}.
   *  Server → listener: {from, service, certificate, candidates, routes} → {token, candidates}. */
  inbound: 'inbound',
  /** Server → the listener's session that answered an inbound: {token} → {}. The caller's relay
   *  leg for that token is in; only now does the listener open its own (DESIGN.md). */
  relayReady: 'relay-ready',
  /** Home server → its online agents (push): {serials: JSON [serial], addresses: JSON [user@domain]} → {}.
   *  Peer streams whose certificate has one of the serials, or names one of the addresses, close. */
  revoked: 'revoked',
  /** Agent or server → a server: {certificates: JSON [{domain, serial}]} (at most 256) → {revoked: JSON [serial]}. */
  certStatus: 'cert-status',
} as const;

/** ALPN names on the server port: control sessions, and relay legs that become raw byte pipes. */
export const ALPN_CONTROL = 'q2q/2';
export const ALPN_RELAY = 'q2q-relay/2';

/** How long an inbound token stays claimable, on the listener and for relay legs. */
export const TOKEN_LIFETIME_MS = 30_000;
/** How long the server waits for a listener to answer a forwarded inbound. */
export const INBOUND_FORWARD_TIMEOUT_MS = 10_000;
/** How long a relay leg waits at the server for its other half. */
export const RELAY_PAIRING_TIMEOUT_MS = 15_000;

/** Arguments larger than this are refused before any work is done. */
export const MAX_PASSWORD_LENGTH = 1024;
export const MIN_PASSWORD_LENGTH = 8;
export const MAX_PEM_LENGTH = 16 * 1024;
