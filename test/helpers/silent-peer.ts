/**
 * A UDP socket on loopback that answers nothing and records every datagram in arrival order:
 * what a PTCP socket sends toward a peer that never replies (SYN retransmissions, punches).
 */
import * as dgram from 'node:dgram';
import type { PtcpSocket } from '../../q2q/transport/ptcp-socket';

const HANG_BOUND_MS = 5_000;
const MARKER = Buffer.from('marker: all sent before has arrived');

export interface SilentPeer {
  port: number;
  got: Buffer[];
  /** Resolves once `predicate` holds (rejects after a hang bound). */
  until(predicate: () => boolean): Promise<void>;
  close(): void;
}

export async function silentPeer(): Promise<SilentPeer> {
  const udp = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', () => resolve()));
  const got: Buffer[] = [];
  udp.on('message', (m) => got.push(m));
  return {
    port: udp.address().port,
    got,
    until(predicate) {
      if (predicate()) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          udp.off('message', check);
          reject(new Error(`silent peer: condition not met in ${HANG_BOUND_MS} ms (${got.length} datagrams)`));
        }, HANG_BOUND_MS);
        function check(): void {
          if (!predicate()) return;
          clearTimeout(timer);
          udp.off('message', check);
          resolve();
        }
        udp.on('message', check);
      });
    },
    close: () => udp.close(),
  };
}

/** True for the marker datagram flushedTo() sends; tests counting datagrams leave it out. */
export function isMarker(m: Buffer): boolean {
  return m.equals(MARKER);
}

/**
 * Everything `socket` sent before this call has reached `peer` once a marker sent after it has:
 * datagrams from one socket to one loopback port arrive in order.
 */
export async function flushedTo(socket: PtcpSocket, peer: SilentPeer): Promise<void> {
  const markers = (): number => peer.got.filter(isMarker).length;
  const before = markers();
  await socket.sendRaw(MARKER, '127.0.0.1', peer.port);
  await peer.until(() => markers() > before);
}
