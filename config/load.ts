/**
 * Loads a configuration file: YAML text, then the zod file schema, then the
 * defaults from DEFAULTS, then a deep-frozen typed object (config/schema.ts
 * documents the output shape).
 *
 * The caller reads the file and passes its text; nothing here touches the
 * disk or the environment. Every failure is one VertexError('Config') whose
 * message has one line per problem, sorted by line:
 *
 *     /etc/vertex/agent.yaml:7: socks.listen: expected HOST:PORT such as 127.0.0.1:1080, got "1080x": ...
 *
 * Values given as `overrides` (the CLI's flags) replace the file's and are
 * reported as `command line: <key.path>: ...`.
 */
import * as path from 'node:path';
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { VertexError } from '../q2q/errors';
import { DEFAULTS } from './defaults';
import {
  agentFileSchema,
  ALLOWED_KEYS_PREFIX,
  deepFreeze,
  describeValue,
  expectedGot,
  serverFileSchema,
  toAgentConfig,
  toServerConfig,
  type AgentConfig,
  type AgentFile,
  type ServerConfig,
  type ServerFile,
} from './schema';

export { formatHostPort, parseDuration, parseHostPort } from './schema';
export type { AgentConfig, HostPort, LogLevel, RouteName, ServerConfig } from './schema';

/** Config files are a few kilobytes; refuse anything absurd before parsing it. */
export const MAX_CONFIG_BYTES = 1024 * 1024;
/** The YAML parser's own guard against alias bombs. */
const MAX_ALIAS_COUNT = 100;
/** Past this many problems, the message says how many more there are. */
const MAX_REPORTED_PROBLEMS = 20;
const SUPPORTED_VERSION = 1;
const COMMAND_LINE = 'command line';

export type ConfigKind = 'agent' | 'server';
/** CLI flags, in the file's own shape; undefined values are ignored. */
export type AgentOverrides = Partial<Omit<AgentFile, 'version'>>;
export type ServerOverrides = Partial<Omit<ServerFile, 'version'>>;

export interface LoadOptions<O> {
  readonly overrides?: O;
}

export function loadConfig(kind: 'agent', text: string, filePath: string, options?: LoadOptions<AgentOverrides>): AgentConfig;
export function loadConfig(kind: 'server', text: string, filePath: string, options?: LoadOptions<ServerOverrides>): ServerConfig;
export function loadConfig(
  kind: ConfigKind,
  text: string,
  filePath: string,
  options?: LoadOptions<AgentOverrides | ServerOverrides>,
): AgentConfig | ServerConfig;
export function loadConfig(
  kind: ConfigKind,
  text: string,
  filePath: string,
  options: LoadOptions<AgentOverrides | ServerOverrides> = {},
): AgentConfig | ServerConfig {
  return kind === 'agent'
    ? loadAgentConfig(text, filePath, options as LoadOptions<AgentOverrides>)
    : loadServerConfig(text, filePath, options as LoadOptions<ServerOverrides>);
}

export function loadAgentConfig(text: string, filePath: string, options: LoadOptions<AgentOverrides> = {}): AgentConfig {
  const source = parseSource(text, filePath, options.overrides);
  return deepFreeze(toAgentConfig(validate(agentFileSchema, source), DEFAULTS.agent, DEFAULTS.agent_receive));
}

export function loadServerConfig(text: string, filePath: string, options: LoadOptions<ServerOverrides> = {}): ServerConfig {
  const source = parseSource(text, filePath, options.overrides);
  return deepFreeze(toServerConfig(validate(serverFileSchema, source), DEFAULTS.server));
}

/** A configuration with no file: the defaults plus the CLI's flags. */
export function buildAgentConfig(overrides: AgentOverrides = {}): AgentConfig {
  return deepFreeze(toAgentConfig(validate(agentFileSchema, flagsOnlySource(overrides)), DEFAULTS.agent, DEFAULTS.agent_receive));
}

