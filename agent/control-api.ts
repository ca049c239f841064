/**
 * The agent's local API, served on a unix socket that only its user can
 * open (mode 0600 inside a 0700 directory). The CLI is a thin client of it,
 * as Tailscale's CLI is of its LocalAPI.
 *
 * Protocol: JSON lines, one request per connection.
 *
 *     client -> agent   {"op":"status","args":{...}}\n
 *     agent -> client   {"ok":true,"result":{...}}\n
 *                   or  {"ok":false,"error":{"code":"Offline","message":"..."}}\n
 *
 * then the agent closes the connection, except for the stream ops
 * (agent/control-protocol.ts STREAM_OPS): after an ok reply to `connect` the
 * same socket carries the tunnel's bytes both ways, with half-close (that is
 * how `vertex connect` and `vertex send` use the agent's Q2Q session). With
 * `"framed": true` in the request (and in the reply), those bytes are framed
 * (agent/control-tunnel.ts) so that each end learns whether the other ended
 * cleanly or why it broke off; without it they are raw, as older clients expect.
 * After `receive` the agent writes one JSON line per incoming transfer, and
 * `receive-accept` (always framed) hands one of them over.
 *
 * Every request's args are checked by the op's zod schema before a handler
 * sees them.
 *
 * A request line longer than MAX_REQUEST_BYTES, a line that is not a JSON
 * object, or no complete line within REQUEST_TIMEOUT_MS closes that
 * connection; the agent goes on.
 */
import { listenOn } from '../q2q/transport/listen';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { asVertexError, vertexError, type VertexError } from '../q2q/errors';
import { systemClock, type Clock } from '../q2q/util/clock';
import { silentLogger, type Logger } from '../q2q/util/log';
import { FramedTunnel } from './control-tunnel';
import {
  CONTROL_OPS, isStreamOp, parseControlArgs, type CallOp, type ControlArgs, type ControlOp, type StreamOp,
} from './control-protocol';
import { joinStreams } from './frontends/join';

export const MAX_REQUEST_BYTES = 64 * 1024;
export const REQUEST_TIMEOUT_MS = 5_000;
const SOCKET_MODE = 0o600;
const DIR_MODE = 0o700;

export { CONTROL_OPS, type ControlOp } from './control-protocol';

/** A parsed request: the op and its arguments, checked by the op's schema (agent/control-protocol.ts). */
export type ControlRequest = { [Op in ControlOp]: { op: Op; args: ControlArgs<Op> } }[ControlOp];
export type CallRequest = Extract<ControlRequest, { op: CallOp }>;
export type StreamRequest = Extract<ControlRequest, { op: StreamOp }>;

export type ControlReply = { ok: true; result: unknown } | { ok: false; error: { code: string; message: string } };

export interface OpenedStream {
  stream: Duplex;
  /** Goes into the ok reply (with `framed: true` added when framed). */
  info: object;
  /** The bytes after the reply are agent/control-tunnel.ts frames; else raw. */
  framed: boolean;
}

export interface ControlHandlers {
  /** Calls: the JSON result. */
  call(request: CallRequest): Promise<unknown>;
  /** Stream ops (`connect`, `receive`, `receive-accept`): the stream the socket is joined to after the reply. */
  open(request: StreamRequest, client: { signal: AbortSignal }): Promise<OpenedStream>;
}

export interface ControlApiOptions {
  socketPath: string;
  handlers: ControlHandlers;
  /** How long a client may take to send its request line; default REQUEST_TIMEOUT_MS. */
  requestTimeoutMs?: number;
  log?: Logger;
  /** Runs the request timeout; tests pass a ManualClock. Default: real time. */
  clock?: Clock;
}

export function encodeReply(reply: ControlReply): string {
  return `${JSON.stringify(reply)}\n`;
}

export function errorReply(err: unknown): ControlReply {
  const e: VertexError = asVertexError(err);
  return { ok: false, error: { code: e.code, message: e.message } };
}

/** Parses one request line; throws BadRequest saying what is wrong. */
export function parseRequest(line: string): ControlRequest {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw vertexError('BadRequest', 'control request: not JSON');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw vertexError('BadRequest', 'control request: expected a JSON object');
  const { op, args } = value as { op?: unknown; args?: unknown };
  if (typeof op !== 'string' || !(CONTROL_OPS as readonly string[]).includes(op)) {
    throw vertexError('BadRequest', `control request: unknown op ${JSON.stringify(op)}; expected one of ${CONTROL_OPS.join(', ')}`);
  }
  if (args !== undefined && (args === null || typeof args !== 'object' || Array.isArray(args))) {
    throw vertexError('BadRequest', 'control request: args must be an object');
  }
  const known = op as ControlOp;
  return { op: known, args: parseControlArgs(known, args ?? {}) } as ControlRequest;
}

export class ControlApi {
  readonly socketPath: string;
  readonly #handlers: ControlHandlers;
  readonly #log: Logger;
  readonly #requestTimeoutMs: number;
  readonly #clock: Clock;
  readonly #clients = new Set<net.Socket>();
  #server: net.Server | undefined;

