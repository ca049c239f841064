/**
 * The store-compliance suite: one set of cases every AccountStore must pass
 * (STYLE.md: one suite, many implementations, as libp2p's
 * interface-compliance-tests). Run by the SQLite test and the PostgreSQL one.
 */
import { isVertexError } from '../../q2q/errors';
import type { AccountStore } from '../../server/store/account-store';

export interface StoreFixture {
  store: AccountStore;
  /** A second handle on the same data, as an admin command or another node holds. */
  second(): Promise<AccountStore>;
  /** Moves the store's clock (the one its timestamps come from). */
  setNow(ms: number): void;
  cleanup(): Promise<void>;
}

export function accountStoreSuite(name: string, open: () => Promise<StoreFixture>): void {
  describe(`AccountStore compliance: ${name}`, () => {
    let f: StoreFixture;
    let store: AccountStore;
    beforeEach(async () => {
      f = await open();
      store = f.store;
    });
    afterEach(async () => {
      await f.cleanup();
    });

    it('creates, finds and refuses a taken name with NameTaken', async () => {
      await store.createAccount('a.test', 'alice', 'hash1');
      expect((await store.getAccount('a.test', 'alice'))?.passwordHash).toBe('hash1');
      expect(await store.getAccount('b.test', 'alice')).toBeNull();
      let code = '';
      try { await store.createAccount('a.test', 'alice', 'hash2'); } catch (err) { code = isVertexError(err) ? err.code : 'other'; }
      expect(code).toBe('NameTaken');
      expect((await store.getAccount('a.test', 'alice'))?.passwordHash).toBe('hash1');
    });

    it('one of two concurrent creations of a name wins; the other gets NameTaken', async () => {
      const other = await f.second();
      try {
        const results = await Promise.allSettled([store.createAccount('a.test', 'race', 'h1'), other.createAccount('a.test', 'race', 'h2')]);
        expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
        expect(isVertexError(failed.reason) && failed.reason.code).toBe('NameTaken');
      } finally {
        await other.close();
      }
    });

    it('replaces a password hash', async () => {
      await store.createAccount('a.test', 'alice', 'old');
      expect(await store.setPasswordHash('a.test', 'alice', 'new')).toBe(true);
      expect((await store.getAccount('a.test', 'alice'))?.passwordHash).toBe('new');
      expect(await store.setPasswordHash('a.test', 'nobody', 'x')).toBe(false);
    });

    it('lists accounts, per domain or all, sorted', async () => {
      await store.createAccount('b.test', 'zed', 'h');
      await store.createAccount('a.test', 'bob', 'h');
      await store.createAccount('a.test', 'alice', 'h');
      expect((await store.listAccounts()).map((a) => `${a.user}@${a.domain}`)).toEqual(['alice@a.test', 'bob@a.test', 'zed@b.test']);
      expect((await store.listAccounts('a.test')).map((a) => a.user)).toEqual(['alice', 'bob']);
    });

    it('records and revokes certificates; removing an account revokes its certificates', async () => {
      await store.createAccount('a.test', 'alice', 'h');
      await store.recordCertificate({ serial: 'aa01', domain: 'a.test', user: 'alice', notBefore: 1, notAfter: 2 });
      await store.recordCertificate({ serial: 'aa02', domain: 'a.test', user: 'alice', notBefore: 1, notAfter: 2 });
      expect(await store.revokeCertificate('AA01')).toBe(true);
      expect((await store.getCertificate('aa01'))?.revokedAt).not.toBeNull();
      expect((await store.getCertificate('aa02'))?.revokedAt).toBeNull();
      expect(await store.revokeCertificate('ffff')).toBe(false);
      expect(await store.removeAccount('a.test', 'alice')).toBe(true);
      expect((await store.getCertificate('aa02'))?.revokedAt).not.toBeNull();
      expect(await store.getAccount('a.test', 'alice')).toBeNull();
      expect(await store.removeAccount('a.test', 'alice')).toBe(false);
    });

    it('invites are single use and expire', async () => {
      await store.createInvite('a.test', 'code1', 1000);
      expect(await store.consumeInvite('a.test', 'code1', 2000)).toBe(false);
      await store.createInvite('a.test', 'code2', 5000);
      expect(await store.consumeInvite('b.test', 'code2', 100)).toBe(false);
      expect(await store.consumeInvite('a.test', 'code2', 100)).toBe(true);
      expect(await store.consumeInvite('a.test', 'code2', 100)).toBe(false);
    });

    it('registerAccount: the invite, the account and its certificate all or nothing', async () => {
      const cert = (serial: string) => ({ serial, notBefore: 1, notAfter: 2 });
      const codeOf = async (p: Promise<unknown>) => { try { await p; return 'ok'; } catch (err) { return isVertexError(err) ? err.code : 'other'; } };
      await store.createInvite('a.test', 'inv1', 10_000);
      expect(await store.inviteUsable('a.test', 'inv1', 5)).toBe(true);
      expect(await store.inviteUsable('a.test', 'nope', 5)).toBe(false);
      expect(await codeOf(store.registerAccount({ domain: 'a.test', user: 'rae', passwordHash: 'h', certificate: cert('aa01'), invite: { code: 'inv1', now: 5 } }))).toBe('ok');
      expect((await store.getAccount('a.test', 'rae'))?.passwordHash).toBe('h');
      expect((await store.getCertificate('aa01'))?.user).toBe('rae');
      expect(await store.inviteUsable('a.test', 'inv1', 5)).toBe(false);
      // A used invite: nothing is written.
      expect(await codeOf(store.registerAccount({ domain: 'a.test', user: 'sid', passwordHash: 'h', certificate: cert('aa02'), invite: { code: 'inv1', now: 6 } }))).toBe('BadInvite');
      expect(await store.getAccount('a.test', 'sid')).toBeNull();
      expect(await store.getCertificate('aa02')).toBeNull();
      // A taken name: the invite is not used up, and no certificate is recorded.
      await store.createInvite('a.test', 'inv2', 10_000);
      expect(await codeOf(store.registerAccount({ domain: 'a.test', user: 'rae', passwordHash: 'h2', certificate: cert('aa03'), invite: { code: 'inv2', now: 7 } }))).toBe('NameTaken');
      expect(await store.getCertificate('aa03')).toBeNull();
      expect((await store.getAccount('a.test', 'rae'))?.passwordHash).toBe('h');
      expect(await store.consumeInvite('a.test', 'inv2', 8)).toBe(true);
      // Without an invite (open registration).
      expect(await codeOf(store.registerAccount({ domain: 'a.test', user: 'tom', passwordHash: 'h', certificate: cert('aa04') }))).toBe('ok');
    });

    it('an invite used by two handles at once is used once', async () => {
      await store.createInvite('a.test', 'once', 10_000);
      const other = await f.second();
      try {
        const results = await Promise.all([store.consumeInvite('a.test', 'once', 1), other.consumeInvite('a.test', 'once', 1)]);
        expect(results.filter(Boolean)).toHaveLength(1);
      } finally {
        await other.close();
      }
    });

    it('the change feed carries revocations and removals, in order, once each, to every handle', async () => {
      const start = await store.latestEventId();
      f.setNow(5000);
      await store.createAccount('a.test', 'alice', 'h');
      await store.createAccount('a.test', 'bob', 'h');
      await store.recordCertificate({ serial: 'bb01', domain: 'a.test', user: 'bob', notBefore: 1, notAfter: 2 });
      await store.recordCertificate({ serial: 'aa01', domain: 'a.test', user: 'alice', notBefore: 1, notAfter: 2 });
      expect(await store.eventsAfter(start)).toEqual([]);
      const other = await f.second();
      try {
        await other.revokeCertificate('bb01');
        await other.revokeCertificate('bb01'); // already revoked: no second event
        await store.removeAccount('a.test', 'alice');
        await store.removeAccount('a.test', 'alice'); // gone: no event
        const events = await store.eventsAfter(start);
        expect(events.map((e) => ({ ...e, id: 0 }))).toEqual([
          { id: 0, at: expect.any(Number), kind: 'certificate-revoked', domain: 'a.test', user: 'bob', serial: 'bb01' },
          { id: 0, at: 5000, kind: 'account-removed', domain: 'a.test', user: 'alice' },
        ]);
        const [first, second] = events;
        expect(second!.id).toBeGreaterThan(first!.id);
        expect(await store.latestEventId()).toBe(second!.id);
        expect(await store.eventsAfter(first!.id)).toEqual([second]);
        expect(await store.eventsAfter(second!.id)).toEqual([]);
        expect(await store.eventsAfter(start, 1)).toEqual([first]);
        expect(await other.eventsAfter(start)).toEqual(events);
      } finally {
        await other.close();
      }
    });

    it("a change made through a handle wakes that handle's onChange listeners; unsubscribing stops them", async () => {
      await store.createAccount('a.test', 'carol', 'h');
      await store.recordCertificate({ serial: 'cc01', domain: 'a.test', user: 'carol', notBefore: 1, notAfter: 2 });
      await store.recordCertificate({ serial: 'cc02', domain: 'a.test', user: 'carol', notBefore: 1, notAfter: 2 });
      let wakes = 0;
      const woken = new Promise<void>((resolve) => {
        const off = store.onChange(() => { wakes++; off(); resolve(); });
      });
      await store.revokeCertificate('cc01');
      await woken;
      expect(wakes).toBe(1);
      // The listener is gone: a second change reaches only a new one.
      const again = new Promise<void>((resolve) => { const off = store.onChange(() => { off(); resolve(); }); });
      await store.removeAccount('a.test', 'carol');
      await again;
      expect(wakes).toBe(1);
    });

    it('a rate-limit counter allows `limit` hits per window, then names itself and when it frees up; a new window starts from zero', async () => {
      const c = { key: 'pw:addr:192.0.2.1', limit: 3, windowMs: 1000 };
      for (let i = 0; i < 3; i++) expect(await store.takeRateLimit([c], 100 + i)).toEqual({ ok: true });
      expect(await store.peekRateLimit(c.key, 150)).toBe(3);
      expect(await store.takeRateLimit([c], 500)).toEqual({ ok: false, key: c.key, retryAt: 1100 });
      expect(await store.peekRateLimit(c.key, 1100)).toBe(0);
      expect(await store.takeRateLimit([c], 1100)).toEqual({ ok: true });
      expect(await store.peekRateLimit(c.key, 1101)).toBe(1);
    });

    it('takes from several counters all or none, and a release gives one hit back (never below zero); prune forgets ended windows', async () => {
      const a = { key: 'a', limit: 2, windowMs: 10_000 };
      const b = { key: 'b', limit: 1, windowMs: 10_000 };
      expect(await store.takeRateLimit([a, b], 0)).toEqual({ ok: true });
      expect(await store.takeRateLimit([a, b], 1)).toEqual({ ok: false, key: 'b', retryAt: 10_000 });
      expect(await store.peekRateLimit('a', 2)).toBe(1);
      await store.releaseRateLimit(['b'], 3);
      expect(await store.peekRateLimit('b', 3)).toBe(0);
      await store.releaseRateLimit(['b', 'missing'], 4);
      expect(await store.peekRateLimit('b', 4)).toBe(0);
      expect(await store.takeRateLimit([a, b], 5)).toEqual({ ok: true });
      expect(await store.peekRateLimit('a', 5)).toBe(2);
      await store.takeRateLimit([{ key: 'old', limit: 5, windowMs: 100 }], 0);
      expect(await store.pruneRateLimits(10_000)).toBe(3);
      expect(await store.pruneRateLimits(10_000)).toBe(0);
    });

    it('a token-bucket counter gives `burst` hits at once, then one per windowMs / (limit - burst + 1), and names when the next one is free', async () => {
      // 12 per 1000 ms, at most 3 at once: one hit refills in 1000 / (12 - 3 + 1) = 100 ms.
      const c = { key: 'login:acct:bucket@a.test', limit: 12, windowMs: 1000, burst: 3 };
      for (let i = 0; i < 3; i++) expect(await store.takeRateLimit([c], 1000)).toEqual({ ok: true });
      expect(await store.peekRateLimit(c.key, 1000)).toBe(3);
      // Not the window's 10: the bucket is empty until its first hit refills.
      expect(await store.takeRateLimit([c], 1000)).toEqual({ ok: false, key: c.key, retryAt: 1100 });
      expect(await store.takeRateLimit([c], 1099)).toEqual({ ok: false, key: c.key, retryAt: 1100 });
      expect(await store.takeRateLimit([c], 1100)).toEqual({ ok: true });
      expect(await store.takeRateLimit([c], 1150)).toEqual({ ok: false, key: c.key, retryAt: 1200 });
      // A steady flood gets one hit per interval, whatever it asks for, and the
      // window's limit holds over any span of windowMs: 3 + 1 + 8 in [1000, 2000).
      let got = 0;
      for (let t = 1200; t < 2200; t += 10) if ((await store.takeRateLimit([c], t)).ok) got++;
      expect(got).toBe(10);
      // Left alone it refills to `burst`, never more.
      expect(await store.peekRateLimit(c.key, 5000)).toBe(0);
      for (let i = 0; i < 3; i++) expect(await store.takeRateLimit([c], 5000)).toEqual({ ok: true });
      expect((await store.takeRateLimit([c], 5000)).ok).toBe(false);
    });

    it('a release gives a token bucket one hit back (a full bucket stays full); all or none holds across both kinds; prune forgets full buckets', async () => {
      const bucket = { key: 'bucket', limit: 11, windowMs: 1000, burst: 2 }; // one per 100 ms
      const window = { key: 'window', limit: 1, windowMs: 10_000 };
      expect(await store.takeRateLimit([bucket], 0)).toEqual({ ok: true });
      expect(await store.takeRateLimit([bucket, window], 0)).toEqual({ ok: true });
      expect(await store.peekRateLimit('bucket', 0)).toBe(2);
      // The window is full: the bucket's hit is not taken either.
      expect(await store.takeRateLimit([bucket, window], 100)).toEqual({ ok: false, key: 'window', retryAt: 10_000 });
      expect(await store.peekRateLimit('bucket', 100)).toBe(1);
      await store.releaseRateLimit(['bucket'], 100);
      expect(await store.peekRateLimit('bucket', 100)).toBe(0);
      await store.releaseRateLimit(['bucket'], 100);
      expect(await store.peekRateLimit('bucket', 100)).toBe(0);
      for (let i = 0; i < 2; i++) expect(await store.takeRateLimit([bucket], 100)).toEqual({ ok: true });
      expect((await store.takeRateLimit([bucket], 100)).ok).toBe(false);
      // Full again at 300: pruned then, like an ended window.
      expect(await store.pruneRateLimits(299)).toBe(0);
      expect(await store.pruneRateLimits(300)).toBe(1);
      expect(await store.peekRateLimit('window', 300)).toBe(1);
    });

    it('a token bucket is shared by a second handle: concurrent takes from both get exactly `burst`', async () => {
      const other = await f.second();
      const c = { key: 'login:acct:shared@a.test', limit: 100, windowMs: 900_000, burst: 4 };
      const results = await Promise.all(Array.from({ length: 12 }, (_, i) => (i % 2 ? other : store).takeRateLimit([c], 1000)));
      expect(results.filter((r) => r.ok)).toHaveLength(4);
      expect(await other.peekRateLimit(c.key, 1000)).toBe(4);
    });

    it('rate-limit counters are shared by a second handle on the same data (an admin command, another node)', async () => {
      const other = await f.second();
      const c = { key: 'login:acct:alice@a.test', limit: 3, windowMs: 60_000 };
      const results = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? other : store).takeRateLimit([c], 1000)));
      expect(results.filter((r) => r.ok)).toHaveLength(3);
      expect(await store.peekRateLimit(c.key, 1001)).toBe(3);
    });

    it('answers ping while open', async () => {
      await expect(store.ping()).resolves.toBeUndefined();
    });
  });
}
