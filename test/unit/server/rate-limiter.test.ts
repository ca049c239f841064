/**
 * The login and registration budgets (server/rate-limiter.ts) over a real
 * SQLite store, on an injected clock, and the password-hash upgrade through
 * AccountService. Each budget is also checked against the race it forbids.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isVertexError } from '../../../q2q/errors';
import { createCsr, createDomainCa, generateKeyPair } from '../../../q2q/identity';
import { silentLogger } from '../../../q2q/util/log';
import { AccountService } from '../../../server/account-service';
import { hashPassword } from '../../../server/password';
import { AccountLocks, DEFAULT_LOGIN_LIMITS, LoginRateLimiter, windowedBudgets } from '../../../server/rate-limiter';
import { rateLimitInterval } from '../../../server/store/account-store';
import { SqliteAccountStore } from '../../../server/store/sqlite-store';
import { DEFAULT_ADMISSION_LIMITS } from '../../../server/admission';
import { SERVER_DEFAULTS } from '../../../config/defaults';

const ALICE = 'alice@a.test';
const ATTACKER = '198.51.100.66';
const OWNER = '203.0.113.7';

let dir: string;
let store: SqliteAccountStore;
let now: number;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-limits-'));
  store = new SqliteAccountStore(path.join(dir, 'vertex.db'));
  now = 1_000_000;
});

afterEach(async () => {
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function outcome<T>(p: Promise<T>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return isVertexError(err) ? err.code : `not a VertexError: ${String(err)}`;
  }
}

describe('LoginRateLimiter', () => {
  it('50 attempts at once from one address: exactly the per-(account, address) budget passes, counted before any check', async () => {
    const limiter = new LoginRateLimiter(store, { now: () => now });
    const results = await Promise.all(Array.from({ length: 50 }, () => outcome(limiter.takeLogin(ALICE, ATTACKER))));
    expect(results.filter((r) => r === 'ok')).toHaveLength(DEFAULT_LOGIN_LIMITS.perAccountAddress.limit);
    expect(results.filter((r) => r === 'RateLimited')).toHaveLength(50 - DEFAULT_LOGIN_LIMITS.perAccountAddress.limit);
  });

  it("the attacker's used-up budget does not lock the owner out from another address", async () => {
    const limiter = new LoginRateLimiter(store, { now: () => now });
    for (let i = 0; i < 5; i++) await limiter.takeLogin(ALICE, ATTACKER);
    expect(await outcome(limiter.takeLogin(ALICE, ATTACKER))).toBe('RateLimited');
    expect(await outcome(limiter.takeLogin(ALICE, OWNER))).toBe('ok');
  });

  it('one address is limited over all accounts, and a budget frees up when its window ends', async () => {
    const limiter = new LoginRateLimiter(store, { now: () => now });
    for (let i = 0; i < DEFAULT_LOGIN_LIMITS.perAddress.limit; i++) await limiter.takeLogin(`user${i}@a.test`, ATTACKER);
    expect(await outcome(limiter.takeLogin('other@a.test', ATTACKER))).toBe('RateLimited');
    expect(await outcome(limiter.takeLogin('other@a.test', OWNER))).toBe('ok');
    now += DEFAULT_LOGIN_LIMITS.perAddress.windowMs;
    expect(await outcome(limiter.takeLogin('other@a.test', ATTACKER))).toBe('ok');
  });

  it('a flood from many addresses at one account buys 6 password checks at once, then one per 9.5 s, not 5 per address', async () => {
    const limiter = new LoginRateLimiter(store, { now: () => now });
    const attempts = Array.from({ length: 8 }, (_, a) => Array.from({ length: 5 }, () => outcome(limiter.takeLogin(ALICE, `198.51.100.${a + 1}`)))).flat();
    const results = await Promise.all(attempts);
    // The account's bucket; 40 with fixed windows.
    expect(results.filter((r) => r === 'ok')).toHaveLength(DEFAULT_LOGIN_LIMITS.perAccount.burst!);
    // The next minute: one per bucket interval, whatever the flood sends.
    let got = 0;
    for (const end = now + 60_000; now < end; now += 250) {
      for (let a = 1; a <= 8; a++) if (await outcome(limiter.takeLogin(ALICE, `198.51.100.${a + 10}`)) === 'ok') got++;
    }
    expect(rateLimitInterval(DEFAULT_LOGIN_LIMITS.perAccount)).toBe(9474);
    expect(got).toBe(Math.floor(60_000 / 9474));
  });

  it('one address cannot empty the account bucket: after its 5, the owner\'s first attempt from a new address finds a place', async () => {
    const limiter = new LoginRateLimiter(store, { now: () => now });
    await Promise.all(Array.from({ length: 20 }, () => outcome(limiter.takeLogin(ALICE, ATTACKER))));
    expect(await outcome(limiter.takeLogin(ALICE, OWNER))).toBe('ok');
    // Can fail: a bucket no bigger than one address's budget would be empty now.
    const small = new LoginRateLimiter(store, { now: () => now, limits: { perAccount: { ...DEFAULT_LOGIN_LIMITS.perAccount, burst: 5 } } });
    await Promise.all(Array.from({ length: 20 }, () => outcome(small.takeLogin('bob@a.test', ATTACKER))));
    expect(await outcome(small.takeLogin('bob@a.test', OWNER))).toBe('RateLimited');
  });

  it('can fail: with fixed windows (test fault windowed-password-budgets) the same flood buys 5 checks per address', async () => {
    const limiter = new LoginRateLimiter(store, { now: () => now, limits: windowedBudgets() });
    const attempts = Array.from({ length: 8 }, (_, a) => Array.from({ length: 5 }, () => outcome(limiter.takeLogin(ALICE, `198.51.100.${a + 1}`)))).flat();
    expect((await Promise.all(attempts)).filter((r) => r === 'ok')).toHaveLength(40);
  });

  it('a success gives its hits back: a user who gets it right is never counted', async () => {
    const limiter = new LoginRateLimiter(store, { now: () => now });
    for (let i = 0; i < 20; i++) {
      const ticket = await limiter.takeLogin(ALICE, OWNER);
      await limiter.loginSucceeded(ticket, ALICE, OWNER);
    }
    expect(await store.peekRateLimit(`login:acct-addr:${ALICE}|${OWNER}`, now)).toBe(0);
  });

  it('a fixed-window per-account budget (no burst, as before the bucket): a distributed flood that uses it up slows new addresses to the slow lane; a known-good address is not limited by it', async () => {
    const limits = { perAccount: { limit: 10, windowMs: 60_000 } };
    const limiter = new LoginRateLimiter(store, { now: () => now, limits });
    await limiter.loginSucceeded(await limiter.takeLogin(ALICE, OWNER), ALICE, OWNER);
    for (let i = 0; i < 10; i++) await limiter.takeLogin(ALICE, `198.51.100.${i}`);
    // Budget used up: one attempt per slow-lane window from the rest of the world.
    expect(await outcome(limiter.takeLogin(ALICE, '198.51.100.200'))).toBe('ok');
    expect(await outcome(limiter.takeLogin(ALICE, '198.51.100.201'))).toBe('RateLimited');
    expect(await outcome(limiter.takeLogin(ALICE, OWNER))).toBe('ok');
    now += DEFAULT_LOGIN_LIMITS.accountSlowLane.windowMs;
    expect(await outcome(limiter.takeLogin(ALICE, '198.51.100.201'))).toBe('ok');
  });

  it('can fail: the old check-then-record order lets all 50 through (what takeRateLimit prevents)', async () => {
    // The forbidden behaviour: look at the count, check the password (await), record the failure after.
    let failures = 0;
    const checkThenRecord = async (): Promise<string> => {
      if (failures >= 5) return 'RateLimited';
      await new Promise((resolve) => setImmediate(resolve));
      failures++;
      return 'ok';
    };
    const results = await Promise.all(Array.from({ length: 50 }, checkThenRecord));
    expect(results.filter((r) => r === 'ok').length).toBeGreaterThan(DEFAULT_LOGIN_LIMITS.perAccountAddress.limit);
  });

  it('registration: per address, and wrong invitation codes have their own smaller budget', async () => {
    const limiter = new LoginRateLimiter(store, { now: () => now });
    const invites = await Promise.all(Array.from({ length: 50 }, () => outcome(limiter.takeRegistration(ATTACKER, true))));
    expect(invites.filter((r) => r === 'ok')).toHaveLength(DEFAULT_LOGIN_LIMITS.invitePerAddress.limit);
    const open = await Promise.all(Array.from({ length: 50 }, () => outcome(limiter.takeRegistration(OWNER, false))));
    expect(open.filter((r) => r === 'ok')).toHaveLength(DEFAULT_LOGIN_LIMITS.registerPerAddress.limit);
    expect(await outcome(limiter.takeRegistration('192.0.2.9', false))).toBe('ok');
  });
});

describe('AccountLocks', () => {
  it('runs one check per account at a time, others wait their turn, too many waiting are refused', async () => {
    const locks = new AccountLocks(3);
    let inFlight = 0;
    let most = 0;
    const gates: Array<() => void> = [];
    const work = () => locks.run(ALICE, async () => {
      inFlight++;
      most = Math.max(most, inFlight);
      await new Promise<void>((resolve) => gates.push(resolve));
      inFlight--;
    });
    const runs = Array.from({ length: 6 }, () => outcome(work()));
    const other = outcome(locks.run('bob@a.test', async () => undefined));
    expect(await other).toBe('ok');
    while (gates.length < 1) await new Promise((resolve) => setImmediate(resolve));
    for (let i = 0; i < 4; i++) {
      while (gates.length === 0) await new Promise((resolve) => setImmediate(resolve));
      gates.shift()!();
    }
    const results = await Promise.all(runs);
    expect(most).toBe(1);
    expect(results.filter((r) => r === 'ok')).toHaveLength(4);
    expect(results.filter((r) => r === 'RateLimited')).toHaveLength(2);
    expect(locks.busy).toBe(0);
  });
});

describe('AccountService passwords', () => {
  it('upgrades an old N=2^14 hash on the next successful login, and the password still works after', async () => {
    const ca = await createDomainCa('a.test');
    const service = new AccountService({
      store, cas: new Map([['a.test', { domain: 'a.test', certPem: ca.certPem, keyPem: ca.keyPem, fingerprint: '' }]]),
      registration: 'open', certificateLifetimeMs: 3_600_000, log: silentLogger,
    });
    await store.createAccount('a.test', 'alice', await hashPassword('correct horse battery staple', { n: 1 << 14 }));
    const csr = async () => createCsr(ALICE, (await generateKeyPair()).privateKeyPem);
    await service.signWithPassword({ address: ALICE, password: 'correct horse battery staple', csrPem: await csr(), sourceAddress: OWNER });
    expect((await store.getAccount('a.test', 'alice'))?.passwordHash).toMatch(/^scrypt\$131072\$8\$1\$/);
    await service.signWithPassword({ address: ALICE, password: 'correct horse battery staple', csrPem: await csr(), sourceAddress: OWNER });
    expect(await outcome(service.signWithPassword({ address: ALICE, password: 'wrong horse battery staple', csrPem: await csr(), sourceAddress: OWNER }))).toBe('BadPassword');
  });
});

describe('defaults', () => {
  it('the config defaults (config/defaults.ts) are the limiters\' own', () => {
    const u = SERVER_DEFAULTS.limits.unauthenticated;
    expect(u).toEqual({ ...DEFAULT_ADMISSION_LIMITS });
    const l = SERVER_DEFAULTS.limits.login;
    expect([l.perAccountAddress, l.perAddress, l.perAccount, l.inviteGuessesPerAddress, l.registrationsPerAddress]).toEqual([
      DEFAULT_LOGIN_LIMITS.perAccountAddress.limit, DEFAULT_LOGIN_LIMITS.perAddress.limit, DEFAULT_LOGIN_LIMITS.perAccount.limit,
      DEFAULT_LOGIN_LIMITS.invitePerAddress.limit, DEFAULT_LOGIN_LIMITS.registerPerAddress.limit,
    ]);
    expect(l.windowMs).toBe(DEFAULT_LOGIN_LIMITS.perAccountAddress.windowMs);
    expect(DEFAULT_LOGIN_LIMITS.registerPerAddress.windowMs).toBe(3_600_000);
  });
});
