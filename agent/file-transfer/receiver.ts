/**
 * The receiving end of one transfer, over any Duplex.
 *
 * ```mermaid
 * sequenceDiagram
 *   participant S as sender
 *   participant R as receiver
 *   S->>R: OFFER (names, sizes, SHA-256)
 *   Note over R: allow list, names, DIR writable, space, ask
 *   R-->>S: REJECT (reason) and close
 *   R->>S: ACCEPT (per file: bytes held in .name.vertex-partial, their SHA-256)
 *   loop each file
 *     S->>R: FILE (index, offset: 0 or the resume point)
 *     S->>R: DATA ... (size - offset bytes)
 *     Note over R: fsync, SHA-256 check, rename to the final name
 *     R->>S: VERIFIED (index, SHA-256)
 *   end
 *   Note over S,R: both close; an ERROR frame ends it early either way
 * ```
 *
 * Nothing is written under a final name until its SHA-256 matched, so a
 * transfer that breaks off leaves at most `.name.vertex-partial` files,
 * which the next offer of the same file resumes from.
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { DEFAULTS } from '../../config/defaults';
import { isVertexError, vertexError, VertexError } from '../../q2q/errors';
import { isAllowed } from '../../q2q/negotiate/allow';
import type { Clock } from '../../q2q/util/clock';
import { silentLogger, type Logger } from '../../q2q/util/log';
import {
  EMPTY_SHA256, type ErrorReason, type OfferedFile, type RejectReason, type ResumePoint, type TransferFrame,
} from '../../q2q/wire/file-transfer';
import { describe, FrameChannel } from './frame-channel';
import { badOfferPaths, finalPath, partialPath, quoteName } from './names';
import { formatBytes } from './progress';

// Implementation tunables.
/** A sender silent this long mid-transfer is given up on. */
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000;
/** How long the sender has to send its offer after connecting. */
export const OFFER_TIMEOUT_MS = 30_000;
/** After the outcome, how long to wait for the sender to close before tearing down. */
export const CLOSE_GRACE_MS = 5_000;
/** Data gathered before one write to disk; two batches at most are held (one being written). */
export const WRITE_BATCH_BYTES = 1024 * 1024;
/** Background write-back interval while a file arrives. */
export const SYNC_EVERY_BYTES = 16 * 1024 * 1024;
const READ_CHUNK_BYTES = 1024 * 1024;
/** Partial files looked up at once while an offer is checked (not one fs call per offered file at once). */
const CHECK_CONCURRENCY = 16;

/**
 * What one offer may ask of this receiver (issue 11: one offer of 65,536 files drove a
 * receiver to 490 MB). Both are checked while the offer is decoded, before anything per
 * file is allocated or touched on disk; an offer above either is refused (REJECT
 * too-large) with a message that says which and what to do.
 */
export interface ReceiveLimits {
  /** Files in one offer. */
  maxFiles: number;
  /** The offered names together, in UTF-8 bytes. */
  maxNameBytes: number;
}

/** docs/security.md lists these; agent.yaml's receive: and `receive` options override them. Values from config/defaults.ts. */
export const DEFAULT_RECEIVE_LIMITS: Readonly<ReceiveLimits> = Object.freeze({
  maxFiles: DEFAULTS.agent_receive.max_files,
  maxNameBytes: DEFAULTS.agent_receive.max_name_bytes,
});

export interface IncomingOffer {
  peer: string;
  files: ReadonlyArray<{ path: string; size: number }>;
  totalBytes: number;
}

export interface ReceiveProgress {
  peer: string;
  file: string;
  fileIndex: number;
  fileCount: number;
  /** Bytes of all files that are in place, counting resumed bytes. */
  bytesDone: number;
  bytesTotal: number;
  /** DATA bytes that crossed the wire so far. */
  wireBytes: number;
}

export interface ReceivedFile {
  path: string;
  /** Where it landed. */
  file: string;
  size: number;
  sha256: string;
  /** Bytes that were already in a partial file and did not cross the wire. */
  resumedFrom: number;
}

export interface ReceiveResult {
  peer: string;
  files: ReceivedFile[];
  bytesTotal: number;
  /** DATA bytes that crossed the wire: less than bytesTotal after a resume. */
  bytesReceived: number;
}

