/**
 * The certificates this layer issues must work as they are used: mutual TLS
 * 1.3 between two agents, each trusting only its domain CA.
 */
import type { AddressInfo } from 'node:net';
import * as tls from 'node:tls';
import { createCsr, createDomainCa, generateKeyPair, issueUserCertificate, verifyUserCertificate } from '../../../../q2q/identity';

const HOUR = 60 * 60 * 1000;

interface Identity {
  keyPem: string;
  certPem: string;
}

async function identityFor(ca: { certPem: string; keyPem: string }, address: string): Promise<Identity> {
  const { privateKeyPem } = await generateKeyPair();
  const csrPem = await createCsr(address, privateKeyPem);
  const issued = await issueUserCertificate({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem, expectedAddress: address, lifetimeMs: HOUR });
  return { keyPem: privateKeyPem, certPem: issued.certPem };
}

interface Outcome {
  serverPeer: tls.PeerCertificate | null;
  clientPeer: tls.PeerCertificate | null;
  serverError: Error | null;
  clientError: Error | null;
  protocol: string | null;
  /** What the client read: the server writes only once it accepted the client. */
  clientRead: string;
}

/** One handshake on 127.0.0.1; resolves once both ends have settled, and closes everything. */
async function handshake(server: { id: Identity; trust: string }, client: { id: Identity | null; trust: string }): Promise<Outcome> {
  const outcome: Outcome = { serverPeer: null, clientPeer: null, serverError: null, clientError: null, protocol: null, clientRead: '' };
  const tlsServer = tls.createServer({
    key: server.id.keyPem,
    cert: server.id.certPem,
    ca: [server.trust],
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
  });
  let serverSettled!: () => void;
  const serverDone = new Promise<void>((resolve) => (serverSettled = resolve));
  tlsServer.on('secureConnection', (socket) => {
    outcome.serverPeer = socket.getPeerCertificate();
    socket.end('hello');
    serverSettled();
  });
  tlsServer.on('tlsClientError', (err) => {
    outcome.serverError = err;
    serverSettled();
  });
  await new Promise<void>((resolve) => tlsServer.listen(0, '127.0.0.1', resolve));
  const { port } = tlsServer.address() as AddressInfo;
  try {
    const clientDone = new Promise<void>((resolve) => {
      const socket = tls.connect({
        host: '127.0.0.1',
        port,
        ...(client.id ? { key: client.id.keyPem, cert: client.id.certPem } : {}),
        ca: [client.trust],
        minVersion: 'TLSv1.3',
        // Peers are named by the q2q: URI, not by DNS; the caller checks that name itself.
        checkServerIdentity: () => undefined,
      });
      socket.on('secureConnect', () => {
        outcome.clientPeer = socket.getPeerCertificate();
        outcome.protocol = socket.getProtocol();
      });
      // Under TLS 1.3 the server's verdict on the client certificate arrives after the client's
      // handshake ends, so wait for the server's data or the alert.
      socket.on('data', (chunk: Buffer) => {
        outcome.clientRead += chunk.toString();
        socket.end();
      });
      socket.on('error', (err) => {
        outcome.clientError = err;
        socket.destroy();
      });
      socket.on('close', () => resolve());
    });
    await Promise.race([
      Promise.all([clientDone, serverDone]),
      new Promise((_, reject) => setTimeout(() => reject(new Error('handshake did not settle in 30 s')), 30_000).unref()),
    ]);
  } finally {
    await new Promise<void>((resolve) => tlsServer.close(() => resolve()));
  }
  return outcome;
}

let caA: { certPem: string; keyPem: string };
let caB: { certPem: string; keyPem: string };
let alice: Identity;
let bob: Identity;
let mallory: Identity;

beforeAll(async () => {
  caA = await createDomainCa('a.test');
  caB = await createDomainCa('b.test');
  alice = await identityFor(caA, 'alice@a.test');
  bob = await identityFor(caA, 'bob@a.test');
  mallory = await identityFor(caB, 'mallory@b.test');
});

describe('mutual TLS with issued certificates', () => {
  it('completes a TLS 1.3 handshake where each side sees the other by its q2q URI', async () => {
    const out = await handshake({ id: bob, trust: caA.certPem }, { id: alice, trust: caA.certPem });
    expect(out.serverError).toBeNull();
    expect(out.clientError).toBeNull();
    expect(out.protocol).toBe('TLSv1.3');
    expect(out.clientRead).toBe('hello');
    expect(out.serverPeer?.subjectaltname).toBe('URI:q2q:alice@a.test');
    expect(out.clientPeer?.subjectaltname).toBe('URI:q2q:bob@a.test');
    const raw = out.serverPeer?.raw;
    expect(raw).toBeDefined();
    const pem = `-----BEGIN CERTIFICATE-----\n${raw!.toString('base64')}\n-----END CERTIFICATE-----\n`;
    expect(() => verifyUserCertificate(pem, caA.certPem, { expectedAddress: 'alice@a.test' })).not.toThrow();
  });

  it('works across domains when each side trusts the other domain CA', async () => {
    const out = await handshake({ id: bob, trust: caB.certPem }, { id: mallory, trust: caA.certPem });
    expect(out.serverError).toBeNull();
    expect(out.clientError).toBeNull();
    expect(out.serverPeer?.subjectaltname).toBe('URI:q2q:mallory@b.test');
  });

  it('server refuses a client certificate from a CA it does not trust', async () => {
    const out = await handshake({ id: bob, trust: caA.certPem }, { id: mallory, trust: caA.certPem });
    expect(out.serverPeer).toBeNull();
    expect(out.serverError).not.toBeNull();
    expect(out.clientRead).toBe('');
  });

  it('client refuses a server certificate from a CA it does not trust', async () => {
    const out = await handshake({ id: mallory, trust: caA.certPem }, { id: alice, trust: caA.certPem });
    expect(out.clientPeer).toBeNull();
    expect(out.clientError).not.toBeNull();
    expect((out.clientError as NodeJS.ErrnoException).code).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  });

  it('refuses a client that presents no certificate', async () => {
    const out = await handshake({ id: bob, trust: caA.certPem }, { id: null, trust: caA.certPem });
    expect(out.serverPeer).toBeNull();
    expect(out.serverError).not.toBeNull();
    expect(out.clientRead).toBe('');
  });
});
