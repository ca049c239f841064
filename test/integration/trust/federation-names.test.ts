/**
 * Issue 11, item 7: a client certificate's issuer names the domain whose CA
 * the server fetches, before anything is authenticated. Federation must not
 * touch the network or the file system with a name that is not a valid
 * domain, must keep network details out of what an unauthenticated client is
 * told, and must honour federation.allow.
 *
 * The attacker is a raw TLS client with certificates made here (CAs with any
 * CN we like), against a real `vertex server`. Each property is also checked
 * against an in-process IdentityServer with the forbidden behaviour switched
 * on (unsafeForTests), to show the checks can fail.
 */
import { randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { openServerConnection } from '../../../q2q/control/server-connection';
import { createServerResolver } from '../../../q2q/control/discovery';
import { generateKeyPair, importSigningKeys } from '../../../q2q/identity/keys';
import { OID, x509 } from '../../../q2q/identity/x509';
import { IdentityServer } from '../../../server/identity-server';
import { Federation } from '../../../server/federation';
import { createCsr, issueUserCertificate } from '../../../q2q/identity';
import { silentLogger } from '../../../q2q/util/log';
import { startServer, stopAll, tempDir, type ServerHandle } from '../../helpers/cli';
import { listenOnPort0, refusedPort, untilTrue } from '../../helpers/net';

/**
 * Where the old code would dial an issuer CN that is an IP: that IP at the default port 8788.
 * A loopback address nothing else uses, drawn per run (two `npm test` side by side each get
 * their own; a fixed one made the second fail with EADDRINUSE).
 */
let trapIp = '';

async function trapOnTheDefaultPort(): Promise<Awaited<ReturnType<typeof trap>>> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const ip = `127.${randomInt(64, 255)}.${randomInt(0, 256)}.${randomInt(1, 255)}`;
    try {
      const bound = await trap(ip, 8788);
      trapIp = ip;
      return bound;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
    }
  }
  throw new Error('no free loopback address for the trap at port 8788 in 20 tries');
}

interface Identity { keyPem: string; certPem: string }

/** A CA with CN `issuerCn` (anything, unchecked) and a user certificate it signed for `address`. */
async function crafted(issuerCn: string, address: string): Promise<Identity> {
  const now = Date.now();
  const notBefore = new Date(now - 60_000);
  const notAfter = new Date(now + 3_600_000);
  const ca = await importSigningKeys((await generateKeyPair()).privateKeyPem);
  const caCert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01', name: [{ [OID.commonName]: [issuerCn] }], notBefore, notAfter,
    keys: ca.keys, signingAlgorithm: ca.signingAlgorithm,
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
  });
  const userKey = (await generateKeyPair()).privateKeyPem;
  const user = await importSigningKeys(userKey);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '02', subject: [{ [OID.commonName]: [address] }], issuer: caCert.subjectName, notBefore, notAfter,
    publicKey: user.keys.publicKey, signingKey: ca.keys.privateKey, signingAlgorithm: ca.signingAlgorithm,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `q2q:${address}` }])],
  });
  return { keyPem: userKey, certPem: cert.toString('pem') };
}

/** What the server tells this certificate's holder: the refusal of its first command, as code and message. */
async function reply(port: number, identity: Identity): Promise<{ code: string; message: string }> {
  try {
    const connection = await openServerConnection({
      domain: 'a.test',
      resolve: createServerResolver({ overrides: { 'a.test': { host: '127.0.0.1', port } } }),
      trust: { pinDomainCa: () => 'new' },
      credentials: identity,
    });
    connection.close();
    return { code: 'accepted', message: '' };
  } catch (err) {
    return { code: (err as { code?: string }).code ?? 'none', message: (err as Error).message };
  }
}

/** A listener that counts TCP connections and cuts each one at once. */
async function trap(host = '127.0.0.1', port = 0): Promise<{ port: number; count: () => number; close: () => void }> {
  let count = 0;
  const server = net.createServer((s) => { count++; s.destroy(); });
  const bound = port === 0
    ? await listenOnPort0(server, host)
    : await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve(port));
    });
  return { port: bound, count: () => count, close: () => server.close() };
}

function serverYaml(dir: string, federation: string): string {
  const file = path.join(dir, 'server.yaml');
  fs.writeFileSync(file, `version: 1\ndomains: [a.test]\nregistration: open\n${federation}`);
  return file;
}

let ipTrap: Awaited<ReturnType<typeof trap>>;
let nameTrap: Awaited<ReturnType<typeof trap>>;
let refused: number;
let root: string;

