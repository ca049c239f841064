/**
 * Reading a password: --password-stdin, --password-file, or a prompt without
 * echo on a TTY. Never from argv (it would show in `ps` and shell history).
 */
import * as fs from 'node:fs';
import { vertexError } from '../q2q/errors';

function stripOneNewline(text: string): string {
  return text.replace(/\r?\n$/, '');
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function promptHidden(question: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const stdin = process.stdin;
    process.stderr.write(question);
    stdin.setRawMode(true);
    stdin.resume();
    let answer = '';
    const done = (err?: Error) => {
      stdin.setRawMode(false);
      stdin.pause();
      stdin.off('data', onData);
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(answer);
    };
    const onData = (data: Buffer) => {
      for (const ch of data.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return done();
        if (ch === '\u0003') return done(vertexError('Usage', 'password prompt: interrupted'));
        if (ch === '\u007f' || ch === '\b') answer = answer.slice(0, -1);
        else answer += ch;
      }
    };
    stdin.on('data', onData);
  });
}

export interface PasswordSource {
  passwordStdin?: boolean;
  passwordFile?: string;
}

export async function readPassword(source: PasswordSource, opts: { confirm: boolean; what: string }): Promise<string> {
  if (source.passwordStdin && source.passwordFile) {
    throw vertexError('Usage', 'use either --password-stdin or --password-file, not both');
  }
  if (source.passwordStdin) {
    const text = stripOneNewline(await readStdin());
    if (!text) throw vertexError('Usage', '--password-stdin: standard input was empty');
    return text;
  }
  if (source.passwordFile) {
    let text: string;
    try {
      text = fs.readFileSync(source.passwordFile, 'utf8');
    } catch (err) {
      throw vertexError('Usage', `--password-file ${source.passwordFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, err);
    }
    const password = stripOneNewline(text);
    if (!password) throw vertexError('Usage', `--password-file ${source.passwordFile}: the file is empty`);
    return password;
  }
  if (!process.stdin.isTTY) {
    throw vertexError('Usage', 'no password given: use --password-stdin or --password-file when not on a terminal');
  }
  const first = await promptHidden(`Password for ${opts.what}: `);
  if (opts.confirm) {
    const again = await promptHidden('Again: ');
    if (again !== first) throw vertexError('Usage', 'the two passwords differ; nothing was changed');
  }
  return first;
}
