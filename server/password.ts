/**
 * Password hashing with scrypt (node:crypto). The hash string carries its
 * parameters so they can be raised later without breaking old accounts:
 *   scrypt$<N>$<r>$<p>$<salt base64>$<key base64>
 */
import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';

/**
 * N=2^17, r=8, p=1: OWASP's current minimum for scrypt (128 MiB, about
 * 0.3-0.8 s per hash here). Hashes made with the old N=2^14 still verify
 * and are rehashed on the next successful login (needsRehash).
 */
export const SCRYPT_N = 1 << 17;
export const SCRYPT_R = 8;
export const SCRYPT_P = 1;
const SALT_BYTES = 16;
const KEY_BYTES = 32;
const MAX_N = 1 << 20;

/**
 * Hashes computed at once. Each takes 128 MiB and a libuv thread for most of a
 * second: a queue keeps a burst of logins from taking the memory and every
 * thread (which fs and DNS share). Limits on who may try (rate-limiter.ts)
 * keep the queue short.
 */
export const MAX_CONCURRENT_HASHES = 2;
let running = 0;
const waiting: Array<() => void> = [];

async function withHashSlot<T>(fn: () => Promise<T>): Promise<T> {
  if (running >= MAX_CONCURRENT_HASHES) await new Promise<void>((resolve) => waiting.push(resolve));
  else running++;
  try {
    return await fn();
  } finally {
    const next = waiting.shift();
    if (next) next();
    else running--;
  }
}

function derive(password: string, salt: Buffer, n: number, r: number, p: number, length: number): Promise<Buffer> {
  return withHashSlot(() => deriveNow(password, salt, n, r, p, length));
}

function deriveNow(password: string, salt: Buffer, n: number, r: number, p: number, length: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFC'), salt, length, { N: n, r, p, maxmem: 256 * n * r + 1024 * 1024 }, (err, key) =>
      err ? reject(err) : resolve(key));
  });
}

export async function hashPassword(password: string, params: { n?: number } = {}): Promise<string> {
  const n = params.n ?? SCRYPT_N;
  const salt = randomBytes(SALT_BYTES);
  const key = await derive(password, salt, n, SCRYPT_R, SCRYPT_P, KEY_BYTES);
  return ['scrypt', n, SCRYPT_R, SCRYPT_P, salt.toString('base64'), key.toString('base64')].join('$');
}

/** True when `stored` was made with weaker parameters than today's: rehash it once the password is known right. */
export function needsRehash(stored: string): boolean {
  const parts = stored.split('$');
  return parts[0] !== 'scrypt' || Number(parts[1]) < SCRYPT_N || Number(parts[2]) < SCRYPT_R || Number(parts[3]) < SCRYPT_P;
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false;
  const [n, r, p] = [Number(parts[1]), Number(parts[2]), Number(parts[3])];
  if (!Number.isInteger(n) || n < 2 || n > MAX_N || !Number.isInteger(r) || !Number.isInteger(p)) return false;
  const salt = Buffer.from(parts[4] ?? '', 'base64');
  const expected = Buffer.from(parts[5] ?? '', 'base64');
  if (expected.length === 0) return false;
  const actual = await derive(password, salt, n, r, p, expected.length);
  return timingSafeEqual(actual, expected);
}

/** A hash to compare against when the account does not exist, so timing does not reveal which accounts exist. */
export const DUMMY_PASSWORD_HASH = `scrypt$${SCRYPT_N}$${SCRYPT_R}$${SCRYPT_P}$AAAAAAAAAAAAAAAAAAAAAA==$${Buffer.alloc(KEY_BYTES).toString('base64')}`;
