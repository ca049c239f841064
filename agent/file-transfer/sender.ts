/**
 * The sending end: which files an argument list means, their SHA-256, and
 * one transfer over any Duplex (see receiver.ts for the exchange).
 *
 * Memory stays flat: the file is read in READ_CHUNK_BYTES pieces only when
 * the stream has room for more (FrameChannel.writeData resolves on drain),
 * so a slow receiver or a slow link stops the reads, not the heap.
 */
import { createHash, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { isVertexError, vertexError, VertexError } from '../../q2q/errors';
import type { Clock } from '../../q2q/util/clock';
import { silentLogger, type Logger } from '../../q2q/util/log';
import {
  MAX_DATA_BYTES, MAX_FILES, MAX_OFFER_BYTES, SHA256_BYTES, type ErrorReason, type ResumePoint, type TransferFrame,
} from '../../q2q/wire/file-transfer';
import { describe, FrameChannel } from './frame-channel';
import { badOfferPaths, badTransferPath, quoteName } from './names';
import { CLOSE_GRACE_MS, DEFAULT_IDLE_TIMEOUT_MS } from './receiver';

// Implementation tunables.
/** One disk read; it goes out as several DATA frames. */
export const READ_CHUNK_BYTES = 256 * 1024;
const HASH_CHUNK_BYTES = 1024 * 1024;
/** How long a person at the receiving end may take to say yes. */
export const DEFAULT_ANSWER_TIMEOUT_MS = 5 * 60_000;

export interface SourceFile {
  /** The name offered: relative, '/'-separated. */
  path: string;
  /** Where it is on this machine. */
  file: string;
}

export interface PreparedFile extends SourceFile {
  size: number;
  sha256: Buffer;
}

export type SendPhase = 'waiting' | 'sending' | 'verifying';

export interface SendProgress {
  phase: SendPhase;
  peer: string;
  file: string;
  fileIndex: number;
  fileCount: number;
  /** Bytes of all files the receiver has or is being sent, resumed ones included. */
  bytesDone: number;
  bytesTotal: number;
  /** DATA bytes written to the stream so far. */
  wireBytes: number;
}

export interface SentFile {
  path: string;
  size: number;
  sha256: string;
  /** Bytes the receiver already held, which were not sent again. */
  resumedFrom: number;
}

export interface SendResult {
  peer: string;
  files: SentFile[];
  bytesTotal: number;
  /** DATA bytes that crossed the wire. */
  bytesSent: number;
}

export interface SendOptions {
  /** The receiver's address, for messages. */
  peer: string;
  onProgress?: (progress: SendProgress) => void;
  answerTimeoutMs?: number;
  idleTimeoutMs?: number;
  /** Aborting sends a `cancelled` error to the receiver and stops. */
  signal?: AbortSignal;
  clock?: Clock;
  log?: Logger;
}

/**
 * The files named on the command line: files as their base name, and
 * directories walked, each file named `<dir name>/<relative path>`.
 * Symbolic links to files are followed; links to directories and special
 * files inside a walked directory are skipped. Throws Usage for anything
 * that cannot be offered.
 */
export async function collectSources(args: readonly string[]): Promise<SourceFile[]> {
  if (args.length === 0) throw vertexError('Usage', 'send: name at least one file or directory');
  const sources: SourceFile[] = [];
  for (const arg of args) {
    const abs = path.resolve(arg);
    let st: fs.Stats;
    try {
      st = await fs.promises.stat(abs);
    } catch (err) {
      throw vertexError('Usage', `send ${arg}: ${describe(err)}`, err);
    }
    const base = path.basename(abs);
    if (st.isFile()) sources.push({ path: base, file: abs });
    else if (st.isDirectory()) await walk(abs, base, sources);
    else throw vertexError('Usage', `send ${arg}: not a regular file or a directory`);
  }
  if (sources.length === 0) throw vertexError('Usage', `send: no files in ${args.join(', ')} (empty directories are not sent)`);
  if (sources.length > MAX_FILES) throw vertexError('Usage', `send: ${sources.length} files; one transfer carries at most ${MAX_FILES}`);
  for (const s of sources) {
    const why = badTransferPath(s.path);
    if (why !== null) throw vertexError('Usage', `send ${s.file}: cannot offer the name ${quoteName(s.path)}: ${why}`);
  }
  const clash = badOfferPaths(sources.map((s) => s.path));
  if (clash !== null) throw vertexError('Usage', `send: cannot offer ${quoteName(clash.name)}: ${clash.why}`);
  const offerBytes = encodedOfferBytes(sources);
  if (offerBytes > MAX_OFFER_BYTES) throw vertexError('Usage', `send: the list of names is ${offerBytes} bytes; one transfer carries at most ${MAX_OFFER_BYTES}`);
  return sources;
}

async function walk(dir: string, name: string, out: SourceFile[]): Promise<void> {
  let entries: fs.Dirent[];
  try {
    entries = await fs.promises.readdir(dir, { withFileTypes: true });
  } catch (err) {
    throw vertexError('Usage', `send ${dir}: ${describe(err)}`, err);
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    const rel = `${name}/${entry.name}`;
    if (entry.isDirectory()) await walk(full, rel, out);
    else if (entry.isFile()) out.push({ path: rel, file: full });
    else if (entry.isSymbolicLink()) {
      const target = await fs.promises.stat(full).catch(() => null);
      if (target?.isFile()) out.push({ path: rel, file: full });
    }
  }
}

/** The OFFER payload these names make (see the layout in q2q/wire/file-transfer.ts). */
function encodedOfferBytes(sources: readonly SourceFile[]): number {
  const fixed = 1 + 4;
  const perFile = 2 + 8 + SHA256_BYTES;
  return sources.reduce((sum, s) => sum + perFile + Buffer.byteLength(s.path), fixed);
}

/** Sizes and SHA-256 of every file, read once each; onBytes reports progress. */
export async function prepareFiles(sources: readonly SourceFile[], onBytes?: (bytes: number) => void): Promise<PreparedFile[]> {
  const out: PreparedFile[] = [];
  for (const source of sources) {
    const { hash, size } = await hashFile(source.file, Number.POSITIVE_INFINITY, onBytes);
    out.push({ ...source, size, sha256: hash.digest() });
  }
  return out;
}

/** SHA-256 state over the first `limit` bytes of a file (all of it for Infinity), and how many bytes that was. */
export async function hashFile(file: string, limit: number, onBytes?: (bytes: number) => void): Promise<{ hash: Hash; size: number }> {
  const hash = createHash('sha256');
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(file, 'r');
  } catch (err) {
    throw vertexError('TransferFailed', `read ${file}: ${describe(err)}`, err);
  }
  try {
    const buf = Buffer.allocUnsafe(HASH_CHUNK_BYTES);
    let size = 0;
    while (size < limit) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, limit - size), size);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      size += bytesRead;
      onBytes?.(bytesRead);
    }
    return { hash, size };
  } catch (err) {
    throw vertexError('TransferFailed', `read ${file}: ${describe(err)}`, err);
  } finally {
    await fh.close();
  }
}

