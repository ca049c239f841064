/**
 * Relay legs, version 4 (issue 12, "the relay without triple encryption"):
 * a plain TCP connection to the listener's server that opens with one
 * request box, then carries raw bytes. What the two legs carry is the peers'
 * own mutual TLS, end to end, so the server splices bytes it cannot read and
 * adds no encryption of its own (version 2 ran each leg in its own TLS: the
 * sender encrypted twice, the server decrypted and re-encrypted, the
 * receiver decrypted twice).
 *
 * The request authenticates the leg once, by both things version 2 checked:
 * - the user's certificate: `certificate` and `signature`, a signature with
 *   the certificate's key over the transcript below (the TLS handshake proved
 *   the same possession before). The server checks the certificate as it
 *   checks a control session's (chain, account, revocation, foreign status);
 * - the one-time token: `mac`, HMAC-SHA256 keyed by the token over the
 *   transcript. The token itself never crosses this connection; `token_id`
 *   (a hash of it) only says which pending pair is meant. Only the two peers
 *   and the server know a token (it went over their authenticated control
 *   sessions), so nobody else can open a leg for it.
 * The transcript binds the domain, the token id, a fresh nonce and the
 * certificate; the server refuses a nonce it saw already for the token, so
 * a request copied off the wire opens nothing.
 *
 * Version 4 keeps who opened the leg from the path: TLS legs (version 2)
 * hid the certificate, and version 3 sent it in the clear, so anyone on the
 * agent-to-server path learnt which address opened a relay leg, and when.
 * Now `certificate`, `signature` and `mac` travel sealed (`sealed`:
 * AES-256-GCM, IV first and tag last) under a key derived from the token
 * (HKDF-SHA256, salt the nonce, info a label, the domain and the token id),
 * so only the caller, the listener and the server can read them. In the
 * clear are the version, the domain (the server's own), the token id and the
 * nonce, which name nobody. The server therefore finds the pending pair by
 * the token id first, opens the sealed part with its token, and only then
 * checks the signature and the certificate (readLegHeader, openLegRequest).
 * What the wire then carries is TLS between the peers: someone on the path
 * sees ciphertext, as the server does, and can only break the connection,
 * as with any TCP connection.
 *
 * The server tells legs from TLS by the first byte: a request box starts
 * with 0x00 (the high byte of its first key's length), TLS with 0x16.
 *
 * Answers, from the server to the leg, unauthenticated (the peer TLS after
 * them is what is trusted): {ok: 1} once both legs are in, or
 * {error_code, error_description}; a server that carries the leg on to
 * another node first gets {held: 1} from there (server/node-mesh.ts).
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes, sign, timingSafeEqual, verify, X509Certificate } from 'node:crypto';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { isErrorCode, vertexError, type VertexError } from '../errors';
import { preambleError, readPreamble, writePreamble } from './preamble';

export const RELAY_LEG_VERSION = '4';
/** The first byte of every TLS connection (a handshake record); a relay leg request starts with 0x00. */
export const TLS_HANDSHAKE_BYTE = 0x16;
const TRANSCRIPT_LABEL = 'q2q-relay-leg/4';
const SEAL_LABEL = 'q2q-relay-leg/4 seal';
const IV_BYTES = 12;
const TAG_BYTES = 16;

/** Names a token's pending pair without revealing the token. */
export function relayTokenId(token: string): string {
  return createHash('sha256').update('q2q relay token id\0').update(token).digest('hex').slice(0, 32);
}

function transcript(domain: string, tokenId: string, nonce: string, certDer: Buffer): Buffer {
  const certHash = createHash('sha256').update(certDer).digest('hex');
  return Buffer.from(`${TRANSCRIPT_LABEL}\n${domain}\n${tokenId}\n${nonce}\n${certHash}`);
}

function macOver(token: string, data: Buffer): string {
  return createHmac('sha256', token).update(data).digest('hex');
}

/**
 * The key that seals a request: only someone who knows the token derives
 * it. The nonce (the salt) makes it new for every request; the domain and
 * token id (in info) tie it to the header it travels under, so a sealed part
 * moved under another header does not open.
 */
