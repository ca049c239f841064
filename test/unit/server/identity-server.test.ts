/**
 * The identity server's check of the client certificate presented in TLS,
 * end to end on loopback: who the server says we are in `hello`, and the
 * refusals (revoked, never issued here, expired, wrong CA, wrong domain),
 * each answered with its code as the reply to `hello`.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { isVertexError } from '../../../q2q/errors';
import { createCsr, createDomainCa, generateKeyPair, issueUserCertificate } from '../../../q2q/identity';
import { PROTOCOL_VERSION } from '../../../q2q/control/protocol';
import { attachAmp } from '../../../q2q/transport/amp-connection';
import { caDir } from '../../../server/ca-store';
import { DATABASE_FILE, IdentityServer } from '../../../server/identity-server';
import { SqliteAccountStore } from '../../../server/store/sqlite-store';

const DOMAIN = 'a.test';
const PASSWORD = 'correct horse battery staple';
const HOUR = 60 * 60 * 1000;
const ANSWER_BOUND_MS = 10_000;

interface Credentials {
  keyPem: string;
  certPem: string;
}

let dataDir: string;
let server: IdentityServer;
let port: number;
let alice: Credentials & { serial: string };
let ca: { certPem: string; keyPem: string };

/** A certificate for `address` from `issuer`, not recorded in the server's database. */
async function issueOutside(issuer: { certPem: string; keyPem: string }, address: string, opts: { now?: Date; lifetimeMs?: number } = {}): Promise<Credentials> {
  const { privateKeyPem } = await generateKeyPair();
  const issued = await issueUserCertificate({
    caCertPem: issuer.certPem, caKeyPem: issuer.keyPem, csrPem: await createCsr(address, privateKeyPem),
    expectedAddress: address, lifetimeMs: opts.lifetimeMs ?? HOUR, ...(opts.now ? { now: opts.now } : {}),
  });
  return { keyPem: privateKeyPem, certPem: issued.certPem };
}

/** Connects with `creds` and says hello: the identity the server gives us, or the code it refuses with. */
async function helloAs(creds: Credentials): Promise<{ identity: string | undefined } | { code: string }> {
  const socket = tls.connect({ host: '127.0.0.1', port, servername: DOMAIN, rejectUnauthorized: false, key: creds.keyPem, cert: creds.certPem });
  socket.on('error', () => undefined);
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve);
      socket.once('error', reject);
    });
    const peer = attachAmp(socket, { defaultTimeoutMs: ANSWER_BOUND_MS });
    try {
      const answer = await peer.call('hello', { version: PROTOCOL_VERSION });
      return { identity: answer.identity };
    } catch (err) {
      return { code: isVertexError(err) ? err.code : `not a VertexError: ${String(err)}` };
    }
  } finally {
    socket.destroy();
  }
}

beforeAll(async () => {
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-idsrv-'));
  server = new IdentityServer({
    domains: [DOMAIN],
    listen: { host: '127.0.0.1', port: 0 },
    dataDir,
    registration: 'open',
    certificateLifetimeMs: HOUR,
    limits: { maxConnections: 100, handshakeTimeoutMs: 5000, maxBoxBytes: 64 * 1024 },
    relay: { enabled: false, maxStreams: 1, perUserRate: 1 },
    resolve: async (domain) => {
      throw new Error(`no server for ${domain} in this test`);
    },
  });
  ({ port } = await server.start());
  ca = {
    certPem: fs.readFileSync(path.join(caDir(dataDir, DOMAIN), 'cert.pem'), 'utf8'),
    keyPem: fs.readFileSync(path.join(caDir(dataDir, DOMAIN), 'key.pem'), 'utf8'),
  };
  const { privateKeyPem } = await generateKeyPair();
  const issued = await server.accounts.register({
    address: `alice@${DOMAIN}`, password: PASSWORD, csrPem: await createCsr(`alice@${DOMAIN}`, privateKeyPem), sourceAddress: '127.0.0.1',
  });
  alice = { keyPem: privateKeyPem, certPem: issued.certPem, serial: issued.serial };
});

afterAll(async () => {
  await server.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

describe('client certificates at the identity server', () => {
  it('names the holder of a certificate it issued, on every connection', async () => {
    for (let i = 0; i < 3; i++) expect(await helloAs(alice)).toEqual({ identity: `alice@${DOMAIN}` });
  });

  it('refuses a certificate its CA signed but it never issued, and one that expired', async () => {
    expect(await helloAs(await issueOutside(ca, `alice@${DOMAIN}`))).toEqual({ code: 'CertificateInvalid' });
    const longAgo = new Date(Date.now() - 30 * 24 * HOUR);
    expect(await helloAs(await issueOutside(ca, `alice@${DOMAIN}`, { now: longAgo }))).toEqual({ code: 'CertificateInvalid' });
  });

  it('refuses a certificate from another CA of the same name', async () => {
    const impostorCa = await createDomainCa(DOMAIN);
    expect(await helloAs(await issueOutside(impostorCa, `alice@${DOMAIN}`))).toEqual({ code: 'CertificateInvalid' });
  });

  it('refuses a revoked certificate, and only that one', async () => {
    const { privateKeyPem } = await generateKeyPair();
    const bobIssued = await server.accounts.register({
      address: `bob@${DOMAIN}`, password: PASSWORD, csrPem: await createCsr(`bob@${DOMAIN}`, privateKeyPem), sourceAddress: '127.0.0.1',
    });
    const bob = { keyPem: privateKeyPem, certPem: bobIssued.certPem };
    expect(await helloAs(bob)).toEqual({ identity: `bob@${DOMAIN}` });
    // As `vertex server revoke` does: a second handle on the same database.
    const admin = new SqliteAccountStore(path.join(dataDir, DATABASE_FILE));
    try {
      expect(await admin.revokeCertificate(bobIssued.serial)).toBe(true);
    } finally {
      await admin.close();
    }
    expect(await helloAs(bob)).toEqual({ code: 'CertificateRevoked' });
    expect(await helloAs(alice)).toEqual({ identity: `alice@${DOMAIN}` });
  });
});
