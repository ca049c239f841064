/**
 * Stream multiplexing over one byte channel (the peer session's mutual-TLS
 * socket): MuxSession runs the frames of wire/mux-frame.ts, and each stream
 * is a MuxStream, a Node Duplex with the semantics of a TCP socket:
 *
 * - per-stream flow control: a receiver grants each stream a window and
 *   returns credit as its reader consumes, so a slow reader stalls only its
 *   own stream, and never buffers more than one window;
 * - a session budget (RFC 9113 §6.9's connection window): DATA of all
 *   streams also spends the session's credit, returned as readers consume,
 *   so a peer can make this side hold at most one session window, however
 *   many streams it opens and however few of them are read;
 * - fair sending: streams with data and credit take turns, one frame each
 *   (at most MUX_DATA_FRAME bytes), whenever the channel has room;
 * - half-close: end() sends END and the other end reads 'end', while the
 *   other direction stays open;
 * - abort: a destroy() before both directions ended cleanly sends RESET, and
 *   the other end's stream is destroyed with ConnectionLost: a close without
 *   'end', never mistaken for a complete transfer;
 * - liveness: a PING after KEEPALIVE_MS without a byte from the peer, and
 *   the session (every stream with it) closes with ConnectionLost after
 *   DEAD_AFTER_MS of silence, whatever route carries the channel.
 *
 * Opening a stream names a service; the other side decides, through
 * onOpen, whether to accept or refuse it. The session never decides who may
 * do what: the session manager (negotiate/) does.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { isErrorCode, vertexError, VertexError } from '../errors';
import { systemClock, type Clock, type Timer } from '../util/clock';
import { Deadlines } from '../util/deadlines';
import {
  decodeFields, decodeHello, decodeOpen, decodeWindowIncrement, encodeFields, encodeFrame, encodeHello, encodeOpenFrame, encodeWindow, FRAME, FrameDecoder, frameName,
  MUX_HEADER_BYTES, MUX_MAX_FRAME_PAYLOAD, MUX_MAX_WINDOW, MUX_MIN_WINDOW, MUX_VERSION, PING_PAYLOAD_BYTES, type FrameType,
} from '../wire/mux-frame';

// Implementation tunables.
/**
 * Receive window granted to each stream (bytes a peer may send ahead of our reader).
 * 4 MiB, not 1: with 1 MiB a sender on a busy machine waited for WINDOW whenever the
 * receiving process was off the CPU (most of its frames left when a WINDOW arrived),
 * at 1.2–2.0 ms of CPU per MB against 1.0–1.3 with 4 MiB, in the same runs
 * (bench/README.md "Bulk through the agents"). Plain TLS has the kernel's socket
 * buffers (several MB on loopback) for the same purpose. A stalled reader holds at
 * most this much of its stream.
 */
export const MUX_DEFAULT_WINDOW = 4 * 1024 * 1024;
/**
 * Receive window of the whole session: DATA bytes of all streams together that a
 * peer may send ahead of our readers, so the most one peer session can make this
 * side buffer. 32 MiB = 8 stream windows: one bulk stream never waits for session
 * credit (it holds at most its 4 MiB, and credit comes back in quarters, so at
 * least 20 MiB stay free), and up to 6 streams whose readers stalled with full
 * windows still leave a fast stream a full window. docs/multiplexing.md "Session
 * budget" has the worst case per session and per agent.
 */
export const MUX_DEFAULT_SESSION_WINDOW = 32 * 1024 * 1024;
/** DATA frames are cut at this size, so that streams sharing a channel take turns often. */
export const MUX_DATA_FRAME = 64 * 1024;
/**
 * Bytes written to the channel and not yet taken by it (the peer is not reading)
 * past which we stop reading the peer's frames until the channel drains. Every
 * PING, OPEN, RESET... the peer sends draws an answer; a peer that sends them
 * without reading ours would make us queue answers without end (HTTP/2's ping and
 * reset floods, CVE-2019-9512 and -9514). Our own DATA never queues more than
 * 2 × MUX_SEND_BATCH (the pump waits, see "sending"), so a peer that reads never
 * meets this; one that does not is also declared dead after MUX_DEAD_AFTER_MS,
 * since nothing is read from it meanwhile.
 */
export const MUX_MAX_UNSENT = 1024 * 1024;
/** A PING goes out after this long without a byte from the peer. */
export const MUX_KEEPALIVE_MS = 2_500;
/** The session is declared dead after this long without a byte from the peer (ARCHITECTURE: a dead peer within 10 s). */
export const MUX_DEAD_AFTER_MS = 7_500;
/**
 * Streams the peer may have open at once; further OPENs are refused (NotAllowed).
 * 16,384, not the 100,000 of before: each incoming stream is a MuxStream (about 2 KB)
 * and, once accepted, usually a socket to a local service, whose buffers the session
 * budget does not count. Issue 12 asks for 10,000 connections at once through one
 * agent to one peer, all streams of one session (bench socks-concurrent), so not lower.
 */
export const MUX_DEFAULT_MAX_INCOMING = 16_384;
/** After a clean end, how long the far side may take to end too before the channel is destroyed. */
export const MUX_CLOSE_LINGER_MS = 10_000;
/** How long an OPEN waits for ACCEPT or REFUSE. */
export const MUX_OPEN_TIMEOUT_MS = 15_000;
/**
 * Frames written while the channel has a write outstanding are gathered into
 * one buffer of this size, which goes out as one write when that write is done
 * (see MuxSession "sending").
 */
export const MUX_SEND_BATCH = 4 * (MUX_DATA_FRAME + MUX_HEADER_BYTES);
/** Send buffers kept for reuse per session: one being written, one filling. Dropped when the session goes quiet. */
const SEND_POOL = 2;
/** A send buffer for small frames only (control frames, small DATA): under 4 KiB, so Node cuts it from its shared pool; never kept. */
const SMALL_SEND_BATCH = 4000;
/** A service name in OPEN (the longest Q2Q service name, with room to spare). */
const MAX_SERVICE_BYTES = 255;