  constructor(opts: ControlApiOptions) {
    this.socketPath = path.resolve(opts.socketPath);
    this.#handlers = opts.handlers;
    this.#requestTimeoutMs = opts.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
    this.#clock = opts.clock ?? systemClock;
    this.#log = (opts.log ?? silentLogger).child({ component: 'control' });
  }

  async start(): Promise<void> {
    if (this.#server) throw new Error('control api: already started');
    await prepareSocketPath(this.socketPath);
    const server = net.createServer({ allowHalfOpen: true }, (s) => this.#accept(s));
    // The umask covers the moment between bind() and chmod(): nobody else may connect, not even briefly.
    const oldMask = process.umask(0o177);
    try {
      await listenOn(server, { path: this.socketPath });
    } catch (err) {
      throw asVertexError(err, 'Internal', `control socket ${this.socketPath}: listen`);
    } finally {
      process.umask(oldMask);
    }
    fs.chmodSync(this.socketPath, SOCKET_MODE);
    server.on('error', (err) => this.#log.warn({ err }, 'control socket error'));
    this.#server = server;
    this.#log.info({ socket: this.socketPath }, 'control api listening');
  }

  async stop(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    for (const c of this.#clients) c.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    fs.rmSync(this.socketPath, { force: true });
  }

  #accept(socket: net.Socket): void {
    this.#clients.add(socket);
    socket.on('close', () => this.#clients.delete(socket));
    socket.on('error', (err) => this.#log.debug({ err: err.message }, 'control client error'));
    let buffered: Buffer = Buffer.alloc(0);
    const timer = this.#clock.setTimer(() => {
      this.#log.debug('control client sent no request in time');
      socket.destroy();
    }, this.#requestTimeoutMs);
    const onEnd = (): void => {
      timer.cancel();
      socket.destroy();
    };
    const onData = (chunk: Buffer): void => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      const nl = buffered.indexOf(0x0a);
      if (nl < 0) {
        if (buffered.length > MAX_REQUEST_BYTES) {
          timer.cancel();
          socket.end(encodeReply(errorReply(vertexError('BadRequest', `control request: longer than ${MAX_REQUEST_BYTES} bytes`))));
          socket.destroySoon();
        }
        return;
      }
      timer.cancel();
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.pause();
      const rest = buffered.subarray(nl + 1);
      if (rest.length > 0) socket.unshift(rest);
      let request: ControlRequest;
      try {
        request = parseRequest(buffered.subarray(0, nl).toString('utf8'));
      } catch (err) {
        socket.end(encodeReply(errorReply(err)));
        return;
      }
      this.#serve(socket, request);
    };
    socket.on('data', onData);
    socket.on('end', onEnd);
  }

  #serve(socket: net.Socket, request: ControlRequest): void {
    const log = this.#log.child({ op: request.op });
    if (!isStreamRequest(request)) {
      this.#handlers.call(request).then(
        (result) => socket.end(encodeReply({ ok: true, result: result ?? null })),
        (err: unknown) => {
          log.debug({ err: asVertexError(err).message }, 'control request failed');
          socket.end(encodeReply(errorReply(err)));
        },
      );
      return;
    }
    // The client may give up while the dial runs; that aborts it.
    const abort = new AbortController();
    const onGone = (): void => abort.abort();
    socket.once('close', onGone);
    this.#handlers.open(request, { signal: abort.signal }).then(
      ({ stream, info, framed }) => {
        socket.off('close', onGone);
        if (socket.destroyed) {
          stream.destroy();
          return;
        }
        socket.write(encodeReply({ ok: true, result: framed ? { ...info, framed: true } : info }));
        if (framed) void joinStreams(new FramedTunnel(socket, { other: 'the client' }), stream, { log, propagate: true });
        else void joinStreams(socket, stream, { log });
      },
      (err: unknown) => {
        socket.off('close', onGone);
        log.debug({ err: asVertexError(err).message }, `control ${request.op} failed`);
        if (!socket.destroyed) socket.end(encodeReply(errorReply(err)));
      },
    );
  }
}

function isStreamRequest(request: ControlRequest): request is StreamRequest {
  return isStreamOp(request.op);
}

/**
 * Makes the socket's directory (0700 when we create it) and clears a stale
 * socket left by an agent that died. A live one means another agent runs.
 */
async function prepareSocketPath(socketPath: string): Promise<void> {
  const dir = path.dirname(socketPath);
  if (!fs.existsSync(dir)) fs.mkdirSync(dir, { recursive: true, mode: DIR_MODE });
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!st.isSocket()) {
    throw vertexError('Usage', `control socket ${socketPath}: the path exists and is not a socket; remove it or set control.socket`);
  }
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (alive) {
    throw vertexError('Usage', `control socket ${socketPath}: another agent is running there; stop it first, or set control.socket in agent.yaml`);
  }
  fs.rmSync(socketPath, { force: true });
}