/**
 * Offers `files` over `stream` and sends them. Resolves when the receiver
 * has verified every file; rejects with TransferRejected when it refused,
 * TransferFailed when the transfer broke off (the receiver keeps partial
 * data, and sending again resumes). The stream is closed in every case.
 */
export async function sendFiles(stream: Duplex, files: readonly PreparedFile[], options: SendOptions): Promise<SendResult> {
  return new Sender(stream, files, options).run();
}

class Sender {
  readonly #ch: FrameChannel;
  readonly #files: readonly PreparedFile[];
  readonly #opts: SendOptions;
  readonly #log: Logger;
  readonly #total: number;
  #failure: VertexError | null = null;
  #verified = 0;
  #wireBytes = 0;
  #doneBytes = 0;
  #index = 0;
  #phase: SendPhase = 'waiting';
  readonly #sent: SentFile[] = [];

  constructor(stream: Duplex, files: readonly PreparedFile[], opts: SendOptions) {
    this.#files = files;
    this.#opts = opts;
    this.#log = (opts.log ?? silentLogger).child({ component: 'file-send', peer: opts.peer });
    this.#total = files.reduce((sum, f) => sum + f.size, 0);
    this.#ch = new FrameChannel(stream, { peer: opts.peer, ...(opts.clock && { clock: opts.clock }) });
  }

