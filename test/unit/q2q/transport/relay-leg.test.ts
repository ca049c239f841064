/**
 * Relay leg requests (q2q/transport/relay-leg.ts): a request made with a
 * certificate's key and the token opens and checks out with the token;
 * its bytes on the wire name nobody; changing any part of it, signing with
 * another key, or opening it with another token does not.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { createCsr, createDomainCa, generateKeyPair, issueUserCertificate } from '../../../../q2q/identity';
import { encodeBox } from '../../../../q2q/wire/amp';
import { openLegRequest, readLegHeader, legRequest, relayTokenId } from '../../../../q2q/transport/relay-leg';

let alice: { keyPem: string; certPem: string };
let bob: { keyPem: string; certPem: string };
const token = randomBytes(16).toString('hex');
const open = (fields: Record<string, string>, withToken = token, unchecked = false) => openLegRequest(readLegHeader(fields), withToken, unchecked);

beforeAll(async () => {
  alice = await createDomainCa('a.test');
  bob = await createDomainCa('b.test');
});

describe('relay leg requests', () => {
  it('carry the token only as its id, and open and check out with the token', () => {
    const fields = legRequest(alice, 'a.test', token);
    expect(JSON.stringify(fields)).not.toContain(token);
    const request = open(fields);
    expect(request.tokenId).toBe(relayTokenId(token));
    expect(request.domain).toBe('a.test');
    expect(request.certPem.replace(/\s/g, '')).toBe(alice.certPem.replace(/\s/g, ''));
  });

  it('show nobody on the path the certificate or the address, only a token id and a nonce', async () => {
    const ca = await createDomainCa('a.test');
    const { privateKeyPem } = await generateKeyPair();
    const issued = await issueUserCertificate({
      caCertPem: ca.certPem, caKeyPem: ca.keyPem, csrPem: await createCsr('carol@a.test', privateKeyPem), expectedAddress: 'carol@a.test', lifetimeMs: 3_600_000,
    });
    const user = { keyPem: privateKeyPem, certPem: issued.certPem };
    const der = new X509Certificate(user.certPem).raw;
    const fields = legRequest(user, 'a.test', token);
    expect(Object.keys(fields).sort()).toEqual(['domain', 'nonce', 'sealed', 'token_id', 'v']);
    const wire = encodeBox(fields);
    for (const needle of [der, der.subarray(0, 64), Buffer.from(der.toString('base64')), Buffer.from('carol'), Buffer.from(token)]) {
      expect(wire.includes(needle)).toBe(false);
    }
    // The check has teeth: a request carrying the certificate in the clear, as version 3 did, is caught.
    const clear = encodeBox({ ...fields, certificate: der.toString('base64') });
    expect(clear.includes(Buffer.from(der.toString('base64')))).toBe(true);
    expect(open(fields).certPem.replace(/\s/g, '')).toBe(user.certPem.replace(/\s/g, ''));
  });

  it('do not open with a wrong token, even with the checks switched off', () => {
    const fields = legRequest(alice, 'a.test', token);
    const other = randomBytes(16).toString('hex');
    expect(() => open(fields, other)).toThrow(expect.objectContaining({ code: 'TokenInvalid' }));
    expect(() => open(fields, other, true)).toThrow(expect.objectContaining({ code: 'TokenInvalid' }));
  });

  it('fail when the proof was made without the token', () => {
    const fields = legRequest(alice, 'a.test', token, randomBytes(16).toString('hex'));
    expect(() => open(fields)).toThrow(expect.objectContaining({ code: 'TokenInvalid' }));
    // Only a test fault skips it.
    expect(open(fields, token, true).tokenId).toBe(relayTokenId(token));
  });

  it('use a fresh nonce each time', () => {
    expect(legRequest(alice, 'a.test', token).nonce).not.toBe(legRequest(alice, 'a.test', token).nonce);
  });

  it('fail when signed with a key other than the certificate\'s', () => {
    const fields = legRequest({ keyPem: bob.keyPem, certPem: alice.certPem }, 'a.test', token);
    expect(() => open(fields)).toThrow(expect.objectContaining({ code: 'CertificateInvalid' }));
    // Only a test fault skips it.
    expect(open(fields, token, true).tokenId).toBe(relayTokenId(token));
  });

  it.each([['domain', 'b.test'], ['token_id', relayTokenId('other')], ['nonce', randomBytes(16).toString('hex')]])(
    'do not open when %s is changed after sealing',
    (field, value) => {
      const fields = { ...legRequest(alice, 'a.test', token), [field]: value };
      expect(() => open(fields)).toThrow(expect.objectContaining({ code: 'TokenInvalid' }));
    },
  );

  it('do not open when the sealed part is swapped for another request\'s or altered', () => {
    const fields = legRequest(alice, 'a.test', token);
    expect(() => open({ ...fields, sealed: legRequest(bob, 'a.test', token).sealed as string })).toThrow(expect.objectContaining({ code: 'TokenInvalid' }));
    const sealed = Buffer.from(fields.sealed as string, 'base64');
    sealed[20] = (sealed[20] as number) ^ 1;
    expect(() => open({ ...fields, sealed: sealed.toString('base64') })).toThrow(expect.objectContaining({ code: 'TokenInvalid' }));
  });

  it('refuse another version and malformed fields', () => {
    expect(() => readLegHeader({ ...legRequest(alice, 'a.test', token), v: '3' })).toThrow(expect.objectContaining({ code: 'ProtocolVersion' }));
    expect(() => readLegHeader({ ...legRequest(alice, 'a.test', token), token_id: 'zz' })).toThrow(expect.objectContaining({ code: 'BadRequest' }));
    expect(() => readLegHeader({ ...legRequest(alice, 'a.test', token), sealed: '' })).toThrow(expect.objectContaining({ code: 'BadRequest' }));
  });
});
