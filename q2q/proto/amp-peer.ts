/**
 * AMP request/response dispatch (reference/vertex-q2q.md §3.2), sans I/O:
 * bytes come in through receive(), bytes go out through the `send` option,
 * and time comes from an injected Clock.
 *
 * A request box carries `_command` and, unless no answer is wanted, `_ask`
 * with a tag (a per-connection counter in lower-case hex, as Twisted writes
 * it). The answer echoes the tag in `_answer`, or in `_error` together with
 * `_error_code` and `_error_description`. Boxes are written with their keys
 * sorted bytewise, as Twisted does, so our bytes match its bytes.
 *
 * Error codes travel as Twisted's clients expect them (wire/amp-errors.ts):
 * an unknown command is answered with UNHANDLED and an internal failure with
 * UNKNOWN, every other VertexError with its own code. Tags are echoed byte
 * for byte, whatever bytes the asker chose.
 *
 * Where we differ from Twisted: a request-level failure (unknown command,
 * a responder that throws, an answer that cannot be encoded) is answered with
 * an error and never closes the connection. Only broken framing does, because
 * a stream that lost framing cannot be trusted again. String responders
 * (handle()) get text: a value that is not UTF-8 is refused with BadRequest
 * instead of being turned into replacement characters.
 */
import { isUtf8 } from 'node:buffer';
import { asVertexError, ErrorCode, isVertexError, VertexError, vertexError } from '../errors';
import { Clock, systemClock, Timer } from '../util/clock';
import { Logger, silentLogger } from '../util/log';
import { isThenable } from '../util/thenable';
import { AmpBox, AmpDecoder, AmpLimits, ampLimits, boxToStrings, encodeBox } from '../wire/amp';
import { ampErrorFromWire, ampErrorToWire } from '../wire/amp-errors';

export type AmpArgs = Record<string, string>;
export type AmpResponder = (args: AmpArgs) => Promise<AmpArgs | void> | AmpArgs | void;
/** A responder that sees and returns raw bytes, for binary values such as DER certificates. */
export type AmpRawResponder = (args: AmpBox) => Promise<AmpBox | void> | AmpBox | void;

export interface AmpCallOptions {
  /** How long to wait for the answer; Infinity waits for ever. Defaults to the peer's defaultTimeoutMs. */
  timeoutMs?: number;
}

export interface AmpPeerOptions {
  send: (bytes: Buffer) => void;
  clock?: Clock;
  log?: Logger;
  limits?: Partial<AmpLimits>;
  defaultTimeoutMs?: number;
  /** Called once when the peer's framing breaks, before the peer closes itself. */
  onFatal?: (err: VertexError) => void;
  /** Called once when the peer closes, for any reason, with the error pending calls got. */
  onClose?: (err: VertexError) => void;
}

export const DEFAULT_CALL_TIMEOUT_MS = 30_000;
/** Keys the dispatcher owns; arguments and answers may not use them. */
export const AMP_RESERVED_KEYS: ReadonlySet<string> = new Set([
  '_command',
  '_ask',
  '_answer',
  '_error',
  '_error_code',
  '_error_description',
]);
/** Error descriptions are for people; a longer one is cut rather than breaking the box. */
export const MAX_ERROR_DESCRIPTION_BYTES = 2048;

/**
 * How a call fails when the peer answers with an error box: `code` is ours
 * (wire/amp-errors.ts maps the wire code), `remoteCode` is the `_error_code`
 * exactly as the peer sent it, for peers with codes of their own.
 */
export class AmpRemoteError extends VertexError {
  readonly remoteCode: string;

  constructor(code: ErrorCode, message: string, remoteCode: string) {
    super(code, message);
    this.remoteCode = remoteCode;
  }
}

interface PendingCall {
  command: string;
  resolve: (box: AmpBox) => void;
  reject: (err: VertexError) => void;
  timer: Timer | undefined;
}

type Handler = { raw: false; fn: AmpResponder } | { raw: true; fn: AmpRawResponder };

