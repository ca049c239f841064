/**
 * A tunnel over the agent's control socket, framed so that each end can say
 * how it ended. Raw bytes could not: after the `connect` reply the socket
 * carried only the tunnel's bytes, so a reset far away reached `vertex
 * connect` as a plain EOF on the unix socket, indistinguishable from a clean
 * close (issue 13, problem 2).
 *
 * Frames, in both directions:
 *
 *     offset  size  field
 *     0       1     type: 0 DATA, 1 END (clean half-close), 2 ABORT
 *     1       4     payload length, uint32 big-endian, <= MAX_FRAME_PAYLOAD
 *     5       n     payload: DATA bytes; nothing for END; for ABORT a JSON
 *                   object {"code": ErrorCode, "message": string}
 *
 * A socket that ends or breaks before an END or ABORT arrived counts as an
 * abort (the other process went away). FramedTunnel is a Duplex: DATA is
 * what it reads and writes, end() sends END, destroy(err) sends ABORT with
 * err's code and message, and an ABORT received destroys it with that error.
 */
import type * as net from 'node:net';
import { Duplex } from 'node:stream';
import { asVertexError, isErrorCode, vertexError, VertexError } from '../q2q/errors';

export const FRAME = { data: 0, end: 1, abort: 2 } as const;
export const FRAME_HEADER_BYTES = 5;
/** Writes are cut into frames of at most this many bytes. */
export const MAX_FRAME_PAYLOAD = 64 * 1024;
/** An ABORT's JSON is short; anything longer is a broken peer. */
const MAX_ABORT_PAYLOAD = 4 * 1024;

export type Frame = { type: 'data'; payload: Buffer } | { type: 'end' } | { type: 'abort'; code: string; message: string };

export function encodeFrameHeader(type: number, length: number): Buffer {
  const header = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  header.writeUInt8(type, 0);
  header.writeUInt32BE(length, 1);
  return header;
}

export function encodeAbort(err: VertexError): Buffer {
  const payload = Buffer.from(JSON.stringify({ code: err.code, message: err.message.slice(0, 1024) }));
  return Buffer.concat([encodeFrameHeader(FRAME.abort, payload.length), payload]);
}

/** Splits a byte stream into frames; throws BadRequest on a frame no writer of ours makes. */
export class FrameDecoder {
  #buffered: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.#buffered = this.#buffered.length === 0 ? chunk : Buffer.concat([this.#buffered, chunk]);
    const frames: Frame[] = [];
    while (this.#buffered.length >= FRAME_HEADER_BYTES) {
      const type = this.#buffered.readUInt8(0);
      const length = this.#buffered.readUInt32BE(1);
      const max = type === FRAME.data ? MAX_FRAME_PAYLOAD : type === FRAME.abort ? MAX_ABORT_PAYLOAD : 0;
      if (type > FRAME.abort) throw vertexError('BadRequest', `control tunnel: unknown frame type ${type}`);
      if (length > max) throw vertexError('BadRequest', `control tunnel: frame of type ${type} with ${length} bytes, more than ${max}`);
      if (this.#buffered.length < FRAME_HEADER_BYTES + length) break;
      const payload = this.#buffered.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + length);
      this.#buffered = this.#buffered.subarray(FRAME_HEADER_BYTES + length);
      if (type === FRAME.data) frames.push({ type: 'data', payload });
      else if (type === FRAME.end) frames.push({ type: 'end' });
      else frames.push(parseAbort(payload));
    }
    return frames;
  }
}

function parseAbort(payload: Buffer): Frame {
  try {
    const value = JSON.parse(payload.toString('utf8')) as { code?: unknown; message?: unknown };
    return { type: 'abort', code: typeof value.code === 'string' ? value.code : 'ConnectionLost', message: typeof value.message === 'string' ? value.message : 'aborted' };
  } catch {
    return { type: 'abort', code: 'ConnectionLost', message: 'aborted' };
  }
}

export interface FramedTunnelOptions {
  /** Names the other end in errors: "the agent", "vertex connect". */
  other: string;
}

export class FramedTunnel extends Duplex {
  readonly #socket: net.Socket;
  readonly #decoder = new FrameDecoder();
  readonly #other: string;
  #gotEnd = false;
  #gotAbort = false;

  constructor(socket: net.Socket, opts: FramedTunnelOptions) {
    super({ allowHalfOpen: true });
    this.#socket = socket;
    this.#other = opts.other;
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('end', () => {
      if (!this.#gotEnd && !this.#gotAbort) this.destroy(vertexError('ConnectionLost', `${this.#other} went away before the tunnel ended`));
    });
    socket.on('error', (err) => {
      if (!this.destroyed) this.destroy(vertexError('ConnectionLost', `${this.#other}: ${(err as NodeJS.ErrnoException).code ?? err.message}`, err));
    });
    socket.on('close', () => {
      if (!this.destroyed && !(this.#gotEnd && this.writableFinished)) this.destroy(vertexError('ConnectionLost', `${this.#other} closed the tunnel`));
    });
    socket.resume();
  }

  #onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (err) {
      this.destroy(asVertexError(err));
      return;
    }
    for (const frame of frames) {
      if (this.#gotEnd || this.#gotAbort) return;
      if (frame.type === 'data') {
        if (!this.push(frame.payload)) this.#socket.pause();
      } else if (frame.type === 'end') {
        this.#gotEnd = true;
        this.push(null);
      } else {
        this.#gotAbort = true;
        this.destroy(new VertexError(isErrorCode(frame.code) ? frame.code : 'ConnectionLost', frame.message));
      }
    }
  }

  override _read(): void {
    this.#socket.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    let offset = 0;
    let ok = true;
    while (offset < chunk.length) {
      const piece = chunk.subarray(offset, offset + MAX_FRAME_PAYLOAD);
      this.#socket.write(encodeFrameHeader(FRAME.data, piece.length));
      ok = this.#socket.write(piece);
      offset += piece.length;
    }
    if (ok) callback();
    else this.#socket.once('drain', () => callback());
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.#socket.write(encodeFrameHeader(FRAME.end, 0), () => callback());
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const socket = this.#socket;
    const clean = this.#gotEnd && this.writableFinished;
    if (!clean && !this.#gotAbort && socket.writable) {
      // Tell the other end why, unless it was the one that aborted.
      const reason = err ? asVertexError(err, 'ConnectionLost') : vertexError('ConnectionLost', `the tunnel was closed before it ended`);
      socket.end(encodeAbort(reason));
    } else if (socket.writable) {
      socket.end();
    }
    socket.destroySoon();
    callback(err);
  }
}