export interface ReceiveOptions {
  /** An existing directory; resolved, it is the root nothing may escape. */
  dir: string;
  /** The sender's verified address, as the Q2Q stream reports it. */
  peer: string;
  /** Who may send (`*`, `*@domain`, `user@domain`); undefined means anyone. */
  allow?: readonly string[];
  overwrite?: boolean;
  /** Accept or decline an offer that passed every check. Default: accept. */
  decide?: (offer: IncomingOffer) => Promise<boolean>;
  onProgress?: (progress: ReceiveProgress) => void;
  /** Called once the offer is accepted. */
  onAccept?: (offer: IncomingOffer) => void;
  /** Final paths being written by transfers in this process; a second offer of one of them is refused as busy. */
  busy?: Set<string>;
  /** Aborting sends a `cancelled` error to the sender and stops; partial data is kept. */
  signal?: AbortSignal;
  idleTimeoutMs?: number;
  /** Limits on one offer; each defaults to DEFAULT_RECEIVE_LIMITS. */
  limits?: Partial<ReceiveLimits>;
  clock?: Clock;
  log?: Logger;
}

type ReceiverState = 'await-offer' | 'checking' | 'await-file' | 'receiving' | 'done' | 'failed';

/** Raised on our side when we refuse an offer; the sender gets the same reason in a REJECT frame. */
class Refusal extends Error {
  constructor(readonly reason: RejectReason, message: string) {
    super(message);
  }
}

interface Plan {
  offered: OfferedFile;
  final: string;
  partial: string;
  resume: ResumePoint;
  /** SHA-256 state over the partial's first resume.offset bytes. */
  resumeHash: Hash | null;
}

/**
 * Receives one transfer. Resolves when every file is verified and in place;
 * rejects with TransferRejected when we refused the offer, TransferFailed
 * when the transfer broke off, TransferDecode for a peer that breaks the
 * framing. The stream is closed in every case.
 */
export async function receiveFiles(stream: Duplex, options: ReceiveOptions): Promise<ReceiveResult> {
  const receiver = new Receiver(stream, options);
  return receiver.run();
}

class Receiver {
  readonly #ch: FrameChannel;
  readonly #opts: ReceiveOptions;
  readonly #dir: string;
  readonly #log: Logger;
  readonly #idleMs: number;
  readonly #busy: Set<string>;
  readonly #held: string[] = [];
  #state: ReceiverState = 'await-offer';
  #accepted = false;
  #plans: Plan[] = [];
  #next = 0;
  #wireBytes = 0;
  #doneBytes = 0;
  #totalBytes = 0;
  readonly #received: ReceivedFile[] = [];

  constructor(stream: Duplex, opts: ReceiveOptions) {
    this.#opts = opts;
    this.#dir = path.resolve(opts.dir);
    this.#log = (opts.log ?? silentLogger).child({ component: 'file-receive', peer: opts.peer });
    this.#idleMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    this.#busy = opts.busy ?? new Set();
    const offerLimits = { ...DEFAULT_RECEIVE_LIMITS, ...opts.limits };
    this.#ch = new FrameChannel(stream, { peer: opts.peer, offerLimits, ...(opts.clock && { clock: opts.clock }) });
  }