type Fields = Iterable<[string, string | Buffer]>;

function fieldsOf(args: AmpArgs | AmpBox | undefined | void): Array<[string, string | Buffer]> {
  if (args === undefined || args === null) return [];
  return args instanceof Map ? Array.from(args) : Object.entries(args);
}

/** Bytewise key order, as Twisted's sender writes it. */
function sortedBox(fields: Fields): AmpBox {
  const entries = Array.from(fields, ([k, v]): [string, Buffer] => [k, typeof v === 'string' ? Buffer.from(v, 'utf8') : v]);
  entries.sort(([a], [b]) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8')));
  return new Map(entries);
}

function reservedKey(fields: Array<[string, unknown]>): string | undefined {
  return fields.find(([k]) => AMP_RESERVED_KEYS.has(k))?.[0];
}

function truncateUtf8(text: string, maxBytes: number): string {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= maxBytes) return text;
  // Back off to a character boundary: UTF-8 continuation bytes are 10xxxxxx.
  let end = maxBytes - 3;
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--;
  return `${bytes.subarray(0, end).toString('utf8')}...`;
}

export class AmpPeer {
  readonly #send: (bytes: Buffer) => void;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #limits: AmpLimits;
  readonly #defaultTimeoutMs: number;
  readonly #onFatal: ((err: VertexError) => void) | undefined;
  readonly #onClose: ((err: VertexError) => void) | undefined;
  readonly #decoder: AmpDecoder;
  readonly #handlers = new Map<string, Handler>();
  readonly #pending = new Map<string, PendingCall>();
  #lastTag = 0;
  #closed = false;

