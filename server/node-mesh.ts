/**
 * One node of several serving the same domains over one PostgreSQL store.
 *
 * - Identity: each node issues itself a node certificate from each domain CA
 *   (server/node-identity.ts), records its serial in the store, and listens
 *   for other nodes on its own port (`node.listen`), TLS 1.3 with mutual
 *   authentication: both sides must show a certificate of the domain CA
 *   marked as a node, whose serial is recorded and not revoked (`vertex
 *   server revoke SERIAL`; a revocation closes the connections that use it
 *   on every node). Agents never use this port; keep it reachable by the
 *   other nodes only (docs/deploy.md).
 * - Presence: which node holds which listening (address, device) is in the
 *   store (server/store/node-directory.ts), and each node keeps a copy in
 *   memory that the store's notifications keep current. The broker reads the
 *   copy when a device is not listening here, and a change to it updates the
 *   views of this node's devices of that address.
 * - Forwarding: an inbound for a device on another node goes there as
 *   `node-inbound` (AMP, ALPN q2q-node/1). That node asks its agent and
 *   answers with the token, candidates and the listener's certificate; the
 *   token pairs on the caller's node.
 * - Relay: a token pairs on the node that registered it (the caller's), and
 *   that node tells every other live node its token id (`node-relay-tokens`,
 *   batched, over the authenticated node session, so a node can only name
 *   itself as the holder). A relay leg may land on any node (a balancer or
 *   DNS round robin picks it); one whose token pairs on another node is
 *   carried there: this node opens a plain TCP connection to that node's
 *   port with the leg's own request, unchanged (q2q/transport/relay-leg.ts),
 *   and splices the two. Only a node that knows the token can open the
 *   request (it is sealed with it), so this node carries only legs whose
 *   token id a node told it of (or that it forwarded the inbound for), and
 *   refuses any other token id itself, after waiting a moment for an
 *   announcement still on its way (server/relay.ts, ROUTE_WAIT_MS): no store
 *   query, no other node asked. The node holding the token opens and checks
 *   the request itself, as it checks a leg from an agent (seal, signature,
 *   certificate, token proof), and answers {held: 1}; so nothing rests on
 *   which node carried it, and nothing is spliced before that answer. A
 *   carried leg is never carried on. The relayed bytes are the peers' own
 *   TLS, as on one node: no node adds a TLS layer of its own to them.
 */
import { X509Certificate } from 'node:crypto';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { INBOUND_FORWARD_TIMEOUT_MS, RELAY_PAIRING_TIMEOUT_MS } from '../q2q/control/protocol';
import { asVertexError, vertexError, type VertexError } from '../q2q/errors';
import type { AmpArgs, AmpPeer } from '../q2q/proto/amp-peer';
import { listenOn } from '../q2q/transport/listen';
import { attachAmp } from '../q2q/transport/amp-connection';
import { dialRelayLeg, refuseLeg, sortConnection, type LegHeader } from '../q2q/transport/relay-leg';
import type { Logger } from '../q2q/util/log';
import type { Broker, NodePresence } from './broker';
import type { DomainCa } from './ca-store';
import { normaliseSerial } from '../q2q/identity';
import { issueNodeCertificate, NODE_CERT_LIFETIME_MS, nodeNameOf, type NodeCredentials } from './node-identity';
import type { Relay } from './relay';
import { splice } from './splice';
import type { ServerMetrics } from './metrics';
import { NodeDirectory, type NodeInfo, type RemoteDevice } from './store/node-directory';