  async run(): Promise<SendResult> {
    const { signal } = this.#opts;
    const onAbort = () => this.#stop(vertexError('TransferFailed', `send to ${this.#opts.peer}: cancelled`), { type: 'error', reason: 'cancelled', message: 'the sender cancelled' });
    if (signal?.aborted) onAbort();
    signal?.addEventListener('abort', onAbort);
    try {
      await this.#ch.write({ type: 'offer', files: this.#files.map((f) => ({ path: f.path, size: f.size, sha256: f.sha256 })) });
      this.#progress();
      const resume = await this.#readAnswer();
      this.#phase = 'sending';
      this.#progress();
      const verifications = this.#readVerifications();
      // Ends the sending early if the receiver reports an error; the frame loop below then fails on the torn-down stream.
      verifications.catch((err: unknown) => this.#stop(asFailure(err), null));
      for (const [i, file] of this.#files.entries()) {
        this.#index = i;
        await this.#sendFile(i, file, resume[i] as ResumePoint);
      }
      this.#phase = 'verifying';
      this.#progress();
      await verifications;
      await this.#ch.closeGracefully(CLOSE_GRACE_MS);
      return { peer: this.#opts.peer, files: this.#sent, bytesTotal: this.#total, bytesSent: this.#wireBytes };
    } catch (err) {
      const failure = this.#failure ?? asFailure(err);
      // Also after the receiver's own error: it drops frames once its outcome is decided.
      this.#stop(failure, { type: 'error', reason: reasonFor(err), message: failure.message });
      throw failure;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  async #readAnswer(): Promise<ResumePoint[]> {
    const answer = await this.#ch.read(this.#opts.answerTimeoutMs ?? DEFAULT_ANSWER_TIMEOUT_MS, `${this.#opts.peer} to accept`);
    const peer = this.#opts.peer;
    if (answer === null) throw vertexError('TransferFailed', `${peer} closed the connection without answering the offer`);
    switch (answer.type) {
      case 'accept':
        if (answer.resume.length !== this.#files.length) {
          throw protocolError(`the accept lists ${answer.resume.length} files, the offer ${this.#files.length}`);
        }
        this.#log.info({ files: this.#files.length }, 'offer accepted');
        return answer.resume;
      case 'reject': {
        const code = answer.reason === 'no-space' || answer.reason === 'unwritable' ? 'TransferFailed' : 'TransferRejected';
        throw vertexError(code, `${peer} refused the transfer (${answer.reason}): ${answer.message}`);
      }
      case 'error':
        throw vertexError('TransferFailed', `${peer} reported an error (${answer.reason}): ${answer.message}`);
      default:
        throw protocolError(`expected accept or reject, got ${answer.type}`);
    }
  }

  async #sendFile(index: number, file: PreparedFile, resume: ResumePoint): Promise<void> {
    const offset = await this.#resumePoint(file, resume);
    await this.#ch.write({ type: 'file', index, offset });
    this.#doneBytes += offset;
    this.#sent.push({ path: file.path, size: file.size, sha256: file.sha256.toString('hex'), resumedFrom: offset });
    if (offset === file.size) return;
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(file.file, 'r');
    } catch (err) {
      throw sourceError(file, err);
    }
    try {
      let at = offset;
      while (at < file.size) {
        if (this.#failure) throw this.#failure;
        // A fresh buffer per read: the frames written from it are views the stream may still hold.
        const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK_BYTES, file.size - at));
        let bytesRead: number;
        try {
          ({ bytesRead } = await fh.read(buf, 0, buf.length, at));
        } catch (err) {
          throw sourceError(file, err);
        }
        if (bytesRead === 0) throw sourceError(file, new Error(`it ended at ${at} bytes; it had ${file.size} when offered`));
        for (let from = 0; from < bytesRead; from += MAX_DATA_BYTES) {
          const piece = buf.subarray(from, Math.min(bytesRead, from + MAX_DATA_BYTES));
          await this.#ch.writeData(piece);
          this.#wireBytes += piece.length;
          this.#doneBytes += piece.length;
        }
        at += bytesRead;
        this.#progress();
      }
    } finally {
      await fh.close().catch(() => undefined);
    }
  }