/** As buildAgentConfig; `domains` has no default, so the overrides must name one. */
export function buildServerConfig(overrides: ServerOverrides): ServerConfig {
  return deepFreeze(toServerConfig(validate(serverFileSchema, flagsOnlySource(overrides)), DEFAULTS.server));
}

/**
 * Where `control.socket: auto` puts the agent's socket: systemd's
 * RuntimeDirectory= (`$RUNTIME_DIRECTORY/agent.sock`), else
 * `$XDG_RUNTIME_DIR/vertex/agent.sock`, else `<home>/agent.sock`.
 */
export function resolveControlSocket(
  socket: string,
  context: { readonly env: Readonly<Record<string, string | undefined>>; readonly home: string },
): string {
  if (socket !== 'auto') return socket;
  // systemd lists several directories colon-separated when a unit has more than one.
  const runtimeDirectory = context.env['RUNTIME_DIRECTORY']?.split(':')[0];
  if (runtimeDirectory) return path.join(runtimeDirectory, 'agent.sock');
  const xdg = context.env['XDG_RUNTIME_DIR'];
  if (xdg) return path.join(xdg, 'vertex', 'agent.sock');
  return path.join(context.home, 'agent.sock');
}

// ---- from text to a plain object ----

interface Source {
  /** The file path, or COMMAND_LINE when there is no file. */
  readonly label: string;
  readonly doc?: Document.Parsed;
  readonly lines?: LineCounter;
  readonly overrides?: Record<string, unknown>;
  /** The file's data merged with the overrides. */
  readonly data: Record<string, unknown>;
}

function configError(lines: string[]): VertexError {
  const shown = lines.slice(0, MAX_REPORTED_PROBLEMS);
  if (lines.length > shown.length) shown.push(`(and ${lines.length - shown.length} more problems)`);
  return new VertexError('Config', shown.join('\n'));
}

