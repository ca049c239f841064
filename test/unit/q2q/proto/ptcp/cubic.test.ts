import type { AckEvent, LossEvent } from '../../../../../q2q/proto/ptcp/congestion';
import { CUBIC_ALPHA, CUBIC_BETA, CUBIC_C, Cubic } from '../../../../../q2q/proto/ptcp/cubic';

const MSS = 1000;
const make = (initial = 10, max = 1e9): Cubic => new Cubic({ mss: MSS, initialWindowSegments: initial, maxWindowBytes: max });
const ack = (ackedBytes: number, cumAck: number, appLimited: boolean, now: number, srttMs: number): AckEvent => ({ now, ackedBytes, cumAck, inFlight: 0, appLimited, srttMs, rttVarMs: 0, rttMs: undefined, rate: null });
const loss = (inFlight: number, highestSent: number): LossEvent => ({ now: 0, inFlight, lostBytes: 0, highestSent });

describe('Cubic', () => {
  it('slow-starts by the bytes acknowledged, withheld when application-limited', () => {
    const cc = make();
    cc.onAck(ack(5000, 5000, false, 0, 10));
    expect(cc.cwnd).toBe(15_000);
    cc.onAck(ack(5000, 10_000, true, 1, 10));
    expect(cc.cwnd).toBe(15_000);
    expect(cc.inSlowStart).toBe(true);
  });

  it('reduces to beta of the window once per recovery episode', () => {
    const cc = make(100);
    expect(cc.onLoss(loss(100_000, 500_000))).toBe(true);
    expect(cc.cwnd).toBe(Math.floor(100_000 * CUBIC_BETA));
    expect(cc.ssthresh).toBe(cc.cwnd);
    // A second loss inside the same episode does not cut again.
    expect(cc.onLoss(loss(60_000, 600_000))).toBe(false);
    expect(cc.cwnd).toBe(70_000);
    // No growth during recovery; the episode ends at the recovery point.
    cc.onAck(ack(10_000, 499_999, false, 10, 10));
    expect(cc.inRecovery).toBe(true);
    expect(cc.cwnd).toBe(70_000);
    cc.onAck(ack(10_000, 500_000, false, 20, 10));
    expect(cc.inRecovery).toBe(false);
    expect(cc.onLoss(loss(70_000, 700_000))).toBe(true);
    expect(cc.cwnd).toBe(49_000);
  });

  it('never falls below two segments', () => {
    const cc = make(2);
    cc.onLoss(loss(500, 1000));
    expect(cc.cwnd).toBe(2 * MSS);
  });

  it('regains the pre-loss window after K seconds whatever the round trip, then probes beyond it', () => {
    for (const rtt of [1, 50]) {
      const cc = make(1000);
      cc.onLoss(loss(1_000_000, 1));
      cc.onAck(ack(1, 1, false, 0, rtt));
      const k = Math.cbrt((1_000_000 * (1 - CUBIC_BETA)) / MSS / CUBIC_C);
      let now = 0;
      // Feed one window of ACKs per RTT until K has passed.
      while (now < k * 1000) {
        now += rtt;
        cc.onAck(ack(cc.cwnd, 1, false, now, rtt));
      }
      expect(cc.cwnd).toBeGreaterThanOrEqual(0.97 * 1_000_000);
      const at = cc.cwnd;
      for (let i = 0; i < 2000 / rtt; i++) {
        now += rtt;
        cc.onAck(ack(cc.cwnd, 1, false, now, rtt));
      }
      expect(cc.cwnd).toBeGreaterThan(at);
    }
  });

  it('grows at least as fast as the Reno-friendly estimate on a short round trip', () => {
    const cc = make(100);
    cc.onLoss(loss(100_000, 1));
    cc.onAck(ack(1, 1, false, 0, 1));
    const start = cc.cwnd;
    let now = 0;
    for (let r = 0; r < 100; r++) {
      now += 1;
      cc.onAck(ack(cc.cwnd, 1, false, now, 1));
    }
    // ~alpha segments per round: the cubic term alone would add almost nothing in 100 ms.
    expect(cc.cwnd - start).toBeGreaterThanOrEqual(0.9 * 100 * CUBIC_ALPHA * MSS);
  });

  it('undoes a spurious recovery completely, once', () => {
    const cc = make(100);
    cc.onAck(ack(50_000, 50_000, false, 0, 10));
    const before = { cwnd: cc.cwnd, ssthresh: cc.ssthresh };
    cc.onLoss(loss(150_000, 200_000));
    expect(cc.cwnd).toBeLessThan(before.cwnd);
    cc.undo();
    expect(cc.cwnd).toBe(before.cwnd);
    expect(cc.ssthresh).toBe(before.ssthresh);
    expect(cc.inRecovery).toBe(false);
    cc.onLoss(loss(150_000, 300_000));
    cc.onAck(ack(1, 300_000, false, 5, 10));
    cc.undo();
    expect(cc.cwnd).toBe(105_000);
  });

  it('collapses to one segment on a timeout and can undo it', () => {
    const cc = make(50);
    cc.onRto(50_000, 10_000);
    expect(cc.cwnd).toBe(MSS);
    expect(cc.ssthresh).toBe(35_000);
    cc.undo();
    expect(cc.cwnd).toBe(50_000);
  });

  it('stays within the maximum window', () => {
    const cc = make(10, 20_000);
    for (let i = 0; i < 10; i++) cc.onAck(ack(10_000, 1, false, i, 1));
    expect(cc.cwnd).toBe(20_000);
  });
});
