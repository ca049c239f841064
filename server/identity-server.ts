/**
 * The identity server for one or more domains: TLS 1.3 from the first byte
 * on TCP (the certificate is the domain's CA, chosen by SNI), AMP control
 * sessions on top, and who-am-i on UDP at the same port number.
 */
import { listenOn } from '../q2q/transport/listen';
import { constants as cryptoConstants } from 'node:crypto';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { asVertexError, vertexError, type VertexError } from '../q2q/errors';
import { ALPN_CONTROL, COMMANDS } from '../q2q/control/protocol';
import { attachAmp } from '../q2q/transport/amp-connection';
import { sortConnection } from '../q2q/transport/relay-leg';
import { createServerResolver, type ServerResolver } from '../q2q/control/discovery';
import { describeCertificate } from '../q2q/identity';
import type { Logger } from '../q2q/util/log';
import { silentLogger } from '../q2q/util/log';
import { encodeWhoAmIAnswer, isWhoAmIRequest, requestNonce } from '../q2q/wire/who-am-i';
import { AccountService, type RegistrationMode } from './account-service';
import { Admission, type Admitted, type AdmissionLimits } from './admission';
import { windowedBudgets, type LoginLimits } from './rate-limiter';
import { loadOrCreateCa, type DomainCa } from './ca-store';
import { ControlSession, type SessionContext } from './control-session';
import { Broker } from './broker';
import { Federation, type FederationOptions } from './federation';
import { Relay } from './relay';
import { instrumentStore, ServerMetrics } from './metrics';
import { MetricsHttpServer } from '../q2q/util/metrics-http';
import type { AccountStore } from './store/account-store';
import { DATABASE_FILE, openAccountStore } from './store/open-store';
import { isPostgresUrl } from './store/postgres-store';
import { NodeMesh } from './node-mesh';
import { ChangeFeedFollower } from './store/change-feed';
import type { AccountEvent } from './store/account-store';
import type { AmpArgs } from '../q2q/proto/amp-peer';
import { CERT_STATUS_RATE, CertStatusCache, DEFAULT_CERT_STATUS_TTL_MS, parseCertStatusRequest, PerSourceLimit } from './cert-status';
import { testFaults, type TestFault } from './test-faults';

export interface IdentityServerOptions {
  domains: string[];
  listen: { host: string; port: number };
  dataDir: string;
  registration: RegistrationMode;
  certificateLifetimeMs: number;
  limits: {
    maxConnections: number; handshakeTimeoutMs: number; maxBoxBytes: number;
    /** Connections without a valid client certificate (server/admission.ts); defaults there. */
    unauthenticated?: Partial<AdmissionLimits>;
    /** Password and registration budgets (server/rate-limiter.ts); defaults there. */
    login?: Partial<LoginLimits>;
  };
  relay: { enabled: boolean; maxStreams: number; perUserRate: number };
  /** `sqlite` (dataDir/vertex.db, the default) or a postgres:// URL. */
  store?: string;
  /** Serve Prometheus metrics and /health on this address (off when absent). */
  metrics?: { host: string; port: number };
  /** This node's name in metrics; default the host name. */
  nodeName?: string;
  /** One node of several on a PostgreSQL store (server/node-mesh.ts): its name and node-to-node listener. */
  node?: { name: string; listen: { host: string; port: number }; advertise?: string };
  /** Finds other domains' servers, to fetch their CAs (federation). Default: DNS. */
  resolve?: ServerResolver;
  /** server.yaml federation: which domains' users are admitted (absent: any valid domain). */
  federation?: {
    allow?: readonly string[];
    /** How long a foreign server's "good" cert-status answer is trusted (server.yaml federation.cert_status_cache; default 30 s). */
    certStatusCacheMs?: number;
    unsafeForTests?: FederationOptions['unsafeForTests'];
  };
  /** How often the change feed is read besides its wake-ups (default 1 s): the bound on closing live sessions. */
  changeFeedPollMs?: number;
  /** Test faults (server/test-faults.ts); default from VERTEX_TEST_FAULT when NODE_ENV=test. */
  faults?: ReadonlySet<TestFault>;
  log?: Logger;
}

