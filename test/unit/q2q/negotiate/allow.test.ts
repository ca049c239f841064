import { defaultAllow, isAllowed } from '../../../../q2q/negotiate/allow';

describe('allow lists', () => {
  it('the default admits the owner alone (any device: the address has none), not its domain', () => {
    const allow = defaultAllow('Bob@B.test');
    expect(allow).toEqual(['bob@b.test']);
    expect(isAllowed(allow, 'bob@b.test')).toBe(true);
    expect(isAllowed(allow, 'BOB@b.test')).toBe(true);
    expect(isAllowed(allow, 'stranger@b.test')).toBe(false);
    expect(isAllowed(allow, 'bob@a.test')).toBe(false);
  });

  it('the old default (*@own-domain) would have let a stranger of the same domain in: the check above can fail', () => {
    const oldDefault = ['*@b.test'];
    expect(isAllowed(oldDefault, 'stranger@b.test')).toBe(true);
  });

  it('matches *, *@domain, user@domain and *.suffix domains', () => {
    expect(isAllowed(['*'], 'x@y.test')).toBe(true);
    expect(isAllowed(['*@a.test'], 'alice@a.test')).toBe(true);
    expect(isAllowed(['*@a.test'], 'alice@sub.a.test')).toBe(false);
    expect(isAllowed(['*@*.a.test'], 'alice@sub.a.test')).toBe(true);
    expect(isAllowed(['*@*.a.test'], 'alice@a.test')).toBe(false);
    expect(isAllowed(['*@*.a.test'], 'alice@xa.test')).toBe(false);
    expect(isAllowed(['carol@*.a.test'], 'carol@x.a.test')).toBe(true);
    expect(isAllowed(['carol@*.a.test'], 'dave@x.a.test')).toBe(false);
    expect(isAllowed(['carol@c.test'], 'carol@c.test')).toBe(true);
    expect(isAllowed([], 'carol@c.test')).toBe(false);
    expect(isAllowed(['*@a.test'], 'not-an-address')).toBe(false);
  });
});
