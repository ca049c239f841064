import { hashPassword, needsRehash, verifyPassword, DUMMY_PASSWORD_HASH, SCRYPT_N } from '../../../server/password';

describe('password hashing', () => {
  it('verifies the right password and rejects a wrong one', async () => {
    const hash = await hashPassword('correct horse battery');
    expect(hash).toMatch(/^scrypt\$131072\$8\$1\$/);
    expect(hash).not.toContain('correct horse');
    await expect(verifyPassword('correct horse battery', hash)).resolves.toBe(true);
    await expect(verifyPassword('correct horse batterY', hash)).resolves.toBe(false);
  });

  it('salts: the same password hashes differently', async () => {
    expect(await hashPassword('same password')).not.toBe(await hashPassword('same password'));
  });

  it('rejects malformed stored hashes and never matches the dummy hash', async () => {
    await expect(verifyPassword('x', 'plain')).resolves.toBe(false);
    await expect(verifyPassword('x', 'scrypt$99999999$8$1$AA==$AA==')).resolves.toBe(false);
    await expect(verifyPassword('', DUMMY_PASSWORD_HASH)).resolves.toBe(false);
  });
});

describe('scrypt parameters', () => {
  it('a hash made with the old N=2^14 still verifies and asks to be rehashed; a current one does not', async () => {
    const old = await hashPassword('correct horse battery', { n: 1 << 14 });
    expect(old).toMatch(/^scrypt\$16384\$/);
    await expect(verifyPassword('correct horse battery', old)).resolves.toBe(true);
    await expect(verifyPassword('wrong horse battery', old)).resolves.toBe(false);
    expect(needsRehash(old)).toBe(true);
    expect(needsRehash(await hashPassword('correct horse battery'))).toBe(false);
    expect(SCRYPT_N).toBe(1 << 17);
  });
});
