/**
 * The README's two-domain walkthrough ("Two domains, step by step"), run as
 * written (issue 13): every fenced block after a `<!-- walkthrough -->`
 * marker, in order, in one scratch directory, with the built `vertex` first
 * on PATH. So the README and this test cannot drift apart.
 *
 * - `<!-- walkthrough -->` blocks run to completion in one bash (set -e), so
 *   shell variables carry over from block to block as they would for a
 *   reader; a `# prints: TEXT` line says what the block's output must hold.
 * - `<!-- walkthrough: terminal -->` blocks are what the reader runs "in a
 *   terminal of its own": started in the background and left running.
 *
 * Only port numbers change. The README's fixed ports (8788, 8080, ...) may be
 * taken on a test machine, so a port that is not known yet is written as 0,
 * wherever it first appears (a --listen flag, a listen: key), and the real
 * one is read back from what the process that binds it prints; later
 * mentions get the real port.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, stopAll, tempDir } from '../helpers/cli';
import { HANG_MS } from '../helpers/net';

interface Block { kind: 'run' | 'terminal'; text: string }

/** The marked blocks of README.md, in order. */
export function walkthroughBlocks(readme: string): Block[] {
  const blocks: Block[] = [];
  const re = /<!-- walkthrough(: terminal)? -->\s*\n```[^\n]*\n([\s\S]*?)\n```/g;
  for (let m = re.exec(readme); m; m = re.exec(readme)) blocks.push({ kind: m[1] ? 'terminal' : 'run', text: m[2]! });
  return blocks;
}

/** Each README port: which terminal block binds it, and how that process prints the real one. */
const PORTS: ReadonlyArray<{ port: number; block: RegExp; printed: RegExp }> = [
  { port: 8788, block: /vertex server --domain a\.test/, printed: /listening on 127\.0\.0\.1:(\d+)/ },
  { port: 8790, block: /vertex server --config b\.yaml/, printed: /listening on 127\.0\.0\.1:(\d+)/ },
  { port: 1080, block: /vertex agent --home \.\/alice/, printed: /socks5 listening on 127\.0\.0\.1:(\d+)/ },
  { port: 1081, block: /vertex agent --home \.\/bob/, printed: /socks5 listening on 127\.0\.0\.1:(\d+)/ },
  { port: 8080, block: /python3 -m http\.server/, printed: /Serving HTTP on 127\.0\.0\.1 port (\d+)/ },
];

/** What else a terminal block must print before the walkthrough goes on (an agent online at its server). */
const READY: ReadonlyArray<{ block: RegExp; printed: RegExp }> = [
  { block: /vertex agent/, printed: /home server session online/ },
];

const children: ChildProcess[] = [];

afterAll(async () => {
  // Each child leads its own process group (detached): bash and whatever it started go together.
  await Promise.all(children.map((c) => new Promise<void>((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null || c.pid === undefined) return resolve();
    c.once('exit', () => resolve());
    try { process.kill(-c.pid, 'SIGTERM'); } catch { resolve(); }
  })));
  await stopAll();
});

