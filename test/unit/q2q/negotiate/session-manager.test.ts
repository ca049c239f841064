/**
 * Peer sessions on the in-memory network (test/helpers/memory-network.ts):
 * reuse (one ask and one ladder, however many connects), the allow list
 * checked per stream against the session's peer, a dead peer noticed by its
 * silence, fall forward from the relay with open streams staying where they
 * are, and the ways a session ends: idle, certificate expiry, revocation (a
 * destroyed socket), and a listener that exposes nothing to the peer any more.
 */
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { vertexError } from '../../../../q2q/errors';
import { MAX_EARLY_IN_FLIGHT, MAX_PREPARING, type PeerSession } from '../../../../q2q/negotiate/peer-session';
import { MemoryWorld, type MemoryNode } from '../../../helpers/memory-network';

function echo(stream: Duplex): void {
  stream.on('error', () => undefined);
  stream.pipe(stream);
}

/** Sends `data` and reads the echo to its end; returns what came back. */
async function echoed(world: MemoryWorld, stream: Duplex, data: Buffer): Promise<Buffer> {
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  const ended = new Promise((resolve) => stream.once('end', resolve));
  stream.end(data);
  await world.drive(ended);
  return Buffer.concat(chunks);
}

function closed(session: PeerSession): Promise<Error | null> {
  return new Promise((resolve) => session.once('close', resolve));
}

