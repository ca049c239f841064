/**
 * The control API's requests, one zod schema per op, shared by the daemon
 * (which parses every request with them) and the CLI (whose calls are typed
 * by them): no `Record<string, unknown>` and casts on either side.
 *
 * Ops come in two kinds:
 *
 * - calls: one request, one reply line, then the agent closes;
 * - stream ops (`connect`, `receive`, `receive-accept`): after an ok reply
 *   the same socket goes on carrying bytes (agent/control-api.ts).
 *
 * Values are checked for shape here; names and addresses are checked by the
 * parsers of q2q/address.ts where they are used, whose messages say more.
 */
import { z } from 'zod';
import { vertexError } from '../q2q/errors';
import type { NatMapping } from '../q2q/negotiate/nat-type';

const text = z.string().min(1);
const patterns = z.array(z.string().min(1));

export const CONTROL_REQUESTS = {
  status: z.object({}),
  'expose-add': z.object({ service: text, target: text, allow: patterns.optional(), replace: z.boolean().optional() }),
  'expose-remove': z.object({ service: text }),
  'forward-add': z.object({ listen: text, to: text, replace: z.boolean().optional() }),
  'forward-remove': z.object({ listen: text }),
  ping: z.object({ target: text, count: z.number().int().optional() }),
  /** A tunnel to `target` (user@domain:service); `framed` asks for agent/control-tunnel.ts frames. */
  connect: z.object({ target: text, timeoutMs: z.number().positive().optional(), framed: z.boolean().optional() }),
  /**
   * `vertex receive` through the agent: the agent takes the file-transfer
   * service for this client (allow: who may send; omitted means the owner)
   * and, on the same socket, announces each sender as a JSON line
   * (ReceiveEvent). The client claims each with `receive-accept`.
   */
  receive: z.object({ allow: patterns.optional() }),
  /** Claims an announced incoming transfer: the socket becomes its framed stream. */
  'receive-accept': z.object({ id: text }),
} as const;

export type ControlOp = keyof typeof CONTROL_REQUESTS;
export const CONTROL_OPS = Object.keys(CONTROL_REQUESTS) as ControlOp[];
export type ControlArgs<Op extends ControlOp> = z.infer<(typeof CONTROL_REQUESTS)[Op]>;

/** Ops after whose ok reply the socket carries bytes instead of closing. */
export const STREAM_OPS = ['connect', 'receive', 'receive-accept'] as const satisfies readonly ControlOp[];
export type StreamOp = (typeof STREAM_OPS)[number];
export type CallOp = Exclude<ControlOp, StreamOp>;

export function isStreamOp(op: ControlOp): op is StreamOp {
  return (STREAM_OPS as readonly string[]).includes(op);
}

/** Checks `args` against the op's schema; the message names the first bad key. */
export function parseControlArgs<Op extends ControlOp>(op: Op, args: unknown): ControlArgs<Op> {
  const result = CONTROL_REQUESTS[op].safeParse(args ?? {});
  if (result.success) return result.data as ControlArgs<Op>;
  const issue = result.error.issues[0];
  const key = issue && issue.path.length > 0 ? `"${issue.path.join('.')}"` : 'args';
  throw vertexError('BadRequest', `control request ${op}: ${key}: ${issue?.message ?? 'invalid'}`);
}

// ---- replies of the calls ----

/*
 * Loose objects: a newer agent may add fields, and an older CLI passes them
 * on (--json) instead of dropping them; what the CLI reads is checked.
 */
const nullableText = z.string().nullable();
/** q2q/negotiate/nat-type.ts NatMapping as values for zod; the compiler checks each one is a NatMapping. */
const NAT_MAPPINGS = ['easy', 'hard', 'unknown'] as const satisfies readonly NatMapping[];

/**
 * The reply to `status` (AgentDaemon.status(), agent/daemon.ts AgentStatus):
 * what `vertex status` prints. Kinds, routes and sources are plain strings:
 * the CLI prints them, and a newer agent's new route must not make an older
 * CLI refuse the whole reply. The NAT kind is an enum: the text explains each.
 */
