/**
 * Ports and waits for tests that pass on a busy machine (TESTING.md, PROTOCOL.md):
 *
 * - listen on port 0 and read the port back; never find a "free" port by
 *   binding, closing and binding again (another process, or one of our own
 *   outgoing connections, can take it in between);
 * - wait for an event, a log line or a state, never for a fixed time. The
 *   time limits below only turn a hang into a failure that says what was
 *   awaited; they are generous on purpose and are not assertions.
 */
import type { EventEmitter } from 'node:events';
import * as net from 'node:net';

/** How long a wait may take before it is reported as a hang (not a bound on the behaviour). */
export const HANG_MS = 30_000;

/** Listens on port 0 of `host` and resolves with the port the kernel chose. */
export async function listenOnPort0(server: net.Server, host = '127.0.0.1'): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(0, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  return (server.address() as net.AddressInfo).port;
}

/** A TCP connection to `port` on loopback, resolved once connected. */
export function connectTcp(port: number, host = '127.0.0.1'): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, allowHalfOpen: true });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/**
 * Resolves with the arguments of the next `event`; rejects on `error` (unless
 * `event` is 'error') and after `ms`, naming `what` it waited for.
 */
export function nextEvent<T extends unknown[] = unknown[]>(emitter: EventEmitter, event: string, what: string, ms = HANG_MS): Promise<T> {
  return new Promise((resolve, reject) => {
    const onEvent = (...args: unknown[]) => {
      cleanup();
      resolve(args as T);
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`hang: no ${event} (${what}) within ${ms} ms`));
    }, ms);
    const cleanup = () => {
      clearTimeout(timer);
      emitter.off(event, onEvent);
      if (event !== 'error') emitter.off('error', onError);
    };
    emitter.once(event, onEvent);
    if (event !== 'error') emitter.once('error', onError);
  });
}

/**
 * Polls `probe` until it returns something other than undefined, for state
 * that has no event of its own (a status, a counter, a file). The first probe
 * runs at once; later ones back off from 10 ms to 250 ms. Fails after `ms`,
 * naming `what` it waited for.
 */
export async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, ms = HANG_MS): Promise<T> {
  const deadline = Date.now() + ms;
  let interval = 10;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
    interval = Math.min(250, interval * 2);
  }
}

/** `until` for a condition that has no value to return. */
export async function untilTrue(what: string, cond: () => Promise<boolean> | boolean, ms = HANG_MS): Promise<void> {
  await until(what, async () => ((await cond()) ? true : undefined), ms);
}

/**
 * A loopback TCP port where connecting is refused (ECONNREFUSED), for tests of refusal.
 * Port 1 (tcpmux, long unused) is below 1024: no port-0 listener and no outgoing
 * connection ever gets it, so unlike a port that was bound and closed again nothing can
 * take it in the meantime. Checked on every call: if something does listen there, this
 * throws (a machine to fix, not a flaky test).
 */
export async function refusedPort(host = '127.0.0.1'): Promise<number> {
  const port = 1;
  const refused = await connectTcp(port, host).then(
    (s) => {
      s.destroy();
      return false;
    },
    (err: NodeJS.ErrnoException) => err.code === 'ECONNREFUSED',
  );
  if (!refused) throw new Error(`refusedPort: something answers on ${host}:${port}; the refusal tests need it unused`);
  return port;
}
