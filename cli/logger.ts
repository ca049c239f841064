/**
 * The one real logger: pino JSON lines on stderr, one per event.
 *
 * Under systemd (JOURNAL_STREAM names our stderr), each line starts with a
 * `<N>` syslog priority, which journald strips and records as the entry's
 * priority (sd-daemon(3), SyslogLevelPrefix=), and pino's `time` is left out
 * because the journal stamps every entry itself. The library layers never
 * build a logger; they get this one, or a child of it, as an option.
 */
import * as fs from 'node:fs';
import pino from 'pino';
import { vertexError } from '../q2q/errors';
import type { Logger } from '../q2q/util/log';

export const LOGGER_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LoggerLevel = (typeof LOGGER_LEVELS)[number];

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
  /** Where lines go; default: stderr, written synchronously so nothing is lost at exit. */
  readonly destination?: pino.DestinationStream | NodeJS.WritableStream;
  /** The environment to look at; default process.env. */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

export function createLogger(options: CreateLoggerOptions): Logger {
  const level = checkLevel(options.level);
  const env = options.env ?? process.env;
  const journald = options.journald ?? (options.destination === undefined ? isJournalStream(env['JOURNAL_STREAM'], STDERR_FD) : Boolean(env['JOURNAL_STREAM']));
  const base = options.destination ?? pino.destination({ dest: STDERR_FD, sync: true });
  return pino(
    {
      level,
      // pid and hostname are noise on a terminal and duplicates in the journal.
      base: options.name === undefined ? null : { name: options.name },
      timestamp: journald ? false : pino.stdTimeFunctions.isoTime,
      redact: { paths: [...REDACTED_PATHS], censor: REDACTED },
    },
    journald ? withSyslogPrefix(base) : (base as pino.DestinationStream),
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

interface MetadataStream {
  lastLevel: number;
  write(line: string): void;
  flush?: (cb?: (err?: Error | null) => void) => void;
}

/**
 * Prefixes each line with its syslog priority. pino sets `lastLevel` on a
 * destination that asks for metadata, just before it calls `write` (the
 * mechanism pino.multistream uses), so the line is not parsed again.
 */
function withSyslogPrefix(destination: pino.DestinationStream | NodeJS.WritableStream): pino.DestinationStream {
  const target = destination as { write(chunk: string): unknown; flush?: (cb?: (err?: Error | null) => void) => void };
  const stream: MetadataStream & { [key: symbol]: boolean } = {
    [Symbol.for('pino.metadata')]: true,
    lastLevel: PINO_LEVEL.info,
    write(line: string) {
      target.write(`<${syslogPriority(this.lastLevel)}>${line}`);
    },
  };
  if (typeof target.flush === 'function') {
    const flush = target.flush.bind(target);
    stream.flush = (cb) => flush(cb);
  }
  return stream;
}
