/**
 * Q2Q names (ARCHITECTURE.md "Names", INTERFACE.md "Naming a Q2Q service").
 *
 *   address          user@domain                      alice@example.com
 *   service address  user@domain:service              bob@example.com:ssh
 *                    user+device@domain:service       bob+laptop@example.com:ssh
 *   host forms       bob@example.com                  (SOCKS hostname, ncat)
 *                    bob+laptop@example.com
 *                    bob.example.com.q2q              (DNS-safe: curl, browsers, ssh %h)
 *                    bob--laptop.example.com.q2q
 *
 * - user: one DNS label that may also hold '_':  [a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?
 *   and must not contain '--', the device separator of the DNS-safe form.
 * - device: one of a user's machines (README "Several machines"): one DNS
 *   label [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])? without '--'. Written after '+'
 *   in the literal form (like e-mail plus-addressing; '+' never occurs in a
 *   user name) and after '--' in the DNS-safe form. An address without a
 *   device reaches whichever of the user's devices the server picks
 *   (q2q/control/protocol.ts, "Devices"). A device is a label the user's own
 *   machines choose, not a separate identity: every device holds a
 *   certificate for the same user@domain.
 * - domain: a DNS name: labels of 1-63 [a-z0-9-], not starting or ending
 *   with '-', at most 253 characters; single labels such as `localhost` are
 *   fine, an all-digit last label (an IPv4 address) is not.
 * - service: [a-z0-9][a-z0-9-]{0,62}, where an all-digit name must be a
 *   port, 1-65535, written without leading zeros.
 *
 * Input is case-folded. Only ASCII letters are folded: Unicode case mapping
 * would turn the Kelvin sign U+212A into 'k' and let look-alike names in.
 * Anything else throws InvalidName with a message that says which part is
 * wrong and why. Unlike the 2005 Vertex (§2), names are validated and
 * canonical, so certificate and policy checks can compare strings.
 */
import { vertexError } from './errors';

export const MAX_USER_LENGTH = 63;
export const MAX_LABEL_LENGTH = 63;
export const MAX_DOMAIN_LENGTH = 253;
export const MAX_SERVICE_LENGTH = 63;
export const MAX_PORT = 65535;

/** The DNS-safe host form ends in this label. */
export const Q2Q_HOST_SUFFIX = 'q2q';

/** Port to service for the host forms; any other port P is the service "P". */
export const DEFAULT_PORT_SERVICES: Readonly<Record<number, string>> = Object.freeze({ 22: 'ssh', 80: 'http', 443: 'https' });

export interface Q2QAddress {
  user: string;
  domain: string;
}

export interface Q2QServiceAddress {
  address: Q2QAddress;
  /** One device of the user, when the name picks one (`bob+laptop@...`); absent otherwise. */
  device?: string;
  service: string;
}

/** An address that may name one of the user's devices: `bob@b.test` or `bob+laptop@b.test`. */
export interface Q2QDeviceAddress {
  address: Q2QAddress;
  device?: string;
}

/** Separates user and device in the literal form: `bob+laptop@example.com`. */
export const DEVICE_SEPARATOR = '+';
/** Separates user and device in the DNS-safe form: `bob--laptop.example.com.q2q`. */
export const DNS_DEVICE_SEPARATOR = '--';
export const MAX_DEVICE_LENGTH = 63;
/** A node whose host name gives no usable label is this device. */
export const FALLBACK_DEVICE = 'device';

const USER_RULE = "use letters, digits, '-' and '_' (1-63 characters, starting and ending with a letter or digit)";
const DEVICE_RULE = "use letters, digits and single '-' (1-63 characters, starting and ending with a letter or digit), such as laptop";
const DOUBLE_HYPHEN = "'--' is reserved: it separates user and device in DNS-safe names such as bob--laptop.example.com.q2q";
const DOMAIN_RULE = "use a DNS name such as example.com (labels of letters, digits and '-', 1-63 characters each)";
const SERVICE_RULE = "use a name such as ssh (letters, digits and '-', 1-63 characters) or a port number 1-65535";

const USER_RE = /^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$/;
const LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const SERVICE_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
const DIGITS_RE = /^[0-9]+$/;

/** Lower-cases ASCII letters only; see the file comment. */
function foldCase(text: string): string {
  return text.replace(/[A-Z]+/g, (s) => s.toLowerCase());
}

/** The input as it goes into a message: quoted, escaped, and cut if huge. */
function quote(text: string): string {
  const max = 80;
  return JSON.stringify(text.length > max ? `${text.slice(0, max)}...` : text);
}

function invalid(part: string, text: string, reason: string, rule: string): never {
  throw vertexError('InvalidName', `invalid ${part} ${quote(text)}: ${reason}; ${rule}`);
}

/** The first character not in `allowed`, described for a message. */
function badCharacter(text: string, allowed: RegExp): string | undefined {
  for (const ch of text) {
    if (!allowed.test(ch)) {
      const shown = /^[\x21-\x7e]$/.test(ch) ? `'${ch}'` : `U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}`;
      return `${shown} is not allowed`;
    }
  }
  return undefined;
}

