/**
 * BBR-style congestion control (after Cardwell et al., "BBR: Congestion-Based Congestion
 * Control", ACM Queue 2016, and draft-cardwell-iccrg-bbr-congestion-control-02, version 1).
 *
 * Instead of reading every loss as congestion, the sender keeps a model of the path:
 *
 * - BtlBw, the bottleneck rate: the highest delivery rate sampled over the last 10 rounds;
 * - RTprop, the round-trip propagation time: the lowest RTT seen in the last 10 seconds.
 *
 * It paces at gain × BtlBw and keeps at most 2 × BtlBw × RTprop (the bandwidth-delay product,
 * BDP) in flight. A random 2 % loss leaves both estimates where they were, so the rate holds;
 * a loss-based controller (CUBIC, Reno) cuts the window on nearly every round at that rate and
 * collapses on a short round trip. Why this matters here: PTCP crosses home NATs and Wi-Fi,
 * where loss is often not congestion.
 *
 * Modes: STARTUP doubles the rate each round (gain 2/ln 2) until BtlBw stops growing by 25 %
 * for 3 rounds; DRAIN empties the queue STARTUP built; PROBE_BW cycles the pacing gain through
 * 1.25, 0.75, 1 × 6, one RTprop each, to find more bandwidth and then drain what the probe
 * queued; PROBE_RTT drops to 4 segments for 200 ms when RTprop has not been refreshed for 10 s,
 * so a standing queue cannot inflate it.
 *
 * Loss still counts, but only a little: lost bytes come off cwnd (it grows back toward the
 * model's target as ACKs arrive), a timeout drops cwnd to one segment, and the window before
 * the loss is restored when the recovery episode ends. Linux's BBR also conserves packets for
 * the first round of each recovery; under 10 % random loss a recovery starts nearly every
 * round, and that alone held the flight at half the model's target, so it is left out.
 *
 * Three changes for the paths PTCP meets, measured through the impairment proxy:
 *
 * - the cwnd target adds the recent ACK aggregation (bytes acknowledged beyond what BtlBw
 *   predicts, max over 10 rounds) and a pacing quantum, so batched ACKs and millisecond timers
 *   do not starve the pipe (on loopback the bottleneck is a CPU, and ACKs come in batches);
 * - the round trip in the BDP is minRTT + 2 · RTTVAR, so a path with 50 ms of jitter is not
 *   modelled as a 2 ms one (see #rtProp);
 * - a round also lasts at least about a typical round trip, so reordering cannot end rounds
 *   early (see #updateRound).
 *
 * A round whose loss is heavy is not treated specially (BBRv2 caps inflight then): with
 * reordering, RACK's spurious loss marks made every round look heavy, and the cap cut the
 * all-impairments case by half. Lossy congestion is still bounded by the 2 × BDP cap.
 */
import type { AckEvent, CongestionController, CongestionOptions, CongestionState, LossEvent } from './congestion';

/** 2/ln 2: the smallest gain that doubles the delivery rate every round in STARTUP. */
export const BBR_STARTUP_GAIN = 2 / Math.LN2;
export const BBR_DRAIN_GAIN = 1 / BBR_STARTUP_GAIN;
export const BBR_CWND_GAIN = 2;
export const BBR_PROBE_BW_GAINS: readonly number[] = [1.25, 0.75, 1, 1, 1, 1, 1, 1];
export const BBR_BTLBW_FILTER_ROUNDS = 10;
export const BBR_MIN_RTT_WINDOW_MS = 10_000;
export const BBR_PROBE_RTT_MS = 200;
export const BBR_FULL_BW_GROWTH = 1.25;
export const BBR_FULL_BW_ROUNDS = 3;
export const BBR_MIN_CWND_SEGMENTS = 4;
export const BBR_EXTRA_ACKED_ROUNDS = 10;
/** Ack aggregation counted into cwnd is capped at this many ms of BtlBw. */
export const BBR_EXTRA_ACKED_MAX_MS = 100;

/** RTTVAR multiples added to the minimum RTT for paths whose round trip varies. */
export const BBR_JITTER_RTTVAR_MULTIPLIER = 2;
/** Pacing releases bursts of this many ms of the rate (Node timers tick in whole ms). */
export const BBR_QUANTUM_MS = 2;
export const BBR_MIN_QUANTUM_SEGMENTS = 2;

export type BbrMode = 'startup' | 'drain' | 'probe-bw' | 'probe-rtt';

/**
 * Windowed maximum over a sliding window of integer "times" (rounds), as a monotone deque:
 * the front is the maximum; an entry is dropped once a newer one is at least as large.
 */
export class WindowedMax {
  readonly #window: number;
  #entries: { t: number; v: number }[] = [];

  constructor(window: number) {
    this.#window = window;
  }