beforeAll(async () => {
  ipTrap = await trapOnTheDefaultPort();
  nameTrap = await trap();
  refused = await refusedPort();
  root = tempDir('federation');
});

afterAll(async () => {
  ipTrap.close();
  nameTrap.close();
  await stopAll();
});

/** A data directory three levels below `root`, so that foreign-ca/../../../probe.pem is root/x/probe.pem. */
function deepDataDir(name: string): { dataDir: string; probe: string } {
  const x = path.join(root, name);
  const dataDir = path.join(x, 'y', 'data');
  fs.mkdirSync(dataDir, { recursive: true });
  return { dataDir, probe: path.join(x, 'probe.pem') };
}

const federationSection = () => `federation:\n  servers:\n    b.test: 127.0.0.1:${refused}\n    evil.test: 127.0.0.1:${nameTrap.port}\n`;

interface Target { port: number; log: () => string; probe: string }

/** The behaviour under test, the same for the real server and the forbidden one. */
async function probeBadNames(target: Target): Promise<{ dials: number; replies: Record<string, { code: string; message: string }>; oracle: boolean }> {
  const before = ipTrap.count();
  const replies: Record<string, { code: string; message: string }> = {};
  for (const issuer of [trapIp, 'a.test/../x', 'b.test\u0000', '-bad-.test', 'x'.repeat(300)]) {
    replies[issuer] = await reply(target.port, await crafted(issuer, `alice@${issuer}`));
  }
  const dials = ipTrap.count() - before;
  // The file-existence oracle: the same name with and without a file at the traversed path.
  fs.rmSync(target.probe, { force: true });
  const absent = await reply(target.port, await crafted('../../../probe', 'alice@probe.test'));
  fs.writeFileSync(target.probe, (await crafted('probe', 'x@probe')).certPem);
  const present = await reply(target.port, await crafted('../../../probe', 'alice@probe.test'));
  replies['../../../probe'] = present;
  return { dials, replies, oracle: absent.message !== present.message || absent.code !== present.code };
}

describe('federation with names chosen by unauthenticated clients (issue 11, item 7)', () => {
  let open: ServerHandle;
  let strict: ServerHandle;
  let openProbe: string;

  beforeAll(async () => {
    const o = deepDataDir('open');
    openProbe = o.probe;
    open = await startServer([], { dataDir: o.dataDir, extraArgs: ['--config', serverYaml(path.dirname(o.dataDir), federationSection())] });
    const s = deepDataDir('strict');
    strict = await startServer([], {
      dataDir: s.dataDir,
      extraArgs: ['--config', serverYaml(path.dirname(s.dataDir), `${federationSection()}  allow: [b.test]\n`)],
    });
  });

  it('never dials, never reaches the file system with an invalid issuer name, and says nothing about either', async () => {
    const result = await probeBadNames({ port: open.port, log: () => open.proc.output(), probe: openProbe });
    expect(result.dials).toBe(0);
    expect(result.oracle).toBe(false);
    for (const [issuer, r] of Object.entries(result.replies)) {
      expect({ issuer, ...r }).toEqual({ issuer, code: 'CertificateInvalid', message: 'client certificate refused: its issuer or q2q address is not a valid name' });
    }
  });

  it('tells the client one generic line with a stable code when the foreign server is down; the details are in the server log', async () => {
    const from = open.proc.output().length;
    const r = await reply(open.port, await crafted('b.test', 'alice@b.test'));
    expect(r).toEqual({ code: 'ServerUnavailable', message: "cannot verify certificate from b.test: a.test's server could not get b.test's CA; its operator can see why in the server log" });
    expect(r.message).not.toMatch(/ECONN|127\.0\.0\.1|:\d+/);
    await open.proc.waitFor(
      new RegExp(`cannot check a certificate of alice@b\\.test: b\\.test's server at 127\\.0\\.0\\.1:${refused} did not answer \\(ECONNREFUSED\\); check federation\\.servers or --resolve`),
      undefined, from,
    );
  });

  it('with federation.allow, refuses other domains without looking them up', async () => {
    const before = nameTrap.count();
    const r = await reply(strict.port, await crafted('evil.test', 'mallory@evil.test'));
    expect(r).toEqual({ code: 'NotAllowed', message: 'client certificate refused: a.test does not federate with evil.test' });
    // The same name on the server without an allow list does reach the trap: the count can move.
    const other = await reply(open.port, await crafted('evil.test', 'mallory@evil.test'));
    expect(other.code).toBe('ServerUnavailable');
    await untilTrue('the open server to dial evil.test', () => nameTrap.count() > before);
    expect(nameTrap.count() - before).toBe(1);
    // An allowed domain is still looked up (and here found down).
    expect((await reply(strict.port, await crafted('b.test', 'alice@b.test'))).code).toBe('ServerUnavailable');
  });

  it('can fail: the forbidden behaviour (raw names, no allow list, details to the client) is caught by the same checks', async () => {
    const { dataDir, probe } = deepDataDir('unsafe');
    const unsafe = new IdentityServer({
      domains: ['a.test'], listen: { host: '127.0.0.1', port: 0 }, dataDir, registration: 'open', certificateLifetimeMs: 3_600_000,
      limits: { maxConnections: 100, handshakeTimeoutMs: 10_000, maxBoxBytes: 262_144 },
      relay: { enabled: true, maxStreams: 10, perUserRate: 0 },
      resolve: createServerResolver({ overrides: { 'b.test': { host: '127.0.0.1', port: refused }, 'evil.test': { host: '127.0.0.1', port: nameTrap.port } } }),
      federation: { allow: ['b.test'], unsafeForTests: { rawNames: true, ignoreAllow: true, detailedRefusals: true } },
    });
    const { port } = await unsafe.start();
    try {
      const result = await probeBadNames({ port, log: () => '', probe });
      expect(result.dials).toBeGreaterThan(0);
      expect(result.oracle).toBe(true);
      expect((await reply(port, await crafted('b.test', 'alice@b.test'))).message).toMatch(/ECONNREFUSED/);
      const before = nameTrap.count();
      expect((await reply(port, await crafted('evil.test', 'mallory@evil.test'))).code).not.toBe('NotAllowed');
      expect(nameTrap.count()).toBeGreaterThan(before);
    } finally {
      await unsafe.stop();
    }
  });
});

