/**
 * The SOCKS5 front-end with the programs users run: curl (DNS-safe name,
 * ATYP 3) and ncat (literal user@domain). A missing tool fails the test with
 * an install hint: the CI installs both, so skipping would hide a broken setup.
 */
import { spawn } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { Socks5Server } from '../../../agent/frontends/socks5-server';
import { describeWithTools, TOOLS } from '../../helpers/system-tools';
import { HTTP_BODY, routingDial, startEcho, startHttp, type Closable, type RecordingDial } from './helpers';

interface RunResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs a program with `input` on stdin, killing it (and failing) after `ms`. */
function run(cmd: string, args: string[], input: Buffer | string = '', ms = 60_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')}: no exit after ${ms} ms; stderr: ${err}`));
    }, ms);
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr: err });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

describeWithTools('socks5 server with real clients', [TOOLS.curl, TOOLS.ncat], () => {
  let echo: Closable;
  let web: Closable;
  let server: Socks5Server;
  let routes: RecordingDial;
  let proxy: string;

  beforeAll(async () => {
    echo = await startEcho();
    web = await startHttp();
  });
  afterAll(async () => {
    await Promise.all([echo?.close(), web?.close()]);
  });
  beforeEach(async () => {
    routes = routingDial({
      targets: { 'bob.b.test.q2q:80': web.port, 'bob@b.test:7': echo.port },
      failures: { 'offline.b.test.q2q': 'Offline' },
    });
    server = new Socks5Server({ listen: { host: '127.0.0.1', port: 0 }, auth: 'none', dial: routes.dial });
    const addr = await server.start();
    proxy = `127.0.0.1:${addr.port}`;
  });
  afterEach(async () => {
    await server.stop();
  });

  it('curl --socks5-hostname fetches a page by the DNS-safe name', async () => {
    const r = await run('curl', ['-sS', '--max-time', '30', '-D', '-', '--socks5-hostname', proxy, 'http://bob.b.test.q2q/']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const text = r.stdout.toString();
    expect(text).toMatch(/^HTTP\/1\.1 200/);
    expect(text).toMatch(/x-seen-host: bob\.b\.test\.q2q/i);
    expect(text.endsWith(HTTP_BODY)).toBe(true);
    expect(routes.calls.map((c) => c.req)).toEqual([{ host: 'bob.b.test.q2q', port: 80, addressType: 'domain' }]);
  });

  it('curl reports the refusal for an offline peer (REP 0x04)', async () => {
    // No time bound (a busy machine): a refusal is REP 0x04 and exit 97; a hang would be curl's exit 28.
    const r = await run('curl', ['-sS', '--max-time', '30', '--socks5-hostname', proxy, 'http://offline.b.test.q2q/']);
    expect(r.code).toBe(97); // CURLE_PROXY: the SOCKS proxy refused
    expect(r.stderr).toMatch(/SOCKS5 connection to offline\.b\.test\.q2q\. \(4\)/);
  });

  it('ncat --proxy-type socks5 reaches the echo service by the literal user@domain name', async () => {
    const payload = randomBytes(256 * 1024);
    const r = await run('ncat', ['--proxy', proxy, '--proxy-type', 'socks5', 'bob@b.test', '7'], payload);
    expect(r.code).toBe(0);
    expect(createHash('sha256').update(r.stdout).digest('hex')).toBe(createHash('sha256').update(payload).digest('hex'));
    expect(routes.calls.map((c) => c.req)).toEqual([{ host: 'bob@b.test', port: 7, addressType: 'domain' }]);
  });
});