export const AGENT_STATUS = z.looseObject({
  identity: z.string(),
  device: z.string(),
  devices: z.looseObject({
    online: z.array(z.string()),
    conflicts: z.array(z.looseObject({ service: z.string(), devices: z.array(z.string()), chosen: z.string() })),
    moreConflicts: z.number(),
    replacedBy: nullableText,
  }),
  certificate: z.looseObject({ notAfter: z.string() }),
  server: z.looseObject({
    state: z.string(),
    server: nullableText,
    since: z.string(),
    lastError: nullableText,
    nextTry: nullableText.optional(),
    lastTry: z.looseObject({ at: z.string(), trigger: z.string() }).nullable().optional(),
    tries: z.record(z.string(), z.number()).optional(),
  }),
  reflexive: z.looseObject({ tcp: nullableText, udp: nullableText, nat: z.enum(NAT_MAPPINGS).optional() }),
  peerListen: nullableText,
  socks: z.looseObject({ listen: z.string(), auth: z.string(), passthrough: z.boolean() }).nullable(),
  control: z.looseObject({ socket: z.string() }).nullable(),
  exposed: z.array(z.looseObject({ service: z.string(), address: z.string(), target: z.string(), allow: z.array(z.string()), source: z.string() })),
  forwards: z.array(z.looseObject({ listen: z.string(), to: z.string(), source: z.string() })),
  /** Absent from agents older than `receive:`; null when nothing receives. */
  receive: z.looseObject({
    by: z.string(),
    dir: nullableText,
    allow: z.array(z.string()),
    overwrite: z.boolean(),
    limits: z.looseObject({ maxFiles: z.number(), maxNameBytes: z.number() }).nullable().optional(),
    received: z.number(),
    failed: z.number(),
    active: z.number(),
  }).nullable().optional(),
  tunnels: z.array(z.looseObject({
    id: z.number(),
    kind: z.string(),
    target: z.string(),
    peer: z.string(),
    device: z.string().optional(),
    route: z.string(),
    local: z.string(),
    connectMs: z.number(),
    startedAt: z.string(),
    ageMs: z.number(),
    bytesIn: z.number(),
    bytesOut: z.number(),
  })),
  /** Peer sessions (issue 12); absent from agents without them. */
  sessions: z.array(z.looseObject({
    id: z.string(),
    peer: z.string(),
    device: z.string(),
    role: z.string(),
    route: z.string(),
    state: z.string(),
    streams: z.number(),
    bytesIn: z.number(),
    bytesOut: z.number(),
    ageMs: z.number(),
  })).optional(),
});
/** `vertex status` as the CLI reads it. */
export type AgentStatusReply = z.infer<typeof AGENT_STATUS>;

export const CONTROL_RESULTS = {
  status: AGENT_STATUS,
  'expose-add': z.looseObject({
    address: z.string(),
    target: z.string(),
    allow: z.array(z.string()),
    replaced: z.looseObject({ target: z.string(), allow: z.array(z.string()) }).optional(),
  }),
  'expose-remove': z.looseObject({ service: z.string(), fromConfig: z.boolean() }),
  'forward-add': z.looseObject({ listen: z.string(), to: z.string(), replaced: z.looseObject({ to: z.string() }).optional() }),
  'forward-remove': z.looseObject({ listen: z.string() }),
  ping: z.looseObject({
    target: z.string(),
    peer: z.string(),
    device: z.string(),
    route: z.string(),
    connectMs: z.number(),
    kind: z.enum(['echo', 'connect']),
    rttMs: z.array(z.number()),
  }),
} as const;
export type ResultOp = keyof typeof CONTROL_RESULTS;
export type ControlResult<Op extends ResultOp> = z.infer<(typeof CONTROL_RESULTS)[Op]>;

/** Checks an agent's reply; a reply of the wrong shape is BadRequest naming the first bad key. */
export function parseControlResult<Op extends ResultOp>(op: Op, value: unknown): ControlResult<Op> {
  const result = CONTROL_RESULTS[op].safeParse(value);
  if (result.success) return result.data as ControlResult<Op>;
  const issue = result.error.issues[0];
  throw vertexError('BadRequest', `agent reply to ${op}: ${issue && issue.path.length > 0 ? `"${issue.path.join('.')}": ` : ''}${issue?.message ?? 'invalid'}`);
}

// ---- replies of the stream ops ----

export const TUNNEL_INFO = z.object({
  target: z.string(),
  peer: z.string(),
  device: z.string(),
  route: z.string(),
  connectMs: z.number(),
  framed: z.boolean().optional(),
});
/** The ok reply to `connect` and `receive-accept`. */
export type TunnelInfo = z.infer<typeof TUNNEL_INFO>;

export const RECEIVE_INFO = z.object({
  address: z.string(),
  device: z.string(),
  service: z.string(),
  allow: z.array(z.string()),
  /** A `receive:` of agent.yaml that this client stands in for until it leaves, if any. */
  displaced: z.object({ dir: z.string() }).nullable(),
});
/** The ok reply to `receive`. */
export type ReceiveInfo = z.infer<typeof RECEIVE_INFO>;

/** A line on a `receive` socket: a sender is waiting; `receive-accept` with its id takes the stream. */
export const RECEIVE_EVENT = z.object({
  event: z.literal('incoming'),
  id: z.string(),
  peer: z.string(),
  device: z.string(),
  route: z.string(),
});
export type ReceiveEvent = z.infer<typeof RECEIVE_EVENT>;
