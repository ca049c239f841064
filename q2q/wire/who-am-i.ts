/**
 * UDP who-am-i: a client asks the server, from the UDP socket it wants to
 * learn about, which source ip:port the server saw (its reflexive address,
 * like a STUN binding request, RFC 8489 §3 in spirit).
 *
 * Request (exactly WHO_AM_I_REQUEST_BYTES; the padding keeps the answer no
 * larger than the question, so the server cannot be used to amplify):
 *   0  4  magic "Q2Q?"
 *   4  1  version (WHO_AM_I_VERSION)
 *   5 12  nonce, echoed in the answer
 *  17 31  zero padding
 *
 * Answer:
 *   0  4  magic "Q2Q!"
 *   4  1  version
 *   5 12  nonce
 *  17  1  address family: 4 or 6
 *  18  2  port, uint16 BE
 *  20 4|16 address bytes
 */
import { vertexError } from '../errors';

export const WHO_AM_I_VERSION = 1;
export const WHO_AM_I_REQUEST_BYTES = 48;
export const WHO_AM_I_NONCE_BYTES = 12;
const REQUEST_MAGIC = Buffer.from('Q2Q?', 'latin1');
const ANSWER_MAGIC = Buffer.from('Q2Q!', 'latin1');
const HEADER_BYTES = 4 + 1 + WHO_AM_I_NONCE_BYTES;

export interface WhoAmIAnswer {
  nonce: Buffer;
  address: string;
  port: number;
}

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;
const IPV6_RE = /^[0-9a-f:]+(:\d+\.\d+\.\d+\.\d+)?$/i;

function addressFamily(address: string): 4 | 6 | 0 {
  if (IPV4_RE.test(address)) return 4;
  if (address.includes(':') && IPV6_RE.test(address) && (address.match(/::/g) ?? []).length <= 1) return 6;
  return 0;
}

export function isWhoAmIRequest(buf: Buffer): boolean {
  return buf.length === WHO_AM_I_REQUEST_BYTES && buf.subarray(0, 4).equals(REQUEST_MAGIC) && buf[4] === WHO_AM_I_VERSION;
}

export function isWhoAmIAnswer(buf: Buffer): boolean {
  return buf.length >= HEADER_BYTES + 3 && buf.subarray(0, 4).equals(ANSWER_MAGIC);
}

export function encodeWhoAmIRequest(nonce: Buffer): Buffer {
  if (nonce.length !== WHO_AM_I_NONCE_BYTES) throw vertexError('BadRequest', `encode who-am-i: nonce must be ${WHO_AM_I_NONCE_BYTES} bytes`);
  const buf = Buffer.alloc(WHO_AM_I_REQUEST_BYTES);
  REQUEST_MAGIC.copy(buf, 0);
  buf[4] = WHO_AM_I_VERSION;
  nonce.copy(buf, 5);
  return buf;
}

/** The nonce of a valid request (check isWhoAmIRequest first). */
export function requestNonce(buf: Buffer): Buffer {
  return Buffer.from(buf.subarray(5, 5 + WHO_AM_I_NONCE_BYTES));
}

function ipv4Bytes(address: string): Buffer {
  return Buffer.from(address.split('.').map((part) => Number(part)));
}

function ipv6Bytes(address: string): Buffer {
  // Expand "::" and an embedded IPv4 tail into eight 16-bit groups.
  let text = address;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4?.[1]) {
    const b = ipv4Bytes(v4[1]);
    text = text.slice(0, -v4[1].length) + `${b.readUInt16BE(0).toString(16)}:${b.readUInt16BE(2).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const headGroups = head ? head.split(':') : [];
  const tailGroups = tail === undefined ? [] : tail ? tail.split(':') : [];
  const missing = 8 - headGroups.length - tailGroups.length;
  const groups = [...headGroups, ...Array<string>(tail === undefined ? 0 : missing).fill('0'), ...tailGroups];
  const buf = Buffer.alloc(16);
  groups.forEach((g, i) => buf.writeUInt16BE(parseInt(g, 16), i * 2));
  return buf;
}

export function encodeWhoAmIAnswer(nonce: Buffer, address: string, port: number): Buffer {
  const family = addressFamily(address);
  if (family === 0) throw vertexError('BadRequest', `encode who-am-i answer: not an IP address: ${address}`);
  const addr = family === 4 ? ipv4Bytes(address) : ipv6Bytes(address);
  const buf = Buffer.alloc(HEADER_BYTES + 3 + addr.length);
  ANSWER_MAGIC.copy(buf, 0);
  buf[4] = WHO_AM_I_VERSION;
  nonce.copy(buf, 5, 0, WHO_AM_I_NONCE_BYTES);
  buf[HEADER_BYTES] = family;
  buf.writeUInt16BE(port, HEADER_BYTES + 1);
  addr.copy(buf, HEADER_BYTES + 3);
  return buf;
}

export function decodeWhoAmIAnswer(buf: Buffer): WhoAmIAnswer {
  if (!isWhoAmIAnswer(buf)) throw vertexError('BadRequest', 'decode who-am-i answer: bad magic or too short');
  if (buf[4] !== WHO_AM_I_VERSION) throw vertexError('ProtocolVersion', `decode who-am-i answer: version ${buf[4]} is not ${WHO_AM_I_VERSION}`);
  const family = buf[HEADER_BYTES];
  const addrLength = family === 4 ? 4 : family === 6 ? 16 : -1;
  if (addrLength < 0) throw vertexError('BadRequest', `decode who-am-i answer: unknown address family ${family}`);
  if (buf.length !== HEADER_BYTES + 3 + addrLength) throw vertexError('BadRequest', `decode who-am-i answer: length ${buf.length} does not match family ${family}`);
  const port = buf.readUInt16BE(HEADER_BYTES + 1);
  const raw = buf.subarray(HEADER_BYTES + 3);
  const address = family === 4
    ? Array.from(raw).join('.')
    : Array.from({ length: 8 }, (_, i) => raw.readUInt16BE(i * 2).toString(16)).join(':');
  return { nonce: Buffer.from(buf.subarray(5, HEADER_BYTES)), address, port };
}
