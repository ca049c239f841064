/**
 * Relay legs, version 3 (issue 12, "the relay without triple encryption"):
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
 * a request copied off the wire opens nothing. What the wire then carries is
 * TLS between the peers: someone on the path sees ciphertext, as the server
 * does, and can only break the connection, as with any TCP connection.
 *
 * The server tells legs from TLS by the first byte: a request box starts
 * with 0x00 (the high byte of its first key's length), TLS with 0x16.
 *
 * Answers, from the server to the leg, unauthenticated (the peer TLS after
 * them is what is trusted): {ok: 1} once both legs are in, or
 * {error_code, error_description}; a server that carries the leg on to
 * another node first gets {held: 1} from there (server/node-mesh.ts).
 */
import { createHash, createHmac, randomBytes, sign, timingSafeEqual, verify, X509Certificate } from 'node:crypto';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { isErrorCode, vertexError, type VertexError } from '../errors';
import { preambleError, readPreamble, writePreamble } from './preamble';

export const RELAY_LEG_VERSION = '3';
/** The first byte of every TLS connection (a handshake record); a relay leg request starts with 0x00. */
export const TLS_HANDSHAKE_BYTE = 0x16;
const TRANSCRIPT_LABEL = 'q2q-relay-leg/3';

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
  return { v: RELAY_LEG_VERSION, domain, token_id: tokenId, certificate: cert.raw.toString('base64'), nonce, mac, signature };
}

/** A request whose signature matched its certificate; who the certificate names is for the server to check. */
export interface LegRequest {
  domain: string;
  tokenId: string;
  nonce: string;
  certPem: string;
  /** The fields as received, to carry the leg on to another node unchanged. */
  fields: Record<string, string>;
  /** Whether `token` is the one the request was made with. */
  provesToken(token: string): boolean;
}

/**
 * Checks a request's form and signature (not the certificate's standing, nor
 * the token). `unchecked` switches the signature check off: a test fault only.
 */
export function checkLegRequest(fields: Record<string, string>, unchecked = false): LegRequest {
  if (fields.v !== RELAY_LEG_VERSION) throw vertexError('ProtocolVersion', `relay leg: version ${fields.v ?? '(none)'} is not ${RELAY_LEG_VERSION}`);
  const { domain = '', token_id: tokenId = '', nonce = '', mac = '', certificate = '', signature = '' } = fields;
  if (!/^[0-9a-f]{32}$/.test(tokenId) || !/^[0-9a-f]{32}$/.test(nonce) || !/^[0-9a-f]{64}$/.test(mac) || domain.length === 0 || domain.length > 253) {
    throw vertexError('BadRequest', 'relay leg: malformed request');
  }
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
  const macBytes = Buffer.from(mac, 'hex');
  return {
    domain, tokenId, nonce, certPem: cert.toString(), fields,
    provesToken: (token) => timingSafeEqual(Buffer.from(macOver(token, data), 'hex'), macBytes),
  };
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
