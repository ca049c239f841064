#!/usr/bin/env node
/*
 * Runs the fuzz targets in a plain Node process: `npm run fuzz`, and the fuzz
 * tier of `npm test` (test/fuzz/fuzz.test.ts spawns this).
 *
 * Why not inside jest: jest runs test code in a vm context where Buffer work
 * costs several times more, and the point of a fuzzer is inputs per second.
 * TypeScript is compiled on the fly (typescript's transpileModule, the same
 * isolatedModules transform ts-jest uses). With --coverage the target's own
 * source files are instrumented (istanbul) and the corpus keeps inputs that
 * take a branch no input took before.
 *
 *   node test/fuzz/run.js [--target NAME]... [--case NAME:FAULT[:MAX]]... [--seconds S] [--min-inputs N]
 *                         [--max-inputs N] [--max-failures N] [--seed N] [--inject FAULT]
 *                         [--coverage]
 *
 * --replay HEX --seed N --target T runs one failing input again (the report gives
 * all three) and prints the stack.
 * --inject breaks the code under test on purpose (each target lists its faults;
 * `leak` works on any), to show the fuzzer catches it.
 *
 * Prints one JSON report per target on stdout; exits 1 if any target failed.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const ts = require('typescript');

const ROOT = path.resolve(__dirname, '../..');
const coverage = process.argv.includes('--coverage');
let instrumenter = null;
if (coverage) {
  const { createInstrumenter } = require('istanbul-lib-instrument');
  instrumenter = createInstrumenter({ coverageVariable: '__coverage__', esModules: false, produceSourceMap: false });
}
// Files whose branches guide the corpus; set by cli.ts before it loads any target.
globalThis.__fuzzInstrument = new Set();

const COMPILER_OPTIONS = {
  module: ts.ModuleKind.CommonJS,
  target: ts.ScriptTarget.ES2022,
  esModuleInterop: true,
  experimentalDecorators: true,
  isolatedModules: true,
  sourceMap: false,
};

require.extensions['.ts'] = function compileTs(module, filename) {
  const source = fs.readFileSync(filename, 'utf8');
  let js = ts.transpileModule(source, { compilerOptions: COMPILER_OPTIONS, fileName: filename }).outputText;
  const relative = path.relative(ROOT, filename);
  if (instrumenter && globalThis.__fuzzInstrument.has(relative)) js = instrumenter.instrumentSync(js, filename);
  module._compile(js, filename);
};

require('./cli.ts').main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`fuzz: ${err && err.stack ? err.stack : String(err)}\n`);
    process.exit(2);
  },
);
