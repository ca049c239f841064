/**
 * Issue 4, "what it must show" 8: 200 SOCKS5 connections at once through
 * alice's agent to bob's echo service, each sending 1 MB and reading the
 * same 1 MB back, byte-exact.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import type { Socket } from 'node:net';
import { SocksClient } from 'socks';
import { stopAll } from '../../helpers/cli';
import { startWorld, type World } from '../../helpers/q2q-world';
import { startAgent, startEcho, type AgentHandle, type Closable } from './helpers';

const CONNECTIONS = 200;
const BYTES = 1024 * 1024;

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Sends `payload` in slices with back-pressure, half-closes, and hashes what comes back. */
function echoThrough(socket: Socket, payload: Buffer): Promise<{ bytes: number; sha: string }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    socket.on('data', (d: Buffer) => {
      bytes += d.length;
      hash.update(d);
    });
    socket.once('end', () => resolve({ bytes, sha: hash.digest('hex') }));
    socket.once('error', reject);
    socket.end(payload);
  });
}

describe('SOCKS5 under load', () => {
  let world: World;
  let alice: AgentHandle;
  let echo: Closable;
  const dirs: string[] = [];

  beforeAll(async () => {
    echo = await startEcho();
    world = await startWorld();
    const bobUser = await world.user('bob@b.test');
    const aliceUser = await world.user('alice@a.test');
    dirs.push(bobUser.home.dir, aliceUser.home.dir);
    await startAgent(world, bobUser.home.dir, `expose:\n  - { service: echo, target: "127.0.0.1:${echo.port}", allow: ["*"] }`);
    alice = await startAgent(world, aliceUser.home.dir, 'ports: { 7: echo }');
  });

  afterAll(async () => {
    await stopAll();
    await echo?.close();
    for (const d of [...dirs, world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  it(`${CONNECTIONS} concurrent connections each move 1 MB both ways byte-exact`, async () => {
    const payloads = Array.from({ length: CONNECTIONS }, () => randomBytes(BYTES));
    const results = await Promise.all(payloads.map(async (payload, i) => {
      try {
        const { socket } = await SocksClient.createConnection({
          proxy: { host: '127.0.0.1', port: alice.socksPort, type: 5 },
          command: 'connect',
          destination: { host: 'bob.b.test.q2q', port: 7 },
          timeout: 60_000,
        });
        const r = await echoThrough(socket, payload);
        return r.bytes === BYTES && r.sha === sha(payload) ? null : `#${i}: ${r.bytes} bytes back, sha ${r.sha === sha(payload) ? 'ok' : 'differs'}`;
      } catch (err) {
        return `#${i}: ${(err as Error).message}`;
      }
    }));
    const bad = results.filter((x) => x !== null);
    // On failure, show why the agent refused (its log names each failed dial).
    const why = bad.length === 0 ? [] : alice.proc.output().split('\n').filter((l) => /dial-failed|"level":[45]0/.test(l)).slice(0, 5);
    expect({ bad, why }).toEqual({ bad: [], why: [] });
  }, 180_000);
});
