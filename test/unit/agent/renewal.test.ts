import 'reflect-metadata';
import { CertificateRenewer, RETRY_MIN_MS, renewalTime } from '../../../agent/renewal';
import { createCsr, createDomainCa, describeCertificate, generateKeyPair, issueUserCertificate } from '../../../q2q/identity';
import { vertexError } from '../../../q2q/errors';
import type { Identity } from '../../../q2q/negotiate/types';
import { ManualClock } from '../../../q2q/util/clock';

const DAY = 86_400_000;
const T0 = Date.UTC(2030, 0, 1);

describe('CertificateRenewer', () => {
  let ca: { certPem: string; keyPem: string };
  beforeAll(async () => {
    ca = await createDomainCa('a.test', { now: new Date(T0 - DAY) });
  });

  async function issue(at: number): Promise<Identity> {
    const { privateKeyPem } = await generateKeyPair();
    const issued = await issueUserCertificate({
      caCertPem: ca.certPem,
      caKeyPem: ca.keyPem,
      csrPem: await createCsr('alice@a.test', privateKeyPem),
      expectedAddress: 'alice@a.test',
      lifetimeMs: 30 * DAY,
      now: new Date(at),
    });
    return { address: 'alice@a.test', keyPem: privateKeyPem, certPem: issued.certPem };
  }

  async function until(what: string, cond: () => boolean): Promise<void> {
    const deadline = Date.now() + 5000;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  const flush = async (): Promise<void> => {
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  };

  it('renews at two thirds of the lifetime, hands the new identity over, and schedules the next renewal from it', async () => {
    const clock = new ManualClock();
    const wallNow = (): number => T0 + clock.now();
    const first = await issue(T0);
    const cert = describeCertificate(first.certPem);
    const due = renewalTime(cert.notBefore.getTime(), cert.notAfter.getTime()) - T0;
    expect(due).toBeGreaterThan(19 * DAY);
    expect(due).toBeLessThan(21 * DAY);

    const renewedFrom: string[] = [];
    const received: Identity[] = [];
    const issued: Identity[] = [];
    const renewer = new CertificateRenewer({
      identity: first,
      clock,
      wallNow,
      renew: async (current) => {
        renewedFrom.push(current.certPem);
        const next = await issue(wallNow());
        issued.push(next);
        return next;
      },
      onRenewed: (next) => {
        received.push(next);
      },
    });
    renewer.start();
    clock.advance(due - 1);
    await flush();
    expect(renewedFrom).toEqual([]);
    clock.advance(1);
    await until('the first renewal', () => received.length === 1);
    expect(renewedFrom).toEqual([first.certPem]);
    expect(received).toEqual([issued[0]]);
    expect(renewer.identity).toBe(issued[0]);
    // The next renewal is two thirds into the new certificate's life, and uses it.
    clock.advance(due + DAY);
    await until('the second renewal', () => received.length === 2);
    expect(renewedFrom[1]).toBe(issued[0]?.certPem);
    expect(renewer.identity).toBe(issued[1]);
    renewer.stop();
    expect(clock.pendingTimers()).toBe(0);
  });

  it('retries a failed renewal with a doubling delay', async () => {
    const clock = new ManualClock();
    const wallNow = (): number => T0 + clock.now();
    const first = await issue(T0);
    const cert = describeCertificate(first.certPem);
    const due = renewalTime(cert.notBefore.getTime(), cert.notAfter.getTime()) - T0;
    const attempts: number[] = [];
    const renewer = new CertificateRenewer({
      identity: first,
      clock,
      wallNow,
      renew: async () => {
        attempts.push(clock.now());
        throw vertexError('ServerUnavailable', 'a.test server unreachable');
      },
      onRenewed: () => undefined,
    });
    renewer.start();
    clock.advance(due);
    await flush();
    clock.advance(RETRY_MIN_MS);
    await flush();
    clock.advance(2 * RETRY_MIN_MS - 1);
    await flush();
    expect(attempts.map((t) => t - due)).toEqual([0, RETRY_MIN_MS]);
    clock.advance(1);
    await flush();
    expect(attempts.map((t) => t - due)).toEqual([0, RETRY_MIN_MS, 3 * RETRY_MIN_MS]);
    renewer.stop();
    clock.advance(RETRY_MIN_MS * 100);
    await flush();
    expect(attempts).toHaveLength(3);
  });
});
