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

/** Encodes a segment; throws a RangeError on a programmer error (bad field values). */
export function encodeSegment(seg: PtcpSegment): Buffer {
  if (seg.sacks.length > PTCP_MAX_SACK_BLOCKS) throw new RangeError(`encode ptcp segment: ${seg.sacks.length} sack blocks exceed ${PTCP_MAX_SACK_BLOCKS}`);
  if (seg.payload.length > PTCP_MAX_PAYLOAD) throw new RangeError(`encode ptcp segment: payload ${seg.payload.length} exceeds ${PTCP_MAX_PAYLOAD}`);
  if ((seg.flags & ~FLAGS_KNOWN) !== 0) throw new RangeError(`encode ptcp segment: unknown flags 0x${seg.flags.toString(16)}`);
  const sackBytes = seg.sacks.length * PTCP_SACK_BLOCK_SIZE;
  const buf = Buffer.allocUnsafe(PTCP_HEADER_SIZE + sackBytes + seg.payload.length);
  buf[0] = PTCP_MAGIC;
  buf[1] = seg.flags;
  buf[2] = seg.sacks.length;
  buf[3] = 0;
  buf.writeUInt32BE(seg.srcId >>> 0, 4);
  buf.writeUInt32BE(seg.dstId >>> 0, 8);
  buf.writeUInt32BE(seg.seq >>> 0, 12);
  buf.writeUInt32BE(seg.ack >>> 0, 16);
  buf.writeUInt32BE(seg.tsVal >>> 0, 20);
  buf.writeUInt32BE(seg.tsEcr >>> 0, 24);
  const units = Math.min(0xffff, Math.max(0, Math.floor(seg.window / (1 << PTCP_WINDOW_SHIFT))));
  buf.writeUInt16BE(units, 28);
  buf.writeUInt16BE(seg.payload.length, 30);
  let off = PTCP_HEADER_SIZE;
  for (const block of seg.sacks) {
    buf.writeUInt32BE(block.start >>> 0, off);
    buf.writeUInt32BE(block.end >>> 0, off + 4);
    off += PTCP_SACK_BLOCK_SIZE;
  }
  seg.payload.copy(buf, off);
  return buf;
}

/**
 * Decodes one datagram. The payload is a view into `buf` (no copy). Throws only
 * VertexError('PtcpDecode').
 */
export function decodeSegment(buf: Buffer): PtcpSegment {
  if (buf.length < PTCP_HEADER_SIZE) fail(`length ${buf.length} is shorter than the ${PTCP_HEADER_SIZE}-byte header`);
  if (buf[0] !== PTCP_MAGIC) fail(`first byte 0x${(buf[0] ?? 0).toString(16)} is not the ptcp v1 magic`);
  const flags = buf[1] ?? 0;
  if ((flags & ~FLAGS_KNOWN) !== 0) fail(`unknown flag bits 0x${(flags & ~FLAGS_KNOWN).toString(16)}`);
  const sackCount = buf[2] ?? 0;
  if (sackCount > PTCP_MAX_SACK_BLOCKS) fail(`sack block count ${sackCount} exceeds ${PTCP_MAX_SACK_BLOCKS}`);
  if (buf[3] !== 0) fail(`reserved byte is 0x${(buf[3] ?? 0).toString(16)}, not 0`);
  const payloadLength = buf.readUInt16BE(30);
  if (payloadLength > PTCP_MAX_PAYLOAD) fail(`payload length ${payloadLength} exceeds ${PTCP_MAX_PAYLOAD}`);
  const payloadStart = PTCP_HEADER_SIZE + sackCount * PTCP_SACK_BLOCK_SIZE;
  if (buf.length !== payloadStart + payloadLength) {
    fail(`datagram length ${buf.length} does not match header ${payloadStart} + payload ${payloadLength}`);
  }
  const sacks: SackBlock[] = [];
  for (let i = 0, off = PTCP_HEADER_SIZE; i < sackCount; i++, off += PTCP_SACK_BLOCK_SIZE) {
    sacks.push({ start: buf.readUInt32BE(off), end: buf.readUInt32BE(off + 4) });
  }
  return {
    flags,
    srcId: buf.readUInt32BE(4),
    dstId: buf.readUInt32BE(8),
    seq: buf.readUInt32BE(12),
    ack: buf.readUInt32BE(16),
    tsVal: buf.readUInt32BE(20),
    tsEcr: buf.readUInt32BE(24),
    window: buf.readUInt16BE(28) << PTCP_WINDOW_SHIFT,
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
