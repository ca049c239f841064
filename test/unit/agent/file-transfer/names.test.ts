import fc from 'fast-check';
import * as path from 'node:path';
import {
  badOfferPaths, badTransferPath, finalPath, MAX_COMPONENT_BYTES, partialPath, quoteName,
} from '../../../../agent/file-transfer/names';

describe('file-transfer names', () => {
  it.each([
    [JSON.stringify('../../etc/passwd'), '../../etc/passwd', /"\.\." component/],
    [JSON.stringify('/etc/passwd'), '/etc/passwd', /absolute/],
    [JSON.stringify('a/../../b'), 'a/../../b', /"\.\." component/],
    [JSON.stringify('./a'), './a', /"\." component/],
    [JSON.stringify('a//b'), 'a//b', /empty component/],
    [JSON.stringify('a/'), 'a/', /empty component/],
    [JSON.stringify(''), '', /empty/],
    [JSON.stringify('a\u0000b'), 'a\u0000b', /NUL/],
    [JSON.stringify('a\nb'), 'a\nb', /control character/],
    [JSON.stringify('a\u001b[2Jb'), 'a\u001b[2Jb', /control character/],
    [JSON.stringify('a\u009bb'), 'a\u009bb', /control character/],
    [JSON.stringify('a\\..\\b'), 'a\\..\\b', /backslash/],
    [JSON.stringify('.x.vertex-partial'), '.x.vertex-partial', /reserved for partial files/],
    ['a component of MAX_COMPONENT_BYTES + 1', 'd/<component of MAX_COMPONENT_BYTES + 1>'.replace(/<.*>/, 'x'.repeat(MAX_COMPONENT_BYTES + 1)), /longer than/],
    ['a 4201-byte path', 'a/'.repeat(2100) + 'b', /longer than 4096 bytes/],
  ])('refuses %s', (_label, name, why) => {
    expect(badTransferPath(name)).toMatch(why);
  });

  it.each(['a.txt', 'dir/sub/file', '.hidden', '..a', 'a..', 'résumé.pdf', '日本語/ファイル', 'with space', 'C:stuff'])('accepts %s', (name) => {
    expect(badTransferPath(name)).toBeNull();
  });

  it('accepts a component of exactly MAX_COMPONENT_BYTES', () => {
    expect(badTransferPath('x'.repeat(MAX_COMPONENT_BYTES))).toBeNull();
  });

  it('every accepted name stays inside the directory', () => {
    const dir = '/srv/in';
    fc.assert(fc.property(fc.array(fc.constantFrom('a', '.', '..', '', '/', '\\', '\u0000', 'b.c', '.x'), { minLength: 1, maxLength: 8 }), (parts) => {
      const name = parts.join('');
      if (badTransferPath(name) !== null) return;
      const full = finalPath(dir, name);
      expect(full.startsWith(`${dir}${path.sep}`)).toBe(true);
      expect(path.relative(dir, full).split(path.sep)).not.toContain('..');
      expect(path.dirname(partialPath(full))).toBe(path.dirname(full));
    }), { numRuns: 3000 });
  });

  it('refuses a set that names one place twice or uses a file as a directory', () => {
    expect(badOfferPaths(['a', 'b', 'c/d'])).toBeNull();
    expect(badOfferPaths(['a', 'a'])?.why).toMatch(/twice/);
    expect(badOfferPaths(['a', 'a/b'])?.why).toMatch(/as a file and as a directory/);
    expect(badOfferPaths(['a/b', 'a'])?.why).toMatch(/directory of another/);
    expect(badOfferPaths(['ok', '../x'])).toEqual({ name: '../x', why: expect.stringMatching(/\.\./) });
  });

  it('places partial files beside their final name, hidden', () => {
    expect(partialPath('/d/sub/file.bin')).toBe('/d/sub/.file.bin.vertex-partial');
    expect(finalPath('/d', 'sub/file.bin')).toBe('/d/sub/file.bin');
  });

  it.each([
    ['U+202E (right-to-left override)', 'invoice\u202Etxt.exe', /U\+202E/],
    ['U+2066 (left-to-right isolate)', 'a\u2066b', /U\+2066/],
    ['U+200F (right-to-left mark)', 'a\u200Fb', /U\+200F/],
    ['U+200B (zero-width space)', 'pay\u200Bpal.pdf', /U\+200B/],
    ['U+FEFF (zero-width no-break space)', '\uFEFFa', /U\+FEFF/],
    ['U+2028 (line separator)', 'a\u2028b', /U\+2028/],
  ])('refuses a name with %s (issue 11)', (_label, name, why) => {
    expect(badTransferPath(name)).toMatch(why);
    expect(badTransferPath(name)).toMatch(/formatting character/);
  });

  it.each(['\u{1F468}\u200D\u{1F469}\u200D\u{1F467}.jpg', '\u0645\u06CC\u200C\u062E\u0648\u0627\u0647\u0645.txt'])('keeps ZWJ and ZWNJ, which scripts and emoji need: %s', (name) => {
    expect(badTransferPath(name)).toBeNull();
  });

  it('prints bidi controls and other invisible characters escaped, never raw (issue 11)', () => {
    const shown = quoteName('invoice\u202Etxt.exe');
    expect(shown).toBe('"invoice\\u{202e}txt.exe"');
    for (const c of ['\u202E', '\u2066', '\u200B', '\uFEFF', '\u2028', '\u200D', '\u0085', '\uE000']) {
      expect(quoteName(`a${c}b`)).not.toContain(c);
    }
    // What JSON.stringify alone did (the behaviour before): the override goes out raw.
    expect(JSON.stringify('invoice\u202Etxt.exe')).toContain('\u202E');
  });

  it('quotes hostile names for messages', () => {
    expect(quoteName('a\u001b[2Jb')).toBe('"a\\u001b[2Jb"');
    expect(quoteName('x'.repeat(500)).length).toBeLessThan(130);
  });
});