export { DATABASE_FILE };
/** A refused client gets this long to read why before the connection is cut. */
const REFUSAL_LINGER_MS = 2_000;
const REFUSAL_MAX_BOX_BYTES = 16 * 1024;
/** How often unauthenticated connections are checked for idling (their timeouts are whole seconds). */
const SWEEP_INTERVAL_MS = 1_000;
/**
 * Connections the kernel queues for accept (capped by net.core.somaxconn).
 * Node's default, 511, overflowed when thousands connected at once (a flood's
 * first burst): the kernel then drops the handshake's last ACK, and everyone
 * queued behind it, a legitimate agent too, waits for a retransmission (1 s,
 * then 3 s...). Accepting is cheap; a refused connection is closed at once.
 */
const LISTEN_BACKLOG = 4096;
/**
 * No TLS 1.3 session tickets. Nothing resumes a control session (agents and
 * the CLI make a full handshake, client certificate and all, every time), yet
 * by default OpenSSL seals a copy of the session, the client's certificate
 * included, into each of two tickets per connection, and the process kept
 * about 13 KB more per open connection for it (bench/README.md, multi-node
 * idle agents). With this option the tickets still sent only name a session
 * that nothing keeps, so no connection can skip the full handshake either.
 */
const NO_SESSION_TICKETS = cryptoConstants.SSL_OP_NO_TICKET;
/** With port 0, how many OS-chosen ports to try before giving up on a free TCP+UDP pair. */
const PORT_PAIR_ATTEMPTS = 10;

function plainAddress(address: string | undefined): string {
  // Loopback and dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d.
  return (address ?? '').replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, '$1');
}

export class IdentityServer {
  readonly #opts: IdentityServerOptions;
  readonly #log: Logger;
  #store: AccountStore | null = null;
  #accounts: AccountService | null = null;
  #broker: Broker | null = null;
  #relay: Relay | null = null;
  #federation: Federation | null = null;
  /** The listening TCP server; admitted connections go on to a TLS server. */
  #tcp: net.Server | null = null;
  #udp: dgram.Socket | null = null;
  readonly #sockets = new Set<net.Socket>();
  readonly #sessions = new Set<ControlSession>();
  #metrics: ServerMetrics | null = null;
  #mesh: NodeMesh | null = null;
  #metricsHttp: MetricsHttpServer | null = null;
  #metricsAddress: { host: string; port: number } | null = null;
  readonly #admission: Admission;
  /** Unauthenticated connections by remote address:port, from TCP accept until they authenticate or close. */
  readonly #admitted = new Map<string, { entry: Admitted; busy: () => boolean }>();
  #sweep: NodeJS.Timeout | null = null;
  #follower: ChangeFeedFollower | null = null;
  #certStatus: CertStatusCache | null = null;
  readonly #certStatusLimit = new PerSourceLimit(CERT_STATUS_RATE);
  #foreignSweep: NodeJS.Timeout | null = null;
  #sweeping = false;
  readonly #faults: ReadonlySet<TestFault>;

