/**
 * One PTCP connection as a sans-I/O state machine (see docs/ptcp.md).
 *
 * Inputs: segments (`handleSegment`), the passage of time (`handleTimer`), and the
 * application (`write`, `end`, `abort`, `setReadPaused`). Every input takes `now` in ms.
 * Outputs: `poll(now)` runs the send logic and returns the pending actions (segments to
 * send, data to deliver, the next timer deadline, errors, close). A driver calls `poll`
 * after a batch of inputs; batching lets one ACK answer many datagrams.
 *
 * Internally both directions count in 0-based stream offsets (JS numbers, exact to 2^53);
 * the 32-bit wire numbers are derived from the random ISNs and unwrapped against the
 * nearest expected value, so wrap-around never reaches the logic.
 */
import { VertexError, vertexError } from '../../errors';
import {
  FLAG_ACK,
  FLAG_FIN,
  FLAG_KEEPALIVE,
  FLAG_RST,
  FLAG_SYN,
  PTCP_MAX_SACK_BLOCKS,
  PTCP_MAX_WINDOW,
  type PtcpSegment,
  type SackBlock,
  seqDiff,
  seqLt,
} from '../../wire/ptcp-segment';
import { Bbr } from './bbr';
import type { CongestionController, CongestionState } from './congestion';
import { Cubic } from './cubic';
import { DeliveryRateEstimator } from './delivery-rate';
import {
  DEAD_PEER_RTOS,
  DUP_THRESH,
  MAX_DEAD_PEER_MS,
  MAX_INPUT_LAG_MS,
  TLP_MIN_MS,
  PACING_BURST_MS,
  PACING_MIN_BURST_SEGMENTS,
  PTCP_DEFAULTS,
  type PtcpTunables,
} from './constants';
import { Pacer } from './pacer';
import { ReassemblyBuffer } from './reassembly';
import { ReorderWindow } from './reorder-window';
import { RttEstimator } from './rtt-estimator';
import { SendScoreboard, type SendSegment } from './scoreboard';

export type PtcpState =
  | 'idle'
  | 'syn-sent'
  | 'syn-received'
  | 'established'
  | 'fin-wait-1'
  | 'fin-wait-2'
  | 'closing'
  | 'time-wait'
  | 'close-wait'
  | 'last-ack'
  | 'closed';

export type PtcpAction =
  | { type: 'send'; segment: PtcpSegment }
  | { type: 'connected' }
  | { type: 'data'; data: Buffer }
  | { type: 'end' }
  | { type: 'drain' }
  | { type: 'error'; error: VertexError }
  | { type: 'closed' }
  | { type: 'timer'; at: number | null };

export type RandomSource = (size: number) => Buffer;

export interface PtcpConnectionOptions extends Partial<PtcpTunables> {
  localId: number;
  random: RandomSource;
  /**
   * @internal Tests only: retransmit the SYN-ACK on a timer, as PTCP did before issue 11,
   * to show that a test catches a spoofed SYN drawing several SYN-ACKs.
   */
  retransmitSynAck?: boolean;
}

export interface PtcpStats {
  state: PtcpState;
  /** Written by the application and not yet acknowledged. */
  sendBuffered: number;
  /** Received and not yet handed to the application (in order or not). */
  receiveBuffered: number;
  inFlight: number;
  cwnd: number;
  ssthresh: number;
  congestion: CongestionState;
  srttMs: number | undefined;
  rtoMs: number;
  peerWindow: number;
  segmentsSent: number;
  segmentsReceived: number;
  retransmits: number;
  timeouts: number;
  spuriousRecoveries: number;
  bytesAcked: number;
  bytesDelivered: number;
}

const HEADER_OVERHEAD = 32 + 28;

function tsOf(ms: number): number {
  const ts = Math.floor(ms * 1000) >>> 0;
  return ts === 0 ? 1 : ts;
}

/**
 * When (on the clock of `now`) this side sent the segment whose timestamp a received segment
 * echoes, or null when the echo is absent or not plausibly ours (from the future, or older
 * than a minute). Every connection of one driver shares its clock, so any echo tells the
 * driver that the datagram carrying it reached the socket after that time.
 */
export function echoedAt(tsEcr: number, now: number): number | null {
  if (tsEcr === 0) return null;
  const us = (tsOf(now) - tsEcr) >>> 0;
  return us < 60_000_000 ? now - us / 1000 : null;
}

export class PtcpConnection {
  readonly localId: number;
  readonly #o: PtcpTunables;
  readonly #random: RandomSource;
  readonly #retransmitSynAck: boolean;
  #state: PtcpState = 'idle';
  #peerId = 0;
  #iss = 0;
  #irs = 0;
  #sb: SendScoreboard;
  #rb = new ReassemblyBuffer(0);
  #rtt: RttEstimator;
  #cc: CongestionController;
  #rate = new DeliveryRateEstimator();
  #pacer: Pacer;
  #actions: PtcpAction[] = [];
  #lastTimerAt: number | null = null;
  #closedEmitted = false;
  #failed = false;

  // Handshake.
  #synDeadline = 0;
  #synAt: number | null = null;
  #synTries = 0;
  #sendSynNow = false;