function sealKey(token: string, domain: string, tokenId: string, nonce: string): Buffer {
  return Buffer.from(hkdfSync('sha256', token, Buffer.from(nonce, 'hex'), `${SEAL_LABEL}\n${domain}\n${tokenId}`, 32));
}

/**
 * The request box a leg opens with (see the file comment). `macKey` is the
 * token except in tests that forge a proof.
 */
export function legRequest(identity: { keyPem: string; certPem: string }, domain: string, token: string, macKey = token): Record<string, string> {
  const cert = new X509Certificate(identity.certPem);
  const tokenId = relayTokenId(token);
  const nonce = randomBytes(16).toString('hex');
  const data = transcript(domain, tokenId, nonce, cert.raw);
  const mac = macOver(macKey, data);
  // null: the digest the key type implies (SHA-256 for P-256, none for Ed25519).
  const signature = sign(null, Buffer.concat([data, Buffer.from(`\n${mac}`)]), identity.keyPem).toString('base64');
  const inner = Buffer.from(JSON.stringify({ certificate: cert.raw.toString('base64'), signature, mac }));
  // The key is new for every nonce; a random IV all the same, so a nonce used twice by mistake repeats no keystream.
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', sealKey(token, domain, tokenId, nonce), iv);
  const sealed = Buffer.concat([iv, cipher.update(inner), cipher.final(), cipher.getAuthTag()]);
  return { v: RELAY_LEG_VERSION, domain, token_id: tokenId, nonce, sealed: sealed.toString('base64') };
}

/** A request's clear part: enough to find the pending pair (and its token), nothing about who sent it. */
export interface LegHeader {
  domain: string;
  tokenId: string;
  nonce: string;
  /** The fields as received, to carry the leg on to another node unchanged. */
  fields: Record<string, string>;
}

/** A request opened with its token, whose signature matched its certificate; who the certificate names is for the server to check. */
export interface LegRequest extends LegHeader {
  certPem: string;
}

/** Checks a request's version and form; the sealed part waits for the token (openLegRequest). */
export function readLegHeader(fields: Record<string, string>): LegHeader {
  if (fields.v !== RELAY_LEG_VERSION) throw vertexError('ProtocolVersion', `relay leg: version ${fields.v ?? '(none)'} is not ${RELAY_LEG_VERSION}`);
  const { domain = '', token_id: tokenId = '', nonce = '', sealed = '' } = fields;
  if (!/^[0-9a-f]{32}$/.test(tokenId) || !/^[0-9a-f]{32}$/.test(nonce) || domain.length === 0 || domain.length > 253
    || !/^[A-Za-z0-9+/]+={0,2}$/.test(sealed) || sealed.length > 16_384) {
    throw vertexError('BadRequest', 'relay leg: malformed request');
  }
  return { domain, tokenId, nonce, fields };
}

/**
 * Opens a request's sealed part with `token` (the pending pair's, found by
 * the token id) and checks its signature and token proof. A request not
 * sealed with the token is TokenInvalid: whoever made it does not know the
 * token. `unchecked` switches the signature and proof checks off (the seal
 * cannot be): a test fault only.
 */
