/**
 * The server side of one SOCKS5 connection as a sans-I/O state machine.
 *
 * Bytes from the client go in through receive(); the outcome of the dial
 * goes in through connectSucceeded()/connectFailed(); the driver's handshake
 * timer goes in through handshakeTimedOut(). Each call returns the actions
 * the driver must carry out, in order:
 *   send        write these bytes to the client
 *   connect     dial this target (the reply waits for connectSucceeded/Failed)
 *   established the tunnel exists and the success reply was sent: pipe from
 *               now on, writing `earlyData` (bytes the client sent after its
 *               request, before our reply) into the tunnel first
 *   close       end the client connection after the queued sends
 *
 *   greeting --(method chosen)--> auth --(RFC 1929 ok)--> request
 *   greeting --(method 0 chosen)---------------------------> request
 *   request --(CONNECT)--> connecting --(dial ok)--> established
 *   any handshake state --(garbage | refusal | timeout | dial failed)--> closed
 *
 * Method choice: with auth 'none' we take method 0; with credentials we take
 * RFC 1929 (0x02) and nothing else, so a client offering only method 0
 * (every browser) gets 0xFF. Credentials are compared in constant time over
 * SHA-256 digests, so neither the content nor the length leaks through timing.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isVertexError, type VertexError } from '../errors';
import {
  decodeGreeting,
  decodeRequest,
  decodeUserPass,
  encodeMethodSelection,
  encodeReply,
  encodeUserPassStatus,
  SOCKS_COMMAND,
  SOCKS_METHOD,
  SOCKS_REPLY,
  USERPASS_STATUS_FAILURE,
  USERPASS_STATUS_SUCCESS,
  type SocksAddress,
} from '../wire/socks5';
import { socksReplyForError } from '../wire/socks5-replies';

/**
 * Bytes the client may send after its CONNECT request and before our reply.
 * The driver stops reading while a dial is pending, so this only has to hold
 * what arrived in the same reads as the request; it bounds a misbehaving client.
 */
export const MAX_EARLY_DATA_BYTES = 256 * 1024;

export interface SocksConnectRequest {
  host: string;
  port: number;
  addressType: 'ipv4' | 'domain' | 'ipv6';
}

export type SocksAuth = 'none' | { readonly username: string; readonly password: string };

export type Socks5SessionState = 'greeting' | 'auth' | 'request' | 'connecting' | 'established' | 'closed';

export type Socks5CloseReason =
  | 'decode-error'
  | 'no-acceptable-method'
  | 'auth-failed'
  | 'command-not-supported'
  | 'address-type-not-supported'
  | 'dial-failed'
  | 'handshake-timeout'
  | 'client-ended'
  | 'early-data-overflow';

export type Socks5Action =
  | { type: 'send'; data: Buffer }
  | { type: 'connect'; request: SocksConnectRequest }
  | { type: 'established'; earlyData: Buffer }
  | { type: 'close'; reason: Socks5CloseReason; detail: string; error?: VertexError };

export interface Socks5SessionOptions {
  auth: SocksAuth;
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

export class Socks5Session {
  #state: Socks5SessionState = 'greeting';
  #buffer: Buffer = Buffer.alloc(0);
  readonly #credentials: { user: Buffer; pass: Buffer } | undefined;
  #username: string | undefined;
  #request: SocksConnectRequest | undefined;

  constructor(opts: Socks5SessionOptions) {
    this.#credentials = opts.auth === 'none' ? undefined : { user: digest(opts.auth.username), pass: digest(opts.auth.password) };
  }

  get state(): Socks5SessionState {
    return this.#state;
  }

  /** The RFC 1929 username the client authenticated with, for logs; never the password. */
  get username(): string | undefined {
    return this.#username;
  }

  /** The target of the CONNECT request, once it has been read. */
  get request(): SocksConnectRequest | undefined {
    return this.#request;
  }

  /** True while the client has not yet reached the point where only the dial is pending. */
  get inHandshake(): boolean {
    return this.#state === 'greeting' || this.#state === 'auth' || this.#state === 'request';
  }

