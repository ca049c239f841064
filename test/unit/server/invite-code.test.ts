/**
 * Invitation codes are pasted after `--invite`: one that starts with '-' is
 * read as a flag (the README walkthrough failed on `--invite -4Tm…`). With
 * 1 in 64 of the old codes starting so, 5,000 draws would hold one with
 * near certainty ((63/64)^5000 < 1e-34), so this can fail.
 */
import { newInviteCode } from '../../../server/account-service';

describe('newInviteCode', () => {
  it('never starts with "-", and stays 16 base64url characters', () => {
    for (let i = 0; i < 5_000; i++) {
      const code = newInviteCode();
      expect(code).toMatch(/^[A-Za-z0-9_][A-Za-z0-9_-]{15}$/);
    }
  });
});