export interface ParseUserOptions {
  /**
   * Accept '--' as user names did before devices: only for removing such an
   * account (`vertex server remove-user`); nothing else can address it.
   */
  legacy?: boolean;
}

// Lengths are checked before characters: a peer may send 64 KB where a name
// belongs, and describing its first bad character must not cost a scan of it.

export function parseUser(text: string, opts: ParseUserOptions = {}): string {
  if (text.length > MAX_USER_LENGTH) invalid('user', text, `it is ${text.length} characters long`, USER_RULE);
  const user = foldCase(text);
  if (USER_RE.test(user)) {
    if (!opts.legacy && user.includes(DNS_DEVICE_SEPARATOR)) invalid('user', text, DOUBLE_HYPHEN, USER_RULE);
    return user;
  }
  if (user.length === 0) invalid('user', text, 'it is empty', USER_RULE);
  const bad = badCharacter(user, /^[a-z0-9_-]$/);
  if (bad) invalid('user', text, bad, USER_RULE);
  return invalid('user', text, 'it must start and end with a letter or digit', USER_RULE);
}

/** A device name: one DNS label without '--'. */
export function parseDevice(text: string): string {
  if (text.length > MAX_DEVICE_LENGTH) invalid('device', text, `it is ${text.length} characters long`, DEVICE_RULE);
  const device = foldCase(text);
  if (LABEL_RE.test(device)) {
    if (device.includes(DNS_DEVICE_SEPARATOR)) invalid('device', text, DOUBLE_HYPHEN, DEVICE_RULE);
    return device;
  }
  if (device.length === 0) invalid('device', text, 'it is empty', DEVICE_RULE);
  const bad = badCharacter(device, /^[a-z0-9-]$/);
  if (bad) invalid('device', text, bad, DEVICE_RULE);
  return invalid('device', text, 'it must start and end with a letter or digit', DEVICE_RULE);
}

/**
 * The device name a host name gives: its first label, lower-cased, every
 * character that may not appear in a device name turned into '-', runs of
 * '-' made one, no '-' at either end, at most 63 characters. A host name
 * with nothing usable gives FALLBACK_DEVICE.
 */
export function deviceFromHostname(hostname: string): string {
  const first = foldCase(hostname.split('.')[0] ?? '');
  const cleaned = first.replace(/[^a-z0-9-]/g, '-').replace(/-+/g, '-').replace(/^-|-$/g, '');
  const cut = cleaned.slice(0, MAX_DEVICE_LENGTH).replace(/-$/, '');
  return cut === '' ? FALLBACK_DEVICE : cut;
}

export function parseDomain(text: string): string {
  if (text.length > MAX_DOMAIN_LENGTH) invalid('domain', text, `it is ${text.length} characters long, over ${MAX_DOMAIN_LENGTH}`, DOMAIN_RULE);
  const domain = foldCase(text);
  if (domain.length === 0) invalid('domain', text, 'it is empty', DOMAIN_RULE);
  const bad = badCharacter(domain, /^[a-z0-9.-]$/);
  if (bad) {
    const hint = /^[\x00-\x7f]*$/.test(domain) ? '' : ' (write an international name in its xn-- form)';
    invalid('domain', text, bad + hint, DOMAIN_RULE);
  }
  const labels = domain.split('.');
  for (const label of labels) {
    if (label.length === 0) invalid('domain', text, 'it has an empty label (a leading, trailing or doubled dot)', DOMAIN_RULE);
    if (label.length > MAX_LABEL_LENGTH) invalid('domain', text, `label ${quote(label)} is ${label.length} characters long`, DOMAIN_RULE);
    if (!LABEL_RE.test(label)) invalid('domain', text, `label ${quote(label)} starts or ends with '-'`, DOMAIN_RULE);
  }
  // RFC 3696 §2: a top-level label is never all digits, so this is an IP address.
  if (DIGITS_RE.test(labels[labels.length - 1]!)) invalid('domain', text, 'it looks like an IP address, not a domain name', DOMAIN_RULE);
  return domain;
}

export function parseService(text: string): string {
  // No service name or port is longer; see parseUser.
  if (text.length > MAX_SERVICE_LENGTH) invalid('service', text, `it is ${text.length} characters long`, SERVICE_RULE);
  const service = foldCase(text);
  if (service.length === 0) invalid('service', text, 'it is empty', SERVICE_RULE);
  if (DIGITS_RE.test(service)) {
    const port = Number(service);
    if (service.length > 1 && service.startsWith('0')) invalid('service', text, 'a port number has no leading zeros', SERVICE_RULE);
    if (port < 1 || port > MAX_PORT) invalid('service', text, `port ${service} is out of range`, SERVICE_RULE);
    return service;
  }
  if (SERVICE_RE.test(service)) return service;
  const bad = badCharacter(service, /^[a-z0-9-]$/);
  if (bad) invalid('service', text, bad, SERVICE_RULE);
  return invalid('service', text, "it must start with a letter or digit, not '-'", SERVICE_RULE);
}

