/**
 * `vertex send` throughput over the tcp route against raw loopback TCP
 * copying the same file, measured in the same run, as a ratio (issue 7
 * target: >= 0.25). Prints one JSON line:
 *
 *   {"bench":"file-transfer","route":"tcp","MB":200,"rawMBps":…,"sendMBps":…,"ratio":…,"endToEndMBps":…}
 *
 * Both sides run as separate processes in both cases. The raw copy is a
 * socket piped into a file and nothing else; `send` adds TLS, framing,
 * SHA-256 on both ends and an fsync before the rename. sendMBps is the
 * transfer as `vertex send --json` reports it (acceptance to last verification);
 * endToEndMBps is the whole `vertex send` process, with start-up, hashing
 * and connecting. Each figure is the median of RUNS runs.
 *
 * Run with `npm run bench`, or `node dist/bench/file-transfer.js` after a
 * build; VERTEX_BENCH_FT_MB sets the file size (default 200).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');
const VERTEX = path.join(ROOT, 'bin', 'vertex');
const RUNS = 3;
const PASSWORD = 'bench password 0123';
const WAIT_MS = 60_000;

/** Receives one connection into a file; prints the milliseconds from accept to the file being written. */
const RAW_RECEIVER = `
const net = require('node:net'), fs = require('node:fs');
const server = net.createServer((c) => {
  const t0 = performance.now();
  const out = fs.createWriteStream(process.argv[1]);
  c.pipe(out);
  out.on('finish', () => { process.stdout.write('done ' + (performance.now() - t0) + '\\n'); server.close(); });
});
server.listen(0, '127.0.0.1', () => process.stdout.write('port ' + server.address().port + '\\n'));
`;
const RAW_SENDER = `
const net = require('node:net'), fs = require('node:fs');
const c = net.connect(Number(process.argv[2]), '127.0.0.1', () => fs.createReadStream(process.argv[1]).pipe(c));
`;

interface Proc {
  child: ChildProcess;
  output: () => string;
  waitFor: (re: RegExp) => Promise<RegExpMatchArray>;
  exited: Promise<number | null>;
}

const children = new Set<ChildProcess>();

function start(args: string[], input?: string): Proc {
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  const waiters = new Set<() => void>();
  const onData = (d: Buffer) => {
    out += d.toString();
    for (const w of waiters) w();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  child.stdin?.end(input ?? '');
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => {
    children.delete(child);
    for (const w of waiters) w();
    resolve(code);
  }));
  return {
    child,
    output: () => out,
    exited,
    waitFor: (re) => new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`bench: timed out waiting for ${re}:\n${out}`)), WAIT_MS);
      const check = () => {
        const m = out.match(re);
        if (m) done(null, m);
        else if (child.exitCode !== null) done(new Error(`bench: process exited before ${re}:\n${out}`));
      };
      const done = (err: Error | null, m?: RegExpMatchArray) => {
        clearTimeout(timer);
        waiters.delete(check);
        if (err) reject(err);
        else resolve(m as RegExpMatchArray);
      };
      waiters.add(check);
      check();
    }),
  };
}