  async run(): Promise<ReceiveResult> {
    let file: IncomingFile | null = null;
    const { signal } = this.#opts;
    const onAbort = () => {
      this.#ch.endWith({ type: 'error', reason: 'cancelled', message: 'the receiver cancelled' });
      this.#ch.abort(vertexError('TransferFailed', `receive from ${this.#opts.peer}: cancelled; the partial data is kept for a resume`));
    };
    if (signal?.aborted) onAbort();
    signal?.addEventListener('abort', onAbort);
    try {
      const offer = await this.#readOffer();
      this.#state = 'checking';
      await this.#check(offer);
      this.#state = 'await-file';
      while (this.#next < this.#plans.length) {
        const frame = await this.#ch.read(this.#idleMs, file !== null ? 'file data' : 'the next file');
        if (frame === null) {
          const where = file ? ` after ${file.written} of ${file.plan.offered.size} bytes of ${quoteName(file.plan.offered.path)}` : '';
          throw vertexError('TransferFailed', `${this.#opts.peer} closed the connection${where}; the partial data is kept for a resume`);
        }
        if (frame.type === 'error') {
          throw new PeerFailure(`${this.#opts.peer} stopped the transfer (${frame.reason}): ${frame.message}; the partial data is kept for a resume`);
        }
        file = await this.#handle(frame, file);
        if (file === null) this.#state = 'await-file';
      }
      this.#state = 'done';
      await this.#ch.closeGracefully(CLOSE_GRACE_MS);
      return { peer: this.#opts.peer, files: this.#received, bytesTotal: this.#totalBytes, bytesReceived: this.#wireBytes };
    } catch (err) {
      this.#state = 'failed';
      if (file !== null) await file.sink.abandon();
      throw await this.#fail(err);
    } finally {
      signal?.removeEventListener('abort', onAbort);
      for (const key of this.#held) this.#busy.delete(key);
    }
  }

  async #handle(frame: TransferFrame, file: IncomingFile | null): Promise<IncomingFile | null> {
    switch (this.#state) {
      case 'await-file': {
        const started = await this.#startFile(frame);
        this.#state = 'receiving';
        return started.remaining === 0 ? this.#finishFile(started) : started;
      }
      case 'receiving':
        if (file === null) throw new Error('receiving without a file');
        return this.#data(file, frame);
      case 'await-offer':
      case 'checking':
      case 'done':
      case 'failed':
        throw new Error(`frame in state ${this.#state}`);
      default: {
        const unreachable: never = this.#state;
        throw new Error(`unknown state ${String(unreachable)}`);
      }
    }
  }

  async #readOffer(): Promise<OfferedFile[]> {
    let frame: TransferFrame | null;
    try {
      frame = await this.#ch.read(OFFER_TIMEOUT_MS, 'an offer');
    } catch (err) {
      if (isVertexError(err, 'ProtocolVersion')) throw new Refusal('version', `unsupported protocol: ${err.message}`);
      // Over ReceiveLimits: refused while decoding, before the offer's files exist here.
      if (isVertexError(err, 'TransferRejected')) throw new Refusal('too-large', err.message);
      throw err;
    }
    if (frame === null) throw vertexError('TransferFailed', `${this.#opts.peer} closed the connection without an offer`);
    if (frame.type !== 'offer') throw protocolError(`expected an offer, got ${frame.type}`);
    return frame.files;
  }

  /** Every check before we say yes; throws a Refusal for the first that fails. */
  async #check(files: OfferedFile[]): Promise<void> {
    const { peer } = this.#opts;
    if (this.#opts.allow !== undefined && !isAllowed(this.#opts.allow, peer)) {
      throw new Refusal('not-allowed', `${peer} is not allowed to send here (allowed: ${this.#opts.allow.join(', ') || 'nobody'})`);
    }
    const bad = badOfferPaths(files.map((f) => f.path));
    if (bad !== null) throw new Refusal('bad-name', `refused name ${quoteName(bad.name)}: ${bad.why}`);