export const ALPN_NODE = 'q2q-node/1';
export const NODE_COMMANDS = {
  inbound: 'node-inbound', replaced: 'node-replaced', presence: 'node-presence', relayReady: 'node-relay-ready', relayTokens: 'node-relay-tokens',
} as const;
/** Token ids per node-relay-tokens box (33 bytes each in the box: well under an AMP value's 65,535). */
const MAX_TOKEN_IDS_PER_BOX = 1_000;
const TOKEN_ID_RE = /^[0-9a-f]{32}$/;
/** A node not reached with token ids is skipped this long before the next try. */
const TOKENS_RETRY_MS = 1_000;
/** How long a node-replaced or node-presence notice may take; nobody waits on it. */
const NOTICE_TIMEOUT_MS = 10_000;
/** A node-to-node TLS connection that takes longer than this failed. */
const NODE_CONNECT_TIMEOUT_MS = 5_000;
const MAX_NODE_BOX_BYTES = 256 * 1024;
/** A node's endpoint is read from the store at most this often (a connection failure forgets it at once). */
const NODE_INFO_TTL_MS = 10_000;

export interface NodeMeshOptions {
  name: string;
  listen: { host: string; port: number };
  /** host:port the other nodes dial; default the bound listen address. */
  advertise?: string;
  storeUrl: string;
  cas: ReadonlyMap<string, DomainCa>;
  broker: Broker;
  relay: Relay;
  log: Logger;
  metrics?: ServerMetrics;
  /** Tests only (server/test-faults.ts): `no-node-cert-check` skips the store check of node certificates. */
  skipCertificateCheck?: boolean;
}

function formatEndpoint(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

function parseEndpoint(text: string): { host: string; port: number } {
  const m = /^\[?([^\]]+)\]?:(\d+)$/.exec(text);
  if (!m) throw vertexError('Internal', `node endpoint "${text}" is not HOST:PORT`);
  return { host: m[1] as string, port: Number(m[2]) };
}

export class NodeMesh implements NodePresence {
  readonly #opts: NodeMeshOptions;
  readonly #log: Logger;
  readonly #creds = new Map<string, NodeCredentials>();
  readonly #contexts = new Map<string, tls.SecureContext>();
  readonly #peers = new Map<string, Promise<AmpPeer>>();
  readonly #sockets = new Set<net.Socket>();
  /** Node-to-node connections (both ways) by the serial of the other node's certificate: a revocation ends them. */
  readonly #bySerial = new Map<tls.TLSSocket, string>();
  /** Node endpoints by name, so that a forwarded inbound costs no store query. */
  readonly #nodeInfo = new Map<string, { info: NodeInfo; at: number }>();
  #directory: NodeDirectory | null = null;
  /** Token ids registered here not yet sent to the other nodes, by domain (sent together, once per turn of the event loop). */
  readonly #announcing = new Map<string, string[]>();
  /** Nodes that could not be reached with token ids, until when they are skipped (not one connect attempt per batch to a node that is down). */
  readonly #tokensDownUntil = new Map<string, number>();
  #server: net.Server | null = null;
  #renew: NodeJS.Timeout | null = null;
  #endpoint = '';

  constructor(opts: NodeMeshOptions) {
    this.#opts = opts;
    this.#log = opts.log;
  }

  get name(): string {
    return this.#opts.name;
  }

  /** host:port other nodes reach this one at. */
  get endpoint(): string {
    return this.#endpoint;
  }