async function run(args: string[], input?: string): Promise<string> {
  const p = start(args, input);
  const code = await p.exited;
  if (code !== 0) throw new Error(`bench: ${args.join(' ')} exited ${code}:\n${p.output()}`);
  return p.output();
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

function makeFile(file: string, bytes: number): void {
  const fd = fs.openSync(file, 'w');
  const block = randomBytes(1 << 20);
  try {
    for (let done = 0; done < bytes; done += block.length) {
      block.writeUInt32BE(done >>> 20, 0);
      fs.writeSync(fd, block, 0, Math.min(block.length, bytes - done));
    }
  } finally {
    fs.closeSync(fd);
  }
}

async function rawCopyMs(file: string, out: string): Promise<number> {
  fs.rmSync(out, { force: true });
  const receiver = start(['-e', RAW_RECEIVER, out]);
  const port = (await receiver.waitFor(/port (\d+)/))[1] as string;
  start(['-e', RAW_SENDER, file, port]);
  const ms = Number((await receiver.waitFor(/done ([\d.]+)/))[1]);
  await receiver.exited;
  return ms;
}

export async function benchFileTransfer(megabytes = Number(process.env.VERTEX_BENCH_FT_MB ?? 200)): Promise<Record<string, unknown>> {
  const bytes = Math.round(megabytes * 1e6);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-bench-ft-'));
  try {
    const file = path.join(tmp, 'payload.bin');
    makeFile(file, bytes);

    const raw: number[] = [];
    for (let i = 0; i < RUNS; i++) raw.push(await rawCopyMs(file, path.join(tmp, 'raw-copy.bin')));

    const serverA = start([VERTEX, 'server', '--listen', '127.0.0.1:0', '--data', path.join(tmp, 'sa'), '--domain', 'a.test', '--registration', 'open']);
    const portA = (await serverA.waitFor(/listening on 127\.0\.0\.1:(\d+)/))[1] as string;
    const serverB = start([VERTEX, 'server', '--listen', '127.0.0.1:0', '--data', path.join(tmp, 'sb'), '--domain', 'b.test', '--registration', 'open', '--resolve', `a.test=127.0.0.1:${portA}`]);
    const portB = (await serverB.waitFor(/listening on 127\.0\.0\.1:(\d+)/))[1] as string;
    const resolve = ['--resolve', `a.test=127.0.0.1:${portA}`, '--resolve', `b.test=127.0.0.1:${portB}`];
    const alice = [VERTEX, ...resolve, '--home', path.join(tmp, 'ha')];
    const bob = [VERTEX, ...resolve, '--home', path.join(tmp, 'hb')];
    await run([...alice, 'register', 'alice@a.test', '--password-stdin'], `${PASSWORD}\n`);
    await run([...bob, 'register', 'bob@b.test', '--password-stdin'], `${PASSWORD}\n`);

    const send: number[] = [];
    const endToEnd: number[] = [];
    const inbox = path.join(tmp, 'inbox');
    for (let i = 0; i < RUNS; i++) {
      fs.rmSync(inbox, { recursive: true, force: true });
      fs.mkdirSync(inbox);
      const receiver = start([...bob, 'receive', inbox, '--yes', '--from', '*@a.test', '--once', '--json', '--peer-listen', '127.0.0.1:0']);
      await receiver.waitFor(/"event":"listening"/);
      const t0 = performance.now();
      const out = await run([...alice, 'send', file, 'bob@b.test', '--json', '--routes', 'tcp', '--peer-listen', '127.0.0.1:0']);
      endToEnd.push(performance.now() - t0);
      const result = JSON.parse(out.split('\n').find((l) => l.includes('"event":"sent"')) ?? '{}') as { ms?: number; route?: string };
      if (result.route !== 'tcp' || typeof result.ms !== 'number') throw new Error(`bench: unexpected send result: ${out}`);
      send.push(result.ms);
      if ((await receiver.exited) !== 0) throw new Error(`bench: receive failed:\n${receiver.output()}`);
    }
    serverA.child.kill('SIGTERM');
    serverB.child.kill('SIGTERM');
    await Promise.all([serverA.exited, serverB.exited]);

    const mbps = (ms: number) => Math.round((bytes / 1e6 / (ms / 1000)) * 10) / 10;
    const rawMBps = mbps(median(raw));
    const sendMBps = mbps(median(send));
    return {
      bench: 'file-transfer',
      route: 'tcp',
      MB: megabytes,
      rawMBps,
      sendMBps,
      ratio: Math.round((sendMBps / rawMBps) * 1000) / 1000,
      endToEndMBps: mbps(median(endToEnd)),
      runs: RUNS,
    };
  } finally {
    for (const child of children) child.kill('SIGKILL');
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

if (require.main === module) {
  benchFileTransfer().then((figures) => {
    process.stdout.write(`${JSON.stringify(figures)}\n`);
  }, (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
