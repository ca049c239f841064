/**
 * Issue 11, item 4: while 2,000 idle `hello` sessions from one address are
 * held open (or tried: the per-address cap closes most at accept), a
 * `register` from another address (127.0.0.2) succeeds promptly, and every
 * one of those sessions is closed within 60 s.
 *
 * Against a real `vertex server` with max_connections: 300 (the issue's
 * setting, where 300 idle sessions made register fail) and the default
 * unauthenticated limits. Then the same against a server whose server.yaml
 * switches the unauthenticated limits off (the forbidden behaviour): there
 * the register fails and the sessions stay open, so the test can fail.
 *
 * File descriptors: this process holds up to 2,000 sockets and the server as
 * many; the test checks the limit first (ulimit -n is 20,000 here).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { startServer, stopAll, tempDir, type ServerHandle } from '../../helpers/cli';
import { csrFor, openSession, outcome, type RawSession } from './raw-session';
import { DEFAULT_ADMISSION_LIMITS } from '../../../server/admission';

jest.setTimeout(240_000);

const DOMAIN = 'load.test';
const PASSWORD = 'correct horse battery staple';
const SESSIONS = 2000;
/** The bound is 2 s; generous slack for a busy 2-core machine (the measured time is printed). */
const REGISTER_BOUND_MS = 6_000;
const CLOSE_BOUND_MS = 60_000;

async function serverWith(limits: string): Promise<ServerHandle> {
  const dataDir = tempDir('load-server');
  const config = path.join(dataDir, 'server.yaml');
  fs.writeFileSync(config, `version: 1\ndomains: [${DOMAIN}]\nregistration: open\nlimits:\n  max_connections: 300\n${limits}`);
  return startServer([DOMAIN], { dataDir, extraArgs: ['--config', config] });
}

interface Flood { held: RawSession[]; open: () => number }

/** Tries SESSIONS connections from 127.0.0.1, each saying hello and then nothing. */
async function flood(server: ServerHandle): Promise<Flood> {
  const held: RawSession[] = [];
  let open = 0;
  for (let start = 0; start < SESSIONS; start += 250) {
    const batch = await Promise.allSettled(Array.from({ length: Math.min(250, SESSIONS - start) }, () => openSession(server.port, DOMAIN, '127.0.0.1')));
    for (const r of batch) {
      if (r.status !== 'fulfilled') continue;
      held.push(r.value);
      open++;
      r.value.socket.once('close', () => { open--; });
    }
  }
  return { held, open: () => open };
}

async function registerFrom(server: ServerHandle, address: string): Promise<{ result: string; ms: number }> {
  const started = Date.now();
  try {
    const s = await openSession(server.port, DOMAIN, '127.0.0.2');
    const result = await outcome(s.peer.call('register', { address, password: PASSWORD, csr: await csrFor(address) }));
    s.close();
    return { result, ms: Date.now() - started };
  } catch (err) {
    return { result: (err as { code?: string }).code ?? (err as Error).message, ms: Date.now() - started };
  }
}

async function waitUntil(check: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return check();
}

const floods: Flood[] = [];

beforeAll(() => {
  // 2 sockets per session across this process and the server, plus slack.
  const soft = Number(require('node:child_process').execSync('ulimit -n', { shell: '/bin/bash' }).toString().trim());
  if (soft < SESSIONS + 500) throw new Error(`ulimit -n is ${soft}; this test needs ${SESSIONS + 500} (raise it, e.g. ulimit -n 20000)`);
});

afterAll(async () => {
  for (const f of floods) for (const s of f.held) s.close();
  await stopAll();
});

describe('idle unauthenticated sessions (real vertex server, default limits)', () => {
  it('register from another address succeeds while 2,000 are tried; all are closed within 60 s', async () => {
    const server = await serverWith('');
    const f = await flood(server);
    floods.push(f);
    const { result, ms } = await registerFrom(server, `alice@${DOMAIN}`);
    process.stdout.write(`held ${f.open()} of ${SESSIONS} idle sessions; register from 127.0.0.2 took ${ms} ms\n`);
    expect(result).toBe('certificate');
    expect(ms).toBeLessThan(REGISTER_BOUND_MS);
    expect(f.open()).toBeLessThanOrEqual(DEFAULT_ADMISSION_LIMITS.perAddress);
    expect(await waitUntil(() => f.open() === 0, CLOSE_BOUND_MS)).toBe(true);
  });
});

describe('can fail: the unauthenticated limits switched off', () => {
  it('register from another address fails and the sessions stay open', async () => {
    const server = await serverWith([
      'unauthenticated_per_address: 1000000', 'unauthenticated_max: 1000000', 'unauthenticated_idle_timeout: 1h', 'unauthenticated_lifetime: 1h',
      'unauthenticated_newcomer_interval: 0s',
    ].map((line) => `  ${line}\n`).join(''));
    const f = await flood(server);
    floods.push(f);
    expect(f.open()).toBeGreaterThanOrEqual(290);
    const { result } = await registerFrom(server, `alice@${DOMAIN}`);
    expect(result).not.toBe('certificate');
    // Well past the default idle time: with the limits off nothing closes them.
    await new Promise((resolve) => setTimeout(resolve, 12_000));
    expect(f.open()).toBeGreaterThanOrEqual(290);
  });
});
