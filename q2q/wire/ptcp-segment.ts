/**
 * PTCP segment codec (pure; no I/O). See docs/ptcp.md.
 *
 * One segment per UDP datagram. All integers are big-endian.
 *
 *   offset size field
 *   0      1    magic/version: 0xA1 (high nibble 0xA = PTCP, low nibble = version 1).
 *                Any datagram whose first byte differs is not PTCP (hole-punch probes,
 *                who-am-i queries share the socket), see isPtcpDatagram().
 *   1      1    flags: SYN 0x01, ACK 0x02, FIN 0x04, RST 0x08, KEEPALIVE 0x10; others must be 0
 *   2      1    SACK block count, 0..PTCP_MAX_SACK_BLOCKS
 *   3      1    reserved, must be 0
 *   4      4    source connection id (chosen by the sender, never 0)
 *   8      4    destination connection id (the receiver's id; 0 only on an initial SYN)
 *   12     4    sequence number (of the first payload byte, or of the SYN/FIN), mod 2^32
 *   16     4    acknowledgement number (next byte expected), valid when ACK is set
 *   20     4    timestamp value: sender clock in microseconds, mod 2^32 (RFC 7323 TSval)
 *   24     4    timestamp echo (RFC 7323 TSecr), 0 when none
 *   28     2    receive window in units of 2^PTCP_WINDOW_SHIFT bytes (fixed scale, no option)
 *   30     2    payload length, at most PTCP_MAX_PAYLOAD
 *   32     8*n  SACK blocks: left edge u32, right edge u32 (RFC 2018, right edge exclusive)
 *   ...    len  payload
 *
 * There is no checksum: the UDP checksum covers the datagram and TLS runs on top.
 * The explicit payload length makes a truncated datagram a decode error rather than a
 * shorter segment.
 */
import { VertexError } from '../errors';

// Specification.
export const PTCP_MAGIC = 0xa1;
export const PTCP_HEADER_SIZE = 32;
export const PTCP_SACK_BLOCK_SIZE = 8;
export const PTCP_MAX_SACK_BLOCKS = 4;
export const PTCP_WINDOW_SHIFT = 8;
export const PTCP_MAX_WINDOW = 0xffff << PTCP_WINDOW_SHIFT;
/** Largest payload the codec accepts; the connection's own segment size is far smaller. */
export const PTCP_MAX_PAYLOAD = 65535 - 8 - 40 - PTCP_HEADER_SIZE - PTCP_MAX_SACK_BLOCKS * PTCP_SACK_BLOCK_SIZE;

export const FLAG_SYN = 0x01;
export const FLAG_ACK = 0x02;
export const FLAG_FIN = 0x04;
export const FLAG_RST = 0x08;
export const FLAG_KEEPALIVE = 0x10;
const FLAGS_KNOWN = FLAG_SYN | FLAG_ACK | FLAG_FIN | FLAG_RST | FLAG_KEEPALIVE;

export interface SackBlock {
  /** Wire sequence numbers, right edge exclusive. */
  start: number;
  end: number;
}

export interface PtcpSegment {
  flags: number;
  srcId: number;
  dstId: number;
  seq: number;
  ack: number;
  tsVal: number;
  tsEcr: number;
  /** Receive window in bytes; encoded rounded down to the window unit. */
  window: number;
  sacks: SackBlock[];
  payload: Buffer;
}

const EMPTY = Buffer.alloc(0);

/** True when the datagram claims to be PTCP (first byte is the magic). Does not validate the rest. */
export function isPtcpDatagram(buf: Uint8Array): boolean {
  return buf.length > 0 && buf[0] === PTCP_MAGIC;
}

function fail(message: string): never {
  throw new VertexError('PtcpDecode', `decode ptcp segment: ${message}`);
}

export function encodedSize(seg: PtcpSegment): number {
  return PTCP_HEADER_SIZE + seg.sacks.length * PTCP_SACK_BLOCK_SIZE + seg.payload.length;
}

// Byte-wise big-endian access: the header is read and written for every datagram, and the
// Buffer methods re-check bounds and ranges that encode/decode have already checked once.
function putU32(buf: Uint8Array, off: number, value: number): void {
  buf[off] = value >>> 24;
  buf[off + 1] = value >>> 16;
  buf[off + 2] = value >>> 8;
  buf[off + 3] = value;
}

function getU32(buf: Uint8Array, off: number): number {
  return (((buf[off] as number) << 24) | ((buf[off + 1] as number) << 16) | ((buf[off + 2] as number) << 8) | (buf[off + 3] as number)) >>> 0;
}

function getU16(buf: Uint8Array, off: number): number {
  return ((buf[off] as number) << 8) | (buf[off + 1] as number);
}

/** Encodes a segment into a new Buffer; throws a RangeError on a programmer error (bad field values). */
export function encodeSegment(seg: PtcpSegment): Buffer {
  const buf = Buffer.allocUnsafe(encodedSize(seg));
  encodeSegmentInto(seg, buf, 0);
  return buf;
}

/**
 * Encodes a segment into `target` at `offset` and returns the bytes written (encodedSize):
 * a driver can cut datagrams from a buffer of its own instead of allocating one each.
 * Throws a RangeError on a programmer error (bad field values, or `target` too small).
 */
