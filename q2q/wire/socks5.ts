/**
 * SOCKS5 messages (RFC 1928) and username/password sub-negotiation
 * (RFC 1929): pure encoders and decoders, no I/O.
 *
 * Every decoder takes the bytes received so far and returns either `null`
 * ("need more bytes") or `{ value, length }`, where `length` is how many
 * bytes the message took (anything after it belongs to the next message).
 * A message that can never become valid throws VertexError('Socks5Decode').
 * Encoders take values our own code built; a value that cannot be encoded is
 * a programmer error and throws RangeError.
 *
 * Greeting, client -> server (RFC 1928 §3):
 *   0  1  VER       0x05
 *   1  1  NMETHODS  1..MAX_METHODS
 *   2  N  METHODS   one byte each
 *
 * Method selection, server -> client (RFC 1928 §3):
 *   0  1  VER       0x05
 *   1  1  METHOD    chosen method, or 0xFF (no acceptable method)
 *
 * Username/password request, client -> server (RFC 1929 §2):
 *   0  1  VER       0x01 (sub-negotiation version, not the SOCKS version)
 *   1  1  ULEN      0..MAX_USERNAME_BYTES
 *   2  U  UNAME
 *   .  1  PLEN      0..MAX_PASSWORD_BYTES
 *   .  P  PASSWD
 * RFC 1929 says ULEN and PLEN are 1..255; zero is accepted here and simply
 * fails the credential check, which gives the client the RFC's answer
 * (status != 0, then close) instead of a silent drop.
 *
 * Username/password status, server -> client (RFC 1929 §2):
 *   0  1  VER       0x01
 *   1  1  STATUS    0x00 success, anything else failure
 *
 * Request, client -> server (RFC 1928 §4), and reply, server -> client
 * (RFC 1928 §6), share one layout:
 *   0  1  VER       0x05
 *   1  1  CMD | REP request: 1 CONNECT, 2 BIND, 3 UDP ASSOCIATE; reply: REP code
 *   2  1  RSV       0x00 (ignored when decoding, as most servers do)
 *   3  1  ATYP      1 IPv4, 3 domain name, 4 IPv6
 *   4  A  ADDR      ATYP 1: 4 bytes; ATYP 4: 16 bytes;
 *                   ATYP 3: LEN (1..MAX_DOMAIN_BYTES) then LEN bytes of name
 *   .  2  PORT      uint16 big-endian
 *
 * A request with an ATYP we do not know cannot be measured (its address
 * length is unknown), yet RFC 1928 §6 wants a reply (0x08) before closing.
 * So decodeRequest returns it as address type 'unsupported' with `length`
 * covering only the 4 header bytes; the caller replies and closes.
 *
 * Domain names are decoded as strict UTF-8 (`user@domain` is ASCII in
 * practice); bytes that are not UTF-8 are a decode error, so no lossy
 * replacement characters ever reach name parsing.
 */
import { vertexError } from '../errors';

// Specification (RFC 1928, RFC 1929)
export const SOCKS_VERSION = 0x05;
export const USERPASS_VERSION = 0x01;

export const SOCKS_METHOD = {
  NoAuth: 0x00,
  Gssapi: 0x01,
  UserPass: 0x02,
  NoAcceptable: 0xff,
} as const;

export const SOCKS_COMMAND = {
  Connect: 0x01,
  Bind: 0x02,
  UdpAssociate: 0x03,
} as const;

export const SOCKS_ATYP = {
  Ipv4: 0x01,
  Domain: 0x03,
  Ipv6: 0x04,
} as const;

/** REP values of RFC 1928 §6. */
export const SOCKS_REPLY = {
  Succeeded: 0x00,
  GeneralFailure: 0x01,
  NotAllowed: 0x02,
  NetworkUnreachable: 0x03,
  HostUnreachable: 0x04,
  ConnectionRefused: 0x05,
  TtlExpired: 0x06,
  CommandNotSupported: 0x07,
  AddressTypeNotSupported: 0x08,
} as const;
export type SocksReplyCode = (typeof SOCKS_REPLY)[keyof typeof SOCKS_REPLY];

export const USERPASS_STATUS_SUCCESS = 0x00;
export const USERPASS_STATUS_FAILURE = 0x01;

export const MAX_METHODS = 255;
export const MAX_USERNAME_BYTES = 255;
export const MAX_PASSWORD_BYTES = 255;
export const MAX_DOMAIN_BYTES = 255;
export const MAX_PORT = 0xffff;

