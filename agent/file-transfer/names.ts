/**
 * Which names an offer may carry, and where a file lives while it arrives.
 *
 * An offered path is relative and '/'-separated. The receiver refuses the
 * whole offer when any name could land outside its directory or confuse a
 * person reading it: absolute paths, `.` and `..` components, empty
 * components, NUL and other control characters, bidi controls and other
 * invisible format characters, backslashes (a separator
 * elsewhere), components too long to carry the partial-file prefix and
 * suffix, names that look like our own partial files, and two names for one
 * place.
 *
 * While it arrives, `dir/name` is written as `dir/.name.vertex-partial` and
 * renamed only after its SHA-256 matched; a later offer of the same file
 * resumes from that partial.
 */
import * as path from 'node:path';
import { MAX_PATH_BYTES } from '../../q2q/wire/file-transfer';

export const PARTIAL_PREFIX = '.';
export const PARTIAL_SUFFIX = '.vertex-partial';
/** NAME_MAX on Linux filesystems. */
export const MAX_NAME_BYTES = 255;
/** A component must leave room for the partial-file prefix and suffix. */
export const MAX_COMPONENT_BYTES = MAX_NAME_BYTES - PARTIAL_PREFIX.length - PARTIAL_SUFFIX.length;

// C0 controls, DEL and the C1 controls: they rewrite terminals and logs.
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;
/**
 * Format characters (Cf) and the line and paragraph separators: bidi overrides and
 * isolates (U+202A-202E, U+2066-2069) make `txt.exe` read as `exe.txt`, and zero-width
 * ones hide what a name really is (issue 11). ZWNJ and ZWJ (U+200C, U+200D) are kept:
 * Persian, Indic scripts and emoji sequences need them, and they reorder nothing.
 */
const FORMAT_RE = /(?![\u200c\u200d])[\p{Cf}\p{Zl}\p{Zp}]/u;
/** What quoteName escapes: every control, format and separator character, ZWJ included. */
const UNPRINTABLE_RE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Co}\p{Cn}]/gu;

/** Why `name` may not be used as an offered path, or null when it is fine. */
export function badTransferPath(name: string): string | null {
  if (name.length === 0) return 'the name is empty';
  if (Buffer.byteLength(name, 'utf8') > MAX_PATH_BYTES) return `the name is longer than ${MAX_PATH_BYTES} bytes`;
  if (name.includes('\u0000')) return 'the name contains a NUL byte';
  if (CONTROL_RE.test(name)) return 'the name contains a control character';
  const format = FORMAT_RE.exec(name);
  if (format) return `the name contains U+${(format[0].codePointAt(0) as number).toString(16).toUpperCase().padStart(4, '0')}, an invisible formatting character (bidi controls can disguise a name)`;
  if (name.includes('\\')) return 'the name contains a backslash';
  if (name.startsWith('/')) return 'the name is an absolute path';
  for (const part of name.split('/')) {
    if (part === '') return 'the name has an empty component (// or a trailing /)';
    if (part === '.' || part === '..') return `the name has a "${part}" component`;
    if (Buffer.byteLength(part, 'utf8') > MAX_COMPONENT_BYTES) return `a component is longer than ${MAX_COMPONENT_BYTES} bytes`;
    if (part.endsWith(PARTIAL_SUFFIX)) return `a component ends in ${PARTIAL_SUFFIX}, which is reserved for partial files`;
  }
  return null;
}

/**
 * Why a set of offered paths cannot be received together, or null. Each
 * path must pass badTransferPath, appear once, and not be the directory of
 * another (`a` and `a/b`).
 */
export function badOfferPaths(names: readonly string[]): { name: string; why: string } | null {
  const files = new Set<string>();
  const dirs = new Set<string>();
  for (const name of names) {
    const why = badTransferPath(name);
    if (why !== null) return { name, why };
    if (files.has(name)) return { name, why: 'the name is offered twice' };
    if (dirs.has(name)) return { name, why: 'the name is also the directory of another offered file' };
    files.add(name);
    const parts = name.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (files.has(dir)) return { name, why: `${dir} is offered as a file and as a directory` };
      dirs.add(dir);
    }
  }
  return null;
}

/** The final location of an offered path under `dir` (the path must have passed badTransferPath). */
export function finalPath(dir: string, name: string): string {
  return path.join(dir, ...name.split('/'));
}

/** Where `file` is written while it arrives: a hidden sibling. */
export function partialPath(file: string): string {
  return path.join(path.dirname(file), `${PARTIAL_PREFIX}${path.basename(file)}${PARTIAL_SUFFIX}`);
}

/**
 * A name as it appears in a message: quoted and escaped, so a hostile name cannot rewrite
 * the terminal. JSON.stringify alone escapes only C0 controls, so controls, bidi and other
 * format characters, separators, private-use and unassigned code points become \u{...}.
 */
export function quoteName(name: string): string {
  const max = 120;
  const cut = name.length > max ? `${name.slice(0, max)}...` : name;
  return JSON.stringify(cut).replace(UNPRINTABLE_RE, (c) => `\\u{${(c.codePointAt(0) as number).toString(16)}}`);
}