describe('a foreign CA that changed, after the operator removes its pin', () => {
  /** An in-process b.test server with a fresh CA, and a certificate it signed for bob. */
  async function domainB(): Promise<{ server: IdentityServer; port: number; bobCert: string }> {
    const dataDir = tempDir('b-data');
    const server = new IdentityServer({
      domains: ['b.test'], listen: { host: '127.0.0.1', port: 0 }, dataDir, registration: 'open', certificateLifetimeMs: 3_600_000,
      limits: { maxConnections: 100, handshakeTimeoutMs: 10_000, maxBoxBytes: 262_144 },
      relay: { enabled: false, maxStreams: 10, perUserRate: 0 },
    });
    const { port } = await server.start();
    const caKeyPem = fs.readFileSync(path.join(dataDir, 'ca', 'b.test', 'key.pem'), 'utf8');
    const caCertPem = fs.readFileSync(path.join(dataDir, 'ca', 'b.test', 'cert.pem'), 'utf8');
    const key = (await generateKeyPair()).privateKeyPem;
    const { certPem } = await issueUserCertificate({ caCertPem, caKeyPem, csrPem: await createCsr('bob@b.test', key), expectedAddress: 'bob@b.test', lifetimeMs: 3_600_000 });
    return { server, port, bobCert: certPem };
  }

  async function run(unsafeForTests?: { rawNames: boolean }): Promise<'accepted' | string> {
    const b1 = await domainB();
    let bPort = b1.port;
    const fedDir = tempDir('fed');
    const federation = new Federation({
      dataDir: fedDir, log: silentLogger, localDomains: ['a.test'],
      resolve: async () => [{ host: '127.0.0.1', port: bPort, via: 'override' }],
      ...(unsafeForTests && { unsafeForTests }),
    });
    await federation.authenticate(b1.bobCert, 'b.test', 'bob@b.test');
    await b1.server.stop();
    // b.test's operator starts over with a new CA; a.test's operator accepts it by removing the pin.
    const b2 = await domainB();
    bPort = b2.port;
    try {
      const known = path.join(fedDir, 'known_domains');
      fs.writeFileSync(known, fs.readFileSync(known, 'utf8').split('\n').filter((l) => !l.startsWith('b.test ')).join('\n'));
      return await federation.authenticate(b2.bobCert, 'b.test', 'bob@b.test').then(() => 'accepted', (err: Error) => err.message);
    } finally {
      await b2.server.stop();
    }
  }

  it('fetches and pins the new CA instead of re-pinning the stale copy; the old behaviour would not', async () => {
    expect(await run()).toBe('accepted');
    expect(await run({ rawNames: true })).toMatch(/not signed by the ca of b\.test/);
  });
});