    this.#totalBytes = files.reduce((sum, f) => sum + f.size, 0);
    this.#plans = [];
    for (const offered of files) {
      const final = finalPath(this.#dir, offered.path);
      await this.#checkPlace(offered.path, final);
      this.#plans.push({ offered, final, partial: partialPath(final), resume: { offset: 0, sha256: EMPTY_SHA256 }, resumeHash: null });
    }
    await this.#checkWritable();
    const held: number[] = [];
    for (let i = 0; i < this.#plans.length; i += CHECK_CONCURRENCY) {
      held.push(...await Promise.all(this.#plans.slice(i, i + CHECK_CONCURRENCY).map((p) => partialSize(p.partial, p.offered.path))));
    }
    const needed = this.#plans.reduce((sum, p, i) => sum + Math.max(0, p.offered.size - Math.min(held[i] ?? 0, p.offered.size)), 0);
    const available = await freeBytes(this.#dir);
    if (available !== null && needed > available) {
      throw new Refusal('no-space', `not enough space in ${this.#dir}: ${formatBytes(needed)} needed, ${formatBytes(available)} free`);
    }
    for (const p of this.#plans) {
      if (this.#busy.has(p.final)) throw new Refusal('busy', `${quoteName(p.offered.path)} is being received from someone else right now`);
    }
    for (const p of this.#plans) {
      this.#busy.add(p.final);
      this.#held.push(p.final);
    }

    const offer: IncomingOffer = { peer, files: files.map((f) => ({ path: f.path, size: f.size })), totalBytes: this.#totalBytes };
    if (this.#opts.decide && !(await this.#opts.decide(offer))) throw new Refusal('declined', `${peer}'s offer was declined`);

    for (const [i, p] of this.#plans.entries()) {
      const size = held[i] ?? 0;
      if (size > 0 && size <= p.offered.size) {
        try {
          p.resumeHash = await hashPrefix(p.partial, size);
        } catch (err) {
          throw new Refusal('unwritable', `cannot read the partial file ${p.partial}: ${describe(err)}`);
        }
        p.resume = { offset: size, sha256: p.resumeHash.copy().digest() };
      }
    }
    this.#accepted = true;
    await this.#ch.write({ type: 'accept', resume: this.#plans.map((p) => p.resume) });
    this.#log.info({ files: files.length, bytes: this.#totalBytes }, 'offer accepted');
    this.#opts.onAccept?.(offer);
  }

  /** The final name must be free (or --overwrite), and every directory on the way a real directory inside DIR. */
  async #checkPlace(name: string, final: string): Promise<void> {
    const parts = path.relative(this.#dir, final).split(path.sep);
    let at = this.#dir;
    for (const [i, part] of parts.entries()) {
      at = path.join(at, part);
      const st = await lstatOrNull(at);
      if (st === null) return;
      const last = i === parts.length - 1;
      if (st.isSymbolicLink()) throw new Refusal('bad-name', `refused name ${quoteName(name)}: ${at} is a symbolic link`);
      if (!last && !st.isDirectory()) throw new Refusal('bad-name', `refused name ${quoteName(name)}: ${at} exists and is not a directory`);
      if (last && !st.isFile()) throw new Refusal('bad-name', `refused name ${quoteName(name)}: ${at} exists and is not a regular file`);
      if (last && !this.#opts.overwrite) throw new Refusal('exists', `${quoteName(name)} already exists in ${this.#dir} (the receiver can pass --overwrite)`);
    }
  }

  /** Creates and removes a probe file, so an unwritable or read-only DIR is refused before any data moves. */
  async #checkWritable(): Promise<void> {
    const probe = path.join(this.#dir, `.vertex-probe-${randomBytes(6).toString('hex')}`);
    try {
      const fh = await fs.promises.open(probe, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
      await fh.close();
      await fs.promises.unlink(probe);
    } catch (err) {
      throw new Refusal('unwritable', `cannot write to ${this.#dir}: ${describe(err)}`);
    }
  }

  async #startFile(frame: TransferFrame): Promise<IncomingFile> {
    if (frame.type !== 'file') throw protocolError(`expected a file frame, got ${frame.type}`);
    if (frame.index !== this.#next) throw protocolError(`expected file ${this.#next}, got file ${frame.index}`);
    const plan = this.#plans[frame.index];
    if (plan === undefined) throw protocolError(`file ${frame.index} was not offered`);
    if (frame.offset !== 0 && frame.offset !== plan.resume.offset) {
      throw protocolError(`file ${frame.index} starts at ${frame.offset}, but only 0 or ${plan.resume.offset} were offered`);
    }
    const offset = frame.offset;
    await this.#makeParents(plan);
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(plan.partial, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o666);
    } catch (err) {
      throw ioError(`open ${plan.partial}`, err);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw ioError(`open ${plan.partial}`, new Error('not a regular file'));
      if (st.size < offset) throw ioError(`resume ${plan.partial}`, new Error(`it shrank to ${st.size} bytes below the resume point ${offset}`));
      await fh.truncate(offset);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw isVertexError(err) ? err : ioError(`prepare ${plan.partial}`, err);
    }
    const hash = offset > 0 && plan.resumeHash ? plan.resumeHash : createHash('sha256');
    this.#doneBytes += offset;
    this.#log.debug({ file: plan.offered.path, offset }, 'file started');
    return { plan, hash, sink: new FileSink(fh, offset, plan.partial), offset, written: offset, remaining: plan.offered.size - offset };
  }

  /** mkdir -p under DIR, refusing anything on the way that is not a real directory. */
  async #makeParents(plan: Plan): Promise<void> {
    const parts = path.relative(this.#dir, path.dirname(plan.final)).split(path.sep).filter((p) => p !== '');
    let at = this.#dir;
    for (const part of parts) {
      at = path.join(at, part);
      try {
        await fs.promises.mkdir(at, { mode: 0o777 });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError(`create directory ${at}`, err);
      }
      const st = await lstatOrNull(at);
      if (st === null || !st.isDirectory() || st.isSymbolicLink()) {
        throw vertexError('TransferFailed', `receive ${quoteName(plan.offered.path)}: ${at} is not a directory`);
      }
    }
  }

  async #data(file: IncomingFile, frame: TransferFrame): Promise<IncomingFile | null> {
    if (frame.type !== 'data') throw protocolError(`expected data for ${quoteName(file.plan.offered.path)}, got ${frame.type}`);
    const bytes = frame.bytes;
    if (bytes.length > file.remaining) {
      throw protocolError(`${bytes.length} bytes of data where ${file.remaining} remained of ${quoteName(file.plan.offered.path)}`);
    }
    file.hash.update(bytes);
    await file.sink.write(bytes);
    file.written += bytes.length;
    file.remaining -= bytes.length;
    this.#wireBytes += bytes.length;
    this.#doneBytes += bytes.length;
    this.#progress(file);
    return file.remaining === 0 ? this.#finishFile(file) : file;
  }

  async #finishFile(file: IncomingFile): Promise<null> {
    const { plan } = file;
    await file.sink.close();
    const digest = file.hash.digest();
    if (!digest.equals(plan.offered.sha256)) {
      await fs.promises.unlink(plan.partial).catch(() => undefined);
      throw new TransferError('verify', `${quoteName(plan.offered.path)}: SHA-256 ${digest.toString('hex')} does not match the offered ${plan.offered.sha256.toString('hex')}; the data was discarded`);
    }
    await this.#place(plan);
    await this.#ch.write({ type: 'verified', index: this.#next, sha256: digest });
    this.#received.push({
      path: plan.offered.path, file: plan.final, size: plan.offered.size, sha256: digest.toString('hex'), resumedFrom: file.offset,
    });
    this.#log.debug({ file: plan.offered.path }, 'file verified');
    this.#next += 1;
    this.#progress(file);
    return null;
  }

  /** Moves the verified partial to its final name; without --overwrite, never replaces a file that appeared meanwhile. */
  async #place(plan: Plan): Promise<void> {
    if (this.#opts.overwrite) {
      try {
        await fs.promises.rename(plan.partial, plan.final);
      } catch (err) {
        throw ioError(`rename ${plan.partial} to ${plan.final}`, err);
      }
      return;
    }
    try {
      // link() fails with EEXIST instead of replacing, which rename() cannot promise.
      await fs.promises.link(plan.partial, plan.final);
      await fs.promises.unlink(plan.partial);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') throw new TransferError('io', `${quoteName(plan.offered.path)} appeared in ${this.#dir} during the transfer; kept as ${plan.partial}`);
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw ioError(`link ${plan.partial} to ${plan.final}`, err);
    }
    // A filesystem without hard links: check, then rename.
    if ((await lstatOrNull(plan.final)) !== null) {
      throw new TransferError('io', `${quoteName(plan.offered.path)} appeared in ${this.#dir} during the transfer; kept as ${plan.partial}`);
    }
    try {
      await fs.promises.rename(plan.partial, plan.final);
    } catch (err) {
      throw ioError(`rename ${plan.partial} to ${plan.final}`, err);
    }
  }

  #progress(file: IncomingFile): void {
    this.#opts.onProgress?.({
      peer: this.#opts.peer,
      file: file.plan.offered.path,
      fileIndex: this.#next,
      fileCount: this.#plans.length,
      bytesDone: this.#doneBytes,
      bytesTotal: this.#totalBytes,
      wireBytes: this.#wireBytes,
    });
  }

  /**
   * A message as the sender may see it: where this receiver keeps files is none of its
   * business (issue 13), so paths under DIR become relative and DIR itself "the receiving
   * directory". Our own error and log keep the full paths.
   */
  #forSender(message: string): string {
    // Receiving into / itself: every name is already relative to it.
    if (this.#dir === path.parse(this.#dir).root) return message;
    return message
      .split(`${this.#dir}${path.sep}`).join('')
      .split(this.#dir).join('the receiving directory');
  }

  /** Tells the sender why (when the stream still takes a frame), closes, and returns the error for our side. */
  async #fail(err: unknown): Promise<VertexError> {
    if (err instanceof Refusal && this.#accepted) {
      return this.#fail(new TransferError('io', err.message));
    }
    if (err instanceof Refusal) {
      this.#log.info({ reason: err.reason }, `offer refused: ${err.message}`);
      this.#ch.endWith({ type: 'reject', reason: err.reason, message: this.#forSender(err.message) });
      await this.#ch.closeGracefully(CLOSE_GRACE_MS);
      const code = err.reason === 'no-space' || err.reason === 'unwritable' ? 'TransferFailed' : 'TransferRejected';
      return vertexError(code, `refused the offer from ${this.#opts.peer}: ${err.message}`);
    }
    if (err instanceof PeerFailure) {
      this.#ch.abort(err);
      return vertexError('TransferFailed', err.message);
    }
    if (err instanceof TransferError) {
      this.#log.info({ reason: err.reason }, `transfer failed: ${err.message}`);
      this.#ch.endWith({ type: 'error', reason: err.reason, message: this.#forSender(err.message) });
      await this.#ch.closeGracefully(CLOSE_GRACE_MS);
      return vertexError('TransferFailed', `receive from ${this.#opts.peer}: ${err.message}`, err.cause);
    }
    if (isVertexError(err)) {
      const reason: ErrorReason = err.code === 'TransferDecode' ? 'protocol' : 'other';
      this.#ch.endWith({ type: 'error', reason, message: this.#forSender(err.message) });
      this.#ch.abort(err);
      return err;
    }
    this.#ch.endWith({ type: 'error', reason: 'other', message: 'internal error in the receiver' });
    this.#ch.abort(err instanceof Error ? err : new Error(String(err)));
    return vertexError('Internal', `receive from ${this.#opts.peer}: ${describe(err)}`, err);
  }
}

