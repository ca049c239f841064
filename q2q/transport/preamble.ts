/**
 * A one-box exchange at the start of a stream that then carries other bytes:
 * the relay leg's request/answer and the token claim inside peer TLS. The
 * reader stops exactly at the end of the box and puts any bytes after it back
 * on the stream (unshift), so nothing the other side sends right after its
 * box is lost at the protocol switch.
 */
import type { Duplex } from 'node:stream';
import { vertexError } from '../errors';
import { AmpDecoder, encodeBox, type AmpBox } from '../wire/amp';
import { boxToStrings } from '../wire/amp';

/** Preamble boxes carry a token, an address or two and a short error: a few hundred bytes. */
export const MAX_PREAMBLE_BYTES = 4096;

export function writePreamble(stream: Duplex, fields: Record<string, string>): void {
  stream.write(encodeBox(fields));
}

export function readPreamble(stream: Duplex, what: string, timeoutMs: number): Promise<Record<string, string>> {
  return new Promise((resolve, reject) => {
    const decoder = new AmpDecoder({ maxBoxBytes: MAX_PREAMBLE_BYTES });
    let settled = false;
    const finish = (err: Error | null, box?: AmpBox, rest?: Buffer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('close', onEnd);
      stream.off('error', onError);
      if (err) return reject(err);
      // Stop the flow before handing back the unread bytes: a flowing stream
      // with no 'data' listener would drop them.
      stream.pause();
      if (rest && rest.length > 0) stream.unshift(rest);
      // Back to the initial "no consumer yet" state, so the next consumer
      // starts the flow by attaching 'data' or piping, as on a fresh socket.
      (stream as { readableFlowing: boolean | null }).readableFlowing = null;
      resolve(boxToStrings(box as AmpBox));
    };
    const onData = (chunk: Buffer) => {
      // Byte by byte, so the decoder never swallows what follows the box.
      for (let i = 0; i < chunk.length; i++) {
        let boxes: AmpBox[];
        try {
          boxes = decoder.push(chunk.subarray(i, i + 1));
        } catch (err) {
          return finish(vertexError('BadRequest', `${what}: malformed preamble: ${(err as Error).message}`, err));
        }
        if (boxes.length > 0) return finish(null, boxes[0], chunk.subarray(i + 1));
      }
    };
    const onEnd = () => finish(vertexError('ConnectionLost', `${what}: the other side closed before answering`));
    const onError = (err: Error) => finish(vertexError('ConnectionLost', `${what}: ${err.message}`, err));
    const timer = setTimeout(() => finish(vertexError('Timeout', `${what}: no answer after ${timeoutMs} ms`)), timeoutMs);
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('close', onEnd);
    stream.once('error', onError);
    stream.resume();
  });
}

/** An answer preamble is either {ok: '1', ...} or {error_code, error_description}. */
export function preambleError(fields: Record<string, string>): { code: string; description: string } | null {
  if (fields.ok === '1') return null;
  return { code: fields.error_code ?? 'Internal', description: fields.error_description ?? 'refused without a reason' };
}
