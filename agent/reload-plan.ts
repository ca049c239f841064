/**
 * What a reload changes, worked out without touching anything: the daemon
 * (agent/daemon.ts reload()) applies the plan. Kept apart so that the rules
 * are tested on their own:
 *
 * - an agent.yaml expose or forward the new file no longer has goes;
 * - a new one, or one whose target, allow list or destination changed, is
 *   (re)applied;
 * - an entry added at runtime (`vertex expose`/`forward`, source `cli`) is
 *   never removed by a reload, and keeps a service or port it replaced on
 *   purpose (--replace) even when the file names it;
 * - every other changed section takes effect only after a restart.
 */
import { formatHostPort, type AgentConfig, type HostPort } from '../config/schema';

export type EntrySource = 'config' | 'cli';

/** Sections that a reload does not apply. */
export const RESTART_SECTIONS = ['identity', 'device', 'socks', 'domains', 'routes', 'ports', 'control', 'log', 'relayDelayMs', 'peerListen', 'advertise'] as const;

export interface CurrentExpose {
  service: string;
  target: HostPort;
  allow: readonly string[];
  source: EntrySource;
}

export interface CurrentForward {
  /** The written listen address (config entries), or the bound one (port-0 cli entries). */
  key: string;
  to: string;
  source: EntrySource;
}

export interface ReloadPlan {
  exposes: { remove: string[]; apply: AgentConfig['expose'][number][] };
  forwards: { remove: string[]; add: AgentConfig['forwards'][number][] };
  needRestart: string[];
}

export function planReload(
  prev: AgentConfig,
  next: AgentConfig,
  current: { exposes: readonly CurrentExpose[]; forwards: readonly CurrentForward[]; defaultAllow: readonly string[] },
): ReloadPlan {
  const needRestart = RESTART_SECTIONS.filter((key) => JSON.stringify(prev[key]) !== JSON.stringify(next[key]));

  const wantedExposes = new Map(next.expose.map((e) => [e.service, e]));
  const exposes = new Map(current.exposes.map((e) => [e.service, e]));
  const removeExposes = current.exposes.filter((e) => e.source === 'config' && !wantedExposes.has(e.service)).map((e) => e.service);
  const applyExposes = next.expose.filter((wanted) => {
    const entry = exposes.get(wanted.service);
    if (!entry) return true;
    // A runtime entry replaced this one on purpose (--replace) and keeps it replaced.
    if (entry.source === 'cli') return false;
    return !sameExpose(entry, wanted, current.defaultAllow);
  });

  const wantedForwards = new Map(next.forwards.map((f) => [formatHostPort(f.listen), f]));
  const removeForwards = current.forwards
    .filter((f) => f.source === 'config' && wantedForwards.get(f.key)?.to !== f.to)
    .map((f) => f.key);
  const staying = new Set(current.forwards.map((f) => f.key).filter((key) => !removeForwards.includes(key)));
  const addForwards = [...wantedForwards].filter(([key]) => !staying.has(key)).map(([, f]) => f);

  return {
    exposes: { remove: removeExposes, apply: applyExposes },
    forwards: { remove: removeForwards, add: addForwards },
    needRestart,
  };
}

/** The same target and the same allow list (an omitted one meaning the owner alone). */
export function sameExpose(entry: Pick<CurrentExpose, 'target' | 'allow'>, wanted: AgentConfig['expose'][number], defaultAllow: readonly string[]): boolean {
  const allow = wanted.allow && wanted.allow.length > 0 ? wanted.allow : defaultAllow;
  return formatHostPort(entry.target) === formatHostPort(wanted.target) && JSON.stringify([...entry.allow]) === JSON.stringify([...allow]);
}
