/**
 * Logging. Library layers take a Logger and default to a silent one; only
 * the CLI creates a real pino logger (cli/logger.ts).
 *
 * The level names are declared here once: config files accept LOG_LEVELS,
 * `--log-level` also accepts `silent`.
 */
import pino from 'pino';

export type Logger = pino.Logger;

export const silentLogger: Logger = pino({ level: 'silent' });

/** Levels a config file may name (`log.level`). */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Levels `--log-level` accepts: the config's, and `silent`. */
export const LOGGER_LEVELS = [...LOG_LEVELS, 'silent'] as const;
export type LoggerLevel = (typeof LOGGER_LEVELS)[number];
