/**
 * Interop tier (issue 15): our AmpPeer as the client of Twisted's own AMP
 * server (twisted/amp_server.py), and as the responder of the calls Twisted
 * makes back on the same connection.
 *
 * Each case runs on a fresh connection, against Twisted as it is (the case
 * must pass) and against a Twisted server started with --wrong, whose every
 * responder gives a deliberately wrong answer (the case must fail).
 */
import * as net from 'node:net';
import { vertexError } from '../../q2q/errors';
import { AmpRemoteError, type AmpPeer } from '../../q2q/proto/amp-peer';
import { attachAmp } from '../../q2q/transport/amp-connection';
import { decodeListOf, encodeListOf, type AmpBox } from '../../q2q/wire/amp';
import { describeWithTwisted, startTwistedServer, type TwistedServer } from './twisted/python';

/** What a case saw; checks compare it with what Twisted should have sent. */
type Seen = Record<string, unknown>;

interface ServerCase {
  id: string;
  run: (peer: AmpPeer, notes: string[]) => Promise<Seen>;
  /** Null when `seen` is right, else what is wrong. */
  check: (seen: Seen) => string | null;
}

const text = (box: AmpBox, key: string) => box.get(key)?.toString('utf8');

/** How a call failed, as our callers see it. */
async function failure(promise: Promise<unknown>): Promise<Seen> {
  try {
    const value = await promise;
    return { outcome: 'answer', value };
  } catch (err) {
    if (err instanceof AmpRemoteError) return { outcome: 'error', code: err.code, remoteCode: err.remoteCode, message: err.message };
    const e = err as { code?: string; message?: string };
    return { outcome: 'failed', code: e.code, message: e.message };
  }
}

/** Did the connection survive? One more call answers, or fails with ConnectionLost. */
async function stillOpen(peer: AmpPeer): Promise<boolean> {
  try {
    await peer.callRaw('echo', { data: 'still there?' }, { timeoutMs: 30_000 });
    return true;
  } catch {
    return false;
  }
}

const same = (want: Seen) => (seen: Seen) => {
  const a = JSON.stringify(seen);
  const b = JSON.stringify(want);
  return a === b ? null : `expected ${b.slice(0, 300)}, saw ${a.slice(0, 300)}`;
};

const BLOB = Buffer.concat([Buffer.alloc(0), ...Array.from({ length: 255 }, () => Buffer.from(Array.from({ length: 256 }, (_, i) => i))), Buffer.from(Array.from({ length: 255 }, (_, i) => i))]);

