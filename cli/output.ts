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
