/**
 * The one real logger: pino, one line per event on stderr.
 *
 * - On a terminal (stderr is a TTY), lines are for people:
 *   `12:00:01.123 INFO  agent: tunnel open kind=socks route=tcp`, with no
 *   stack traces (an error shows its message).
 * - Anywhere else (a pipe, a file, journald), one JSON object per line.
 *   Under systemd (JOURNAL_STREAM names our stderr), each line starts with a
 *   `<N>` syslog priority, which journald strips and records as the entry's
 *   priority (sd-daemon(3), SyslogLevelPrefix=), and pino's `time` is left
 *   out because the journal stamps every entry itself.
 *
 * Child loggers add their bindings after their parent's, so pino can write
 * a key twice (`"component":"agent",...,"component":"home"`). Every line is
 * read back and written once per key, the innermost value winning, so no
 * line carries a duplicate key. Stack traces stay out of JSON lines too,
 * unless the level is debug or trace.
 *
 * The library layers never build a logger; they get this one, or a child of
 * it, as an option.
 */
import * as fs from 'node:fs';
import * as tty from 'node:tty';
import pino from 'pino';
import { vertexError } from '../q2q/errors';
import { LOGGER_LEVELS, type Logger, type LoggerLevel } from '../q2q/util/log';

export { LOGGER_LEVELS, type LoggerLevel };

/** pino's numeric levels, named: the values pino writes in `"level"`. */
const PINO_LEVEL = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 } as const;

/** syslog priorities (RFC 5424 §6.2.1) for pino's levels. */
const SYSLOG = { debug: 7, info: 6, warning: 4, err: 3, crit: 2 } as const;

/**
 * Field names whose values never reach a log line. Paths are pino redact
 * paths: `*` is one level of nesting.
 */
export const REDACTED_PATHS = [
  'password',
  '*.password',
  '*.*.password',
  'key',
  '*.key',
  'keyPem',
  '*.keyPem',
  'token',
  '*.token',
  'authorization',
  '*.authorization',
] as const;
const REDACTED = '[redacted]';
const STDERR_FD = 2;

export interface CreateLoggerOptions {
  /** One of LOGGER_LEVELS; the CLI passes `--log-level` or the config's `log.level` as is. */
  readonly level: string;
  /** Becomes the `name` field of every line. */
  readonly name?: string;
  /** Write journald-style lines; by default, when `env.JOURNAL_STREAM` says stderr is the journal. */
  readonly journald?: boolean;
  /** Lines for people instead of JSON; by default, when lines go to stderr and it is a terminal. */
  readonly pretty?: boolean;
  /** Where lines go; default: stderr, written synchronously so nothing is lost at exit. */
  readonly destination?: pino.DestinationStream | NodeJS.WritableStream;
  /** The environment to look at; default process.env. */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

export function createLogger(options: CreateLoggerOptions): Logger {
  const level = checkLevel(options.level);
  const env = options.env ?? process.env;
  const toStderr = options.destination === undefined;
  const journald = options.journald ?? (toStderr ? isJournalStream(env['JOURNAL_STREAM'], STDERR_FD) : Boolean(env['JOURNAL_STREAM']));
  const pretty = !journald && (options.pretty ?? (toStderr && tty.isatty(STDERR_FD)));
  const target = options.destination ?? pino.destination({ dest: STDERR_FD, sync: true });
  const stacks = level === 'debug' || level === 'trace';
  return pino(
    {
      level,
      // pid and hostname are noise on a terminal and duplicates in the journal.
      base: options.name === undefined ? null : { name: options.name },
      timestamp: journald ? false : pino.stdTimeFunctions.isoTime,
      redact: { paths: [...REDACTED_PATHS], censor: REDACTED },
    },
    lineWriter(target, { journald, pretty, stacks }),
  );
}

function checkLevel(level: string): LoggerLevel {
  if ((LOGGER_LEVELS as readonly string[]).includes(level)) return level as LoggerLevel;
  throw vertexError('Usage', `log level "${level}": expected one of ${LOGGER_LEVELS.join(', ')}`);
}

/** The syslog priority for a pino level number. */
export function syslogPriority(pinoLevel: number): number {
  if (pinoLevel >= PINO_LEVEL.fatal) return SYSLOG.crit;
  if (pinoLevel >= PINO_LEVEL.error) return SYSLOG.err;
  if (pinoLevel >= PINO_LEVEL.warn) return SYSLOG.warning;
  if (pinoLevel >= PINO_LEVEL.info) return SYSLOG.info;
  return SYSLOG.debug;
}

/**
 * systemd sets JOURNAL_STREAM to the `device:inode` of the stream it connected
 * to stdout/stderr; children inherit it even when their stderr goes elsewhere,
 * so it counts only if it names `fd` (systemd.exec(5), "$JOURNAL_STREAM").
 */
export function isJournalStream(journalStream: string | undefined, fd: number): boolean {
  if (!journalStream) return false;
  try {
    const st = fs.fstatSync(fd);
    return journalStream === `${st.dev}:${st.ino}`;
  } catch {
    return false;
  }
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
/** Keys a human line shows in its head rather than as key=value. */
const HEAD_KEYS = new Set(['level', 'time', 'msg', 'name', 'component']);

/** One parsed entry as a line for people: time, level, component, message, then key=value pairs. */
export function formatPretty(entry: Record<string, unknown>): string {
  const time = typeof entry['time'] === 'string' ? entry['time'].slice(11, 23) : '';
  const level = (LEVEL_NAMES[Number(entry['level'])] ?? String(entry['level'])).padEnd(5);
  const who = entry['component'] ?? entry['name'];
  const parts = [time, level, who === undefined ? '' : `${String(who)}:`, String(entry['msg'] ?? '')].filter((p) => p !== '');
  for (const [key, value] of Object.entries(entry)) {
    if (HEAD_KEYS.has(key) || value === undefined) continue;
    parts.push(`${key}=${prettyValue(value)}`);
  }
  return parts.join(' ');
}

function prettyValue(value: unknown): string {
  if (isErrorLike(value)) return prettyValue(value.message);
  if (typeof value === 'string') return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value);
}

function isErrorLike(value: unknown): value is { message: string } {
  return value !== null && typeof value === 'object' && typeof (value as { message?: unknown }).message === 'string' && 'stack' in value;
}

/** Drops `stack` from serialized errors (pino's err serializer adds it), at any depth. */
function withoutStacks(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutStacks);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) if (k !== 'stack') out[k] = withoutStacks(v);
    return out;
  }
  return value;
}

/**
 * The destination pino writes to: each line is parsed (which keeps one value
 * per key, the last), then written as JSON (with the syslog prefix under
 * journald) or as a line for people.
 */
function lineWriter(
  destination: pino.DestinationStream | NodeJS.WritableStream,
  opts: { journald: boolean; pretty: boolean; stacks: boolean },
): pino.DestinationStream {
  const target = destination as { write(chunk: string): unknown; flush?: (cb?: (err?: Error | null) => void) => void };
  const stream: pino.DestinationStream & { flush?: (cb?: (err?: Error | null) => void) => void } = {
    write(line: string) {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        target.write(line);
        return;
      }
      if (opts.pretty) {
        target.write(`${formatPretty(entry)}\n`);
        return;
      }
      const json = JSON.stringify(opts.stacks ? entry : withoutStacks(entry));
      target.write(opts.journald ? `<${syslogPriority(Number(entry['level']))}>${json}\n` : `${json}\n`);
    },
  };
  if (typeof target.flush === 'function') {
    const flush = target.flush.bind(target);
    stream.flush = (cb) => flush(cb);
  }
  return stream;
}
