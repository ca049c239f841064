/**
 * PTCP driver: runs PtcpConnection machines over one `node:dgram` socket and exposes each
 * connection as a Node Duplex (PtcpStream). See docs/ptcp.md.
 *
 * - Demultiplexing is by the destination connection id, not by address, so a peer whose
 *   NAT mapping changes keeps its connection (the new address is adopted once a segment
 *   from it carries the right source id).
 * - Datagrams that are not PTCP (first byte is not the magic) are emitted as 'datagram', and
 *   `sendRaw` sends such datagrams from the same socket: hole-punch probes and who-am-i
 *   queries must leave from the port the streams will use.
 * - Inputs are batched: machines are polled once per event-loop turn (setImmediate), so one
 *   ACK answers every datagram read in that turn and writes made in one turn share segments.
 * - The per-datagram path allocates little: segments are encoded into shared send slabs,
 *   addresses that are IP literals skip dgram's per-send DNS lookup, in-order payloads read
 *   in one turn reach the stream as one chunk, and a timer whose deadline moves later is
 *   left to fire early and re-armed then instead of being replaced on every ACK.
 */
import { randomBytes } from 'node:crypto';
import * as dgram from 'node:dgram';
import * as dns from 'node:dns';
import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import { Duplex } from 'node:stream';
import { isVertexError, vertexError, type VertexError } from '../errors';
import { echoedAt, PtcpConnection, type PtcpAction, type PtcpStats, type RandomSource } from '../proto/ptcp/connection';
import { MAX_HALF_OPEN, type PtcpTunables } from '../proto/ptcp/constants';
import { systemClock, type Clock, type Timer } from '../util/clock';
import { silentLogger, type Logger } from '../util/log';
import { decodeSegment, encodedSize, encodeSegment, encodeSegmentInto, FLAG_ACK, FLAG_RST, FLAG_SYN, isPtcpDatagram, type PtcpSegment } from '../wire/ptcp-segment';

/** Kernel socket buffers asked for (Linux caps them at net.core.[rw]mem_max). */
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;
const DEFAULT_TTL = 64;
const STREAM_HIGH_WATER_MARK = 256 * 1024;
/**
 * Outgoing datagrams are cut from slabs of this size instead of one Buffer each. A slab is
 * never written twice: a send the kernel could not take at once stays queued in libuv,
 * pointing at its bytes, so a full slab is dropped for a fresh one and the GC frees it once
 * its last datagram has left. A segment larger than a quarter slab gets a Buffer of its own.
 */
const SEND_SLAB_BYTES = 128 * 1024;
/** In-order payloads delivered in one turn are joined into stream chunks of at most this. */
const MAX_DELIVERY_CHUNK = 64 * 1024;
/**
 * libuv reads at most this many datagrams from a UDP socket per event-loop turn
 * (uv__udp_recvmsg); a turn that read fewer read the socket's queue until it was empty. Were
 * the batch ever larger, a drained queue would only be noticed later (the echo rule in
 * #onMessage still applies); were it smaller, verdicts would be as early as before.
 */
const UV_UDP_READS_PER_TURN = 32;

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string, family: number) => void;

/**
 * dgram resolves the destination of every datagram through `lookup`; the default,
 * dns.lookup, answers even an IP literal on the next tick, which costs a tick, a closure and
 * an IP parse per datagram. Every address the driver holds is a literal except a host name
 * given to connect(), so literals answer at once (the last one remembered) and names still
 * go to dns.lookup.
 */
function literalFirstLookup(): (address: string, family: number, callback: LookupCallback) => void {
  let lastLiteral = '';
  let lastFamily = 0;
  return (address, family, callback) => {
    if (address === lastLiteral) {
      callback(null, address, lastFamily);
      return;
    }
    const literal = isIP(address);
    if (literal !== 0) {
      lastLiteral = address;
      lastFamily = literal;
      callback(null, address, literal);
      return;
    }
    dns.lookup(address, family, callback);
  };
}