describe('peer sessions', () => {
  let world: MemoryWorld;
  let alice: MemoryNode;
  let bob: MemoryNode;

  beforeEach(async () => {
    world = new MemoryWorld();
    alice = await world.node('alice@a.test', '192.0.2.1');
    bob = await world.node('bob@b.test', '198.51.100.1');
    bob.expose('echo', { allow: ['alice@a.test'], onConnection: echo });
  });
  afterEach(() => world.stop());

  it('a second connection to the same peer opens a stream on the first one\'s session: no ask, no ladder', async () => {
    const first = await world.drive(alice.connect('bob@b.test:echo'));
    const second = await world.drive(alice.connect('bob@b.test:echo'));
    expect(world.broker.inbounds).toHaveLength(1);
    expect(world.network.dials).toHaveLength(1);
    expect(second.sessionId).toBe(first.sessionId);
    expect(alice.sessions.size).toBe(1);
    expect(bob.sessions.size).toBe(1);
    const data = randomBytes(300_000);
    const [a, b] = await Promise.all([echoed(world, first, data), echoed(world, second, data.subarray(7))]);
    expect(a.equals(data)).toBe(true);
    expect(b.equals(data.subarray(7))).toBe(true);
  });

  it('20 connects at once share one ask and one ladder', async () => {
    const streams = await world.drive(Promise.all(Array.from({ length: 20 }, () => alice.connect('bob@b.test:echo'))));
    expect(world.broker.inbounds).toHaveLength(1);
    expect(new Set(streams.map((s) => s.sessionId)).size).toBe(1);
    const results = await Promise.all(streams.map((s, i) => echoed(world, s, Buffer.from(`stream ${i}`))));
    expect(results.map((r) => r.toString())).toEqual(streams.map((_, i) => `stream ${i}`));
  });

  it('the listener checks the allow list for every stream against the session\'s peer', async () => {
    bob.expose('secret', { allow: ['carol@a.test'], onConnection: echo });
    // Something else stays open to alice, so the session itself stays (see the drain test below).
    bob.expose('other', { allow: ['alice@a.test'], onConnection: echo });
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    const session = alice.sessions.sessions()[0] as PeerSession;
    // A stream on the live session to a service that does not allow alice is refused there.
    await expect(world.drive(session.open('secret'))).rejects.toMatchObject({ code: 'Denied' });
    await expect(world.drive(session.open('nothing'))).rejects.toMatchObject({ code: 'NotExposed' });
    // bob narrows echo's allow list: alice's next stream, on the same session, is refused.
    bob.expose('echo', { allow: ['carol@a.test', 'alice@elsewhere.test'], onConnection: echo });
    await expect(world.drive(alice.connect('bob@b.test:echo'))).rejects.toMatchObject({ code: 'Denied' });
    expect(world.broker.inbounds).toHaveLength(1);
    // The stream opened before the change is not cut.
    expect((await echoed(world, stream, Buffer.from('still here'))).toString()).toBe('still here');
  });

  it('early connects: the first waits for the answer, later ones carry their bytes before it, a refusal sends the next back to waiting', async () => {
    const connectEarly = async (service: string) => {
      const stream = await world.drive(alice.sessions.connect({ to: 'bob@b.test', service, timeoutMs: 15_000, early: true }));
      stream.on('error', () => undefined);
      return stream;
    };
    bob.expose('other', { allow: ['alice@a.test'], onConnection: echo });
    const first = await connectEarly('echo');
    expect(first.early).toBeUndefined();
    const second = await connectEarly('echo');
    expect(second.early).toBe(true);
    expect(second.sessionId).toBe(first.sessionId);
    const data = randomBytes(300_000);
    expect((await echoed(world, second, data)).equals(data)).toBe(true);
    // Another service on the same session has not been answered yet: it waits.
    expect((await connectEarly('other')).early).toBeUndefined();
    // bob narrows echo's allow list: the next early stream is refused after the fact, with the code...
    bob.expose('echo', { allow: ['carol@a.test'], onConnection: echo });
    // (openEarly is what connect does first; called directly, the error listener is there before any I/O.)
    const third = alice.sessions.openEarly({ to: 'bob@b.test', service: 'echo', timeoutMs: 15_000, early: true });
    expect(third?.early).toBe(true);
    const refused = new Promise<Error>((resolve) => third?.once('error', resolve));
    third?.write('request bytes');
    await expect(world.drive(refused)).resolves.toMatchObject({ code: 'Denied' });
    // ...and the one after it waits for the answer again, so its caller gets the refusal itself.
    await expect(world.drive(alice.sessions.connect({ to: 'bob@b.test', service: 'echo', timeoutMs: 15_000, early: true }))).rejects.toMatchObject({ code: 'Denied' });
    // One ask per service (the device that serves it), all on the one session.
    expect(world.broker.inbounds.map((i) => i.service)).toEqual(['echo', 'other']);
    expect(alice.sessions.size).toBe(1);
  });

  it('early opens waiting for their answer are bounded per session; past the bound a connect waits for its answer', async () => {
    await world.drive(alice.connect('bob@b.test:echo'));
    const req = { to: 'bob@b.test', service: 'echo', timeoutMs: 15_000, early: true };
    const burst = Array.from({ length: MAX_EARLY_IN_FLIGHT + 10 }, () => alice.sessions.openEarly(req));
    const early = burst.filter((s): s is NonNullable<typeof s> => s !== null);
    expect(early).toHaveLength(MAX_EARLY_IN_FLIGHT);
    for (const s of early) s.on('error', () => undefined);
    // Answered, they no longer count.
    await world.drive(Promise.all(early.map((s) => echoed(world, s, Buffer.from('x')))));
    const again = alice.sessions.openEarly(req);
    again?.on('error', () => undefined);
    expect(again?.early).toBe(true);
  });

  /** bob exposes `slow`, whose prepare (an exposed target's local connect) finishes only when told to. */
  function exposeSlow() {
    const finishers: Array<() => void> = [];
    const slow = { prepares: 0, finishOne: () => finishers.shift()?.(), finishAll: () => finishers.splice(0).forEach((f) => f()) };
    bob.expose('slow', {
      allow: ['alice@a.test'],
      prepare: () => {
        slow.prepares += 1;
        return new Promise((resolve) => finishers.push(() => resolve(undefined)));
      },
      onConnection: echo,
    });
    return slow;
  }

  it('the listener prepares at most MAX_PREPARING of a peer\'s streams at once; the rest wait their turn and are checked again when it comes', async () => {
    const slow = exposeSlow();
    await world.drive(alice.connect('bob@b.test:echo'));
    const session = alice.sessions.sessions()[0] as PeerSession;
    const opens = Array.from({ length: MAX_PREPARING + 20 }, () => session.open('slow').then((s) => (s.on('error', () => undefined), 'accepted'), (err: { code?: string }) => err.code));
    await world.advance(50);
    expect(slow.prepares).toBe(MAX_PREPARING);
    // One finishes: the next starts.
    slow.finishOne();
    await world.advance(50);
    expect(slow.prepares).toBe(MAX_PREPARING + 1);
    // bob narrows the allow list: those still waiting are refused when their turn comes, unprepared.
    bob.expose('slow', { allow: ['carol@a.test'], prepare: () => Promise.resolve(undefined), onConnection: echo });
    slow.finishAll();
    const results = await world.drive(Promise.all(opens));
    expect(results.filter((r) => r === 'accepted')).toHaveLength(MAX_PREPARING + 1);
    expect(results.slice(MAX_PREPARING + 1)).toEqual(Array(19).fill('Denied'));
    expect(slow.prepares).toBe(MAX_PREPARING + 1);
  });

  it('a stream whose caller gave up while it waited for its turn is never prepared', async () => {
    const slow = exposeSlow();
    await world.drive(alice.connect('bob@b.test:echo'));
    const session = alice.sessions.sessions()[0] as PeerSession;
    const first = Array.from({ length: MAX_PREPARING }, () => session.open('slow', { timeoutMs: 60_000 }).then((s) => s.on('error', () => undefined)));
    const abandoned = Array.from({ length: 10 }, () => session.open('slow', { timeoutMs: 1000 }).then(() => 'accepted', (err: { code?: string }) => err.code));
    expect(await world.drive(Promise.all(abandoned))).toEqual(Array(10).fill('Timeout'));
    await world.advance(50);
    slow.finishAll();
    await world.drive(Promise.all(first));
    await world.advance(50);
    expect(slow.prepares).toBe(MAX_PREPARING);
    // Each was answered when its turn came: none is left counting against alice's stream cap.
    expect((bob.sessions.sessions()[0] as PeerSession).mux.unansweredIncoming).toBe(0);
  });

  it('the same check with the allow list ignored would let alice in (the test above can fail)', async () => {
    bob.expose('secret', { allow: ['*'], onConnection: echo });
    await world.drive(alice.connect('bob@b.test:echo'));
    const session = alice.sessions.sessions()[0] as PeerSession;
    const stream = await world.drive(session.open('secret'));
    stream.on('error', () => undefined);
    expect(stream.service).toBe('secret');
  });

  it('a dead peer is noticed within 10 s by both ends, and the next connect builds a new session', async () => {
    await world.drive(alice.connect('bob@b.test:echo'));
    const [mine] = alice.sessions.sessions();
    const [theirs] = bob.sessions.sessions();
    const gone = Promise.all([closed(mine as PeerSession), closed(theirs as PeerSession)]);
    world.network.cutOff(bob.host);
    const cutAt = world.clock.now();
    const errors = await world.drive(gone, 10_000, 10);
    expect(world.clock.now() - cutAt).toBeLessThanOrEqual(10_000);
    expect(errors).toEqual([expect.objectContaining({ code: 'ConnectionLost' }), expect.objectContaining({ code: 'ConnectionLost' })]);
    expect(alice.sessions.size).toBe(0);
    const again = await world.drive(alice.connect('bob@b.test:echo'));
    expect(world.broker.inbounds).toHaveLength(2);
    expect((await echoed(world, again, Buffer.from('back'))).toString()).toBe('back');
  });

  it('falls forward from the relay: new streams go direct, the open relay stream stays and keeps every byte', async () => {
    world.network.fault(bob.host, 'block');
    const onRelay = await world.drive(alice.connect('bob@b.test:echo'));
    expect(onRelay.route).toBe('relay');
    const relaySession = alice.sessions.sessions()[0] as PeerSession;
    // The relay stream stays open and busy across the switch.
    const chunks: Buffer[] = [];
    onRelay.on('data', (c: Buffer) => chunks.push(c));
    const before = randomBytes(200_000);
    onRelay.write(before);
    // The direct path comes back; fall forward tries after FALL_FORWARD_FIRST_MS.
    world.network.fault(bob.host, null);
    const moved = new Promise<PeerSession>((resolve) => alice.sessions.once('fallForward', (_from, to) => resolve(to)));
    const direct = await world.drive(moved, 30_000, 10);
    expect(direct.route).toBe('tcp');
    expect(relaySession.state).toBe('draining');
    const next = await world.drive(alice.connect('bob@b.test:echo'));
    expect(next.route).toBe('tcp');
    expect(next.sessionId).toBe(direct.id);
    // The relay stream finishes on the relay, byte-exact; then the relay session ends.
    const after = randomBytes(200_000);
    const ended = new Promise((resolve) => onRelay.once('end', resolve));
    const relayClosed = closed(relaySession);
    onRelay.end(after);
    await world.drive(ended);
    expect(Buffer.concat(chunks).equals(Buffer.concat([before, after]))).toBe(true);
    await world.drive(relayClosed);
    expect(alice.sessions.sessions().map((s) => s.route)).toEqual(['tcp']);
    expect((await echoed(world, next, Buffer.from('direct'))).toString()).toBe('direct');
  });

  it('a session that carries no stream for idleMs ends at both ends', async () => {
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    const session = alice.sessions.sessions()[0] as PeerSession;
    await echoed(world, stream, Buffer.from('x'));
    const ends = Promise.all([closed(session), closed(bob.sessions.sessions()[0] as PeerSession)]);
    await world.advance(299_000, 1_000);
    expect(session.state).toBe('open');
    await world.drive(ends, 5_000, 100);
    expect(alice.sessions.size + bob.sessions.size).toBe(0);
  });

  it('closes when a certificate expires, aborting its streams', async () => {
    world.stop();
    world = new MemoryWorld();
    alice = await world.node('alice@a.test', '192.0.2.1');
    bob = await world.node('bob@b.test', '198.51.100.1', { lifetimeMs: 30 * 60 * 1000 });
    bob.expose('echo', { allow: ['alice@a.test'], onConnection: echo });
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    const aborted = new Promise<Error>((resolve) => stream.once('error', resolve));
    const session = alice.sessions.sessions()[0] as PeerSession;
    const ended = closed(session);
    // bob's certificate lasts 30 minutes. Steps of 1 s, so that keepalives are answered between them.
    await world.advance(29 * 60 * 1000, 1_000);
    expect(session.state).toBe('open');
    await world.advance(2 * 60 * 1000, 1_000);
    await expect(ended).resolves.toMatchObject({ code: 'CertificateInvalid' });
    // The stream is aborted with the reason, never ended.
    await expect(aborted).resolves.toMatchObject({ code: 'CertificateInvalid' });
  });

  it('a revoked peer: destroying the session socket closes the session and aborts every stream at both ends', async () => {
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    const theirs = bob.sessions.sessions()[0] as PeerSession;
    const ended = jest.fn();
    stream.on('end', ended);
    const aborted = new Promise<Error>((resolve) => stream.once('error', resolve));
    const theirsClosed = closed(theirs);
    // What the revocation watch does with a revoked peer's session.
    (alice.sessions.sessions()[0] as PeerSession).socket.destroy(vertexError('CertificateRevoked', 'bob@b.test: certificate 1a2b revoked'));
    await expect(aborted).resolves.toMatchObject({ message: expect.stringContaining('revoked') });
    await world.drive(theirsClosed, 10_000);
    expect(ended).not.toHaveBeenCalled();
    expect(alice.sessions.size + bob.sessions.size).toBe(0);
  });

  it('drains when the listener exposes nothing the caller may use; new connects are refused', async () => {
    const stream = await world.drive(alice.connect('bob@b.test:echo'));
    const theirs = bob.sessions.sessions()[0] as PeerSession;
    bob.unexpose('echo');
    expect(theirs.state).toBe('draining');
    await expect(world.drive(alice.connect('bob@b.test:echo'))).rejects.toMatchObject({ code: 'NotExposed' });
    // The open stream finishes; then the session is gone at both ends.
    const gone = closed(theirs);
    expect((await echoed(world, stream, Buffer.from('last'))).toString()).toBe('last');
    await world.drive(gone, 5_000);
    expect(alice.sessions.size + bob.sessions.size).toBe(0);
  });

  it('either side opens streams: bob reaches a service of alice over the session alice set up', async () => {
    alice.expose('back', { allow: ['bob@b.test'], onConnection: (s) => { s.on('error', () => undefined); s.end('hello bob'); } });
    await world.drive(alice.connect('bob@b.test:echo'));
    const theirs = bob.sessions.sessions()[0] as PeerSession;
    const stream = await world.drive(theirs.open('back'));
    stream.on('error', () => undefined);
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    await world.drive(new Promise((resolve) => stream.once('end', resolve)));
    expect(Buffer.concat(chunks).toString()).toBe('hello bob');
  });

  it('a node replaced for its device drains only the sessions peers set up with it (drainAll by role)', async () => {
    await world.drive(alice.connect('bob@b.test:echo'));
    const carol = await world.node('carol@b.test', '198.51.100.2');
    carol.expose('echo', { allow: ['bob@b.test'], onConnection: echo });
    await world.drive(bob.connect('carol@b.test:echo'));
    expect(bob.sessions.list().map((x) => `${x.role} ${x.peer}`).sort()).toEqual(['caller carol@b.test', 'listener alice@a.test']);
    bob.sessions.drainAll('Offline', 'bob@b.test was replaced', 'listener');
    const states = Object.fromEntries(bob.sessions.list().map((x) => [x.role, x.state]));
    expect(states).toEqual({ caller: 'open', listener: 'draining' });
    // Alice's next connect cannot use the drained session: it asks again.
    await world.drive(alice.connect('bob@b.test:echo'));
    expect(world.broker.inbounds.filter((a) => a.to === 'bob@b.test')).toHaveLength(2);
  });

  it('shutdown ends a session without streams cleanly and aborts one with streams', async () => {
    const carol = await world.node('carol@b.test', '198.51.100.2');
    carol.expose('echo', { allow: ['alice@a.test'], onConnection: echo });
    const open = await world.drive(alice.connect('bob@b.test:echo'));
    const aborted = new Promise<Error | null>((resolve) => open.once('close', () => resolve(open.errored)));
    const idle = await world.drive(alice.connect('carol@b.test:echo'));
    await echoed(world, idle, Buffer.from('done'));
    const carolSide = carol.sessions.sessions()[0] as PeerSession;
    const bobSide = bob.sessions.sessions()[0] as PeerSession;
    const [carolClosed, bobClosed] = [closed(carolSide), closed(bobSide)];
    const done = alice.sessions.shutdown(60_000);
    // The idle session ends cleanly at the far end too; the busy one is aborted there.
    expect(await world.drive(carolClosed, 10_000)).toBeFalsy();
    expect(await world.drive(bobClosed, 10_000)).toBeTruthy();
    expect(await world.drive(aborted, 10_000)).toBeTruthy();
    await world.drive(done, 10_000);
    expect(alice.sessions.size).toBe(0);
    await expect(world.drive(alice.connect('bob@b.test:echo'))).rejects.toMatchObject({ code: 'ConnectionLost' });
  });
});

