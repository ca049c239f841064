/**
 * Issue 4, "what it must show" 10: what `npm start` runs (`vertex demo`)
 * prints a curl example, and that example works against it. The test runs
 * the same command with free ports and a temporary data directory, so it
 * never collides with a demo a developer has running on 8788/1080.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, startVertex, stopAll, tempDir, VERTEX_BIN } from '../../helpers/cli';
import { run } from './helpers';

const DEMO_PAGE = 'Hello from demo@localhost, through Vertex.\n';

describe('npm start (vertex demo)', () => {
  let dir: string;
  beforeAll(() => {
    dir = tempDir('demo');
  });
  afterAll(async () => {
    await stopAll();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('is what the start script runs', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts['start']).toBe('node bin/vertex demo');
  });

  it('prints a curl example that works, and commands that find its agent; a second start reuses the data', async () => {
    const args = ['demo', '--data', path.join(dir, 'vertex-data'), '--listen', '127.0.0.1:0', '--socks', '127.0.0.1:0'];
    const demo = startVertex(args, { cwd: dir });
    await demo.waitFor(/Ctrl-C stops everything/);
    expect(demo.output()).toMatch(/created the account demo@localhost/);
    const curlLine = demo.output().match(/^\s*(curl --socks5-hostname \S+ \S+)\s*$/m)?.[1];
    expect(curlLine).toBeDefined();
    const curl = await run('sh', ['-c', `${curlLine} -sS --max-time 10`]);
    expect(curl.stderr).toBe('');
    expect(curl.stdout.toString()).toBe(DEMO_PAGE);

    // The printed `npx vertex --home ...` lines reach the demo's agent from the same directory.
    const statusLine = demo.output().match(/^\s*npx vertex (--home \S+) status\s*$/m)?.[1];
    expect(statusLine).toBeDefined();
    const status = await run(process.execPath, [VERTEX_BIN, ...(statusLine as string).split(' '), 'status', '--json'], { cwd: dir });
    expect(status.code).toBe(0);
    expect(JSON.parse(status.stdout.toString())).toMatchObject({ identity: 'demo@localhost', server: { state: 'online' } });

    // Ctrl-C: a clean stop, reported as an interrupt (130) like any program a shell interrupts.
    expect(await demo.stop('SIGINT')).toBe(130);
    const again = startVertex(args, { cwd: dir });
    await again.waitFor(/Ctrl-C stops everything/);
    expect(again.output()).toMatch(/reusing the account demo@localhost/);
    const second = await run('sh', ['-c', `${again.output().match(/^\s*(curl --socks5-hostname \S+ \S+)\s*$/m)?.[1]} -sS --max-time 10`]);
    expect(second.stdout.toString()).toBe(DEMO_PAGE);
    expect(await again.stop('SIGTERM')).toBe(0);
  }, 60_000);
});
