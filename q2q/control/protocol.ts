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
  /**
   * Agent → its home server: {services: JSON string[], device, takeover?} →
   * {device, devices: JSON string[], conflicts: JSON Conflict[], replaced?: "HOST:PORT"}.
   * Puts this session online as (address, device) with exactly these services
   * (a later listen on the same session replaces the set). `device` defaults to
   * UNNAMED_DEVICE. With takeover "0" the listen is refused (NotAllowed) while
   * another session holds (address, device): a replaced node asks that way
   * until its device is free again, so two nodes never take turns. The answer:
   * the device as recorded, every device of the address now online (sorted),
   * the conflicts this device is part of (see "Devices" below), and, when this
   * session took (address, device) over from another live session, that
   * session's remote address.
   */
  listen: 'listen',
  /**
   * Caller → listener's server: {to, device?, service, candidates, routes, from_device?} →
   *   {token, candidates, certificate, relay, device}.
   * Server → listener: {from, from_device?, service, certificate, candidates, routes} → {token, candidates}.
   * `device` picks one of the listener's devices; without it the server picks
   * by the rule below. The answer's `device` is the device that answered, and
   * `certificate` is the certificate of that device's session. `from_device` is
   * the caller's own device name, passed on as the caller stated it (any device
   * of an address holds that address's certificate, so it is a label, not a
   * proof); peers key sessions on (address, device).
   */
  inbound: 'inbound',
  /** Server → the listener's session that answered an inbound: {token} → {}. The caller's relay
   *  leg for that token is in; only now does the listener open its own (DESIGN.md). */
  relayReady: 'relay-ready',
  /** Home server → its online agents (push): {serials: JSON [serial], addresses: JSON [user@domain]} → {}.
   *  Peer streams whose certificate has one of the serials, or names one of the addresses, close. */
  revoked: 'revoked',
  /** Agent or server → a server: {certificates: JSON [{domain, serial}]} (at most 256) → {revoked: JSON [serial]}. */
  certStatus: 'cert-status',
  /**
   * Home server → each listening session of an address, whenever what its
   * listen answer said changes (a device of the same address came online,
   * went offline or changed its services): {devices, conflicts} → {}, the
   * same fields as the listen answer. Best effort: the agent's answer is not waited on.
   */
  presence: 'presence',
  /**
   * Home server → a listening session that a newer session of the same
   * (address, device) has replaced: {device, by: "HOST:PORT"} → {}. The old
   * session no longer receives inbound requests; the agent says so in
   * `vertex status` and, instead of fighting the newer session, listens again
   * only with takeover "0", which succeeds once that session has gone.
   */
  replaced: 'replaced',
} as const;

/*
 * Devices (README "Several machines per user").
 *
 * An address may be online from several machines at once. Each listening
 * session names its device (`listen {device}`); the server keeps every
 * device's session and services. The same (address, device) from a new
 * session replaces the old one: that is an agent restart, or two machines
 * configured with the same device name (the old session is told, `replaced`,
 * and comes back by itself, `listen {takeover: "0"}`, once the device is free).
 *
 * A caller names a device as `bob+laptop@b.test:ssh` or, DNS-safe,
 * `bob--laptop.b.test.q2q` (q2q/address.ts), sent as inbound `device`.
 * Without one, the server picks, among the devices that are online and expose
 * the service, the device whose name sorts first (chooseDevice). The rule
 * depends on names only, so it is the same on every server node and across
 * reconnects, and a user decides which device answers unqualified names by
 * naming devices. Each device exposing a shared service is told, in its listen
 * answer and by `presence` pushes, which other devices expose it and which one
 * unqualified callers reach; `vertex status` shows it.
 */

/** The device of a session that does not name one (a listen or inbound from an older peer). */
export const UNNAMED_DEVICE = 'default';
/** Devices online at once per address; a listen for one more is refused. */
export const MAX_DEVICES_PER_ADDRESS = 16;
/** Conflicts listed in one listen answer or presence push (each names up to MAX_DEVICES_PER_ADDRESS devices). */
export const MAX_CONFLICTS_REPORTED = 32;

/** A service that several devices of one address expose, and the device unqualified callers reach. */
export interface Conflict {
  service: string;
  /** Every device exposing it, sorted; includes the one told. */
  devices: string[];
  chosen: string;
}

/** The documented rule for an unqualified name: the first device name in byte order. */
export function chooseDevice(devices: Iterable<string>): string | undefined {
  let first: string | undefined;
  for (const device of devices) if (first === undefined || device < first) first = device;
  return first;
}

/**
 * The ALPN name of control sessions on the server port. Relay legs on the
 * same port are plain TCP (q2q/transport/relay-leg.ts, version 3); version 2
 * legs (TLS, ALPN q2q-relay/2) are gone.
 */
export const ALPN_CONTROL = 'q2q/2';

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
