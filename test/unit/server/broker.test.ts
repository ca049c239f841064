/**
 * The broker's presence with several devices per address (README "Several
 * machines per user", q2q/control/protocol.ts "Devices"): every device's
 * session and services are kept, a name reaches the device that exposes it,
 * an ambiguous name reaches the first device by name, and devices hear about
 * each other (listen answer, presence push) and about being replaced.
 *
 * The sessions are real AmpPeers wired back to back, so every push and
 * forwarded inbound crosses the AMP codec.
 */
import { randomBytes } from 'node:crypto';
import { Broker } from '../../../server/broker';
import { Relay } from '../../../server/relay';
import { COMMANDS, MAX_DEVICES_PER_ADDRESS, type Conflict } from '../../../q2q/control/protocol';
import { isVertexError } from '../../../q2q/errors';
import { AmpPeer, type AmpArgs } from '../../../q2q/proto/amp-peer';
import { silentLogger } from '../../../q2q/util/log';

const BOB = 'bob@b.test';
const CALLER = { address: 'alice@a.test', certPem: 'alice-cert' };

/** One agent session: the server's end (given to the broker) and what the agent's end received. */
interface Session {
  server: AmpPeer;
  presence: AmpArgs[];
  replaced: AmpArgs[];
  inbound: AmpArgs[];
}

function session(): Session {
  const s: Partial<Session> = { presence: [], replaced: [], inbound: [] };
  let agent: AmpPeer | undefined;
  s.server = new AmpPeer({ send: (bytes) => agent?.receive(bytes) });
  agent = new AmpPeer({ send: (bytes) => s.server?.receive(bytes) });
  agent.handle(COMMANDS.presence, (args) => void s.presence!.push(args));
  agent.handle(COMMANDS.replaced, (args) => void s.replaced!.push(args));
  agent.handle(COMMANDS.inbound, (args) => {
    s.inbound!.push(args);
    return { token: randomBytes(16).toString('hex'), candidates: '[]' };
  });
  return s as Session;
}

