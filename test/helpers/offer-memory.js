#!/usr/bin/env node
/*
 * One file-transfer receiver in a fresh Node process, fed one offer of N files, and how
 * much its RSS grew at the peak: a test runner's own heap hides what one offer costs, a
 * fresh process shows it (issue 11: 65,536 files drove a receiver from 143 to 491 MB).
 *
 *   node test/helpers/offer-memory.js N [LIMITS_JSON]
 *
 * Prints {"files":N,"reason":"too-large"|"declined"|…,"baseMB":…,"peakMB":…,"growthMB":…}.
 * TypeScript is compiled on the fly, as test/fuzz/run.js does.
 */
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { PassThrough, Duplex } = require('node:stream');
const ts = require('typescript');

require.extensions['.ts'] = function compileTs(module, filename) {
  const source = fs.readFileSync(filename, 'utf8');
  const options = { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true, isolatedModules: true };
  module._compile(ts.transpileModule(source, { compilerOptions: options, fileName: filename }).outputText, filename);
};

const ROOT = path.resolve(__dirname, '../..');
const { receiveFiles } = require(path.join(ROOT, 'agent/file-transfer/receiver.ts'));
const { encodeFrame, decodePayload, FRAME_HEADER_BYTES } = require(path.join(ROOT, 'q2q/wire/file-transfer.ts'));

async function main() {
  const n = Number(process.argv[2]);
  const limits = process.argv[3] ? JSON.parse(process.argv[3]) : undefined;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-offer-memory-'));
  try {
    const files = Array.from({ length: n }, (_, i) => ({ path: `d${i % 100}/file-${i}-${'x'.repeat(40)}`, size: 1, sha256: Buffer.alloc(32) }));
    const frame = encodeFrame({ type: 'offer', files });
    files.length = 0;
    const toReceiver = new PassThrough();
    const fromReceiver = new PassThrough();
    const answers = [];
    fromReceiver.on('data', (chunk) => answers.push(chunk));
    const stream = Duplex.from({ readable: toReceiver, writable: fromReceiver });
    if (global.gc) global.gc();
    const base = process.memoryUsage().rss;
    let peak = base;
    const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 2);
    const done = receiveFiles(stream, { dir, peer: 'mallory@a.test', decide: async () => false, ...(limits && { limits }) });
    toReceiver.write(frame);
    await done.catch(() => undefined);
    peak = Math.max(peak, process.memoryUsage().rss);
    clearInterval(sampler);
    const reply = Buffer.concat(answers);
    let reason = 'none';
    if (reply.length > FRAME_HEADER_BYTES) {
      const decoded = decodePayload('reject', reply.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + reply.readUInt32BE(1)));
      reason = decoded.reason;
    }
    const mb = (b) => Math.round((b / 1e6) * 10) / 10;
    process.stdout.write(`${JSON.stringify({ files: n, reason, baseMB: mb(base), peakMB: mb(peak), growthMB: mb(peak - base) })}\n`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => {
  process.stderr.write(`offer-memory: ${err && err.stack ? err.stack : String(err)}\n`);
  process.exit(2);
});
