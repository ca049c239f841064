/**
 * The agent half of revocation (issue 11, item 1; DESIGN.md "Revocation and
 * removal reach everything").
 *
 * Every open peer stream is tracked by the certificate its peer presented
 * (serial, address, issuing domain). A stream closes, with CertificateRevoked,
 * when
 *
 * - the home server pushes `revoked` naming the peer certificate's serial or
 *   the peer's (removed) address;
 * - a periodic `cert-status` check, sent to the home server, lists the
 *   serial as revoked. The home server answers for its own domains from its
 *   store and asks the issuing domain's server for others (federation), so a
 *   foreign revocation reaches an open stream within
 *   CERT_STATUS_INTERVAL_MS plus the server's cache (docs/security.md);
 * - our own certificate is the one revoked, or our own address removed: our
 *   identity is void, so every peer stream goes.
 *
 * Closing our end closes the other end too (a TLS stream destroyed before it
 * ended resets its transport: relay-leg.ts, ptcp-socket.ts), so both agents
 * drop the stream even when only one of them learned of the revocation.
 *
 * I/O stays outside: the owner hands in `check` (one cert-status call) and
 * calls onRevoked() for each push; time comes from an injected Clock.
 */
import type { Duplex } from 'node:stream';
import { vertexError } from '../errors';
import { describeCertificate } from '../identity';
import { systemClock, type Clock, type Timer } from '../util/clock';
import { silentLogger, type Logger } from '../util/log';

/** How often open peers' certificates are re-checked with the home server. */
export const CERT_STATUS_INTERVAL_MS = 20_000;
/** cert-status carries at most this many certificates per call (DESIGN.md). */
export const CERT_STATUS_MAX_ENTRIES = 256;

export interface WatchedCertificate {
  /** Lowercase hex, no leading zeros (normaliseSerial). */
  serial: string;
  /** user@domain the certificate names. */
  address: string;
  /** The issuing domain: the address's domain. */
  domain: string;
}

/** One cert-status call: the serials among `certificates` that are revoked. */
export type CertStatusCheck = (certificates: Array<{ domain: string; serial: string }>) => Promise<string[]>;

export interface RevocationWatchOptions {
  /** Our own identity's certificate: when it is revoked, every tracked stream closes. */
  ownCertificate: () => string;
  check: CertStatusCheck;
  intervalMs?: number;
  /** Certificates per cert-status call; default (and most) CERT_STATUS_MAX_ENTRIES. */
  batchSize?: number;
  clock?: Clock;
  log?: Logger;
}

export interface RevokedNotice {
  serials: readonly string[];
  addresses: readonly string[];
}

function normalise(serial: string): string {
  return serial.toLowerCase().replace(/^0+(?=.)/, '');
}

export function watchedCertificate(certPem: string): WatchedCertificate {
  const info = describeCertificate(certPem);
  const address = (info.q2qAddress ?? info.subjectCn).toLowerCase();
  return { serial: info.serial, address, domain: address.slice(address.indexOf('@') + 1) };
}

export class RevocationWatch {
  readonly #opts: RevocationWatchOptions;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #streams = new Map<Duplex, WatchedCertificate>();
  #timer: Timer | null = null;
  #checking = false;
  #stopped = true;

  constructor(opts: RevocationWatchOptions) {
    this.#opts = opts;
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.log ?? silentLogger;
    this.#intervalMs = opts.intervalMs ?? CERT_STATUS_INTERVAL_MS;
  }

  /** Open peer streams being watched. */
  get size(): number {
    return this.#streams.size;
  }

  /** Starts the periodic cert-status checks. */
  start(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#arm();
  }

  stop(): void {
    this.#stopped = true;
    this.#timer?.cancel();
    this.#timer = null;
  }

  /** Watches `stream` until it closes; `peerCertificate` is the PEM its peer presented. */
  track(stream: Duplex, peerCertificate: string): void {
    let cert: WatchedCertificate;
    try {
      cert = watchedCertificate(peerCertificate);
    } catch {
      // Peer TLS verified this certificate already; one we cannot read is not ours to judge.
      return;
    }
    if (stream.destroyed) return;
    this.#streams.set(stream, cert);
    stream.once('close', () => this.#streams.delete(stream));
  }

  /**
   * A `revoked` push from the home server: closes every stream whose peer
   * certificate has one of `serials` or names one of `addresses` (all of them
   * when the notice names our own certificate or address). Returns how many closed.
   */
  onRevoked(notice: RevokedNotice): number {
    const serials = new Set(notice.serials.map(normalise));
    const addresses = new Set(notice.addresses.map((a) => a.toLowerCase()));
    let own: WatchedCertificate | null = null;
    try {
      own = watchedCertificate(this.#opts.ownCertificate());
    } catch {
      own = null;
    }
    if (own && (serials.has(own.serial) || addresses.has(own.address))) {
      return this.#close(() => true, `our own certificate (serial ${own.serial}) was revoked`);
    }
    return this.#close((c) => serials.has(c.serial) || addresses.has(c.address), 'revoked by its issuing server');
  }

  /** One round of cert-status checks for every open stream's certificate (in calls of at most 256). */
  async checkNow(): Promise<number> {
    const unique = new Map<string, { domain: string; serial: string }>();
    for (const c of this.#streams.values()) unique.set(`${c.domain}|${c.serial}`, { domain: c.domain, serial: c.serial });
    const all = [...unique.values()];
    const revoked = new Set<string>();
    const size = Math.max(1, Math.min(this.#opts.batchSize ?? CERT_STATUS_MAX_ENTRIES, CERT_STATUS_MAX_ENTRIES));
    for (let i = 0; i < all.length; i += size) {
      const batch = all.slice(i, i + size);
      const answer = await this.#opts.check(batch);
      const asked = new Set(batch.map((c) => c.serial));
      for (const serial of answer) {
        // Only what was asked counts: an answer cannot close streams it was not asked about.
        const s = normalise(String(serial));
        if (asked.has(s)) revoked.add(s);
      }
    }
    if (revoked.size === 0) return 0;
    return this.#close((c) => revoked.has(c.serial), 'revoked (cert-status)');
  }

  #close(match: (c: WatchedCertificate) => boolean, why: string): number {
    let closed = 0;
    for (const [stream, cert] of [...this.#streams]) {
      if (!match(cert)) continue;
      this.#streams.delete(stream);
      closed += 1;
      this.#log.info({ peer: cert.address, serial: cert.serial }, `peer stream closed: certificate ${why}`);
      // With no 'error' listener an error would end the process: such an owner just sees the close.
      const err = vertexError('CertificateRevoked', `peer stream with ${cert.address}: certificate ${cert.serial} ${why}`);
      if (stream.listenerCount('error') > 0) stream.destroy(err);
      else stream.destroy();
    }
    return closed;
  }

  #arm(): void {
    if (this.#stopped) return;
    this.#timer = this.#clock.setTimer(() => {
      this.#timer = null;
      void this.#tick();
    }, this.#intervalMs);
  }

  async #tick(): Promise<void> {
    if (this.#stopped) return;
    if (this.#streams.size > 0 && !this.#checking) {
      this.#checking = true;
      try {
        await this.checkNow();
      } catch (err) {
        // The home server is away or too old for cert-status: try again next round.
        this.#log.debug({ reason: (err as Error).message }, 'cert-status check failed');
      } finally {
        this.#checking = false;
      }
    }
    this.#arm();
  }
}
