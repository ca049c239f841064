/**
 * A throw-away OpenSSH server for tests (TESTING.md "Real clients"): its own
 * host key, key-only auth, sftp for today's scp.
 *
 * It listens on port 0: this module owns the listening socket and runs the
 * real sshd in inetd mode (`sshd -i`) for each connection, with the accepted
 * socket as its stdin and stdout. So there is no port to pick, and no
 * "Server listening" line to wait for: the port is bound before this resolves.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import { SSHD, writeSshdFiles } from '../../bench/throwaway-sshd';
import { listenOnPort0 } from './net';

export { SSHD };

export interface Sshd {
  port: number;
  /** Everything the sshd processes wrote to stderr (`-e`, LogLevel VERBOSE). */
  log(): string;
  /** The client's private key, authorized for any user (root included). */
  userKey: string;
  /** ssh(1) options for this server: the user key, a known_hosts file of its own, batch mode. */
  clientOptions(): string[];
  /** Stops listening and kills the sshd processes still running, by pid. */
  close(): Promise<void>;
}

/** Starts the sshd in `dir` (which it fills with keys and a config) on 127.0.0.1, port 0. */
export async function startSshd(dir: string): Promise<Sshd> {
  const { config, userKey, clientOptions } = writeSshdFiles(dir, ['Subsystem sftp internal-sftp', 'LogLevel VERBOSE']);

  let log = '';
  const children = new Set<ChildProcess>();
  // pauseOnConnect: this process never reads from the socket; sshd gets it whole.
  const server = net.createServer({ pauseOnConnect: true }, (socket) => {
    const child = spawn(SSHD, ['-i', '-e', '-f', config], { stdio: [socket, socket, 'pipe'] });
    children.add(child);
    child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
    child.on('error', (err) => (log += `spawn ${SSHD}: ${err.message}\n`));
    child.on('close', () => children.delete(child));
    // sshd holds its own copy of the descriptor; ours is closed without a shutdown.
    socket.destroy();
  });
  const port = await listenOnPort0(server);
  return {
    port,
    log: () => log,
    userKey,
    clientOptions: () => [...clientOptions],
    close: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await Promise.all([...children].map((c) => new Promise<void>((resolve) => {
        if (c.exitCode !== null || c.signalCode !== null) return resolve();
        c.once('close', () => resolve());
        c.kill('SIGKILL');
      })));
    },
  };
}