  async start(): Promise<void> {
    const { host } = this.#opts.listen;
    if (!this.#opts.advertise && (host === '0.0.0.0' || host === '::')) {
      throw vertexError('Usage', `node ${this.#opts.name}: node.listen ${host} is every address; say which one the other nodes dial with node.advertise: HOST:PORT`);
    }
    await this.#issueCertificates();
    // Renewed well before they end (and recorded); connections made earlier keep theirs.
    this.#renew = setInterval(() => {
      this.#issueCertificates().catch((err: Error) => this.#log.error({ reason: err.message }, 'node certificates not renewed'));
    }, NODE_CERT_LIFETIME_MS / 3);
    this.#renew.unref();

    const first = this.#creds.values().next().value as NodeCredentials;
    const tlsServer = tls.createServer({
      key: first.keyPem, cert: first.certPem, ca: [(this.#opts.cas.get(first.domain) as DomainCa).certPem],
      minVersion: 'TLSv1.3',
      requestCert: true,
      rejectUnauthorized: true,
      allowHalfOpen: true,
      ALPNProtocols: [ALPN_NODE],
      SNICallback: (servername, cb) => {
        const context = this.#contexts.get(servername.toLowerCase());
        cb(context ? null : new Error(`not a domain of this node: ${servername}`), context);
      },
    });
    // Node sessions run TLS; relay legs carried here by other nodes are plain TCP, told apart by
    // their first byte (as on the agents' port).
    const server = net.createServer({ allowHalfOpen: true });
    server.on('connection', (socket: net.Socket) => {
      socket.setNoDelay(true);
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
      sortConnection(socket, NODE_CONNECT_TIMEOUT_MS, (s) => tlsServer.emit('connection', s), (leg) => {
        void this.#opts.relay.acceptLeg(leg, { forwardedBy: `${leg.remoteAddress}:${leg.remotePort}` });
      });
    });
    tlsServer.on('tlsClientError', (err, socket) => {
      this.#log.warn({ remote: socket.remoteAddress, reason: err.message }, 'node connection refused: tls');
      socket.destroy();
    });
    tlsServer.on('secureConnection', (socket) => this.#onNodeConnection(socket));
    server.on('error', (err) => this.#log.error({ err }, 'node listener error'));
    await listenOn(server, this.#opts.listen);
    this.#server = server;
    const bound = server.address() as net.AddressInfo;
    this.#endpoint = this.#opts.advertise ?? formatEndpoint(this.#opts.listen.host, bound.port);

    const broker = this.#opts.broker;
    this.#directory = await NodeDirectory.open({
      url: this.#opts.storeUrl, name: this.#opts.name, endpoint: this.#endpoint, log: this.#log.child({ component: 'node-directory' }),
      onPresenceChange: (address) => void broker.refreshPresence(address),
      onNodeCertificateRevoked: (serial) => this.#endConnections((s) => s === serial, 'its certificate was revoked'),
      onResync: () => void this.#recheckConnections(),
      ...(this.#opts.metrics && { onLookup: this.#opts.metrics.presenceLookup.bind(this.#opts.metrics) }),
    });
    try {
      for (const [domain, ca] of this.#opts.cas) await this.#directory.checkDomainCa(domain, ca.fingerprint);
      for (const creds of this.#creds.values()) await this.#record(creds);
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.#opts.broker.attachNodes(this);
    this.#opts.relay.attachMesh({
      forward: (leg, header, node, carried) => void this.#forwardLeg(leg, header, node, carried),
      announce: (tokenId, domain) => this.#announce(tokenId, domain),
    });
    this.#log.info({ node: this.#opts.name, listen: formatEndpoint(this.#opts.listen.host, bound.port), endpoint: this.#endpoint }, 'node-to-node listening (mutual tls)');
  }

  async #issueCertificates(): Promise<void> {
    for (const [domain, ca] of this.#opts.cas) {
      const creds = await issueNodeCertificate(ca, this.#opts.name);
      // Recorded before use (on a renewal; at start the store is opened after the first issue, and records them then).
      if (this.#directory) await this.#record(creds);
      this.#creds.set(domain, creds);
      this.#contexts.set(domain, tls.createSecureContext({ key: creds.keyPem, cert: creds.certPem, ca: [ca.certPem], minVersion: 'TLSv1.3' }));
    }
  }

  async #record(creds: NodeCredentials): Promise<void> {
    const cert = new X509Certificate(creds.certPem);
    const serial = normaliseSerial(cert.serialNumber);
    await this.#directory!.recordNodeCertificate({ serial, domain: creds.domain, notBefore: Date.parse(cert.validFrom), notAfter: creds.notAfter });
    this.#log.info({ domain: creds.domain, serial }, 'node certificate issued and recorded');
  }

  /**
   * Checks the other node's certificate against the store (recorded by that
   * node, not revoked); resolves to its serial, or throws. The chain and the
   * node mark were checked already.
   */
  async #checkPeerSerial(socket: tls.TLSSocket, domain: string, node: string): Promise<string> {
    const cert = socket.getPeerX509Certificate();
    if (!cert) throw vertexError('CertificateInvalid', `node ${node}: no certificate`);
    const serial = normaliseSerial(cert.serialNumber);
    if (!this.#directory) throw vertexError('StorageUnavailable', `node ${node}: this node is not ready`);
    if (!this.#opts.skipCertificateCheck && !await this.#directory.nodeCertificateGood(serial, domain, node)) {
      throw vertexError('CertificateRevoked', `node ${node}: its certificate ${serial} is revoked, or was not issued by a node of ${domain}`);
    }
    this.#bySerial.set(socket, serial);
    socket.once('close', () => this.#bySerial.delete(socket));
    return serial;
  }

  #endConnections(match: (serial: string) => boolean, why: string): void {
    for (const [socket, serial] of this.#bySerial) {
      if (!match(serial)) continue;
      this.#log.warn({ serial, remote: `${socket.remoteAddress}:${socket.remotePort}` }, `node connection closed: ${why}`);
      this.#bySerial.delete(socket);
      socket.destroy();
    }
  }

  /** After lost notifications: every node connection's certificate checked again. */
  async #recheckConnections(): Promise<void> {
    const bad = new Set<string>();
    for (const serial of new Set(this.#bySerial.values())) {
      try {
        const socket = [...this.#bySerial].find(([, s]) => s === serial)?.[0];
        const cert = socket?.getPeerX509Certificate();
        if (!socket || !cert) continue;
        const domain = (socket.servername || '').toLowerCase() || [...this.#creds.keys()][0] || '';
        if (!await this.#directory?.nodeCertificateGood(serial, domain, nodeNameOf(cert, domain))) bad.add(serial);
      } catch (err) {
        this.#log.debug({ serial, reason: (err as Error).message }, 'node certificate not checked again');
      }
    }
    if (bad.size > 0) this.#endConnections((s) => bad.has(s), 'its certificate was revoked');
  }

  // ---- the server side: other nodes' requests ----

  #onNodeConnection(socket: tls.TLSSocket): void {
    const domain = (socket.servername || '').toLowerCase();
    const log = this.#log.child({ remote: `${socket.remoteAddress}:${socket.remotePort}` });
    socket.on('error', (err) => log.debug({ reason: err.message }, 'node socket error'));
    let peerNode: string;
    try {
      const cert = socket.getPeerX509Certificate();
      if (!cert || !this.#contexts.has(domain)) throw vertexError('CertificateInvalid', 'no node certificate for a domain of this node');
      peerNode = nodeNameOf(cert, domain);
    } catch (err) {
      log.warn({ reason: (err as Error).message }, 'node connection refused');
      socket.destroy();
      return;
    }
    // Nothing is read until the certificate is found good: the socket stays paused.
    this.#checkPeerSerial(socket, domain, peerNode).then(
      () => this.#onCheckedNodeConnection(socket, domain, peerNode, log),
      (err: Error) => {
        log.warn({ node: peerNode, reason: err.message }, 'node connection refused');
        socket.destroy();
      },
    );
  }

  #onCheckedNodeConnection(socket: tls.TLSSocket, domain: string, peerNode: string, log: Logger): void {
    if (socket.destroyed) return;
    const peer = attachAmp(socket, { log, limits: { maxBoxBytes: MAX_NODE_BOX_BYTES } });
    const inDomain = (command: string, address: string): string => {
      if (address.slice(address.lastIndexOf('@') + 1).toLowerCase() !== domain) throw vertexError('NotAllowed', `${command}: ${address} is not in ${domain}`);
      return address;
    };
    peer.handle(NODE_COMMANDS.replaced, (args) => {
      this.#opts.broker.replacedElsewhere(inDomain(NODE_COMMANDS.replaced, args.address ?? ''), args.device ?? '', args.by ?? `server node ${peerNode}`);
      void this.#opts.broker.refreshPresence(args.address ?? '');
      return {};
    });
    // Sent by nodes of earlier versions; nodes now learn of presence changes from the store's notifications.
    peer.handle(NODE_COMMANDS.presence, (args) => {
      void this.#opts.broker.refreshPresence(inDomain(NODE_COMMANDS.presence, args.address ?? ''));
      return {};
    });
    peer.handle(NODE_COMMANDS.inbound, (args) => {
      const to = inDomain(NODE_COMMANDS.inbound, args.to ?? '');
      // The caller was authenticated by the node that asks (a node of this domain).
      return this.#opts.broker.inboundFromNode({ address: args.from ?? '', certPem: args.certificate ?? '' }, args, peerNode);
    });
    // The other node registered these tokens: a leg for one that lands here is carried there. It
    // can name only itself (peerNode, from its certificate) as where they pair.
    peer.handle(NODE_COMMANDS.relayTokens, (args) => {
      const ids = (args.token_ids ?? '').split(',');
      if (ids.length > MAX_TOKEN_IDS_PER_BOX || !ids.every((id) => TOKEN_ID_RE.test(id))) throw vertexError('BadRequest', `${NODE_COMMANDS.relayTokens}: malformed token ids`);
      for (const id of ids) this.#opts.relay.pairsOnId(id, peerNode);
      return {};
    });
    // The caller's relay leg is in at the node holding the token: tell the listener, which is here.
    peer.handle(NODE_COMMANDS.relayReady, (args) => {
      this.#opts.broker.relayReadyFromNode(inDomain(NODE_COMMANDS.relayReady, args.to ?? ''), args.device ?? '', args.token ?? '');
      return {};
    });
    log.debug({ node: peerNode, domain }, 'node session open');
  }

  // ---- the client side ----

  #connect(node: NodeInfo, domain: string, alpn: string): Promise<tls.TLSSocket> {
    const creds = this.#creds.get(domain);
    const ca = this.#opts.cas.get(domain);
    if (!creds || !ca) return Promise.reject(vertexError('UnknownDomain', `node: this node does not serve ${domain}`));
    const { host, port } = parseEndpoint(node.endpoint);
    return new Promise((resolve, reject) => {
      const tcp = net.connect({ host, port, allowHalfOpen: true });
      tcp.setNoDelay(true);
      const socket = tls.connect({
        socket: tcp, servername: domain, key: creds.keyPem, cert: creds.certPem, ca: [ca.certPem],
        minVersion: 'TLSv1.3', ALPNProtocols: [alpn], allowHalfOpen: true,
        // The chain is checked against the domain CA; the name is the node mark, not a host name.
        checkServerIdentity: (_host, cert) => {
          try {
            const name = nodeNameOf(new X509Certificate(cert.raw), domain);
            return name === node.name ? undefined : new Error(`expected node ${node.name}, found node ${name}`);
          } catch (err) {
            return err as Error;
          }
        },
      } as tls.ConnectionOptions);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(vertexError('Timeout', `node ${node.name} at ${node.endpoint}: no tls within ${NODE_CONNECT_TIMEOUT_MS} ms`));
      }, NODE_CONNECT_TIMEOUT_MS);
      socket.once('secureConnect', () => {
        clearTimeout(timer);
        // The other node's certificate must be recorded and unrevoked, as this node's is for it.
        this.#checkPeerSerial(socket, domain, node.name).then(() => {
          socket.off('error', onError);
          resolve(socket);
        }, (err: VertexError) => {
          socket.off('error', onError);
          socket.destroy();
          reject(err);
        });
      });
      const onError = (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(vertexError('ServerUnavailable', `node ${node.name} at ${node.endpoint}: ${err.code ?? err.message}`, err));
      };
      socket.once('error', onError);
    });
  }

  #peer(node: NodeInfo, domain: string): Promise<AmpPeer> {
    const key = `${node.name}/${node.endpoint}/${domain}`;
    const existing = this.#peers.get(key);
    if (existing) return existing;
    const pending = this.#connect(node, domain, ALPN_NODE).then((socket) => {
      const peer = attachAmp(socket, { log: this.#log.child({ node: node.name }), limits: { maxBoxBytes: MAX_NODE_BOX_BYTES } });
      socket.once('close', () => {
        if (this.#peers.get(key) === pending) this.#peers.delete(key);
      });
      return peer;
    });
    this.#peers.set(key, pending);
    pending.catch(() => {
      if (this.#peers.get(key) === pending) this.#peers.delete(key);
    });
    return pending;
  }

  // ---- NodePresence (the broker's view of the other nodes) ----

  put(address: string, device: string, services: readonly string[]): Promise<void> {
    return this.#directory ? this.#directory.put(address, device, services) : Promise.resolve();
  }

  remove(address: string, device: string): void {
    void this.#directory?.remove(address, device);
  }

  devicesElsewhere(address: string, opts?: { fresh?: boolean }): Promise<RemoteDevice[]> {
    return this.#directory ? this.#directory.devicesElsewhere(address, opts) : Promise.resolve([]);
  }

  async forwardInbound(node: string, domain: string, args: AmpArgs): Promise<AmpArgs> {
    try {
      const answer = await this.#forwardInbound(node, domain, args);
      this.#opts.metrics?.nodeForward('ok');
      return answer;
    } catch (err) {
      this.#opts.metrics?.nodeForward(asVertexError(err, 'Internal').code);
      throw err;
    }
  }

  async #forwardInbound(node: string, domain: string, args: AmpArgs): Promise<AmpArgs> {
    const to = args.to ?? '';
    const info = await this.#nodeNamed(node);
    if (!info) throw vertexError('Offline', `${to} is not online (its node ${node} is gone)`);
    let peer: AmpPeer;
    try {
      peer = await this.#peer(info, domain);
    } catch (err) {
      this.#nodeInfo.delete(node);
      this.#log.warn({ node, reason: (err as Error).message }, 'inbound: the node holding the listener does not answer');
      throw vertexError('Offline', `${to} is not reachable now: its server node ${node} does not answer`);
    }
    try {
      return await peer.call(NODE_COMMANDS.inbound, args, { timeoutMs: INBOUND_FORWARD_TIMEOUT_MS + 2_000 });
    } catch (err) {
      const e = asVertexError(err, 'Internal');
      if (e.code === 'ConnectionLost') throw vertexError('Offline', `${to} is not reachable now: its server node ${node} went away`);
      throw e;
    }
  }

  /** Passes relay-ready on to `node`, whose listener session answered the inbound (if this is lost, the listener's agent opens its leg anyway after RELAY_READY_SAFETY_MS, negotiate/listener.ts). */
  relayReady(node: string, args: { token: string; to: string; device: string }): void {
    void this.#notice(node, args.to, NODE_COMMANDS.relayReady, args);
  }

  async #nodeNamed(name: string): Promise<NodeInfo | null> {
    const cached = this.#nodeInfo.get(name);
    if (cached && Date.now() - cached.at < NODE_INFO_TTL_MS) return cached.info;
    const info = (await this.#directory?.node(name)) ?? null;
    if (info) this.#nodeInfo.set(name, { info, at: Date.now() });
    else this.#nodeInfo.delete(name);
    return info;
  }

  replaced(node: string, address: string, device: string, by: string): void {
    void this.#notice(node, address, NODE_COMMANDS.replaced, { address, device, by });
  }

  /** A notice to another node about one address; a node that does not answer is only logged (its agents reconnect elsewhere). */
  async #notice(node: string, address: string, command: string, args: AmpArgs): Promise<void> {
    try {
      const info = await this.#nodeNamed(node);
      if (!info) return;
      const peer = await this.#peer(info, address.slice(address.lastIndexOf('@') + 1));
      await peer.call(command, args, { timeoutMs: NOTICE_TIMEOUT_MS });
    } catch (err) {
      this.#log.debug({ node, command, reason: (err as Error).message }, 'notice to another node not delivered');
    }
  }

  /** Queues a token id registered here for the other nodes; the queue goes out once per turn of the event loop. */
  #announce(tokenId: string, domain: string): void {
    let queue = this.#announcing.get(domain);
    if (!queue) {
      queue = [];
      this.#announcing.set(domain, queue);
      setImmediate(() => {
        this.#announcing.delete(domain);
        void this.#sendTokenIds(domain, queue as string[]);
      });
    }
    queue.push(tokenId);
  }

  /**
   * Tells every other live node (as of the last heartbeat) that these token
   * ids pair here. Nobody waits for it: a node that does not hear of a token
   * refuses its legs (TokenInvalid), as before there were announcements.
   */
  async #sendTokenIds(domain: string, ids: string[]): Promise<void> {
    const now = Date.now();
    const nodes = (this.#directory?.aliveNodes() ?? []).filter((name) => (this.#tokensDownUntil.get(name) ?? 0) <= now);
    await Promise.all(nodes.map(async (name) => {
      try {
        const info = await this.#nodeNamed(name);
        if (!info) return;
        const peer = await this.#peer(info, domain);
        for (let i = 0; i < ids.length; i += MAX_TOKEN_IDS_PER_BOX) {
          peer.callNoAnswer(NODE_COMMANDS.relayTokens, { token_ids: ids.slice(i, i + MAX_TOKEN_IDS_PER_BOX).join(',') });
        }
        this.#opts.metrics?.nodeRelayTokens('sent', ids.length);
      } catch (err) {
        this.#tokensDownUntil.set(name, Date.now() + TOKENS_RETRY_MS);
        this.#opts.metrics?.nodeRelayTokens('failed', ids.length);
        this.#log.debug({ node: name, count: ids.length, reason: (err as Error).message }, 'relay token ids not sent to a node');
      }
    }));
  }

  /**
   * A relay leg whose token pairs on `known`: carried there, its request
   * unchanged (this node cannot open it: it does not know the token), and
   * spliced once that node has taken it.
   */
  async #forwardLeg(leg: net.Socket, header: LegHeader, known: string, carried: () => void): Promise<void> {
    // Who opened the leg is for the node holding the token to learn: here only the token id is known.
    const tokenId = header.tokenId;
    const refuse = (err: VertexError) => {
      this.#opts.metrics?.nodeRelayLeg(err.code);
      this.#log.info({ token_id: tokenId, code: err.code, reason: err.message }, 'relay leg refused');
      refuseLeg(leg, err);
    };
    let node: NodeInfo | null;
    try {
      // '' only under the test fault relay-carry-unknown: any other live node.
      node = await this.#nodeNamed(known !== '' ? known : (this.#directory?.aliveNodes()[0] ?? ''));
    } catch (err) {
      return refuse(vertexError('StorageUnavailable', `relay: cannot find the node holding the token: ${(err as Error).message}`));
    }
    if (!node || node.name === this.#opts.name) return refuse(vertexError('TokenInvalid', 'relay: unknown, expired or used token'));
    let socket: net.Socket;
    try {
      ({ socket } = await dialRelayLeg(parseEndpoint(node.endpoint), header.fields, {
        what: `relay via node ${node.name}`, timeoutMs: RELAY_PAIRING_TIMEOUT_MS, acceptHeld: true,
      }));
    } catch (err) {
      // The holding node's refusal (a bad seal, a revoked certificate, ...) is the leg's answer.
      return refuse(asVertexError(err, 'TokenInvalid'));
    }
    if (leg.destroyed) {
      socket.destroy();
      return;
    }
    carried();
    this.#opts.metrics?.nodeRelayLeg('ok');
    this.#log.info({ token_id: tokenId, node: node.name }, 'relay leg carried to the node holding its token');
    splice(leg, socket);
  }

  async stop(): Promise<void> {
    if (this.#renew) clearInterval(this.#renew);
    this.#renew = null;
    const server = this.#server;
    this.#server = null;
    if (server) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of this.#sockets) s.destroy();
      await closed;
    }
    for (const p of this.#peers.values()) void p.then((peer) => peer.close(), () => undefined);
    this.#peers.clear();
    await this.#directory?.close();
    this.#directory = null;
  }
}
