/**
 * Global options shared by every subcommand (INTERFACE.md "Global options"),
 * and the objects built from them: home store, server resolver, logger.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { HomeStore } from '../agent/home-store';
import { createServerResolver, type ServerEndpoint, type ServerResolver } from '../q2q/control/discovery';
import { parseDomain } from '../q2q/address';
import { vertexError } from '../q2q/errors';
import type { Logger } from '../q2q/util/log';
import { parseHostPort } from '../config/schema';
import { createLogger } from './logger';

export interface GlobalArgs {
  home?: string;
  resolve?: string[];
  logLevel?: string;
  json?: boolean;
}

export function homeDir(args: GlobalArgs, env: NodeJS.ProcessEnv = process.env): string {
  if (args.home) return path.resolve(args.home);
  if (env.VERTEX_HOME) return path.resolve(env.VERTEX_HOME);
  return path.join(os.homedir(), '.config', 'vertex');
}

/** Parses repeated `--resolve DOMAIN=HOST:PORT`. */
export function resolveOverrides(args: GlobalArgs): Map<string, ServerEndpoint> {
  const map = new Map<string, ServerEndpoint>();
  for (const item of args.resolve ?? []) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw vertexError('Usage', `--resolve ${item}: expected DOMAIN=HOST:PORT`);
    const domain = parseDomain(item.slice(0, eq));
    let endpoint: ServerEndpoint;
    try {
      endpoint = parseHostPort(item.slice(eq + 1));
    } catch (err) {
      throw vertexError('Usage', `--resolve ${item}: expected DOMAIN=HOST:PORT (${(err as Error).message})`, err);
    }
    map.set(domain, endpoint);
  }
  return map;
}

export function serverResolver(args: GlobalArgs, extra?: Map<string, ServerEndpoint>): ServerResolver {
  const overrides = new Map([...(extra ?? new Map<string, ServerEndpoint>()), ...resolveOverrides(args)]);
  return createServerResolver({ overrides });
}

export function homeStore(args: GlobalArgs): HomeStore {
  return new HomeStore(homeDir(args));
}

export function cliLogger(args: GlobalArgs, fallbackLevel = 'warn'): Logger {
  return createLogger({ level: args.logLevel ?? fallbackLevel });
}
