/**
 * Two domains on loopback for connection tests: real `vertex server`
 * processes for a.test and b.test (each able to find the other), users
 * registered through the real CLI, and helpers to build library nodes.
 */
import { createHash } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { HomeStore } from '../../agent/home-store';
import { createServerResolver, type ServerEndpoint } from '../../q2q/control/discovery';
import type { Identity, Q2QOptions } from '../../q2q/negotiate/types';
import { runVertex, startServer, tempDir, type ServerHandle } from './cli';

export const PASSWORD = 'correct horse battery staple';

export interface World {
  a: ServerHandle;
  b: ServerHandle;
  endpoints: Map<string, ServerEndpoint>;
  resolveArgs: string[];
  user: (address: string) => Promise<{ identity: Identity; home: HomeStore; options: (extra?: Partial<Q2QOptions>) => Q2QOptions }>;
}

export async function startWorld(): Promise<World> {
  const a = await startServer(['a.test']);
  // b.test's server must find a.test's to check alice's certificate (federation).
  const b = await startServer(['b.test'], { extraArgs: a.resolveArg('a.test') });
  const endpoints = new Map<string, ServerEndpoint>([
    ['a.test', { host: '127.0.0.1', port: a.port }],
    ['b.test', { host: '127.0.0.1', port: b.port }],
  ]);
  const resolveArgs = [...a.resolveArg('a.test'), ...b.resolveArg('b.test')];
  return {
    a, b, endpoints, resolveArgs,
    user: async (address) => {
      const dir = tempDir('home');
      const result = await runVertex([...resolveArgs, '--home', dir, 'register', address, '--password-stdin'], { input: PASSWORD });
      if (result.code !== 0) throw new Error(`register ${address}: ${result.stderr}`);
      const home = new HomeStore(dir);
      const identity = home.loadIdentity(address);
      return {
        identity, home,
        options: (extra = {}) => ({
          resolve: createServerResolver({ overrides: endpoints }),
          trust: home,
          peerListen: { host: '127.0.0.1', port: 0 },
          relayDelayMs: 300,
          ...extra,
        }),
      };
    },
  };
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Writes `payload`, ends, and collects everything the other side sends until it ends. */
export function exchange(stream: Duplex, payload: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.once('end', () => resolve(Buffer.concat(chunks)));
    stream.once('error', reject);
    stream.end(payload);
  });
}

/** An echo service handler: every byte back, half-close honoured. */
export function echo(stream: Duplex): void {
  stream.on('error', () => undefined);
  stream.pipe(stream);
}