  receive(chunk: Uint8Array): Socks5Action[] {
    switch (this.#state) {
      case 'closed':
        return [];
      case 'established':
        throw new Error('socks5 session: receive() after established; the driver must pipe the socket');
      case 'greeting':
      case 'auth':
      case 'request':
      case 'connecting':
        break;
      default: {
        const never: never = this.#state;
        throw new Error(`socks5 session: unknown state ${String(never)}`);
      }
    }
    this.#buffer = this.#buffer.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.#buffer, chunk]);
    const actions: Socks5Action[] = [];
    try {
      this.#drain(actions);
    } catch (err) {
      if (!isVertexError(err, 'Socks5Decode')) throw err;
      actions.push(this.#close('decode-error', err.message, err));
    }
    return actions;
  }

  connectSucceeded(bind?: { address: SocksAddress; port: number }): Socks5Action[] {
    if (this.#state !== 'connecting') return [];
    this.#state = 'established';
    const earlyData = this.#buffer;
    this.#buffer = Buffer.alloc(0);
    return [
      { type: 'send', data: encodeReply(SOCKS_REPLY.Succeeded, bind) },
      { type: 'established', earlyData },
    ];
  }

  connectFailed(err: unknown): Socks5Action[] {
    if (this.#state !== 'connecting') return [];
    const rep = socksReplyForError(err);
    const detail = err instanceof Error ? err.message : String(err);
    return [
      { type: 'send', data: encodeReply(rep) },
      this.#close('dial-failed', `reply 0x${rep.toString(16).padStart(2, '0')}: ${detail}`, isVertexError(err) ? err : undefined),
    ];
  }

  /** The handshake timer fired: close if the client is still negotiating (a pending dial has its own timeouts). */
  handshakeTimedOut(): Socks5Action[] {
    if (!this.inHandshake) return [];
    return [this.#close('handshake-timeout', `handshake not finished in state ${this.#state}`)];
  }

  /**
   * The client sent FIN before the tunnel existed. During the handshake it
   * can never finish its request. While the dial runs, a FIN cannot be told
   * apart from a client that left: browsers cancel a request by closing,
   * which is a FIN too. So both close, which also aborts the dial, instead of
   * keeping a half-open socket and a tunnel nobody will use. Once
   * established, the driver's pipe carries the end to the tunnel.
   */
  clientEnded(): Socks5Action[] {
    if (!this.inHandshake && this.#state !== 'connecting') return [];
    return [this.#close('client-ended', `client ended in state ${this.#state}`)];
  }

  #close(reason: Socks5CloseReason, detail: string, error?: VertexError): Socks5Action {
    this.#state = 'closed';
    this.#buffer = Buffer.alloc(0);
    return error ? { type: 'close', reason, detail, error } : { type: 'close', reason, detail };
  }

  /** Consumes every complete message in the buffer; clients may pipeline greeting, auth and request. */
  #drain(actions: Socks5Action[]): void {
    for (;;) {
      switch (this.#state) {
        case 'greeting': {
          const msg = decodeGreeting(this.#buffer);
          if (!msg) return;
          this.#consume(msg.length);
          const wanted = this.#credentials ? SOCKS_METHOD.UserPass : SOCKS_METHOD.NoAuth;
          if (!msg.value.methods.includes(wanted)) {
            actions.push({ type: 'send', data: encodeMethodSelection(SOCKS_METHOD.NoAcceptable) });
            actions.push(this.#close('no-acceptable-method', `offered [${msg.value.methods.join(',')}], need ${wanted}`));
            return;
          }
          actions.push({ type: 'send', data: encodeMethodSelection(wanted) });
          this.#state = this.#credentials ? 'auth' : 'request';
          break;
        }
        case 'auth': {
          const msg = decodeUserPass(this.#buffer);
          if (!msg) return;
          this.#consume(msg.length);
          if (!this.#checkCredentials(msg.value.username, msg.value.password)) {
            actions.push({ type: 'send', data: encodeUserPassStatus(USERPASS_STATUS_FAILURE) });
            actions.push(this.#close('auth-failed', 'wrong username or password'));
            return;
          }
          this.#username = msg.value.username;
          actions.push({ type: 'send', data: encodeUserPassStatus(USERPASS_STATUS_SUCCESS) });
          this.#state = 'request';
          break;
        }
        case 'request': {
          const msg = decodeRequest(this.#buffer);
          if (!msg) return;
          this.#consume(msg.length);
          const { command, address, port } = msg.value;
          if (address.type === 'unsupported') {
            actions.push({ type: 'send', data: encodeReply(SOCKS_REPLY.AddressTypeNotSupported) });
            actions.push(this.#close('address-type-not-supported', `address type 0x${address.atyp.toString(16)}`));
            return;
          }
          if (command !== SOCKS_COMMAND.Connect) {
            actions.push({ type: 'send', data: encodeReply(SOCKS_REPLY.CommandNotSupported) });
            actions.push(this.#close('command-not-supported', `command 0x${command.toString(16)}`));
            return;
          }
          this.#request = { host: address.host, port, addressType: address.type };
          this.#state = 'connecting';
          actions.push({ type: 'connect', request: this.#request });
          break;
        }
        case 'connecting':
          if (this.#buffer.length > MAX_EARLY_DATA_BYTES) {
            actions.push(this.#close('early-data-overflow', `${this.#buffer.length} bytes sent before the reply`));
          }
          return;
        case 'established':
        case 'closed':
          return;
        default: {
          const never: never = this.#state;
          throw new Error(`socks5 session: unknown state ${String(never)}`);
        }
      }
    }
  }

  #consume(n: number): void {
    this.#buffer = this.#buffer.subarray(n);
  }

  #checkCredentials(username: string, password: string): boolean {
    const creds = this.#credentials;
    if (!creds) return false;
    // Both comparisons always run so that a right username does not answer faster.
    const userOk = timingSafeEqual(digest(username), creds.user);
    const passOk = timingSafeEqual(digest(password), creds.pass);
    return userOk && passOk;
  }
}