  // Send side.
  #peerEdge = 0;
  #wndAck = -1;
  #rtoAt: number | null = null;
  #persistAt: number | null = null;
  #persistBackoff = 1;
  #paceAt: number | null = null;
  #appLimited = true;
  #drainWanted = false;
  #rackXmit = -1;
  #rackRtt = 0;
  #rackAt: number | null = null;
  #reorder = new ReorderWindow();
  #retransInEpisode = 0;
  #ptoAt: number | null = null;
  #tlpOutstanding = false;

  // Receive side.
  #finOffset: number | null = null;
  #finReceived = false;
  #endEmitted = false;
  #readPaused = false;
  #tsRecent = 0;
  #ackNow = false;
  #unackedSegments = 0;
  #delAckAt: number | null = null;
  #maxEdge = 0;

  // Liveness.
  #lastRecvAt = 0;
  #lastKeepaliveAt = 0;
  /** A silence verdict that fell due before the driver had read its input up to it. */
  #verdictWaitsFor: number | null = null;
  /** Keepalives sent since the peer was last heard from (for the PtcpIdle message). */
  #keepalivesUnanswered = 0;
  #timeWaitAt: number | null = null;

  #stats = { segmentsSent: 0, segmentsReceived: 0, retransmits: 0, timeouts: 0, spuriousRecoveries: 0, bytesAcked: 0, bytesDelivered: 0 };

  constructor(opts: PtcpConnectionOptions) {
    if (!Number.isInteger(opts.localId) || opts.localId <= 0 || opts.localId > 0xffffffff) {
      throw new RangeError(`ptcp connection: local id ${opts.localId} is not a non-zero uint32`);
    }
    this.localId = opts.localId;
    this.#random = opts.random;
    this.#retransmitSynAck = opts.retransmitSynAck === true;
    const o: PtcpTunables = { ...PTCP_DEFAULTS };
    for (const key of Object.keys(PTCP_DEFAULTS) as (keyof PtcpTunables)[]) {
      const v = opts[key];
      if (v !== undefined) (o as unknown as Record<string, unknown>)[key] = v;
    }
    o.receiveBufferBytes = Math.min(o.receiveBufferBytes, PTCP_MAX_WINDOW);
    this.#o = o;
    this.#sb = new SendScoreboard(o.mss, 0);
    this.#rtt = new RttEstimator({ initialRtoMs: o.initialRtoMs, minRtoMs: o.minRtoMs, maxRtoMs: o.maxRtoMs, granularityMs: 1 });
    const ccOptions = { mss: o.mss, initialWindowSegments: o.initialWindowSegments, maxWindowBytes: o.maxCwndBytes };
    this.#cc = o.congestion === 'cubic' ? new Cubic(ccOptions) : new Bbr(ccOptions);
    this.#pacer = new Pacer(PACING_MIN_BURST_SEGMENTS * (o.mss + HEADER_OVERHEAD));
  }

  get state(): PtcpState {
    return this.#state;
  }

  get peerId(): number {
    return this.#peerId;
  }

  get tunables(): Readonly<PtcpTunables> {
    return this.#o;
  }