export interface MuxSessionOptions {
  /** True on the side that set the channel up: it opens odd stream ids, the other side even ones. */
  initiator: boolean;
  /** Receive window of each stream (MUX_DEFAULT_WINDOW). */
  window?: number;
  /** Receive window of the whole session (MUX_DEFAULT_SESSION_WINDOW), at least `window`'s minimum. */
  sessionWindow?: number;
  keepaliveMs?: number;
  deadAfterMs?: number;
  maxIncomingStreams?: number;
  clock?: Clock;
  /** An OPEN from the peer: call accept() or refuse(), at once or later. Without it every OPEN is refused. */
  onOpen?: (request: OpenRequest) => void;
}

export interface OpenRequest {
  readonly service: string;
  readonly id: number;
  /** Payload bytes the peer sent on the stream before it was answered (an early open). */
  readonly bytesWaiting: number;
  /** The peer reset the stream, or the session closed, before it was answered: nobody waits for it. */
  readonly gone: boolean;
  /**
   * Opens the stream; the peer's open() resolves. The ACCEPT leaves with what
   * else is written in this turn (so an in-process service's first bytes share
   * its record), or at once with `flush` (a service whose bytes come from
   * elsewhere later: the caller need not wait for this side's bookkeeping).
   */
  accept(opts?: { flush?: boolean }): MuxStream;
  /** Refuses it; the peer's open() rejects with this error's code and message. */
  refuse(err: VertexError): void;
}

type SessionState = 'open' | 'closed';

interface PendingOpen {
  stream: MuxStream;
  resolve: (stream: MuxStream) => void;
  reject: (err: Error) => void;
  timeoutMs: number;
  /** openEarly: the stream is in its caller's hands already, and a failed open destroys it with the reason. */
  early: boolean;
}

export interface EarlyOpenOptions {
  timeoutMs?: number;
  /** The peer's answer: null for ACCEPT, else why the open failed (REFUSE's code, a timeout, the session closing). */
  onAnswer?: (err: Error | null) => void;
}

export interface MuxSessionEvents {
  /** Every stream is done and a GOAWAY was sent or received: nothing more will use the session. */
  idle: [];
  goaway: [reason: { code: string; description: string }];
  close: [err: Error | null];
}

export class MuxSession extends EventEmitter<MuxSessionEvents> {
  readonly #channel: Duplex;
  readonly #clock: Clock;
  readonly #window: number;
  readonly #sessionWindow: number;
  readonly #keepaliveMs: number;
  readonly #deadAfterMs: number;
  readonly #maxIncoming: number;
  readonly #onOpen: ((request: OpenRequest) => void) | undefined;
  readonly #decoder: FrameDecoder;
  readonly #streams = new Map<number, MuxStream>();
  readonly #pendingOpens = new Map<number, PendingOpen>();
  /** Every pending OPEN's timeout on one timer: most are answered in a millisecond. */
  readonly #openDeadlines: Deadlines<PendingOpen>;
  readonly #pings = new Map<string, (rttMs: number) => void>();
  #state: SessionState = 'open';
  #nextId: number;
  #lastPeerId = 0;
  #incoming = 0;
  /** Incoming streams this side has not answered yet (accept or refuse). */
  readonly #unanswered = new Set<MuxStream>();
  /**
   * Unanswered streams the peer reset (or that went otherwise) while the service was
   * still deciding: they count against maxIncomingStreams until answered, since the
   * work of deciding (an allow-list check, a connect to a local target) goes on. Else
   * a peer that opens and resets at once (HTTP/2's rapid reset, CVE-2023-44487) would
   * set any number of such connects going with never more than one stream open.
   */
  readonly #orphaned = new Set<MuxStream>();
  #peerWindow: number | null = null;
  // The session budget, receiving (see "session budget" below): DATA payload bytes
  // received on all streams, taken by readers (or dropped), and the most the peer
  // may send before it gets more session credit.
  #sessionReceived = 0;
  #sessionConsumed = 0;
  #sessionAllowed: number;
  /** The peer's HELLO had a sessionWindow: it honours session credit, and understands WINDOW on stream 0. */
  #peerHasSessionWindow = false;
  /** Session credit for sending: bytes the peer still lets all our streams send (Infinity to a peer without a session window). */
  #sendSessionCredit = 0;
  #goawaySent = false;
  #goawayReceived = false;
  #ending = false;
  /** Streams with data and credit, in turn order (a Set keeps insertion order; re-adding moves to the end). */
  readonly #ready = new Set<MuxStream>();
  #congested = false;
  #pumping = false;
  /** Frames gathered for the next write (see "sending"), and how much of it is used. */
  #out: Buffer | null = null;
  #outLength = 0;
  #flushQueued = false;
  /** Writes to the channel that have not called back yet. */
  #pendingWrites = 0;
  /** Send buffers to reuse: only when the channel copies what it is given before its callback (a socket). */
  readonly #reuse: boolean;
  readonly #spare: Buffer[] = [];
  #lastHeard: number;
  #pingOut = false;
  /** Reading the channel waits for it to drain (MUX_MAX_UNSENT). */
  #readingHeld = false;
  #timer: Timer | null = null;
  /** bytesOut when the timer last ran: unchanged means quiet, and the spare send buffers go. */
  #sentAtTimer = 0;
  #bytesIn = 0;
  #bytesOut = 0;
  readonly openedAt: number;

