/**
 * Stream multiplexing frames: many byte streams over one peer session (the
 * mutual-TLS channel between two agents). docs/multiplexing.md says why this
 * framing and not HTTP/2, with the figures.
 *
 * Every frame is a 9-byte header and a payload:
 *
 *   offset  size  field
 *   0       1     type        (FRAME below)
 *   1       4     stream id   uint32 BE; 0 for session frames
 *   5       4     length      uint32 BE, payload bytes, <= MUX_MAX_FRAME_PAYLOAD
 *   9       n     payload
 *
 * Stream ids: the side that set up the session (the TLS client) opens odd
 * ids, the other side even ids, each strictly increasing, so both may open
 * streams without agreeing first (as in RFC 9113 §5.1.1). Payloads by type:
 *
 *   HELLO    (session)  AMP box {version, window[, sessionWindow]}: each side's
 *                       first frame. window: every stream's initial credit towards
 *                       the sender of the HELLO; sessionWindow (optional, since
 *                       2026-12-07): the initial credit of the whole session, shared
 *                       by the DATA of all streams. A HELLO without it comes from a
 *                       peer that neither honours nor returns session credit.
 *   OPEN     (stream)   AMP box {service}: asks for a stream to that service
 *   ACCEPT   (stream)   empty: the stream is open both ways
 *   REFUSE   (stream)   AMP box {code, description}: it never opened
 *   DATA     (stream)   bytes; counts against the receiver's window
 *   WINDOW   (stream)   uint32 BE increment of the sender's credit; on stream 0
 *                       (only to a peer whose HELLO had sessionWindow), of its
 *                       session credit
 *   END      (stream)   empty: no more DATA this way (half-close, TCP FIN)
 *   RESET    (stream)   AMP box {code, description}: abort both ways (TCP RST)
 *   PING     (session)  8 opaque bytes, answered by PONG with the same bytes
 *   PONG     (session)  8 bytes
 *   GOAWAY   (session)  AMP box {code, description}: no new streams either way;
 *                       the ones open run to their end
 *
 * The decoder checks every length before it reads and bounds what it
 * buffers: a control payload is assembled (at most MUX_MAX_CONTROL_PAYLOAD),
 * a DATA payload is handed on in the slices it arrived in, never copied.
 */
import { vertexError } from '../errors';
import { AmpDecoder, boxToStrings, encodeBox } from './amp';

// Specification (Q2Q mux/1).
export const MUX_VERSION = '1';
export const MUX_HEADER_BYTES = 9;
export const FRAME = {
  HELLO: 0,
  OPEN: 1,
  ACCEPT: 2,
  REFUSE: 3,
  DATA: 4,
  WINDOW: 5,
  END: 6,
  RESET: 7,
  PING: 8,
  PONG: 9,
  GOAWAY: 10,
} as const;
export type FrameType = (typeof FRAME)[keyof typeof FRAME];
const LAST_FRAME_TYPE = FRAME.GOAWAY;
export const PING_PAYLOAD_BYTES = 8;
export const WINDOW_PAYLOAD_BYTES = 4;
/** Largest payload of any frame; a sender splits DATA into frames of at most this. */
export const MUX_MAX_FRAME_PAYLOAD = 256 * 1024;
/** Largest payload of a frame other than DATA (an AMP box with a service name or a reason). */
export const MUX_MAX_CONTROL_PAYLOAD = 4096;
/** A window may never exceed this (RFC 9113 §6.9.1 uses the same bound). */
export const MUX_MAX_WINDOW = 2 ** 31 - 1;
/** Nor be smaller than one full DATA frame as a sender cuts them (64 KiB, MUX_DATA_FRAME in transport/mux.ts). */
export const MUX_MIN_WINDOW = 64 * 1024;

const NAMES: Record<number, string> = Object.fromEntries(Object.entries(FRAME).map(([k, v]) => [v, k]));

export function frameName(type: number): string {
  return NAMES[type] ?? `type ${type}`;
}

/** True for frames that belong to the session rather than one stream (their id must be 0). */
export function isSessionFrame(type: FrameType): boolean {
  return type === FRAME.HELLO || type === FRAME.PING || type === FRAME.PONG || type === FRAME.GOAWAY;
}

/** True for a frame allowed on a stream and on the session (id 0): WINDOW, which is either's credit. */
function isEitherFrame(type: FrameType): boolean {
  return type === FRAME.WINDOW;
}

export interface Hello {
  version: string;
  /** Every stream's initial credit towards the side that sent the HELLO. */
  window: number;
  /** The session's initial credit towards that side; null from a peer that has no session window. */
  sessionWindow: number | null;
}

/** HELLO's payload; `sessionWindow` is left out when null (what a peer without session windows sends). */
export function encodeHello(hello: Hello): Buffer {
  const fields: Record<string, string> = { version: hello.version, window: String(hello.window) };
  if (hello.sessionWindow !== null) fields.sessionWindow = String(hello.sessionWindow);
  return encodeFields(fields);
}

/**
 * Reads a HELLO. The version is returned as sent (the session decides what it
 * speaks); a window outside MUX_MIN_WINDOW..MUX_MAX_WINDOW, or a sessionWindow
 * that is present but not such a number, is MuxDecode.
 */
