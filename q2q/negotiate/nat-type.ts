/**
 * NAT mapping behaviour, told from who-am-i answers (RFC 4787 §4.1 terms):
 *
 * - easy: endpoint-independent mapping. Two servers at different addresses
 *   or ports see the same socket at the same ip:port (so does any host with
 *   no NAT at all). A peer can aim at the reflexive address: punching can
 *   work. Linux MASQUERADE keeps the source port, so it is easy.
 * - hard: the mapping depends on the destination (a "symmetric" NAT; Linux
 *   MASQUERADE --random-fully). The port we will use toward a peer is not
 *   the one any server saw, and the peer cannot guess it.
 * - unknown: fewer than two fresh answers from distinct servers.
 *
 * Two hard ends cannot punch (neither can predict the other's port): the
 * ladder skips the punch and goes to the relay at once. One hard end may
 * still punch if the other's NAT filters loosely, so that case is tried.
 *
 * Peers tell each other their mapping in the candidate list they already
 * exchange, as one extra entry "nat:easy" or "nat:hard" at its end. Candidate
 * parsers skip entries they do not understand, so an older peer ignores it.
 */

export type NatMapping = 'easy' | 'hard' | 'unknown';

/** Answers older than this say nothing about the mapping now (NAT mappings time out and move). */
export const NAT_SAMPLE_TTL_MS = 60_000;
/** Distinct servers remembered; two are enough to classify. */
export const MAX_NAT_SAMPLES = 8;

const MARKER_PREFIX = 'nat:';
const MARKER_RE = /^nat:(easy|hard)$/;
/** Entries of a peer's candidate list scanned for the marker (the list itself is bounded by its AMP value). */
const MAX_SCANNED_ENTRIES = 64;

/** One who-am-i answer: `server` ("host:port") saw our socket at address:port at time `at` (ms). */
export interface MappingSample {
  server: string;
  address: string;
  port: number;
  at: number;
}

/** The mapping the fresh samples show: the newest answer per server, at least two servers. */
export function classifyMapping(samples: readonly MappingSample[], now: number, ttlMs = NAT_SAMPLE_TTL_MS): NatMapping {
  const newest = new Map<string, MappingSample>();
  for (const s of samples) {
    if (now - s.at >= ttlMs || s.at > now) continue;
    const seen = newest.get(s.server);
    if (!seen || seen.at < s.at) newest.set(s.server, s);
  }
  if (newest.size < 2) return 'unknown';
  const mapped = new Set([...newest.values()].map((s) => `${s.address}:${s.port}`));
  return mapped.size === 1 ? 'easy' : 'hard';
}

/** Collects who-am-i answers for one socket and classifies its mapping. */
export class MappingObserver {
  #samples: MappingSample[] = [];

  record(sample: MappingSample): void {
    this.#samples = [...this.#samples.filter((s) => s.server !== sample.server), sample]
      .sort((a, b) => a.at - b.at)
      .slice(-MAX_NAT_SAMPLES);
  }

  mapping(now: number): NatMapping {
    return classifyMapping(this.#samples, now);
  }

  /** Servers with a fresh answer. */
  servers(now: number): string[] {
    return this.#samples.filter((s) => now - s.at < NAT_SAMPLE_TTL_MS).map((s) => s.server);
  }

  /** Forgets every answer: after a network change the old ones describe another NAT. */
  clear(): void {
    this.#samples = [];
  }
}

/** The entry appended to our candidate list; nothing when we do not know. */
export function mappingMarker(mapping: NatMapping): string[] {
  return mapping === 'unknown' ? [] : [`${MARKER_PREFIX}${mapping}`];
}

/** The mapping a peer announced in its candidate list (JSON array of strings), or unknown. */
export function peerMapping(candidatesJson: string | undefined): NatMapping {
  let list: unknown;
  try {
    list = JSON.parse(candidatesJson ?? '[]');
  } catch {
    return 'unknown';
  }
  if (!Array.isArray(list)) return 'unknown';
  for (const item of list.slice(0, MAX_SCANNED_ENTRIES)) {
    const m = typeof item === 'string' ? MARKER_RE.exec(item) : null;
    if (m?.[1]) return m[1] as NatMapping;
  }
  return 'unknown';
}

/** True when both ends map per destination: no punch can meet, so the relay should start at once. */
export function punchHopeless(local: NatMapping, remote: NatMapping): boolean {
  return local === 'hard' && remote === 'hard';
}