  constructor(channel: Duplex, opts: MuxSessionOptions) {
    super();
    this.#channel = channel;
    // A net.Socket (TLSSocket included) has copied a chunk, into the kernel or
    // into TLS records, by the time its write calls back; any other Duplex (an
    // in-memory pair in tests) may still hold it, so its buffers are never reused.
    this.#reuse = channel instanceof Socket;
    this.#clock = opts.clock ?? systemClock;
    this.#window = opts.window ?? MUX_DEFAULT_WINDOW;
    this.#sessionWindow = opts.sessionWindow ?? MUX_DEFAULT_SESSION_WINDOW;
    for (const [name, value] of [['window', this.#window], ['sessionWindow', this.#sessionWindow]] as const) {
      if (!Number.isInteger(value) || value < MUX_MIN_WINDOW || value > MUX_MAX_WINDOW) {
        throw vertexError('Internal', `mux session: ${name} ${value} must be an integer in ${MUX_MIN_WINDOW}..${MUX_MAX_WINDOW}`);
      }
    }
    this.#sessionAllowed = this.#sessionWindow;
    this.#keepaliveMs = opts.keepaliveMs ?? MUX_KEEPALIVE_MS;
    this.#deadAfterMs = opts.deadAfterMs ?? MUX_DEAD_AFTER_MS;
    this.#maxIncoming = opts.maxIncomingStreams ?? MUX_DEFAULT_MAX_INCOMING;
    this.#onOpen = opts.onOpen;
    this.#nextId = opts.initiator ? 1 : 2;
    this.#openDeadlines = new Deadlines(this.#clock, (pending) => this.#openTimedOut(pending));
    this.openedAt = this.#clock.now();
    this.#lastHeard = this.openedAt;
    this.#decoder = new FrameDecoder({
      frame: (type, id, payload) => this.#onFrame(type, id, payload),
      data: (id, bytes, last) => this.#onData(id, bytes, last),
    });
    channel.on('data', (chunk: Buffer) => {
      this.#lastHeard = this.#clock.now();
      this.#pingOut = false;
      try {
        this.#decoder.push(chunk);
      } catch (err) {
        this.#fail(err as Error);
      }
    });
    channel.once('end', () => this.#fail(vertexError('ConnectionLost', 'mux session: the channel ended'), false, true));
    // A channel destroyed with a typed reason (the revocation watch's CertificateRevoked)
    // hands that reason to every stream; any other channel error is ConnectionLost.
    // `on`, not `once`: a TLS channel can emit a second error after the first (a write the
    // transport cancelled as it went), and one without a listener would end the process.
    channel.on('error', (err: Error) => this.#fail(err instanceof VertexError ? err : vertexError('ConnectionLost', `mux session: ${err.message}`, err)));
    channel.once('close', () => this.#fail(vertexError('ConnectionLost', 'mux session: the channel closed')));
    this.#writeControl(encodeFrame(FRAME.HELLO, 0, encodeHello({ version: MUX_VERSION, window: this.#window, sessionWindow: this.#sessionWindow })));
    this.#armTimer(this.#keepaliveMs);
  }

  get closed(): boolean {
    return this.#state === 'closed';
  }

  /** The peer does not take what we send: no more of its frames (and their answers) until it does. */
  #holdReading(): void {
    if (this.#readingHeld || this.#state !== 'open') return;
    this.#readingHeld = true;
    this.#channel.pause();
    // Past the channel's high-water mark a write returned false, so 'drain' will come.
    this.#channel.once('drain', () => {
      this.#readingHeld = false;
      if (this.#state === 'open') this.#channel.resume();
    });
  }

  /** False once a GOAWAY went either way or the session closed: no new streams. */
  get usable(): boolean {
    return this.#state === 'open' && !this.#goawaySent && !this.#goawayReceived;
  }

  /** Streams the peer opened that this side has not answered (accepted or refused) yet, reset ones included. */
  get unansweredIncoming(): number {
    return this.#unanswered.size;
  }

  get streamCount(): number {
    return this.#streams.size;
  }

  /** Payload bytes received and sent on all streams (frame headers not counted). */
  get bytesIn(): number {
    return this.#bytesIn;
  }

  get bytesOut(): number {
    return this.#bytesOut;
  }

  /**
   * DATA payload bytes received and not yet taken by a reader, on all streams
   * (accepted or not): what the peer makes this side hold. At most the session
   * window (MUX_DEFAULT_SESSION_WINDOW).
   */
  get bytesBuffered(): number {
    return this.#sessionReceived - this.#sessionConsumed;
  }

  /** Opens a stream to `service`; resolves once the peer accepted it. */
  open(service: string, opts: { timeoutMs?: number } = {}): Promise<MuxStream> {
    const refusal = this.#cannotOpen(service);
    if (refusal) return Promise.reject(refusal);
    const stream = this.#newOutgoing(service);
    return new Promise((resolve, reject) => {
      this.#sendOpen({ stream, resolve, reject, timeoutMs: opts.timeoutMs ?? MUX_OPEN_TIMEOUT_MS, early: false });
    });
  }

  /**
   * Opens a stream to `service` and returns it at once, before the peer has
   * answered: what is written to it leaves right behind the OPEN, up to the
   * credit the peer's HELLO grants every stream (the peer holds those bytes
   * for the stream until it accepts, and drops them if it refuses). Used when
   * the answer is all but known (the peer accepted this service on this
   * session before), so a client's first bytes need not wait a round trip.
   * If the peer refuses, or the session closes first, the stream is destroyed
   * with that error (REFUSE's code: NotExposed, Denied, Refused, ...), and
   * `onAnswer` hears it; on ACCEPT, `onAnswer(null)`. Throws what open() rejects with.
   */
  openEarly(service: string, opts: EarlyOpenOptions = {}): MuxStream {
    const refusal = this.#cannotOpen(service);
    if (refusal) throw refusal;
    const stream = this.#newOutgoing(service);
    const onAnswer = opts.onAnswer;
    this.#sendOpen({
      stream,
      resolve: onAnswer ? () => onAnswer(null) : noAnswer,
      reject: onAnswer ?? noAnswer,
      timeoutMs: opts.timeoutMs ?? MUX_OPEN_TIMEOUT_MS,
      early: true,
    });
    stream.sendEarly();
    return stream;
  }

