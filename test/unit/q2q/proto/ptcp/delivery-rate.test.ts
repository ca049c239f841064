import { DeliveryRateEstimator, type RateTxState } from '../../../../../q2q/proto/ptcp/delivery-rate';

const seg = (): RateTxState => ({ txDelivered: 0, txDeliveredTime: 0, txFirstSentTime: 0, txAppLimited: false, sentAt: 0 });

function send(est: DeliveryRateEstimator, now: number, inFlight: number): RateTxState {
  const s = seg();
  est.onSend(s, now, inFlight);
  s.sentAt = now;
  return s;
}

describe('DeliveryRateEstimator', () => {
  it('measures a steady flow at the rate ACKs return it', () => {
    const est = new DeliveryRateEstimator();
    // One 1,000-byte segment sent every ms for 100 ms, each acknowledged 20 ms after it left.
    const sent: RateTxState[] = [];
    let last = null;
    for (let t = 0; t < 120; t++) {
      const acked = sent[t - 20];
      if (acked) last = est.onAck(1000, acked, t, 1);
      if (t < 100) sent.push(send(est, t, Math.min(t, 20) * 1000));
    }
    expect(last?.isAppLimited).toBe(false);
    expect(last?.rate).toBeGreaterThan(950);
    expect(last?.rate).toBeLessThan(1100);
    expect(est.delivered).toBe(100_000);
  });

  it('takes the longer of the send and ACK intervals, so an ACK burst does not inflate the rate', () => {
    const est = new DeliveryRateEstimator();
    const first = send(est, 0, 0);
    const sent = [first, ...Array.from({ length: 9 }, (_, i) => send(est, (i + 1) * 10, (i + 1) * 1000))];
    est.onAck(1000, first, 100, 1);
    // The other nine ACKs arrive together, 1 ms later.
    const rs = est.onAck(9000, sent[9] as RateTxState, 101, 1);
    // 9,000 bytes over the 90 ms in which they were sent, not over 1 ms.
    expect(rs?.intervalMs).toBeGreaterThanOrEqual(90);
    expect(rs?.rate).toBeLessThanOrEqual(9000 / 90 + 1e-9);
  });

  it('discards intervals shorter than the minimum RTT', () => {
    const est = new DeliveryRateEstimator();
    const a = send(est, 0, 0);
    expect(est.onAck(1000, a, 0.5, 10)).toBeNull();
  });

  it('marks samples taken after the sender ran dry as application-limited, until that flight is delivered', () => {
    const est = new DeliveryRateEstimator();
    const a = send(est, 0, 0);
    est.markAppLimited(1000);
    const b = send(est, 1, 1000);
    expect(b.txAppLimited).toBe(true);
    expect(est.onAck(1000, a, 10, 1)?.isAppLimited).toBe(false);
    expect(est.onAck(1000, b, 11, 1)?.isAppLimited).toBe(true);
    // Both bytes of the limited flight are delivered: later segments are not limited.
    expect(est.appLimited).toBe(false);
    expect(send(est, 12, 0).txAppLimited).toBe(false);
  });

  it('restarts the intervals after idle, so the idle time does not lower the rate', () => {
    const est = new DeliveryRateEstimator();
    const a = send(est, 0, 0);
    est.onAck(1000, a, 10, 1);
    // Idle for a second, then a new flight.
    const b = send(est, 1010, 0);
    const rs = est.onAck(1000, b, 1020, 1);
    expect(rs?.intervalMs).toBeCloseTo(10, 5);
  });
});