const IPV4_BYTES = 4;
const IPV6_BYTES = 16;
const PORT_BYTES = 2;
const REQUEST_HEADER_BYTES = 4;

export type SocksAddress =
  | { type: 'ipv4'; host: string }
  | { type: 'ipv6'; host: string }
  | { type: 'domain'; host: string };

export interface SocksGreeting {
  methods: number[];
}

export interface SocksUserPass {
  username: string;
  password: string;
}

export interface SocksRequest {
  command: number;
  address: SocksAddress | { type: 'unsupported'; atyp: number };
  port: number;
}

export interface SocksReply {
  reply: number;
  address: SocksAddress;
  port: number;
}

export interface Decoded<T> {
  value: T;
  length: number;
}

// ignoreBOM keeps a leading U+FEFF instead of silently dropping it: "\uFEFFbob@b.test" must
// not read as bob@b.test, nor a password with a BOM in front as the password without it.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function fail(what: string, detail: string): never {
  throw vertexError('Socks5Decode', `decode socks5 ${what}: ${detail}`);
}

function checkVersion(what: string, got: number, want: number): void {
  if (got !== want) fail(what, `version 0x${hex2(got)}, expected 0x${hex2(want)}`);
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

function byteAt(buf: Uint8Array, i: number): number {
  // Callers check lengths first; this keeps noUncheckedIndexedAccess honest.
  return buf[i] ?? 0;
}

function decodeString(what: string, field: string, bytes: Uint8Array): string {
  try {
    return utf8.decode(bytes);
  } catch (err) {
    throw vertexError('Socks5Decode', `decode socks5 ${what}: ${field} is not valid utf-8`, err);
  }
}

function encodeString(what: string, field: string, value: string, max: number, min = 0): Buffer {
  const bytes = Buffer.from(value, 'utf8');
  if (bytes.length < min || bytes.length > max) {
    throw new RangeError(`encode socks5 ${what}: ${field} is ${bytes.length} bytes, allowed ${min}..${max}`);
  }
  return bytes;
}

function checkPort(what: string, port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > MAX_PORT) {
    throw new RangeError(`encode socks5 ${what}: port ${port} is not 0..${MAX_PORT}`);
  }
}

function checkByte(what: string, field: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xff) {
    throw new RangeError(`encode socks5 ${what}: ${field} ${value} is not a byte`);
  }
}

// ---------------------------------------------------------------- greeting

export function decodeGreeting(buf: Uint8Array): Decoded<SocksGreeting> | null {
  if (buf.length < 1) return null;
  checkVersion('greeting', byteAt(buf, 0), SOCKS_VERSION);
  if (buf.length < 2) return null;
  const count = byteAt(buf, 1);
  if (count < 1) fail('greeting', 'no methods offered');
  const length = 2 + count;
  if (buf.length < length) return null;
  return { value: { methods: Array.from(buf.subarray(2, length)) }, length };
}

export function encodeGreeting(greeting: SocksGreeting): Buffer {
  const { methods } = greeting;
  if (methods.length < 1 || methods.length > MAX_METHODS) {
    throw new RangeError(`encode socks5 greeting: ${methods.length} methods, allowed 1..${MAX_METHODS}`);
  }
  for (const m of methods) checkByte('greeting', 'method', m);
  return Buffer.from([SOCKS_VERSION, methods.length, ...methods]);
}

// -------------------------------------------------------- method selection

export function decodeMethodSelection(buf: Uint8Array): Decoded<number> | null {
  if (buf.length < 1) return null;
  checkVersion('method selection', byteAt(buf, 0), SOCKS_VERSION);
  if (buf.length < 2) return null;
  return { value: byteAt(buf, 1), length: 2 };
}

export function encodeMethodSelection(method: number): Buffer {
  checkByte('method selection', 'method', method);
  return Buffer.from([SOCKS_VERSION, method]);
}

// ------------------------------------------------- username/password (1929)

export function decodeUserPass(buf: Uint8Array): Decoded<SocksUserPass> | null {
  if (buf.length < 1) return null;
  checkVersion('username/password request', byteAt(buf, 0), USERPASS_VERSION);
  if (buf.length < 2) return null;
  const ulen = byteAt(buf, 1);
  const plenAt = 2 + ulen;
  if (buf.length < plenAt + 1) return null;
  const plen = byteAt(buf, plenAt);
  const length = plenAt + 1 + plen;
  if (buf.length < length) return null;
  const what = 'username/password request';
  return {
    value: {
      username: decodeString(what, 'username', buf.subarray(2, plenAt)),
      password: decodeString(what, 'password', buf.subarray(plenAt + 1, length)),
    },
    length,
  };
}