describe('README: two domains, step by step', () => {
  it('runs as written', async () => {
    const blocks = walkthroughBlocks(fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8'));
    // The walkthrough is there and the table above covers it: a renamed block fails here, not silently.
    expect(blocks.filter((b) => b.kind === 'terminal').length).toBe(5);
    for (const { block } of PORTS) expect(blocks.some((b) => b.kind === 'terminal' && block.test(b.text))).toBe(true);

    const dir = tempDir('walkthrough');
    const env = {
      ...process.env,
      PATH: `${path.join(ROOT, 'bin')}${path.delimiter}${process.env.PATH ?? ''}`,
      // Python buffers stdout into a pipe; a reader's terminal shows the line at once.
      PYTHONUNBUFFERED: '1',
      // Two agents on one machine each name their control socket; keep the runtime dir out of it.
      XDG_RUNTIME_DIR: '',
      VERTEX_HOME: '',
    };
    const real = new Map<number, number>();
    const substitute = (text: string): string => {
      let out = text;
      for (const { port } of PORTS) out = out.replace(new RegExp(`(?<![\\d.])${port}(?!\\d)`, 'g'), String(real.get(port) ?? 0));
      return out;
    };

    // One shell for the run blocks, as a reader's own terminal.
    const shell = spawn('bash', ['--norc', '--noprofile'], { cwd: dir, env, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    children.push(shell);
    let shellOut = '';
    shell.stdout.on('data', (d: Buffer) => { shellOut += d.toString(); });
    shell.stderr.on('data', (d: Buffer) => { shellOut += d.toString(); });
    shell.stdin.write('set -e\n');
    let step = 0;
    const runInShell = (text: string): Promise<string> => new Promise((resolve, reject) => {
      const marker = `__walkthrough_step_${++step}__`;
      const from = shellOut.length;
      const file = path.join(dir, `.step-${step}.sh`);
      fs.writeFileSync(file, `${text}\n`);
      const timer = setTimeout(() => reject(new Error(`walkthrough block did not finish:\n${text}\n--- output:\n${shellOut.slice(from)}`)), HANG_MS);
      const check = () => {
        const at = shellOut.indexOf(marker, from);
        if (at >= 0) { clearTimeout(timer); shell.stdout.off('data', check); resolve(shellOut.slice(from, at)); }
      };
      shell.stdout.on('data', check);
      shell.once('exit', (code) => { clearTimeout(timer); reject(new Error(`walkthrough block failed (exit ${code}):\n${text}\n--- output:\n${shellOut.slice(from)}`)); });
      shell.stdin.write(`source ${JSON.stringify(file)} < /dev/null\necho ${marker}\n`);
    });

    const terminals: Array<{ text: string; output: () => string }> = [];
    const startTerminal = async (text: string, original: string): Promise<void> => {
      const child = spawn('bash', ['-c', text], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      children.push(child);
      let output = '';
      const waiters = new Set<() => void>();
      const onData = (d: Buffer) => { output += d.toString(); for (const w of waiters) w(); };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      terminals.push({ text, output: () => output });
      const waitFor = (re: RegExp) => new Promise<RegExpMatchArray>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`"${text}" never printed ${re}:\n${output}`)), HANG_MS);
        const check = () => {
          const m = output.match(re);
          if (m) { clearTimeout(timer); waiters.delete(check); resolve(m); return; }
          if (child.exitCode !== null) { clearTimeout(timer); waiters.delete(check); reject(new Error(`"${text}" exited (${child.exitCode}):\n${output}`)); }
        };
        waiters.add(check);
        child.once('exit', check);
        check();
      });
      for (const { port, block, printed } of PORTS) {
        if (!block.test(original) || real.has(port)) continue;
        real.set(port, Number((await waitFor(printed))[1]));
      }
      for (const { block, printed } of READY) if (block.test(original)) await waitFor(printed);
    };

    try {
      for (const block of blocks) {
        const text = substitute(block.text);
        if (block.kind === 'terminal') {
          await startTerminal(text, block.text);
          continue;
        }
        const output = await runInShell(text);
        for (const m of block.text.matchAll(/^# prints: (.*)$/gm)) expect(output).toContain(m[1]);
      }
    } catch (err) {
      // What each terminal printed is what a reader would look at next.
      const logs = terminals.map((t) => `--- ${t.text}\n${t.output().slice(-4000)}`).join('\n');
      throw new Error(`${(err as Error).message}\n${logs}`);
    }
    // The README's own federation claim: b.test's server pinned a.test's CA, found through federation.servers.
    expect(fs.readFileSync(path.join(dir, 'b-data', 'known_domains'), 'utf8')).toMatch(/^a\.test SHA256:/m);
  });
});