export function encodeSegmentInto(seg: PtcpSegment, target: Uint8Array, offset: number): number {
  const sackCount = seg.sacks.length;
  const payloadLength = seg.payload.length;
  if (sackCount > PTCP_MAX_SACK_BLOCKS) throw new RangeError(`encode ptcp segment: ${sackCount} sack blocks exceed ${PTCP_MAX_SACK_BLOCKS}`);
  if (payloadLength > PTCP_MAX_PAYLOAD) throw new RangeError(`encode ptcp segment: payload ${payloadLength} exceeds ${PTCP_MAX_PAYLOAD}`);
  if ((seg.flags & ~FLAGS_KNOWN) !== 0) throw new RangeError(`encode ptcp segment: unknown flags 0x${seg.flags.toString(16)}`);
  const size = PTCP_HEADER_SIZE + sackCount * PTCP_SACK_BLOCK_SIZE + payloadLength;
  if (!Number.isInteger(offset) || offset < 0 || offset + size > target.length) {
    throw new RangeError(`encode ptcp segment: ${size} bytes at offset ${offset} do not fit a ${target.length}-byte buffer`);
  }
  const buf = target;
  const o = offset;
  buf[o] = PTCP_MAGIC;
  buf[o + 1] = seg.flags;
  buf[o + 2] = sackCount;
  buf[o + 3] = 0;
  putU32(buf, o + 4, seg.srcId);
  putU32(buf, o + 8, seg.dstId);
  putU32(buf, o + 12, seg.seq);
  putU32(buf, o + 16, seg.ack);
  putU32(buf, o + 20, seg.tsVal);
  putU32(buf, o + 24, seg.tsEcr);
  const units = Math.min(0xffff, Math.max(0, Math.floor(seg.window / (1 << PTCP_WINDOW_SHIFT))));
  buf[o + 28] = units >>> 8;
  buf[o + 29] = units;
  buf[o + 30] = payloadLength >>> 8;
  buf[o + 31] = payloadLength;
  let off = o + PTCP_HEADER_SIZE;
  for (let i = 0; i < sackCount; i++, off += PTCP_SACK_BLOCK_SIZE) {
    const block = seg.sacks[i] as SackBlock;
    putU32(buf, off, block.start);
    putU32(buf, off + 4, block.end);
  }
  if (payloadLength > 0) buf.set(seg.payload, off);
  return size;
}

/** What a segment without SACK blocks carries: one shared, frozen empty list, not one per datagram. */
const NO_SACKS: SackBlock[] = Object.freeze([]) as unknown as SackBlock[];

/**
 * Decodes one datagram. The payload is a view into `buf` (no copy), and a segment without
 * SACK blocks shares one frozen empty `sacks` array. Throws only VertexError('PtcpDecode').
 */
export function decodeSegment(buf: Buffer): PtcpSegment {
  if (buf.length < PTCP_HEADER_SIZE) fail(`length ${buf.length} is shorter than the ${PTCP_HEADER_SIZE}-byte header`);
  if (buf[0] !== PTCP_MAGIC) fail(`first byte 0x${(buf[0] ?? 0).toString(16)} is not the ptcp v1 magic`);
  const flags = buf[1] as number;
  if ((flags & ~FLAGS_KNOWN) !== 0) fail(`unknown flag bits 0x${(flags & ~FLAGS_KNOWN).toString(16)}`);
  const sackCount = buf[2] as number;
  if (sackCount > PTCP_MAX_SACK_BLOCKS) fail(`sack block count ${sackCount} exceeds ${PTCP_MAX_SACK_BLOCKS}`);
  if (buf[3] !== 0) fail(`reserved byte is 0x${(buf[3] ?? 0).toString(16)}, not 0`);
  const payloadLength = getU16(buf, 30);
  if (payloadLength > PTCP_MAX_PAYLOAD) fail(`payload length ${payloadLength} exceeds ${PTCP_MAX_PAYLOAD}`);
  const payloadStart = PTCP_HEADER_SIZE + sackCount * PTCP_SACK_BLOCK_SIZE;
  if (buf.length !== payloadStart + payloadLength) {
    fail(`datagram length ${buf.length} does not match header ${payloadStart} + payload ${payloadLength}`);
  }
  let sacks = NO_SACKS;
  if (sackCount > 0) {
    sacks = [];
    for (let i = 0, off = PTCP_HEADER_SIZE; i < sackCount; i++, off += PTCP_SACK_BLOCK_SIZE) {
      sacks.push({ start: getU32(buf, off), end: getU32(buf, off + 4) });
    }
  }
  return {
    flags,
    srcId: getU32(buf, 4),
    dstId: getU32(buf, 8),
    seq: getU32(buf, 12),
    ack: getU32(buf, 16),
    tsVal: getU32(buf, 20),
    tsEcr: getU32(buf, 24),
    window: getU16(buf, 28) << PTCP_WINDOW_SHIFT,
    sacks,
    payload: payloadLength === 0 ? EMPTY : buf.subarray(payloadStart, payloadStart + payloadLength),
  };
}

// 32-bit sequence arithmetic (RFC 1982 serial numbers): valid while the two values are
// less than 2^31 apart.

/** (a - b) as a signed 32-bit distance. */
export function seqDiff(a: number, b: number): number {
  return (a - b) | 0;
}

export function seqAdd(a: number, n: number): number {
  return (a + n) >>> 0;
}

export function seqLt(a: number, b: number): boolean {
  return seqDiff(a, b) < 0;
}

export function seqLte(a: number, b: number): boolean {
  return seqDiff(a, b) <= 0;
}

export function seqGt(a: number, b: number): boolean {
  return seqDiff(a, b) > 0;
}

export function seqGte(a: number, b: number): boolean {
  return seqDiff(a, b) >= 0;
}

export function describeFlags(flags: number): string {
  const names: string[] = [];
  if (flags & FLAG_SYN) names.push('SYN');
  if (flags & FLAG_ACK) names.push('ACK');
  if (flags & FLAG_FIN) names.push('FIN');
  if (flags & FLAG_RST) names.push('RST');
  if (flags & FLAG_KEEPALIVE) names.push('KEEPALIVE');
  return names.join('|') || 'none';
}