export function encodeUserPass(creds: SocksUserPass): Buffer {
  const what = 'username/password request';
  const user = encodeString(what, 'username', creds.username, MAX_USERNAME_BYTES);
  const pass = encodeString(what, 'password', creds.password, MAX_PASSWORD_BYTES);
  return Buffer.concat([Buffer.from([USERPASS_VERSION, user.length]), user, Buffer.from([pass.length]), pass]);
}

export function decodeUserPassStatus(buf: Uint8Array): Decoded<number> | null {
  if (buf.length < 1) return null;
  checkVersion('username/password status', byteAt(buf, 0), USERPASS_VERSION);
  if (buf.length < 2) return null;
  return { value: byteAt(buf, 1), length: 2 };
}

export function encodeUserPassStatus(status: number): Buffer {
  checkByte('username/password status', 'status', status);
  return Buffer.from([USERPASS_VERSION, status]);
}

// ------------------------------------------------------ request and reply

/** Reads ATYP, ADDR and PORT starting at `at`; null when more bytes are needed. */
function decodeAddressPort(
  what: string,
  buf: Uint8Array,
  at: number,
): { address: SocksRequest['address']; port: number; end: number } | null {
  if (buf.length < at + 1) return null;
  const atyp = byteAt(buf, at);
  let addrStart = at + 1;
  let addrEnd: number;
  switch (atyp) {
    case SOCKS_ATYP.Ipv4:
      addrEnd = addrStart + IPV4_BYTES;
      break;
    case SOCKS_ATYP.Ipv6:
      addrEnd = addrStart + IPV6_BYTES;
      break;
    case SOCKS_ATYP.Domain: {
      if (buf.length < addrStart + 1) return null;
      const len = byteAt(buf, addrStart);
      if (len < 1) fail(what, 'empty domain name');
      addrStart += 1;
      addrEnd = addrStart + len;
      break;
    }
    default:
      return { address: { type: 'unsupported', atyp }, port: 0, end: at + 1 };
  }
  const end = addrEnd + PORT_BYTES;
  if (buf.length < end) return null;
  const raw = buf.subarray(addrStart, addrEnd);
  const port = (byteAt(buf, addrEnd) << 8) | byteAt(buf, addrEnd + 1);
  let address: SocksAddress;
  if (atyp === SOCKS_ATYP.Ipv4) address = { type: 'ipv4', host: formatIpv4(raw) };
  else if (atyp === SOCKS_ATYP.Ipv6) address = { type: 'ipv6', host: formatIpv6(raw) };
  else address = { type: 'domain', host: decodeString(what, 'domain name', raw) };
  return { address, port, end };
}

function encodeAddressPort(what: string, address: SocksAddress, port: number): Buffer {
  checkPort(what, port);
  const portBytes = Buffer.from([port >> 8, port & 0xff]);
  switch (address.type) {
    case 'ipv4':
      return Buffer.concat([Buffer.from([SOCKS_ATYP.Ipv4]), parseIpv4(address.host), portBytes]);
    case 'ipv6':
      return Buffer.concat([Buffer.from([SOCKS_ATYP.Ipv6]), parseIpv6(address.host), portBytes]);
    case 'domain': {
      const name = encodeString(what, 'domain name', address.host, MAX_DOMAIN_BYTES, 1);
      return Buffer.concat([Buffer.from([SOCKS_ATYP.Domain, name.length]), name, portBytes]);
    }
    default: {
      const never: never = address;
      throw new RangeError(`encode socks5 ${what}: unknown address ${JSON.stringify(never)}`);
    }
  }
}

export function decodeRequest(buf: Uint8Array): Decoded<SocksRequest> | null {
  if (buf.length < 1) return null;
  checkVersion('request', byteAt(buf, 0), SOCKS_VERSION);
  if (buf.length < REQUEST_HEADER_BYTES) return null;
  const rest = decodeAddressPort('request', buf, REQUEST_HEADER_BYTES - 1);
  if (!rest) return null;
  return { value: { command: byteAt(buf, 1), address: rest.address, port: rest.port }, length: rest.end };
}

export function encodeRequest(request: { command: number; address: SocksAddress; port: number }): Buffer {
  checkByte('request', 'command', request.command);
  return Buffer.concat([
    Buffer.from([SOCKS_VERSION, request.command, 0x00]),
    encodeAddressPort('request', request.address, request.port),
  ]);
}

