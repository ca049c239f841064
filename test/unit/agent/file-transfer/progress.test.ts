import { PassThrough } from 'node:stream';
import {
  createProgressView, describeProgress, formatBytes, formatEta, progressMode, RateMeter, type ProgressSnapshot,
} from '../../../../agent/file-transfer/progress';
import { ManualClock } from '../../../../q2q/util/clock';

const snap = (bytesDone: number, bytesTotal = 100_000_000): ProgressSnapshot => ({
  bytesDone, bytesTotal, wireBytes: bytesDone, file: 'f', fileIndex: 0, fileCount: 1,
});

function capture() {
  const out = new PassThrough();
  const chunks: string[] = [];
  out.on('data', (d: Buffer) => chunks.push(d.toString()));
  return { out, lines: () => chunks.join('').split('\n').filter((l) => l !== '') };
}

describe('file-transfer progress', () => {
  it('chooses a bar on a terminal, lines elsewhere, nothing for --json', () => {
    expect(progressMode(false, { isTTY: true })).toBe('bar');
    expect(progressMode(undefined, { isTTY: false })).toBe('lines');
    expect(progressMode(true, { isTTY: true })).toBe('none');
  });

  it('plain lines: at most one per interval, the first after one interval, the last exactly once', () => {
    const clock = new ManualClock(0);
    const { out, lines } = capture();
    const view = createProgressView({ mode: 'lines', out, label: 'to bob@b.test', route: 'tcp', intervalMs: 1000, clock });
    view.update(snap(1_000_000));
    clock.advance(500);
    view.update(snap(5_000_000));
    expect(lines()).toEqual([]);
    clock.advance(600);
    view.update(snap(11_000_000));
    clock.advance(100);
    view.update(snap(12_000_000));
    expect(lines()).toEqual(['to bob@b.test: 11.0 MB of 100.0 MB (11%), 9.1 MB/s, eta 10 s, via tcp']);
    view.update(snap(100_000_000));
    view.update(snap(100_000_000));
    expect(lines()).toHaveLength(2);
    expect(lines()[1]).toMatch(/100\.0 MB of 100\.0 MB \(100%\).*eta 0 s, via tcp$/);
  });

  it('a transfer done within one interval prints no progress lines at all', () => {
    const clock = new ManualClock(0);
    const { out, lines } = capture();
    const view = createProgressView({ mode: 'lines', out, label: 'x', route: 'relay', clock });
    view.update(snap(50));
    view.update(snap(100, 100));
    expect(lines()).toEqual([]);
  });

  it('the bar renders bytes, rate, ETA and route to its stream', () => {
    const { out, lines } = capture();
    // cli-progress draws only on a terminal; this stream passes for one.
    Object.assign(out, { isTTY: true, columns: 160 });
    const view = createProgressView({ mode: 'bar', out, label: 'from alice@a.test', route: 'relay' });
    view.update(snap(0));
    view.update(snap(50_000_000));
    view.stop();
    const text = lines().join('\n');
    expect(text).toMatch(/from alice@a\.test/);
    expect(text).toMatch(/via relay/);
    expect(text).toMatch(/MB/);
  });

  it('formats sizes, ETAs and lines', () => {
    expect(formatBytes(999)).toBe('999 B');
    expect(formatBytes(1500)).toBe('1.5 KB');
    expect(formatBytes(200_000_000)).toBe('200.0 MB');
    expect(formatBytes(12.6)).toBe('13 B');
    expect(formatEta(0, 0)).toBe('0 s');
    expect(formatEta(10, 0)).toBe('?');
    expect(formatEta(100, 10)).toBe('10 s');
    expect(formatEta(7_300, 1)).toBe('2 h 1 min');
    expect(formatEta(90, 1)).toBe('1 min 30 s');
    expect(describeProgress('l', { ...snap(1, 4), fileIndex: 1, fileCount: 3 }, 2, 'ptcp')).toBe('l: 1 B of 4 B (25%), file 2 of 3, 2 B/s, eta 2 s, via ptcp');
  });

  it('measures the rate over a sliding window', () => {
    const clock = new ManualClock(0);
    const meter = new RateMeter(clock);
    expect(meter.sample(0)).toBe(0);
    clock.advance(1000);
    expect(meter.sample(1000)).toBe(1000);
    for (let i = 2; i <= 10; i++) {
      clock.advance(1000);
      meter.sample(i * 1000 + (i > 6 ? (i - 6) * 9000 : 0));
    }
    // The window starts at the 7 s sample (16,000): 30,000 bytes in 3 s.
    expect(meter.sample(46_000)).toBe(10_000);
  });
});
