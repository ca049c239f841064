/**
 * Frames over any Duplex (a Q2Q stream, a TLS socket, a plain socket pair):
 * the transfer logic never sees what carries the bytes.
 *
 * Back-pressure runs end to end: read() pulls the next chunk from the stream
 * only when the caller asks for the next frame, so a slow disk stops the
 * socket from reading and TCP (or PTCP) flow control stops the sender; and
 * the write methods resolve only once the stream has room again.
 */
import type { Duplex } from 'node:stream';
import { vertexError, VertexError } from '../../q2q/errors';
import { systemClock, type Clock } from '../../q2q/util/clock';
import { encodeDataHeader, encodeFrame, FrameDecoder, type OfferLimits, type TransferFrame } from '../../q2q/wire/file-transfer';

export interface FrameChannelOptions {
  clock?: Clock;
  /** What the stream connects to, for messages: `bob@b.test`. */
  peer?: string;
  /** The receiver's limits on one offer, enforced while it is decoded. */
  offerLimits?: OfferLimits;
}

export class FrameChannel {
  readonly stream: Duplex;
  readonly peer: string;
  readonly #decoder: FrameDecoder;
  readonly #queue: TransferFrame[] = [];
  readonly #chunks: AsyncIterator<Buffer>;
  readonly #clock: Clock;
  #ended = false;
  #lastActivity: number;
  #abortReason: Error | null = null;
  /** Bytes of frames read and written, framing included. */
  bytesIn = 0;
  bytesOut = 0;

  constructor(stream: Duplex, options: FrameChannelOptions = {}) {
    this.stream = stream;
    this.peer = options.peer ?? 'the peer';
    this.#clock = options.clock ?? systemClock;
    this.#decoder = new FrameDecoder(options.offerLimits);
    this.#lastActivity = this.#clock.now();
    this.#chunks = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  }

  /**
   * The next frame, or null when the peer closed its side cleanly. Rejects
   * with TransferDecode (or ProtocolVersion) on bad framing, TransferFailed
   * when the stream breaks or nothing moves either way for `timeoutMs`.
   */
  async read(timeoutMs?: number, waitingFor = 'the next frame'): Promise<TransferFrame | null> {
    for (;;) {
      const queued = this.#queue.shift();
      if (queued !== undefined) return queued;
      if (this.#ended) return null;
      const chunk = await this.#nextChunk(timeoutMs, waitingFor);
      if (chunk === null) {
        this.#ended = true;
        // Decoding an empty push surfaces nothing; a frame cut short is a clean EOF mid-frame, reported as such.
        if (this.#decoder.buffered > 0) {
          throw vertexError('TransferFailed', `${this.peer} closed the connection in the middle of a frame`);
        }
        return null;
      }
      this.bytesIn += chunk.length;
      this.#queue.push(...this.#decoder.push(chunk));
    }
  }

  async #nextChunk(timeoutMs: number | undefined, waitingFor: string): Promise<Buffer | null> {
    const next = this.#chunks.next();
    let timer: { cancel(): void } | null = null;
    try {
      const result = await (timeoutMs === undefined
        ? next
        : Promise.race([
          next,
          new Promise<never>((_, reject) => {
            // Idle, not total: bytes moving either way (our own writes included) re-arm the watchdog.
            const check = () => {
              const idle = this.#clock.now() - this.#lastActivity;
              if (idle >= timeoutMs) {
                reject(vertexError('TransferFailed', `nothing moved to or from ${this.peer} for ${Math.round(timeoutMs / 1000)} s while waiting for ${waitingFor}`));
              } else {
                timer = this.#clock.setTimer(check, timeoutMs - idle);
              }
            };
            timer = this.#clock.setTimer(check, timeoutMs);
          }),
        ]));
      this.#lastActivity = this.#clock.now();
      if (result.done) return null;
      const value = result.value as Buffer | string;
      return typeof value === 'string' ? Buffer.from(value) : value;
    } catch (err) {
      if (this.#abortReason) throw this.#abortReason;
      // A stream of a peer session reports a lost peer as ConnectionLost: for a transfer that
      // is a broken connection like any other (TransferFailed), not a connect-time outcome.
      if (err instanceof VertexError && err.code !== 'ConnectionLost') throw err;
      throw vertexError('TransferFailed', `connection to ${this.peer} broke: ${describe(err)}`, err);
    } finally {
      (timer as { cancel(): void } | null)?.cancel();
    }
  }

  /** Writes one control frame; resolves when the stream can take more. */
  async write(frame: TransferFrame): Promise<void> {
    const bytes = encodeFrame(frame);
    this.bytesOut += bytes.length;
    if (!this.#writable()) throw this.#closedError();
    this.#lastActivity = this.#clock.now();
    if (!this.stream.write(bytes)) await this.#drained();
  }

  /** Writes a DATA frame without copying `bytes`; resolves when the stream can take more. */
  async writeData(bytes: Buffer): Promise<void> {
    const head = encodeDataHeader(bytes.length);
    this.bytesOut += head.length + bytes.length;
    if (!this.#writable()) throw this.#closedError();
    this.stream.cork();
    this.stream.write(head);
    const ok = this.stream.write(bytes);
    this.stream.uncork();
    this.#lastActivity = this.#clock.now();
    if (!ok) await this.#drained();
  }

  /** Writes a last frame if the stream still takes one, then ends our side. Never throws. */
  endWith(frame: TransferFrame | null): void {
    if (!this.#writable()) return;
    try {
      if (frame !== null) this.stream.write(encodeFrame(frame));
      this.stream.end();
    } catch {
      // The stream broke between the check and the write; the peer learns from the close instead.
    }
  }

  /** Ends our side cleanly. */
  end(): void {
    this.endWith(null);
  }

  /** Tears the stream down; pending reads and writes reject with `reason`. */
  abort(reason: Error): void {
    this.#abortReason ??= reason;
    this.stream.destroy();
  }

  /**
   * Waits, at most timeoutMs, for the peer to close its side after ours is
   * ended, reading and dropping anything else; then destroys the stream.
   * Never throws: by now the transfer's outcome is decided.
   */
  async closeGracefully(timeoutMs: number): Promise<void> {
    this.end();
    try {
      while ((await this.read(timeoutMs, 'the peer to close')) !== null) {
        // A frame after the outcome (say, a late error) changes nothing.
      }
    } catch {
      // Timed out or broke: the outcome stands.
    } finally {
      this.stream.destroy();
    }
  }

  #writable(): boolean {
    return !this.stream.destroyed && !this.stream.writableEnded;
  }

  #closedError(): Error {
    return this.#abortReason ?? vertexError('TransferFailed', `connection to ${this.peer} closed`);
  }

  #drained(): Promise<void> {
    const stream = this.stream;
    return new Promise((resolve, reject) => {
      const cleanup = () => {
        stream.off('drain', onDrain);
        stream.off('close', onClose);
        stream.off('error', onError);
      };
      const onDrain = () => {
        cleanup();
        this.#lastActivity = this.#clock.now();
        resolve();
      };
      const onClose = () => { cleanup(); reject(this.#closedError()); };
      const onError = (err: Error) => {
        cleanup();
        reject(this.#abortReason ?? vertexError('TransferFailed', `connection to ${this.peer} broke: ${describe(err)}`, err));
      };
      stream.on('drain', onDrain);
      stream.on('close', onClose);
      stream.on('error', onError);
      if (stream.destroyed) onClose();
    });
  }
}

export function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code && !err.message.includes(code) ? `${err.message} (${code})` : err.message;
  }
  return String(err);
}