export function decodeHello(payload: Buffer): Hello {
  const f = decodeFields(payload);
  const number = (name: string, value: string | undefined): number => {
    const n = value !== undefined && /^[0-9]{1,10}$/.test(value) ? Number(value) : NaN;
    if (!(n >= MUX_MIN_WINDOW && n <= MUX_MAX_WINDOW)) throw vertexError('MuxDecode', `decode mux hello: ${name} ${value ?? '(none)'} out of range`);
    return n;
  };
  return {
    version: f.version ?? '',
    window: number('window', f.window),
    sessionWindow: f.sessionWindow === undefined ? null : number('sessionWindow', f.sessionWindow),
  };
}

export function encodeHeader(type: FrameType, streamId: number, length: number): Buffer {
  if (length > MUX_MAX_FRAME_PAYLOAD) throw vertexError('Internal', `encode mux frame: ${length}-byte payload exceeds ${MUX_MAX_FRAME_PAYLOAD}`);
  const header = Buffer.allocUnsafe(MUX_HEADER_BYTES);
  header.writeUInt8(type, 0);
  header.writeUInt32BE(streamId >>> 0, 1);
  header.writeUInt32BE(length, 5);
  return header;
}

/** A whole frame in one buffer: header and payload (control frames; DATA goes as header + payload). */
export function encodeFrame(type: FrameType, streamId: number, payload: Buffer = EMPTY): Buffer {
  return Buffer.concat([encodeHeader(type, streamId, payload.length), payload]);
}

export function encodeWindow(streamId: number, increment: number): Buffer {
  if (!Number.isInteger(increment) || increment < 1 || increment > MUX_MAX_WINDOW) {
    throw vertexError('Internal', `encode mux window: increment ${increment} out of range`);
  }
  const frame = Buffer.allocUnsafe(MUX_HEADER_BYTES + WINDOW_PAYLOAD_BYTES);
  frame.writeUInt8(FRAME.WINDOW, 0);
  frame.writeUInt32BE(streamId >>> 0, 1);
  frame.writeUInt32BE(WINDOW_PAYLOAD_BYTES, 5);
  frame.writeUInt32BE(increment, 9);
  return frame;
}

/** A control payload: an AMP box of short strings (bounded by MUX_MAX_CONTROL_PAYLOAD). */
export function encodeFields(fields: Record<string, string>): Buffer {
  return encodeBox(fields, { maxBoxBytes: MUX_MAX_CONTROL_PAYLOAD });
}

export function decodeFields(payload: Buffer): Record<string, string> {
  let boxes;
  try {
    const decoder = new AmpDecoder({ maxBoxBytes: MUX_MAX_CONTROL_PAYLOAD });
    boxes = decoder.push(payload);
    if (boxes.length !== 1 || !decoder.idle) throw new Error(`${boxes.length} boxes${decoder.idle ? '' : ' and a partial one'}, expected one`);
  } catch (err) {
    throw vertexError('MuxDecode', `decode mux fields: ${(err as Error).message}`, err);
  }
  return boxToStrings(boxes[0] as Map<string, Buffer>);
}

/**
 * OPEN's payload, `{service}`, the one control payload sent for every stream: written and
 * read here without the general AMP encoder and decoder (an AmpDecoder, a Map and an
 * object per frame; bench/README.md "new-connection cost"). The bytes are those of
 * encodeFields({ service }), and decodeOpen reads any box decodeFields reads.
 */
const SERVICE_KEY = Buffer.from('service');
const OPEN_FIXED = 2 + SERVICE_KEY.length + 2 + 2;

export function encodeOpenFrame(streamId: number, service: string): Buffer {
  const n = Buffer.byteLength(service);
  if (n === 0 || n > MUX_MAX_CONTROL_PAYLOAD - OPEN_FIXED) return encodeFrame(FRAME.OPEN, streamId, encodeFields({ service }));
  const payload = OPEN_FIXED + n;
  const frame = Buffer.allocUnsafe(MUX_HEADER_BYTES + payload);
  frame.writeUInt8(FRAME.OPEN, 0);
  frame.writeUInt32BE(streamId >>> 0, 1);
  frame.writeUInt32BE(payload, 5);
  let at = MUX_HEADER_BYTES;
  at = frame.writeUInt16BE(SERVICE_KEY.length, at);
  at += SERVICE_KEY.copy(frame, at);
  at = frame.writeUInt16BE(n, at);
  at += frame.write(service, at, 'utf8');
  frame.writeUInt16BE(0, at);
  return frame;
}

/** The service an OPEN names ('' when it names none). */
export function decodeOpen(payload: Buffer): string {
  const n = payload.length - OPEN_FIXED;
  if (
    n > 0 &&
    payload.readUInt16BE(0) === SERVICE_KEY.length &&
    payload.compare(SERVICE_KEY, 0, SERVICE_KEY.length, 2, 2 + SERVICE_KEY.length) === 0 &&
    payload.readUInt16BE(2 + SERVICE_KEY.length) === n &&
    payload.readUInt16BE(payload.length - 2) === 0
  ) {
    return payload.toString('utf8', 4 + SERVICE_KEY.length, 4 + SERVICE_KEY.length + n);
  }
  return decodeFields(payload).service ?? '';
}

