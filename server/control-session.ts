/**
 * One control connection to the identity server: TLS already established,
 * AMP on top. Requires `hello` first, then serves the account commands.
 * Request-level errors are answered with `_error` and never drop the
 * connection (AmpPeer does that); framing errors drop only this connection.
 */
import { isIPv6 } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { attachAmp } from '../q2q/transport/amp-connection';
import type { AmpArgs, AmpPeer } from '../q2q/proto/amp-peer';
import { vertexError } from '../q2q/errors';
import { COMMANDS, PROTOCOL_VERSION, SOFTWARE } from '../q2q/control/protocol';
import type { Logger } from '../q2q/util/log';
import type { AccountService } from './account-service';
import type { Broker } from './broker';
import { instrumentCommands, type ServerMetrics } from './metrics';

export interface SessionContext {
  /** The remote IP, for rate limiting and logs. */
  remoteAddress: string;
  remotePort: number;
  /** Set when the client presented a valid certificate, of a served or a foreign domain. */
  authenticatedAs: string | null;
  certPem: string | null;
  /** True when authenticatedAs belongs to a domain this server serves. */
  local: boolean;
  /** The presented certificate's serial (normalised hex), when there is one. */
  serial: string | null;
}

export interface ControlSessionOptions {
  socket: TLSSocket;
  context: SessionContext;
  accounts: AccountService;
  broker: Broker;
  log: Logger;
  maxBoxBytes: number;
  helloTimeoutMs: number;
  metrics?: ServerMetrics;
  /**
   * Checks the session's certificate again, against the store (our domains)
   * or its issuer's cert-status (others), when a request that acts as that
   * identity is made: a session opened before a revocation gets nothing.
   * Throws the refusal (CertificateRevoked, NoSuchUser, ServerUnavailable).
   */
  authorize?: (context: SessionContext, command: string) => Promise<void>;
  /** Answers cert-status (IdentityServer: own domains from the store, others for our own agents). */
  certStatus?: (args: AmpArgs, context: SessionContext) => Promise<AmpArgs>;
  /** A right password or a registration came from this session's address (server/admission.ts: known good). */
  onProven?: () => void;
}

function requireArg(args: AmpArgs, name: string, command: string): string {
  const value = args[name];
  if (value === undefined || value === '') throw vertexError('BadRequest', `${command}: missing argument "${name}"`);
  return value;
}

export class ControlSession {
  readonly peer: AmpPeer;
  readonly context: SessionContext;
  #helloDone = false;
  /** Requests being answered: such a session is not idle (server/admission.ts). */
  #inFlight = 0;
  readonly #helloTimer: NodeJS.Timeout;
  readonly #socket: TLSSocket;
  readonly #log: Logger;

  /** True while a request is being answered. */
  get busy(): boolean {
    return this.#inFlight > 0;
  }

