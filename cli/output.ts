/** What commands print: plain lines for people, one JSON object with --json. */
import { formatBytes } from '../agent/file-transfer';

export function printResult(json: boolean | undefined, human: string, data: unknown): void {
  if (json) process.stdout.write(`${JSON.stringify(data)}\n`);
  else process.stdout.write(`${human}\n`);
}

export function elapsedText(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export function rateText(bytes: number, ms: number): string {
  return ms > 0 ? `${formatBytes((bytes * 1000) / ms)}/s` : '-';
}

/**
 * An allow list as people read it: the default (the owner alone) is said in words,
 * so that nobody takes it for "anyone in my domain" (issue 11).
 */
export function describeAllow(allow: readonly string[], owner: string): string {
  if (allow.length === 1 && allow[0] === owner.toLowerCase()) return `only ${owner} (any of its devices)`;
  return allow.map((p) => (p === '*' ? '* (any user of any domain)' : p)).join(', ');
}
