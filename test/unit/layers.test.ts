/**
 * The import-direction check of ARCHITECTURE.md ("Layers"):
 * - q2q/ never imports agent/, server/ or cli/;
 * - inside q2q/, the layers wire < proto < transport < control < negotiate:
 *   a lower layer never imports a higher one;
 * - the pure codecs and state machines under q2q/wire/ and q2q/proto/ do no
 *   I/O (no net, tls, dgram, fs, http*, timers or child processes);
 * - server/ never imports q2q/negotiate/ (what both need lives lower down);
 * - bench/ never imports test/.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../..');
const IMPORT_RE = /(?:import|export)[^'"]*?from\s*['"]([^'"]+)['"]|require\(\s*['"]([^'"]+)['"]\s*\)|import\(\s*['"]([^'"]+)['"]\s*\)/g;

/** q2q's layers, lowest first. */
const Q2Q_LAYERS = ['wire', 'proto', 'transport', 'control', 'negotiate'] as const;
const IO_MODULES = ['net', 'dgram', 'tls', 'fs', 'fs/promises', 'timers', 'timers/promises', 'child_process', 'http', 'https', 'http2', 'dns', 'worker_threads', 'cluster'];

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

/** Every relative import of the files under `dir`, resolved to a path from the root (posix separators). */
function relativeImports(dir: string): Array<{ file: string; spec: string; target: string }> {
  const out: Array<{ file: string; spec: string; target: string }> = [];
  for (const file of sourceFiles(path.join(ROOT, dir))) {
    for (const spec of importsOf(file)) {
      if (!spec.startsWith('.')) continue;
      const target = path.relative(ROOT, path.resolve(path.dirname(file), spec)).split(path.sep).join('/');
      out.push({ file: path.relative(ROOT, file).split(path.sep).join('/'), spec, target });
    }
  }
  return out;
}

/** Lists `file: specifier` for every import that resolves under one of the forbidden folders (or is a forbidden module). */
function violations(layerDir: string, forbidden: string[], forbiddenModules: string[] = []): string[] {
  const bad: string[] = [];
  for (const { file, spec, target } of relativeImports(layerDir)) {
    if (forbidden.some((f) => target === f || target.startsWith(`${f}/`))) bad.push(`${file}: ${spec}`);
  }
  for (const file of sourceFiles(path.join(ROOT, layerDir))) {
    for (const spec of importsOf(file)) {
      if (!spec.startsWith('.') && forbiddenModules.includes(spec.replace(/^node:/, ''))) bad.push(`${path.relative(ROOT, file)}: ${spec}`);
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
    // And against a resolver that never lands in a layer: negotiate imports transport.
    expect(relativeImports('q2q/negotiate').some((i) => i.target.startsWith('q2q/transport/'))).toBe(true);
  });

  it('q2q/ never imports agent/, server/ or cli/', () => {
    expect(violations('q2q', ['agent', 'server', 'cli'])).toEqual([]);
  });

  it('server/ and agent/ never import cli/', () => {
    expect(violations('server', ['cli', 'agent'])).toEqual([]);
    expect(violations('agent', ['cli', 'server'])).toEqual([]);
  });

  it.each(Q2Q_LAYERS.slice(0, -1).map((layer, i) => [layer, Q2Q_LAYERS.slice(i + 1)] as const))(
    'q2q/%s never imports a higher q2q layer (%j)',
    (layer, higher) => {
      expect(violations(`q2q/${layer}`, higher.map((h) => `q2q/${h}`))).toEqual([]);
    },
  );

  it.each([['q2q/wire'], ['q2q/proto']])('%s does no I/O', (dir) => {
    expect(violations(dir, ['agent', 'server', 'cli'], IO_MODULES)).toEqual([]);
  });

  it('server/ never imports q2q/negotiate/', () => {
    expect(violations('server', ['q2q/negotiate'])).toEqual([]);
  });

  it('bench/ never imports test/', () => {
    expect(violations('bench', ['test'])).toEqual([]);
  });

  it('the checks fail on the imports they forbid', () => {
    // A check that cannot fail proves nothing: each rule, against a layer that breaks it.
    expect(violations('q2q/negotiate', ['q2q/transport'])).not.toEqual([]);
    expect(violations('q2q/transport', [], ['net'])).not.toEqual([]);
    expect(violations('test', ['bench'])).not.toEqual([]);
    expect(violations('agent', ['q2q/negotiate'])).not.toEqual([]);
  });
});
