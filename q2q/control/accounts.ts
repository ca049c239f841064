/**
 * Account flows on the client: a fresh key pair and CSR, then `register`
 * (new account) or `sign` (existing account on a new machine) or `renew`.
 * The private key never leaves this process.
 */
import { formatAddress, parseAddress } from '../address';
import { isVertexError, vertexError, VertexError } from '../errors';
import { createCsr, describeCertificate, generateKeyPair, keyMatchesCertificate } from '../identity';
import { COMMANDS } from './protocol';
import type { ServerConnection } from './server-connection';

export interface NewIdentity {
  address: string;
  keyPem: string;
  certPem: string;
  caPem: string;
  serial: string;
  notAfter: Date;
}

async function requestCertificate(
  connection: ServerConnection,
  command: string,
  address: string,
  extra: Record<string, string>,
  keyPem?: string,
): Promise<NewIdentity> {
  const key = keyPem ?? (await generateKeyPair()).privateKeyPem;
  const csr = await createCsr(address, key);
  const answer = await connection.call(command, { address, csr, ...extra });
  const certPem = answer.certificate;
  if (!certPem) throw vertexError('BadRequest', `${command} ${address}: the server answered without a certificate`);
  const info = describeCertificate(certPem);
  if (info.q2qAddress !== address || !keyMatchesCertificate(key, certPem) || info.issuerCn.toLowerCase() !== connection.domain) {
    throw vertexError('CertificateInvalid', `${command} ${address}: the server returned a certificate for "${info.q2qAddress}" that does not match the request`);
  }
  return { address, keyPem: key, certPem, caPem: connection.caPem, serial: info.serial, notAfter: info.notAfter };
}

export function registerAccount(connection: ServerConnection, addressText: string, password: string, invite?: string): Promise<NewIdentity> {
  const address = formatAddress(parseAddress(addressText));
  return requestCertificate(connection, COMMANDS.register, address, { password, ...(invite ? { invite } : {}) });
}

export async function loginAccount(connection: ServerConnection, addressText: string, password: string): Promise<NewIdentity> {
  const address = formatAddress(parseAddress(addressText));
  try {
    return await requestCertificate(connection, COMMANDS.sign, address, { password });
  } catch (err) {
    // The server names its command (`sign alice@a.test: wrong password`); the user ran `vertex login`.
    if (isVertexError(err, 'BadPassword')) throw new VertexError('BadPassword', `wrong password for ${address}`, { cause: err });
    if (isVertexError(err, 'NoSuchUser')) throw new VertexError('NoSuchUser', `login ${address}: ${connection.domain}'s server has no such account`, { cause: err });
    throw err;
  }
}

/** Renewal over a connection authenticated with the current certificate; keeps a fresh key. */
export function renewCertificate(connection: ServerConnection, addressText: string): Promise<NewIdentity> {
  const address = formatAddress(parseAddress(addressText));
  return requestCertificate(connection, COMMANDS.renew, address, {});
}
