/**
 * The two-domain world of test/helpers/q2q-world.ts with registration
 * switched to `open` on both servers explicitly: attack tests register
 * strangers, whatever the servers' default is.
 */
import { HomeStore } from '../../../agent/home-store';
import { createServerResolver, type ServerEndpoint } from '../../../q2q/control/discovery';
import { runVertex, startServer, tempDir } from '../../helpers/cli';
import { PASSWORD, type World } from '../../helpers/q2q-world';

export async function startOpenWorld(): Promise<World> {
  const a = await startServer(['a.test'], { extraArgs: ['--registration', 'open'] });
  const b = await startServer(['b.test'], { extraArgs: ['--registration', 'open', ...a.resolveArg('a.test')] });
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

/** `vertex login` of an existing account into a fresh home: the same address on another device. */
export async function loginElsewhere(world: World, address: string): Promise<string> {
  const dir = tempDir('home');
  const result = await runVertex([...world.resolveArgs, '--home', dir, 'login', address, '--password-stdin'], { input: PASSWORD });
  if (result.code !== 0) throw new Error(`login ${address}: ${result.stderr}`);
  return dir;
}
