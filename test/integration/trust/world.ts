/**
 * Helpers for the trust tests on top of test/helpers/q2q-world.ts, whose
 * servers run with registration switched to `open` (startServer's default
 * for tests), so a stranger can register just as the attack needs.
 */
import { runVertex, tempDir } from '../../helpers/cli';
import { PASSWORD, startWorld, type World } from '../../helpers/q2q-world';

export async function startOpenWorld(): Promise<World> {
  return startWorld();
}

/** `vertex login` of an existing account into a fresh home: the same address on another device. */
export async function loginElsewhere(world: World, address: string): Promise<string> {
  const dir = tempDir('home');
  const result = await runVertex([...world.resolveArgs, '--home', dir, 'login', address, '--password-stdin'], { input: PASSWORD });
  if (result.code !== 0) throw new Error(`login ${address}: ${result.stderr}`);
  return dir;
}