  update(t: number, v: number): void {
    const e = this.#entries;
    while (e.length > 0 && (e[e.length - 1] as { v: number }).v <= v) e.pop();
    e.push({ t, v });
    while (e.length > 0 && (e[0] as { t: number }).t <= t - this.#window) e.shift();
  }

  /** Drops entries that left the window by time `t` without adding one. */
  expire(t: number): void {
    const e = this.#entries;
    while (e.length > 0 && (e[0] as { t: number }).t <= t - this.#window) e.shift();
  }

  get max(): number {
    return this.#entries.length > 0 ? (this.#entries[0] as { v: number }).v : 0;
  }
}

export class Bbr implements CongestionController {
  readonly algorithm = 'bbr' as const;
  readonly #mss: number;
  readonly #maxCwnd: number;
  readonly #initialCwnd: number;
  #cwnd: number;
  #mode: BbrMode = 'startup';

  // Model.
  #btlBw = new WindowedMax(BBR_BTLBW_FILTER_ROUNDS);
  #minRtt = Infinity;
  #minRttStamp = 0;
  #rttVar = 0;

  // Rounds.
  #delivered = 0;
  #round = 0;
  #nextRoundDelivered = 0;
  #roundStart = false;
  #roundLost = 0;
  #roundStartTime = 0;

  // STARTUP exit.
  #fullBw = 0;
  #fullBwCount = 0;
  #fullBwReached = false;

  // PROBE_BW.
  #cycleIndex = 0;
  #cycleStamp = 0;

  // PROBE_RTT.
  #probeRttDoneStamp = 0;
  #probeRttRoundDone = false;

  // Recovery.
  #inRecovery = false;
  #recoveryPoint = 0;
  #priorCwnd = 0;

  // ACK aggregation.
  #extraAcked = new WindowedMax(BBR_EXTRA_ACKED_ROUNDS);
  #ackEpochStart = 0;
  #ackEpochAcked = 0;

  #pacingRate = 0;

  constructor(opts: CongestionOptions) {
    this.#mss = opts.mss;
    this.#maxCwnd = opts.maxWindowBytes;
    this.#initialCwnd = Math.min(this.#maxCwnd, opts.initialWindowSegments * opts.mss);
    this.#cwnd = this.#initialCwnd;
  }

  get cwnd(): number {
    return this.#cwnd;
  }

  get ssthresh(): number {
    return Infinity;
  }

  get inRecovery(): boolean {
    return this.#inRecovery;
  }

  get mode(): BbrMode {
    return this.#mode;
  }

  /** Bottleneck bandwidth estimate, bytes per ms (0 before the first sample). */
  get btlBw(): number {
    return this.#btlBw.max;
  }

  get minRtt(): number {
    return this.#minRtt;
  }

  get fullBandwidthReached(): boolean {
    return this.#fullBwReached;
  }

  state(): CongestionState {
    return { algorithm: 'bbr', phase: this.#inRecovery ? `${this.#mode}+recovery` : this.#mode, btlBw: this.#btlBw.max, minRttMs: this.#minRtt };
  }

  #pacingGain(): number {
    switch (this.#mode) {
      case 'startup':
        return BBR_STARTUP_GAIN;
      case 'drain':
        return BBR_DRAIN_GAIN;
      case 'probe-bw':
        return BBR_PROBE_BW_GAINS[this.#cycleIndex] ?? 1;
      case 'probe-rtt':
        return 1;
      default:
        return assertNever(this.#mode);
    }
  }

  pacingRate(srttMs: number | undefined): number {
    const bw = this.#btlBw.max;
    if (bw <= 0) {
      // No sample yet: the initial window per smoothed RTT (1 ms when there is none).
      return (BBR_STARTUP_GAIN * this.#initialCwnd) / Math.max(srttMs ?? 1, 0.05);
    }
    const rate = this.#pacingGain() * bw;
    // Until STARTUP ends, never slow down: a low early sample would stall the ramp.
    if (!this.#fullBwReached && rate < this.#pacingRate) return this.#pacingRate;
    this.#pacingRate = rate;
    return rate;
  }

  /** gain × BtlBw × RTprop, or the initial window before there is a model. */
  #bdp(gain: number): number {
    const bw = this.#btlBw.max;
    if (bw <= 0 || !Number.isFinite(this.#minRtt)) return this.#initialCwnd;
    return gain * bw * this.#rtProp();
  }

  /**
   * The round trip the pipe must cover: the minimum RTT plus a margin of 2 · RTTVAR for paths
   * whose round trip varies. With 50 ms of jitter the minimum RTT is far below the typical one,
   * and a flight of 2 × BtlBw × minRTT would carry less than the path does, so each round would
   * measure less bandwidth than the last and the model would spiral down. A standing queue
   * raises the RTT but hardly its variation, so the margin does not let BBR build one.
   */
  #rtProp(): number {
    return this.#minRtt + BBR_JITTER_RTTVAR_MULTIPLIER * this.#rttVar;
  }

  #quantum(): number {
    const bw = this.#btlBw.max;
    return Math.max(BBR_MIN_QUANTUM_SEGMENTS * this.#mss, bw * BBR_QUANTUM_MS);
  }

  #minCwnd(): number {
    return BBR_MIN_CWND_SEGMENTS * this.#mss;
  }

  onAck(ev: AckEvent): void {
    this.#delivered += ev.ackedBytes;
    this.#rttVar = ev.rttVarMs;
    this.#updateRound(ev);
    this.#updateBandwidth(ev);
    this.#updateAckAggregation(ev);
    this.#updateCyclePhase(ev);
    this.#checkFullBandwidth(ev);
    this.#checkDrain(ev);
    this.#updateMinRtt(ev);
    this.#updateRecovery(ev);
    this.#setCwnd(ev);
  }

  #updateRound(ev: AckEvent): void {
    this.#roundStart = false;
    const rs = ev.rate;
    // A round ends when a segment sent after it began is delivered. On a path that reorders,
    // one that drew a short delay comes back long before the flight does, so a round must also
    // last a typical round trip; otherwise STARTUP would see three "rounds" without growth in a
    // few ms and stop early, and the 10-round bandwidth window would shrink to nothing.
    const minRoundMs = Math.min(ev.srttMs, (Number.isFinite(this.#minRtt) ? this.#minRtt : 0) + 2 * ev.rttVarMs);
    if (rs && rs.priorDelivered >= this.#nextRoundDelivered && ev.now - this.#roundStartTime >= minRoundMs) {
      this.#nextRoundDelivered = this.#delivered;
      this.#round++;
      this.#roundStart = true;
      this.#roundStartTime = ev.now;
      this.#roundLost = 0;
    }
  }

  #updateBandwidth(ev: AckEvent): void {
    const rs = ev.rate;
    if (!rs) return;
    // An application-limited sample only says the path is at least that fast; so does one
    // taken in PROBE_RTT, where the sender holds itself to 4 segments on purpose.
    const limited = rs.isAppLimited || this.#mode === 'probe-rtt';
    if (!limited || rs.rate >= this.#btlBw.max) this.#btlBw.update(this.#round, rs.rate);
  }

  #updateAckAggregation(ev: AckEvent): void {
    const bw = this.#btlBw.max;
    if (bw <= 0) return;
    const expected = bw * (ev.now - this.#ackEpochStart);
    // A new epoch when ACKs fall back to the expected pace (or the epoch grew too long).
    if (this.#ackEpochAcked <= expected || this.#ackEpochAcked + ev.ackedBytes > this.#maxCwnd) {
      this.#ackEpochStart = ev.now;
      this.#ackEpochAcked = 0;
    }
    this.#ackEpochAcked += ev.ackedBytes;
    const extra = Math.min(this.#ackEpochAcked - bw * (ev.now - this.#ackEpochStart), this.#cwnd);
    if (extra > 0) this.#extraAcked.update(this.#round, extra);
  }

  #updateCyclePhase(ev: AckEvent): void {
    if (this.#mode !== 'probe-bw') return;
    const gain = this.#pacingGain();
    let advance = ev.now - this.#cycleStamp > this.#minRtt;
    if (gain > 1) {
      // Probe until the probe's extra inflight is out, or loss shows the queue is full.
      advance = advance && (this.#roundLost > 0 || ev.inFlight >= this.#bdp(gain));
    } else if (gain < 1) {
      // Drain early once the queue the probe built is gone.
      advance = advance || ev.inFlight <= this.#bdp(1);
    }
    if (advance) {
      this.#cycleIndex = (this.#cycleIndex + 1) % BBR_PROBE_BW_GAINS.length;
      this.#cycleStamp = ev.now;
    }
  }

  #checkFullBandwidth(ev: AckEvent): void {
    if (this.#fullBwReached || !this.#roundStart || ev.rate?.isAppLimited) return;
    const bw = this.#btlBw.max;
    if (bw >= this.#fullBw * BBR_FULL_BW_GROWTH) {
      this.#fullBw = bw;
      this.#fullBwCount = 0;
      return;
    }
    this.#fullBwCount++;
    if (this.#fullBwCount >= BBR_FULL_BW_ROUNDS) this.#fullBwReached = true;
  }

  #checkDrain(ev: AckEvent): void {
    if (this.#mode === 'startup' && this.#fullBwReached) this.#mode = 'drain';
    if (this.#mode === 'drain' && ev.inFlight <= this.#bdp(1)) this.#enterProbeBw(ev.now);
  }

  #enterProbeBw(now: number): void {
    this.#mode = 'probe-bw';
    // Start anywhere but the 0.75 phase, so flows that start together do not probe in step.
    this.#cycleIndex = (Math.floor(now * 7919) % (BBR_PROBE_BW_GAINS.length - 1) + 2) % BBR_PROBE_BW_GAINS.length;
    this.#cycleStamp = now;
  }

  #updateMinRtt(ev: AckEvent): void {
    // Before the first sample nothing has expired: the clock's origin is arbitrary.
    const expired = Number.isFinite(this.#minRtt) && ev.now > this.#minRttStamp + BBR_MIN_RTT_WINDOW_MS;
    if (ev.rttMs !== undefined && ev.rttMs >= 0 && (ev.rttMs <= this.#minRtt || expired)) {
      this.#minRtt = ev.rttMs;
      this.#minRttStamp = ev.now;
    }
    if (expired && this.#mode !== 'probe-rtt' && Number.isFinite(this.#minRtt)) {
      this.#mode = 'probe-rtt';
      this.#saveCwnd();
      this.#probeRttDoneStamp = 0;
    }
    if (this.#mode !== 'probe-rtt') return;
    if (this.#probeRttDoneStamp === 0 && ev.inFlight <= this.#minCwnd()) {
      this.#probeRttDoneStamp = ev.now + BBR_PROBE_RTT_MS;
      this.#probeRttRoundDone = false;
      this.#nextRoundDelivered = this.#delivered;
    } else if (this.#probeRttDoneStamp !== 0) {
      if (this.#roundStart) this.#probeRttRoundDone = true;
      if (this.#probeRttRoundDone && ev.now > this.#probeRttDoneStamp) {
        this.#minRttStamp = ev.now;
        this.#cwnd = Math.max(this.#cwnd, this.#priorCwnd);
        if (this.#fullBwReached) this.#enterProbeBw(ev.now);
        else this.#mode = 'startup';
      }
    }
  }

  #saveCwnd(): void {
    // In recovery or PROBE_RTT the window is already cut; keep the larger pre-cut value.
    this.#priorCwnd = this.#inRecovery || this.#mode === 'probe-rtt' ? Math.max(this.#priorCwnd, this.#cwnd) : this.#cwnd;
  }

  #updateRecovery(ev: AckEvent): void {
    if (this.#inRecovery && ev.cumAck >= this.#recoveryPoint) {
      this.#inRecovery = false;
      this.#cwnd = Math.max(this.#cwnd, this.#priorCwnd);
    }
  }

  #setCwnd(ev: AckEvent): void {
    const acked = ev.ackedBytes;
    const gain = this.#mode === 'startup' ? BBR_STARTUP_GAIN : BBR_CWND_GAIN;
    let target = this.#bdp(gain) + this.#quantum();
    if (this.#fullBwReached) target += Math.min(this.#extraAcked.max, this.#btlBw.max * BBR_EXTRA_ACKED_MAX_MS);
    if (this.#mode === 'probe-bw' && this.#cycleIndex === 0) target += 2 * this.#mss;
    if (this.#fullBwReached) {
      this.#cwnd = Math.min(this.#cwnd + acked, target);
    } else if (this.#cwnd < target || this.#delivered < this.#initialCwnd) {
      this.#cwnd += acked;
    }
    this.#cwnd = Math.min(this.#maxCwnd, Math.max(this.#cwnd, this.#minCwnd()));
    if (this.#mode === 'probe-rtt') this.#cwnd = Math.min(this.#cwnd, this.#minCwnd());
  }

  onLoss(ev: LossEvent): boolean {
    this.#roundLost += ev.lostBytes;
    if (!this.#inRecovery) this.#saveCwnd();
    this.#cwnd = Math.max(this.#cwnd - ev.lostBytes, this.#minCwnd());
    if (this.#inRecovery) return false;
    this.#inRecovery = true;
    this.#recoveryPoint = ev.highestSent;
    return true;
  }

  /**
   * A timeout says nothing certain about the bandwidth (the path may have been down briefly),
   * so the model stays; only the window restarts from one segment, as Linux's BBR does.
   */
  onRto(_inFlight: number, highestSent: number): void {
    this.#saveCwnd();
    this.#inRecovery = true;
    this.#recoveryPoint = highestSent;
    this.#cwnd = this.#mss;
    // A timeout ends the round: the next ACK starts a fresh one.
    this.#nextRoundDelivered = this.#delivered;
  }

  undo(): void {
    if (!this.#inRecovery) return;
    this.#inRecovery = false;
    this.#cwnd = Math.max(this.#cwnd, this.#priorCwnd);
  }
}

function assertNever(x: never): never {
  throw new Error(`bbr: unexpected mode ${String(x)}`);
}