/** Parses `user@domain`. */
export function parseAddress(text: string, opts: ParseUserOptions = {}): Q2QAddress {
  const at = text.indexOf('@');
  if (at < 0) throw vertexError('InvalidName', `invalid address ${quote(text)}: expected user@domain`);
  if (text.indexOf('@', at + 1) >= 0) throw vertexError('InvalidName', `invalid address ${quote(text)}: more than one '@'; expected user@domain`);
  return { user: parseUser(text.slice(0, at), opts), domain: parseDomain(text.slice(at + 1)) };
}

export function formatAddress(address: Q2QAddress): string {
  return `${address.user}@${address.domain}`;
}

/** Parses `user@domain` or `user+device@domain`. */
export function parseDeviceAddress(text: string): Q2QDeviceAddress {
  const at = text.indexOf('@');
  const plus = text.indexOf(DEVICE_SEPARATOR);
  if (plus < 0 || (at >= 0 && plus > at)) return { address: parseAddress(text) };
  if (at < 0) throw vertexError('InvalidName', `invalid address ${quote(text)}: expected user@domain or user+device@domain`);
  const address = parseAddress(`${text.slice(0, plus)}${text.slice(at)}`);
  return { address, device: parseDevice(text.slice(plus + 1, at)) };
}

/** `user@domain`, or `user+device@domain` when a device is named. */
export function formatDeviceAddress(address: Q2QAddress, device?: string): string {
  return device === undefined ? formatAddress(address) : `${address.user}${DEVICE_SEPARATOR}${device}@${address.domain}`;
}

/** Parses `user@domain:service` or `user+device@domain:service`. */
export function parseServiceAddress(text: string): Q2QServiceAddress {
  const at = text.indexOf('@');
  const colon = text.indexOf(':', at + 1);
  if (at < 0 || colon < 0) throw vertexError('InvalidName', `invalid service address ${quote(text)}: expected user@domain:service or user+device@domain:service`);
  const { address, device } = parseDeviceAddress(text.slice(0, colon));
  return { address, ...(device !== undefined && { device }), service: parseService(text.slice(colon + 1)) };
}

export function formatServiceAddress(target: Q2QServiceAddress): string {
  return `${formatDeviceAddress(target.address, target.device)}:${target.service}`;
}

/** The service a port stands for in the host forms: mapped through `ports`, else the port number itself. */
export function serviceForPort(port: number, ports: Readonly<Record<number, string>> = DEFAULT_PORT_SERVICES): string {
  if (!Number.isInteger(port) || port < 1 || port > MAX_PORT) {
    throw vertexError('InvalidName', `invalid port ${port}: use a port number 1-65535`);
  }
  const mapped = ports[port];
  return mapped === undefined ? String(port) : parseService(mapped);
}

/**
 * Reads a SOCKS or ProxyCommand host and port as a Q2Q service: the literal
 * form `bob@example.com` / `bob+laptop@example.com` or the DNS-safe form
 * `bob.example.com.q2q` / `bob--laptop.example.com.q2q` (trailing dot
 * allowed in all). Returns null for a host that is no Q2Q name at all
 * (`example.com`, `1.2.3.4`, `::1`), so the caller can pass it through or
 * refuse it; throws InvalidName for a Q2Q name that is malformed.
 */
export function parseHostTarget(
  host: string,
  port: number,
  ports: Readonly<Record<number, string>> = DEFAULT_PORT_SERVICES,
): Q2QServiceAddress | null {
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  let target: Q2QDeviceAddress;
  if (name.includes('@')) {
    target = parseDeviceAddress(name);
  } else {
    const suffix = `.${Q2Q_HOST_SUFFIX}`;
    if (!foldCase(name).endsWith(suffix)) return null;
    const inner = name.slice(0, -suffix.length);
    const dot = inner.indexOf('.');
    if (dot < 0) {
      throw vertexError('InvalidName', `invalid q2q host ${quote(host)}: expected user.domain.${Q2Q_HOST_SUFFIX} or user--device.domain.${Q2Q_HOST_SUFFIX}, such as bob.example.com.${Q2Q_HOST_SUFFIX}`);
    }
    const first = inner.slice(0, dot);
    const domain = parseDomain(inner.slice(dot + 1));
    // User names never contain '--', so the first '--' is the device separator.
    const split = first.indexOf(DNS_DEVICE_SEPARATOR);
    target = split < 0
      ? { address: { user: parseUser(first), domain } }
      : { address: { user: parseUser(first.slice(0, split)), domain }, device: parseDevice(first.slice(split + DNS_DEVICE_SEPARATOR.length)) };
  }
  return { ...target, service: serviceForPort(port, ports) };
}

/** The DNS-safe host form: `bob.example.com.q2q`, or `bob--laptop.example.com.q2q` for one device. */
export function formatHostTarget(address: Q2QAddress, device?: string): string {
  const first = device === undefined ? address.user : `${address.user}${DNS_DEVICE_SEPARATOR}${device}`;
  return `${first}.${address.domain}.${Q2Q_HOST_SUFFIX}`;
}
