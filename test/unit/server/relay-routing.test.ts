/**
 * Where a relay leg goes when its token is not held by the node it lands on
 * (server/relay.ts, several nodes): to the node that announced the token
 * id, also when the announcement comes after the leg; nowhere when nobody
 * announced it (refused where it landed); never on again once carried. The
 * mesh here records what the relay asks of it (the real mesh, with real
 * nodes, is test/integration/multi-node/relay-any-node.test.ts); the legs
 * are real loopback TCP connections.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { createDomainCa } from '../../../q2q/identity';
import { readPreamble, writePreamble } from '../../../q2q/transport/preamble';
import { legRequest, relayTokenId } from '../../../q2q/transport/relay-leg';
import { silentLogger } from '../../../q2q/util/log';
import { vertexError } from '../../../q2q/errors';
import { Relay, type RelayOptions } from '../../../server/relay';

const WAIT_MS = 300;
let user: { keyPem: string; certPem: string };
let server: net.Server;
let port: number;
let onLeg: (socket: net.Socket) => void;
const sockets: net.Socket[] = [];

beforeAll(async () => {
  user = await createDomainCa('a.test');
  server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.push(s);
    onLeg(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as net.AddressInfo).port;
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

interface Carried { node: string; tokenId: string }

/** A relay on a node with a mesh that records which legs it was asked to carry where, and which token ids it was asked to announce. */
function relayWithMesh(opts: Partial<RelayOptions> = {}): { relay: Relay; carried: Carried[]; announced: string[] } {
  const carried: Carried[] = [];
  const announced: string[] = [];
  const relay = new Relay({
    enabled: true, maxStreams: 10, perUserRate: 0, log: silentLogger, routeWaitMs: WAIT_MS,
    // Every leg that gets as far as its certificate is refused: these tests are about where legs go before that.
    authenticate: () => Promise.reject(vertexError('CertificateInvalid', 'not checked here')),
    ...opts,
  });
  relay.attachMesh({
    forward: (leg, header, node) => {
      carried.push({ node, tokenId: header.tokenId });
      writePreamble(leg, { held: '1' });
    },
    announce: (tokenId) => announced.push(tokenId),
  });
  return { relay, carried, announced };
}

/** Opens a leg for `token` to `relay` (optionally as carried by another node); resolves to its answer. */
async function leg(relay: Relay, token: string, forwardedBy?: string): Promise<Record<string, string>> {
  onLeg = (s) => void relay.acceptLeg(s, forwardedBy ? { forwardedBy } : {});
  const client = net.connect({ host: '127.0.0.1', port });
  sockets.push(client);
  client.on('error', () => undefined);
  await new Promise<void>((resolve) => client.once('connect', () => resolve()));
  writePreamble(client, legRequest(user, 'a.test', token));
  return readPreamble(client, 'test leg', 10_000);
}

const token = () => randomBytes(16).toString('hex');

describe('a relay leg whose token this node does not hold', () => {
  it('is carried to the node that announced its token id', async () => {
    const { relay, carried } = relayWithMesh();
    const t = token();
    relay.pairsOnId(relayTokenId(t), 'n1');
    expect(await leg(relay, t)).toEqual({ held: '1' });
    expect(carried).toEqual([{ node: 'n1', tokenId: relayTokenId(t) }]);
  });

  it('waits for an announcement that comes after it, then is carried', async () => {
    const { relay, carried } = relayWithMesh({ routeWaitMs: 10_000 });
    const t = token();
    const answer = leg(relay, t);
    await new Promise((r) => setTimeout(r, 100));
    expect(carried).toEqual([]);
    relay.pairsOnId(relayTokenId(t), 'n2');
    expect(await answer).toEqual({ held: '1' });
    expect(carried).toEqual([{ node: 'n2', tokenId: relayTokenId(t) }]);
  });

  it('whose token id nobody announced is refused here (TokenInvalid) and carried nowhere', async () => {
    const { relay, carried } = relayWithMesh();
    relay.pairsOnId(relayTokenId(token()), 'n1');
    expect((await leg(relay, token())).error_code).toBe('TokenInvalid');
    expect(carried).toEqual([]);
  });

  it('the control: with the fault relay-carry-unknown the same leg is carried (the check above can fail)', async () => {
    const { relay, carried } = relayWithMesh({ carryUnknown: true });
    expect(await leg(relay, token())).toEqual({ held: '1' });
    expect(carried.length).toBe(1);
  });

  it('carried here by another node, is never carried on, even if another node announced its token id', async () => {
    const { relay, carried } = relayWithMesh();
    const t = token();
    relay.pairsOnId(relayTokenId(t), 'n3');
    expect((await leg(relay, t, '127.0.0.1:1')).error_code).toBe('TokenInvalid');
    expect(carried).toEqual([]);
  });

  it('registered here while the leg waits: checked here, not carried', async () => {
    const { relay, carried, announced } = relayWithMesh({ routeWaitMs: 10_000 });
    const t = token();
    const answer = leg(relay, t);
    await new Promise((r) => setTimeout(r, 100));
    relay.register(t, 'alice@a.test', 'bob@a.test');
    // It reached the certificate check, which refuses everything in this test.
    expect((await answer).error_code).toBe('CertificateInvalid');
    expect(carried).toEqual([]);
    expect(announced).toEqual([relayTokenId(t)]);
    relay.stop();
  });

  it('a token registered for a caller who cannot use the relay is not announced', () => {
    const { relay, announced } = relayWithMesh();
    relay.register(token(), 'alice@a.test', 'bob@a.test', undefined, { announce: false });
    expect(announced).toEqual([]);
    relay.stop();
  });
});
