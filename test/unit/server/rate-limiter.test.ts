import { PasswordRateLimiter, ACCOUNT_FAILURE_LIMIT, ADDRESS_FAILURE_LIMIT, FAILURE_WINDOW_MS } from '../../../server/rate-limiter';
import { isVertexError } from '../../../q2q/errors';

function codeOf(fn: () => void): string | null {
  try {
    fn();
    return null;
  } catch (err) {
    return isVertexError(err) ? err.code : 'not-a-vertex-error';
  }
}

describe('PasswordRateLimiter', () => {
  it('refuses an account after ACCOUNT_FAILURE_LIMIT failures until the window ends', () => {
    let now = 1_000_000;
    const limiter = new PasswordRateLimiter({ now: () => now });
    for (let i = 0; i < ACCOUNT_FAILURE_LIMIT; i++) {
      expect(codeOf(() => limiter.check('alice@a.test', `198.51.100.${i}`))).toBeNull();
      limiter.recordFailure('alice@a.test', `198.51.100.${i}`);
    }
    expect(codeOf(() => limiter.check('alice@a.test', '198.51.100.99'))).toBe('RateLimited');
    // Other accounts are unaffected.
    expect(codeOf(() => limiter.check('bob@a.test', '198.51.100.99'))).toBeNull();
    now += FAILURE_WINDOW_MS;
    expect(codeOf(() => limiter.check('alice@a.test', '198.51.100.99'))).toBeNull();
  });

  it('refuses a source address after ADDRESS_FAILURE_LIMIT failures across accounts', () => {
    const limiter = new PasswordRateLimiter({ now: () => 0 });
    for (let i = 0; i < ADDRESS_FAILURE_LIMIT; i++) limiter.recordFailure(`user${i}@a.test`, '203.0.113.7');
    expect(codeOf(() => limiter.check('fresh@a.test', '203.0.113.7'))).toBe('RateLimited');
    expect(codeOf(() => limiter.check('fresh@a.test', '203.0.113.8'))).toBeNull();
  });

  it('a success clears the account count', () => {
    const limiter = new PasswordRateLimiter({ now: () => 0 });
    for (let i = 0; i < ACCOUNT_FAILURE_LIMIT - 1; i++) limiter.recordFailure('alice@a.test', '192.0.2.1');
    limiter.recordSuccess('alice@a.test');
    limiter.recordFailure('alice@a.test', '192.0.2.1');
    expect(codeOf(() => limiter.check('alice@a.test', '192.0.2.1'))).toBeNull();
  });
});
