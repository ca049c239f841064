/**
 * Peer TLS shares one secure context per identity across connections: the
 * same context while the identity stays, a new one when it is renewed, and
 * the handshakes on shared contexts still present and check the right
 * certificates.
 */
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import type * as tls from 'node:tls';
import { isVertexError } from '../../../../q2q/errors';
import { certificateFingerprint, createCsr, createDomainCa, generateKeyPair, issueUserCertificate } from '../../../../q2q/identity';
import { peerSecureContext, tlsClientOver, tlsServerOver } from '../../../../q2q/negotiate/peer-tls';
import type { Identity } from '../../../../q2q/negotiate/types';

const HOUR = 60 * 60 * 1000;
const HANDSHAKE_BOUND_MS = 10_000;

let ca: { certPem: string; keyPem: string };

async function identityFor(address: string, keyPem?: string): Promise<Identity> {
  const key = keyPem ?? (await generateKeyPair()).privateKeyPem;
  const csrPem = await createCsr(address, key);
  const issued = await issueUserCertificate({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem, expectedAddress: address, lifetimeMs: HOUR });
  return { address, keyPem: key, certPem: issued.certPem };
}

beforeAll(async () => {
  ca = await createDomainCa('example.test');
});

describe('peerSecureContext', () => {
  it('gives one context per identity, also to an equal copy of it', async () => {
    const alice = await identityFor('alice@example.test');
    const context = peerSecureContext(alice);
    expect(peerSecureContext(alice)).toBe(context);
    expect(peerSecureContext({ ...alice })).toBe(context);
    expect(peerSecureContext(await identityFor('bob@example.test'))).not.toBe(context);
  });

  it('builds a new context for a renewed certificate and keeps the old one while it is still used', async () => {
    const alice = await identityFor('alice@example.test');
    const before = peerSecureContext(alice);
    const renewed = await identityFor('alice@example.test', alice.keyPem);
    expect(peerSecureContext(renewed)).not.toBe(before);
    expect(peerSecureContext(alice)).toBe(before);
  });

  it('never serves a cached context for another key under the same certificate', async () => {
    const alice = await identityFor('alice@example.test');
    peerSecureContext(alice);
    const { privateKeyPem: otherKey } = await generateKeyPair();
    // Built afresh, so OpenSSL sees that the key does not match the certificate.
    expect(() => peerSecureContext({ ...alice, keyPem: otherKey })).toThrow(/key values mismatch/);
  });

  it('keeps a bounded number of contexts, least recently used out first', async () => {
    const first = await identityFor('first@example.test');
    const kept = peerSecureContext(first);
    const others = await Promise.all(Array.from({ length: 15 }, (_, i) => identityFor(`user${i}@example.test`)));
    // Seven newer identities fit beside it; using it again makes it the most recent.
    for (const other of others.slice(0, 7)) peerSecureContext(other);
    expect(peerSecureContext(first)).toBe(kept);
    // Eight more push it out.
    for (const other of others.slice(7)) peerSecureContext(other);
    expect(peerSecureContext(first)).not.toBe(kept);
  });
});

describe('tlsClientOver / tlsServerOver on shared contexts', () => {
  /** One peer TLS connection over loopback TCP; resolves with both ends' view or the client's error. */
  async function connectOnce(server: Identity, client: Identity, expectedServerCert: string) {
    const listener = net.createServer();
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    const accepted = new Promise<net.Socket>((resolve) => listener.once('connection', resolve));
    const raw = net.connect((listener.address() as AddressInfo).port, '127.0.0.1');
    const serverSide = accepted.then((s) => tlsServerOver(s, server, 'test server', HANDSHAKE_BOUND_MS));
    const clientSide = tlsClientOver(raw, client, expectedServerCert, 'test client', HANDSHAKE_BOUND_MS);
    const [c, s] = await Promise.allSettled([clientSide, serverSide]);
    const sockets = [c, s].flatMap((r) => (r.status === 'fulfilled' ? [r.value as tls.TLSSocket] : []));
    const result = {
      clientError: c.status === 'rejected' ? (c.reason as unknown) : null,
      serverError: s.status === 'rejected' ? (s.reason as unknown) : null,
      serverSawClient: s.status === 'fulfilled' ? certificateFingerprint(s.value.getPeerX509Certificate()?.toString() ?? '') : null,
    };
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => listener.close(() => resolve()));
    return result;
  }

  it('connects again and again on the same contexts, each end presenting its own certificate', async () => {
    const alice = await identityFor('alice@example.test');
    const bob = await identityFor('bob@example.test');
    for (let i = 0; i < 3; i++) {
      const result = await connectOnce(bob, alice, bob.certPem);
      expect(result.clientError).toBeNull();
      expect(result.serverSawClient).toBe(certificateFingerprint(alice.certPem));
    }
  });

  it('presents the renewed certificate once the identity is renewed, and a client expecting the old one refuses it', async () => {
    const alice = await identityFor('alice@example.test');
    const bob = await identityFor('bob@example.test');
    expect((await connectOnce(bob, alice, bob.certPem)).clientError).toBeNull();
    const renewedBob = await identityFor('bob@example.test', bob.keyPem);
    expect((await connectOnce(renewedBob, alice, renewedBob.certPem)).clientError).toBeNull();
    const stale = await connectOnce(renewedBob, alice, bob.certPem);
    expect(isVertexError(stale.clientError, 'CertificateInvalid')).toBe(true);
    // The listener learns at once that the caller hung up, rather than at its handshake timeout.
    expect(isVertexError(stale.serverError, 'ConnectionLost')).toBe(true);
  });
});
