/**
 * Logging. Library layers take a Logger and default to a silent one; only
 * the CLI creates a real pino logger (cli/logger.ts).
 */
import pino from 'pino';

export type Logger = pino.Logger;

export const silentLogger: Logger = pino({ level: 'silent' });
