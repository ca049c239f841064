/**
 * The CLI's side of the agent's control API (agent/control-api.ts). Every
 * wait has a timeout whose error says what it waited for.
 */
import * as net from 'node:net';
import { isErrorCode, vertexError, VertexError } from '../q2q/errors';
import type { ControlReply } from './control-api';
import type { CallOp, ControlArgs, ControlOp } from './control-protocol';

export const CONTROL_CONNECT_TIMEOUT_MS = 2_000;
export const CONTROL_REPLY_TIMEOUT_MS = 10_000;

/**
 * Connects to the agent's socket. Resolves null when no agent runs there
 * (no socket, or a stale one nobody listens on); other failures throw.
 */
export function openControl(socketPath: string, timeoutMs = CONTROL_CONNECT_TIMEOUT_MS): Promise<net.Socket | null> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ path: socketPath, allowHalfOpen: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(vertexError('Timeout', `agent control socket ${socketPath}: no connection within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      resolve(socket);
    });
    const onError = (err: NodeJS.ErrnoException): void => {
      clearTimeout(timer);
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') resolve(null);
      else if (err.code === 'EACCES') reject(vertexError('NotAllowed', `agent control socket ${socketPath}: permission denied; it belongs to another user`, err));
      else reject(vertexError('Internal', `agent control socket ${socketPath}: ${err.code ?? err.message}`, err));
    };
    socket.once('error', onError);
  });
}

/**
 * Sends one request on an open control socket and reads the reply line.
 * On success the socket is left paused, with any bytes after the reply line
 * put back, so `connect` can go on using it as the tunnel.
 */
/**
 * The longest reply line read from the agent. Status lists every tunnel (about
 * 300 bytes each): 10,000 tunnels make a 3 MB line. The bound only stops a
 * runaway peer on the socket from filling memory.
 */
export const MAX_REPLY_BYTES = 64 * 1024 * 1024;

export function sendRequest<Op extends ControlOp>(socket: net.Socket, op: Op, args: ControlArgs<Op>, opts: { timeoutMs?: number; waitingFor?: string } = {}): Promise<unknown> {
  const timeoutMs = opts.timeoutMs ?? CONTROL_REPLY_TIMEOUT_MS;
  const waitingFor = opts.waitingFor ?? `the agent's answer to ${op}`;
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const finish = (fn: () => void): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.off('close', onEnd);
      fn();
    };
    const timer = setTimeout(() => {
      finish(() => {
        socket.destroy();
        reject(vertexError('Timeout', `timed out after ${timeoutMs} ms waiting for ${waitingFor}`));
      });
    }, timeoutMs);
    // The reply arrives in pieces: only a new piece is searched for the newline, and the
    // pieces are joined once (a status with 10,000 tunnels is a few MB).
    const pieces: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      const at = chunk.indexOf(0x0a);
      pieces.push(chunk);
      size += chunk.length;
      if (at < 0) {
        if (size > MAX_REPLY_BYTES) finish(() => reject(vertexError('BadRequest', `agent reply to ${op}: longer than ${MAX_REPLY_BYTES} bytes`)));
        return;
      }
      buffered = Buffer.concat(pieces, size);
      const nl = size - chunk.length + at;
      finish(() => {
        socket.pause();
        const rest = buffered.subarray(nl + 1);
        if (rest.length > 0) socket.unshift(rest);
        let reply: ControlReply;
        try {
          reply = JSON.parse(buffered.subarray(0, nl).toString('utf8')) as ControlReply;
        } catch {
          reject(vertexError('BadRequest', `agent reply to ${op}: not JSON`));
          return;
        }
        if (reply.ok) resolve(reply.result);
        else reject(new VertexError(isErrorCode(reply.error.code) ? reply.error.code : 'Internal', reply.error.message));
      });
    };
    const onEnd = (): void => finish(() => reject(vertexError('ConnectionLost', `the agent closed the control connection while we waited for ${waitingFor}`)));
    const onError = (err: Error): void => finish(() => reject(vertexError('ConnectionLost', `agent control connection: ${err.message}`, err)));
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.on('error', onError);
    socket.write(`${JSON.stringify({ op, args })}\n`);
  });
}

/**
 * One request to a running agent; resolves `{ agent: false }` when none
 * runs at `socketPath`.
 */
export async function callAgent<Op extends CallOp>(
  socketPath: string,
  op: Op,
  args: ControlArgs<Op> = {} as ControlArgs<Op>,
  opts: { timeoutMs?: number } = {},
): Promise<{ agent: false } | { agent: true; result: unknown }> {
  const socket = await openControl(socketPath);
  if (!socket) return { agent: false };
  try {
    return { agent: true, result: await sendRequest(socket, op, args, opts) };
  } finally {
    socket.destroy();
  }
}
