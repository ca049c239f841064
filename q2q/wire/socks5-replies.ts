/**
 * The one place where a failed dial becomes a SOCKS5 REP code (RFC 1928 §6).
 *
 * Keyed by VertexError code for Q2Q dials and by Node errno for passthrough
 * dials that reach the network directly. Anything not listed is 0x01
 * (general failure), which every client reports as a plain failure.
 *
 * Decisions worth recording:
 * - InvalidName -> 0x02. A hostname we will not route (not a Q2Q name, or a
 *   malformed one) is a policy refusal, the same answer INTERFACE.md gives
 *   for "any other hostname" when passthrough is off. 0x04 would tell the
 *   client the host exists but is down, and browsers would retry.
 * - Timeout and ETIMEDOUT -> 0x04, like Offline: to the application the peer
 *   did not answer. 0x06 (TTL expired) means an ICMP time-exceeded, which we
 *   never observe.
 * - ENOTFOUND / EAI_AGAIN (DNS failure on passthrough) -> 0x04: there is no
 *   "no such host" code, and curl and browsers show 0x04 as "host unreachable".
 */
import { isVertexError, type ErrorCode } from '../errors';
import { SOCKS_REPLY, type SocksReplyCode } from './socks5';

export const REPLY_FOR_ERROR_CODE: Readonly<Partial<Record<ErrorCode, SocksReplyCode>>> = Object.freeze({
  // policy
  Denied: SOCKS_REPLY.NotAllowed,
  NotAllowed: SOCKS_REPLY.NotAllowed,
  InvalidName: SOCKS_REPLY.NotAllowed,
  // the peer or its server cannot be reached
  Offline: SOCKS_REPLY.HostUnreachable,
  Unreachable: SOCKS_REPLY.HostUnreachable,
  Timeout: SOCKS_REPLY.HostUnreachable,
  ServerUnavailable: SOCKS_REPLY.HostUnreachable,
  // the peer is there but nothing answers on that service
  NotExposed: SOCKS_REPLY.ConnectionRefused,
  // the service is exposed, but the program behind it refused
  Refused: SOCKS_REPLY.ConnectionRefused,
});

export const REPLY_FOR_ERRNO: Readonly<Record<string, SocksReplyCode>> = Object.freeze({
  ECONNREFUSED: SOCKS_REPLY.ConnectionRefused,
  EHOSTUNREACH: SOCKS_REPLY.HostUnreachable,
  EHOSTDOWN: SOCKS_REPLY.HostUnreachable,
  ETIMEDOUT: SOCKS_REPLY.HostUnreachable,
  ENOTFOUND: SOCKS_REPLY.HostUnreachable,
  EAI_AGAIN: SOCKS_REPLY.HostUnreachable,
  ENETUNREACH: SOCKS_REPLY.NetworkUnreachable,
  ENETDOWN: SOCKS_REPLY.NetworkUnreachable,
  EACCES: SOCKS_REPLY.NotAllowed,
  EPERM: SOCKS_REPLY.NotAllowed,
});

/** How deep to follow `cause` looking for an errno; causes are short chains, this only bounds the loop. */
const MAX_CAUSE_DEPTH = 8;

function errnoOf(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * The REP code for an error thrown by a dial. A VertexError decides by its
 * own code; when that code is not in the table (e.g. Internal wrapping a
 * socket error), the errno of the first cause that has one decides.
 */
export function socksReplyForError(err: unknown): SocksReplyCode {
  let current: unknown = err;
  for (let depth = 0; depth < MAX_CAUSE_DEPTH && current !== undefined && current !== null; depth += 1) {
    if (isVertexError(current)) {
      const mapped = REPLY_FOR_ERROR_CODE[current.code];
      if (mapped !== undefined) return mapped;
    } else {
      const errno = errnoOf(current);
      if (errno !== undefined && Object.prototype.hasOwnProperty.call(REPLY_FOR_ERRNO, errno)) {
        return REPLY_FOR_ERRNO[errno] as SocksReplyCode;
      }
    }
    current = current instanceof Error ? current.cause : undefined;
  }
  return SOCKS_REPLY.GeneralFailure;
}