function parseSource(text: string, filePath: string, overrides: object | undefined): Source {
  if (Buffer.byteLength(text) > MAX_CONFIG_BYTES) {
    throw configError([`${filePath}:1: (top level): file larger than ${MAX_CONFIG_BYTES} bytes`]);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: true, uniqueKeys: true });
  const yamlProblems = [...doc.errors, ...doc.warnings];
  if (yamlProblems.length > 0) {
    throw configError(
      yamlProblems.map((e) => `${filePath}:${e.linePos?.[0].line ?? 1}: invalid YAML: ${yamlReason(e.message)}`),
    );
  }
  const root = doc.contents;
  if (root === null) {
    throw configError([`${filePath}:1: version: missing; the file is empty, expected a mapping that starts with "version: ${SUPPORTED_VERSION}"`]);
  }
  const rootLine = lines.linePos(root.range[0]).line;
  if (!isMap(root)) {
    throw configError([`${filePath}:${rootLine}: (top level): expected a mapping of keys to values, got ${describeNode(root)}`]);
  }
  let data: unknown;
  try {
    data = stripNulls(doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT }));
  } catch (err) {
    throw new VertexError('Config', `${filePath}:${rootLine}: invalid YAML: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
    });
  }
  const fileData = data as Record<string, unknown>;
  checkVersion(fileData['version'], () => locateIn(doc, lines, ['version'], 'value'), filePath);
  return {
    label: filePath,
    doc,
    lines,
    data: overrides ? (mergeOverrides(fileData, overrides) as Record<string, unknown>) : fileData,
    ...(overrides && { overrides: overrides as Record<string, unknown> }),
  };
}

function flagsOnlySource(overrides: object): Source {
  return {
    label: COMMAND_LINE,
    overrides: overrides as Record<string, unknown>,
    data: mergeOverrides({ version: SUPPORTED_VERSION }, overrides) as Record<string, unknown>,
  };
}

/** The version is checked before anything else: another version may mean other keys entirely. */
function checkVersion(value: unknown, line: () => number, filePath: string): void {
  if (value === SUPPORTED_VERSION) return;
  const where = `${filePath}:${line()}: version`;
  if (value === undefined) {
    throw configError([`${where}: missing; every config file starts with "version: ${SUPPORTED_VERSION}"`]);
  }
  if (typeof value === 'number') {
    throw configError([`${where}: unsupported version ${value}; this vertex reads version ${SUPPORTED_VERSION}`]);
  }
  throw configError([`${where}: expected ${SUPPORTED_VERSION}, got ${describeValue(value)}`]);
}

/** yaml's message without its " at line L, column C:" tail and source excerpt. */
function yamlReason(message: string): string {
  const first = message.split('\n')[0] ?? message;
  return first.replace(/ at line \d+, column \d+:?$/, '');
}

/** An empty YAML value (`socks:` with nothing after it) means "use the default". */
function stripNulls(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(stripNulls);
  if (isPlainObject(value)) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) if (v !== null) out[k] = stripNulls(v);
    return out;
  }
  return value;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** Plain objects merge key by key; anything else in the overrides replaces the file's value. */
function mergeOverrides(base: unknown, over: unknown): unknown {
  if (over === undefined) return base;
  if (!isPlainObject(base) || !isPlainObject(over)) return over;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) if (v !== undefined) out[k] = mergeOverrides(base[k], v);
  return out;
}

function isOverridden(overrides: Record<string, unknown>, keyPath: readonly PropertyKey[]): boolean {
  let cur: unknown = overrides;
  for (const seg of keyPath) {
    if (!isPlainObject(cur)) return true;
    cur = cur[String(seg)];
    if (cur === undefined) return false;
  }
  return true;
}

// ---- validation and error messages ----

interface Problem {
  readonly path: readonly PropertyKey[];
  /** Point at the key itself (unknown and invalid keys) or at its value. */
  readonly at: 'key' | 'value';
  readonly message: string;
}

function validate<S extends z.ZodType>(schema: S, source: Source): z.output<S> {
  const result = schema.safeParse(source.data, { error: genericMessage });
  if (result.success) return result.data;
  const located = flatten(result.error.issues, []).map((p) => {
    const where = locate(source, p);
    return { line: where.line, text: `${where.label}: ${formatPath(p.path)}: ${p.message}` };
  });
  located.sort((a, b) => a.line - b.line);
  throw configError(located.map((l) => l.text));
}

function flatten(issues: readonly z.core.$ZodIssue[], base: readonly PropertyKey[]): Problem[] {
  const out: Problem[] = [];
  for (const iss of issues) {
    const at = [...base, ...iss.path];
    switch (iss.code) {
      case 'unrecognized_keys': {
        const allowed = iss.message.startsWith(ALLOWED_KEYS_PREFIX) ? iss.message.slice(ALLOWED_KEYS_PREFIX.length).split(', ') : [];
        for (const key of iss.keys) {
          const guess = closest(key, allowed);
          const hint = guess ? ` (did you mean "${guess}"?)` : '';
          const list = allowed.length > 0 ? `; allowed keys here: ${allowed.join(', ')}` : '';
          out.push({ path: [...at, key], at: 'key', message: `unknown key${hint}${list}` });
        }
        break;
      }
      case 'invalid_key':
        out.push({ path: at, at: 'key', message: iss.issues[0]?.message ?? iss.message });
        break;
      case 'invalid_union': {
        // Report the branch the value was evidently meant for (an object for
        // `auth: {username, password}`), not "matched none of the options".
        const meant = iss.errors.filter(
          (branch) => !branch.some((e) => e.path.length === 0 && (e.code === 'invalid_type' || e.code === 'invalid_value')),
        );
        const only = meant.length === 1 ? meant[0] : undefined;
        if (only) out.push(...flatten(only, at));
        else out.push({ path: at, at: 'value', message: iss.message });
        break;
      }
      default:
        out.push({ path: at, at: 'value', message: iss.message });
    }
  }
  return out;
}

/** Messages for issues that the schema does not word itself. */
function genericMessage(iss: z.core.$ZodRawIssue): string | undefined {
  switch (iss.code) {
    case 'invalid_type':
      return expectedGot(describeExpected(iss.expected), iss.input);
    case 'invalid_value':
      return expectedGot(iss.values.map((v) => JSON.stringify(v)).join(' | '), iss.input);
    case 'too_small':
      if (iss.origin === 'array') return `expected at least ${String(iss.minimum)} item${iss.minimum === 1 ? '' : 's'}`;
      if (iss.origin === 'string') return 'expected a non-empty string';
      return `expected at least ${String(iss.minimum)}, got ${describeValue(iss.input)}`;
    case 'too_big':
      if (iss.origin === 'array') return `expected at most ${String(iss.maximum)} items`;
      return `expected at most ${String(iss.maximum)}, got ${describeValue(iss.input)}`;
    default:
      return undefined;
  }
}

function describeExpected(expected: string): string {
  switch (expected) {
    case 'object':
      return 'a mapping of keys to values';
    case 'array':
      return 'a list';
    case 'string':
      return 'a string';
    case 'number':
      return 'a number';
    case 'int':
      return 'an integer';
    case 'boolean':
      return 'true or false';
    default:
      return expected;
  }
}

function describeNode(node: unknown): string {
  if (isSeq(node)) return 'a list';
  if (isScalar(node)) return describeValue(node.value);
  return 'something else';
}

/** `forwards[0].to`, `ports.22`, `domains["example.com"].server`. */
function formatPath(keyPath: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of keyPath) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else {
      const key = String(seg);
      out += /^[A-Za-z0-9_-]+$/.test(key) ? `${out ? '.' : ''}${key}` : `[${JSON.stringify(key)}]`;
    }
  }
  return out || '(top level)';
}

/** The nearest allowed key within two edits, for "did you mean". */
function closest(key: string, allowed: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of allowed) {
    const d = editDistance(key.toLowerCase(), candidate);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      cur[j] = Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost);
    }
    prev = cur;
  }
  return prev[b.length] ?? 0;
}

// ---- from a key path to a line ----

function locate(source: Source, problem: Problem): { label: string; line: number } {
  if (source.overrides && isOverridden(source.overrides, problem.path)) return { label: COMMAND_LINE, line: 0 };
  if (!source.doc || !source.lines) return { label: source.label, line: 0 };
  const line = locateIn(source.doc, source.lines, problem.path, problem.at);
  return { label: `${source.label}:${line}`, line };
}

/**
 * The line of the node at `keyPath`. A key that is absent (a missing required
 * key) resolves to its parent mapping, which is where it belongs.
 */
function locateIn(doc: Document.Parsed, lines: LineCounter, keyPath: readonly PropertyKey[], at: 'key' | 'value'): number {
  let node: unknown = doc.contents;
  let offset = rangeStart(node) ?? 0;
  for (let i = 0; i < keyPath.length; i++) {
    const seg = keyPath[i];
    if (isAlias(node)) node = node.resolve(doc);
    if (isMap(node)) {
      const pair = node.items.find((p) => keyText(p.key) === String(seg));
      if (!pair) break;
      const keyStart = rangeStart(pair.key);
      if (i === keyPath.length - 1 && at === 'key') {
        offset = keyStart ?? offset;
        break;
      }
      node = pair.value;
      offset = rangeStart(pair.value) ?? keyStart ?? offset;
    } else if (isSeq(node) && typeof seg === 'number') {
      const item: unknown = node.items[seg];
      if (item === undefined) break;
      node = item;
      offset = rangeStart(item) ?? offset;
    } else {
      break;
    }
  }
  return lines.linePos(offset).line;
}

function keyText(key: unknown): string {
  return isScalar(key) ? String(key.value) : String(key);
}

function rangeStart(node: unknown): number | undefined {
  if (node !== null && typeof node === 'object' && 'range' in node) {
    const range = (node as { range?: readonly number[] | null }).range;
    return range?.[0];
  }
  return undefined;
}