  /** True once the handshake completed and until the connection is gone. */
  get synchronized(): boolean {
    switch (this.#state) {
      case 'established':
      case 'fin-wait-1':
      case 'fin-wait-2':
      case 'closing':
      case 'time-wait':
      case 'close-wait':
      case 'last-ack':
        return true;
      case 'idle':
      case 'syn-sent':
      case 'syn-received':
      case 'closed':
        return false;
      default:
        return assertNever(this.#state);
    }
  }

  /** Bytes written and not yet acknowledged; the driver holds writers back above sendBufferBytes. */
  get sendBuffered(): number {
    return this.#sb.bufferedBytes;
  }

  get sendBufferFull(): boolean {
    return this.#sb.bufferedBytes >= this.#o.sendBufferBytes;
  }

  stats(): PtcpStats {
    return {
      state: this.#state,
      sendBuffered: this.#sb.bufferedBytes,
      receiveBuffered: this.#rb.bufferedBytes,
      inFlight: this.#sb.inFlight,
      cwnd: this.#cc.cwnd,
      ssthresh: this.#cc.ssthresh,
      congestion: this.#cc.state(),
      srttMs: this.#rtt.srtt,
      rtoMs: this.#rtt.rto,
      peerWindow: Math.max(0, this.#peerEdge - this.#sb.una),
      ...this.#stats,
    };
  }

  // ---------------------------------------------------------------- wire numbers

  #sndWire(off: number): number {
    return (this.#iss + 1 + off) >>> 0;
  }

  #sndUnwrap(wire: number): number {
    const una = this.#sb.una;
    return una + seqDiff(wire, this.#sndWire(una));
  }

  #rcvWire(off: number): number {
    return (this.#irs + 1 + off) >>> 0;
  }

  #rcvUnwrap(wire: number): number {
    const nxt = this.#rb.contiguousEnd;
    return nxt + seqDiff(wire, this.#rcvWire(nxt));
  }

  #ackWire(): number {
    const end = this.#rb.contiguousEnd;
    return this.#rcvWire(this.#finReceived ? end + 1 : end);
  }

  #window(): number {
    return Math.max(0, this.#o.receiveBufferBytes - this.#rb.unreadContiguous);
  }

  // ---------------------------------------------------------------- application inputs

  /** Active open: sends a SYN. */
  connect(now: number): void {
    if (this.#state !== 'idle') throw new Error(`ptcp connect: connection is ${this.#state}`);
    this.#iss = this.#random(4).readUInt32BE(0);
    this.#state = 'syn-sent';
    this.#synDeadline = now + this.#o.connectTimeoutMs;
    this.#sendSynNow = true;
    this.#lastRecvAt = now;
  }

  /** Passive open from a received SYN (the driver has matched it to no existing connection). */
  accept(syn: PtcpSegment, now: number): void {
    if (this.#state !== 'idle') throw new Error(`ptcp accept: connection is ${this.#state}`);
    if ((syn.flags & (FLAG_SYN | FLAG_ACK | FLAG_RST)) !== FLAG_SYN) throw new Error('ptcp accept: not a bare SYN');
    this.#iss = this.#random(4).readUInt32BE(0);
    this.#irs = syn.seq;
    this.#peerId = syn.srcId;
    this.#tsRecent = syn.tsVal;
    this.#peerEdge = syn.window;
    this.#wndAck = 0;
    this.#state = 'syn-received';
    this.#synDeadline = now + this.#o.connectTimeoutMs;
    this.#sendSynNow = true;
    this.#lastRecvAt = now;
    this.#stats.segmentsReceived++;
  }

  write(data: Buffer): void {
    switch (this.#state) {
      case 'established':
      case 'close-wait':
        if (data.length > 0) this.#sb.write(data);
        if (this.sendBufferFull) this.#drainWanted = true;
        return;
      case 'idle':
      case 'syn-sent':
      case 'syn-received':
      case 'fin-wait-1':
      case 'fin-wait-2':
      case 'closing':
      case 'time-wait':
      case 'last-ack':
      case 'closed':
        throw new Error(`ptcp write: connection is ${this.#state}`);
      default:
        assertNever(this.#state);
    }
  }

  /** Half-close: a FIN follows the data already written. */
  end(): void {
    if (this.#state === 'established') {
      this.#sb.writeFin();
      this.#state = 'fin-wait-1';
    } else if (this.#state === 'close-wait') {
      this.#sb.writeFin();
      this.#state = 'last-ack';
    }
  }

  /** Aborts: sends RST (if the peer knows us) and closes at once, without an error. */
  abort(now: number): void {
    if (this.#state === 'closed') return;
    if (this.synchronized || this.#state === 'syn-received') {
      this.#emitSegment(FLAG_RST | FLAG_ACK, this.#sndWire(this.#sb.highestSent), Buffer.alloc(0), now, false);
    }
    this.#close();
  }

  /** The application stopped (true) or resumed (false) consuming data. */
  setReadPaused(paused: boolean): void {
    this.#readPaused = paused;
  }

  // ---------------------------------------------------------------- segments

  handleSegment(seg: PtcpSegment, now: number): void {
    if (this.#state === 'closed' || this.#state === 'idle') return;
    this.#stats.segmentsReceived++;
    if (seg.flags & FLAG_RST) {
      this.#onRst(seg);
      return;
    }
    switch (this.#state) {
      case 'syn-sent':
        if ((seg.flags & (FLAG_SYN | FLAG_ACK)) === (FLAG_SYN | FLAG_ACK) && seg.ack === this.#sndWire(0)) {
          this.#irs = seg.seq;
          this.#peerId = seg.srcId;
          this.#tsRecent = seg.tsVal;
          this.#lastRecvAt = now;
          this.#state = 'established';
          this.#synAt = null;
          this.#verdictWaitsFor = null;
          if (seg.tsEcr !== 0) this.#sampleRtt(seg.tsEcr, now);
          this.#peerEdge = seg.window;
          this.#wndAck = 0;
          this.#maxEdge = this.#window();
          this.#ackNow = true;
          this.#actions.push({ type: 'connected' });
        }
        return;
      case 'syn-received':
        if (seg.srcId !== this.#peerId) return;
        if (seg.flags & FLAG_SYN) {
          if (seg.seq === this.#irs) this.#sendSynNow = true;
          return;
        }
        if (!(seg.flags & FLAG_ACK) || seg.ack !== this.#sndWire(0)) return;
        this.#state = 'established';
        this.#synAt = null;
        this.#verdictWaitsFor = null;
        // The echo of our SYN-ACK's timestamp measures the path at once (as Linux does), so a
        // side that only receives still knows the round trip its peer's answers need.
        if (seg.tsEcr !== 0) this.#sampleRtt(seg.tsEcr, now);
        this.#maxEdge = this.#window();
        this.#actions.push({ type: 'connected' });
        break;
      case 'time-wait':
        if (seg.srcId === this.#peerId && seg.flags & FLAG_FIN) this.#ackNow = true;
        return;
      case 'established':
      case 'fin-wait-1':
      case 'fin-wait-2':
      case 'closing':
      case 'close-wait':
      case 'last-ack':
        if (seg.srcId !== this.#peerId) return;
        break;
      default:
        assertNever(this.#state);
    }
    this.#lastRecvAt = now;
    this.#keepalivesUnanswered = 0;
    if (seg.flags & FLAG_SYN) {
      // Our ACK of the SYN-ACK was lost and the peer repeats it.
      this.#ackNow = true;
      return;
    }
    if (seg.flags & FLAG_ACK) this.#onAck(seg, now);
    if (this.#isClosed()) return;
    if (seg.payload.length > 0 || seg.flags & FLAG_FIN) this.#onData(seg, now);
    if (seg.flags & FLAG_KEEPALIVE) this.#ackNow = true;
  }

  #onRst(seg: PtcpSegment): void {
    if (this.#state === 'syn-sent') {
      if (!(seg.flags & FLAG_ACK) || seg.ack !== this.#sndWire(0)) return;
      this.#fail(vertexError('PtcpReset', 'ptcp connect: the peer refused the connection (reset)'));
      return;
    }
    if (seg.srcId !== this.#peerId) return;
    switch (this.#state) {
      case 'syn-received':
      case 'last-ack':
      case 'closing':
      case 'time-wait':
        // The peer forgot a connection that had nothing left to deliver to it.
        this.#close();
        return;
      case 'established':
      case 'fin-wait-1':
      case 'fin-wait-2':
      case 'close-wait':
        this.#fail(vertexError('PtcpReset', `ptcp connection ${this.localId}: the peer reset the connection`));
        return;
      case 'idle':
      case 'closed':
        return;
      default:
        assertNever(this.#state);
    }
  }

  #isClosed(): boolean {
    return this.#state === 'closed';
  }

  #sampleRtt(tsEcr: number, now: number): void {
    const us = (tsOf(now) - tsEcr) >>> 0;
    // An echo from the future or older than a minute is not a usable sample.
    if (us < 60_000_000) this.#rtt.sample(us / 1000);
  }

  #reorderWindow(): number {
    const dupThreshMet = this.#cc.inRecovery || this.#sb.sackedBytes >= DUP_THRESH * this.#o.mss;
    return this.#reorder.window({ minRttMs: this.#rtt.minRtt, srttMs: this.#rtt.srtt, rttvarMs: this.#rtt.rttvar }, dupThreshMet);
  }

  #onAck(seg: PtcpSegment, now: number): void {
    const sb = this.#sb;
    const ackOff = this.#sndUnwrap(seg.ack);
    if (ackOff < sb.una || ackOff > sb.highestSent) return;
    const sacks: { start: number; end: number }[] = [];
    for (const block of seg.sacks) {
      const start = this.#sndUnwrap(block.start);
      const end = start + seqDiff(block.end, block.start);
      if (end > start && start >= ackOff && end <= sb.highestSent) sacks.push({ start, end });
    }
    // Eifel detection (RFC 3522): if the ACK that covers a retransmitted segment echoes a
    // timestamp older than that retransmission, the original arrived and the retransmission
    // was needless.
    let spuriousCandidates = 0;
    let oldestRetransmitTs = 0;
    if (ackOff > sb.una && seg.tsEcr !== 0) {
      let s = sb.segmentAt(sb.una);
      while (s && s.end <= ackOff) {
        if (s.sentCount > 1) {
          const ts = tsOf(s.sentAt);
          if (spuriousCandidates === 0 || seqLt(ts, oldestRetransmitTs)) oldestRetransmitTs = ts;
          spuriousCandidates++;
        }
        const next = sb.segmentAt(s.end);
        if (next === s) break;
        s = next;
      }
    }
    const before = sb.una;
    const result = sb.onAck(ackOff, sacks);
    if (ackOff >= this.#wndAck) {
      this.#wndAck = ackOff;
      this.#peerEdge = ackOff + seg.window;
      if (seg.window > 0) this.#persistBackoff = 1;
    }
    // Sample from the newest segment this ACK delivered when it was sent once: the echoed
    // timestamp is the segment that last advanced the peer's left edge (RFC 7323), so while
    // a hole is open it would add the hole's age to every sample and inflate SRTT and RTO.
    if (result.deliveredSentAt >= 0 && !result.deliveredWasRetransmit) {
      this.#rtt.sample(now - result.deliveredSentAt);
    } else if (result.newlyAcked > 0 && seg.tsEcr !== 0) {
      this.#sampleRtt(seg.tsEcr, now);
    }
    if (spuriousCandidates > 0 && seqLt(seg.tsEcr, oldestRetransmitTs)) {
      // The original's round trip beyond the path minimum is how late a segment may arrive.
      const origRttMs = ((tsOf(now) - seg.tsEcr) >>> 0) / 1000;
      this.#reorder.onSpurious(origRttMs < 60_000 ? origRttMs - this.#rtt.minRtt : 0);
      this.#retransInEpisode -= spuriousCandidates;
      if (this.#retransInEpisode <= 0 && this.#cc.inRecovery) {
        this.#cc.undo();
        this.#stats.spuriousRecoveries++;
      }
    }
    if (result.deliveredSentAt >= 0) {
      if (result.deliveredSentAt < this.#rackXmit && !result.deliveredWasRetransmit) this.#reorder.onReordering();
      if (result.deliveredSentAt > this.#rackXmit) {
        const rtt = now - result.deliveredSentAt;
        if (!result.deliveredWasRetransmit || rtt >= this.#rtt.minRtt) {
          this.#rackXmit = result.deliveredSentAt;
          this.#rackRtt = rtt;
        }
      }
    }
    if (result.newlyAcked > 0) {
      this.#stats.bytesAcked += result.newlyAcked;
      this.#rtoAt = null;
      this.#persistAt = null;
    }
    if (result.newlyDelivered > 0) {
      this.#ptoAt = null;
      this.#tlpOutstanding = false;
    }
    if (result.newlyDelivered > 0) {
      const rate = this.#rate.onAck(result.newlyDelivered, result.latest, now, this.#rtt.minRtt);
      this.#cc.onAck({
        now,
        ackedBytes: result.newlyDelivered,
        cumAck: sb.una,
        inFlight: sb.inFlight,
        appLimited: this.#appLimited,
        srttMs: this.#rtt.srtt ?? 0,
        rttVarMs: this.#rtt.rttvar,
        rttMs: result.deliveredSentAt >= 0 && !result.deliveredWasRetransmit ? now - result.deliveredSentAt : undefined,
        rate,
      });
    }
    this.#detectLosses(now);
    if (result.finAcked) this.#onFinAcked(now);
    if (this.#drainWanted && !this.sendBufferFull) {
      this.#drainWanted = false;
      this.#actions.push({ type: 'drain' });
    }
    if (ackOff > before && sb.allAcked) this.#rtoAt = null;
  }

  #detectLosses(now: number): void {
    if (this.#rackXmit < 0) return;
    const { lostBytes, recheckAt } = this.#sb.detectLosses(now, this.#rackXmit, this.#rackRtt + this.#reorderWindow());
    this.#rackAt = recheckAt;
    if (lostBytes > 0) {
      // Recovery is progressing: the timeout restarts from the retransmissions it triggers.
      if (this.#rtoAt !== null) this.#rtoAt = now + this.#rtt.rto;
      if (this.#cc.onLoss({ now, inFlight: this.#sb.inFlight, lostBytes, highestSent: this.#sb.highestSent })) {
        this.#retransInEpisode = 0;
        this.#reorder.onRecovery();
      }
    }
  }

  #onFinAcked(now: number): void {
    switch (this.#state) {
      case 'fin-wait-1':
        this.#state = 'fin-wait-2';
        return;
      case 'closing':
        this.#enterTimeWait(now);
        return;
      case 'last-ack':
        this.#close();
        return;
      case 'idle':
      case 'syn-sent':
      case 'syn-received':
      case 'established':
      case 'fin-wait-2':
      case 'time-wait':
      case 'close-wait':
      case 'closed':
        return;
      default:
        assertNever(this.#state);
    }
  }

  #enterTimeWait(now: number): void {
    this.#state = 'time-wait';
    this.#timeWaitAt = now + this.#o.timeWaitMs;
    this.#rtoAt = null;
    this.#rackAt = null;
    this.#persistAt = null;
  }

  #onData(seg: PtcpSegment, now: number): void {
    if (this.#state !== 'established' && this.#state !== 'fin-wait-1' && this.#state !== 'fin-wait-2') {
      // Data or FIN after the peer's FIN: a retransmission; tell the peer where we are.
      this.#ackNow = true;
      return;
    }
    const rb = this.#rb;
    const off = this.#rcvUnwrap(seg.seq);
    let payload = seg.payload;
    const nxtBefore = rb.contiguousEnd;
    const edge = Math.max(this.#maxEdge, nxtBefore + this.#window());
    if (off + payload.length > edge) {
      // Beyond the window we advertised: keep what fits (memory stays bounded) and re-advertise.
      payload = payload.subarray(0, Math.max(0, edge - off));
      this.#ackNow = true;
    }
    const dataEnd = off + payload.length;
    const fin = (seg.flags & FLAG_FIN) !== 0 && payload.length === seg.payload.length;
    if (fin && this.#finOffset === null) this.#finOffset = dataEnd;
    let added = 0;
    if (payload.length > 0 && (this.#finOffset === null || dataEnd <= this.#finOffset)) {
      added = rb.insert(off, payload);
    }
    if (rb.contiguousEnd > nxtBefore) {
      this.#tsRecent = seg.tsVal;
      this.#stats.bytesDelivered += rb.contiguousEnd - nxtBefore;
      // Filling a hole is acknowledged at once so the sender leaves recovery quickly.
      if (rb.contiguousEnd > dataEnd || off > nxtBefore) this.#ackNow = true;
    }
    if (payload.length > 0 && added === 0) this.#ackNow = true;
    if (off > nxtBefore) this.#ackNow = true;
    this.#unackedSegments++;
    if (this.#unackedSegments >= this.#o.ackEverySegments) this.#ackNow = true;
    else if (this.#delAckAt === null) this.#delAckAt = now + this.#o.delayedAckMs;
    if (this.#finOffset !== null && !this.#finReceived && rb.contiguousEnd >= this.#finOffset) {
      this.#finReceived = true;
      this.#ackNow = true;
      if (fin) this.#tsRecent = seg.tsVal;
      switch (this.#state) {
        case 'established':
          this.#state = 'close-wait';
          break;
        case 'fin-wait-1':
          this.#state = 'closing';
          break;
        case 'fin-wait-2':
          this.#enterTimeWait(now);
          break;
        default:
          break;
      }
    }
  }

  // ---------------------------------------------------------------- timers

  /**
   * `readUpTo`: the driver has read every datagram that reached its socket before this time
   * (default: `now`). Verdicts of silence (connect timeout, half-open connection given up,
   * PtcpIdle) are about what reached us, not about what we got round to reading: a process
   * starved of CPU reads its socket seconds late, and the peer's segments wait there unread.
   * A verdict due by the clock but not by `readUpTo` waits (see `awaitingInput`), at most
   * MAX_INPUT_LAG_MS.
   */
  handleTimer(now: number, readUpTo = now): void {
    // The driver's timer has fired, so the next poll must report the deadline again.
    this.#lastTimerAt = null;
    this.#verdictWaitsFor = null;
    if (this.#state === 'closed' || this.#state === 'idle') return;
    const heard = Math.max(Math.min(now, readUpTo), now - MAX_INPUT_LAG_MS);
    if (this.#state === 'syn-sent' || this.#state === 'syn-received') {
      if (now >= this.#synDeadline && heard < this.#synDeadline) {
        // The handshake's time is up; no more SYNs, only the input still to read decides.
        this.#verdictWaitsFor = this.#synDeadline;
        this.#synAt = null;
        return;
      }
      if (now >= this.#synDeadline) {
        if (this.#state === 'syn-sent') {
          this.#fail(vertexError('PtcpConnectTimeout', `ptcp connect: no answer to ${this.#synTries} SYN(s) in ${this.#o.connectTimeoutMs} ms`));
        } else {
          this.#close();
        }
        return;
      }
      if (this.#synAt !== null && now >= this.#synAt) this.#sendSynNow = true;
      return;
    }
    if (this.#timeWaitAt !== null && now >= this.#timeWaitAt) {
      this.#close();
      return;
    }
    if (this.#state === 'time-wait') return;
    // The same sum as #nextDeadline: `now - last >= timeout` can round below the timeout
    // at the very deadline (fractional ms), and the timer would then fire forever.
    const deadAt = this.#deadAt();
    if (now >= deadAt && heard < deadAt) {
      this.#verdictWaitsFor = deadAt;
    } else if (now >= deadAt) {
      this.#fail(vertexError('PtcpIdle', `ptcp connection ${this.localId}: the peer is gone: nothing heard for ${Math.round(now - this.#lastRecvAt)} ms, ${this.#keepalivesUnanswered} keepalive(s) unanswered`));
      return;
    }
    if (now >= this.#nextKeepaliveAt()) {
      this.#lastKeepaliveAt = now;
      this.#keepalivesUnanswered++;
      this.#emitSegment(FLAG_ACK | FLAG_KEEPALIVE, this.#sndWire(this.#sb.highestSent), Buffer.alloc(0), now, false);
    }
    if (this.#delAckAt !== null && now >= this.#delAckAt) {
      this.#delAckAt = null;
      this.#ackNow = true;
    }
    if (this.#rackAt !== null && now >= this.#rackAt) {
      this.#rackAt = null;
      this.#detectLosses(now);
    }
    if (this.#ptoAt !== null && now >= this.#ptoAt) {
      this.#ptoAt = null;
      this.#tailLossProbe(now);
    }
    if (this.#rtoAt !== null && now >= this.#rtoAt && this.#rackAt !== null) {
      // A segment is still inside its reordering window: RACK decides it first, as Linux
      // lets its reordering timer stand in for the retransmission timer.
      this.#rtoAt = this.#rackAt;
    }
    if (this.#rtoAt !== null && now >= this.#rtoAt) {
      this.#rtoAt = null;
      this.#ptoAt = null;
      this.#tlpOutstanding = false;
      if (!this.#sb.allAcked && this.#sb.highestSent > this.#sb.una) {
        this.#stats.timeouts++;
        const flight = this.#sb.inFlight;
        this.#sb.markAllLost();
        this.#cc.onRto(flight, this.#sb.highestSent);
        this.#retransInEpisode = 0;
        this.#rtt.backoff();
        this.#rackXmit = -1;
        this.#rackAt = null;
      }
    }
    if (this.#persistAt !== null && now >= this.#persistAt) {
      this.#persistAt = null;
      this.#persistBackoff = Math.min(this.#persistBackoff * 2, 64);
      this.#emitSegment(FLAG_ACK | FLAG_KEEPALIVE, this.#sndWire(this.#sb.highestSent), Buffer.alloc(0), now, false);
    }
    if (this.#paceAt !== null && now >= this.#paceAt) this.#paceAt = null;
  }

  /**
   * RFC 8985 section 7: when ACKs stop arriving for about two RTTs, resend the last segment
   * (or send a new one) so the receiver's SACK reveals a lost tail without waiting for the
   * RTO, whose floor is far above a loopback or LAN round trip.
   */
  #tailLossProbe(now: number): void {
    const sb = this.#sb;
    if (this.#tlpOutstanding || sb.allAcked || sb.highestSent <= sb.una) return;
    this.#tlpOutstanding = true;
    const next = sb.peekNext();
    if (next && next.sentCount === 0 && next.end <= this.#peerEdge) {
      this.#transmit(next, now);
      return;
    }
    const last = sb.lastOutstanding();
    if (last) this.#transmit(last, now);
  }

  #probeTimeout(): number {
    const srtt = this.#rtt.srtt;
    if (srtt === undefined) return this.#rtt.rto;
    let pto = Math.max(2 * srtt, TLP_MIN_MS);
    if (this.#sb.inFlight <= this.#o.mss) pto += this.#o.delayedAckMs;
    return Math.min(pto, this.#rtt.rto);
  }

  // ---------------------------------------------------------------- output

  /** Runs the send logic and returns (and clears) every pending action. */
  poll(now: number): PtcpAction[] {
    this.#deliver();
    if (this.#state !== 'closed') {
      this.#sendHandshake(now);
      if (this.synchronized && this.#state !== 'time-wait') this.#sendData(now);
      this.#sendAckIfNeeded(now);
    }
    const at = this.#nextDeadline();
    if (at !== this.#lastTimerAt) {
      this.#lastTimerAt = at;
      this.#actions.push({ type: 'timer', at });
    }
    const out = this.#actions;
    this.#actions = [];
    return out;
  }

  #deliver(): void {
    // A connection that closed normally may still hold data for a paused reader.
    if (this.#readPaused || !(this.synchronized || (this.#state === 'closed' && !this.#failed))) return;
    for (const data of this.#rb.read()) this.#actions.push({ type: 'data', data });
    if (this.#finReceived && !this.#endEmitted && this.#finOffset !== null && this.#rb.readOffset >= this.#finOffset) {
      this.#endEmitted = true;
      this.#actions.push({ type: 'end' });
    }
  }

  #sendHandshake(now: number): void {
    if (!this.#sendSynNow) return;
    this.#sendSynNow = false;
    if (this.#state === 'syn-sent') {
      this.#synTries++;
      this.#emitSegment(FLAG_SYN, this.#iss, Buffer.alloc(0), now, false);
    } else if (this.#state === 'syn-received') {
      this.#synTries++;
      this.#emitSegment(FLAG_SYN | FLAG_ACK, this.#iss, Buffer.alloc(0), now, true);
      // No timer: a SYN-ACK goes out only in answer to a SYN. The source of a SYN is
      // unverified (UDP), so retransmitting on our own would let a spoofed SYN aim several
      // datagrams at a victim (issue 11). A real peer whose SYN-ACK was lost retransmits
      // its SYN, and the duplicate draws a new SYN-ACK (handleSegment).
      if (!this.#retransmitSynAck) {
        this.#synAt = null;
        return;
      }
    } else {
      return;
    }
    const wait = this.#o.initialRtoMs * 2 ** Math.min(this.#synTries - 1, 16);
    this.#synAt = Math.min(now + wait, this.#synDeadline);
  }

  #configurePacer(): void {
    const srtt = this.#rtt.srtt;
    if (!this.#o.pacing || srtt === undefined) {
      this.#pacer.configure(Infinity, Infinity);
      return;
    }
    const rate = this.#cc.pacingRate(srtt);
    if (rate === Infinity) {
      this.#pacer.configure(Infinity, Infinity);
      return;
    }
    const segBytes = this.#o.mss + HEADER_OVERHEAD;
    this.#pacer.configure(rate, Math.max(PACING_MIN_BURST_SEGMENTS * segBytes, rate * PACING_BURST_MS));
  }

  #sendData(now: number): void {
    const sb = this.#sb;
    this.#configurePacer();
    let blockedByWindow = false;
    for (;;) {
      const seg = sb.peekNext();
      if (!seg) {
        this.#appLimited = sb.inFlight < this.#cc.cwnd - this.#o.mss;
        if (this.#appLimited) this.#rate.markAppLimited(sb.inFlight);
        break;
      }
      const len = seg.end - seg.start;
      const isRetransmit = seg.sentCount > 0;
      if (!isRetransmit && seg.end > this.#peerEdge && !(seg.fin && seg.start <= this.#peerEdge)) {
        blockedByWindow = true;
        this.#appLimited = true;
        break;
      }
      if (sb.inFlight > 0 && sb.inFlight + len > this.#cc.cwnd) {
        this.#appLimited = false;
        break;
      }
      const wire = seg.data.length + HEADER_OVERHEAD;
      if (!this.#pacer.canSend(wire, now)) {
        this.#paceAt = this.#pacer.nextSendTime(wire, now);
        this.#appLimited = false;
        break;
      }
      this.#pacer.consume(wire);
      this.#transmit(seg, now);
    }
    if (blockedByWindow && sb.inFlight === 0 && sb.highestSent === sb.una) {
      this.#persistAt ??= now + this.#rtt.rto * this.#persistBackoff;
    } else if (!blockedByWindow) {
      this.#persistAt = null;
    }
    if (!sb.allAcked && sb.highestSent > sb.una) {
      if (this.#rtoAt === null) this.#rtoAt = now + this.#rtt.rto;
      if (this.#ptoAt === null && !this.#tlpOutstanding) this.#ptoAt = now + this.#probeTimeout();
    } else {
      this.#ptoAt = null;
    }
  }

  #transmit(seg: SendSegment, now: number): void {
    if (seg.sentCount > 0) {
      this.#stats.retransmits++;
      this.#retransInEpisode++;
    }
    this.#rate.onSend(seg, now, this.#sb.inFlight);
    this.#sb.markSent(seg, now);
    this.#emitSegment(FLAG_ACK | (seg.fin ? FLAG_FIN : 0), this.#sndWire(seg.start), seg.data, now, true);
  }

  #sackBlocks(): SackBlock[] {
    if (this.#rb.pieceCount === 0) return [];
    const ranges = this.#rb.sackRanges(PTCP_MAX_SACK_BLOCKS);
    return ranges.map((r) => ({ start: this.#rcvWire(r.start), end: this.#rcvWire(r.end) }));
  }

  #sendAckIfNeeded(now: number): void {
    if (!this.synchronized) return;
    if (!this.#ackNow) {
      // A reader that resumed after the window closed: re-advertise once it has room again.
      const edge = this.#rb.contiguousEnd + this.#window();
      const threshold = Math.max(2 * this.#o.mss, Math.min(this.#o.receiveBufferBytes / 4, 256 * 1024));
      if (edge - this.#maxEdge < threshold) return;
    }
    this.#emitSegment(FLAG_ACK, this.#sndWire(this.#sb.highestSent), Buffer.alloc(0), now, true);
  }

  #emitSegment(flags: number, seq: number, payload: Buffer, now: number, withAck: boolean): void {
    const ackSet = withAck || (flags & FLAG_ACK) !== 0;
    const window = this.#window();
    const synchronizedReceive = this.#state !== 'syn-sent';
    const segment: PtcpSegment = {
      flags,
      srcId: this.localId,
      dstId: this.#peerId,
      seq,
      ack: ackSet && synchronizedReceive ? this.#ackWire() : 0,
      tsVal: tsOf(now),
      tsEcr: synchronizedReceive ? this.#tsRecent : 0,
      window,
      sacks: ackSet && this.synchronized ? this.#sackBlocks() : [],
      payload,
    };
    if (ackSet && synchronizedReceive) {
      const edge = this.#rb.contiguousEnd + window;
      if (edge > this.#maxEdge) this.#maxEdge = edge;
      this.#ackNow = false;
      this.#unackedSegments = 0;
      this.#delAckAt = null;
    }
    this.#stats.segmentsSent++;
    this.#actions.push({ type: 'send', segment });
  }

  #nextDeadline(): number | null {
    if (this.#state === 'closed' || this.#state === 'idle') return null;
    let at = Infinity;
    const consider = (t: number | null): void => {
      if (t !== null && t < at) at = t;
    };
    if (this.#state === 'syn-sent' || this.#state === 'syn-received') {
      consider(this.#synAt);
      consider(this.#verdictDeadline(this.#synDeadline));
    } else if (this.#state === 'time-wait') {
      consider(this.#timeWaitAt);
    } else {
      consider(this.#rtoAt);
      consider(this.#ptoAt);
      consider(this.#persistAt);
      consider(this.#paceAt);
      consider(this.#delAckAt);
      consider(this.#rackAt);
      consider(this.#verdictDeadline(this.#deadAt()));
      consider(this.#nextKeepaliveAt());
    }
    return at === Infinity ? null : at;
  }

  /**
   * When the peer counts as gone (PtcpIdle): idleTimeoutMs after it was last heard from, or
   * later on a path whose round trip is seconds long. A keepalive is answered within an RTO
   * (that is what the RTO estimates), so the first probe and two RTOs more must pass without
   * an answer; a fixed 7.5 s declared live peers dead once a starved process's own socket
   * queues made the round trip 5-10 s. On a healthy path (RTO 0.2-1 s) this is idleTimeoutMs
   * (issue 11: a dead peer within 10 s). Bounded by MAX_DEAD_PEER_MS, as RFC 9293's R2 is
   * bounded, unless idleTimeoutMs itself is longer.
   */
  #deadAt(): number {
    const o = this.#o;
    const rttBound = Math.min(MAX_DEAD_PEER_MS, o.keepaliveMs + DEAD_PEER_RTOS * this.#rtt.baseRto);
    return this.#lastRecvAt + Math.max(o.idleTimeoutMs, rttBound);
  }

  /** A verdict waiting for input is asked again by the driver, and taken anyway after MAX_INPUT_LAG_MS. */
  #verdictDeadline(at: number): number {
    return this.#verdictWaitsFor === at ? at + MAX_INPUT_LAG_MS : at;
  }

  /**
   * True while a verdict of silence is due by the clock but the driver has not yet read its
   * socket up to the deadline: the driver calls handleTimer again, with a later `readUpTo`,
   * once it has (a segment from the peer that turns up meanwhile cancels the verdict).
   */
  get awaitingInput(): boolean {
    const waits = this.#verdictWaitsFor;
    if (waits === null) return false;
    switch (this.#state) {
      case 'syn-sent':
      case 'syn-received':
        return waits === this.#synDeadline;
      case 'established':
      case 'fin-wait-1':
      case 'fin-wait-2':
      case 'closing':
      case 'close-wait':
      case 'last-ack':
        return waits === this.#deadAt();
      case 'idle':
      case 'time-wait':
      case 'closed':
        return false;
      default:
        return assertNever(this.#state);
    }
  }

  /**
   * The first keepalive goes out after keepaliveMs of silence; while the peer stays silent,
   * another every keepaliveIntervalMs (a live peer acknowledges each at once), so a dead peer
   * is declared at idleTimeoutMs after several probes rather than after one.
   */
  #nextKeepaliveAt(): number {
    const first = this.#lastRecvAt + this.#o.keepaliveMs;
    if (this.#lastKeepaliveAt < this.#lastRecvAt) return first;
    return Math.max(first, this.#lastKeepaliveAt + this.#o.keepaliveIntervalMs);
  }

  // ---------------------------------------------------------------- teardown

  #fail(error: VertexError): void {
    this.#failed = true;
    this.#actions.push({ type: 'error', error });
    this.#close();
  }

  #close(): void {
    this.#state = 'closed';
    this.#rtoAt = null;
    this.#synAt = null;
    this.#persistAt = null;
    this.#paceAt = null;
    this.#delAckAt = null;
    this.#rackAt = null;
    this.#ptoAt = null;
    this.#timeWaitAt = null;
    if (!this.#closedEmitted) {
      this.#closedEmitted = true;
      this.#actions.push({ type: 'closed' });
    }
  }
}

function assertNever(x: never): never {
  throw new Error(`ptcp connection: unexpected state ${String(x)}`);
}
