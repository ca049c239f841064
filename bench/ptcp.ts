/**
 * PTCP benchmarks, one JSON line per figure (issue 5, "must show" 6), all measured in this run:
 * loopback throughput vs udx-native, 2 % loss vs lossless through the impairment proxy,
 * RSS per idle connection at 1,000 connections, CPU per MB vs raw loopback TCP.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { PtcpSocket, type PtcpStream } from '../q2q/transport/ptcp-socket';
import { ImpairmentProxy } from './impairment-proxy';

const MB = 1_000_000;
const CHUNK = randomBytes(64 * 1024);

function line(obj: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

/** Writes `bytes` one way and resolves when the receiver has them all; returns seconds and CPU ms. */
async function oneWay(sender: Duplex, receiver: Duplex, bytes: number): Promise<{ secs: number; cpuMs: number }> {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const done = new Promise<void>((resolve) => {
    let got = 0;
    receiver.on('data', (d: Buffer) => {
      got += d.length;
      if (got >= bytes) resolve();
    });
  });
  let sent = 0;
  await new Promise<void>((resolve) => {
    const write = (): void => {
      while (sent < bytes) {
        sent += CHUNK.length;
        if (!sender.write(CHUNK)) {
          sender.once('drain', write);
          return;
        }
      }
      resolve();
    };
    write();
  });
  await done;
  const cpu = process.cpuUsage(cpu0);
  return { secs: (performance.now() - t0) / 1000, cpuMs: (cpu.user + cpu.system) / 1000 };
}

async function ptcpRun(bytes: number, impairment?: { loss?: number }): Promise<{ secs: number; cpuMs: number }> {
  const a = await PtcpSocket.bind({ host: '127.0.0.1' });
  const b = await PtcpSocket.bind({ host: '127.0.0.1' });
  const proxy = impairment ? await ImpairmentProxy.start({ target: { port: b.address().port }, up: impairment, down: impairment, seed: 11 }) : null;
  const accepted = new Promise<PtcpStream>((resolve) => b.listen(resolve));
  const client = await a.connect('127.0.0.1', proxy ? proxy.port : b.address().port);
  const server = await accepted;
  const r = await oneWay(client, server, bytes);
  // Closing the socket destroys the still-open streams with ConnectionLost; expected here.
  for (const s of [client, server]) s.on('error', () => undefined);
  await a.close();
  await b.close();
  await proxy?.close();
  return r;
}

async function tcpRun(bytes: number): Promise<{ secs: number; cpuMs: number }> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const port = (server.address() as net.AddressInfo).port;
  const client = net.connect(port, '127.0.0.1');
  await new Promise((r) => client.once('connect', r));
  const peer = await accepted;
  const res = await oneWay(client, peer, bytes);
  client.destroy();
  peer.destroy();
  server.close();
  return res;
}

async function udxRun(bytes: number): Promise<{ secs: number; cpuMs: number }> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const UDX = require('udx-native');
  const u = new UDX();
  const s1 = u.createSocket();
  const s2 = u.createSocket();
  s1.bind(0, '127.0.0.1');
  s2.bind(0, '127.0.0.1');
  const a = u.createStream(1);
  const b = u.createStream(2);
  a.connect(s1, 2, s2.address().port, '127.0.0.1');
  b.connect(s2, 1, s1.address().port, '127.0.0.1');
  const res = await oneWay(a, b, bytes);
  a.destroy();
  b.destroy();
  await s1.close();
  await s2.close();
  return res;
}

/** Full collections until the heap stops shrinking (needs --expose-gc; bench/run.ts passes it). */
function settleHeap(): void {
  for (let i = 0; i < 3; i++) global.gc?.();
}

async function idleRss(count: number): Promise<{ rss: number; heap: number }> {
  const a = await PtcpSocket.bind({ host: '127.0.0.1' });
  const b = await PtcpSocket.bind({ host: '127.0.0.1' });
  const kept: PtcpStream[] = [];
  const ignore = (s: PtcpStream): PtcpStream => s.on('error', () => undefined);
  b.listen((s) => kept.push(ignore(s)));
  settleHeap();
  const m0 = process.memoryUsage();
  for (let i = 0; i < count; i += 100) {
    const batch = await Promise.all(Array.from({ length: Math.min(100, count - i) }, () => a.connect('127.0.0.1', b.address().port)));
    kept.push(...batch.map(ignore));
  }
  await new Promise((r) => setTimeout(r, 500));
  settleHeap();
  const m1 = process.memoryUsage();
  await a.close();
  await b.close();
  // Each connection has two ends in this process. RSS is noisy (pages already mapped get
  // reused), so the JS heap + external growth is reported beside it.
  return { rss: (m1.rss - m0.rss) / (2 * count), heap: (m1.heapUsed + m1.external - m0.heapUsed - m0.external) / (2 * count) };
}

async function main(): Promise<void> {
  // Memory first, in a fresh process: after the throughput runs the heap holds garbage a
  // single gc() does not always return, and the difference came out negative.
  const perConn = await idleRss(1000);
  line({ bench: 'ptcp_rss_per_idle_connection', connections: 1000, rss_bytes_per_connection: Math.round(perConn.rss), heap_bytes_per_connection: Math.round(perConn.heap), target: 32 * 1024 });

  const size = Number(process.env.PTCP_BENCH_MB ?? 200) * MB;
  const udx = await udxRun(size);
  const ptcp = await ptcpRun(size);
  line({ bench: 'ptcp_loopback_vs_udx', bytes: size, ptcp_MBps: +(size / MB / ptcp.secs).toFixed(1), udx_MBps: +(size / MB / udx.secs).toFixed(1), ratio: +(udx.secs / ptcp.secs).toFixed(2), target: 0.5 });

  const lossSize = Number(process.env.PTCP_BENCH_LOSS_MB ?? 50) * MB;
  const clean = await ptcpRun(lossSize, {});
  const lossy = await ptcpRun(lossSize, { loss: 0.02 });
  line({ bench: 'ptcp_2pct_loss_vs_lossless_proxy', bytes: lossSize, lossless_MBps: +(lossSize / MB / clean.secs).toFixed(1), loss2_MBps: +(lossSize / MB / lossy.secs).toFixed(1), ratio: +(clean.secs / lossy.secs).toFixed(2), target: 0.5 });


  const tcp = await tcpRun(size);
  line({ bench: 'cpu_ms_per_MB', ptcp: +(ptcp.cpuMs / (size / MB)).toFixed(2), tcp: +(tcp.cpuMs / (size / MB)).toFixed(2), udx: +(udx.cpuMs / (size / MB)).toFixed(2), ratio_ptcp_tcp: +(ptcp.cpuMs / tcp.cpuMs).toFixed(1) });
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench ptcp: ${String(err)}\n`);
    process.exit(1);
  },
);
