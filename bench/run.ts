/**
 * `npm run bench`: every benchmark, one JSON line per figure on stdout
 * (progress on stderr). Figures are ratios against a baseline measured in
 * the same run; they are printed, never asserted. bench/README.md says what
 * each one means.
 *
 * Order: the timing figures run one after another on a quiet machine; the
 * two memory figures, which mostly wait for idle processes, run last and
 * side by side. A bench that fails prints {"bench":…,"error":…} and the
 * others still run; the exit code is then 1.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { benchConnections, benchServerMemory } from './connections';
import { benchFileTransfer } from './file-transfer';
import { cleanup, emit, note, round, type Figure } from './harness';
import { benchAgentMemory, benchSocksThroughput } from './socks';

/** The whole run is bounded: past this, it stops, cleans up and fails. */
const WATCHDOG_MS = 15 * 60_000;
/** Each idle tunnel holds about three descriptors in the agents and one here. */
const FDS_PER_TUNNEL = 4;

let failed = false;

async function guarded(name: string, fn: () => Promise<void>): Promise<void> {
  const t0 = performance.now();
  try {
    await fn();
  } catch (err) {
    failed = true;
    emit({ bench: name, error: err instanceof Error ? err.message : String(err) });
  } finally {
    note(`${name}: ${Math.round((performance.now() - t0) / 1000)} s`);
  }
}

function openFileLimit(): { soft: number; hard: number } | null {
  try {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
    const n = (v: string | undefined) => (v === 'unlimited' ? Infinity : Number(v));
    return m ? { soft: n(m[1]), hard: n(m[2]) } : null;
  } catch {
    return null;
  }
}

function context(): Figure {
  const limit = openFileLimit();
  const tunnels = Number(process.env.VERTEX_BENCH_TUNNELS ?? 1000);
  return {
    bench: 'context',
    date: new Date().toISOString(),
    node: process.version,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    loadAverage: os.loadavg().map((l) => round(l, 2)),
    // Node raises its own soft limit to the hard one at start-up, and so do the agents it spawns.
    openFiles: limit ? { soft: limit.soft, hard: limit.hard } : 'unknown',
    ...(limit && limit.hard < tunnels * FDS_PER_TUNNEL
      ? { warning: `the open-file hard limit ${limit.hard} is below ${tunnels * FDS_PER_TUNNEL}; raise it (ulimit -Hn) or set VERTEX_BENCH_TUNNELS lower` }
      : {}),
  };
}

/** bench/ptcp.ts belongs to the PTCP work; run its bench functions when it is there. */
async function benchPtcpIfPresent(): Promise<void> {
  const file = path.join(__dirname, 'ptcp.js');
  if (!fs.existsSync(file)) {
    emit({ bench: 'ptcp', skipped: 'bench/ptcp.ts is missing' });
    return;
  }
  const mod = require(file) as Record<string, unknown>;
  const benches = Object.entries(mod).filter((e): e is [string, () => Promise<unknown>] => /^bench/.test(e[0]) && typeof e[1] === 'function');
  if (benches.length === 0) {
    emit({ bench: 'ptcp', skipped: 'bench/ptcp.ts exports no bench function' });
    return;
  }
  for (const [, fn] of benches) {
    const result = await fn();
    for (const figure of Array.isArray(result) ? result : [result]) {
      if (figure && typeof figure === 'object' && 'bench' in figure) emit(figure as Figure);
    }
  }
}

async function main(): Promise<void> {
  const t0 = performance.now();
  emit(context());
  await guarded('connections', benchConnections);
  await guarded('socks-throughput', benchSocksThroughput);
  await guarded('file-transfer', async () => emit((await benchFileTransfer()) as Figure));
  await guarded('ptcp', benchPtcpIfPresent);
  await Promise.all([guarded('server-memory', benchServerMemory), guarded('agent-memory', benchAgentMemory)]);
  note(`done in ${Math.round((performance.now() - t0) / 1000)} s`);
}

let stopping = false;
async function stop(code: number): Promise<never> {
  if (!stopping) {
    stopping = true;
    await cleanup();
  }
  process.exit(code);
}

const watchdog = setTimeout(() => {
  emit({ bench: 'run', error: `stopped after ${WATCHDOG_MS / 60_000} minutes` });
  void stop(1);
}, WATCHDOG_MS);
watchdog.unref();
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => void stop(130));

main().then(() => stop(failed ? 1 : 0), (err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.stack : String(err)}\n`);
  void stop(1);
});
