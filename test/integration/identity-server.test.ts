/**
 * The identity server and account commands, driven through the built CLI
 * against real server processes on loopback (issue: identity server).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { createDomainCa, createCsr, generateKeyPair, issueUserCertificate, describeCertificate } from '../../q2q/identity';
import { encodeBox } from '../../q2q/wire/amp';
import { attachAmp } from '../../q2q/transport/amp-connection';
import { runVertex, startServer, stopAll, tempDir, type ServerHandle } from '../helpers/cli';

const PASSWORD = 'correct horse battery staple';

async function register(server: ServerHandle, home: string, address: string, password = PASSWORD, command = 'register') {
  const domain = address.split('@')[1] ?? '';
  return runVertex([...server.resolveArg(domain), '--home', home, command, address, '--password-stdin'], { input: `${password}\n` });
}

function openssl(args: string[]): string {
  return execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function certFile(home: string, address: string): string {
  return path.join(home, 'identities', address, 'cert.pem');
}

/** Resolves when the server closes `socket`, or rejects after timeoutMs. */
function closedBy(socket: net.Socket, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    if (socket.destroyed) return resolve();
    const timer = setTimeout(() => reject(new Error(`connection still open after ${timeoutMs} ms`)), timeoutMs);
    socket.on('error', () => undefined);
    socket.once('close', () => { clearTimeout(timer); resolve(); });
  });
}

afterAll(stopAll);