/** Lets the pushes (fire-and-forget calls) and their answers cross. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

function makeBroker(): Broker {
  return new Broker({ domains: ['b.test'], relay: new Relay({ enabled: true, maxStreams: 10, perUserRate: 0, log: silentLogger }), log: silentLogger });
}

function listen(broker: Broker, s: Session, device: string | undefined, services: string[], remote = '192.0.2.1:1000'): AmpArgs {
  return broker.listen(BOB, s.server, `cert-of-${device ?? 'unnamed'}`, { services: JSON.stringify(services), ...(device !== undefined && { device }) }, remote) as AmpArgs; // synchronous without other nodes
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (err) {
    return isVertexError(err) ? err.code : `untyped: ${String(err)}`;
  }
}

describe('broker: several devices per address', () => {
  it('keeps both devices online, and each name reaches the device that exposes it', async () => {
    const broker = makeBroker();
    const laptop = session();
    const home = session();
    listen(broker, laptop, 'laptop', ['ssh']);
    listen(broker, home, 'homeserver', ['web']);
    expect(broker.devicesOf(BOB)).toEqual(['homeserver', 'laptop']);
    expect(broker.onlineCount).toBe(2);

    const ssh = await broker.inbound(CALLER, { to: BOB, service: 'ssh' });
    expect(ssh).toMatchObject({ device: 'laptop', certificate: 'cert-of-laptop' });
    const web = await broker.inbound(CALLER, { to: BOB, service: 'web', from_device: 'phone' });
    expect(web).toMatchObject({ device: 'homeserver', certificate: 'cert-of-homeserver' });
    expect(laptop.inbound).toHaveLength(1);
    expect(home.inbound).toEqual([expect.objectContaining({ from: 'alice@a.test', from_device: 'phone', service: 'web' })]);
    expect(laptop.inbound[0]?.from_device).toBeUndefined();
  });

  it('an ambiguous name reaches the first device by name; a named device is reached as named', async () => {
    const broker = makeBroker();
    const laptop = session();
    const home = session();
    listen(broker, laptop, 'laptop', ['ssh']);
    listen(broker, home, 'homeserver', ['ssh']);
    expect((await broker.inbound(CALLER, { to: BOB, service: 'ssh' })).device).toBe('homeserver');
    expect((await broker.inbound(CALLER, { to: BOB, service: 'ssh', device: 'Laptop' })).device).toBe('laptop');
    expect((await broker.inbound(CALLER, { to: BOB, service: 'ssh', device: 'homeserver' })).device).toBe('homeserver');
    expect(laptop.inbound).toHaveLength(1);
    expect(home.inbound).toHaveLength(2);
    // The same rule whatever order they came online in.
    const other = makeBroker();
    listen(other, session(), 'homeserver', ['ssh']);
    listen(other, session(), 'laptop', ['ssh']);
    expect((await other.inbound(CALLER, { to: BOB, service: 'ssh' })).device).toBe('homeserver');
  });

  it('refuses with distinct codes: a device not online, a device without the service, nobody with it', async () => {
    const broker = makeBroker();
    expect(await code(broker.inbound(CALLER, { to: BOB, service: 'ssh' }))).toBe('Offline');
    listen(broker, session(), 'laptop', ['ssh']);
    listen(broker, session(), 'homeserver', ['web']);
    expect(await code(broker.inbound(CALLER, { to: BOB, service: 'ssh', device: 'phone' }))).toBe('Offline');
    expect(await code(broker.inbound(CALLER, { to: BOB, service: 'web', device: 'laptop' }))).toBe('NotExposed');
    expect(await code(broker.inbound(CALLER, { to: BOB, service: 'ftp' }))).toBe('NotExposed');
    expect(await code(broker.inbound(CALLER, { to: BOB, service: 'ssh', device: 'lap--top' }))).toBe('InvalidName');
    await expect(broker.inbound(CALLER, { to: BOB, service: 'ssh', device: 'phone' })).rejects.toThrow('bob+phone@b.test is not online');
  });

  it('tells each device which devices are online and which shared names reach whom, in the answer and by push', async () => {
    const broker = makeBroker();
    const laptop = session();
    const home = session();
    const first = listen(broker, laptop, 'laptop', ['ssh', 'web']);
    expect(first).toEqual({ device: 'laptop', devices: '["laptop"]', conflicts: '[]' });
    const second = listen(broker, home, 'homeserver', ['ssh']);
    const shared: Conflict = { service: 'ssh', devices: ['homeserver', 'laptop'], chosen: 'homeserver' };
    expect(JSON.parse(second.devices ?? '')).toEqual(['homeserver', 'laptop']);
    expect(JSON.parse(second.conflicts ?? '')).toEqual([shared]);
    await settle();
    // The laptop hears of it without asking; the newcomer got it in its answer instead.
    expect(laptop.presence.map((p) => [JSON.parse(p.devices ?? ''), JSON.parse(p.conflicts ?? '')])).toEqual([[['homeserver', 'laptop'], [shared]]]);
    expect(home.presence).toEqual([]);

    // The home server stops exposing ssh: the conflict is gone, for the laptop too.
    listen(broker, home, 'homeserver', ['backup']);
    await settle();
    expect(JSON.parse(laptop.presence.at(-1)?.conflicts ?? '')).toEqual([]);
    // A change that alters nothing the laptop sees is not pushed.
    const before = laptop.presence.length;
    listen(broker, home, 'homeserver', ['backup', 'music']);
    await settle();
    expect(laptop.presence).toHaveLength(before);

    // The home server goes offline: the laptop is alone again.
    broker.drop(BOB, home.server);
    await settle();
    expect(JSON.parse(laptop.presence.at(-1)?.devices ?? '')).toEqual(['laptop']);
    expect(broker.devicesOf(BOB)).toEqual(['laptop']);
  });

  it('the same device from a new session replaces the old one, which is told; dropping the old one then changes nothing', async () => {
    const broker = makeBroker();
    const old = session();
    const next = session();
    listen(broker, old, 'laptop', ['ssh'], '192.0.2.1:1000');
    const answer = listen(broker, next, 'laptop', ['ssh'], '192.0.2.2:2000');
    expect(answer.replaced).toBe('192.0.2.1:1000');
    await settle();
    expect(old.replaced).toEqual([{ device: 'laptop', by: '192.0.2.2:2000' }]);
    expect(broker.devicesOf(BOB)).toEqual(['laptop']);
    broker.drop(BOB, old.server);
    expect(broker.devicesOf(BOB)).toEqual(['laptop']);
    await broker.inbound(CALLER, { to: BOB, service: 'ssh' });
    expect(next.inbound).toHaveLength(1);
    expect(old.inbound).toHaveLength(0);
  });

  it('a replaced node asking with takeover "0" is refused while the device is held, and gets it back once free', async () => {
    const broker = makeBroker();
    const old = session();
    const next = session();
    listen(broker, old, 'laptop', ['ssh'], '192.0.2.1:1000');
    listen(broker, next, 'laptop', ['ssh'], '192.0.2.2:2000');
    const waiting = session();
    const ask = () => broker.listen(BOB, waiting.server, 'cert-of-old', { services: '["ssh"]', device: 'laptop', takeover: '0' }, '192.0.2.1:1001');
    expect(ask).toThrow('listen bob+laptop@b.test: a session from 192.0.2.2:2000 listens as this device');
    await settle();
    expect(next.replaced).toEqual([]);
    await broker.inbound(CALLER, { to: BOB, service: 'ssh' });
    expect(next.inbound).toHaveLength(1);
    broker.drop(BOB, next.server);
    expect(ask()).toMatchObject({ device: 'laptop' });
    expect(ask()).not.toHaveProperty('replaced');
    await broker.inbound(CALLER, { to: BOB, service: 'ssh' });
    expect(waiting.inbound).toHaveLength(1);
  });

  it('a session is one device: listening under a new name gives up the old one', () => {
    const broker = makeBroker();
    const s = session();
    listen(broker, s, 'laptop', ['ssh']);
    listen(broker, s, 'notebook', ['ssh']);
    expect(broker.devicesOf(BOB)).toEqual(['notebook']);
  });

  it('a listen without a device is the unnamed device "default", and one bad name is refused', () => {
    const broker = makeBroker();
    expect(listen(broker, session(), undefined, ['ssh']).device).toBe('default');
    expect(() => listen(broker, session(), 'Lap Top', ['ssh'])).toThrow(/invalid device/);
  });

  it(`refuses device ${MAX_DEVICES_PER_ADDRESS + 1} of one address, and takes a known device's name again`, () => {
    const broker = makeBroker();
    for (let i = 0; i < MAX_DEVICES_PER_ADDRESS; i++) listen(broker, session(), `d${i}`, ['ssh']);
    let refused: unknown;
    try {
      listen(broker, session(), 'one-more', ['ssh']);
    } catch (err) {
      refused = err;
    }
    expect(isVertexError(refused, 'NotAllowed')).toBe(true);
    expect((refused as Error).message).toContain(`already has ${MAX_DEVICES_PER_ADDRESS} devices online`);
    expect(listen(broker, session(), 'd0', ['ssh']).device).toBe('d0');
  });
});

describe('broker: one of several nodes', () => {
  it('applies one session\'s listens in the order sent, even when the node directory answers the first one last', async () => {
    // The NAT lab on PostgreSQL caught this: an agent exposing xfer and then ssh at start sent
    // listen [xfer] and listen [xfer, ssh] back to back; the first one's directory lookup came
    // back last, so the server kept [xfer] and answered "bob@b.test does not expose ssh".
    const broker = makeBroker();
    const lookups: Array<() => void> = [];
    const puts: string[][] = [];
    let hold = true;
    broker.attachNodes({
      put: async (_address, _device, services) => void puts.push([...services]),
      remove: () => undefined,
      devicesElsewhere: () => (hold ? new Promise((resolve) => lookups.push(() => resolve([]))) : Promise.resolve([])),
      forwardInbound: () => Promise.reject(new Error('no other node here')),
      replaced: () => undefined,
      relayReady: () => undefined,
    });
    const s = session();
    const args = (services: string[]) => ({ services: JSON.stringify(services), device: 'vm' });
    const both = Promise.all([
      broker.listen(BOB, s.server, 'cert', args(['xfer']), '192.0.2.1:1000'),
      broker.listen(BOB, s.server, 'cert', args(['xfer', 'ssh']), '192.0.2.1:1000'),
    ]);
    let done = false;
    void both.then(() => (done = true));
    await settle();
    // Answer the waiting lookups newest first, as a busy store may, until both listens are in.
    for (let i = 0; i < 100 && !done; i++) {
      lookups.pop()?.();
      await settle();
    }
    hold = false;
    await both;
    expect(puts).toEqual([['xfer'], ['xfer', 'ssh']]);
    expect((await broker.inbound(CALLER, { to: BOB, service: 'ssh' })).device).toBe('vm');
  });
});
