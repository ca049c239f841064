/**
 * The files of a throw-away OpenSSH server: a host key, a user key authorized
 * for any user (root included), and an sshd_config allowing only that key.
 * The bench's `ssh -D` baseline (bench/socks.ts), the tests' sshd
 * (test/helpers/sshd.ts) and the NAT lab's sshd each run sshd on these files;
 * how each starts it (inetd mode per connection, or listening) is theirs.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const SSHD = '/usr/sbin/sshd';

export interface SshdFiles {
  config: string;
  hostKey: string;
  /** The client's private key; its public half is the only authorized key. */
  userKey: string;
  /** ssh(1) options for this server: the user key, a known_hosts file in `dir`, batch mode. */
  clientOptions: string[];
}

function keygen(file: string): void {
  const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', file], { stdio: 'ignore' });
  if (r.status !== 0) throw new Error(`ssh-keygen -f ${file} failed (${r.error?.message ?? `exit ${r.status}`})`);
}

/**
 * Writes keys and sshd_config into `dir` (which must exist). `extra` lines go
 * at the end of the config (e.g. `Port 22`, `AllowTcpForwarding yes`). sshd
 * also wants its privilege-separation directory, made here.
 */
export function writeSshdFiles(dir: string, extra: string[] = []): SshdFiles {
  fs.mkdirSync('/run/sshd', { recursive: true });
  const hostKey = path.join(dir, 'host_key');
  const userKey = path.join(dir, 'user_key');
  keygen(hostKey);
  keygen(userKey);
  fs.copyFileSync(`${userKey}.pub`, path.join(dir, 'authorized_keys'));
  const config = path.join(dir, 'sshd_config');
  fs.writeFileSync(config, [
    `HostKey ${hostKey}`,
    'PidFile none',
    'UsePAM no',
    'StrictModes no',
    'PermitRootLogin yes',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'PubkeyAuthentication yes',
    `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
    ...extra,
    '',
  ].join('\n'));
  return {
    config, hostKey, userKey,
    clientOptions: [
      '-F', '/dev/null',
      '-i', userKey,
      '-o', 'IdentitiesOnly=yes',
      '-o', 'BatchMode=yes',
      '-o', `UserKnownHostsFile=${path.join(dir, 'known_hosts')}`,
      '-o', 'StrictHostKeyChecking=accept-new',
    ],
  };
}
