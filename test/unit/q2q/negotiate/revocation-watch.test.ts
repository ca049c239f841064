import { Duplex } from 'node:stream';
import { createCsr, createDomainCa, describeCertificate, generateKeyPair, issueUserCertificate } from '../../../../q2q/identity';
import { CERT_STATUS_INTERVAL_MS, CERT_STATUS_MAX_ENTRIES, RevocationWatch } from '../../../../q2q/negotiate/revocation-watch';
import { ManualClock } from '../../../../q2q/util/clock';

const DAY = 24 * 60 * 60 * 1000;

async function certFor(ca: { certPem: string; keyPem: string }, address: string): Promise<string> {
  const { privateKeyPem } = await generateKeyPair();
  const csrPem = await createCsr(address, privateKeyPem);
  const issued = await issueUserCertificate({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem, expectedAddress: address, lifetimeMs: DAY });
  return issued.certPem;
}

function stream(): Duplex {
  return new Duplex({ read() { /* nothing */ }, write(_c, _e, cb) { cb(); } });
}

/** Settles promise callbacks queued by timers that ManualClock ran. */
const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('revocation watch', () => {
  let mine: string;
  let mallory: string;
  let carol: string;
  let carol2: string;

  beforeAll(async () => {
    const a = await createDomainCa('a.test');
    const c = await createDomainCa('c.test');
    mine = await certFor(a, 'bob@a.test');
    mallory = await certFor(a, 'mallory@a.test');
    carol = await certFor(c, 'carol@c.test');
    carol2 = await certFor(c, 'carol@c.test');
  });

  it('a revoked push closes the streams of that serial or that removed address, and only those', () => {
    const watch = new RevocationWatch({ ownCertificate: () => mine, check: async () => [] });
    const [s1, s2, s3] = [stream(), stream(), stream()];
    const errors: Error[] = [];
    s1.on('error', (e) => errors.push(e));
    watch.track(s1 as Duplex, mallory);
    watch.track(s2 as Duplex, carol);
    watch.track(s3 as Duplex, carol2);
    expect(watch.onRevoked({ serials: ['0' + describeCertificate(mallory).serial.toUpperCase()], addresses: [] })).toBe(1);
    expect([s1.destroyed, s2.destroyed, s3.destroyed]).toEqual([true, false, false]);
    expect(watch.onRevoked({ serials: [], addresses: ['Carol@C.test'] })).toBe(2);
    expect([s2.destroyed, s3.destroyed]).toEqual([true, true]);
    expect(watch.size).toBe(0);
    return flush().then(() => expect(errors.map((e) => (e as Error & { code: string }).code)).toEqual(['CertificateRevoked']));
  });

  it('a push that names our own certificate closes every stream', () => {
    const watch = new RevocationWatch({ ownCertificate: () => mine, check: async () => [] });
    const streams = [stream(), stream()];
    watch.track(streams[0] as Duplex, mallory);
    watch.track(streams[1] as Duplex, carol);
    expect(watch.onRevoked({ serials: [describeCertificate(mine).serial], addresses: [] })).toBe(2);
    expect(streams.every((s) => s.destroyed)).toBe(true);
  });

  it('re-checks open peers with cert-status every interval, in calls of at most 256, and closes what is revoked', async () => {
    const clock = new ManualClock();
    const calls: Array<Array<{ domain: string; serial: string }>> = [];
    const revoked = new Set<string>();
    const watch = new RevocationWatch({
      ownCertificate: () => mine,
      clock,
      check: async (certs) => {
        calls.push(certs);
        // A lying answer naming serials it was not asked about changes nothing.
        return [...certs.map((c) => c.serial).filter((s) => revoked.has(s)), 'abcdef'];
      },
    });
    watch.start();
    const s1 = stream();
    const s2 = stream();
    watch.track(s1, carol);
    watch.track(s2, mallory);
    clock.advance(CERT_STATUS_INTERVAL_MS);
    await flush();
    expect(calls).toEqual([[{ domain: 'c.test', serial: describeCertificate(carol).serial }, { domain: 'a.test', serial: describeCertificate(mallory).serial }]]);
    expect(s1.destroyed || s2.destroyed).toBe(false);
    revoked.add(describeCertificate(carol).serial);
    clock.advance(CERT_STATUS_INTERVAL_MS - 1);
    await flush();
    expect(s1.destroyed).toBe(false);
    clock.advance(1);
    await flush();
    expect([s1.destroyed, s2.destroyed]).toEqual([true, false]);
    // Without the periodic check (the forbidden behaviour) the foreign revocation never arrives.
    const idle = new RevocationWatch({ ownCertificate: () => mine, clock, check: async () => [describeCertificate(carol).serial] });
    const s3 = stream();
    idle.track(s3, carol);
    clock.advance(10 * CERT_STATUS_INTERVAL_MS);
    await flush();
    expect(s3.destroyed).toBe(false);
    watch.stop();
    expect(clock.pendingTimers()).toBe(0);
  });

  it('batches the certificates into calls of at most the batch size (256 by default), each certificate once', async () => {
    expect(CERT_STATUS_MAX_ENTRIES).toBe(256);
    const sizes: number[] = [];
    const watch = new RevocationWatch({ ownCertificate: () => mine, batchSize: 2, check: async (certs) => { sizes.push(certs.length); return []; } });
    for (const c of [mallory, carol, carol2, carol]) watch.track(stream(), c);
    await watch.checkNow();
    expect(sizes).toEqual([2, 1]);
  });

  it('a closed stream is no longer watched', async () => {
    const watch = new RevocationWatch({ ownCertificate: () => mine, check: async () => [] });
    const s = stream();
    watch.track(s, carol);
    expect(watch.size).toBe(1);
    s.destroy();
    await flush();
    expect(watch.size).toBe(0);
  });
});
