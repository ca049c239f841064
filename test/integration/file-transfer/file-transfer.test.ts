/**
 * `vertex send` and `vertex receive` through the built CLI, alice@a.test to
 * bob@b.test, each domain with its own identity server on loopback (issue 7).
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FrameChannel } from '../../../agent/file-transfer/frame-channel';
import { HomeStore } from '../../../agent/home-store';
import { connectQ2Q, createServerResolver } from '../../../q2q';
import { EMPTY_SHA256 } from '../../../q2q/wire/file-transfer';
import {
  runVertex, startServer, startVertex, stopAll, tempDir, VERTEX_BIN, type RunResult, type ServerHandle, type VertexProcess,
} from '../../helpers/cli';

const PASSWORD = 'correct horse battery staple';
const BIG_BYTES = 200 * 1000 * 1000;
const IS_ROOT = process.getuid?.() === 0;

let serverA: ServerHandle;
let serverB: ServerHandle;
let aliceHome: string;
let bobHome: string;
let big: string;
let bigSha: string;
let smallDir: string;
const mounts: string[] = [];
const made: string[] = [];

/** A temporary directory removed after the suite (the 200 MB file and its copies add up). */
function scratch(prefix: string): string {
  const dir = tempDir(`ft-${prefix}`);
  made.push(dir);
  return dir;
}

function resolveArgs(): string[] {
  return [...serverA.resolveArg('a.test'), ...serverB.resolveArg('b.test')];
}

function asAlice(args: string[]): string[] {
  return [...resolveArgs(), '--home', aliceHome, ...args, '--peer-listen', '127.0.0.1:0'];
}

function asBob(args: string[]): string[] {
  return [...resolveArgs(), '--home', bobHome, ...args, '--peer-listen', '127.0.0.1:0'];
}

/** SHA-256 of a file, streamed: the 200 MB file never sits in memory. */
function fileSha(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    fs.createReadStream(file).on('data', (d) => hash.update(d)).on('error', reject).on('end', () => resolve(hash.digest('hex')));
  });
}