const CASES: ServerCase[] = [
  {
    id: 'answer: a 65,535-byte String both ways',
    run: async (peer) => {
      const data = Buffer.alloc(65_535);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7919) & 0xff;
      const answer = await peer.callRaw('echo', { data });
      return { equal: answer.get('data')?.equals(data), keys: [...answer.keys()] };
    },
    check: same({ equal: true, keys: ['data'] }),
  },
  {
    id: 'answer: Integer, Boolean, Unicode and ListOf values',
    run: async (peer) => {
      const answer = await peer.callRaw('types', {
        n: '-42',
        flag: 'True',
        text: 'héllo wörld ✓',
        items: encodeListOf(['a', '', Buffer.from([0xff, 0x00]), 'z'.repeat(1000)]),
        nums: encodeListOf(['1', '-2', '100000000000000000000']),
      });
      return {
        sum: text(answer, 'sum'),
        negated: text(answer, 'negated'),
        upper: text(answer, 'upper'),
        reversed: decodeListOf(answer.get('reversed') ?? Buffer.alloc(0)).map((b) => b.toString('hex')),
        count: text(answer, 'count'),
        words: decodeListOf(answer.get('words') ?? Buffer.alloc(0)).map((b) => b.toString('utf8')),
      };
    },
    check: same({
      sum: '99999999999999999957',
      negated: 'False',
      upper: 'HÉLLO WÖRLD ✓',
      reversed: ['z'.repeat(1000), 'ff00', '', 'a'].map((s) => (s === 'ff00' ? s : Buffer.from(s).toString('hex'))),
      count: '4',
      words: ['héllo', 'wörld', '✓'],
    }),
  },
  {
    id: 'answer: ListOf filling a value to 65,535 bytes',
    run: async (peer) => {
      const answer = await peer.callRaw('big', { items: '100' });
      const list = answer.get('list') ?? Buffer.alloc(0);
      const items = decodeListOf(list);
      return { blob: answer.get('blob')?.equals(BLOB), listBytes: list.length, items: items.length, first: items[0]?.length };
    },
    check: same({ blob: true, listBytes: 65_535, items: 101, first: 653 }),
  },
  {
    id: 'error: UNHANDLED for a command Twisted does not know, connection stays open',
    run: async (peer) => ({ ...(await failure(peer.call('frobnicate'))), open: await stillOpen(peer) }),
    check: same({ outcome: 'error', code: 'UnknownCommand', remoteCode: 'UNHANDLED', message: "Unhandled Command: b'frobnicate'", open: true }),
  },
  {
    id: 'error: a declared code that is ours',
    run: async (peer) => ({ ...(await failure(peer.call('declared', { which: 'NoSuchUser' }))), open: await stillOpen(peer) }),
    check: same({ outcome: 'error', code: 'NoSuchUser', remoteCode: 'NoSuchUser', message: 'declared NoSuchUser', open: true }),
  },
  {
    id: "error: a declared code of Twisted's own",
    run: async (peer) => ({ ...(await failure(peer.call('declared', { which: 'NoSuchConnection' }))), open: await stillOpen(peer) }),
    check: same({ outcome: 'error', code: 'Internal', remoteCode: 'NoSuchConnection', message: 'declared NoSuchConnection', open: true }),
  },
  {
    id: 'error: UNKNOWN for an undeclared failure, then Twisted closes',
    run: async (peer) => ({ ...(await failure(peer.call('crash'))), open: await stillOpen(peer) }),
    check: same({ outcome: 'error', code: 'Internal', remoteCode: 'UNKNOWN', message: 'Unknown Error', open: false }),
  },
  {
    id: 'error: a fatal declared error, then Twisted closes',
    run: async (peer) => ({ ...(await failure(peer.call('fatal'))), open: await stillOpen(peer) }),
    check: same({ outcome: 'error', code: 'Internal', remoteCode: 'VerifyError', message: 'fatal: the connection ends here', open: false }),
  },
  {
    id: 'tags: 30 pipelined calls answered out of order reach their callers',
    run: async (peer) => {
      const ids = Array.from({ length: 30 }, (_, i) => i);
      // Later calls answer sooner: Twisted sends the answers in reverse order.
      const answers = await Promise.all(ids.map((id) => peer.call('slow', { id: String(id), delay_ms: String((30 - id) * 5) })));
      return { ids: answers.map((a) => a.id) };
    },
    check: same({ ids: Array.from({ length: 30 }, (_, i) => String(i)) }),
  },
  {
    id: "twisted calls us: our answers match Twisted's hex tags",
    run: async (peer) => {
      const answer = await peer.callRaw('call-me', { what: 'who' });
      return { result: text(answer, 'result'), tags: decodeListOf(answer.get('tags') ?? Buffer.alloc(0)).map((b) => b.toString()) };
    },
    check: same({ result: 'vertex/twisted/twisted again', tags: ['1', '2'] }),
  },
  {
    id: 'twisted calls us: an unknown command is UnhandledCommand to Twisted',
    run: async (peer) => ({ result: (await peer.call('call-me', { what: 'unknown' })).result }),
    check: same({ result: 'UnhandledCommand:' }),
  },
  {
    id: 'twisted calls us: our VertexError is the exception Twisted declared',
    run: async (peer) => ({ result: (await peer.call('call-me', { what: 'deny' })).result }),
    check: same({ result: 'Denied:' }),
  },
  {
    id: 'twisted calls us: our internal error is UnknownRemoteError to Twisted',
    run: async (peer) => ({ result: (await peer.call('call-me', { what: 'boom' })).result }),
    check: same({ result: 'UnknownRemoteError:UNKNOWN' }),
  },
  {
    id: 'twisted calls us: a command without _ask gets no answer',
    run: async (peer, notes) => ({ result: (await peer.call('call-me', { what: 'note' })).result, notes }),
    // A stray answer would make Twisted drop the connection before `notes`.
    check: same({ result: 'notes=1', notes: ['no answer wanted'] }),
  },
];

function connect(port: number, notes: string[]): Promise<{ peer: AmpPeer; socket: net.Socket }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.off('error', reject);
      const peer = attachAmp(socket);
      peer.handle('who', (args) => ({ me: 'vertex', echo: args.asker ?? '' }));
      peer.handle('deny', () => {
        throw vertexError('Denied', 'deny: not on the allow list');
      });
      peer.handle('boom', () => {
        throw new Error('a bug');
      });
      peer.handle('note', (args) => {
        notes.push(args.text ?? '');
      });
      peer.handle('notes', () => ({ count: String(notes.length) }));
      resolve({ peer, socket });
    });
    socket.once('error', reject);
  });
}

async function runCase(server: TwistedServer, c: ServerCase): Promise<string | null> {
  const notes: string[] = [];
  const { peer, socket } = await connect(server.port, notes);
  try {
    return c.check(await c.run(peer, notes));
  } catch (err) {
    return `threw ${(err as Error).message}`;
  } finally {
    peer.close();
    socket.destroy();
  }
}

describeWithTwisted('interop: our AmpPeer -> Twisted AMP server', () => {
  let right: TwistedServer;
  let wrong: TwistedServer;
  beforeAll(async () => {
    right = await startTwistedServer();
    wrong = await startTwistedServer(['--wrong']);
  });
  afterAll(async () => {
    await right?.stop();
    await wrong?.stop();
  });

  it.each(CASES.map((c) => c.id))('%s', async (id) => {
    expect(await runCase(right, CASES.find((c) => c.id === id)!)).toBeNull();
  });

  it.each(CASES.map((c) => c.id))('%s: fails against a wrong answer', async (id) => {
    expect(await runCase(wrong, CASES.find((c) => c.id === id)!)).not.toBeNull();
  });
});