  /** The receiver's resume point when our own first bytes hash the same, else 0. */
  async #resumePoint(file: PreparedFile, resume: ResumePoint): Promise<number> {
    if (resume.offset === 0 || resume.offset > file.size) return 0;
    const { hash, size } = await hashFile(file.file, resume.offset);
    if (size !== resume.offset || !hash.digest().equals(resume.sha256)) {
      this.#log.info({ file: file.path, offset: resume.offset }, 'partial file at the receiver differs; sending from the start');
      return 0;
    }
    this.#log.info({ file: file.path, offset: resume.offset }, 'resuming');
    return resume.offset;
  }

  /** Reads VERIFIED frames until every file is in; an ERROR or anything else rejects. */
  async #readVerifications(): Promise<void> {
    const idle = this.#opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    while (this.#verified < this.#files.length) {
      // Idle time only: the receiver says nothing while data flows, but our writes count as movement.
      const frame = await this.#ch.read(idle, `${this.#opts.peer} to verify the files`);
      const peer = this.#opts.peer;
      if (frame === null) throw vertexError('TransferFailed', `${peer} closed the connection after verifying ${this.#verified} of ${this.#files.length} files`);
      if (frame.type === 'error') throw vertexError('TransferFailed', `${peer} reported an error (${frame.reason}): ${frame.message}`);
      if (frame.type !== 'verified') throw protocolError(`expected verified, got ${frame.type}`);
      const file = this.#files[frame.index];
      if (frame.index !== this.#verified || file === undefined) throw protocolError(`verified file ${frame.index}, expected ${this.#verified}`);
      if (!frame.sha256.equals(file.sha256)) {
        throw vertexError('TransferFailed', `${peer} verified ${quoteName(file.path)} with SHA-256 ${frame.sha256.toString('hex')}, not ${file.sha256.toString('hex')}`);
      }
      this.#verified += 1;
      this.#log.debug({ file: file.path }, 'verified');
    }
  }

  /** Records the first failure, tells the receiver when there is something to tell, and tears the stream down. */
  #stop(failure: VertexError, frame: TransferFrame | null): void {
    if (this.#failure !== null) return;
    this.#failure = failure;
    this.#ch.endWith(frame);
    this.#ch.abort(failure);
  }

  #progress(): void {
    const file = this.#files[this.#index];
    this.#opts.onProgress?.({
      phase: this.#phase,
      peer: this.#opts.peer,
      file: file?.path ?? '',
      fileIndex: this.#index,
      fileCount: this.#files.length,
      bytesDone: this.#doneBytes,
      bytesTotal: this.#total,
      wireBytes: this.#wireBytes,
    });
  }
}

class SourceError extends VertexError {}

function reasonFor(err: unknown): ErrorReason {
  if (err instanceof SourceError) return 'source';
  return isVertexError(err, 'TransferDecode') ? 'protocol' : 'other';
}

function asFailure(err: unknown): VertexError {
  if (isVertexError(err)) return err;
  return vertexError('Internal', `send: ${describe(err)}`, err);
}

function protocolError(message: string): VertexError {
  return vertexError('TransferDecode', `file-transfer protocol: ${message}`);
}

function sourceError(file: PreparedFile, err: unknown): VertexError {
  return new SourceError('TransferFailed', `read ${file.file}: ${describe(err)}`, { cause: err });
}

