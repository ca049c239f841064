/**
 * A fixed CPU budget per process, as if each ran on a machine of its own
 * with that many cores: one cgroup v1 `cpu` group per process, with a CFS
 * quota (cpu.cfs_quota_us / cpu.cfs_period_us). Used by bench/multi-node.ts
 * to model "each node is its own machine" on one shared machine.
 *
 * Needs cgroup v1's cpu controller mounted at /sys/fs/cgroup/cpu and the
 * right to make groups there (root). Anything else is reported as a reason
 * to skip, never thrown: CI machines without either still run the bench.
 * Groups are named vertex-bench-<bench pid>-<name>; release() moves the
 * processes back to the group each came from and removes the groups.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const CPU_ROOT = '/sys/fs/cgroup/cpu';
const PERIOD_US = 100_000;
const PREFIX = 'vertex-bench-';
/** cpu.shares of each group: 100 default-weight tasks' worth (1024 each), so that the quota, not the neighbours, is the limit. */
const SHARES = 102_400;

export interface CpuBudgets {
  /** Each group's CFS throttling so far: how often and for how long the quota held its process back. */
  throttled(): Array<{ name: string; periods: number; throttledPeriods: number; throttledMs: number }>;
  /** Moves the processes back where they were and removes the groups (errors are returned, not thrown). */
  release(): string[];
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The process's group in the v1 cpu hierarchy ("/" for the root), from /proc/<pid>/cgroup. */
function cpuGroupOf(pid: number): string {
  for (const line of fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n')) {
    const [, controllers, group] = line.split(':');
    if (controllers?.split(',').includes('cpu')) return group ?? '/';
  }
  return '/';
}

/** Why CPU budgets cannot be set here, or null when they can be. */
export function cpuBudgetUnavailable(): string | null {
  if (process.platform !== 'linux') return `not Linux (${process.platform})`;
  if (!fs.existsSync(path.join(CPU_ROOT, 'cpu.cfs_quota_us'))) {
    return fs.existsSync('/sys/fs/cgroup/cgroup.controllers')
      ? 'cgroup v2 only (this bench sets cgroup v1 cpu.cfs_quota_us)'
      : `no cgroup v1 cpu controller at ${CPU_ROOT}`;
  }
  try {
    fs.accessSync(CPU_ROOT, fs.constants.W_OK);
  } catch {
    return `${CPU_ROOT} is not writable (not root?)`;
  }
  return null;
}

/** Removes empty groups left by benches that were killed before they could (their pid is gone). */
function removeStaleGroups(): void {
  for (const entry of fs.readdirSync(CPU_ROOT)) {
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(entry);
    if (!m || alive(Number(m[1]))) continue;
    try {
      fs.rmdirSync(path.join(CPU_ROOT, entry));
    } catch {
      // Not empty or already gone: left alone.
    }
  }
}

/**
 * Puts each process in a group of its own limited to `cores` of CPU (0.5:
 * 50 ms of CPU per 100 ms, over all its threads, libuv's pool included), and
 * weighted so that on a busy machine it still gets that much.
 * Returns the groups, or why it could not (then nothing is left behind).
 */
export function placeInCpuBudgets(procs: ReadonlyArray<{ name: string; pid: number }>, cores: number): CpuBudgets | { skipped: string } {
  const unavailable = cpuBudgetUnavailable();
  if (unavailable) return { skipped: unavailable };
  if (!(cores > 0)) return { skipped: `a budget of ${cores} cores makes no sense` };
  removeStaleGroups();
  const groups: Array<{ name: string; dir: string; pid: number; from: string }> = [];
  const release = (): string[] => {
    const errors: string[] = [];
    for (const g of groups) {
      try {
        if (alive(g.pid)) fs.writeFileSync(path.join(CPU_ROOT, g.from, 'cgroup.procs'), String(g.pid));
      } catch (err) {
        errors.push(`${g.name}: moving pid ${g.pid} back to ${g.from}: ${(err as Error).message}`);
      }
      try {
        fs.rmdirSync(g.dir);
      } catch (err) {
        errors.push(`${g.name}: removing ${g.dir}: ${(err as Error).message}`);
      }
    }
    groups.length = 0;
    process.off('exit', releaseAtExit);
    return errors;
  };
  // Interrupted (Ctrl-C ends the bench through process.exit): the groups go too, not only next time.
  const releaseAtExit = (): void => void release();
  process.once('exit', releaseAtExit);
  try {
    for (const p of procs) {
      const dir = path.join(CPU_ROOT, `${PREFIX}${process.pid}-${p.name}`);
      const from = cpuGroupOf(p.pid);
      fs.mkdirSync(dir);
      groups.push({ name: p.name, dir, pid: p.pid, from });
      fs.writeFileSync(path.join(dir, 'cpu.cfs_period_us'), String(PERIOD_US));
      fs.writeFileSync(path.join(dir, 'cpu.cfs_quota_us'), String(Math.round(cores * PERIOD_US)));
      // A machine of its own: other processes on this shared machine must not take the budget
      // away (each group weighs as SHARES tasks); the quota still caps what the group gets.
      fs.writeFileSync(path.join(dir, 'cpu.shares'), String(SHARES));
      // cgroup.procs moves every thread of the process (the libuv pool computing scrypt too).
      fs.writeFileSync(path.join(dir, 'cgroup.procs'), String(p.pid));
    }
  } catch (err) {
    const leftovers = release();
    return { skipped: `cannot set a cgroup CPU quota: ${(err as Error).message}${leftovers.length ? `; ${leftovers.join('; ')}` : ''}` };
  }
  return {
    release,
    throttled: () => groups.map((g) => {
      const stat = Object.fromEntries(fs.readFileSync(path.join(g.dir, 'cpu.stat'), 'utf8').trim().split('\n').map((l) => {
        const [k, v] = l.split(' ');
        return [k, Number(v)];
      })) as Record<string, number>;
      return { name: g.name, periods: stat.nr_periods ?? 0, throttledPeriods: stat.nr_throttled ?? 0, throttledMs: Math.round((stat.throttled_time ?? 0) / 1e6) };
    }),
  };
}