  constructor(opts: IdentityServerOptions) {
    this.#opts = opts;
    this.#log = opts.log ?? silentLogger;
    this.#faults = opts.faults ?? testFaults();
    this.#admission = new Admission(opts.limits.unauthenticated ?? {}, Date.now, {
      priority: !this.#faults.has('no-admission-priority'),
      onRefuse: (reason) => this.#metrics?.unauthenticatedRefused(reason),
    });
    if (this.#faults.size > 0) this.#log.warn({ faults: [...this.#faults] }, 'TEST FAULTS ACTIVE: security checks are switched off');
  }

  /** Connections without a valid client certificate, and how many were refused, evicted or timed out. */
  get unauthenticated(): Admission['stats'] {
    return this.#admission.stats;
  }

  get accounts(): AccountService {
    if (!this.#accounts) throw new Error('identity server not started');
    return this.#accounts;
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }

  async start(): Promise<{ host: string; port: number; createdCas: string[] }> {
    const { dataDir, domains } = this.#opts;
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    this.#tightenDataDir(dataDir);
    const cas = new Map<string, DomainCa>();
    const createdCas: string[] = [];
    for (const domain of domains) {
      const { ca, created } = await loadOrCreateCa(dataDir, domain);
      cas.set(domain, ca);
      if (created) {
        createdCas.push(domain);
        this.#log.info({ domain, fingerprint: ca.fingerprint }, 'created domain CA');
      }
    }
    this.#store = await openAccountStore({ store: this.#opts.store ?? 'sqlite', dataDir, log: this.#log.child({ component: 'store' }) });
    if (this.#opts.metrics) {
      this.#metrics = new ServerMetrics(this.#opts.nodeName ? { node: this.#opts.nodeName } : {});
      this.#store = instrumentStore(this.#store, this.#metrics);
    }
    this.#accounts = new AccountService({
      store: this.#store, cas, registration: this.#opts.registration,
      certificateLifetimeMs: this.#opts.certificateLifetimeMs, log: this.#log.child({ component: 'accounts' }),
      ...(this.#faults.has('windowed-password-budgets') ? { loginLimits: windowedBudgets(this.#opts.limits.login) }
        : this.#opts.limits.login ? { loginLimits: this.#opts.limits.login } : {}),
    });

    this.#relay = new Relay({
      ...this.#opts.relay, log: this.#log.child({ component: 'relay' }), ...(this.#metrics ? { metrics: this.#metrics } : {}),
      // A relay leg's certificate is checked as a control session's is, when it opens and again once registered.
      authenticate: async (certPem) => ({ ...(await this.#authenticate(certPem)), certPem }),
      noLegProof: this.#faults.has('relay-no-leg-proof'),
      carryUnknown: this.#faults.has('relay-carry-unknown'),
      recheck: (owner, close) => this.#recheckOnceOpen({
        remoteAddress: '', remotePort: 0, authenticatedAs: owner.address, certPem: owner.certPem, local: owner.local, serial: owner.serial,
      }, close),
    });
    this.#broker = new Broker({ domains, relay: this.#relay, log: this.#log.child({ component: 'broker' }) });
    const federation = this.#opts.federation;
    this.#federation = new Federation({
      dataDir, resolve: this.#opts.resolve ?? createServerResolver(), log: this.#log.child({ component: 'federation' }), localDomains: domains,
      ...(federation?.allow && { allow: federation.allow }),
      ...(federation?.unsafeForTests && { unsafeForTests: federation.unsafeForTests }),
    });
    const fed = this.#federation;
    this.#certStatus = new CertStatusCache({
      ask: (domain, serials) => fed.askCertStatus(domain, serials),
      ttlMs: federation?.certStatusCacheMs ?? DEFAULT_CERT_STATUS_TTL_MS,
    });
    if (!this.#faults.has('no-change-feed')) {
      // Revocations and removals, also those made by `vertex server revoke|remove-user`
      // in another process or on another node, reach the sessions open here.
      this.#follower = new ChangeFeedFollower({
        store: this.#store, onEvent: (event) => this.#onAccountEvent(event), log: this.#log.child({ component: 'feed' }),
        ...(this.#opts.changeFeedPollMs !== undefined && { pollMs: this.#opts.changeFeedPollMs }),
      });
      await this.#follower.start();
    }
    // Foreign sessions are re-checked with their issuers, so a revocation there closes them here too.
    const sweepMs = Math.max(1_000, Math.min(15_000, Math.floor(this.#certStatus.ttlMs / 2)));
    this.#foreignSweep = setInterval(() => void this.#sweepForeign(), sweepMs);
    this.#foreignSweep.unref();

    const contexts = new Map<string, tls.SecureContext>();
    for (const [domain, ca] of cas) contexts.set(domain, tls.createSecureContext({ key: ca.keyPem, cert: ca.certPem, minVersion: 'TLSv1.3', secureOptions: NO_SESSION_TICKETS }));
    const first = cas.values().next().value as DomainCa;
    const tlsServer = tls.createServer({
      key: first.keyPem,
      cert: first.certPem,
      minVersion: 'TLSv1.3',
      secureOptions: NO_SESSION_TICKETS,
      // As before relay legs left TLS: a control session's end is its own to answer.
      allowHalfOpen: true,
      // Clients without a certificate may still register or log in; which
      // commands need one is decided per command.
      requestCert: true,
      rejectUnauthorized: false,
      handshakeTimeout: this.#opts.limits.handshakeTimeoutMs,
      // A callback, not ALPNProtocols, and the same answer (the control protocol, or a fatal
      // no_application_protocol alert): with ALPNProtocols every TLSSocket copies the list into
      // a small Buffer of its own, cut from Buffer's shared 8 KB pool, and a long-lived control
      // session's few bytes kept a whole pool slab alive, ~6 KB per idle session (bench/README.md).
      ALPNCallback: ({ protocols }) => (protocols.includes(ALPN_CONTROL) ? ALPN_CONTROL : undefined),
      SNICallback: (servername, cb) => cb(null, contexts.get(servername.toLowerCase()) ?? contexts.get(first.domain)),
    });
    // Connections are accepted by a plain TCP server and handed to the TLS
    // server only once admitted: a refused one costs an accept and a close,
    // no TLS socket, no handshake (server/admission.ts). Relay legs are plain
    // TCP (q2q/transport/relay-leg.ts) on the same port: the first byte tells
    // them from TLS. They carry the peers' half-closes: one direction ending
    // must not end the other.
    const front = net.createServer({ allowHalfOpen: true });
    front.maxConnections = this.#opts.limits.maxConnections;
    front.on('connection', (socket: net.Socket) => {
      // Every connection starts unauthenticated: bounded per address and in total before any TLS work.
      const remote = plainAddress(socket.remoteAddress);
      const key = `${remote}:${socket.remotePort}`;
      const pressured = this.#admission.underPressure;
      const entry = this.#admission.admit(remote, (reason) => {
        this.#log.debug({ remote: key, reason }, 'unauthenticated connection closed');
        socket.destroy();
      }, () => this.#admitted.get(key)?.busy() ?? false);
      if (!pressured && this.#admission.underPressure) {
        this.#log.warn({ open: this.#admission.size, stats: this.#admission.stats },
          'unauthenticated connections at their limit: until it eases, addresses not seen authenticating get one connection each per interval');
      }
      if (!entry) {
        this.#log.debug({ remote: key, open: this.#admission.countFor(remote) }, 'unauthenticated connection refused at accept');
        socket.on('error', () => undefined);
        socket.destroy();
        return;
      }
      // Control answers and relayed handshake records are small: no Nagle delay.
      socket.setNoDelay(true);
      this.#admitted.set(key, { entry, busy: () => false });
      this.#sockets.add(socket);
      socket.once('close', () => {
        this.#sockets.delete(socket);
        this.#admission.release(entry);
        this.#admitted.delete(key);
      });
      sortConnection(socket, this.#opts.limits.handshakeTimeoutMs, (tlsSocket) => tlsServer.emit('connection', tlsSocket), (leg) => {
        // No TLS handshake here: the leg's request is opened with the token and checked by a signature and a MAC.
        this.#admission.secured(entry);
        // Authenticated: no longer bounded as unauthenticated (other limits apply).
        const authenticated = (): void => {
          if (!this.#admitted.has(key)) return;
          this.#admission.release(entry);
          this.#admitted.delete(key);
        };
        void this.#relay!.acceptLeg(leg, {
          onAuthenticated: (owner) => {
            // Only our own domains' certificates vouch for an address: anyone can run a foreign domain.
            if (owner.local) this.#admission.prove(remote);
            authenticated();
          },
          // Carried to the node holding its token, which checked it: vouches for no address here.
          onCarried: authenticated,
        });
      });
    });
    front.on('error', (err) => this.#log.error({ err }, 'tcp listener error'));
    this.#sweep = setInterval(() => this.#admission.sweep(), SWEEP_INTERVAL_MS);
    this.#sweep.unref();
    tlsServer.on('tlsClientError', (err, socket) => {
      // A connection closed by the admission limits (evicted, timed out) fails its handshake too: expected, not news.
      if (!this.#admitted.has(`${plainAddress(socket.remoteAddress)}:${socket.remotePort}`) && !socket.remoteAddress) return;
      this.#log.info({ remote: plainAddress(socket.remoteAddress), reason: err.message }, 'tls handshake failed; connection closed');
      socket.destroy();
    });
    tlsServer.on('secureConnection', (socket) => void this.#onSecureConnection(socket));
    tlsServer.on('error', (err) => this.#log.error({ err }, 'tls server error'));
    this.#tcp = front;

    const { host, port } = this.#opts.listen;
    // TCP and UDP share one port number. With port 0 the OS picks the TCP port,
    // and that number may already be taken for UDP: then try another pair.
    let bound: net.AddressInfo;
    for (let attempt = 1; ; attempt++) {
      await listenOn(front, { port, host, backlog: LISTEN_BACKLOG });
      bound = front.address() as net.AddressInfo;
      try {
        await this.#startUdp(host, bound.port);
        break;
      } catch (err) {
        if (port !== 0 || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= PORT_PAIR_ATTEMPTS) {
          await new Promise<void>((resolve) => front.close(() => resolve()));
          throw err;
        }
        await new Promise<void>((resolve) => front.close(() => resolve()));
      }
    }
    this.#log.info({ host, port: bound.port, domains }, 'identity server listening (tcp and udp)');
    if (this.#opts.node) await this.#startNode(this.#opts.node, cas);
    if (this.#metrics && this.#opts.metrics) await this.#startMetrics(this.#metrics, this.#opts.metrics);
    return { host, port: bound.port, createdCas };
  }

  async #startNode(node: NonNullable<IdentityServerOptions['node']>, cas: ReadonlyMap<string, DomainCa>): Promise<void> {
    const store = this.#opts.store ?? 'sqlite';
    if (!isPostgresUrl(store)) {
      throw vertexError('Usage', `node ${node.name}: several nodes share a postgres:// store; this server's store is ${store}`);
    }
    this.#mesh = new NodeMesh({
      name: node.name, listen: node.listen, ...(node.advertise && { advertise: node.advertise }), storeUrl: store, cas,
      broker: this.#broker!, relay: this.#relay!, log: this.#log.child({ component: 'node' }),
      ...(this.#metrics && { metrics: this.#metrics }),
      ...(this.#faults.has('no-node-cert-check') && { skipCertificateCheck: true }),
    });
    await this.#mesh.start();
  }

  /**
   * The data directory holds CA keys and password hashes: owner only, also
   * when it was made by an older version or by hand (issue 11). A directory
   * this user does not own is left as it is, with a warning.
   */
  #tightenDataDir(dataDir: string): void {
    const mode = fs.statSync(dataDir).mode & 0o777;
    if (mode === 0o700) return;
    try {
      fs.chmodSync(dataDir, 0o700);
      this.#log.info({ dataDir, was: mode.toString(8) }, 'data directory tightened to 0700');
    } catch (err) {
      this.#log.warn({ dataDir, mode: mode.toString(8), reason: (err as Error).message }, 'cannot make the data directory owner-only');
    }
  }

  async #startMetrics(metrics: ServerMetrics, listen: { host: string; port: number }): Promise<void> {
    const store = this.#store!;
    metrics.attach(
      {
        sessions: () => this.#sessions.size, onlineAgents: () => this.#broker?.onlineCount ?? 0, relayActive: () => this.#relay?.activeStreams ?? 0,
        unauthenticated: () => this.#admission.stats,
      },
      () => (this.#tcp ? store.ping() : Promise.reject(new Error('stopping'))),
    );
    this.#metricsHttp = new MetricsHttpServer(metrics, { log: this.#log.child({ component: 'metrics' }) });
    const bound = await this.#metricsHttp.listen(listen.host, listen.port);
    this.#metricsAddress = { host: listen.host, port: bound.port };
    this.#log.info({ host: listen.host, port: bound.port }, 'metrics on /metrics, health on /health');
  }

  /** Where /metrics is served, once started with `metrics`. */
  get metricsAddress(): { host: string; port: number } | null {
    return this.#metricsAddress;
  }

  async #startUdp(host: string, port: number): Promise<void> {
    const type = net.isIPv6(host) ? 'udp6' : 'udp4';
    const udp = dgram.createSocket({ type, reuseAddr: false });
    udp.on('message', (msg, rinfo) => {
      if (!isWhoAmIRequest(msg)) return;
      const answer = encodeWhoAmIAnswer(requestNonce(msg), plainAddress(rinfo.address), rinfo.port);
      udp.send(answer, rinfo.port, rinfo.address);
    });
    udp.on('error', (err) => this.#log.warn({ err: err.message }, 'udp socket error'));
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(port, host, () => { udp.off('error', reject); resolve(); });
    });
    this.#udp = udp;
  }

  /** Checks a presented client certificate: our own users locally, other domains' through federation. */
  async #authenticate(certPem: string): Promise<{ address: string; local: boolean; serial: string }> {
    const info = describeCertificate(certPem);
    const issuer = info.issuerCn.toLowerCase();
    if (this.accounts.domains.includes(issuer)) return { address: await this.accounts.authenticateCertificate(certPem), local: true, serial: info.serial };
    // The issuer and address are unverified input here: Federation checks them before any use.
    const address = (info.q2qAddress ?? '').toLowerCase();
    const verified = await this.#federation!.authenticate(certPem, info.issuerCn, address);
    // Signed by the pinned CA; now whether its issuer still stands by it (cert-status).
    await this.#checkForeign(verified, info.serial);
    return { address: verified, local: false, serial: info.serial };
  }

  /** A foreign certificate's status from its issuer (cached): revoked, or unknown past the cache, is refused. */
  async #checkForeign(address: string, serial: string): Promise<void> {
    if (this.#faults.has('no-cert-status')) return;
    const domain = address.slice(address.lastIndexOf('@') + 1);
    let revoked: Set<string>;
    try {
      revoked = await this.#certStatus!.revoked(domain, [serial]);
    } catch (err) {
      this.#log.warn({ domain, address, reason: (err as Error).message, cause: ((err as Error).cause as Error | undefined)?.message }, 'foreign certificate status unknown; refused');
      // One generic line: what went wrong with the other server is for our log only.
      throw vertexError('ServerUnavailable', `cannot check certificate status with ${domain}'s server; try again later`);
    }
    if (revoked.has(serial)) throw vertexError('CertificateRevoked', `certificate ${serial} for ${address} is revoked by ${domain}`);
  }

  /** A request acting as the session's identity: its certificate must still be good now. */
  async #reauthorize(context: SessionContext): Promise<void> {
    if (!context.certPem || !context.authenticatedAs) return;
    if (context.local) await this.accounts.authenticateCertificate(context.certPem);
    else await this.#checkForeign(context.authenticatedAs, context.serial ?? '');
  }

  /**
   * A revocation committed while this connection was being authenticated
   * (after the check read the store, before the connection was listed where
   * the change feed looks) would miss it: one more check once it is listed
   * closes that gap. Either that check sees the revocation, or the feed
   * event comes later and finds the connection listed.
   */
  #recheckOnceOpen(context: SessionContext, close: () => void): void {
    if (this.#faults.has('no-change-feed')) return;
    this.#reauthorize(context).catch((err: unknown) => {
      this.#log.info({ identity: context.authenticatedAs, serial: context.serial, reason: (err as Error).message }, 'connection closed: its certificate was voided while it opened');
      close();
    });
  }

  /** One change-feed event: close what it voids, and tell every listening agent. */
  #onAccountEvent(event: AccountEvent): void {
    const address = `${event.user}@${event.domain}`;
    const notice = event.kind === 'certificate-revoked'
      ? { serials: [event.serial], addresses: [] as string[] }
      : { serials: [] as string[], addresses: [address] };
    this.#log.info({ kind: event.kind, address, ...(event.kind === 'certificate-revoked' && { serial: event.serial }) }, 'change feed: closing what it voids');
    this.#revokeLive(notice.serials, notice.addresses);
  }

  /**
   * Closes the control sessions and relay legs of these certificates or
   * addresses, and pushes `revoked` to every listening agent, so that peer
   * streams with them (direct, punched or relayed) close at both ends.
   */
  #revokeLive(serials: readonly string[], addresses: readonly string[]): void {
    const serialSet = new Set(serials);
    const addressSet = new Set(addresses);
    const args: AmpArgs = { serials: JSON.stringify(serials), addresses: JSON.stringify(addresses) };
    let closed = 0;
    for (const session of this.#sessions) {
      const c = session.context;
      if ((c.serial && serialSet.has(c.serial)) || (c.authenticatedAs && addressSet.has(c.authenticatedAs))) {
        session.close(c.serial && serialSet.has(c.serial) ? `certificate ${c.serial} revoked` : `account ${c.authenticatedAs} removed`, args);
        closed += 1;
      }
    }
    const legs = this.#relay?.closeLegs(serialSet, addressSet) ?? 0;
    let told = 0;
    for (const peer of this.#broker?.listeningPeers() ?? []) {
      if (peer.closed) continue;
      try {
        peer.callNoAnswer(COMMANDS.revoked, args);
        told += 1;
      } catch (err) {
        // One agent's broken session must not keep the notice from the others.
        this.#log.debug({ reason: (err as Error).message }, 'revoked notice not sent');
      }
    }
    this.#log.info({ serials, addresses, sessions: closed, relayLegs: legs, agentsTold: told }, 'revocation applied to live sessions');
  }

  /** Re-checks foreign sessions with their issuers; closes those now revoked (an unreachable issuer closes nothing). */
  async #sweepForeign(): Promise<void> {
    if (this.#faults.has('no-cert-status') || !this.#certStatus || this.#sweeping) return;
    // One sweep at a time: an issuer that does not answer holds one for up to 10 s.
    this.#sweeping = true;
    try {
      await this.#sweepForeignOnce(this.#certStatus);
    } finally {
      this.#sweeping = false;
    }
  }

  async #sweepForeignOnce(cache: CertStatusCache): Promise<void> {
    const byDomain = new Map<string, Set<string>>();
    const add = (address: string, serial: string) => {
      const domain = address.slice(address.lastIndexOf('@') + 1);
      if (!serial || this.accounts.domains.includes(domain)) return;
      byDomain.set(domain, (byDomain.get(domain) ?? new Set()).add(serial));
    };
    for (const session of this.#sessions) {
      const c = session.context;
      if (!c.local && c.authenticatedAs && c.serial) add(c.authenticatedAs, c.serial);
    }
    for (const leg of this.#relay?.legOwners() ?? []) add(leg.user, leg.serial);
    for (const [domain, serials] of byDomain) {
      let revoked: Set<string>;
      try {
        revoked = await cache.revoked(domain, [...serials]);
      } catch (err) {
        this.#log.debug({ domain, reason: (err as Error).message }, 'foreign sessions not re-checked: issuer unavailable');
        continue;
      }
      if (revoked.size > 0) this.#revokeLive([...revoked], []);
    }
  }

  /**
   * cert-status: this server's own domains from the store, for anyone
   * (rate-limited per source address; a store read per serial). Other
   * domains only for our own agents, and only domains we already federate
   * with, from their issuers through the cache; an issuer that cannot be
   * asked leaves its serials out (no news: see docs/security.md).
   */
  async #answerCertStatus(args: AmpArgs, context: SessionContext): Promise<AmpArgs> {
    // Per address for strangers and other servers; per user for our own agents, which may be
    // many behind one NAT address, each asking every 20 s.
    const bucket = context.local && context.authenticatedAs ? `user:${context.authenticatedAs}` : context.remoteAddress;
    if (!this.#certStatusLimit.take(bucket)) {
      throw vertexError('RateLimited', 'cert-status: too many questions from this address; ask again in a second');
    }
    const entries = parseCertStatusRequest(args.certificates);
    const own = entries.filter((e) => this.accounts.domains.includes(e.domain));
    const revoked = new Set(await this.accounts.revokedAmong(own));
    if (context.local && context.authenticatedAs && !this.#faults.has('no-cert-status')) {
      const foreign = new Map<string, string[]>();
      for (const e of entries) {
        if (this.accounts.domains.includes(e.domain) || !this.#federation!.federates(e.domain)) continue;
        foreign.set(e.domain, [...(foreign.get(e.domain) ?? []), e.serial]);
      }
      for (const [domain, serials] of foreign) {
        try {
          for (const s of await this.#certStatus!.revoked(domain, serials)) revoked.add(s);
        } catch (err) {
          this.#log.debug({ domain, reason: (err as Error).message }, 'cert-status for an agent: issuer unavailable');
        }
      }
    }
    return { revoked: JSON.stringify([...revoked]) };
  }

  async #onSecureConnection(socket: tls.TLSSocket): Promise<void> {
    const remoteAddress = plainAddress(socket.remoteAddress);
    const log = this.#log.child({ component: 'control', remote: `${remoteAddress}:${socket.remotePort}` });
    socket.on('error', (err) => log.debug({ reason: err.message }, 'control socket error'));
    // Hold incoming bytes while a foreign CA may be fetched.
    socket.pause();
    const handshaken = this.#admitted.get(`${remoteAddress}:${socket.remotePort}`);
    if (handshaken) this.#admission.secured(handshaken.entry);
    let authenticatedAs: string | null = null;
    let local = false;
    let serial: string | null = null;
    const presented = socket.getPeerX509Certificate();
    const certPem = presented ? presented.toString() : null;
    if (certPem) {
      try {
        ({ address: authenticatedAs, local, serial } = await this.#authenticate(certPem));
      } catch (err) {
        const e = asVertexError(err, 'CertificateInvalid');
        log.warn({ code: e.code, reason: e.message }, 'client certificate refused; connection closed');
        this.#refuse(socket, e);
        return;
      }
    }
    if (socket.destroyed) return;
    const admitted = this.#admitted.get(`${remoteAddress}:${socket.remotePort}`);
    // Only our own domains' certificates vouch for an address: anyone can run a foreign domain.
    if (authenticatedAs && local) this.#admission.prove(remoteAddress);
    if (admitted && authenticatedAs) {
      // Authenticated: no longer bounded as unauthenticated (other limits apply).
      this.#admission.release(admitted.entry);
      this.#admitted.delete(`${remoteAddress}:${socket.remotePort}`);
    }
    const session = new ControlSession({
      ...(this.#metrics ? { metrics: this.#metrics } : {}),
      socket,
      context: { remoteAddress, remotePort: socket.remotePort ?? 0, authenticatedAs, certPem, local, serial },
      ...(!this.#faults.has('no-request-check') && { authorize: (context: SessionContext) => this.#reauthorize(context) }),
      certStatus: (args: AmpArgs, context: SessionContext) => this.#answerCertStatus(args, context),
      accounts: this.accounts,
      broker: this.#broker!,
      log,
      maxBoxBytes: this.#opts.limits.maxBoxBytes,
      helloTimeoutMs: this.#opts.limits.handshakeTimeoutMs,
      onProven: () => this.#admission.prove(remoteAddress),
    });
    if (admitted && !authenticatedAs) {
      admitted.busy = () => session.busy;
      socket.on('data', () => this.#admission.touch(admitted.entry));
    }
    socket.resume();
    this.#sessions.add(session);
    socket.once('close', () => this.#sessions.delete(session));
    if (authenticatedAs) this.#recheckOnceOpen(session.context, () => session.close('certificate revoked or account removed while it was opening', { serials: JSON.stringify(serial ? [serial] : []), addresses: '[]' }));
    log.debug({ identity: authenticatedAs }, 'control session open');
  }

  /**
   * Tells a client whose certificate was refused why, as the answer to its
   * first command (hello), then closes; anything else it sends is ignored.
   */
  #refuse(socket: tls.TLSSocket, err: VertexError): void {
    const peer = attachAmp(socket, { limits: { maxBoxBytes: REFUSAL_MAX_BOX_BYTES } });
    peer.handle(COMMANDS.hello, () => {
      setImmediate(() => socket.end());
      throw err;
    });
    socket.resume();
    setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS).unref();
  }

  async stop(): Promise<void> {
    const tcp = this.#tcp;
    this.#tcp = null;
    if (this.#sweep) clearInterval(this.#sweep);
    this.#sweep = null;
    // First: the other nodes stop sending this one inbounds and relay legs.
    await this.#mesh?.stop();
    this.#mesh = null;
    if (this.#foreignSweep) clearInterval(this.#foreignSweep);
    this.#foreignSweep = null;
    await this.#follower?.stop();
    this.#follower = null;
    await this.#metricsHttp?.close();
    this.#metricsHttp = null;
    if (tcp) {
      const closed = new Promise<void>((resolve) => tcp.close(() => resolve()));
      for (const socket of this.#sockets) socket.destroy();
      await closed;
    }
    this.#relay?.stop();
    const udp = this.#udp;
    this.#udp = null;
    if (udp) await new Promise<void>((resolve) => udp.close(() => resolve()));
    await this.#store?.close();
    this.#store = null;
  }
}