function jsonLines(text: string): Array<Record<string, unknown>> {
  return text.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Starts `vertex receive DIR --once --json ...` as bob and waits until it listens. */
async function receiver(dir: string, extra: string[] = ['--yes', '--from', '*@a.test']): Promise<VertexProcess> {
  const proc = startVertex(asBob(['receive', dir, '--once', '--json', ...extra]));
  await proc.waitFor(/"event":"listening"/);
  return proc;
}

/** The exit status of a process expected to exit by itself (`--once`); killed after timeoutMs. */
function exitOf(proc: VertexProcess, timeoutMs = 20000): Promise<number | null> {
  const { child } = proc;
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

function send(args: string[], timeoutMs = 60000): Promise<RunResult> {
  return runVertex(asAlice(['send', ...args, '--json']), { timeoutMs });
}

async function until(check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function resultOf(run: RunResult): Record<string, unknown> {
  const event = jsonLines(run.stdout).find((e) => e.event === 'sent');
  if (!event) throw new Error(`no result from send (exit ${run.code}):\n${run.stdout}\n${run.stderr}`);
  return event;
}

beforeAll(async () => {
  serverA = await startServer(['a.test']);
  // b.test's server verifies alice's certificate against a.test's CA, fetched from a.test's server.
  serverB = await startServer(['b.test'], { extraArgs: serverA.resolveArg('a.test') });
  aliceHome = scratch('alice');
  bobHome = scratch('bob');
  for (const [home, address] of [[aliceHome, 'alice@a.test'], [bobHome, 'bob@b.test']] as const) {
    const r = await runVertex([...resolveArgs(), '--home', home, 'register', address, '--password-stdin'], { input: `${PASSWORD}\n` });
    expect(r.code).toBe(0);
  }
  const src = scratch('src');
  big = path.join(src, 'big.bin');
  const fd = fs.openSync(big, 'w');
  const block = randomBytes(1000 * 1000);
  for (let i = 0; i < BIG_BYTES / block.length; i++) {
    block.writeUInt32BE(i, 0);
    fs.writeSync(fd, block);
  }
  fs.closeSync(fd);
  bigSha = await fileSha(big);
  smallDir = path.join(src, 'album');
  fs.mkdirSync(path.join(smallDir, 'nested'), { recursive: true });
  for (let i = 0; i < 100; i++) {
    fs.writeFileSync(path.join(smallDir, i % 10 === 0 ? 'nested' : '', `photo-${i}.jpg`), randomBytes(500 + i * 97));
  }
}, 120000);

afterAll(async () => {
  await stopAll();
  for (const dir of mounts.splice(0)) execFileSync('umount', [dir]);
  for (const dir of made.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

describe.each(['tcp', 'relay'] as const)('vertex send → vertex receive over %s', (route) => {
  const routeArgs = route === 'relay' ? ['--routes', 'relay'] : ['--routes', 'tcp'];

  it('a 200 MB file arrives with a matching SHA-256', async () => {
    const dir = scratch('in');
    const recv = await receiver(dir);
    const sent = await send([big, 'bob@b.test', ...routeArgs]);
    expect(sent.stderr).toBe('');
    expect(sent.code).toBe(0);
    const result = resultOf(sent);
    expect(result).toMatchObject({ to: 'bob@b.test', route, bytesTotal: BIG_BYTES, bytesSent: BIG_BYTES });
    expect(await exitOf(recv)).toBe(0);
    const received = jsonLines(recv.output()).find((e) => e.event === 'received');
    expect(received).toMatchObject({ from: 'alice@a.test', route, bytesReceived: BIG_BYTES });
    expect(await fileSha(path.join(dir, 'big.bin'))).toBe(bigSha);
    expect(fs.readdirSync(dir)).toEqual(['big.bin']);
  }, 120000);

  it('a directory of 100 small files arrives intact', async () => {
    const dir = scratch('in');
    const recv = await receiver(dir);
    const sent = await send([smallDir, 'bob@b.test', ...routeArgs]);
    expect(sent.code).toBe(0);
    expect(resultOf(sent)).toMatchObject({ route });
    expect(await exitOf(recv)).toBe(0);
    const names = (resultOf(sent).files as Array<{ path: string }>).map((f) => f.path);
    expect(names).toHaveLength(100);
    for (const name of names) {
      const rel = name.split('/').slice(1);
      expect(await fileSha(path.join(dir, 'album', ...rel))).toBe(await fileSha(path.join(smallDir, ...rel)));
    }
  }, 60000);
});

describe('refusals', () => {
  it('a sender not allowed by --from is denied (exit 5) and nothing is written', async () => {
    const dir = scratch('in');
    const recv = await receiver(dir, ['--yes', '--from', '*@c.test']);
    const sent = await send([path.join(smallDir, 'photo-1.jpg'), 'bob@b.test']);
    expect(sent.code).toBe(5);
    expect(sent.stderr).toMatch(/does not allow alice@a\.test/);
    await recv.stop();
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('a name already in DIR is refused without --overwrite (exit 5) and kept as it was', async () => {
    const dir = scratch('in');
    fs.writeFileSync(path.join(dir, 'photo-1.jpg'), 'mine');
    const recv = await receiver(dir);
    const sent = await send([path.join(smallDir, 'photo-1.jpg'), 'bob@b.test']);
    expect(sent.code).toBe(5);
    expect(sent.stderr).toMatch(/already exists/);
    expect(await exitOf(recv)).toBe(5);
    expect(fs.readFileSync(path.join(dir, 'photo-1.jpg'), 'utf8')).toBe('mine');
  });

  it('sending to someone who is not receiving fails with exit 4 and says what to ask for', async () => {
    const sent = await send([path.join(smallDir, 'photo-1.jpg'), 'bob@b.test']);
    expect(sent.code).toBe(4);
    expect(sent.stderr).toMatch(/vertex receive/);
  });

  it('on a terminal, the receiver is asked; answering no refuses the offer at both ends (exit 5)', async () => {
    const dir = scratch('in');
    const quote = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;
    const command = [process.execPath, VERTEX_BIN, ...asBob(['receive', dir, '--once', '--from', '*@a.test'])].map(quote).join(' ');
    // script(1) gives the receiver a pseudo-terminal, so it asks instead of refusing to start.
    const child = spawn('script', ['-qfec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => { output += d.toString(); });
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      await until(() => output.includes('receiving files into'), 20000);
      const sending = send([path.join(smallDir, 'photo-1.jpg'), 'bob@b.test']);
      await until(() => output.includes('accept into'), 20000);
      expect(output).toMatch(/alice@a\.test offers 1 file/);
      child.stdin.write('n\n');
      const sent = await sending;
      expect(sent.code).toBe(5);
      expect(sent.stderr).toMatch(/refused the transfer \(declined\)/);
      expect(await exited).toBe(5);
      expect(fs.readdirSync(dir)).toEqual([]);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('receive refuses to start without a terminal unless --yes', async () => {
    const r = await runVertex(asBob(['receive', scratch('in')]));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--yes/);
  });

  it('a malicious offer of ../../etc/passwd through the real connection is refused; nothing lands outside DIR', async () => {
    const root = scratch('root');
    const dir = path.join(root, 'a', 'b');
    fs.mkdirSync(dir, { recursive: true });
    const recv = await receiver(dir);
    const home = new HomeStore(aliceHome);
    const stream = await connectQ2Q(home.loadIdentity('alice@a.test'), 'bob@b.test:file-transfer', {
      resolve: createServerResolver({ overrides: { 'a.test': { host: '127.0.0.1', port: serverA.port }, 'b.test': { host: '127.0.0.1', port: serverB.port } } }),
      trust: home,
      peerListen: { host: '127.0.0.1', port: 0 },
    });
    const ch = new FrameChannel(stream);
    await ch.write({ type: 'offer', files: [{ path: '../../etc/passwd', size: 5, sha256: EMPTY_SHA256 }] });
    await ch.write({ type: 'file', index: 0, offset: 0 }).catch(() => undefined);
    const answer = await ch.read(10000);
    stream.destroy();
    expect(answer).toMatchObject({ type: 'reject', reason: 'bad-name' });
    expect(await exitOf(recv)).toBe(5);
    expect(recv.output()).toMatch(/refused name/);
    const all = execFileSync('find', [root], { encoding: 'utf8' }).trim().split('\n').sort();
    expect(all).toEqual([root, path.join(root, 'a'), dir].sort());
  });
});

describe('interrupted transfers', () => {
  it('killing the sender midway leaves no final file; sending again resumes and completes', async () => {
    const dir = scratch('in');
    const partial = path.join(dir, '.big.bin.vertex-partial');
    const recv = await receiver(dir);
    const sender = startVertex(asAlice(['send', big, 'bob@b.test', '--routes', 'tcp']));
    // Kill once a fair part has landed; poll the partial file the receiver writes.
    const deadline = Date.now() + 30000;
    while ((fs.existsSync(partial) ? fs.statSync(partial).size : 0) < 30 * 1000 * 1000) {
      if (Date.now() > deadline || sender.child.exitCode !== null) throw new Error(`no progress to interrupt:\n${sender.output()}\n${recv.output()}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    sender.child.kill('SIGKILL');
    await sender.stop();
    expect(await exitOf(recv)).toBe(1);
    expect(jsonLines(recv.output()).find((e) => e.event === 'failed')).toMatchObject({ code: 'TransferFailed' });
    expect(fs.existsSync(path.join(dir, 'big.bin'))).toBe(false);
    const kept = fs.statSync(partial).size;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThan(BIG_BYTES);

    const again = await receiver(dir);
    const sent = await send([big, 'bob@b.test', '--routes', 'tcp']);
    expect(sent.code).toBe(0);
    expect(await exitOf(again)).toBe(0);
    const received = jsonLines(again.output()).find((e) => e.event === 'received') as { bytesReceived: number; files: Array<{ resumedFrom: number }> };
    expect(received.bytesReceived).toBeLessThan(BIG_BYTES);
    expect(received.bytesReceived).toBe(BIG_BYTES - (received.files[0]?.resumedFrom ?? 0));
    expect(received.files[0]?.resumedFrom).toBeGreaterThanOrEqual(kept - 2 * 1024 * 1024);
    expect(resultOf(sent)).toMatchObject({ bytesSent: received.bytesReceived });
    expect(await fileSha(path.join(dir, 'big.bin'))).toBe(bigSha);
    expect(fs.existsSync(partial)).toBe(false);
  }, 120000);

  it('a DIR that turns unwritable: a clear error at both ends, no file under the final name', async () => {
    const dir = scratch('in');
    if (IS_ROOT) {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', dir]);
      mounts.push(dir);
    }
    const recv = await receiver(dir);
    if (IS_ROOT) execFileSync('mount', ['-o', 'remount,ro', dir]);
    else fs.chmodSync(dir, 0o555);
    try {
      const sent = await send([path.join(smallDir, 'photo-1.jpg'), 'bob@b.test']);
      expect(sent.code).toBe(1);
      expect(sent.stderr).toMatch(/refused the transfer \(unwritable\): cannot write to .*(EROFS|EACCES)/);
      expect(await exitOf(recv)).toBe(1);
      expect(jsonLines(recv.output()).find((e) => e.event === 'failed')).toMatchObject({ code: 'TransferFailed', message: expect.stringMatching(/cannot write to/) });
      expect(fs.readdirSync(dir)).toEqual([]);
    } finally {
      if (!IS_ROOT) fs.chmodSync(dir, 0o755);
    }
  });

  it('a disk too small for the offer: a clear error at both ends before any data moves', async () => {
    if (!IS_ROOT) throw new Error('this test needs root to mount a small tmpfs (CI runs as root)');
    const dir = scratch('in');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', dir]);
    mounts.push(dir);
    const recv = await receiver(dir);
    const sent = await send([big, 'bob@b.test']);
    expect(sent.code).toBe(1);
    expect(sent.stderr).toMatch(/refused the transfer \(no-space\): not enough space/);
    expect(await exitOf(recv)).toBe(1);
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});
