import fc from 'fast-check';
import {
  decodeWhoAmIAnswer, encodeWhoAmIAnswer, encodeWhoAmIRequest, isWhoAmIRequest, requestNonce,
  WHO_AM_I_REQUEST_BYTES,
} from '../../../../q2q/wire/who-am-i';

const NONCE = Buffer.from('000102030405060708090a0b', 'hex');

describe('who-am-i codec', () => {
  it('encodes a padded request that is never smaller than any answer', () => {
    const req = encodeWhoAmIRequest(NONCE);
    expect(req.toString('hex')).toBe('5132513f01' + NONCE.toString('hex') + '00'.repeat(31));
    expect(req.length).toBe(WHO_AM_I_REQUEST_BYTES);
    expect(isWhoAmIRequest(req)).toBe(true);
    expect(requestNonce(req).equals(NONCE)).toBe(true);
    expect(encodeWhoAmIAnswer(NONCE, 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 65535).length).toBeLessThanOrEqual(req.length);
  });

  it('golden IPv4 answer', () => {
    const answer = encodeWhoAmIAnswer(NONCE, '203.0.113.5', 8788);
    expect(answer.toString('hex')).toBe('51325121' + '01' + NONCE.toString('hex') + '04' + '2254' + 'cb007105');
    expect(decodeWhoAmIAnswer(answer)).toEqual({ nonce: NONCE, address: '203.0.113.5', port: 8788 });
  });

  it('round-trips IPv6 including :: and embedded IPv4', () => {
    expect(decodeWhoAmIAnswer(encodeWhoAmIAnswer(NONCE, '::1', 1)).address).toBe('0:0:0:0:0:0:0:1');
    expect(decodeWhoAmIAnswer(encodeWhoAmIAnswer(NONCE, '2001:db8::5', 2)).address).toBe('2001:db8:0:0:0:0:0:5');
    expect(decodeWhoAmIAnswer(encodeWhoAmIAnswer(NONCE, '::ffff:192.0.2.1', 3)).address).toBe('0:0:0:0:0:ffff:c000:201');
  });

  it('rejects other datagrams as requests', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      const buf = Buffer.from(bytes);
      if (isWhoAmIRequest(buf)) expect(buf.subarray(0, 4).toString('latin1')).toBe('Q2Q?');
    }), { numRuns: 2000 });
  });

  it('decoding random bytes throws only typed errors', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 48 }), (bytes) => {
      const buf = Buffer.concat([Buffer.from('Q2Q!'), Buffer.from(bytes)]);
      try { decodeWhoAmIAnswer(buf); } catch (err) { expect((err as { code?: string }).code).toMatch(/BadRequest|ProtocolVersion/); }
    }), { numRuns: 2000 });
  });
});
