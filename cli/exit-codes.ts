/**
 * Exit statuses (INTERFACE.md "Exit codes"), and the one place that maps an
 * error code to one. The README's table is checked against EXIT_CODES by
 * test/unit/cli/exit-codes.test.ts.
 */
import type { ErrorCode } from '../q2q/errors';

export const EXIT = {
  ok: 0,
  other: 1,
  usage: 2,
  auth: 3,
  unreachable: 4,
  denied: 5,
  config: 6,
} as const;

export type ExitStatus = (typeof EXIT)[keyof typeof EXIT];

export const EXIT_CODES: Record<ErrorCode, ExitStatus> = {
  InvalidName: EXIT.usage,
  Usage: EXIT.usage,
  Config: EXIT.config,
  AmpDecode: EXIT.other,
  AmpEncode: EXIT.other,
  ProtocolVersion: EXIT.other,
  UnknownCommand: EXIT.other,
  BadRequest: EXIT.other,
  ConnectionLost: EXIT.unreachable,
  Timeout: EXIT.unreachable,
  PtcpDecode: EXIT.other,
  PtcpReset: EXIT.unreachable,
  PtcpIdle: EXIT.unreachable,
  PtcpConnectTimeout: EXIT.unreachable,
  Socks5Decode: EXIT.other,
  MuxDecode: EXIT.other,
  TransferDecode: EXIT.other,
  NoSuchUser: EXIT.auth,
  BadPassword: EXIT.auth,
  NameTaken: EXIT.other,
  UnknownDomain: EXIT.other,
  RegistrationClosed: EXIT.denied,
  BadInvite: EXIT.auth,
  RateLimited: EXIT.auth,
  BadCertificateRequest: EXIT.auth,
  CertificateInvalid: EXIT.auth,
  CertificateRevoked: EXIT.auth,
  CaChanged: EXIT.auth,
  NoIdentity: EXIT.auth,
  Offline: EXIT.unreachable,
  NotExposed: EXIT.unreachable,
  Denied: EXIT.denied,
  NotAllowed: EXIT.denied,
  Unreachable: EXIT.unreachable,
  TokenInvalid: EXIT.auth,
  ServerUnavailable: EXIT.unreachable,
  TransferRejected: EXIT.denied,
  TransferFailed: EXIT.other,
  StorageUnavailable: EXIT.other,
  AgentRunning: EXIT.other,
  Refused: EXIT.unreachable,
  Internal: EXIT.other,
};