interface IncomingFile {
  plan: Plan;
  hash: Hash;
  sink: FileSink;
  /** Where the data started: the resume point, or 0. */
  offset: number;
  /** Bytes of the file in place, resumed ones included. */
  written: number;
  remaining: number;
}

/** An error to report to the sender in an ERROR frame, with its reason. */
class TransferError extends Error {
  constructor(readonly reason: ErrorReason, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** The sender ended the transfer with an ERROR frame: nothing to tell it back. */
class PeerFailure extends Error {}

function protocolError(message: string): VertexError {
  return vertexError('TransferDecode', `file-transfer protocol: ${message}`);
}

function ioError(what: string, err: unknown): TransferError {
  return new TransferError('io', `${what}: ${describe(err)}`, { cause: err });
}

/**
 * Writes a file in batches, with at most one batch in flight while the next
 * one gathers: disk and network overlap, and memory stays at two batches.
 */
class FileSink {
  readonly #fh: fs.promises.FileHandle;
  readonly #name: string;
  #position: number;
  #batch: Buffer[] = [];
  #batchBytes = 0;
  #inflight: Promise<void> | null = null;
  #error: unknown = null;
  #closed = false;
  #unsynced = 0;
  #syncing: Promise<void> | null = null;

  constructor(fh: fs.promises.FileHandle, position: number, name: string) {
    this.#fh = fh;
    this.#position = position;
    this.#name = name;
  }

  async write(bytes: Buffer): Promise<void> {
    if (this.#error !== null) throw ioError(`write ${this.#name}`, this.#error);
    this.#batch.push(bytes);
    this.#batchBytes += bytes.length;
    if (this.#batchBytes >= WRITE_BATCH_BYTES) await this.#flush();
  }

  /** Writes what is gathered, syncs and closes. */
  async close(): Promise<void> {
    try {
      await this.#flush();
      await this.#inflight;
      await this.#syncing;
      if (this.#error !== null) throw ioError(`write ${this.#name}`, this.#error);
      await this.#fh.sync();
    } catch (err) {
      throw err instanceof TransferError ? err : ioError(`write ${this.#name}`, err);
    } finally {
      await this.#closeHandle();
    }
  }

  /** Keeps whatever reached the disk (a later resume uses it) and closes. Never throws. */
  async abandon(): Promise<void> {
    try {
      await this.#flush();
      await this.#inflight;
      await this.#syncing;
    } catch {
      // Disk errors here only shorten what a resume can reuse.
    } finally {
      await this.#closeHandle();
    }
  }

  async #flush(): Promise<void> {
    if (this.#inflight) await this.#inflight;
    if (this.#error !== null) throw ioError(`write ${this.#name}`, this.#error);
    if (this.#batchBytes === 0) return;
    const batch = this.#batch;
    const size = this.#batchBytes;
    const at = this.#position;
    this.#position += size;
    this.#batch = [];
    this.#batchBytes = 0;
    this.#inflight = writeAll(this.#fh, batch, at).then(() => this.#written(size), (err: unknown) => {
      this.#error = err;
    }).finally(() => {
      this.#inflight = null;
    });
  }

  /**
   * Starts writing back every SYNC_EVERY_BYTES in the background, one sync
   * at a time: the fsync before the rename then has little left to do, and
   * a slow disk cannot pile up dirty pages for the whole file.
   */
  #written(bytes: number): void {
    this.#unsynced += bytes;
    if (this.#unsynced < SYNC_EVERY_BYTES || this.#syncing !== null) return;
    this.#unsynced = 0;
    this.#syncing = this.#fh.datasync().catch((err: unknown) => {
      this.#error ??= err;
    }).finally(() => {
      this.#syncing = null;
    });
  }

  async #closeHandle(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#fh.close().catch(() => undefined);
  }
}

async function writeAll(fh: fs.promises.FileHandle, buffers: Buffer[], position: number): Promise<void> {
  let pending = buffers;
  let at = position;
  while (pending.length > 0) {
    const { bytesWritten } = await fh.writev(pending, at);
    at += bytesWritten;
    let skip = bytesWritten;
    const rest: Buffer[] = [];
    for (const buf of pending) {
      if (skip >= buf.length) {
        skip -= buf.length;
        continue;
      }
      rest.push(skip > 0 ? buf.subarray(skip) : buf);
      skip = 0;
    }
    if (bytesWritten === 0 && rest.length > 0) throw Object.assign(new Error('the disk took no bytes'), { code: 'EIO' });
    pending = rest;
  }
}

async function lstatOrNull(file: string): Promise<fs.Stats | null> {
  try {
    return await fs.promises.lstat(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw new Refusal('unwritable', `cannot inspect ${file}: ${describe(err)}`);
  }
}

/** Bytes of an existing partial file (0 when there is none); anything but a regular file there is refused. */
async function partialSize(partial: string, name: string): Promise<number> {
  const st = await lstatOrNull(partial);
  if (st === null) return 0;
  if (!st.isFile()) throw new Refusal('bad-name', `refused name ${quoteName(name)}: ${partial} exists and is not a regular file`);
  return st.size;
}

/** SHA-256 state over the first `bytes` bytes of a file. */
async function hashPrefix(file: string, bytes: number): Promise<Hash> {
  const hash = createHash('sha256');
  const fh = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK_BYTES, Math.max(1, bytes)));
    let at = 0;
    while (at < bytes) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, bytes - at), at);
      if (bytesRead === 0) throw vertexError('TransferFailed', `read ${file}: it ended at ${at} bytes, expected ${bytes}`);
      hash.update(buf.subarray(0, bytesRead));
      at += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return hash;
}

async function freeBytes(dir: string): Promise<number | null> {
  try {
    const st = await fs.promises.statfs(dir);
    return st.bavail * st.bsize;
  } catch {
    return null;
  }
}
