/**
 * Allow lists for exposed services: `*` (any authenticated user), `*@domain`
 * (anyone in that domain) or `user@domain`. The default is the owner's own
 * domain (INTERFACE.md).
 */

export function defaultAllow(ownerAddress: string): string[] {
  const domain = ownerAddress.slice(ownerAddress.indexOf('@') + 1);
  return [`*@${domain}`];
}

export function isAllowed(patterns: readonly string[], address: string): boolean {
  const who = address.toLowerCase();
  const domain = who.slice(who.indexOf('@') + 1);
  return patterns.some((raw) => {
    const pattern = raw.toLowerCase();
    if (pattern === '*') return true;
    if (pattern.startsWith('*@')) return pattern.slice(2) === domain;
    return pattern === who;
  });
}
