/**
 * Issue 11, "what must hold" 1 and 2: revocation and removal reach live
 * sessions, and another domain's revocation takes effect here within 60 s.
 *
 * Real `vertex server` processes; the admin commands (`vertex server revoke`,
 * `remove-user`) run as separate processes on the same data directory, so
 * the running server learns of them only through the store's change feed.
 * Agents are real Q2Q nodes; requests no CLI can express (a renew, an inbound
 * on a session opened before the revoke) are raw AMP boxes over TLS.
 *
 * Each property also runs against a server with the forbidden behaviour
 * injected (VERTEX_TEST_FAULT, honoured only under NODE_ENV=test:
 * server/test-faults.ts), to show that the test can fail.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { HomeStore } from '../../../agent/home-store';
import { listenQ2Q, connectQ2Q, type Q2QNode } from '../../../q2q';
import { COMMANDS } from '../../../q2q/control/protocol';
import { createServerResolver, type ServerEndpoint } from '../../../q2q/control/discovery';
import { openServerConnection, type ServerConnection } from '../../../q2q/control/server-connection';
import { createCsr, describeCertificate, generateKeyPair } from '../../../q2q/identity';
import { openRelayLeg } from '../../../q2q/negotiate/relay-leg';
import { dialRelayLeg, legRequest } from '../../../q2q/transport/relay-leg';
import { encodeBox } from '../../../q2q/wire/amp';
import type { Identity, Q2QOptions } from '../../../q2q/negotiate/types';
import { runVertex, startServer, stopAll, tempDir, type ServerHandle } from '../../helpers/cli';
import { echo, PASSWORD } from '../../helpers/q2q-world';
import { untilTrue } from '../../helpers/net';

jest.setTimeout(180_000);

/** The spec's bound for live sessions (issue 11, item 1). */
const LIVE_BOUND_MS = 5_000;
/** The spec's bound across domains (issue 11, item 2). */
const FOREIGN_BOUND_MS = 60_000;

interface User {
  identity: Identity;
  home: HomeStore;
  serial: string;
  options: (extra?: Partial<Q2QOptions>) => Q2QOptions;
}

interface Site {
  servers: Record<string, ServerHandle>;
  user: (address: string) => Promise<User>;
  control: (user: User, domain: string) => Promise<ServerConnection>;
  admin: (domain: string, args: string[]) => Promise<void>;
}

const cleanup: Array<() => unknown> = [];

afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
  await stopAll();
});

/**
 * Servers for `domains` (each able to find the others), with `faults` per
 * domain in VERTEX_TEST_FAULT and extra server.yaml text per domain.
 */
