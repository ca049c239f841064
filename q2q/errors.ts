/**
 * Typed errors with stable codes.
 *
 * Every error the project raises on purpose is a VertexError with a `code`
 * from ERROR_CODES. Tests assert on `code`, the CLI maps `code` to an exit
 * status (cli/exit-codes.ts), and the AMP layer carries `code` on the wire
 * as `_error_code`. Messages are lowercase with the context first.
 */

export const ERROR_CODES = {
  // usage and input
  InvalidName: 'invalid Q2Q name, user, domain or service',
  Usage: 'bad command-line usage',
  Config: 'configuration file error',
  // wire and protocol
  AmpDecode: 'malformed AMP framing from a peer',
  AmpEncode: 'an AMP box that cannot be encoded',
  ProtocolVersion: 'the peer speaks an unsupported protocol version',
  UnknownCommand: 'the peer does not know this command',
  BadRequest: 'a command with missing or malformed arguments',
  ConnectionLost: 'the connection closed before the answer arrived',
  Timeout: 'a wait that ran out of time',
  PtcpDecode: 'malformed PTCP segment',
  PtcpReset: 'the PTCP peer reset the connection',
  PtcpIdle: 'the PTCP connection went silent past its idle timeout',
  PtcpConnectTimeout: 'the PTCP handshake got no answer',
  Socks5Decode: 'malformed SOCKS5 message',
  MuxDecode: 'malformed stream-multiplexing frame from a peer',
  TransferDecode: 'malformed file-transfer frame',
  // identity and accounts
  NoSuchUser: 'no such account',
  BadPassword: 'wrong password',
  NameTaken: 'the account name is taken',
  UnknownDomain: 'the server does not serve this domain',
  RegistrationClosed: 'the server does not accept registrations',
  BadInvite: 'missing, unknown or used invitation code',
  RateLimited: 'too many failures; wait before trying again',
  BadCertificateRequest: 'a CSR that does not match the account',
  CertificateInvalid: 'a certificate that does not verify',
  CertificateRevoked: 'a revoked certificate',
  CaChanged: 'a pinned domain CA changed',
  NoIdentity: 'no stored identity',
  // connections
  Offline: 'the peer is not connected to its server',
  NotExposed: 'the peer does not expose this service',
  Denied: "the peer's policy denies this connection",
  NotAllowed: 'the server does not allow this request',
  Unreachable: 'no route to the peer worked',
  TokenInvalid: 'an unknown, expired or reused connection token',
  ServerUnavailable: 'the identity server cannot be reached',
  // file transfer
  TransferRejected: 'the receiver refused the offered files',
  TransferFailed: 'a file transfer broke off: disk, verification or the other end',
  // server operation
  StorageUnavailable: "the server's account store cannot be reached or written: database down, disk full, read-only or failing",
  // the local agent
  AgentRunning: 'another agent already runs for this home or identity',
  Refused: "the peer's service refused the connection",
  Internal: 'an unexpected internal error',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export function isErrorCode(value: string): value is ErrorCode {
  return Object.prototype.hasOwnProperty.call(ERROR_CODES, value);
}

export class VertexError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VertexError';
    this.code = code;
  }
}

/** Shorthand used across the tree: `fail('BadPassword', 'sign alice@a.test: wrong password')`. */
export function vertexError(code: ErrorCode, message: string, cause?: unknown): VertexError {
  return new VertexError(code, message, cause === undefined ? undefined : { cause });
}

export function isVertexError(err: unknown, code?: ErrorCode): err is VertexError {
  return err instanceof VertexError && (code === undefined || err.code === code);
}

/** Wraps anything thrown into a VertexError, keeping the original as `cause`. */
export function asVertexError(err: unknown, fallback: ErrorCode = 'Internal', context?: string): VertexError {
  if (err instanceof VertexError) return err;
  const detail = err instanceof Error ? err.message : String(err);
  return new VertexError(fallback, context ? `${context}: ${detail}` : detail, { cause: err });
}
