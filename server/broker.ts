/**
 * Presence and inbound brokering. An agent's `listen` puts its services
 * online; a caller's `inbound` is forwarded to that agent with the caller's
 * certificate, and the agent's answer (candidates and a one-time token) goes
 * back with the listener's certificate. The token is registered with the
 * relay so both sides can fall back to it.
 */
import { formatAddress, parseAddress, parseService } from '../q2q/address';
import { COMMANDS, INBOUND_FORWARD_TIMEOUT_MS } from '../q2q/control/protocol';
import { asVertexError, vertexError } from '../q2q/errors';
import type { AmpArgs, AmpPeer } from '../q2q/proto/amp-peer';
import type { Logger } from '../q2q/util/log';
import type { Relay } from './relay';

const TOKEN_RE = /^[0-9a-f]{32}$/;
export const MAX_SERVICES_PER_LISTENER = 256;

interface Listener {
  peer: AmpPeer;
  certPem: string;
  services: Set<string>;
}

export interface Caller {
  address: string;
  certPem: string;
}

export class Broker {
  readonly #listeners = new Map<string, Listener>();
  readonly #servedDomains: ReadonlySet<string>;
  readonly #relay: Relay;
  readonly #log: Logger;

  constructor(opts: { domains: readonly string[]; relay: Relay; log: Logger }) {
    this.#servedDomains = new Set(opts.domains);
    this.#relay = opts.relay;
    this.#log = opts.log;
  }

  get onlineCount(): number {
    return this.#listeners.size;
  }

  listen(address: string, peer: AmpPeer, certPem: string, servicesJson: string): void {
    let names: unknown;
    try {
      names = JSON.parse(servicesJson);
    } catch {
      throw vertexError('BadRequest', 'listen: "services" must be a JSON array of service names');
    }
    if (!Array.isArray(names) || names.length > MAX_SERVICES_PER_LISTENER) {
      throw vertexError('BadRequest', `listen: "services" must be a JSON array of at most ${MAX_SERVICES_PER_LISTENER} names`);
    }
    const services = new Set(names.map((n) => parseService(String(n))));
    const previous = this.#listeners.get(address);
    if (previous && previous.peer !== peer) this.#log.info({ address }, 'a newer session of this user takes over listening');
    this.#listeners.set(address, { peer, certPem, services });
    this.#log.info({ address, services: [...services] }, 'listening');
  }

  /** Drops the listener if it is this session (a newer session may have replaced it). */
  drop(address: string, peer: AmpPeer): void {
    if (this.#listeners.get(address)?.peer === peer) {
      this.#listeners.delete(address);
      this.#log.info({ address }, 'offline');
    }
  }

  async inbound(caller: Caller, args: AmpArgs): Promise<AmpArgs> {
    const to = formatAddress(parseAddress(args.to ?? ''));
    const service = parseService(args.service ?? '');
    if (!this.#servedDomains.has(parseAddress(to).domain)) {
      throw vertexError('UnknownDomain', `inbound: this server does not serve ${parseAddress(to).domain}`);
    }
    const listener = this.#listeners.get(to);
    if (!listener) throw vertexError('Offline', `${to} is not online`);
    if (!listener.services.has(service)) throw vertexError('NotExposed', `${to} does not expose "${service}"`);
    let answer: AmpArgs;
    try {
      answer = await listener.peer.call(COMMANDS.inbound, {
        from: caller.address,
        service,
        certificate: caller.certPem,
        candidates: args.candidates ?? '[]',
        routes: args.routes ?? '[]',
      }, { timeoutMs: INBOUND_FORWARD_TIMEOUT_MS });
    } catch (err) {
      const e = asVertexError(err, 'Internal');
      if (e.code === 'ConnectionLost') throw vertexError('Offline', `${to} went offline while answering`);
      if (e.code === 'Timeout') throw vertexError('Timeout', `${to} did not answer within ${INBOUND_FORWARD_TIMEOUT_MS} ms`);
      // Passed on as it is, the listener's UNHANDLED would tell the caller that this
      // server does not know inbound.
      if (e.code === 'UnknownCommand') throw vertexError('ProtocolVersion', `${to}'s agent does not answer inbound`);
      throw e;
    }
    const token = answer.token ?? '';
    if (!TOKEN_RE.test(token)) throw vertexError('Internal', `${to} answered inbound without a valid token`);
    this.#relay.register(token, caller.address, to);
    this.#log.info({ from: caller.address, to, service }, 'inbound brokered');
    return {
      token,
      candidates: answer.candidates ?? '[]',
      certificate: listener.certPem,
      relay: this.#relay.enabled ? '1' : '0',
    };
  }
}
