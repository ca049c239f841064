/**
 * Direct candidates travel in inbound requests and answers as a JSON list of
 * "tcp:HOST:PORT" / "ptcp:HOST:PORT" strings (IPv6 hosts in brackets), with
 * an optional "nat:easy|hard" marker at the end (nat-type.ts). Parsers skip
 * entries they do not understand and keep at most MAX_CANDIDATES.
 */
import * as net from 'node:net';
import { ALL_ROUTES, type DirectRoute, type RouteName } from '../transport/route';

export const MAX_CANDIDATES = 16;

export interface Candidate {
  route: DirectRoute;
  host: string;
  port: number;
}

export function formatCandidate(route: DirectRoute, host: string, port: number): string {
  return net.isIPv6(host) ? `${route}:[${host}]:${port}` : `${route}:${host}:${port}`;
}

export function parseCandidates(json: string | undefined): Candidate[] {
  let list: unknown;
  try {
    list = JSON.parse(json ?? '[]');
  } catch {
    return [];
  }
  if (!Array.isArray(list)) return [];
  const out: Candidate[] = [];
  for (const item of list.slice(0, MAX_CANDIDATES)) {
    // Strings only: String() of a deeply nested array (a caller's JSON) overflows the stack.
    const m = typeof item === 'string' ? /^(tcp|ptcp):\[?([^\]]+?)\]?:(\d{1,5})$/.exec(item) : null;
    const port = Number(m?.[3]);
    if (m?.[1] && m[2] && net.isIP(m[2]) && port > 0 && port < 65536) out.push({ route: m[1] as DirectRoute, host: m[2], port });
  }
  return out;
}

/** The routes a JSON list names, in our order; anything unknown is dropped. */
export function parseRoutes(json: string | undefined): RouteName[] {
  try {
    const list = JSON.parse(json ?? '[]') as unknown;
    return Array.isArray(list) ? ALL_ROUTES.filter((r) => list.includes(r)) : [];
  } catch {
    return [];
  }
}