export function openLegRequest(header: LegHeader, token: string, unchecked = false): LegRequest {
  const { domain, tokenId, nonce } = header;
  const sealed = Buffer.from(header.fields.sealed ?? '', 'base64');
  let inner: Record<string, unknown>;
  try {
    if (sealed.length < IV_BYTES + TAG_BYTES) throw new Error('too short');
    const decipher = createDecipheriv('aes-256-gcm', sealKey(token, domain, tokenId, nonce), sealed.subarray(0, IV_BYTES));
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    const plain = Buffer.concat([decipher.update(sealed.subarray(IV_BYTES, sealed.length - TAG_BYTES)), decipher.final()]);
    inner = JSON.parse(plain.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw vertexError('TokenInvalid', 'relay leg: the request is not sealed with the token');
  }
  const str = (v: unknown): string => (typeof v === 'string' ? v : '');
  const certificate = str(inner.certificate);
  const signature = str(inner.signature);
  const mac = str(inner.mac);
  if (!/^[0-9a-f]{64}$/.test(mac)) throw vertexError('BadRequest', 'relay leg: malformed request');
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(Buffer.from(certificate, 'base64'));
  } catch (err) {
    throw vertexError('CertificateInvalid', 'relay leg: the certificate does not parse', err);
  }
  const data = transcript(domain, tokenId, nonce, cert.raw);
  let good = false;
  try {
    good = verify(null, Buffer.concat([data, Buffer.from(`\n${mac}`)]), cert.publicKey, Buffer.from(signature, 'base64'));
  } catch {
    good = false;
  }
  if (!good && !unchecked) throw vertexError('CertificateInvalid', 'relay leg: the signature does not match the certificate');
  const proves = timingSafeEqual(Buffer.from(macOver(token, data), 'hex'), Buffer.from(mac, 'hex'));
  if (!proves && !unchecked) throw vertexError('TokenInvalid', 'relay: the request does not prove the token');
  return { ...header, certPem: cert.toString() };
}

/** Refuses a leg with a reason and closes it once the reason is sent. */
export function refuseLeg(socket: Duplex, err: VertexError): void {
  writePreamble(socket, { error_code: err.code, error_description: err.message });
  socket.end();
}

/**
 * Connects a leg to `endpoint` with `request` and waits for the answer:
 * {ok: 1}, or with `acceptHeld` also {held: 1}. A refusal becomes its error.
 * The socket comes back paused, anything after the answer unread on it.
 */
export function dialRelayLeg(
  endpoint: { host: string; port: number },
  request: Record<string, string>,
  opts: { what: string; timeoutMs: number; acceptHeld?: boolean },
): Promise<{ socket: net.Socket; held: boolean }> {
  return new Promise((resolve, reject) => {
    // A leg carries one direction after the other ended (half-close).
    const socket = net.connect({ host: endpoint.host, port: endpoint.port, allowHalfOpen: true });
    // Handshake records of the peers' TLS are small: no Nagle delay on them.
    socket.setNoDelay(true);
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    // readPreamble bounds the wait for the answer; this bounds the connect.
    const timer = setTimeout(() => fail(vertexError('Timeout', `${opts.what}: no connection after ${opts.timeoutMs} ms`)), opts.timeoutMs);
    const onConnectError = (err: NodeJS.ErrnoException) => fail(vertexError('ServerUnavailable', `${opts.what}: ${err.code ?? err.message}`, err));
    socket.once('error', onConnectError);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onConnectError);
      writePreamble(socket, request);
      readPreamble(socket, opts.what, opts.timeoutMs).then((answer) => {
        const held = opts.acceptHeld === true && answer.held === '1';
        const refused = held ? null : preambleError(answer);
        if (refused) return fail(vertexError(isErrorCode(refused.code) ? refused.code : 'Internal', refused.description));
        resolve({ socket, held });
      }, fail);
    });
  });
}

/**
 * Sends an accepted connection on by its first byte: TLS (a control
 * session, or a node's) to `onTls`, anything else to `onLeg`. The byte is
 * put back unread, so whichever takes the socket reads it from the start
 * (node:tls takes bytes already buffered on a socket it wraps). A
 * connection that sends nothing within `timeoutMs` is closed.
 */
export function sortConnection(socket: net.Socket, timeoutMs: number, onTls: (socket: net.Socket) => void, onLeg: (socket: net.Socket) => void): void {
  // Until the first byte nobody else listens: an error then must not go unhandled.
  const onError = (): void => undefined;
  socket.on('error', onError);
  const timer = setTimeout(() => socket.destroy(), timeoutMs);
  socket.once('close', () => clearTimeout(timer));
  socket.once('data', (chunk: Buffer) => {
    clearTimeout(timer);
    socket.pause();
    socket.unshift(chunk);
    if (chunk[0] === TLS_HANDSHAKE_BYTE) onTls(socket);
    else onLeg(socket);
  });
}
