/**
 * The import-direction check of ARCHITECTURE.md ("Layers"): q2q/ never
 * imports agent/, server/ or cli/, and the pure codecs under q2q/wire/ never
 * touch the network, timers or files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../..');
const IMPORT_RE = /(?:import|export)[^'"]*?from\s*['"]([^'"]+)['"]|require\(\s*['"]([^'"]+)['"]\s*\)|import\(\s*['"]([^'"]+)['"]\s*\)/g;

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  if (!fs.existsSync(dir)) return out;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sourceFiles(full));
    else if (entry.name.endsWith('.ts')) out.push(full);
  }
  return out;
}

function importsOf(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  const found: string[] = [];
  for (const m of text.matchAll(IMPORT_RE)) found.push((m[1] ?? m[2] ?? m[3]) as string);
  return found;
}

/** Lists `file: specifier` for every import that resolves into one of the forbidden top-level folders. */
function violations(layerDir: string, forbiddenTop: string[], forbiddenModules: string[] = []): string[] {
  const bad: string[] = [];
  for (const file of sourceFiles(path.join(ROOT, layerDir))) {
    for (const spec of importsOf(file)) {
      if (spec.startsWith('.')) {
        const target = path.relative(ROOT, path.resolve(path.dirname(file), spec));
        const top = target.split(path.sep)[0] ?? '';
        if (forbiddenTop.includes(top)) bad.push(`${path.relative(ROOT, file)}: ${spec}`);
      } else if (forbiddenModules.includes(spec.replace(/^node:/, ''))) {
        bad.push(`${path.relative(ROOT, file)}: ${spec}`);
      }
    }
  }
  return bad;
}

describe('layers', () => {
  it('the import scanner sees the imports it must police', () => {
    // Guards against a regex that silently matches nothing.
    const self = importsOf(__filename);
    expect(self).toEqual(expect.arrayContaining(['node:fs', 'node:path']));
    expect(sourceFiles(path.join(ROOT, 'q2q')).length).toBeGreaterThan(0);
  });

  it('q2q/ never imports agent/, server/ or cli/', () => {
    expect(violations('q2q', ['agent', 'server', 'cli'])).toEqual([]);
  });

  it('server/ and agent/ never import cli/', () => {
    expect(violations('server', ['cli', 'agent'])).toEqual([]);
    expect(violations('agent', ['cli', 'server'])).toEqual([]);
  });

  it('pure codecs under q2q/wire/ do no I/O', () => {
    const io = ['net', 'dgram', 'tls', 'fs', 'timers', 'child_process', 'http', 'https'];
    expect(violations('q2q/wire', ['agent', 'server', 'cli'], io)).toEqual([]);
  });
});
