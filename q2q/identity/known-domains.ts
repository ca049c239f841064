/**
 * Pinned domain CAs, like ssh's known_hosts: the first CA a domain presents
 * is remembered by fingerprint, and a different one later is a hard error
 * (ARCHITECTURE.md: "A changed CA is a hard error").
 *
 * File format, one pin per line:
 *
 *     example.test SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU
 *
 * `#` starts a comment line; blank lines are ignored. Any other line is an
 * error rather than skipped: a pin that silently stopped parsing would turn
 * back into trust-on-first-use. This module is pure; the agent and the server
 * do the file I/O.
 */
import { VertexError } from '../errors';
import { certificateFingerprint, checkDomainCaCertificate } from './certificates';
import { normaliseDomain } from './names';

/** SHA-256 is 32 bytes: 43 characters of unpadded base64. */
const FINGERPRINT_RE = /^SHA256:[A-Za-z0-9+/]{43}$/;

export type PinResult = 'new' | 'match';

/** Parses known_domains text into domain → fingerprint. `source` names the file in error messages. */
export function parseKnownDomains(text: string, source = 'known_domains'): Map<string, string> {
  const known = new Map<string, string>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? '').trim();
    if (line === '' || line.startsWith('#')) continue;
    const where = `${source} line ${i + 1}`;
    const fields = line.split(/\s+/);
    if (fields.length !== 2) {
      throw new VertexError('Config', `${where}: expected "domain SHA256:fingerprint", got ${JSON.stringify(line)}`);
    }
    const domain = normaliseDomain(fields[0] ?? '', where);
    const fingerprint = fields[1] ?? '';
    if (!FINGERPRINT_RE.test(fingerprint)) {
      throw new VertexError('Config', `${where}: ${JSON.stringify(fingerprint)} is not a SHA256: fingerprint`);
    }
    const earlier = known.get(domain);
    if (earlier !== undefined && earlier !== fingerprint) {
      throw new VertexError('Config', `${where}: ${domain} is pinned twice with different fingerprints`);
    }
    known.set(domain, fingerprint);
  }
  return known;
}

/** One `domain fingerprint` line per entry, in the map's order. */
export function formatKnownDomains(known: Map<string, string>): string {
  let text = '';
  for (const [domain, fingerprint] of known) text += formatKnownDomainLine(domain, fingerprint);
  return text;
}

export function formatKnownDomainLine(domain: string, fingerprint: string): string {
  return `${domain.toLowerCase()} ${fingerprint}\n`;
}

/**
 * Checks the CA a domain presents against the pins. Returns 'new' when the
 * domain has no pin yet (the caller records it) and 'match' when it equals
 * the pin. Throws CaChanged when it differs, and CertificateInvalid when the
 * certificate is not a self-signed CA named for the domain.
 */
export function checkPinnedCa(known: Map<string, string>, domain: string, caCertPem: string, filePath: string): PinResult {
  const name = normaliseDomain(domain, 'check pinned ca');
  checkDomainCaCertificate(name, caCertPem);
  const presented = certificateFingerprint(caCertPem);
  const pinned = known.get(name);
  if (pinned === undefined) return 'new';
  if (pinned === presented) return 'match';
  throw new VertexError('CaChanged', caChangedMessage(name, pinned, presented, filePath));
}

/** Modelled on ssh's "REMOTE HOST IDENTIFICATION HAS CHANGED", in one paragraph. */
export function caChangedMessage(domain: string, pinned: string, presented: string, filePath: string): string {
  return (
    `domain ca for ${domain} has changed (DOMAIN IDENTIFICATION HAS CHANGED): ` +
    `the pinned ca fingerprint is ${pinned} but ${domain} now presents ${presented}. ` +
    `Someone could be intercepting your connections (a man-in-the-middle attack), ` +
    `or the operator of ${domain} replaced its ca. ` +
    `Connections to ${domain} are refused until this is resolved. ` +
    `If you know the change is expected, remove the line for ${domain} from ${filePath} and try again.`
  );
}
