import { ERROR_CODES, vertexError, type ErrorCode } from '../../../../q2q/errors';
import { SOCKS_REPLY } from '../../../../q2q/wire/socks5';
import { REPLY_FOR_ERROR_CODE, socksReplyForError } from '../../../../q2q/wire/socks5-replies';

function errno(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`connect ${code} 127.0.0.1:1`), { code });
}

describe('socks5 reply for a dial error', () => {
  it.each<[ErrorCode, number]>([
    ['Denied', SOCKS_REPLY.NotAllowed],
    ['NotAllowed', SOCKS_REPLY.NotAllowed],
    ['InvalidName', SOCKS_REPLY.NotAllowed],
    ['Offline', SOCKS_REPLY.HostUnreachable],
    ['Unreachable', SOCKS_REPLY.HostUnreachable],
    ['Timeout', SOCKS_REPLY.HostUnreachable],
    ['ServerUnavailable', SOCKS_REPLY.HostUnreachable],
    ['NotExposed', SOCKS_REPLY.ConnectionRefused],
    ['Refused', SOCKS_REPLY.ConnectionRefused],
    ['Internal', SOCKS_REPLY.GeneralFailure],
    ['ConnectionLost', SOCKS_REPLY.GeneralFailure],
    ['CertificateInvalid', SOCKS_REPLY.GeneralFailure],
  ])('VertexError %s -> 0x0%d', (code, rep) => {
    expect(socksReplyForError(vertexError(code, `dial bob@b.test:echo: ${code}`))).toBe(rep);
  });

  it.each([
    ['ECONNREFUSED', SOCKS_REPLY.ConnectionRefused],
    ['EHOSTUNREACH', SOCKS_REPLY.HostUnreachable],
    ['ENETUNREACH', SOCKS_REPLY.NetworkUnreachable],
    ['ETIMEDOUT', SOCKS_REPLY.HostUnreachable],
    ['ENOTFOUND', SOCKS_REPLY.HostUnreachable],
    ['ECONNRESET', SOCKS_REPLY.GeneralFailure],
  ])('errno %s -> 0x0%d', (code, rep) => {
    expect(socksReplyForError(errno(code))).toBe(rep);
  });

  it('looks through a VertexError whose own code is not mapped to the errno of its cause', () => {
    expect(socksReplyForError(vertexError('Internal', 'passthrough dial', errno('ECONNREFUSED')))).toBe(SOCKS_REPLY.ConnectionRefused);
  });

  it('lets a mapped VertexError code win over the errno of its cause', () => {
    expect(socksReplyForError(vertexError('Denied', 'policy', errno('ECONNREFUSED')))).toBe(SOCKS_REPLY.NotAllowed);
  });

  it('answers general failure for things that are not errors', () => {
    expect(socksReplyForError('boom')).toBe(SOCKS_REPLY.GeneralFailure);
    expect(socksReplyForError(undefined)).toBe(SOCKS_REPLY.GeneralFailure);
    expect(socksReplyForError({ code: 42 })).toBe(SOCKS_REPLY.GeneralFailure);
  });

  it('stops on a cause cycle', () => {
    const a = new Error('a');
    const b = new Error('b', { cause: a });
    (a as { cause?: unknown }).cause = b;
    expect(socksReplyForError(a)).toBe(SOCKS_REPLY.GeneralFailure);
  });

  it('keys the table only by known error codes', () => {
    for (const code of Object.keys(REPLY_FOR_ERROR_CODE)) expect(Object.keys(ERROR_CODES)).toContain(code);
  });
});
