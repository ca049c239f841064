/**
 * RelayLegStream reports a failed leg one turn of the event loop later. A
 * write can fail at once, in the very turn the peer TLS handshake over the
 * stream completes; reported at once, the error reached the caller's TLS
 * socket before node.ts had attached its handlers after awaiting the
 * handshake, and the agent died of an unhandled 'error' (agent/load.test.ts,
 * once relays passed aborts on as resets).
 */
import { EventEmitter } from 'node:events';
import type { TLSSocket } from 'node:tls';
import { RelayLegStream } from '../../../q2q/negotiate/relay-leg';
import { within } from './transport-suite';

const connectionReset = (): Error => Object.assign(new Error('write ECONNRESET'), { code: 'ECONNRESET' });

/** Just enough of a TLSSocket for RelayLegStream: writes fail at once when told to. */
class FailingLeg extends EventEmitter {
  destroyed = false;
  failWrites = false;
  write(_chunk: Buffer, callback: (err?: Error | null) => void): boolean {
    callback(this.failWrites ? connectionReset() : null);
    return true;
  }
  end(callback?: () => void): void {
    callback?.();
  }
  pause(): void {}
  resume(): void {}
  destroy(): void {
    this.destroyed = true;
  }
}

/** Lets the rest of this turn run: the ticks and promise jobs a failure in it would have queued. */
async function restOfTheTurn(): Promise<void> {
  for (let i = 0; i < 10; i++) {
    await new Promise<void>((resolve) => process.nextTick(resolve));
    await Promise.resolve();
  }
}

/** The stream's first 'error'; a hang bound names it when it never comes (it was emitted with no listener). */
function firstError(stream: RelayLegStream): Promise<Error & { code?: string }> {
  return within(new Promise((resolve) => stream.once('error', resolve)), 10_000, "the stream's 'error'");
}

it('a leg error reaches the stream as ConnectionLost, after the turn it happened in', async () => {
  const leg = new FailingLeg();
  const stream = new RelayLegStream(leg as unknown as TLSSocket);
  leg.emit('error', connectionReset());
  await restOfTheTurn();
  // A handler attached only now still hears of it; reported at once, 'error' had no listener.
  const err = await firstError(stream);
  expect({ code: err.code, message: err.message }).toEqual({ code: 'ConnectionLost', message: 'relay leg: ECONNRESET' });
  expect(leg.destroyed).toBe(true);
});

it('a write that fails at once reaches the stream as ConnectionLost, after the turn it happened in', async () => {
  const leg = new FailingLeg();
  leg.failWrites = true;
  const stream = new RelayLegStream(leg as unknown as TLSSocket);
  stream.write(Buffer.from('the last handshake record'));
  await restOfTheTurn();
  expect((await firstError(stream)).code).toBe('ConnectionLost');
  expect(leg.destroyed).toBe(true);
});

it('a leg that closes before its end reaches the stream as ConnectionLost, never as an end', async () => {
  const leg = new FailingLeg();
  const stream = new RelayLegStream(leg as unknown as TLSSocket);
  const ended = jest.fn();
  stream.on('end', ended);
  stream.resume();
  leg.emit('close');
  expect((await firstError(stream)).message).toBe('relay leg closed before it ended');
  expect(ended).not.toHaveBeenCalled();
});
