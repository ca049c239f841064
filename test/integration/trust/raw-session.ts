/**
 * Raw control sessions for the trust tests: TLS to a real `vertex server`
 * from a chosen loopback source address (127.0.0.0/8 is all loopback on
 * Linux, so 127.0.0.2 is "another address"), AMP on top, no CLI. Used where
 * the CLI cannot express the attack: pipelined boxes, thousands of sessions.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import { PROTOCOL_VERSION } from '../../../q2q/control/protocol';
import { createCsr, generateKeyPair } from '../../../q2q/identity';
import type { AmpPeer } from '../../../q2q/proto/amp-peer';
import { attachAmp } from '../../../q2q/transport/amp-connection';

export interface RawSession {
  socket: tls.TLSSocket;
  peer: AmpPeer;
  close(): void;
}

/** A client certificate and its key, for a session that authenticates. */
export interface ClientCreds { key: string; cert: string }

/** Connects from `localAddress` and completes TLS; throws what the connection died of. */
export function connectRaw(port: number, domain: string, localAddress = '127.0.0.1', creds?: ClientCreds): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const tcp = net.connect({ host: '127.0.0.1', port, localAddress });
    tcp.on('error', () => undefined);
    const socket = tls.connect({ socket: tcp, servername: domain, rejectUnauthorized: false, ...creds });
    socket.once('secureConnect', () => {
      socket.off('error', reject);
      socket.on('error', () => undefined);
      resolve(socket);
    });
    socket.once('error', reject);
    socket.once('close', () => reject(new Error('closed before TLS finished')));
  });
}

/** A session that has said hello. */
export async function openSession(port: number, domain: string, localAddress = '127.0.0.1', creds?: ClientCreds): Promise<RawSession> {
  const socket = await connectRaw(port, domain, localAddress, creds);
  const peer = attachAmp(socket, { defaultTimeoutMs: 60_000 });
  await peer.call('hello', { version: PROTOCOL_VERSION });
  return { socket, peer, close: () => socket.destroy() };
}

/** A CSR for `address` with a fresh key. */
export async function csrFor(address: string): Promise<string> {
  return createCsr(address, (await generateKeyPair()).privateKeyPem);
}

/** 'certificate' when the answer carries one, else the error code (or what the connection died of). */
export async function outcome(call: Promise<Record<string, string | undefined>>): Promise<string> {
  try {
    const answer = await call;
    return answer.certificate ? 'certificate' : 'answer without certificate';
  } catch (err) {
    return (err as { code?: string }).code ?? (err as Error).message;
  }
}
