/**
 * Certificate status across domains (issue 11, item 2; docs/security.md
 * "Revocation bounds").
 *
 * A domain's server is the only authority on its own certificates. Other
 * servers ask it with `cert-status` ({certificates: JSON [{domain, serial}]}
 * -> {revoked: JSON [serial]}) and keep the answers here:
 *
 * - a "good" answer is trusted for `ttlMs` (default 30 s, server.yaml
 *   federation.cert_status_cache), so a revocation at the issuer is seen here
 *   at most ttlMs after it was made (plus one question's round trip);
 * - a "revoked" answer is kept for good: revocation is final;
 * - when the issuer cannot be asked and the cached good answer has run out,
 *   `revoked()` throws ServerUnavailable: new admissions and requests fail
 *   closed. Callers that only re-check what is already open (the periodic
 *   sweep of foreign sessions, an agent's cert-status) treat that as "no news"
 *   and keep what they have: see docs/security.md for why.
 */
import { asVertexError, vertexError } from '../q2q/errors';
import { normaliseSerial } from '../q2q/identity';

export const DEFAULT_CERT_STATUS_TTL_MS = 30_000;
/** cert-status carries at most this many certificates per call (DESIGN.md). */
export const CERT_STATUS_MAX_ENTRIES = 256;
/** Cached answers kept at most; the oldest good ones go first. */
const MAX_CACHE_ENTRIES = 100_000;

/** One question to `domain`'s server: which of `serials` it says are revoked. */
export type AskIssuer = (domain: string, serials: string[]) => Promise<string[]>;

interface Entry { revoked: boolean; at: number }

/** Serials of one domain collected for one question; `done` resolves with those said revoked. */
interface Batch {
  serials: Set<string>;
  done: Promise<Set<string>>;
}

/**
 * Questions asked within this window are one call to the issuer (up to 256
 * serials): many users of one domain connecting at once (a restart, a burst)
 * cost its server one question, not one each, and stay under its per-address
 * rate limit.
 */
export const CERT_STATUS_BATCH_WINDOW_MS = 10;

export class CertStatusCache {
  readonly #ask: AskIssuer;
  readonly #ttlMs: number;
  readonly #now: () => number;
  readonly #entries = new Map<string, Entry>();
  /** The batch of each domain still collecting serials. */
  readonly #collecting = new Map<string, Batch>();
  /** `domain|serial` -> the batch whose question covers it, until answered. */
  readonly #inflight = new Map<string, Batch>();

  constructor(opts: { ask: AskIssuer; ttlMs?: number; now?: () => number }) {
    this.#ask = opts.ask;
    this.#ttlMs = opts.ttlMs ?? DEFAULT_CERT_STATUS_TTL_MS;
    this.#now = opts.now ?? Date.now;
  }

  get ttlMs(): number {
    return this.#ttlMs;
  }