  constructor(opts: ControlSessionOptions) {
    const { socket, context, accounts, broker, log } = opts;
    this.context = context;
    this.#socket = socket;
    this.#log = log;
    const authorize = async (command: string): Promise<void> => {
      if (opts.authorize) await opts.authorize(context, command);
    };
    this.peer = attachAmp(socket, { log, limits: { maxBoxBytes: opts.maxBoxBytes } });
    if (opts.metrics) instrumentCommands(this.peer, opts.metrics);
    this.#helloTimer = setTimeout(() => {
      if (!this.#helloDone) {
        log.info('closing control connection: no hello in time');
        socket.destroy();
      }
    }, opts.helloTimeoutMs);
    this.#helloTimer.unref();
    socket.once('close', () => clearTimeout(this.#helloTimer));

    const afterHello = <T>(command: string, fn: (args: AmpArgs) => T) => (args: AmpArgs): T => {
      if (!this.#helloDone) throw vertexError('ProtocolVersion', `${command}: send hello with version ${PROTOCOL_VERSION} first`);
      const result = fn(args);
      if (result instanceof Promise) {
        this.#inFlight++;
        const done = (): void => { this.#inFlight--; };
        result.then(done, done);
      }
      return result;
    };

    this.peer.handle(COMMANDS.hello, (args) => {
      const version = args.version ?? '';
      if (version !== PROTOCOL_VERSION) {
        // Answer, then close: a peer on another version cannot use this connection.
        setImmediate(() => socket.end());
        throw vertexError('ProtocolVersion', `hello: protocol version "${version}" is not supported; this server speaks ${PROTOCOL_VERSION}`);
      }
      this.#helloDone = true;
      clearTimeout(this.#helloTimer);
      return { version: PROTOCOL_VERSION, software: SOFTWARE, ...(context.authenticatedAs ? { identity: context.authenticatedAs } : {}) };
    });

    this.peer.handle(COMMANDS.ping, afterHello(COMMANDS.ping, () => ({})));

    this.peer.handle(COMMANDS.identify, afterHello(COMMANDS.identify, (args) => {
      const domain = requireArg(args, 'domain', COMMANDS.identify);
      return { ca: accounts.caFor(domain).certPem };
    }));

    this.peer.handle(COMMANDS.whoAmI, afterHello(COMMANDS.whoAmI, () => ({
      host: context.remoteAddress, port: String(context.remotePort),
    })));

    this.peer.handle(COMMANDS.register, afterHello(COMMANDS.register, async (args) => {
      const result = await accounts.register({
        address: requireArg(args, 'address', COMMANDS.register),
        password: requireArg(args, 'password', COMMANDS.register),
        csrPem: requireArg(args, 'csr', COMMANDS.register),
        invite: args.invite,
        sourceAddress: context.remoteAddress,
      });
      opts.onProven?.();
      return { certificate: result.certPem, ca: result.caPem };
    }));

    this.peer.handle(COMMANDS.sign, afterHello(COMMANDS.sign, async (args) => {
      const result = await accounts.signWithPassword({
        address: requireArg(args, 'address', COMMANDS.sign),
        password: requireArg(args, 'password', COMMANDS.sign),
        csrPem: requireArg(args, 'csr', COMMANDS.sign),
        sourceAddress: context.remoteAddress,
      });
      opts.onProven?.();
      return { certificate: result.certPem, ca: result.caPem };
    }));

    this.peer.handle(COMMANDS.listen, afterHello(COMMANDS.listen, async (args) => {
      if (!context.authenticatedAs || !context.local || !context.certPem) {
        throw vertexError('NotAllowed', 'listen: connect with a certificate of a domain this server serves');
      }
      await authorize(COMMANDS.listen);
      if (socket.destroyed) throw vertexError('ConnectionLost', 'listen: the session closed');
      const remote = isIPv6(context.remoteAddress) ? `[${context.remoteAddress}]:${context.remotePort}` : `${context.remoteAddress}:${context.remotePort}`;
      return broker.listen(context.authenticatedAs, this.peer, context.certPem, args, remote);
    }));
    socket.once('close', () => {
      if (context.authenticatedAs) broker.drop(context.authenticatedAs, this.peer);
    });

    this.peer.handle(COMMANDS.inbound, afterHello(COMMANDS.inbound, async (args) => {
      if (!context.authenticatedAs || !context.certPem) throw vertexError('NotAllowed', 'inbound: connect with your certificate first');
      requireArg(args, 'to', COMMANDS.inbound);
      requireArg(args, 'service', COMMANDS.inbound);
      await authorize(COMMANDS.inbound);
      return broker.inbound({ address: context.authenticatedAs, certPem: context.certPem }, args);
    }));

    this.peer.handle(COMMANDS.renew, afterHello(COMMANDS.renew, async (args) => {
      if (!context.authenticatedAs || !context.local) throw vertexError('NotAllowed', 'renew: connect with your current certificate to renew it');
      const csr = requireArg(args, 'csr', COMMANDS.renew);
      await authorize(COMMANDS.renew);
      // With the check switched off (a test fault), the old behaviour: renew whatever the session holds.
      const result = await accounts.renew(context.authenticatedAs, csr, opts.authorize ? context.serial ?? '' : undefined);
      return { certificate: result.certPem, ca: result.caPem };
    }));

    this.peer.handle(COMMANDS.certStatus, afterHello(COMMANDS.certStatus, async (args) => {
      if (!opts.certStatus) throw vertexError('UnknownCommand', 'cert-status: not served here');
      return opts.certStatus(args, context);
    }));
  }

  /** Ends the session at once (its certificate was revoked or its account removed). */
  close(why: string, notice?: AmpArgs): void {
    const socket = this.#socket;
    if (socket.destroyed) return;
    this.#log.info({ identity: this.context.authenticatedAs, serial: this.context.serial }, `control session closed: ${why}`);
    // The holder's agent learns why (its own certificate is void: it drops its
    // peer streams too), then the session ends; no request is served after this.
    if (notice && this.#helloDone && !this.peer.closed) {
      try {
        this.peer.callNoAnswer(COMMANDS.revoked, notice);
      } catch {
        // The session is going anyway; the notice is a courtesy to the holder's agent.
      }
    }
    this.peer.close();
    socket.end();
    setTimeout(() => socket.destroy(), 1_000).unref();
  }
}