  constructor(options: AmpPeerOptions) {
    this.#send = options.send;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.log ?? silentLogger;
    this.#limits = ampLimits(options.limits);
    this.#defaultTimeoutMs = options.defaultTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.#onFatal = options.onFatal;
    this.#onClose = options.onClose;
    this.#decoder = new AmpDecoder(this.#limits);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Calls waiting for an answer. */
  get pendingCalls(): number {
    return this.#pending.size;
  }

  /** Registers the responder for `command`. Registering a command twice is a programming error. */
  handle(command: string, responder: AmpResponder): void {
    this.#register(command, { raw: false, fn: responder });
  }

  /** Like handle(), with raw byte values in and out. */
  handleRaw(command: string, responder: AmpRawResponder): void {
    this.#register(command, { raw: true, fn: responder });
  }

  /**
   * Sends `command` and resolves with the answer's fields. Rejects with the
   * peer's error code (Internal if we do not know it), Timeout, ConnectionLost,
   * or AmpEncode when the arguments cannot be framed.
   */
  async call(command: string, args: AmpArgs = {}, opts: AmpCallOptions = {}): Promise<AmpArgs> {
    return boxToStrings(await this.#call(command, fieldsOf(args), opts));
  }

  /** Like call(), with raw byte values in and out. */
  callRaw(command: string, args: AmpBox | Record<string, string | Buffer> = {}, opts: AmpCallOptions = {}): Promise<AmpBox> {
    return this.#call(command, args instanceof Map ? Array.from(args) : Object.entries(args), opts);
  }

  /**
   * Sends `command` without `_ask`: the peer sends nothing back, not even an
   * error. Throws ConnectionLost when closed and AmpEncode when the arguments
   * cannot be framed.
   */
  callNoAnswer(command: string, args: AmpArgs | AmpBox = {}): void {
    if (this.#closed) throw vertexError('ConnectionLost', `${command}: connection closed`);
    const bytes = this.#encodeRequest(command, undefined, fieldsOf(args));
    this.#write(bytes);
  }

  /** Feeds bytes from the connection. Broken framing is fatal; input after closing is ignored. */
  receive(bytes: Buffer): void {
    if (this.#closed) return;
    let boxes: AmpBox[];
    try {
      boxes = this.#decoder.push(bytes);
    } catch (err) {
      const reason = asVertexError(err, 'AmpDecode');
      this.#log.debug({ reason: reason.message }, 'amp: framing broken');
      try {
        this.#onFatal?.(reason);
      } finally {
        this.close(vertexError('ConnectionLost', `amp connection dropped: ${reason.message}`, reason));
      }
      return;
    }
    for (const box of boxes) {
      if (this.#closed) return;
      this.#dispatch(box);
    }
  }

  /**
   * Fails every pending call with `err`, or with ConnectionLost, cancels their
   * timers and stops all further sending and receiving. Idempotent.
   */
  close(err?: VertexError): void {
    if (this.#closed) return;
    this.#closed = true;
    const pending = Array.from(this.#pending.values());
    this.#pending.clear();
    for (const call of pending) {
      call.timer?.cancel();
      call.reject(err ?? vertexError('ConnectionLost', `${call.command}: connection closed before the answer`));
    }
    this.#onClose?.(err ?? vertexError('ConnectionLost', 'amp connection closed'));
  }

  #register(command: string, handler: Handler): void {
    if (command.length === 0) throw vertexError('Internal', 'amp: a command name cannot be empty');
    if (this.#handlers.has(command)) throw vertexError('Internal', `amp: command ${JSON.stringify(command)} already has a responder`);
    this.#handlers.set(command, handler);
  }

  #encodeRequest(command: string, tag: string | undefined, fields: Array<[string, string | Buffer]>): Buffer {
    const reserved = reservedKey(fields);
    if (reserved !== undefined) throw vertexError('AmpEncode', `${command}: argument key ${JSON.stringify(reserved)} is reserved`);
    const head: Array<[string, string]> = [['_command', command]];
    if (tag !== undefined) head.push(['_ask', tag]);
    try {
      return encodeBox(sortedBox([...head, ...fields]), this.#limits);
    } catch (err) {
      throw vertexError('AmpEncode', `${command}: ${err instanceof Error ? err.message : String(err)}`, err);
    }
  }

  #call(command: string, fields: Array<[string, string | Buffer]>, opts: AmpCallOptions): Promise<AmpBox> {
    if (this.#closed) return Promise.reject(vertexError('ConnectionLost', `${command}: connection closed`));
    const tag = (++this.#lastTag).toString(16);
    let bytes: Buffer;
    try {
      bytes = this.#encodeRequest(command, tag, fields);
    } catch (err) {
      return Promise.reject(asVertexError(err, 'AmpEncode'));
    }
    const timeoutMs = opts.timeoutMs ?? this.#defaultTimeoutMs;
    return new Promise<AmpBox>((resolve, reject) => {
      const call: PendingCall = { command, resolve, reject, timer: undefined };
      if (Number.isFinite(timeoutMs)) {
        call.timer = this.#clock.setTimer(() => {
          if (this.#pending.get(tag) !== call) return;
          this.#pending.delete(tag);
          reject(vertexError('Timeout', `${command}: no answer after ${timeoutMs} ms`));
        }, timeoutMs);
      }
      // Registered before sending: a peer wired back to back may answer inside send().
      this.#pending.set(tag, call);
      this.#write(bytes);
    });
  }

  #write(bytes: Buffer): void {
    try {
      this.#send(bytes);
    } catch (err) {
      this.#log.warn({ err }, 'amp: send failed, closing');
      this.close(vertexError('ConnectionLost', `amp send failed: ${err instanceof Error ? err.message : String(err)}`, err));
    }
  }

  #dispatch(box: AmpBox): void {
    const answer = box.get('_answer');
    if (answer !== undefined) {
      const fields = new Map(box);
      fields.delete('_answer');
      this.#settle(answer.toString('utf8'), (call) => call.resolve(fields));
      return;
    }
    const error = box.get('_error');
    if (error !== undefined) {
      const rawCode = box.get('_error_code')?.toString('utf8') ?? '';
      this.#settle(error.toString('utf8'), (call) => {
        const rawDescription = box.get('_error_description')?.toString('utf8');
        const { code, description } = ampErrorFromWire(rawCode, rawDescription ?? '');
        const message = rawDescription === undefined ? `${call.command}: error ${JSON.stringify(rawCode)} without a description` : description;
        call.reject(new AmpRemoteError(code, message, rawCode));
      });
      return;
    }
    const command = box.get('_command');
    if (command !== undefined) {
      this.#request(command.toString('utf8'), box);
      return;
    }
    this.#log.warn({ keys: Array.from(box.keys()).slice(0, 8) }, 'amp: ignoring a box with no _command, _answer or _error');
  }

  #settle(tag: string, settle: (call: PendingCall) => void): void {
    const call = this.#pending.get(tag);
    if (call === undefined) {
      // Usually an answer that arrived after its call timed out.
      this.#log.debug({ tag }, 'amp: ignoring an answer with an unknown tag');
      return;
    }
    this.#pending.delete(tag);
    call.timer?.cancel();
    settle(call);
  }

  #request(command: string, box: AmpBox): void {
    // Echoed as bytes: the asker matches its answers by the exact tag it sent.
    const tag = box.get('_ask');
    const handler = this.#handlers.get(command);
    if (handler === undefined) {
      this.#log.debug({ command }, 'amp: unknown command');
      this.#sendError(command, tag, 'UnknownCommand', `unknown command ${JSON.stringify(truncateUtf8(command, 64))}`);
      return;
    }
    const fields = new Map(box);
    fields.delete('_command');
    fields.delete('_ask');
    let result: unknown;
    try {
      if (!handler.raw) {
        for (const [key, value] of fields) {
          if (!isUtf8(value)) throw vertexError('BadRequest', `${command}: argument ${JSON.stringify(key)} is not valid utf-8`);
        }
      }
      result = handler.raw ? handler.fn(fields) : handler.fn(boxToStrings(fields));
    } catch (err) {
      this.#failed(command, tag, err);
      return;
    }
    if (isThenable(result)) {
      result.then(
        (value) => this.#answer(command, tag, value),
        (err: unknown) => this.#failed(command, tag, err),
      );
    } else {
      this.#answer(command, tag, result);
    }
  }

  #answer(command: string, tag: Buffer | undefined, result: unknown): void {
    if (tag === undefined || this.#closed) return;
    let bytes: Buffer;
    try {
      const fields = fieldsOf(result as AmpArgs | AmpBox | undefined);
      const reserved = reservedKey(fields);
      if (reserved !== undefined) throw vertexError('AmpEncode', `answer key ${JSON.stringify(reserved)} is reserved`);
      bytes = encodeBox(sortedBox([['_answer', tag], ...fields]), this.#limits);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      this.#log.warn({ command, reason }, 'amp: answer cannot be encoded');
      this.#sendError(command, tag, 'Internal', `${command}: answer cannot be encoded: ${reason}`);
      return;
    }
    this.#write(bytes);
  }

  #failed(command: string, tag: Buffer | undefined, err: unknown): void {
    if (isVertexError(err)) {
      this.#log.debug({ command, code: err.code, reason: err.message }, 'amp: responder refused');
      this.#sendError(command, tag, err.code, err.message);
      return;
    }
    // Never send a foreign error's text: it may carry paths, stacks or secrets.
    this.#log.warn({ command, err }, 'amp: responder failed');
    this.#sendError(command, tag, 'Internal', 'internal error');
  }

  #sendError(command: string, tag: Buffer | undefined, code: ErrorCode, description: string): void {
    if (tag === undefined || this.#closed) {
      if (tag === undefined) this.#log.debug({ command, code }, 'amp: error for a request that wants no answer');
      return;
    }
    const wire = ampErrorToWire(code, description);
    const bytes = encodeBox(
      sortedBox([
        ['_error', tag],
        ['_error_code', wire.code],
        ['_error_description', truncateUtf8(wire.description, MAX_ERROR_DESCRIPTION_BYTES)],
      ]),
    );
    this.#write(bytes);
  }
}