  /** Why a stream to `service` cannot be opened now, or null. */
  #cannotOpen(service: string): VertexError | null {
    if (!this.usable) return vertexError('ConnectionLost', `mux open ${service}: the session ${this.#state === 'closed' ? 'is closed' : 'takes no new streams'}`);
    if (Buffer.byteLength(service) > MAX_SERVICE_BYTES) return vertexError('InvalidName', `mux open: service name longer than ${MAX_SERVICE_BYTES} bytes`);
    return null;
  }

  #newOutgoing(service: string): MuxStream {
    const id = this.#nextId;
    this.#nextId += 2;
    if (this.#nextId > 0xffffffff) this.goAway('ConnectionLost', 'stream ids exhausted');
    const stream = new MuxStream(this, id, service);
    this.#streams.set(id, stream);
    return stream;
  }

  #sendOpen(pending: PendingOpen): void {
    this.#pendingOpens.set(pending.stream.id, pending);
    this.#openDeadlines.add(pending, pending.timeoutMs);
    this.#writeControl(encodeOpenFrame(pending.stream.id, pending.stream.service));
    // An early open leaves at once, ahead of whatever its caller writes in this turn (the
    // SOCKS reply): the peer starts its side of the open while the client answers.
    if (pending.early) this.#flushNow();
  }

  #openTimedOut(pending: PendingOpen): void {
    const { stream } = pending;
    if (this.#pendingOpens.get(stream.id) !== pending) return;
    this.#pendingOpens.delete(stream.id);
    const err = vertexError('Timeout', `mux open ${stream.service}: no answer within ${pending.timeoutMs} ms`);
    // An early stream's writer learns why; one nobody holds yet is just dropped (RESET either way).
    stream.destroy(pending.early ? err : undefined);
    pending.reject(err);
  }

  /** Round-trip time of one PING, in milliseconds. */
  ping(): Promise<number> {
    if (this.#state === 'closed') return Promise.reject(vertexError('ConnectionLost', 'mux ping: the session is closed'));
    const payload = randomBytes(PING_PAYLOAD_BYTES);
    const sent = this.#clock.now();
    return new Promise((resolve, reject) => {
      const onClose = (err: Error | null) => reject(err ?? vertexError('ConnectionLost', 'mux ping: the session closed'));
      this.once('close', onClose);
      this.#pings.set(payload.toString('hex'), () => {
        this.off('close', onClose);
        resolve(this.#clock.now() - sent);
      });
      this.#writeControl(encodeFrame(FRAME.PING, 0, payload));
    });
  }

  /** No new streams either way from now on; the open ones run to their end, then 'idle'. */
  goAway(code: string, description: string): void {
    if (this.#state === 'closed' || this.#goawaySent) return;
    this.#goawaySent = true;
    this.#writeControl(encodeFrame(FRAME.GOAWAY, 0, encodeFields({ code, description: description.slice(0, 512) })));
    this.#maybeIdle();
  }

  /**
   * Closes the session at once: every stream is destroyed with `err` (or
   * ConnectionLost), so each end sees an abort, and the channel is destroyed.
   */
  close(err?: Error): void {
    this.#fail(err ?? vertexError('ConnectionLost', 'mux session: closed'), true);
  }

  /**
   * Ends the session cleanly: no new streams, and once every open stream is
   * done the channel is ended (the far side sees the end and closes too).
   */
  end(): void {
    this.#ending = true;
    this.goAway('ConnectionLost', 'the session is closing');
    this.#maybeIdle();
  }

  /**
   * Ends the channel cleanly: what is queued is still sent, the far side sees
   * the end and ends too; a far side that never does is cut off after
   * MUX_CLOSE_LINGER_MS.
   */
  #endChannel(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#stopTimer();
    // What is gathered still goes out, ahead of the end.
    this.#write();
    this.#channel.end();
    const linger = this.#clock.setTimer(() => this.#channel.destroy(), MUX_CLOSE_LINGER_MS);
    this.#channel.once('close', () => linger.cancel());
    this.emit('close', null);
  }

  // ---- used by MuxStream ----

  /** @internal a stream has data and credit: it takes its turn. */
  schedule(stream: MuxStream): void {
    this.#ready.add(stream);
    if (!this.#congested) this.#pump();
  }

  /** @internal writes one DATA frame: its header and a copy of `payload` join the send buffer. */
  writeData(id: number, payload: Buffer): void {
    this.#bytesOut += payload.length;
    this.#sendSessionCredit -= payload.length;
    const out = this.#room(MUX_HEADER_BYTES + payload.length);
    let at = this.#outLength;
    out[at] = FRAME.DATA;
    out.writeUInt32BE(id >>> 0, at + 1);
    out.writeUInt32BE(payload.length, at + 5);
    at += MUX_HEADER_BYTES;
    payload.copy(out, at);
    this.#outLength = at + payload.length;
    this.#queueFlush();
  }

  /** What is gathered leaves now, queued behind an outstanding write if there is one; the tick's flush then finds nothing to do. */
  #flushNow(): void {
    this.#write();
  }

  /** @internal */
  writeWindow(id: number, increment: number): void {
    this.#writeControl(encodeWindow(id, increment));
  }

  /** @internal */
  writeStreamFrame(type: FrameType, id: number, fields?: Record<string, string>): void {
    this.#writeControl(encodeFrame(type, id, fields ? encodeFields(fields) : undefined));
  }

  /** @internal the peer's window: every stream's first credit. */
  get peerWindow(): number {
    return this.#peerWindow ?? 0;
  }

  /** @internal the window this side grants. */
  get window(): number {
    return this.#window;
  }

  /** @internal session credit for sending (the pump never calls sendFrame without some). */
  get sendSessionCredit(): number {
    return this.#sendSessionCredit;
  }

  // ---- session budget ----

  // Receiving: every DATA byte counts against the session window when it
  // arrives, whichever stream it is for (accepted, waiting for this side's
  // ACCEPT, or already gone), and comes back when a reader takes it from its
  // stream, or when it is dropped (a stream destroyed with bytes unread, DATA
  // for a stream that is gone). Credit goes back to the peer in WINDOW frames
  // on stream 0, a quarter of the window at a time, or in steps of at most one
  // DATA frame while the peer has less than half of the window left (so a few
  // streams that hold most of it cannot keep the others waiting for a quarter). A peer whose
  // HELLO had a sessionWindow and sends past its session credit breaks the
  // protocol: MuxDecode, the session closes. A peer whose HELLO had none does
  // not know session credit; against it the budget is kept by resetting the
  // stream whose DATA would take what we hold over the window (see #onData).

  /** @internal a stream's reader took `n` bytes, or they were dropped: session credit may go back. */
  consumed(n: number): void {
    this.#sessionConsumed += n;
    if (!this.#peerHasSessionWindow || this.#state !== 'open') return;
    const increment = this.#sessionConsumed + this.#sessionWindow - this.#sessionAllowed;
    if (increment <= 0) return;
    const peerLeft = this.#sessionAllowed - this.#sessionReceived;
    // Normally a quarter at a time. With less than half left to the peer (stalled streams hold
    // much of the window, or many streams share it), every DATA frame's worth, or half of what
    // the peer could have at most if that is less: a fast stream next to stalled ones must
    // never wait for more than can ever come free.
    const step = peerLeft < this.#sessionWindow / 2 ? Math.min(MUX_DATA_FRAME, Math.ceil((increment + peerLeft) / 2)) : this.#sessionWindow / 4;
    if (increment >= step) {
      this.#sessionAllowed += increment;
      this.#writeControl(encodeWindow(0, increment));
    }
  }

  /** @internal a stream closed: it leaves the tables. */
  forget(stream: MuxStream): void {
    this.#ready.delete(stream);
    if (this.#streams.get(stream.id) === stream) {
      this.#streams.delete(stream.id);
      if (stream.incoming) this.#incoming -= 1;
      if (this.#unanswered.has(stream)) this.#orphaned.add(stream);
    }
    const pending = this.#pendingOpens.get(stream.id);
    if (pending?.stream === stream) {
      this.#pendingOpens.delete(stream.id);
      this.#openDeadlines.delete(pending);
      pending.reject(vertexError('ConnectionLost', `mux open ${stream.service}: the stream was destroyed before it opened`));
    }
    this.#maybeIdle();
  }

  get sessionOpen(): boolean {
    return this.#state === 'open';
  }

  // ---- sending ----

  // Frames are not written to the channel one by one. They are copied into a
  // send buffer, and the buffer is written as one chunk: at the end of the
  // turn (so an ACCEPT and the service's first bytes, or a burst of small
  // frames, make one TLS record), or, while a write is outstanding, when that
  // write calls back. One chunk per write matters for TLS: Node's TLS socket
  // copies a write of several buffers (a corked header and payload) into a new
  // buffer of V8-counted memory before encrypting it, and that churn, 64 KiB per
  // DATA frame, kept V8 starting major collections during bulk transfers
  // (bench/README.md, "Bulk through the agents"). Over a socket the two send
  // buffers are reused, so a busy session allocates nothing per frame; the one
  // copy made here replaces the one Node made. At most one write is
  // outstanding and one buffer filling: the pump stops when that buffer is full
  // (back-pressure from the channel), so a session holds at most
  // 2 × MUX_SEND_BATCH of frames.

  /** The send buffer, with room for `bytes` more (a full one is handed to the channel first). */
  #room(bytes: number): Buffer {
    let out = this.#out;
    if (out && this.#outLength + bytes > out.length) {
      // Queued behind an outstanding write if there is one: control frames are
      // never held back, and DATA stops at #full() before it gets here.
      this.#write();
      out = null;
    }
    if (!out) {
      out = this.#spare.pop() ?? (bytes <= SMALL_SEND_BATCH / 2 ? Buffer.allocUnsafe(SMALL_SEND_BATCH) : Buffer.allocUnsafeSlow(MUX_SEND_BATCH));
      this.#out = out;
      this.#outLength = 0;
    }
    return out;
  }

  /** A write is outstanding and the send buffer has no room for another full DATA frame: the pump waits. */
  #full(): boolean {
    return this.#pendingWrites > 0 && this.#out !== null && this.#out.length - this.#outLength < MUX_HEADER_BYTES + MUX_DATA_FRAME;
  }

  #queueFlush(): void {
    if (this.#full()) this.#congested = true;
    if (this.#flushQueued) return;
    this.#flushQueued = true;
    process.nextTick(this.#flushTick);
  }

  readonly #flushTick = (): void => {
    this.#flushQueued = false;
    if (this.#pendingWrites === 0) this.#write();
  };

  /** Hands the send buffer to the channel as one chunk. */
  #write(): void {
    const out = this.#out;
    const length = this.#outLength;
    this.#out = null;
    this.#outLength = 0;
    if (!out || length === 0) return;
    if (this.#channel.destroyed || this.#channel.writableEnded) return;
    this.#pendingWrites += 1;
    const more = this.#channel.write(out.subarray(0, length), (err) => {
      this.#pendingWrites -= 1;
      if (err) return;
      // Only our own big buffers: a small one is a slice of Node's shared pool.
      if (this.#reuse && out.length === MUX_SEND_BATCH && out.byteOffset === 0 && this.#spare.length < SEND_POOL) this.#spare.push(out);
      if (this.#pendingWrites === 0) this.#write();
      if (this.#congested && !this.#full()) {
        this.#congested = false;
        this.#pump();
      }
    });
    if (!more && this.#channel.writableLength > MUX_MAX_UNSENT) this.#holdReading();
  }

  #writeControl(frame: Buffer): void {
    if (this.#state === 'closed' || this.#channel.destroyed) return;
    const out = this.#room(frame.length);
    frame.copy(out, this.#outLength);
    this.#outLength += frame.length;
    this.#queueFlush();
  }

  #pump(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      // Out of session credit, the streams keep their places in #ready, and a WINDOW on
      // stream 0 starts the pump again: fair turns, as with channel back-pressure.
      while (!this.#congested && this.#ready.size > 0 && this.#state === 'open' && this.#sendSessionCredit > 0) {
        const stream = this.#ready.values().next().value as MuxStream;
        this.#ready.delete(stream);
        if (stream.sendFrame()) this.#ready.add(stream);
      }
    } finally {
      this.#pumping = false;
    }
  }

  // ---- receiving ----

  #onFrame(type: FrameType, id: number, payload: Buffer): void {
    switch (type) {
      case FRAME.HELLO: {
        if (this.#peerWindow !== null) throw protocolError('a second HELLO');
        const fields = decodeFields(payload);
        if (fields.version !== MUX_VERSION) throw vertexError('ProtocolVersion', `mux session: the peer speaks version ${fields.version ?? '(none)'}, not ${MUX_VERSION}`);
        const hello = decodeHello(payload);
        this.#peerWindow = hello.window;
        this.#peerHasSessionWindow = hello.sessionWindow !== null;
        // A peer without a session window limits only its streams, as before.
        this.#sendSessionCredit = hello.sessionWindow ?? Number.POSITIVE_INFINITY;
        if (this.#ready.size > 0 && !this.#congested) this.#pump();
        return;
      }
      case FRAME.OPEN:
        return this.#onOpenFrame(id, decodeOpen(payload));
      case FRAME.ACCEPT: {
        const pending = this.#pendingOpens.get(id);
        if (!pending) return this.#unknown(type, id);
        this.#pendingOpens.delete(id);
        this.#openDeadlines.delete(pending);
        pending.stream.opened();
        pending.resolve(pending.stream);
        return;
      }
      case FRAME.REFUSE: {
        const pending = this.#pendingOpens.get(id);
        if (!pending) return this.#unknown(type, id);
        this.#pendingOpens.delete(id);
        this.#openDeadlines.delete(pending);
        this.#streams.delete(id);
        const f = decodeFields(payload);
        const err = vertexError(f.code && isErrorCode(f.code) ? f.code : 'Internal', f.description ?? `mux open ${pending.stream.service}: refused`);
        pending.reject(err);
        pending.stream.refused(pending.early ? err : undefined);
        this.#maybeIdle();
        return;
      }
      case FRAME.WINDOW: {
        if (id === 0) {
          const increment = decodeWindowIncrement(payload);
          // From a peer without a session window (which never sends one) it means nothing: our credit is unlimited.
          if (!Number.isFinite(this.#sendSessionCredit)) return;
          this.#sendSessionCredit += increment;
          if (this.#sendSessionCredit > MUX_MAX_WINDOW) throw protocolError(`session credit above ${MUX_MAX_WINDOW}`);
          if (!this.#congested) this.#pump();
          return;
        }
        const stream = this.#streams.get(id);
        if (!stream) return this.#unknown(type, id);
        stream.credit(decodeWindowIncrement(payload));
        return;
      }
      case FRAME.END: {
        const stream = this.#streams.get(id);
        if (!stream) return this.#unknown(type, id);
        stream.remoteEnded();
        return;
      }
      case FRAME.RESET: {
        const stream = this.#streams.get(id);
        if (!stream) return this.#unknown(type, id);
        const f = payload.length > 0 ? decodeFields(payload) : {};
        stream.remoteReset(f.description ?? 'no reason given');
        return;
      }
      case FRAME.PING:
        if (payload.length !== PING_PAYLOAD_BYTES) throw protocolError(`PING of ${payload.length} bytes`);
        this.#writeControl(encodeFrame(FRAME.PONG, 0, payload));
        return;
      case FRAME.PONG: {
        const key = payload.toString('hex');
        const waiter = this.#pings.get(key);
        this.#pings.delete(key);
        waiter?.(0);
        return;
      }
      case FRAME.GOAWAY: {
        if (this.#goawayReceived) return;
        this.#goawayReceived = true;
        const f = decodeFields(payload);
        this.emit('goaway', { code: f.code ?? 'Internal', description: f.description ?? '' });
        this.#maybeIdle();
        return;
      }
      case FRAME.DATA:
        throw protocolError('DATA through the control path');
      default: {
        const never: never = type;
        throw protocolError(`frame type ${String(never)}`);
      }
    }
  }

  #onOpenFrame(id: number, service: string): void {
    const peerParity = this.#nextId % 2 === 1 ? 0 : 1;
    if (id % 2 !== peerParity || id <= this.#lastPeerId) throw protocolError(`OPEN with stream id ${id}`);
    this.#lastPeerId = id;
    const refuse = (err: VertexError) => this.writeStreamFrame(FRAME.REFUSE, id, { code: err.code, description: err.message.slice(0, 512) });
    if (this.#goawaySent || this.#state !== 'open') return refuse(vertexError('ConnectionLost', `open ${service}: the session takes no new streams`));
    if (this.#incoming + this.#orphaned.size >= this.#maxIncoming) {
      return refuse(vertexError('NotAllowed', `open ${service}: the peer has ${this.#maxIncoming} streams open here already (or still being decided on)`));
    }
    const onOpen = this.#onOpen;
    if (!onOpen) return refuse(vertexError('NotExposed', `open ${service}: nothing is served on this session`));
    const stream = new MuxStream(this, id, service, true);
    this.#streams.set(id, stream);
    this.#incoming += 1;
    this.#unanswered.add(stream);
    let answered = false;
    const streams = this.#streams;
    const answer = (): void => {
      answered = true;
      this.#unanswered.delete(stream);
      this.#orphaned.delete(stream);
    };
    onOpen({
      service,
      id,
      get bytesWaiting() {
        return stream.bytesRead;
      },
      get gone() {
        return streams.get(id) !== stream;
      },
      accept: (acceptOpts) => {
        if (answered) throw vertexError('Internal', `mux stream ${id}: answered twice`);
        answer();
        if (this.#streams.get(id) !== stream) {
          // The session closed (or the stream went) while the decision was made.
          stream.destroy(vertexError('ConnectionLost', `open ${service}: the session closed before the stream was accepted`));
          return stream;
        }
        this.writeStreamFrame(FRAME.ACCEPT, id);
        if (acceptOpts?.flush) this.#flushNow();
        stream.opened();
        return stream;
      },
      refuse: (err) => {
        if (answered) throw vertexError('Internal', `mux stream ${id}: answered twice`);
        answer();
        if (this.#streams.get(id) === stream) {
          this.#streams.delete(id);
          this.#incoming -= 1;
          refuse(err);
        }
        stream.refused();
        this.#maybeIdle();
      },
    });
  }

  #onData(id: number, bytes: Buffer, last: boolean): void {
    const stream = this.#streams.get(id);
    if (!stream) {
      // DATA already in flight when we reset or refused the stream is dropped.
      if (!this.#seen(id)) return this.#fail(protocolError(`DATA on stream ${id}, which was never opened`));
      // The peer spent session credit on it all the same: it counts, and comes back at once.
      this.#sessionReceived += bytes.length;
      if (this.#peerHasSessionWindow && this.#sessionReceived > this.#sessionAllowed) return this.#fail(this.#overBudget());
      this.consumed(bytes.length);
      return;
    }
    this.#bytesIn += bytes.length;
    this.#sessionReceived += bytes.length;
    if (this.#peerHasSessionWindow) {
      if (this.#sessionReceived > this.#sessionAllowed) return this.#fail(this.#overBudget());
    } else if (this.bytesBuffered > this.#sessionWindow) {
      // A peer without a session window cannot know it: the stream these bytes are for is
      // reset, and they are dropped, so what we hold stays within the window all the same.
      const err = vertexError('ConnectionLost', `stream ${stream.service}: reset, the peer had ${this.bytesBuffered} bytes unread on the session here, over its budget of ${this.#sessionWindow}`);
      this.#sessionConsumed += bytes.length;
      stream.destroy(err);
      return;
    }
    try {
      stream.receive(bytes, last);
    } catch (err) {
      this.#fail(err as Error);
    }
  }

  #overBudget(): VertexError {
    return protocolError(`the peer sent ${this.#sessionReceived - this.#sessionAllowed} bytes past its session window (${this.#sessionWindow})`);
  }

  /** True for an id that was opened at some point (by either side). */
  #seen(id: number): boolean {
    const ours = id % 2 === this.#nextId % 2;
    return ours ? id < this.#nextId : id <= this.#lastPeerId;
  }

  #unknown(type: FrameType, id: number): void {
    if (!this.#seen(id)) throw protocolError(`${frameName(type)} on stream ${id}, which was never opened`);
  }

  #maybeIdle(): void {
    if (this.#streams.size === 0 && this.#pendingOpens.size === 0 && (this.#goawaySent || this.#goawayReceived) && this.#state === 'open') {
      if (this.#ending) this.#endChannel();
      else this.emit('idle');
    }
  }

  // ---- liveness ----

  #armTimer(ms: number): void {
    this.#timer = this.#clock.setTimer(() => this.#onTimer(), ms);
  }

  #stopTimer(): void {
    this.#timer?.cancel();
    this.#timer = null;
  }

  /** Fires at or after the next keepalive or death deadline; re-arms for the one after. */
  #onTimer(): void {
    this.#timer = null;
    if (this.#state !== 'open') return;
    if (this.#bytesOut === this.#sentAtTimer) this.#spare.length = 0;
    this.#sentAtTimer = this.#bytesOut;
    const silent = this.#clock.now() - this.#lastHeard;
    if (silent >= this.#deadAfterMs) {
      this.#fail(vertexError('ConnectionLost', `mux session: no word from the peer for ${Math.round(silent)} ms`));
      return;
    }
    if (silent >= this.#keepaliveMs && !this.#pingOut) {
      this.#pingOut = true;
      this.#writeControl(encodeFrame(FRAME.PING, 0, randomBytes(PING_PAYLOAD_BYTES)));
    }
    const next = silent >= this.#keepaliveMs ? this.#deadAfterMs - silent : this.#keepaliveMs - silent;
    this.#armTimer(Math.max(1, Math.min(next, this.#keepaliveMs)));
  }

  // ---- closing ----

  /**
   * Closes the session: every stream is aborted with `err`. Except, when the peer ended the
   * channel cleanly (`peerEnded`), a stream already done on the wire (both ENDs exchanged):
   * the peer closed its side of it, so it ended the session once it had no stream left (idle,
   * after a drain), but this side's reader may not have taken all of it yet (a local service
   * slower than the tunnel). Its bytes are all here; it ends when they are read.
   */
  #fail(err: Error, local = false, peerEnded = false): void {
    if (this.#state === 'closed') {
      if (local) this.#channel.destroy();
      return;
    }
    this.#state = 'closed';
    this.#stopTimer();
    this.#openDeadlines.clear();
    for (const pending of this.#pendingOpens.values()) pending.reject(err);
    this.#pendingOpens.clear();
    const streams = [...this.#streams.values()];
    this.#streams.clear();
    this.#ready.clear();
    this.#unanswered.clear();
    this.#orphaned.clear();
    for (const stream of streams) if (!(peerEnded && stream.doneOnTheWire)) stream.sessionClosed(err);
    this.#out = null;
    this.#outLength = 0;
    this.#channel.destroy();
    this.emit('close', err);
  }
}

function noAnswer(): void {}

/** The error listener of a stream that has no owner yet (see MuxStream's constructor). */
function unowned(): void {}

function protocolError(what: string): VertexError {
  return vertexError('MuxDecode', `mux session: protocol error: ${what}`);
}

/**
 * One multiplexed stream: a Duplex with TCP-socket semantics (see the top of
 * the file). `bytesRead`/`bytesWritten` count payload bytes, as on a socket.
 */
export class MuxStream extends Duplex {
  readonly id: number;
  readonly service: string;
  /** True when the peer opened it. */
  readonly incoming: boolean;
  readonly #session: MuxSession;
  #open = false;
  /** Send credit: bytes the peer still lets us send. */
  #credit = 0;
  /** The peer's initial credit was taken (at ACCEPT, or before it by sendEarly). */
  #credited = false;
  #pending: Buffer | null = null;
  #pendingAt = 0;
  #pendingCallback: ((err?: Error | null) => void) | null = null;
  /** Bytes received, and the most the peer may send before it gets more credit. */
  #received = 0;
  #allowed = 0;
  /** Bytes received that the session has been told were taken by the reader (or dropped): its budget. */
  #reported = 0;
  #remoteEnded = false;
  #remoteReset = false;
  #written = 0;
  /** A credit check is due once the current read() is done (_read). */
  #creditCheck = false;

  constructor(session: MuxSession, id: number, service: string, incoming = false) {
    super({ allowHalfOpen: true, readableHighWaterMark: session.window / 2, writableHighWaterMark: MUX_DATA_FRAME });
    this.#session = session;
    this.id = id;
    this.service = service;
    this.incoming = incoming;
    this.#allowed = session.window;
    // Until it opens, the stream has no owner to hear its errors: an incoming one waits for
    // this side's answer (while a service's target is connected, up to seconds), an outgoing
    // one for the peer's; the session may close meanwhile, or reset it for the session
    // budget, and an 'error' nobody listens to would end the process (a peer could stop the
    // agent so). Whoever gets the stream once it opens listens for them.
    this.on('error', unowned);
  }

  get bytesRead(): number {
    return this.#received;
  }

  /** @internal both ENDs went across: nothing more goes either way; what is left is for the reader here. */
  get doneOnTheWire(): boolean {
    return this.writableFinished && this.#remoteEnded;
  }

  get bytesWritten(): number {
    return this.#written;
  }

  /** @internal ACCEPT went out or came in: data may flow. */
  opened(): void {
    this.off('error', unowned);
    this.#open = true;
    this.#takeInitialCredit();
    if (this.#pending) this.#session.schedule(this);
  }

  /**
   * @internal openEarly: data may flow before the ACCEPT, within the peer's initial
   * credit (none if its HELLO has not come yet: then it flows from the ACCEPT on).
   */
  sendEarly(): void {
    // openEarly hands the stream out at once: its caller listens for errors from now on.
    this.off('error', unowned);
    this.#open = true;
    this.#takeInitialCredit();
  }

  #takeInitialCredit(): void {
    if (this.#credited) return;
    const window = this.#session.peerWindow;
    if (window === 0) return;
    this.#credited = true;
    this.#credit += window;
  }

  /** @internal REFUSE: the stream never opened (an early stream's writer gets the reason). */
  refused(err?: Error): void {
    this.#remoteReset = true;
    this.destroy(err);
  }

  /** @internal */
  credit(increment: number): void {
    this.#credit += increment;
    if (this.#credit > MUX_MAX_WINDOW) throw protocolError(`stream ${this.id} credit above ${MUX_MAX_WINDOW}`);
    if (this.#pending && this.#open) this.#session.schedule(this);
  }

  /** @internal writes one frame of the pending chunk; true if it has more to send now. */
  sendFrame(): boolean {
    const chunk = this.#pending;
    if (!chunk || this.destroyed) return false;
    const n = Math.min(chunk.length - this.#pendingAt, this.#credit, MUX_DATA_FRAME, this.#session.sendSessionCredit);
    if (n <= 0) return false;
    const piece = this.#pendingAt === 0 && n === chunk.length ? chunk : chunk.subarray(this.#pendingAt, this.#pendingAt + n);
    this.#pendingAt += n;
    this.#credit -= n;
    this.#written += n;
    this.#session.writeData(this.id, piece);
    if (this.#pendingAt < chunk.length) return this.#credit > 0;
    const callback = this.#pendingCallback;
    this.#pending = null;
    this.#pendingCallback = null;
    this.#pendingAt = 0;
    callback?.();
    return false;
  }

  /** @internal DATA arrived. */
  receive(bytes: Buffer, _last: boolean): void {
    if (this.#remoteEnded) throw protocolError(`DATA on stream ${this.id} after its END`);
    this.#received += bytes.length;
    if (this.#received > this.#allowed) throw protocolError(`stream ${this.id} sent past its window`);
    if (bytes.length === 0) return;
    if (this.destroyed) {
      // Nobody will read them: dropped, and the session's budget gets them back.
      this.#reported += bytes.length;
      this.#session.consumed(bytes.length);
      return;
    }
    this.push(bytes);
    this.#settle();
    this.#returnCredit();
  }

  /**
   * Tells the session what the reader has taken since the last call. Made after
   * every push (a flowing reader gets a chunk inside push, without read()) and
   * after every read(): Node calls _read only on some reads (never while one
   * _read has had no push), and a stream whose reader took its bytes must give
   * the session its budget back even if its sender has nothing more to send.
   */
  #settle(): void {
    const consumed = this.#received - this.readableLength;
    // unshift() can put bytes back; they were counted once already.
    if (consumed <= this.#reported) return;
    const n = consumed - this.#reported;
    this.#reported = consumed;
    this.#session.consumed(n);
  }

  // Readable.read is typed any.
  override read(size?: number): any {
    const chunk: unknown = super.read(size);
    if (chunk !== null && !this.destroyed) this.#settle();
    return chunk;
  }

  /** @internal END arrived. */
  remoteEnded(): void {
    if (this.#remoteEnded) throw protocolError(`a second END on stream ${this.id}`);
    this.#remoteEnded = true;
    if (!this.destroyed) this.push(null);
  }

  /** @internal RESET arrived. */
  remoteReset(reason: string): void {
    this.#remoteReset = true;
    this.destroy(this.#unheld ? undefined : vertexError('ConnectionLost', `stream ${this.service}: the peer aborted it: ${reason}`));
  }

  /** @internal the session is gone; so is the stream, as an abort. */
  sessionClosed(err: Error): void {
    this.#remoteReset = true;
    if (!this.destroyed) this.destroy(this.#unheld ? undefined : err instanceof VertexError ? err : vertexError('ConnectionLost', err.message, err));
  }

  /**
   * An incoming stream not yet accepted: nobody holds it or listens for its
   * errors (its service is still deciding, or connecting to its local target),
   * so an abort then destroys it quietly; an error event here would have no
   * listener and end the process. accept() later finds it gone.
   */
  get #unheld(): boolean {
    return this.incoming && !this.#open;
  }

  /** Returns credit for what the reader has taken, in steps of half a window. */
  #returnCredit(): void {
    if (this.#remoteEnded || !this.#open) return;
    const consumed = this.#received - this.readableLength;
    const window = this.#session.window;
    const increment = consumed + window - this.#allowed;
    if (increment >= window / 2) {
      this.#allowed += increment;
      this.#session.writeWindow(this.id, increment);
    }
  }

  override _read(): void {
    // Node calls _read before it takes the chunk being read out of the buffer, so
    // readableLength here still counts it: a reader that took the whole window would
    // return no credit, and with the sender out of credit no DATA (no push) would
    // ever call _read again. The count is made once the read is done.
    if (this.#creditCheck) return;
    // Nothing to return even if the reader took everything received: no check (in a
    // flowing stream _read follows every push, and most pushes are in this case).
    if (this.#received + this.#session.window - this.#allowed < this.#session.window / 2) return;
    this.#creditCheck = true;
    process.nextTick(() => {
      this.#creditCheck = false;
      this.#returnCredit();
    });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (chunk.length === 0) return callback();
    this.#pending = chunk;
    this.#pendingAt = 0;
    this.#pendingCallback = callback;
    if (this.#open && this.#credit > 0) this.#session.schedule(this);
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (this.#session.sessionOpen) this.#session.writeStreamFrame(FRAME.END, this.id);
    callback();
  }

  /**
   * The close policy: a destroy after both directions ended cleanly sends
   * nothing; any other destroy (an abort, an error, a reader that gave up)
   * sends RESET, unless the peer reset the stream or the session is gone.
   */
  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const clean = this.doneOnTheWire;
    if (!clean && !this.#remoteReset && this.#session.sessionOpen) {
      this.#session.writeStreamFrame(FRAME.RESET, this.id, { code: 'ConnectionLost', description: err ? err.message.slice(0, 256) : 'the stream was destroyed' });
    }
    const pendingCallback = this.#pendingCallback;
    this.#pending = null;
    this.#pendingCallback = null;
    // What the reader never took is dropped with the stream: the session's budget gets it back.
    if (this.#received > this.#reported) {
      const n = this.#received - this.#reported;
      this.#reported = this.#received;
      this.#session.consumed(n);
    }
    this.#session.forget(this);
    // The chunk in hand is dropped with the stream; its writer learns of the destroy from 'close'.
    pendingCallback?.(err);
    callback(err);
  }
}
