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
import { cleanup, emit, forkBench, note, round, type Figure } from './harness';
import { benchAgentMemory, benchSocksConcurrent, benchSocksNewConnection, benchSocksNewConnectionRtt, benchSocksThroughput } from './socks';
import { benchTrustLoad } from './trust-load';
import { benchMultiNode } from './multi-node';

/** The whole run is bounded: past this, it stops, cleans up and fails. */
const WATCHDOG_MS = 15 * 60_000;
/** bench/ptcp.js as a child process gets this long. */
const PTCP_TIMEOUT_MS = 180_000;
/** bench/mux.js (the multiplexer against plain TLS and HTTP/2) takes about 45 s. */
const MUX_TIMEOUT_MS = 120_000;
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

/**
 * bench/ptcp.ts belongs to the PTCP work. When it exports bench functions,
 * they are called here; when it is a script that runs itself (it then
 * exits when done, so it must not be loaded into this process), it runs as
 * a child with --expose-gc and its JSON lines are passed on. Its figures
 * use its own names and baselines (udx-native, raw TCP).
 */
async function benchPtcpIfPresent(): Promise<void> {
  const file = path.join(__dirname, 'ptcp.js');
  if (!fs.existsSync(file)) {
    emit({ bench: 'ptcp', skipped: 'bench/ptcp.ts is missing' });
    return;
  }
  const exported = [...fs.readFileSync(file, 'utf8').matchAll(/^exports\.(bench\w*) = /gm)].map((m) => m[1] as string);
  if (exported.length > 0) {
    const mod = require(file) as Record<string, () => Promise<unknown>>;
    for (const name of exported) {
      const result = await mod[name]?.();
      for (const figure of Array.isArray(result) ? result : [result]) {
        if (figure && typeof figure === 'object' && 'bench' in figure) emit(figure as Figure);
      }
    }
    return;
  }
  await childBench(file, PTCP_TIMEOUT_MS);
}

/**
 * A bench that is a script of its own (it exits when done, so it must not be
 * loaded into this process): run as a child with --expose-gc, its JSON lines
 * passed on.
 */
async function childBench(file: string, timeoutMs: number): Promise<void> {
  const child = forkBench(file, [], ['--expose-gc']);
  const timer = setTimeout(() => child.child.kill('SIGKILL'), timeoutMs);
  const code = await child.exited;
  clearTimeout(timer);
  for (const line of child.output().split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const figure = JSON.parse(line) as Figure;
      if (typeof figure.bench === 'string') emit(figure);
    } catch {
      // Not a figure: progress text that happens to start with a brace.
    }
  }
  const name = path.basename(file);
  if (code !== 0) throw new Error(`bench/${name} exited with ${code ?? 'a signal'}${code === null ? ` (killed after ${timeoutMs / 1000} s?)` : ''}: ${child.output().split('\n').filter((l) => !l.startsWith('{')).join(' ').slice(-500)}`);
}

async function main(): Promise<void> {
  const t0 = performance.now();
  emit(context());
  await guarded('connections', benchConnections);
  await guarded('socks-throughput', benchSocksThroughput);
  await guarded('socks-new-connection', benchSocksNewConnection);
  // The same over a link with a round-trip time: where early streams save a round trip.
  await guarded('socks-new-connection-rtt', benchSocksNewConnectionRtt);
  // One stream's throughput against plain TLS and 20 parallel streams' fairness (issue 12).
  await guarded('mux', () => childBench(path.join(__dirname, 'mux.js'), MUX_TIMEOUT_MS));
  await guarded('socks-concurrent', benchSocksConcurrent);
  await guarded('file-transfer', async () => emit((await benchFileTransfer()) as Figure));
  await guarded('ptcp', benchPtcpIfPresent);
  await guarded('trust-load', benchTrustLoad);
  await guarded('multi-node', benchMultiNode);
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
