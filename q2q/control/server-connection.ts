/**
 * The client side of a control connection: TLS 1.3 to a domain's identity
 * server, the domain CA pinned on first use (the server's TLS certificate is
 * the CA itself), then `hello` with the protocol version.
 */
import type * as net from 'node:net';
import * as tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { asVertexError, vertexError, VertexError } from '../errors';
import type { AmpArgs, AmpPeer } from '../proto/amp-peer';
import { attachAmp } from '../transport/amp-connection';
import type { Logger } from '../util/log';
import { silentLogger } from '../util/log';
import { checkDomainCaCertificate, describeCertificate, identitySecureContext } from '../identity';
import type { ServerEndpoint, ServerResolver } from './discovery';
import { ALPN_CONTROL, COMMANDS, PROTOCOL_VERSION } from './protocol';

/** Decides whether a domain CA is trusted; throws CaChanged when a pin does not match. */
export interface CaTrust {
  pinDomainCa(domain: string, caCertPem: string): 'new' | 'match';
}

export interface ClientCredentials {
  keyPem: string;
  certPem: string;
}

export interface ServerConnectionOptions {
  domain: string;
  resolve: ServerResolver;
  trust: CaTrust;
  credentials?: ClientCredentials;
  connectTimeoutMs?: number;
  log?: Logger;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

export class ServerConnection {
  constructor(
    readonly domain: string,
    readonly endpoint: ServerEndpoint,
    readonly socket: tls.TLSSocket,
    readonly peer: AmpPeer,
    readonly caPem: string,
    readonly serverSoftware: string,
  ) {}

  call(command: string, args: AmpArgs = {}, opts?: { timeoutMs?: number }): Promise<AmpArgs> {
    return this.peer.call(command, args, opts);
  }

  close(): void {
    this.peer.close();
    this.socket.end();
    this.socket.destroySoon?.();
  }
}

export interface ConnectTlsOptions {
  /** ALPN protocol: the control protocol unless said otherwise (relay legs). */
  alpn?: string;
  /**
   * A TCP socket, already connecting to the endpoint, to run TLS over. For a caller that must
   * keep the TCP socket, e.g. to reset it (relay legs); otherwise TLS opens its own.
   */
  tcp?: net.Socket;
  /** How errors name the connection. */
  what?: string;
}

/** A TLS connection to a domain's server, not yet checked against the pin (see checkServerCa). */
export function connectTls(endpoint: ServerEndpoint, domain: string, credentials: ClientCredentials | undefined, timeoutMs: number, opts: ConnectTlsOptions = {}): Promise<tls.TLSSocket> {
  const { tcp } = opts;
  const what = opts.what ?? `connect to ${domain} server at ${endpoint.host}:${endpoint.port}`;
  return new Promise((resolve, reject) => {
    // A relay leg carries one direction after the other has ended (half-close).
    // allowHalfOpen is honoured by tls.connect (it reaches net.Socket) but missing from @types/node 20.
    const halfOpen = { allowHalfOpen: true } as tls.ConnectionOptions;
    const socket = tls.connect({
      ...halfOpen,
      ...(tcp ? { socket: tcp } : { host: endpoint.host, port: endpoint.port }),
      // SNI picks the domain's CA on a server that serves several domains.
      servername: domain,
      minVersion: 'TLSv1.3',
      ALPNProtocols: [opts.alpn ?? ALPN_CONTROL],
      // The chain is checked below against the pinned CA, not a public root store.
      rejectUnauthorized: false,
      // One context per identity for every control connection (it holds TLS 1.3 as the minimum).
      ...(credentials ? { secureContext: identitySecureContext(credentials) } : {}),
    });
    const timer = setTimeout(() => {
      socket.destroy();
      tcp?.destroy();
      reject(vertexError('Timeout', `${what}: no TLS handshake after ${timeoutMs} ms`));
    }, timeoutMs);
    // Control boxes and relayed handshake records are small: no Nagle delay.
    (tcp ?? socket).setNoDelay(true);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      // From here on errors belong to the owner (AMP, a relay leg), not to the connect.
      socket.off('error', onError);
      resolve(socket);
    });
    const onError = (err: NodeJS.ErrnoException): void => {
      clearTimeout(timer);
      socket.destroy();
      tcp?.destroy();
      reject(vertexError('ServerUnavailable', `${what}: ${err.code ?? err.message}`, err));
    };
    socket.once('error', onError);
  });
}

export function checkServerCa(domain: string, cert: X509Certificate | undefined): string {
  if (!cert) throw vertexError('CertificateInvalid', `${domain} server presented no certificate`);
  const pem = cert.toString();
  const info = describeCertificate(pem);
  if (info.isCa && info.subjectCn.toLowerCase() !== domain) {
    // SNI fell back to another domain's CA: this server simply does not serve the domain.
    throw vertexError('UnknownDomain', `the server for ${domain} does not serve it (it presents the CA of ${info.subjectCn}); check --resolve or the domain's SRV record`);
  }
  checkDomainCaCertificate(domain, pem);
  return pem;
}

export async function openServerConnection(opts: ServerConnectionOptions): Promise<ServerConnection> {
  const domain = opts.domain.toLowerCase();
  const log = opts.log ?? silentLogger;
  const timeoutMs = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const endpoints = await opts.resolve(domain);
  let lastError: VertexError = vertexError('ServerUnavailable', `no server address found for ${domain}`);
  for (const endpoint of endpoints) {
    let socket: tls.TLSSocket;
    try {
      socket = await connectTls(endpoint, domain, opts.credentials, timeoutMs);
    } catch (err) {
      lastError = asVertexError(err, 'ServerUnavailable');
      log.debug({ domain, endpoint, reason: lastError.message }, 'server endpoint failed');
      continue;
    }
    try {
      const caPem = checkServerCa(domain, socket.getPeerX509Certificate());
      opts.trust.pinDomainCa(domain, caPem);
      const peer = attachAmp(socket, { log, defaultTimeoutMs: timeoutMs });
      const hello = await peer.call(COMMANDS.hello, { version: PROTOCOL_VERSION });
      return new ServerConnection(domain, endpoint, socket, peer, caPem, hello.software ?? 'unknown');
    } catch (err) {
      socket.destroy();
      throw asVertexError(err, 'ServerUnavailable', `connect to ${domain} server`);
    }
  }
  throw notFoundHint(domain, endpoints, lastError);
}

/**
 * When the server was only guessed (no override, no SRV record) and the
 * guess failed, the error says what was tried and how to name the server.
 */
function notFoundHint(domain: string, endpoints: readonly ServerEndpoint[], err: VertexError): VertexError {
  if (endpoints.length !== 1 || endpoints[0]?.via !== 'default' || err.code !== 'ServerUnavailable') return err;
  const endpoint = endpoints[0];
  const cause = (err.cause as NodeJS.ErrnoException | undefined)?.code ?? err.message;
  return new VertexError(
    'ServerUnavailable',
    `cannot find the identity server for ${domain}: there is no SRV record _q2q._tcp.${domain}, and ${endpoint.host}:${endpoint.port} did not answer (${cause}); ` +
      `name the server with --resolve ${domain}=HOST:PORT (or domains: in agent.yaml)`,
    { cause: err },
  );
}
