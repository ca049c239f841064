/**
 * What a person sees while files move: a cli-progress bar on a terminal
 * (bytes, rate, ETA, route), plain periodic lines otherwise, nothing for
 * --json (the command prints one result object instead). Output goes to the
 * stream given, normally stderr, so stdout carries only results.
 */
import { SingleBar } from 'cli-progress';
import { systemClock, type Clock } from '../../q2q/util/clock';

export type ProgressMode = 'bar' | 'lines' | 'none';

export interface ProgressSnapshot {
  bytesDone: number;
  bytesTotal: number;
  /** Bytes that crossed the wire: the rate is measured on these. */
  wireBytes: number;
  file: string;
  fileIndex: number;
  fileCount: number;
}

export interface ProgressView {
  update(p: ProgressSnapshot): void;
  /** Removes the bar; prints nothing else. */
  stop(): void;
}

export interface ProgressViewOptions {
  mode: ProgressMode;
  out: NodeJS.WritableStream;
  /** `sending to bob@b.test`, `receiving from alice@a.test`. */
  label: string;
  route: string;
  /** Plain lines: at most one per interval. Default 1000 ms. */
  intervalMs?: number;
  clock?: Clock;
}

/** The rate is averaged over this window, so the ETA does not jump with every chunk. */
const RATE_WINDOW_MS = 3000;
const SAMPLE_SPACING_MS = 100;

/** Bar on a TTY, lines elsewhere, nothing for --json. */
export function progressMode(json: boolean | undefined, stream: { isTTY?: boolean }): ProgressMode {
  if (json) return 'none';
  return stream.isTTY ? 'bar' : 'lines';
}

export function createProgressView(options: ProgressViewOptions): ProgressView {
  const clock = options.clock ?? systemClock;
  const rate = new RateMeter(clock);
  const interval = options.intervalMs ?? 1000;
  switch (options.mode) {
    case 'none':
      return { update: () => undefined, stop: () => undefined };
    case 'lines': {
      // The first line waits one interval, so quick transfers print only their summary; the last one is printed once.
      let lastLine = clock.now();
      let printed = false;
      let finished = false;
      return {
        update(p) {
          const bps = rate.sample(p.wireBytes);
          const now = clock.now();
          const complete = p.bytesDone >= p.bytesTotal;
          if (finished || (now - lastLine < interval && !(complete && printed))) return;
          lastLine = now;
          printed = true;
          finished = complete;
          options.out.write(`${describeProgress(options.label, p, bps, options.route)}\n`);
        },
        stop: () => undefined,
      };
    }
    case 'bar': {
      const bar = new SingleBar({
        stream: options.out,
        format: `${options.label} |{bar}| {percentage}% {done}/{all} {rate} ETA {etaText} via {route} {file}`,
        hideCursor: true,
        clearOnComplete: true,
        barsize: 24,
        fps: 8,
      });
      let started = false;
      return {
        update(p) {
          const bps = rate.sample(p.wireBytes);
          const payload = {
            done: formatBytes(p.bytesDone), all: formatBytes(p.bytesTotal), rate: `${formatBytes(bps)}/s`,
            etaText: formatEta(p.bytesTotal - p.bytesDone, bps), route: options.route,
            file: p.fileCount > 1 ? `[${Math.min(p.fileIndex + 1, p.fileCount)}/${p.fileCount}]` : '',
          };
          if (!started) {
            started = true;
            bar.start(Math.max(1, p.bytesTotal), p.bytesDone, payload);
          } else {
            bar.update(p.bytesDone, payload);
          }
        },
        stop() {
          if (started) bar.stop();
        },
      };
    }
    default: {
      const unreachable: never = options.mode;
      throw new Error(`unknown progress mode ${String(unreachable)}`);
    }
  }
}

/** One plain progress line: `sending to bob@b.test: 45.0 MB of 200.0 MB (22%), 110.2 MB/s, eta 2 s, via tcp`. */
export function describeProgress(label: string, p: ProgressSnapshot, bytesPerSecond: number, route: string): string {
  const percent = p.bytesTotal === 0 ? 100 : Math.floor((p.bytesDone / p.bytesTotal) * 100);
  const files = p.fileCount > 1 ? `, file ${Math.min(p.fileIndex + 1, p.fileCount)} of ${p.fileCount}` : '';
  return `${label}: ${formatBytes(p.bytesDone)} of ${formatBytes(p.bytesTotal)} (${percent}%)${files}, ` +
    `${formatBytes(bytesPerSecond)}/s, eta ${formatEta(p.bytesTotal - p.bytesDone, bytesPerSecond)}, via ${route}`;
}

export function formatEta(remainingBytes: number, bytesPerSecond: number): string {
  if (remainingBytes <= 0) return '0 s';
  if (bytesPerSecond <= 0) return '?';
  const s = Math.ceil(remainingBytes / bytesPerSecond);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** Bytes per second over the last RATE_WINDOW_MS. */
export class RateMeter {
  readonly #clock: Clock;
  readonly #samples: Array<{ at: number; bytes: number }> = [];

  constructor(clock: Clock = systemClock) {
    this.#clock = clock;
  }

  sample(totalBytes: number): number {
    const now = this.#clock.now();
    const last = this.#samples[this.#samples.length - 1];
    // One sample per SAMPLE_SPACING_MS keeps the window small at gigabytes per second.
    if (last === undefined || now - last.at >= SAMPLE_SPACING_MS) this.#samples.push({ at: now, bytes: totalBytes });
    while (this.#samples.length > 2 && (this.#samples[1]?.at ?? now) <= now - RATE_WINDOW_MS) this.#samples.shift();
    const first = this.#samples[0];
    if (first === undefined || now - first.at <= 0) return 0;
    return ((totalBytes - first.bytes) * 1000) / (now - first.at);
  }
}

/** Decimal units, like disk and network figures: 1.5 MB is 1,500,000 bytes. */
export function formatBytes(n: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${Math.round(n)} B` : `${value.toFixed(1)} ${units[unit]}`;
}