  /**
   * The serials among `serials` (all of `domain`) that its issuer says are
   * revoked, from the cache where fresh. Throws ServerUnavailable when an
   * answer is needed and the issuer cannot give one.
   */
  async revoked(domain: string, serials: readonly string[]): Promise<Set<string>> {
    const now = this.#now();
    const result = new Set<string>();
    const waits = new Set<Batch>();
    for (const serial of new Set(serials.map((s) => normaliseSerial(s)))) {
      const key = `${domain}|${serial}`;
      const entry = this.#entries.get(key);
      if (entry?.revoked) result.add(serial);
      else if (!entry || now - entry.at >= this.#ttlMs) waits.add(this.#inflight.get(key) ?? this.#enqueue(domain, serial));
    }
    // allSettled: every batch's failure is observed, none left as an unhandled rejection.
    const answers = await Promise.allSettled([...waits].map((b) => b.done));
    const failed = answers.find((a): a is PromiseRejectedResult => a.status === 'rejected');
    if (failed) {
      const e = asVertexError(failed.reason, 'ServerUnavailable');
      throw vertexError('ServerUnavailable', `cannot check certificate status with ${domain}'s server`, e);
    }
    const wanted = new Set(serials.map((s) => normaliseSerial(s)));
    for (const a of answers) {
      if (a.status === 'fulfilled') for (const s of a.value) if (wanted.has(s)) result.add(s);
    }
    return result;
  }

  #enqueue(domain: string, serial: string): Batch {
    let batch = this.#collecting.get(domain);
    if (!batch || batch.serials.size >= CERT_STATUS_MAX_ENTRIES) {
      const serials = new Set<string>();
      let release!: () => void;
      const gate = new Promise<void>((resolve) => { release = resolve; });
      const created: Batch = { serials, done: gate.then(() => this.#question(domain, created)) };
      batch = created;
      this.#collecting.set(domain, created);
      setTimeout(release, CERT_STATUS_BATCH_WINDOW_MS).unref();
    }
    batch.serials.add(serial);
    this.#inflight.set(`${domain}|${serial}`, batch);
    return batch;
  }

  async #question(domain: string, batch: Batch): Promise<Set<string>> {
    if (this.#collecting.get(domain) === batch) this.#collecting.delete(domain);
    const asked = [...batch.serials];
    try {
      const answer = await this.#ask(domain, asked);
      const said = new Set(answer.filter((s) => typeof s === 'string' && /^[0-9a-fA-F]{1,64}$/.test(s)).map((s) => normaliseSerial(s)));
      const at = this.#now();
      const revoked = new Set<string>();
      for (const serial of asked) {
        // Only what was asked counts: an answer cannot mark serials it was not asked about.
        const isRevoked = said.has(serial);
        this.#set(`${domain}|${serial}`, { revoked: isRevoked, at });
        if (isRevoked) revoked.add(serial);
      }
      return revoked;
    } finally {
      for (const serial of asked) {
        const key = `${domain}|${serial}`;
        if (this.#inflight.get(key) === batch) this.#inflight.delete(key);
      }
    }
  }

  #set(key: string, entry: Entry): void {
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    if (this.#entries.size <= MAX_CACHE_ENTRIES) return;
    for (const [k, e] of this.#entries) {
      if (this.#entries.size <= MAX_CACHE_ENTRIES) break;
      // Good answers can be asked again; revoked ones only go when nothing else can.
      if (!e.revoked) this.#entries.delete(k);
    }
    if (this.#entries.size > MAX_CACHE_ENTRIES) this.#entries.delete(this.#entries.keys().next().value as string);
  }
}

/** A token bucket per source address: cert-status answers cost a store read each. */
export class PerSourceLimit {
  readonly #rate: number;
  readonly #burst: number;
  readonly #now: () => number;
  readonly #buckets = new Map<string, { tokens: number; at: number }>();

  constructor(opts: { perSecond: number; burst: number; now?: () => number }) {
    this.#rate = opts.perSecond;
    this.#burst = opts.burst;
    this.#now = opts.now ?? Date.now;
  }

  take(source: string): boolean {
    const now = this.#now();
    const b = this.#buckets.get(source) ?? { tokens: this.#burst, at: now };
    b.tokens = Math.min(this.#burst, b.tokens + ((now - b.at) / 1000) * this.#rate);
    b.at = now;
    if (this.#buckets.size > 10_000) {
      // Full buckets carry no state worth keeping.
      for (const [k, v] of this.#buckets) if (v.tokens + ((now - v.at) / 1000) * this.#rate >= this.#burst) this.#buckets.delete(k);
    }
    this.#buckets.set(source, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}

/** cert-status calls per source address: a steady 20 a second, 50 at once. */
export const CERT_STATUS_RATE = { perSecond: 20, burst: 50 };

/** Parses cert-status's `certificates` argument: at most CERT_STATUS_MAX_ENTRIES {domain, serial}. */
export function parseCertStatusRequest(json: string | undefined): Array<{ domain: string; serial: string }> {
  let list: unknown;
  try {
    list = JSON.parse(json ?? '');
  } catch {
    throw vertexError('BadRequest', 'cert-status: "certificates" must be a JSON array of {domain, serial}');
  }
  if (!Array.isArray(list) || list.length > CERT_STATUS_MAX_ENTRIES) {
    throw vertexError('BadRequest', `cert-status: "certificates" must be a JSON array of at most ${CERT_STATUS_MAX_ENTRIES} entries`);
  }
  return list.map((e: unknown) => {
    const o = e as { domain?: unknown; serial?: unknown } | null;
    if (!o || typeof o !== 'object' || typeof o.domain !== 'string' || typeof o.serial !== 'string'
      || o.domain.length > 253 || !/^[0-9a-fA-F]{1,64}$/.test(o.serial)) {
      throw vertexError('BadRequest', 'cert-status: each entry is {domain, serial} with a hex serial');
    }
    return { domain: o.domain.toLowerCase(), serial: normaliseSerial(o.serial) };
  });
}
