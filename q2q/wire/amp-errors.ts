/**
 * AMP error codes on the wire, and where they meet our VertexError codes.
 * This is the one place the two vocabularies are mapped (docs/amp.md,
 * "Error codes", has the table and what a Twisted client sees).
 *
 * An AMP error box carries `_error` (the tag), `_error_code` and
 * `_error_description` (reference/vertex-q2q.md §3.2). Twisted's AMP gives
 * two codes a meaning of its own, and its clients act on them:
 *
 *   UNHANDLED  the responder has no such command. Twisted raises
 *              UnhandledCommand for it, whatever the command declares.
 *   UNKNOWN    the responder failed in a way it did not declare. Twisted
 *              raises UnknownRemoteError.
 *
 * Every other code is the command's business: a Twisted client that lists
 * the code in its Command's `errors` gets that exception, and any code it did
 * not list becomes UnknownRemoteError. So our codes travel as they are, except
 * the two that mean what Twisted's own codes mean:
 *
 *   UnknownCommand  <->  UNHANDLED
 *   Internal        <->  UNKNOWN
 *
 * For those two, the description starts with our code ("UnknownCommand:
 * unknown command \"x\""), so a person reading a Twisted traceback still sees
 * it; our decoder strips the prefix again, so our own callers get exactly the
 * code and message they got before the mapping existed.
 */
import { ErrorCode, isErrorCode } from '../errors';

// Specification (Twisted's amp.py: UNHANDLED_ERROR_CODE, UNKNOWN_ERROR_CODE).
export const AMP_UNHANDLED = 'UNHANDLED';
export const AMP_UNKNOWN = 'UNKNOWN';

/** Our codes that travel as one of Twisted's own. */
const TO_WIRE: ReadonlyMap<ErrorCode, string> = new Map<ErrorCode, string>([
  ['UnknownCommand', AMP_UNHANDLED],
  ['Internal', AMP_UNKNOWN],
]);
const FROM_WIRE: ReadonlyMap<string, ErrorCode> = new Map(Array.from(TO_WIRE, ([ours, wire]) => [wire, ours]));

export interface AmpWireError {
  /** The `_error_code` value. */
  code: string;
  /** The `_error_description` value. */
  description: string;
}

/** What goes on the wire for one of our errors. */
export function ampErrorToWire(code: ErrorCode, description: string): AmpWireError {
  const wire = TO_WIRE.get(code);
  return wire === undefined ? { code, description } : { code: wire, description: `${code}: ${description}` };
}

/**
 * Our code for an error box, and its description without the prefix that
 * ampErrorToWire added. A code we do not know (another AMP peer's own, such
 * as Twisted Vertex's `NoSuchConnection`) becomes Internal; the caller keeps
 * the wire code if it needs it.
 */
export function ampErrorFromWire(wireCode: string, description: string): { code: ErrorCode; description: string } {
  const mapped = FROM_WIRE.get(wireCode);
  if (mapped !== undefined) {
    const prefix = `${mapped}: `;
    return { code: mapped, description: description.startsWith(prefix) ? description.slice(prefix.length) : description };
  }
  if (isErrorCode(wireCode)) return { code: wireCode, description };
  return { code: 'Internal', description };
}