export function decodeReply(buf: Uint8Array): Decoded<SocksReply> | null {
  if (buf.length < 1) return null;
  checkVersion('reply', byteAt(buf, 0), SOCKS_VERSION);
  if (buf.length < REQUEST_HEADER_BYTES) return null;
  const rest = decodeAddressPort('reply', buf, REQUEST_HEADER_BYTES - 1);
  if (!rest) return null;
  if (rest.address.type === 'unsupported') fail('reply', `unknown address type 0x${hex2(rest.address.atyp)}`);
  return { value: { reply: byteAt(buf, 1), address: rest.address, port: rest.port }, length: rest.end };
}

/** The unspecified IPv4 address and port 0: what we bind-report for tunnels that have no local socket. */
export const UNSPECIFIED_BIND: { address: SocksAddress; port: number } = { address: { type: 'ipv4', host: '0.0.0.0' }, port: 0 };

const UNSPECIFIED_REPLY = Buffer.from([SOCKS_VERSION, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);

export function encodeReply(reply: number, bind: { address: SocksAddress; port: number } = UNSPECIFIED_BIND): Buffer {
  checkByte('reply', 'reply code', reply);
  if (bind === UNSPECIFIED_BIND) {
    // Every reply the agent sends (it names no bound address): a copy of one template.
    const out = Buffer.from(UNSPECIFIED_REPLY);
    out[1] = reply;
    return out;
  }
  return Buffer.concat([Buffer.from([SOCKS_VERSION, reply, 0x00]), encodeAddressPort('reply', bind.address, bind.port)]);
}

// ------------------------------------------------------- IP text <-> bytes
// Written here rather than taken from node:net so that the wire layer stays
// free of network modules (test/unit/layers.test.ts).

export function formatIpv4(bytes: Uint8Array): string {
  return Array.from(bytes.subarray(0, IPV4_BYTES)).join('.');
}

/** RFC 5952 text form: lowercase, no leading zeros, the longest run (>= 2) of zero groups as `::`. */
export function formatIpv6(bytes: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < IPV6_BYTES; i += 2) groups.push((byteAt(bytes, i) << 8) | byteAt(bytes, i + 1));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < groups.length; ) {
    if (groups[i] !== 0) {
      i += 1;
      continue;
    }
    let j = i;
    while (j < groups.length && groups[j] === 0) j += 1;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const text = groups.map((g) => g.toString(16));
  if (bestLen < 2) return text.join(':');
  const head = text.slice(0, bestStart).join(':');
  const tail = text.slice(bestStart + bestLen).join(':');
  return `${head}::${tail}`;
}

const IPV4_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

export function parseIpv4(text: string): Buffer {
  const m = IPV4_RE.exec(text);
  const parts = m ? m.slice(1).map((p) => Number(p)) : [];
  if (parts.length !== IPV4_BYTES || parts.some((p) => p > 255)) {
    throw new RangeError(`encode socks5 address: ${JSON.stringify(text)} is not an IPv4 address`);
  }
  return Buffer.from(parts);
}

const IPV6_GROUP_RE = /^[0-9a-fA-F]{1,4}$/;

export function parseIpv6(text: string): Buffer {
  const bad = (): never => {
    throw new RangeError(`encode socks5 address: ${JSON.stringify(text)} is not an IPv6 address`);
  };
  const halves = text.split('::');
  if (halves.length > 2) bad();
  const toGroups = (part: string, allowV4Tail: boolean): number[] => {
    if (part === '') return [];
    const out: number[] = [];
    const pieces = part.split(':');
    pieces.forEach((piece, i) => {
      if (allowV4Tail && i === pieces.length - 1 && piece.includes('.')) {
        const v4 = parseIpv4(piece);
        out.push((byteAt(v4, 0) << 8) | byteAt(v4, 1), (byteAt(v4, 2) << 8) | byteAt(v4, 3));
      } else if (IPV6_GROUP_RE.test(piece)) {
        out.push(parseInt(piece, 16));
      } else {
        bad();
      }
    });
    return out;
  };
  let groups: number[];
  if (halves.length === 2) {
    const head = toGroups(halves[0] ?? '', false);
    const tail = toGroups(halves[1] ?? '', true);
    if (head.length + tail.length > 7) bad();
    groups = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  } else {
    groups = toGroups(text, true);
    if (groups.length !== 8) bad();
  }
  const out = Buffer.alloc(IPV6_BYTES);
  groups.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}
