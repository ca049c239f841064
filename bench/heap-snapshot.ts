/**
 * Where a process's JS heap goes, for the memory benches: a heap snapshot
 * taken through the process's inspector (it must run with INSPECT_ARGS),
 * summed by constructor or closure name, and the difference of two such
 * sums divided by what was added in between (sessions, tunnels).
 *
 * Diagnosis only: taking a snapshot allocates a lot in the measured process,
 * so an RSS reading taken after one is not a clean figure.
 */
import * as fs from 'node:fs';
import { startProgram, type Proc } from './harness';

/** Streams HeapProfiler.takeHeapSnapshot's chunks to a file (Node 20: WebSocket is behind a flag, so a helper does it). */
const SNAPSHOT_SCRIPT = `
const fs = require('node:fs');
const out = fs.openSync(process.argv[2], 'w');
const ws = new WebSocket(process.argv[1]);
const timer = setTimeout(() => { console.error('no snapshot from the inspector'); process.exit(1); }, 120000);
ws.onopen = () => {
  ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' }));
  ws.send(JSON.stringify({ id: 2, method: 'HeapProfiler.takeHeapSnapshot', params: { reportProgress: false } }));
};
ws.onmessage = (m) => {
  const msg = JSON.parse(String(m.data));
  if (msg.method === 'HeapProfiler.addHeapSnapshotChunk') { fs.writeSync(out, msg.params.chunk); return; }
  if (msg.error) { console.error(JSON.stringify(msg.error)); process.exit(1); }
  if (msg.id === 2) { clearTimeout(timer); fs.closeSync(out); ws.close(); process.exit(0); }
};
ws.onerror = (e) => { console.error(String(e.message ?? e)); process.exit(1); };
`;

export async function takeHeapSnapshot(proc: Proc, file: string): Promise<void> {
  const url = (await proc.waitFor(/Debugger listening on (ws:\/\/\S+)/))[1] as string;
  const helper = startProgram(process.execPath, ['--experimental-websocket', '--no-warnings', '-e', SNAPSHOT_SCRIPT, url, file]);
  const code = await helper.exited;
  if (code !== 0) throw new Error(`bench: heap snapshot of pid ${proc.pid} failed: ${helper.output()}`);
}

export interface HeapGroup { count: number; bytes: number }

/** Self sizes summed by node type and name (objects by constructor, closures by function name). */
export function summarizeHeapSnapshot(file: string): Map<string, HeapGroup> {
  const snap = JSON.parse(fs.readFileSync(file, 'utf8')) as {
    snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
    nodes: number[]; strings: string[];
  };
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const width = fields.length;
  const [typeAt, nameAt, sizeAt] = [fields.indexOf('type'), fields.indexOf('name'), fields.indexOf('self_size')];
  const groups = new Map<string, HeapGroup>();
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + typeAt] as number] ?? '?';
    const raw = snap.strings[snap.nodes[i + nameAt] as number] ?? '';
    // Strings and code are grouped by type alone: their "names" are their contents.
    const name = type === 'object' || type === 'closure' || type === 'native' ? `${type} ${raw.slice(0, 60)}` : type;
    const g = groups.get(name) ?? { count: 0, bytes: 0 };
    g.count += 1;
    g.bytes += snap.nodes[i + sizeAt] as number;
    groups.set(name, g);
  }
  return groups;
}

/** The groups that grew most between two summaries, per unit added (bytes and objects per session, say). */
export function heapGrowth(before: Map<string, HeapGroup>, after: Map<string, HeapGroup>, units: number, top = 30): Array<{ name: string; bytesPerUnit: number; countPerUnit: number }> {
  const rows = [...after].map(([name, a]) => {
    const b = before.get(name) ?? { count: 0, bytes: 0 };
    return { name, bytesPerUnit: Math.round((a.bytes - b.bytes) / units), countPerUnit: Math.round(((a.count - b.count) / units) * 100) / 100 };
  });
  return rows.sort((x, y) => y.bytesPerUnit - x.bytesPerUnit).slice(0, top);
}