export interface PtcpSocketOptions {
  host?: string;
  port?: number;
  clock?: Clock;
  log?: Logger;
  random?: RandomSource;
  /** Connection tunables applied to every connection of this socket. */
  tunables?: Partial<PtcpTunables>;
}

export interface PtcpConnectOptions {
  connectTimeoutMs?: number;
  /**
   * Gives the connect up when aborted before it completes: nothing more is sent for it (not
   * even a SYN retransmission already due), its connection id is freed, and the promise
   * rejects with ConnectionLost. Aborting after the connect resolved changes nothing.
   */
  signal?: AbortSignal;
}

interface Endpoint {
  address: string;
  port: number;
}

interface Entry {
  conn: PtcpConnection;
  remote: Endpoint;
  stream: PtcpStream | null;
  timer: Timer | null;
  /** When the machine next wants handleTimer (its last 'timer' action). */
  timerAt: number | null;
  /** When `timer` fires: at or before timerAt. */
  armedAt: number;
  passiveKey: string | null;
  /** For an active open: settles the connect() promise. */
  onConnected: ((stream: PtcpStream) => void) | null;
  onFailed: ((err: Error) => void) | null;
  /** A write callback held back while the send buffer is full. */
  pendingWrite: ((err?: Error | null) => void) | null;
  gone: boolean;
  /** An active open given up through its AbortSignal: its datagrams still queued stay unsent. */
  cancelled: boolean;
}

/** A PTCP connection as a Node Duplex: back-pressure both ways, half-close (allowHalfOpen). */
export class PtcpStream extends Duplex {
  readonly #owner: PtcpSocket;
  readonly #entry: Entry;

  /** @internal */
  constructor(owner: PtcpSocket, entry: Entry) {
    super({ allowHalfOpen: true, readableHighWaterMark: STREAM_HIGH_WATER_MARK, writableHighWaterMark: STREAM_HIGH_WATER_MARK });
    this.#owner = owner;
    this.#entry = entry;
  }

  get remoteAddress(): string {
    return this.#entry.remote.address;
  }

  get remotePort(): number {
    return this.#entry.remote.port;
  }

  get connectionId(): number {
    return this.#entry.conn.localId;
  }

  /** Buffer sizes, window and congestion state of the underlying connection. */
  stats(): PtcpStats {
    return this.#entry.conn.stats();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#owner._write(this.#entry, chunk, callback);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (err?: Error | null) => void): void {
    // Handed over piece by piece: the connection cuts them into segments anyway, so joining
    // them first would only copy up to a high-water mark of bytes.
    this.#owner._write(this.#entry, chunks.map((c) => c.chunk), callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.#owner._end(this.#entry);
    callback();
  }

  override _read(): void {
    this.#owner._resumeReading(this.#entry);
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    // autoDestroy after a clean end both ways: the machine finishes the close (acks, FIN
    // retransmissions, TIME-WAIT) on its own. Any other destroy aborts with RST.
    if (err || !this.writableFinished || !this.readableEnded) this.#owner._abort(this.#entry);
    callback(err);
  }
}

export class PtcpSocket extends EventEmitter {
  readonly #udp: dgram.Socket;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #random: RandomSource;
  readonly #tunables: Partial<PtcpTunables>;
  readonly #byId = new Map<number, Entry>();
  readonly #passive = new Map<string, Entry>();
  #dirty = new Set<Entry>();
  #flushScheduled = false;
  readonly #flushNow = (): void => this.#flush();
  #slab: Buffer | null = null;
  #slabUsed = 0;
  #listening = false;
  #closed = false;
  #ttlBusy = false;
  #ttlQueue: Array<() => void> = [];
  /**
   * Every datagram that reached the socket before this time has been read. Verdicts of
   * silence are taken against it (PtcpConnection.handleTimer): on a starved process the
   * socket's queue holds seconds of segments that timers, which Node runs before it reads
   * sockets, would otherwise never see (a live peer was declared dead with 6 MB of its
   * segments still queued here, and its next segment drew a reset).
   */
  #readUpTo: number;
  /** Datagrams read since the last flush: the reads of this turn's poll phase. */
  #readsThisTurn = 0;
  #lastReadAt = 0;
  /** A time before this turn's poll phase: the last flush, or a timer that ran since. */
  #beforePollAt: number;
  /** Connections whose verdict of silence waits until the socket has been read up to it. */
  #awaitingInput = new Set<Entry>();