async function site(domains: string[], faults: Record<string, string> = {}, yaml: Record<string, string> = {}): Promise<Site> {
  const servers: Record<string, ServerHandle> = {};
  const endpoints = new Map<string, ServerEndpoint>();
  // Last domain first: each server is told where the ones started before it are, so
  // a.test (first) can reach b.test's server to check b.test's certificates.
  for (const domain of [...domains].reverse()) {
    const dataDir = tempDir('server');
    const file = path.join(path.dirname(dataDir), `${domain}.yaml`);
    fs.writeFileSync(file, `version: 1\ndomains: [${domain}]\nregistration: open\n${yaml[domain] ?? ''}`);
    const resolve = [...endpoints].flatMap(([d, e]) => ['--resolve', `${d}=127.0.0.1:${e.port}`]);
    servers[domain] = await startServer([], {
      dataDir, extraArgs: ['--config', file, ...resolve], env: { VERTEX_TEST_FAULT: faults[domain] ?? '' },
    });
    endpoints.set(domain, { host: '127.0.0.1', port: servers[domain].port });
    cleanup.push(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  }
  const resolveArgs = [...endpoints].flatMap(([d, e]) => ['--resolve', `${d}=127.0.0.1:${e.port}`]);
  return {
    servers,
    user: async (address) => {
      const dir = tempDir('home');
      cleanup.push(() => fs.rmSync(dir, { recursive: true, force: true }));
      const result = await runVertex([...resolveArgs, '--home', dir, 'register', address, '--password-stdin'], { input: PASSWORD });
      if (result.code !== 0) throw new Error(`register ${address}: ${result.stderr}`);
      const home = new HomeStore(dir);
      const identity = home.loadIdentity(address);
      return {
        identity, home, serial: describeCertificate(identity.certPem).serial,
        options: (extra = {}) => ({
          resolve: createServerResolver({ overrides: endpoints }),
          trust: home, peerListen: { host: '127.0.0.1', port: 0 }, relayDelayMs: 300, ...extra,
        }),
      };
    },
    control: async (user, domain) => {
      const connection = await openServerConnection({
        domain, resolve: createServerResolver({ overrides: endpoints }), trust: user.home,
        credentials: { keyPem: user.identity.keyPem, certPem: user.identity.certPem },
      });
      cleanup.push(() => connection.close());
      return connection;
    },
    admin: async (domain, args) => {
      const result = await runVertex(['server', ...args, '--data', (servers[domain] as ServerHandle).dataDir]);
      if (result.code !== 0) throw new Error(`vertex server ${args.join(' ')}: ${result.stderr}`);
    },
  };
}

async function node(user: User, services: Parameters<typeof listenQ2Q>[1] = {}): Promise<Q2QNode> {
  const n = await listenQ2Q(user.identity, services, user.options({ routes: ['tcp'] }));
  cleanup.push(() => n.stop());
  return n;
}

/** Destroyed at cleanup before the nodes stop (a node's stop waits for its open peer streams). */
function keep<T extends Duplex>(stream: T): T {
  stream.on('error', () => undefined);
  cleanup.push(() => stream.destroy());
  return stream;
}

/** Resolves with the time (Date.now()) it closed. */
function closedAt(target: { once(event: 'close', f: () => void): unknown }): Promise<number> {
  return new Promise((resolve) => target.once('close', () => resolve(Date.now())));
}

/**
 * How long after the revocation each close came. The revocation is committed
 * somewhere between the admin command's start and its exit; the bound is
 * checked from its exit (the CLI's own start-up, seconds on a busy machine, is
 * not the server's delay), and the time from its start is reported too.
 */
function delays(closes: number[], admin: { start: number; done: number }): { fromDone: number[]; fromStart: number[] } {
  return { fromDone: closes.map((t) => t - admin.done), fromStart: closes.map((t) => t - admin.start) };
}

function isOpen(stream: Duplex): boolean {
  return !stream.destroyed;
}

/** An echo round trip: proves the stream still carries data. */
async function roundTrip(stream: Duplex): Promise<boolean> {
  const probe = Buffer.from(`ping ${Math.random()}`);
  return new Promise((resolve) => {
    const onData = (chunk: Buffer) => { if (chunk.includes(probe)) { stream.off('data', onData); resolve(true); } };
    stream.on('data', onData);
    stream.write(probe);
    setTimeout(() => resolve(false), 5_000).unref();
  });
}

async function errorCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

/** A serial as `openssl x509 -serial` or a certificate viewer shows it: 00:3F:9A:... */
function opensslStyle(serial: string): string {
  const hex = `00${serial.length % 2 ? '0' : ''}${serial}`.toUpperCase();
  return hex.match(/../g)!.join(':');
}

async function newCsr(address: string): Promise<string> {
  return createCsr(address, (await generateKeyPair()).privateKeyPem);
}

describe('requests on a session opened before the revoke', () => {
  // The change feed is off in both runs, so the session stays open and only the
  // per-request check stands between it and a fresh certificate.
  it.each([
    ['checked when made', 'no-change-feed', false],
    ['forbidden: not checked (today\'s bug)', 'no-change-feed,no-request-check', true],
  ])('renew, inbound and listen after revoke: %s', async (_name, fault, forbidden) => {
    const s = await site(['a.test'], { 'a.test': fault });
    const mallory = await s.user('mallory@a.test');
    const bob = await s.user('bob@a.test');
    await node(bob, { svc: { allow: ['*'], onConnection: echo } });
    const session = await s.control(mallory, 'a.test');
    // Written as openssl prints it (upper case, colons, a leading 00): the CLI takes that too.
    await s.admin('a.test', ['revoke', opensslStyle(mallory.serial)]);

    const renew = session.call(COMMANDS.renew, { csr: await newCsr('mallory@a.test') });
    const inbound = session.call(COMMANDS.inbound, { to: 'bob@a.test', service: 'svc', candidates: '[]', routes: '["tcp"]' });
    const listen = session.call(COMMANDS.listen, { services: '["x"]', device: 'evil' });
    if (forbidden) {
      const answer = await renew;
      // The bug as issue 11 found it: a revoked certificate traded for a fresh, valid one.
      expect(describeCertificate(answer.certificate ?? '').q2qAddress).toBe('mallory@a.test');
      expect(await errorCode(inbound)).toBe('ok');
      expect(await errorCode(listen)).toBe('ok');
    } else {
      expect(await errorCode(renew)).toBe('CertificateRevoked');
      expect(await errorCode(inbound)).toBe('CertificateRevoked');
      expect(await errorCode(listen)).toBe('CertificateRevoked');
    }
  });
});

describe('revoke and remove-user reach live sessions', () => {
  // holder 'agent': mallory's own agent is online and is told too. 'bare': mallory connects
  // without an agent (no home session takes the push, as with a holder who ignores it), so
  // only bob's agent, told by the server, can close the stream.
  it.each([
    ['revoke', '', 'agent', false],
    ['revoke', 'no-change-feed', 'agent', true],
    ['remove-user', '', 'agent', false],
    ['remove-user', 'no-change-feed', 'agent', true],
    ['revoke', '', 'bare', false],
    ['revoke', 'no-change-feed', 'bare', true],
  ])('%s closes the holder\'s control sessions within 5 s and its peer streams (fault: "%s", holder: %s)', async (command, fault, holder, forbidden) => {
    const s = await site(['a.test'], { 'a.test': fault });
    const mallory = await s.user('mallory@a.test');
    const bob = await s.user('bob@a.test');
    const accepted: Duplex[] = [];
    await node(bob, { svc: { allow: ['*'], onConnection: (st) => { accepted.push(st); echo(st); } } });
    // mallory's agent: online at its home server, with a stream open to bob's service.
    const stream = keep(holder === 'agent'
      ? await (await node(mallory, { 'mallory-svc': { allow: ['*'], onConnection: echo } })).connect('bob@a.test:svc')
      : await connectQ2Q(mallory.identity, 'bob@a.test:svc', mallory.options({ routes: ['tcp'] })));
    expect(await roundTrip(stream)).toBe(true);
    await untilTrue('bob accepted', () => accepted.length === 1);
    const bobSide = keep(accepted[0] as Duplex);
    const raw = await s.control(mallory, 'a.test');

    const closes = Promise.all([closedAt(raw.socket), closedAt(stream), closedAt(bobSide)]);
    const start = Date.now();
    await s.admin('a.test', command === 'revoke' ? ['revoke', mallory.serial] : ['remove-user', 'mallory@a.test']);
    const done = Date.now();

    if (forbidden) {
      // Well past the bound: everything is still open and working.
      await new Promise((r) => setTimeout(r, LIVE_BOUND_MS + 2_000));
      expect(raw.socket.destroyed).toBe(false);
      expect(isOpen(stream) && isOpen(bobSide)).toBe(true);
      expect(await roundTrip(stream)).toBe(true);
      return;
    }
    const { fromDone, fromStart } = delays(await closes, { start, done });
    process.stderr.write(`${command}, holder ${holder} (control session, mallory's stream, bob's side): closed ${fromDone.join('/')} ms after the command exited, ${fromStart.join('/')} ms after it started\n`);
    for (const ms of fromDone) expect(ms).toBeLessThan(LIVE_BOUND_MS);
    // And nothing new: a fresh connection with that certificate is refused at once.
    expect(await errorCode(s.control(mallory, 'a.test'))).toMatch(/CertificateRevoked|NoSuchUser/);
  });
});

describe('relay legs', () => {
  // bob's side is raw AMP, so the test sees the server's relay-ready push itself.
  it.each([
    ['closed by the revoke within 5 s, and refused after it', '', false],
    ['forbidden: the revoke never reaches the relay (no change feed)', 'no-change-feed', true],
  ])('relay-ready once the caller\'s leg is in; legs %s', async (_name, fault, forbidden) => {
    const s = await site(['a.test'], { 'a.test': fault });
    const mallory = await s.user('mallory@a.test');
    const bob = await s.user('bob@a.test');
    const bobControl = await s.control(bob, 'a.test');
    const token = randomBytes(16).toString('hex');
    // A second inbound's token, still pending when the revoke runs: a leg is opened with its token
    // before its certificate can be checked (q2q/transport/relay-leg.ts), so a used token says nothing.
    const later = randomBytes(16).toString('hex');
    const tokens = [token, later];
    const ready: string[] = [];
    bobControl.peer.handle(COMMANDS.inbound, () => ({ token: tokens.shift() ?? '', candidates: '[]' }));
    bobControl.peer.handle(COMMANDS.relayReady, (args) => {
      ready.push(args.token ?? '');
      return {};
    });
    await bobControl.call(COMMANDS.listen, { services: '["svc"]', device: 'raw' });
    const malloryControl = await s.control(mallory, 'a.test');
    const answer = await malloryControl.call(COMMANDS.inbound, { to: 'bob@a.test', service: 'svc', candidates: '[]', routes: '["relay"]' });
    expect(answer.token).toBe(token);
    expect(answer.relay).toBe('1');

    const leg = (user: User, withToken = token) => openRelayLeg({ domain: 'a.test', token: withToken, identity: user.identity, resolve: user.options().resolve });
    const malloryLegP = leg(mallory);
    // The listener hears of the token only once the caller's leg is at the server.
    await untilTrue('relay-ready reached bob', () => ready.length > 0);
    expect(ready).toEqual([token]);
    const bobLeg = keep(await leg(bob));
    bobLeg.pipe(bobLeg);
    const malloryLeg = keep(await malloryLegP);
    expect(await roundTrip(malloryLeg)).toBe(true);

    expect((await malloryControl.call(COMMANDS.inbound, { to: 'bob@a.test', service: 'svc', candidates: '[]', routes: '["relay"]' })).token).toBe(later);

    const closes = Promise.all([closedAt(malloryLeg), closedAt(bobLeg)]);
    const start = Date.now();
    await s.admin('a.test', ['revoke', mallory.serial]);
    const done = Date.now();
    if (forbidden) {
      await new Promise((r) => setTimeout(r, LIVE_BOUND_MS + 2_000));
      expect(isOpen(malloryLeg) && isOpen(bobLeg)).toBe(true);
      expect(await roundTrip(malloryLeg)).toBe(true);
      return;
    }
    const { fromDone, fromStart } = delays(await closes, { start, done });
    process.stderr.write(`relay (mallory's leg, bob's leg): closed ${fromDone.join('/')} ms after revoke exited, ${fromStart.join('/')} ms after it started\n`);
    for (const ms of fromDone) expect(ms).toBeLessThan(LIVE_BOUND_MS);
    expect(await errorCode(leg(mallory, later))).toBe('CertificateRevoked');
  });
});

describe('relay legs: who may open one', () => {
  // Legs are plain TCP (q2q/transport/relay-leg.ts): the request must be signed with the key of
  // the certificate it presents, prove the token (HMAC) and carry a fresh nonce. With the fault
  // relay-no-leg-proof the server checks none of that, and each forged leg gets in.
  it.each([
    ['each forged leg is refused', '', false],
    ['forbidden: the server takes legs unchecked', 'relay-no-leg-proof', true],
  ])('%s', async (_name, fault, forbidden) => {
    const s = await site(['a.test'], { 'a.test': fault });
    const mallory = await s.user('mallory@a.test');
    const bob = await s.user('bob@a.test');
    const bobControl = await s.control(bob, 'a.test');
    bobControl.peer.handle(COMMANDS.inbound, () => ({ token: randomBytes(16).toString('hex'), candidates: '[]' }));
    let callerLegsIn = 0;
    bobControl.peer.handle(COMMANDS.relayReady, () => {
      callerLegsIn += 1;
      return {};
    });
    await bobControl.call(COMMANDS.listen, { services: '["svc"]', device: 'raw' });
    const malloryControl = await s.control(mallory, 'a.test');
    const inbound = async (): Promise<string> => {
      const answer = await malloryControl.call(COMMANDS.inbound, { to: 'bob@a.test', service: 'svc', candidates: '[]', routes: '["relay"]' });
      return answer.token ?? '';
    };
    const endpoint = { host: '127.0.0.1', port: (s.servers['a.test'] as ServerHandle).port };
    const dial = (request: Record<string, string>) => dialRelayLeg(endpoint, request, { what: 'test leg', timeoutMs: 10_000 }).then(({ socket }) => keep(socket));
    const genuineLeg = (user: User, token: string) => openRelayLeg({ domain: 'a.test', token, identity: user.identity, resolve: user.options().resolve }).then(keep);
    /**
     * 'ok' when `leg` was taken (it pairs once `partner` opens the other side), else the
     * code it was refused with. A refusal comes at once; a leg taken waits for its partner.
     */
    const outcomeOf = async (leg: Promise<Duplex>, partner: () => Promise<Duplex>): Promise<string> => {
      const outcome = errorCode(leg.then((l) => l.destroy()));
      const early = await Promise.race([outcome, new Promise<null>((r) => setTimeout(() => r(null), 1_000))]);
      if (early !== null) return early;
      (await partner()).destroy();
      return outcome;
    };

    // 1. mallory's certificate and signature, but a token proof made without the token.
    const t1 = await inbound();
    const noProof = await outcomeOf(dial(legRequest(mallory.identity, 'a.test', t1, randomBytes(16).toString('hex'))), () => genuineLeg(bob, t1));

    // 2. A genuine request copied off the wire, sent again once its own connection broke (a reset
    // frees its side of the token at once).
    const t2 = await inbound();
    const genuine = legRequest(mallory.identity, 'a.test', t2);
    const before = callerLegsIn;
    const original = keep(net.connect({ host: endpoint.host, port: endpoint.port }));
    original.write(encodeBox(genuine));
    await untilTrue("mallory's genuine leg is in", () => callerLegsIn > before);
    original.resetAndDestroy();
    // Until the server has seen the reset, a copy is refused for another reason (that side is taken).
    let replayed = '';
    for (let i = 0; i < 50 && replayed === ''; i++) {
      const copy = dial(genuine);
      copy.catch(() => undefined);
      const refusal = await Promise.race([copy.then(() => null, (err: Error) => err), new Promise<null>((r) => setTimeout(() => r(null), 1_000))]);
      if (refusal && /already connected/.test(refusal.message)) continue;
      replayed = refusal ? ((refusal as Error & { code?: string }).code ?? refusal.message) : await outcomeOf(copy, () => genuineLeg(bob, t2));
    }

    // 3. bob's certificate, signed with mallory's key: a leg posing as the listener's.
    const t3 = await inbound();
    const posing = legRequest({ keyPem: mallory.identity.keyPem, certPem: bob.identity.certPem }, 'a.test', t3);
    const otherCert = await outcomeOf(dial(posing), () => genuineLeg(mallory, t3));

    if (forbidden) {
      expect([noProof, replayed, otherCert]).toEqual(['ok', 'ok', 'ok']);
      return;
    }
    expect([noProof, replayed, otherCert]).toEqual(['TokenInvalid', 'TokenInvalid', 'CertificateInvalid']);
  });
});

describe('another domain\'s revocation', () => {
  // a.test trusts b.test's "good" answers for 2 s here (federation.cert_status_cache), 30 s by default.
  it.each([
    ['takes effect at a.test and its agents', '', false],
    ['forbidden: a.test never asks b.test', 'no-cert-status', true],
  ])('%s within 60 s', async (_name, fault, forbidden) => {
    const s = await site(['a.test', 'b.test'], { 'a.test': fault }, { 'a.test': 'federation:\n  cert_status_cache: 2s\n' });
    const bob = await s.user('bob@a.test');
    const eve = await s.user('eve@b.test');
    const accepted: Duplex[] = [];
    await node(bob, { open: { allow: ['*'], onConnection: (st) => { accepted.push(st); echo(st); } } });
    // eve connects without an agent of her own, so nothing at b.test closes the stream for her.
    const stream = keep(await connectQ2Q(eve.identity, 'bob@a.test:open', eve.options({ routes: ['tcp'] })));
    expect(await roundTrip(stream)).toBe(true);
    await untilTrue('bob accepted', () => accepted.length === 1);
    const bobSide = keep(accepted[0] as Duplex);

    // bob's home session, raw: the cert-status question bob's agent asks every 20 s about its peers.
    const bobControl = await s.control(bob, 'a.test');
    const homeSays = async () => JSON.parse((await bobControl.call(COMMANDS.certStatus, {
      certificates: JSON.stringify([{ domain: 'b.test', serial: eve.serial }]),
    })).revoked ?? '[]') as string[];
    expect(await homeSays()).toEqual([]);

    const t0 = Date.now();
    await s.admin('b.test', ['revoke', eve.serial]);
    const connectAgain = async () => errorCode(connectQ2Q(eve.identity, 'bob@a.test:open', eve.options({ routes: ['tcp'], connectTimeoutMs: 10_000 }))
      .then((st) => st.destroy()));

    if (forbidden) {
      // Past the cache, the sweep and an agent's 20 s check: eve still gets in and her stream stays.
      await new Promise((r) => setTimeout(r, 25_000));
      expect(await connectAgain()).toBe('ok');
      expect(isOpen(bobSide)).toBe(true);
      expect(await homeSays()).toEqual([]);
      return;
    }
    let homeAfter = -1;
    await untilTrue('a.test tells bob\'s agent that eve\'s certificate is revoked', async () => {
      if ((await homeSays()).length === 0) return false;
      homeAfter = Date.now() - t0;
      return true;
    }, FOREIGN_BOUND_MS + 10_000);
    let refusedAfter = -1;
    await untilTrue('a.test refuses eve', async () => {
      const code = await connectAgain();
      if (code === 'ok') return false;
      expect(code).toMatch(/CertificateRevoked/);
      refusedAfter = Date.now() - t0;
      return true;
    }, FOREIGN_BOUND_MS + 10_000);
    await untilTrue('bob\'s stream with eve closed', () => bobSide.destroyed, FOREIGN_BOUND_MS + 10_000);
    const closedAfter = Date.now() - t0;
    process.stderr.write(`cross-domain: new connections refused after ${refusedAfter} ms, agents told after ${homeAfter} ms, open stream closed after ${closedAfter} ms\n`);
    // The documented bound (docs/security.md): cache + agent interval (20 s) + a round trip, here
    // 2 s + 20 s, under the spec's 60 s; the first two are bounded by the cache alone.
    expect(refusedAfter).toBeLessThan(FOREIGN_BOUND_MS);
    expect(homeAfter).toBeLessThan(FOREIGN_BOUND_MS);
    expect(closedAfter).toBeLessThan(FOREIGN_BOUND_MS);
  });

  it.each([
    ['fail closed: refused once the cache runs out', '', false],
    ['forbidden: a.test never asks b.test, so eve gets in', 'no-cert-status', true],
  ])('issuer unreachable: %s', async (_name, fault, forbidden) => {
    const s = await site(['a.test', 'b.test'], { 'a.test': fault }, { 'a.test': 'federation:\n  cert_status_cache: 2s\n' });
    const bob = await s.user('bob@a.test');
    const eve = await s.user('eve@b.test');
    await node(bob, { open: { allow: ['*'], onConnection: echo } });
    const connect = async () => errorCode(connectQ2Q(eve.identity, 'bob@a.test:open', eve.options({ routes: ['tcp'], connectTimeoutMs: 20_000 }))
      .then((st) => st.destroy()));
    expect(await connect()).toBe('ok');
    await (s.servers['b.test'] as ServerHandle).proc.stop('SIGKILL');
    // Past the 2 s cache: a.test has no fresh word from b.test about eve's certificate.
    await new Promise((r) => setTimeout(r, 3_000));
    const code = await connect();
    expect(code).toBe(forbidden ? 'ok' : 'ServerUnavailable');
  });
});
