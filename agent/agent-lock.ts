/**
 * One agent per home (and so per identity) on a machine: `<home>/agent.lock`.
 *
 * The file is created with O_EXCL and holds what another process needs to
 * know about the agent that owns it:
 *
 *     {"pid":1234,"identity":"alice@a.test","socket":"/run/user/1000/vertex/agent.sock",
 *      "config":"/home/alice/.config/vertex/agent.yaml","started":"2025-..."}
 *
 * A second `vertex agent` for the same home finds it and refuses to start,
 * saying which process runs and where its socket is, before it touches the
 * server (issue 13). The CLI reads it to find the running agent's control
 * socket whatever config that agent was started with.
 *
 * A lock whose process is gone (the agent was killed) is stale and taken
 * over. The home is the user's own 0700 directory, so nobody else can place
 * or remove a lock there.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { vertexError } from '../q2q/errors';

export const AGENT_LOCK_FILE = 'agent.lock';

export interface AgentLockInfo {
  pid: number;
  identity: string;
  socket: string | null;
  config: string | null;
  started: string;
}

export function lockPath(home: string): string {
  return path.join(home, AGENT_LOCK_FILE);
}

/** Whether `pid` is a live process that looks like a vertex agent (not a recycled pid). */
export function isLiveAgent(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
  } catch (err) {
    // EPERM: alive but another user's; still a holder.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return /vertex/.test(cmdline);
  } catch {
    return true;
  }
}

/** The running agent's lock in `home`, or null when there is none or it is stale. */
export function readAgentLock(home: string): AgentLockInfo | null {
  let text: string;
  try {
    text = fs.readFileSync(lockPath(home), 'utf8');
  } catch {
    return null;
  }
  try {
    const info = JSON.parse(text) as AgentLockInfo;
    return isLiveAgent(info.pid) ? info : null;
  } catch {
    return null;
  }
}

export class AgentLock {
  readonly file: string;
  #held = false;

  private constructor(file: string) {
    this.file = file;
  }

  /**
   * Takes the home's lock or throws AgentRunning naming the agent that holds
   * it. A stale lock (its process is gone) is replaced.
   */
  static acquire(home: string, info: Omit<AgentLockInfo, 'pid' | 'started'>): AgentLock {
    const file = lockPath(home);
    fs.mkdirSync(home, { recursive: true, mode: 0o700 });
    const body = JSON.stringify({ pid: process.pid, ...info, started: new Date().toISOString() } satisfies AgentLockInfo);
    // Two tries: the second after removing a stale lock (another starter may win that race).
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        fs.writeFileSync(file, `${body}\n`, { flag: 'wx', mode: 0o600 });
        const lock = new AgentLock(file);
        lock.#held = true;
        return lock;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw vertexError('Internal', `agent lock ${file}: ${(err as Error).message}`, err);
      }
      const holder = readAgentLock(home);
      if (holder) {
        throw vertexError(
          'AgentRunning',
          `another vertex agent (pid ${holder.pid}) already runs for ${holder.identity} with the home ${home}` +
            `${holder.socket ? `; its control socket is ${holder.socket}` : ''}; use that one (vertex status), or stop it first`,
        );
      }
      fs.rmSync(file, { force: true });
    }
    throw vertexError('AgentRunning', `agent lock ${file}: another agent is starting for this home; try again`);
  }

  /** Removes the lock if it is still ours. */
  release(): void {
    if (!this.#held) return;
    this.#held = false;
    try {
      const info = JSON.parse(fs.readFileSync(this.file, 'utf8')) as AgentLockInfo;
      if (info.pid === process.pid) fs.rmSync(this.file, { force: true });
    } catch {
      // Already gone.
    }
  }
}
