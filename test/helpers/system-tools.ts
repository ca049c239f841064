/**
 * Tiers that need system programs (sshd, ncat, chromium, iptables, …).
 *
 * On a fresh machine `npm test` must still pass: a tier whose programs are
 * missing is skipped, with one line naming the Debian packages to install.
 * Under CI (`CI=true`) .ci/run has installed them all, so a missing program
 * is a broken setup: the tier fails instead of skipping, and says so.
 */
import { spawnSync } from 'node:child_process';

export interface SystemTool {
  /** The program to run, as found on PATH or by absolute path. */
  cmd: string;
  /** Arguments that make it print its version and exit 0. */
  args: string[];
  /** The Debian package that provides it. */
  pkg: string;
}

export const TOOLS = {
  curl: { cmd: 'curl', args: ['--version'], pkg: 'curl' },
  ncat: { cmd: 'ncat', args: ['--version'], pkg: 'ncat' },
  ssh: { cmd: 'ssh', args: ['-V'], pkg: 'openssh-client' },
  sshd: { cmd: '/usr/sbin/sshd', args: ['-V'], pkg: 'openssh-server' },
  chromium: { cmd: 'chromium', args: ['--version'], pkg: 'chromium' },
  openssl: { cmd: 'openssl', args: ['version'], pkg: 'openssl' },
  systemdAnalyze: { cmd: 'systemd-analyze', args: ['--version'], pkg: 'systemd' },
  iptables: { cmd: 'iptables', args: ['-V'], pkg: 'iptables' },
  conntrack: { cmd: 'conntrack', args: ['-V'], pkg: 'conntrack' },
  /** Runs a command on a pseudo-terminal (the CLI's terminal-only behaviour). Essential in Debian. */
  script: { cmd: 'script', args: ['--version'], pkg: 'bsdutils' },
} as const satisfies Record<string, SystemTool>;

const present = new Map<string, boolean>();

function isPresent(tool: SystemTool): boolean {
  let ok = present.get(tool.cmd);
  if (ok === undefined) {
    // sshd -V prints its version and exits non-zero on older OpenSSH: "runs at all" is the test.
    const r = spawnSync(tool.cmd, tool.args, { stdio: 'ignore', timeout: 30_000 });
    ok = !r.error;
    present.set(tool.cmd, ok);
  }
  return ok;
}

export function inCi(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.CI === 'true' || env.CI === '1';
}

/** The one line that says what is missing and how to get it, or null when everything is here. */
export function missingToolsLine(what: string, tools: readonly SystemTool[]): string | null {
  const missing = tools.filter((t) => !isPresent(t));
  if (missing.length === 0) return null;
  const pkgs = [...new Set(missing.map((t) => t.pkg))].join(' ');
  return `${what} needs ${missing.map((t) => t.cmd).join(', ')}: apt-get update && apt-get install -y ${pkgs}`;
}

/**
 * `describe`, when `tools` are all present. Otherwise, outside CI the block is
 * skipped with one line on stderr; in CI one failing test says what is missing.
 */
export function describeWithTools(name: string, tools: readonly SystemTool[], fn: () => void): void {
  const line = missingToolsLine(name, tools);
  if (line === null) {
    describe(name, fn);
    return;
  }
  if (inCi()) {
    describe(name, () => {
      it('has the system programs it needs', () => {
        throw new Error(`${line} (.ci/run installs them; this CI setup is broken)`);
      });
    });
    return;
  }
  process.stderr.write(`skipped: ${line}\n`);
  describe.skip(name, fn);
}

/** `it`, with the same rule as describeWithTools, for one test of a block that needs one more program. */
export function itWithTools(name: string, tools: readonly SystemTool[], fn: () => Promise<unknown>, timeoutMs?: number): void {
  const line = missingToolsLine(name, tools);
  if (line === null) {
    it(name, fn, timeoutMs);
  } else if (inCi()) {
    it(name, () => {
      throw new Error(`${line} (.ci/run installs them; this CI setup is broken)`);
    });
  } else {
    process.stderr.write(`skipped: ${line}\n`);
    it.skip(name, fn, timeoutMs);
  }
}
