/**
 * Spawns the fuzz runner (run.js) from the jest tiers and reads its reports.
 */
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import type { FuzzReport } from './engine';

const RUNNER = path.join(__dirname, 'run.js');
/** Heap growth allowed over a run, after full collections (the corpus is dropped first). */
export const HEAP_GROWTH_LIMIT_MB = 32;

export function runFuzzer(args: string[], timeoutMs: number): Promise<{ code: number | null; reports: Array<FuzzReport & { fuzz: string }>; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [RUNNER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`fuzz ${args.join(' ')}: no exit after ${timeoutMs} ms\n${stdout}\n${stderr}`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const reports = stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as FuzzReport & { fuzz: string });
      resolve({ code, reports, stderr });
    });
  });
}

export const TARGET_NAMES = ['amp', 'control', 'ptcp', 'socks5', 'file-transfer'];

