/**
 * Key pairs: generation, import into WebCrypto for signing, and matching a
 * key to a certificate. Keys travel as PEM (PKCS#8 private, SPKI public).
 *
 * We generate ECDSA P-256 keys. Ed25519 keys are accepted wherever a key is
 * read, because ARCHITECTURE.md allows either algorithm for identities.
 */
import * as crypto from 'node:crypto';
import { promisify } from 'node:util';
import { VertexError } from '../errors';

const generateKeyPairAsync = promisify(crypto.generateKeyPair);

export type KeyAlgorithm = 'ecdsa-p256' | 'ed25519';

/** The WebCrypto algorithm used both to import a key and to sign with it. */
export interface SigningAlgorithm {
  name: string;
  namedCurve?: string;
  hash?: string;
}

export interface SigningKeys {
  algorithm: KeyAlgorithm;
  signingAlgorithm: SigningAlgorithm;
  keys: crypto.webcrypto.CryptoKeyPair;
}

export async function generateKeyPair(): Promise<{ privateKeyPem: string; publicKeyPem: string }> {
  const { privateKey, publicKey } = await generateKeyPairAsync('ec', {
    namedCurve: 'P-256',
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

/** Parses a private key PEM, refusing anything but P-256 and Ed25519. */
export function parsePrivateKey(privateKeyPem: string, context = 'parse private key'): crypto.KeyObject {
  let key: crypto.KeyObject;
  try {
    key = crypto.createPrivateKey(privateKeyPem);
  } catch (err) {
    throw new VertexError('CertificateInvalid', `${context}: not a readable PEM private key`, { cause: err });
  }
  keyAlgorithmOf(key, context);
  return key;
}

/** Names the algorithm of a key, refusing any we do not issue for. */
export function keyAlgorithmOf(key: crypto.KeyObject, context: string): KeyAlgorithm {
  if (key.asymmetricKeyType === 'ed25519') return 'ed25519';
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ecdsa-p256';
  const detail = key.asymmetricKeyType === 'ec' ? `ec ${key.asymmetricKeyDetails?.namedCurve ?? 'unknown curve'}` : String(key.asymmetricKeyType);
  throw new VertexError('CertificateInvalid', `${context}: key type ${detail} is not supported (use ECDSA P-256 or Ed25519)`);
}

/** Imports a private key PEM as a WebCrypto key pair for @peculiar/x509 to sign with. */
export async function importSigningKeys(privateKeyPem: string, context = 'import signing key'): Promise<SigningKeys> {
  const privateKey = parsePrivateKey(privateKeyPem, context);
  const algorithm = keyAlgorithmOf(privateKey, context);
  const publicKey = crypto.createPublicKey(privateKey);
  const pkcs8 = privateKey.export({ type: 'pkcs8', format: 'der' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const signingAlgorithm: SigningAlgorithm =
    algorithm === 'ed25519' ? { name: 'Ed25519' } : { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const subtle = crypto.webcrypto.subtle;
  const keys = {
    privateKey: await subtle.importKey('pkcs8', pkcs8, signingAlgorithm, true, ['sign']),
    publicKey: await subtle.importKey('spki', spki, signingAlgorithm, true, ['verify']),
  };
  return { algorithm, signingAlgorithm, keys };
}

/** True when the private key is the one the certificate certifies. Unreadable input throws CertificateInvalid. */
export function keyMatchesCertificate(privateKeyPem: string, certPem: string): boolean {
  const key = parsePrivateKey(privateKeyPem, 'match key to certificate');
  let cert: crypto.X509Certificate;
  try {
    cert = new crypto.X509Certificate(certPem);
  } catch (err) {
    throw new VertexError('CertificateInvalid', 'match key to certificate: not a readable PEM certificate', { cause: err });
  }
  return cert.checkPrivateKey(key);
}
