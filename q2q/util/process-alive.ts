/**
 * Whether a process with this pid exists: signal 0 checks without sending.
 * EPERM means it exists but belongs to another user, which still counts.
 * (A pid can be recycled: callers that care check what the process is.)
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
