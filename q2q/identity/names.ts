/**
 * The light name checks the identity layer needs before it puts a name into
 * a certificate or a file path: a Q2Q address `user@domain` and a domain,
 * case-folded (ARCHITECTURE.md "Names"). Anything else is InvalidName.
 */
import { VertexError } from '../errors';

const USER_RE = /^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$/;
const LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
/** RFC 1035 §2.3.4: a whole domain name is at most 253 characters in text form. */
const MAX_DOMAIN_LENGTH = 253;

/** Case-folds and checks a DNS domain name; returns it lowercased. */
export function normaliseDomain(domain: string, context = 'domain'): string {
  const folded = domain.toLowerCase();
  if (folded.length === 0 || folded.length > MAX_DOMAIN_LENGTH) {
    throw new VertexError('InvalidName', `${context}: ${JSON.stringify(domain)} must be 1 to ${MAX_DOMAIN_LENGTH} characters`);
  }
  for (const label of folded.split('.')) {
    if (!LABEL_RE.test(label)) {
      throw new VertexError(
        'InvalidName',
        `${context}: ${JSON.stringify(domain)} is not a DNS name (each dot-separated label is letters, digits and inner hyphens)`,
      );
    }
  }
  return folded;
}

/** Case-folds and checks `user@domain`; returns it lowercased. */
export function normaliseAddress(address: string, context = 'address'): string {
  const folded = address.toLowerCase();
  const at = folded.indexOf('@');
  if (at < 0 || at !== folded.lastIndexOf('@')) {
    throw new VertexError('InvalidName', `${context}: ${JSON.stringify(address)} must be user@domain`);
  }
  const user = folded.slice(0, at);
  if (!USER_RE.test(user)) {
    throw new VertexError(
      'InvalidName',
      `${context}: user ${JSON.stringify(user)} must be a single DNS label (letters, digits, inner - and _)`,
    );
  }
  normaliseDomain(folded.slice(at + 1), context);
  return folded;
}

export function domainOf(address: string): string {
  return address.slice(address.indexOf('@') + 1);
}