describe('vertex server + register/login', () => {
  let server: ServerHandle;
  beforeAll(async () => {
    const configDir = tempDir('cfg');
    const config = path.join(configDir, 'server.yaml');
    // A short handshake timeout keeps the stalled-client case quick.
    fs.writeFileSync(config, 'version: 1\ndomains: [example.test]\nlimits:\n  handshake_timeout: 2s\n');
    server = await startServer([], { extraArgs: ['--config', config, '--log-level', 'info'] });
  });

  it('register creates an identity whose certificate openssl reads as issued', async () => {
    const home = tempDir('home');
    const result = await register(server, home, 'alice@example.test');
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/registered alice@example\.test/);
    const text = openssl(['x509', '-noout', '-text', '-in', certFile(home, 'alice@example.test')]);
    expect(text).toMatch(/Subject: CN\s*=\s*alice@example\.test/);
    expect(text).toMatch(/Issuer: CN\s*=\s*example\.test/);
    expect(text).toContain('URI:q2q:alice@example.test');
    expect(text).toMatch(/Public Key Algorithm: id-ecPublicKey/);
    expect(fs.statSync(path.join(home, 'identities', 'alice@example.test', 'key.pem')).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(path.join(home, 'known_domains'), 'utf8')).toMatch(/^example\.test SHA256:/m);
  });

  it('login from a second home gets a different serial; a wrong password exits 3', async () => {
    const home1 = tempDir('home');
    const home2 = tempDir('home');
    expect((await register(server, home1, 'bob@example.test')).code).toBe(0);
    const login = await register(server, home2, 'bob@example.test', PASSWORD, 'login');
    expect(login.stderr).toBe('');
    expect(login.code).toBe(0);
    const serial = (home: string) => describeCertificate(fs.readFileSync(certFile(home, 'bob@example.test'), 'utf8')).serial;
    expect(serial(home1)).not.toBe(serial(home2));

    const wrong = await register(server, tempDir('home'), 'bob@example.test', 'not the password', 'login');
    expect(wrong.code).toBe(3);
    expect(wrong.stderr.trim().split('\n')).toHaveLength(1);
    expect(wrong.stderr).toMatch(/wrong password/);
  });

  it('repeated wrong passwords are refused with RateLimited as documented', async () => {
    expect((await register(server, tempDir('home'), 'carol@example.test')).code).toBe(0);
    const home = tempDir('home');
    for (let i = 0; i < 5; i++) {
      expect((await register(server, home, 'carol@example.test', `wrong-${i}-password`, 'login')).code).toBe(3);
    }
    const limited = await register(server, home, 'carol@example.test', PASSWORD, 'login');
    expect(limited.code).toBe(3);
    expect(limited.stderr).toMatch(/too many wrong passwords; try again in \d+ s/);
  });

  it('a taken name, an invalid name, an unknown domain and an unknown user fail with distinct messages', async () => {
    expect((await register(server, tempDir('home'), 'dave@example.test')).code).toBe(0);
    const taken = await register(server, tempDir('home'), 'dave@example.test');
    expect(taken.code).toBe(1);
    expect(taken.stderr).toMatch(/the name is taken/);

    const invalid = await register(server, tempDir('home'), 'Bob!@example.test');
    expect(invalid.code).toBe(2);
    expect(invalid.stderr).toMatch(/invalid user/);

    const otherDomain = await runVertex(['--resolve', `other.test=127.0.0.1:${server.port}`, '--home', tempDir('home'), 'register', 'eve@other.test', '--password-stdin'], { input: PASSWORD });
    expect(otherDomain.code).toBe(1);
    expect(otherDomain.stderr).toMatch(/does not serve it/);

    const unknown = await register(server, tempDir('home'), 'nobody@example.test', PASSWORD, 'login');
    expect(unknown.code).toBe(3);
    expect(unknown.stderr).toMatch(/no such account/);

    for (const r of [taken, invalid, otherDomain, unknown]) expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('survives garbage, oversized boxes, stalled handshakes and foreign certificates', async () => {
    // 1 MB of random bytes instead of a TLS ClientHello.
    const garbage = net.connect(server.port, '127.0.0.1');
    garbage.on('error', () => undefined);
    garbage.write(randomBytes(1024 * 1024));
    await closedBy(garbage, 10000);

    // A valid TLS session that then sends a box larger than max_box_bytes.
    const big = tls.connect({ host: '127.0.0.1', port: server.port, servername: 'example.test', rejectUnauthorized: false });
    await new Promise((r) => big.once('secureConnect', r));
    const value = Buffer.alloc(65535, 0x61);
    const box: Record<string, Buffer> = { _command: Buffer.from('hello'), _ask: Buffer.from('1') };
    for (let i = 0; i < 6; i++) box[`k${i}`] = value;
    big.write(encodeBox(box));
    await closedBy(big, 10000);

    // A client that stops in the middle of the handshake.
    const stalled = net.connect(server.port, '127.0.0.1');
    stalled.write(Buffer.from('160301', 'hex'));
    await closedBy(stalled, 8000);

    // A client certificate from a CA the server does not know.
    const foreignCa = await createDomainCa('example.test');
    const key = await generateKeyPair();
    const forged = await issueUserCertificate({
      caCertPem: foreignCa.certPem, caKeyPem: foreignCa.keyPem,
      csrPem: await createCsr('alice@example.test', key.privateKeyPem),
      expectedAddress: 'alice@example.test', lifetimeMs: 3600_000,
    });
    const impostor = tls.connect({
      host: '127.0.0.1', port: server.port, servername: 'example.test', rejectUnauthorized: false,
      key: key.privateKeyPem, cert: forged.certPem,
    });
    await closedBy(impostor, 10000);

    const out = server.proc.output();
    expect(out).toMatch(/tls handshake failed/);
    expect(out).toMatch(/client certificate refused/);
    expect(out).toMatch(/decode amp box/i);
    // Every other client is still served.
    expect((await register(server, tempDir('home'), 'frank@example.test')).code).toBe(0);
  });

  it("a user name with '--' (the device separator of bob--laptop.example.test.q2q) is refused, by the CLI and by the server", async () => {
    const refused = await register(server, tempDir('home'), 'bob--laptop@example.test');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toBe(`vertex: invalid user "bob--laptop": '--' is reserved: it separates user and device in DNS-safe names such as bob--laptop.example.com.q2q; use letters, digits, '-' and '_' (1-63 characters, starting and ending with a letter or digit)\n`);
    // A client that skips the CLI's check meets the server's.
    const socket = tls.connect({ host: '127.0.0.1', port: server.port, servername: 'example.test', rejectUnauthorized: false });
    await new Promise((r) => socket.once('secureConnect', r));
    const peer = attachAmp(socket);
    await peer.call('hello', { version: '2' });
    const key = await generateKeyPair();
    const csr = await createCsr('bob-laptop@example.test', key.privateKeyPem);
    const answer = await peer.call('register', { address: 'bob--laptop@example.test', password: PASSWORD, csr }).then(() => 'registered', (e: { code?: string; message?: string }) => `${e.code}: ${e.message}`);
    expect(answer).toMatch(/^InvalidName: invalid user "bob--laptop": '--' is reserved/);
    socket.destroy();
    // The account was never made, and one with a single hyphen is fine.
    expect((await register(server, tempDir('home'), 'bob--laptop@example.test', PASSWORD, 'login')).code).toBe(2);
    expect((await register(server, tempDir('home'), 'bob-laptop@example.test')).code).toBe(0);
  });

  it('exchanges the protocol version in the first box and refuses commands before it', async () => {
    const connect = async () => {
      const socket = tls.connect({ host: '127.0.0.1', port: server.port, servername: 'example.test', rejectUnauthorized: false });
      await new Promise((r) => socket.once('secureConnect', r));
      return { socket, peer: attachAmp(socket) };
    };
    const codeOf = (p: Promise<unknown>) => p.then(() => 'ok', (e: { code?: string }) => e.code);

    const early = await connect();
    expect(await codeOf(early.peer.call('who-am-i'))).toBe('ProtocolVersion');
    const hello = await early.peer.call('hello', { version: '2' });
    expect(hello.version).toBe('2');
    expect((await early.peer.call('who-am-i')).host).toBe('127.0.0.1');
    early.socket.destroy();

    const future = await connect();
    expect(await codeOf(future.peer.call('hello', { version: '3' }))).toBe('ProtocolVersion');
    await closedBy(future.socket, 5000);
  });

  it('control connections speak ALPN q2q/2 (another protocol is refused) and never resume a TLS session', async () => {
    const open = (opts: tls.ConnectionOptions) => {
      const socket = tls.connect({ host: '127.0.0.1', port: server.port, servername: 'example.test', rejectUnauthorized: false, ...opts });
      const sessions: Buffer[] = [];
      socket.on('session', (s: Buffer) => sessions.push(s));
      const ready = new Promise<void>((resolve, reject) => {
        socket.once('secureConnect', () => resolve());
        socket.once('error', reject);
      });
      return { socket, sessions, ready };
    };
    const first = open({ ALPNProtocols: ['q2q/2'] });
    await first.ready;
    expect(first.socket.alpnProtocol).toBe('q2q/2');
    // TLS 1.3 tickets come after the handshake: an answer to hello is read after them.
    const peer = attachAmp(first.socket);
    expect((await peer.call('hello', { version: '2' })).version).toBe('2');
    first.socket.destroy();
    // With tickets off OpenSSL still sends tickets that only name a session (kept nowhere):
    // whatever the client was sent, offering it back gets a full handshake.
    expect(first.sessions.length).toBeGreaterThan(0);
    for (const session of first.sessions) {
      const again = open({ ALPNProtocols: ['q2q/2'], session });
      await again.ready;
      expect(again.socket.isSessionReused()).toBe(false);
      again.socket.destroy();
    }
    const other = open({ ALPNProtocols: ['http/1.1'] });
    await expect(other.ready).rejects.toMatchObject({ code: 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL' });
  });

  it('admin subcommands: add-user then login, revoke, remove-user', async () => {
    const data = ['--data', server.dataDir];
    const add = await runVertex(['server', 'add-user', 'grace@example.test', ...data, '--password-stdin'], { input: PASSWORD });
    expect(add.stderr).toBe('');
    expect(add.code).toBe(0);
    const home = tempDir('home');
    const login = await register(server, home, 'grace@example.test', PASSWORD, 'login');
    expect(login.code).toBe(0);
    const serial = describeCertificate(fs.readFileSync(certFile(home, 'grace@example.test'), 'utf8')).serial;
    expect((await runVertex(['server', 'revoke', serial, ...data])).code).toBe(0);
    expect((await runVertex(['server', 'revoke', 'abcdef', ...data])).code).toBe(3);
    const list = await runVertex(['server', 'list-users', ...data, '--json']);
    expect(JSON.parse(list.stdout).map((r: { address: string }) => r.address)).toContain('grace@example.test');
    expect((await runVertex(['server', 'remove-user', 'grace@example.test', ...data])).code).toBe(0);
    expect((await register(server, tempDir('home'), 'grace@example.test', PASSWORD, 'login')).code).toBe(3);
  });
});

describe('registration modes', () => {
  it('with no registration setting (invite, the default) a one-time code is needed; closed refuses', async () => {
    const server = await startServer(['inv.test'], { registration: 'default' });
    const noCode = await register(server, tempDir('home'), 'alice@inv.test');
    expect(noCode.code).toBe(3);
    expect(noCode.stderr).toMatch(/needs an invitation code/);
    const invite = await runVertex(['server', 'invite', '--data', server.dataDir, '--domain', 'inv.test']);
    expect(invite.code).toBe(0);
    const code = invite.stdout.trim();
    const args = (home: string, who: string) => [...server.resolveArg('inv.test'), '--home', home, 'register', who, '--password-stdin', '--invite', code];
    expect((await runVertex(args(tempDir('home'), 'alice@inv.test'), { input: PASSWORD })).code).toBe(0);
    const reused = await runVertex(args(tempDir('home'), 'bob@inv.test'), { input: PASSWORD });
    expect(reused.code).toBe(3);
    expect(reused.stderr).toMatch(/unknown, used or expired/);
    await server.proc.stop();

    const closed = await startServer(['closed.test'], { registration: 'closed' });
    const refused = await register(closed, tempDir('home'), 'alice@closed.test');
    expect(refused.code).toBe(5);
    expect(refused.stderr).toMatch(/does not accept registrations/);
    await closed.proc.stop();
  });
});

describe('CA pinning', () => {
  it('refuses a server whose CA changed, printing both fingerprints and the file', async () => {
    const dataDir = tempDir('server');
    const first = await startServer(['pin.test'], { dataDir });
    const home = tempDir('home');
    expect((await register(first, home, 'alice@pin.test')).code).toBe(0);
    await first.proc.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
    const second = await startServer(['pin.test'], { dataDir });
    const result = await register(second, home, 'alice@pin.test', PASSWORD, 'login');
    expect(result.code).toBe(3);
    const fingerprints = result.stderr.match(/SHA256:[A-Za-z0-9+/]{43}/g) ?? [];
    expect(new Set(fingerprints).size).toBe(2);
    expect(result.stderr).toContain(path.join(home, 'known_domains'));
    await second.proc.stop();
  });
});

describe('two domains on one server', () => {
  it('issues each user a certificate from its own domain CA', async () => {
    const server = await startServer(['a.test', 'b.test']);
    const home = tempDir('home');
    expect((await register(server, home, 'alice@a.test')).code).toBe(0);
    expect((await register(server, home, 'bob@b.test')).code).toBe(0);
    const issuer = (who: string) => describeCertificate(fs.readFileSync(certFile(home, who), 'utf8')).issuerCn;
    expect(issuer('alice@a.test')).toBe('a.test');
    expect(issuer('bob@b.test')).toBe('b.test');
    const aCa = path.join(server.dataDir, 'ca', 'a.test', 'cert.pem');
    const bCa = path.join(server.dataDir, 'ca', 'b.test', 'cert.pem');
    expect(openssl(['verify', '-CAfile', aCa, certFile(home, 'alice@a.test')])).toMatch(/: OK/);
    expect(() => openssl(['verify', '-CAfile', bCa, certFile(home, 'alice@a.test')])).toThrow();
    await server.proc.stop();
  });
});

describe('config errors', () => {
  it.each([
    ['unknown key', 'version: 1\ndomains: [a.test]\nlisten: 127.0.0.1:0\nbogus: 1\n', 4, 'bogus'],
    ['wrong type', 'version: 1\ndomains: [a.test]\nrelay:\n  max_streams: lots\n', 4, 'relay.max_streams'],
    ['bad YAML', 'version: 1\n\tdomains: [a.test]\n', 2, ''],
  ])('%s names the file, line and key; exit 6', async (_name, text, line, key) => {
    const file = path.join(tempDir('cfg'), 'server.yaml');
    fs.writeFileSync(file, text);
    const result = await runVertex(['server', '--config', file]);
    expect(result.code).toBe(6);
    expect(result.stderr).toContain(`${file}:${line}`);
    if (key) expect(result.stderr).toContain(key);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
  });
});