  private constructor(udp: dgram.Socket, opts: PtcpSocketOptions) {
    super();
    this.#udp = udp;
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.log ?? silentLogger;
    this.#random = opts.random ?? randomBytes;
    this.#tunables = opts.tunables ?? {};
    this.#readUpTo = this.#clock.now();
    this.#beforePollAt = this.#readUpTo;
    udp.on('message', (buf, rinfo) => this.#onMessage(buf, rinfo));
    udp.on('error', (err) => this.#log.warn({ err }, 'ptcp udp socket error'));
  }

  static override bind(opts: PtcpSocketOptions = {}): Promise<PtcpSocket> {
    const host = opts.host ?? '0.0.0.0';
    // The lookup's declared type takes an options object; dgram passes the family number.
    const lookup = literalFirstLookup() as unknown as dgram.SocketOptions['lookup'];
    const udp = dgram.createSocket({ type: isIP(host) === 6 ? 'udp6' : 'udp4', lookup });
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        udp.close();
        reject(err);
      };
      udp.once('error', onError);
      udp.bind(opts.port ?? 0, host, () => {
        udp.off('error', onError);
        for (const set of [(n: number) => udp.setRecvBufferSize(n), (n: number) => udp.setSendBufferSize(n)]) {
          try {
            set(SOCKET_BUFFER_BYTES);
          } catch {
            // The kernel limit stays in force; smaller buffers only cost throughput.
          }
        }
        resolve(new PtcpSocket(udp, opts));
      });
    });
  }

  address(): { address: string; port: number } {
    const a = this.#udp.address();
    return { address: a.address, port: a.port };
  }

  /** Number of connections the socket currently tracks (any state). */
  get connectionCount(): number {
    return this.#byId.size;
  }

  /** Accepts incoming connections; each is emitted as 'connection' once its handshake completes. */
  listen(onConnection?: (stream: PtcpStream) => void): void {
    if (onConnection) this.on('connection', onConnection);
    this.#listening = true;
  }

  connect(host: string, port: number, opts: PtcpConnectOptions = {}): Promise<PtcpStream> {
    if (this.#closed) return Promise.reject(vertexError('ConnectionLost', `ptcp connect ${host}:${port}: socket is closed`));
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(connectCancelled(host, port, signal));
    const conn = new PtcpConnection({ ...this.#tunables, ...(opts.connectTimeoutMs !== undefined ? { connectTimeoutMs: opts.connectTimeoutMs } : {}), localId: this.#newId(), random: this.#random });
    const entry = this.#entry(conn, { address: host, port });
    return new Promise((resolve, reject) => {
      const onAbort = (): void => this.#cancelConnect(entry, connectCancelled(host, port, signal as AbortSignal));
      entry.onConnected = (stream) => {
        signal?.removeEventListener('abort', onAbort);
        resolve(stream);
      };
      entry.onFailed = (err) => {
        signal?.removeEventListener('abort', onAbort);
        if (isVertexError(err)) err.message = `${err.message} (to ${host}:${port})`;
        reject(err);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#byId.set(conn.localId, entry);
      conn.connect(this.#clock.now());
      this.#markDirty(entry);
    });
  }

  /** Ends an active open that has not completed, without another datagram (see PtcpConnectOptions.signal). */
  #cancelConnect(entry: Entry, err: VertexError): void {
    const fail = entry.onFailed;
    if (fail === null) return;
    entry.onFailed = null;
    entry.onConnected = null;
    // Before the handshake completes an abort sends nothing and the machine just closes, so
    // a poll still due (the first SYN goes out at the next flush) finds nothing to send; a
    // datagram already waiting behind a low-TTL raw send is dropped through `cancelled`.
    entry.cancelled = true;
    entry.conn.abort(this.#clock.now());
    this.#forget(entry);
    fail(err);
  }

  /** Sends a non-PTCP datagram from this socket; `ttl` applies to this datagram only. */
  sendRaw(buf: Buffer, host: string, port: number, opts: { ttl?: number } = {}): Promise<void> {
    if (isPtcpDatagram(buf)) return Promise.reject(new RangeError('ptcp sendRaw: datagram starts with the ptcp magic byte'));
    if (this.#closed) return Promise.reject(vertexError('ConnectionLost', 'ptcp sendRaw: socket is closed'));
    if (opts.ttl === undefined) {
      return new Promise((resolve, reject) => this.#udp.send(buf, port, host, (err) => (err ? reject(err) : resolve())));
    }
    const ttl = opts.ttl;
    return new Promise((resolve, reject) => {
      const run = (): void => {
        // Segments sent while the low TTL is set would die too, so they wait (#sendDatagram).
        this.#ttlBusy = true;
        try {
          this.#udp.setTTL(ttl);
        } catch (err) {
          this.#ttlDone();
          reject(err as Error);
          return;
        }
        this.#udp.send(buf, port, host, (err) => {
          try {
            if (!this.#closed) this.#udp.setTTL(DEFAULT_TTL);
          } finally {
            this.#ttlDone();
          }
          if (err) reject(err);
          else resolve();
        });
      };
      if (this.#ttlBusy) this.#ttlQueue.push(run);
      else run();
    });
  }

  #ttlDone(): void {
    this.#ttlBusy = false;
    const queued = this.#ttlQueue;
    this.#ttlQueue = [];
    for (const fn of queued) {
      if (this.#ttlBusy) this.#ttlQueue.push(fn);
      else fn();
    }
  }

  /** Closes the socket; open streams are destroyed with ConnectionLost. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const entry of [...this.#byId.values()]) {
      const err = vertexError('ConnectionLost', `ptcp connection ${entry.conn.localId}: socket closed`);
      if (entry.conn.synchronized && entry.conn.state !== 'time-wait') {
        entry.conn.abort(this.#clock.now());
        this.#run(entry, entry.conn.poll(this.#clock.now()));
      }
      entry.onFailed?.(err);
      this.#forget(entry);
      if (entry.stream && !entry.stream.destroyed) entry.stream.destroy(err);
    }
    this.#ttlQueue = [];
    await new Promise<void>((resolve) => this.#udp.close(() => resolve()));
  }

  // ---------------------------------------------------------------- stream hooks (internal)

  /** @internal */
  _write(entry: Entry, chunk: Buffer | Buffer[], callback: (err?: Error | null) => void): void {
    const state = entry.conn.state;
    if (state !== 'established' && state !== 'close-wait') {
      callback(vertexError('ConnectionLost', `ptcp write: connection ${entry.conn.localId} is ${state}`));
      return;
    }
    // The connection keeps written bytes until they are acknowledged (for retransmission), but
    // the callback below may run at once, after which a writer may reuse its buffer, as with
    // net.Socket. So the connection gets a copy; one memcpy is small next to the per-datagram cost.
    if (Array.isArray(chunk)) for (const piece of chunk) entry.conn.write(Buffer.from(piece));
    else entry.conn.write(Buffer.from(chunk));
    this.#markDirty(entry);
    if (entry.conn.sendBufferFull) entry.pendingWrite = callback;
    else callback();
  }

  /** @internal */
  _end(entry: Entry): void {
    entry.conn.end();
    this.#markDirty(entry);
  }

  /** @internal */
  _resumeReading(entry: Entry): void {
    entry.conn.setReadPaused(false);
    this.#markDirty(entry);
  }

  /** @internal */
  _abort(entry: Entry): void {
    if (entry.gone || entry.conn.state === 'closed' || entry.conn.state === 'time-wait') return;
    // Like close() on a TCP socket after shutdown(): once our FIN is queued, destroying the
    // stream lets the connection finish on its own instead of resetting it. TLS destroys
    // its transport right after both sides' close_notify, and a RST there would reach the
    // peer as an error after a clean end.
    const state = entry.conn.state;
    if (state === 'fin-wait-1' || state === 'fin-wait-2' || state === 'closing' || state === 'last-ack') return;
    entry.conn.abort(this.#clock.now());
    this.#run(entry, entry.conn.poll(this.#clock.now()));
  }

  // ---------------------------------------------------------------- internals

  #newId(): number {
    for (let i = 0; i < 64; i++) {
      const id = this.#random(4).readUInt32BE(0);
      if (id !== 0 && !this.#byId.has(id)) return id;
    }
    throw new Error('ptcp: could not pick a free connection id');
  }

  #entry(conn: PtcpConnection, remote: Endpoint): Entry {
    return { conn, remote, stream: null, timer: null, timerAt: null, armedAt: 0, passiveKey: null, onConnected: null, onFailed: null, pendingWrite: null, gone: false, cancelled: false };
  }

  #onMessage(buf: Buffer, rinfo: dgram.RemoteInfo): void {
    const now = this.#clock.now();
    this.#readsThisTurn++;
    this.#lastReadAt = now;
    this.#scheduleFlush();
    if (!isPtcpDatagram(buf)) {
      this.emit('datagram', buf, rinfo);
      return;
    }
    let seg: PtcpSegment;
    try {
      seg = decodeSegment(buf);
    } catch (err) {
      this.#log.debug({ err, from: `${rinfo.address}:${rinfo.port}` }, 'ptcp: dropped malformed segment');
      return;
    }
    if (seg.dstId === 0) {
      this.#onSyn(seg, rinfo, now);
      return;
    }
    const entry = this.#byId.get(seg.dstId);
    if (!entry) {
      if (!(seg.flags & FLAG_RST)) this.#sendReset(seg, rinfo);
      return;
    }
    if (entry.conn.peerId === seg.srcId) {
      // The peer sent this after it got our segment stamped `sentAt`, so it reached the socket
      // after that, and so did nothing still queued behind it: the socket is read up to there.
      const sentAt = echoedAt(seg.tsEcr, now);
      if (sentAt !== null && sentAt > this.#readUpTo) this.#readUpTo = sentAt;
    }
    if (entry.conn.peerId === seg.srcId && (entry.remote.address !== rinfo.address || entry.remote.port !== rinfo.port)) {
      // The peer's NAT rebinding (or roaming): follow it; connection ids, not addresses, name the connection.
      this.#log.debug({ conn: entry.conn.localId, to: `${rinfo.address}:${rinfo.port}` }, 'ptcp: peer address changed');
      entry.remote = { address: rinfo.address, port: rinfo.port };
    }
    entry.conn.handleSegment(seg, now);
    this.#markDirty(entry);
  }

  #onSyn(seg: PtcpSegment, rinfo: dgram.RemoteInfo, now: number): void {
    if ((seg.flags & (FLAG_SYN | FLAG_ACK | FLAG_RST)) !== FLAG_SYN) return;
    const key = `${seg.srcId}/${rinfo.address}/${rinfo.port}`;
    const existing = this.#passive.get(key);
    if (existing) {
      existing.conn.handleSegment(seg, now);
      this.#markDirty(existing);
      return;
    }
    if (!this.#listening || this.#closed || this.#passive.size >= MAX_HALF_OPEN * 64) {
      this.#sendReset(seg, rinfo);
      return;
    }
    let halfOpen = 0;
    for (const e of this.#passive.values()) if (!e.conn.synchronized) halfOpen++;
    if (halfOpen >= MAX_HALF_OPEN) return;
    const conn = new PtcpConnection({ ...this.#tunables, localId: this.#newId(), random: this.#random });
    const entry = this.#entry(conn, { address: rinfo.address, port: rinfo.port });
    entry.passiveKey = key;
    this.#passive.set(key, entry);
    this.#byId.set(conn.localId, entry);
    conn.accept(seg, now);
    this.#markDirty(entry);
  }

  #sendReset(seg: PtcpSegment, rinfo: dgram.RemoteInfo): void {
    const rst: PtcpSegment = {
      flags: FLAG_RST | FLAG_ACK,
      srcId: seg.dstId,
      dstId: seg.srcId,
      seq: seg.ack,
      ack: (seg.seq + seg.payload.length + (seg.flags & FLAG_SYN ? 1 : 0)) >>> 0,
      tsVal: 0,
      tsEcr: seg.tsVal,
      window: 0,
      sacks: [],
      payload: Buffer.alloc(0),
    };
    this.#sendDatagram(encodeSegment(rst), rinfo);
  }

  #sendSegment(seg: PtcpSegment, entry: Entry): void {
    if (this.#closed) return;
    const to = entry.remote;
    const size = encodedSize(seg);
    if (size > SEND_SLAB_BYTES / 4) {
      this.#sendDatagram(encodeSegment(seg), to, entry);
      return;
    }
    let slab = this.#slab;
    if (slab === null || this.#slabUsed + size > slab.length) {
      slab = Buffer.allocUnsafeSlow(SEND_SLAB_BYTES);
      this.#slab = slab;
      this.#slabUsed = 0;
    }
    const start = this.#slabUsed;
    this.#slabUsed += encodeSegmentInto(seg, slab, start);
    this.#sendDatagram(slab.subarray(start, this.#slabUsed), to, entry);
  }

  #sendDatagram(buf: Buffer, to: Endpoint, entry: Entry | null = null): void {
    if (this.#closed || entry?.cancelled) return;
    if (this.#ttlBusy) {
      this.#ttlQueue.push(() => this.#sendDatagram(buf, to, entry));
      return;
    }
    this.#udp.send(buf, to.port, to.address);
  }

  #markDirty(entry: Entry): void {
    this.#dirty.add(entry);
    this.#scheduleFlush();
  }

  #scheduleFlush(): void {
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      setImmediate(this.#flushNow);
    }
  }

  /** Runs in the check phase, after the poll phase that read the socket this turn. */
  #flush(): void {
    this.#flushScheduled = false;
    const now = this.#clock.now();
    const reads = this.#readsThisTurn;
    this.#readsThisTurn = 0;
    if (reads < UV_UDP_READS_PER_TURN) {
      // The poll phase read until the queue was empty (or found nothing to read).
      const emptyAt = reads > 0 ? this.#lastReadAt : this.#beforePollAt;
      if (emptyAt > this.#readUpTo) this.#readUpTo = emptyAt;
    }
    this.#beforePollAt = now;
    const dirty = this.#dirty;
    this.#dirty = new Set();
    for (const entry of dirty) this.#run(entry, entry.conn.poll(now));
    if (this.#awaitingInput.size > 0) {
      const waiting = [...this.#awaitingInput];
      this.#awaitingInput.clear();
      for (const entry of waiting) {
        if (entry.gone || !entry.conn.awaitingInput) continue;
        entry.conn.handleTimer(now, this.#readUpTo);
        this.#run(entry, entry.conn.poll(now));
        this.#watchInput(entry);
      }
    }
  }

  /** A verdict that waits for input is asked again after every turn until it is taken or cancelled. */
  #watchInput(entry: Entry): void {
    if (entry.gone || !entry.conn.awaitingInput) return;
    this.#awaitingInput.add(entry);
    this.#scheduleFlush();
  }

  #run(entry: Entry, actions: PtcpAction[]): void {
    // Consecutive in-order payloads (one per datagram) are pushed as one chunk: a stream
    // push and 'data' event per 1200 bytes costs more than copying them together.
    let chunks: Buffer[] = [];
    let chunkBytes = 0;
    for (const action of actions) {
      if (action.type === 'data') {
        if (chunkBytes > 0 && chunkBytes + action.data.length > MAX_DELIVERY_CHUNK) {
          this.#deliver(entry, chunks, chunkBytes);
          chunks = [];
          chunkBytes = 0;
        }
        chunks.push(action.data);
        chunkBytes += action.data.length;
        continue;
      }
      if (chunkBytes > 0) {
        this.#deliver(entry, chunks, chunkBytes);
        chunks = [];
        chunkBytes = 0;
      }
      switch (action.type) {
        case 'send':
          this.#sendSegment(action.segment, entry);
          break;
        case 'connected':
          this.#onConnected(entry);
          break;
        case 'end':
          if (entry.stream && !entry.stream.destroyed) entry.stream.push(null);
          break;
        case 'drain': {
          const cb = entry.pendingWrite;
          entry.pendingWrite = null;
          cb?.();
          break;
        }
        case 'error':
          this.#log.debug({ conn: entry.conn.localId, err: action.error }, 'ptcp connection failed');
          entry.pendingWrite = null;
          if (entry.onFailed) entry.onFailed(action.error);
          else if (entry.stream && !entry.stream.destroyed) entry.stream.destroy(action.error);
          entry.onFailed = null;
          entry.onConnected = null;
          break;
        case 'closed':
          this.#forget(entry);
          if (entry.onFailed) {
            entry.onFailed(vertexError('ConnectionLost', `ptcp connection ${entry.conn.localId}: closed during the handshake`));
            entry.onFailed = null;
          }
          break;
        case 'timer':
          this.#arm(entry, action.at);
          break;
        default:
          assertNever(action);
      }
    }
    if (chunkBytes > 0) this.#deliver(entry, chunks, chunkBytes);
  }

  #deliver(entry: Entry, chunks: Buffer[], bytes: number): void {
    const stream = entry.stream;
    if (!stream || stream.destroyed) return;
    const data = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, bytes);
    if (!stream.push(data)) entry.conn.setReadPaused(true);
  }

  #onConnected(entry: Entry): void {
    const stream = new PtcpStream(this, entry);
    entry.stream = stream;
    if (entry.onConnected) {
      const resolve = entry.onConnected;
      entry.onConnected = null;
      entry.onFailed = null;
      resolve(stream);
    } else {
      this.emit('connection', stream);
    }
  }

  #arm(entry: Entry, at: number | null): void {
    entry.timerAt = at;
    // A deadline that moved later (the retransmission timer restarts on every ACK) keeps
    // the timer already set: it fires early and is set again for the new deadline then.
    if (at !== null && !entry.gone && entry.timer !== null && entry.armedAt <= at) return;
    entry.timer?.cancel();
    entry.timer = null;
    if (at === null || entry.gone) return;
    this.#setTimer(entry, at);
  }

  #setTimer(entry: Entry, at: number): void {
    entry.armedAt = at;
    entry.timer = this.#clock.setTimer(() => this.#onTimer(entry), Math.max(0, at - this.#clock.now()));
  }

  #onTimer(entry: Entry): void {
    entry.timer = null;
    const at = entry.timerAt;
    if (at === null || entry.gone) return;
    const now = this.#clock.now();
    if (now < at) {
      this.#setTimer(entry, at);
      return;
    }
    // Timers run before the turn's poll phase: whatever reaches the socket from now on is read
    // after this, so a flush that finds the socket empty has read it up to here.
    if (now > this.#beforePollAt) this.#beforePollAt = now;
    entry.conn.handleTimer(now, this.#readUpTo);
    this.#run(entry, entry.conn.poll(now));
    this.#watchInput(entry);
  }

  #forget(entry: Entry): void {
    entry.gone = true;
    this.#awaitingInput.delete(entry);
    entry.timer?.cancel();
    entry.timer = null;
    if (this.#byId.get(entry.conn.localId) === entry) this.#byId.delete(entry.conn.localId);
    if (entry.passiveKey !== null && this.#passive.get(entry.passiveKey) === entry) this.#passive.delete(entry.passiveKey);
  }
}

function connectCancelled(host: string, port: number, signal: AbortSignal): VertexError {
  return vertexError('ConnectionLost', `ptcp connect ${host}:${port}: cancelled`, signal.reason);
}

function assertNever(x: never): never {
  throw new Error(`ptcp socket: unexpected action ${JSON.stringify(x)}`);
}
