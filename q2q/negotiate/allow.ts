/**
 * Allow lists for exposed services (and `vertex receive --from`):
 *
 * - `user@domain`: that user, on any of their devices;
 * - `*@domain`: anyone in that domain;
 * - `user@*.suffix` / `*@*.suffix`: that user / anyone in any subdomain of suffix
 *   (not suffix itself);
 * - `*`: any authenticated user of any domain.
 *
 * The default is the owner alone (INTERFACE.md, issue 11): a service exposed
 * without an allow list is reachable from the owner's own devices and from no
 * one else. `*@domain` and `*` must be written out.
 */

/** The allow list of a service exposed without one: its owner, on any of the owner's devices. */
export function defaultAllow(ownerAddress: string): string[] {
  return [ownerAddress.toLowerCase()];
}

function domainMatches(pattern: string, domain: string): boolean {
  if (pattern.startsWith('*.')) return domain.endsWith(pattern.slice(1)) && domain.length > pattern.length - 1;
  return pattern === domain;
}

/** Whether `address` (user@domain) is admitted by any of `patterns`. */
export function isAllowed(patterns: readonly string[], address: string): boolean {
  const who = address.toLowerCase();
  const at = who.indexOf('@');
  if (at <= 0) return false;
  const user = who.slice(0, at);
  const domain = who.slice(at + 1);
  return patterns.some((raw) => {
    const pattern = raw.toLowerCase();
    if (pattern === '*') return true;
    const pat = pattern.indexOf('@');
    if (pat < 0) return false;
    const patUser = pattern.slice(0, pat);
    if (patUser !== '*' && patUser !== user) return false;
    return domainMatches(pattern.slice(pat + 1), domain);
  });
}