export function decodeWindowIncrement(payload: Buffer): number {
  if (payload.length !== WINDOW_PAYLOAD_BYTES) throw vertexError('MuxDecode', `decode mux window: ${payload.length}-byte payload, expected ${WINDOW_PAYLOAD_BYTES}`);
  const increment = payload.readUInt32BE(0);
  if (increment < 1 || increment > MUX_MAX_WINDOW) throw vertexError('MuxDecode', `decode mux window: increment ${increment} out of range`);
  return increment;
}

const EMPTY = Buffer.alloc(0);

/** What the decoder hands on; called synchronously from push(). */
export interface FrameHandler {
  /** A complete frame other than DATA. */
  frame(type: FrameType, streamId: number, payload: Buffer): void;
  /** Part of a DATA frame's payload, in order; `last` on the frame's final slice (an empty DATA frame gives one empty last slice). */
  data(streamId: number, bytes: Buffer, last: boolean): void;
}

type DecoderState = 'header' | 'control' | 'data';

/**
 * Streaming decoder. push() takes bytes as they arrive and calls the handler
 * for each frame; a malformed header throws MuxDecode and the decoder is then
 * unusable (the session must close: the stream of frames has lost its place).
 */
export class FrameDecoder {
  readonly #handler: FrameHandler;
  #state: DecoderState = 'header';
  readonly #header = Buffer.alloc(MUX_HEADER_BYTES);
  #headerFill = 0;
  #type: FrameType = FRAME.DATA;
  #streamId = 0;
  #remaining = 0;
  #control: Buffer[] = [];
  #failed: Error | null = null;

  constructor(handler: FrameHandler) {
    this.#handler = handler;
  }

  push(chunk: Buffer): void {
    if (this.#failed) throw this.#failed;
    let at = 0;
    const end = chunk.length;
    while (at < end) {
      switch (this.#state) {
        case 'header': {
          if (this.#headerFill === 0 && end - at >= MUX_HEADER_BYTES) {
            this.#begin(chunk.readUInt8(at), chunk.readUInt32BE(at + 1), chunk.readUInt32BE(at + 5));
            at += MUX_HEADER_BYTES;
          } else {
            const take = Math.min(MUX_HEADER_BYTES - this.#headerFill, end - at);
            chunk.copy(this.#header, this.#headerFill, at, at + take);
            this.#headerFill += take;
            at += take;
            if (this.#headerFill === MUX_HEADER_BYTES) {
              this.#headerFill = 0;
              this.#begin(this.#header.readUInt8(0), this.#header.readUInt32BE(1), this.#header.readUInt32BE(5));
            }
          }
          break;
        }
        case 'data': {
          const take = Math.min(this.#remaining, end - at);
          this.#remaining -= take;
          const slice = take === end - at && at === 0 ? chunk : chunk.subarray(at, at + take);
          at += take;
          if (this.#remaining === 0) this.#state = 'header';
          this.#handler.data(this.#streamId, slice, this.#remaining === 0);
          break;
        }
        case 'control': {
          const take = Math.min(this.#remaining, end - at);
          this.#control.push(chunk.subarray(at, at + take));
          this.#remaining -= take;
          at += take;
          if (this.#remaining === 0) this.#finishControl();
          break;
        }
        default: {
          const never: never = this.#state;
          throw new Error(`mux decoder: unknown state ${String(never)}`);
        }
      }
    }
  }

  #begin(type: number, streamId: number, length: number): void {
    if (type > LAST_FRAME_TYPE) return this.#fail(`unknown frame type ${type}`);
    const t = type as FrameType;
    if (length > MUX_MAX_FRAME_PAYLOAD) return this.#fail(`${frameName(t)} frame of ${length} bytes exceeds ${MUX_MAX_FRAME_PAYLOAD}`);
    if (isSessionFrame(t) !== (streamId === 0) && !isEitherFrame(t)) return this.#fail(`${frameName(t)} frame on stream ${streamId}`);
    this.#type = t;
    this.#streamId = streamId;
    this.#remaining = length;
    if (t === FRAME.DATA) {
      if (length === 0) {
        this.#handler.data(streamId, EMPTY, true);
        return;
      }
      this.#state = 'data';
      return;
    }
    if (length > MUX_MAX_CONTROL_PAYLOAD) return this.#fail(`${frameName(t)} frame of ${length} bytes exceeds ${MUX_MAX_CONTROL_PAYLOAD}`);
    if (length === 0) {
      this.#handler.frame(t, streamId, EMPTY);
      return;
    }
    this.#state = 'control';
  }

  #finishControl(): void {
    const parts = this.#control;
    this.#control = [];
    this.#state = 'header';
    this.#handler.frame(this.#type, this.#streamId, parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts));
  }

  #fail(reason: string): never {
    this.#failed = vertexError('MuxDecode', `decode mux frame: ${reason}`);
    throw this.#failed;
  }
}
