/**
 * Relay leg requests (q2q/transport/relay-leg.ts): a request made with a
 * certificate's key and the token passes; changing any part of it, signing
 * with another key, or proving another token does not.
 */
import { randomBytes } from 'node:crypto';
import { createDomainCa } from '../../../../q2q/identity/certificates';
import { checkLegRequest, legRequest, relayTokenId } from '../../../../q2q/transport/relay-leg';

let alice: { keyPem: string; certPem: string };
let bob: { keyPem: string; certPem: string };
const token = randomBytes(16).toString('hex');

beforeAll(async () => {
  alice = await createDomainCa('a.test');
  bob = await createDomainCa('b.test');
});

describe('relay leg requests', () => {
  it('carry the token only as its id and a proof, and check out with the token', () => {
    const fields = legRequest(alice, 'a.test', token);
    expect(JSON.stringify(fields)).not.toContain(token);
    const request = checkLegRequest(fields);
    expect(request.tokenId).toBe(relayTokenId(token));
    expect(request.domain).toBe('a.test');
    expect(request.provesToken(token)).toBe(true);
    expect(request.provesToken(randomBytes(16).toString('hex'))).toBe(false);
    expect(request.certPem.replace(/\s/g, '')).toBe(alice.certPem.replace(/\s/g, ''));
  });

  it('use a fresh nonce each time', () => {
    expect(legRequest(alice, 'a.test', token).nonce).not.toBe(legRequest(alice, 'a.test', token).nonce);
  });

  it('fail when signed with a key other than the certificate\'s', () => {
    const fields = legRequest({ keyPem: bob.keyPem, certPem: alice.certPem }, 'a.test', token);
    expect(() => checkLegRequest(fields)).toThrow(expect.objectContaining({ code: 'CertificateInvalid' }));
    // Only a test fault skips it.
    expect(checkLegRequest(fields, true).provesToken(token)).toBe(true);
  });

  it.each([['domain', 'b.test'], ['token_id', relayTokenId('other')], ['nonce', randomBytes(16).toString('hex')]])(
    'fail when %s is changed after signing',
    (field, value) => {
      const fields = { ...legRequest(alice, 'a.test', token), [field]: value };
      expect(() => checkLegRequest(fields)).toThrow(expect.objectContaining({ code: 'CertificateInvalid' }));
    },
  );

  it('fail when the certificate is swapped for another', () => {
    const fields = { ...legRequest(alice, 'a.test', token), certificate: legRequest(bob, 'b.test', token).certificate as string };
    expect(() => checkLegRequest(fields)).toThrow(expect.objectContaining({ code: 'CertificateInvalid' }));
  });

  it('refuse another version and malformed fields', () => {
    expect(() => checkLegRequest({ ...legRequest(alice, 'a.test', token), v: '2' })).toThrow(expect.objectContaining({ code: 'ProtocolVersion' }));
    expect(() => checkLegRequest({ ...legRequest(alice, 'a.test', token), mac: 'zz' })).toThrow(expect.objectContaining({ code: 'BadRequest' }));
    expect(() => checkLegRequest({ ...legRequest(alice, 'a.test', token), certificate: 'bm90IGEgY2VydA==' })).toThrow(expect.objectContaining({ code: 'CertificateInvalid' }));
  });
});
