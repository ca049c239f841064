/** What commands print: plain lines for people, one JSON object with --json. */

export function printResult(json: boolean | undefined, human: string, data: unknown): void {
  if (json) process.stdout.write(`${JSON.stringify(data)}\n`);
  else process.stdout.write(`${human}\n`);
}
