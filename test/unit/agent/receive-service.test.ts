import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { DEFAULT_RECEIVE_LIMITS } from '../../../agent/file-transfer';
import { AgentReceiver } from '../../../agent/receive-service';
import type { Q2QStream, ServiceOptions } from '../../../q2q/negotiate/types';

/** Records what the receiver puts online, as the agent's node would see it. */
function fakeNode() {
  const exposed = new Map<string, ServiceOptions>();
  return {
    exposed,
    expose: (service: string, opts: ServiceOptions) => void exposed.set(service, opts),
    unexpose: (service: string) => void exposed.delete(service),
  };
}

function fakeStream(peer: string): Q2QStream {
  return Object.assign(new PassThrough(), { peer, device: 'desk', route: 'tcp', service: 'file-transfer', connectMs: 1 }) as unknown as Q2QStream;
}

describe('AgentReceiver', () => {
  let dir: string;
  let node: ReturnType<typeof fakeNode>;
  let allowChanges: number;
  let receiver: AgentReceiver;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-receive-'));
    node = fakeNode();
    allowChanges = 0;
    receiver = new AgentReceiver({ node, defaultAllow: () => ['bob@b.test'], onAllowChange: () => void (allowChanges += 1) });
  });
  afterEach(() => {
    receiver.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('exposes nothing until configured; receive: puts file-transfer online with its allow list, or the owner alone', () => {
    expect(node.exposed.size).toBe(0);
    expect(receiver.status()).toBeNull();
    const inbox = path.join(dir, 'in', 'box');
    expect(receiver.configure({ dir: inbox, overwrite: false })).toBe('on');
    expect(fs.statSync(inbox).mode & 0o777).toBe(0o700);
    expect(node.exposed.get('file-transfer')?.allow).toEqual(['bob@b.test']);
    expect(receiver.configure({ dir: inbox, overwrite: false })).toBe('unchanged');
    expect(receiver.configure({ dir: inbox, allow: ['*@a.test'], overwrite: false })).toBe('changed');
    expect(node.exposed.get('file-transfer')?.allow).toEqual(['*@a.test']);
    expect(receiver.allow()).toEqual(['*@a.test']);
    expect(receiver.status()).toMatchObject({ by: 'agent.yaml', dir: fs.realpathSync(inbox), received: 0, failed: 0, active: 0 });
    expect(receiver.configure(undefined)).toBe('off');
    expect(node.exposed.has('file-transfer')).toBe(false);
    expect(receiver.allow()).toEqual([]);
    expect(allowChanges).toBe(3);
  });

  it('refuses a relative or unwritable dir with a Config error and keeps what was in force', () => {
    expect(() => receiver.configure({ dir: 'inbox', overwrite: false })).toThrow(expect.objectContaining({ code: 'Config', message: expect.stringMatching(/receive\.dir inbox: expected an absolute path/) }));
    const file = path.join(dir, 'a-file');
    fs.writeFileSync(file, '');
    receiver.configure({ dir, overwrite: false });
    expect(() => receiver.configure({ dir: file, overwrite: false })).toThrow(expect.objectContaining({ code: 'Config' }));
    expect(receiver.status()?.dir).toBe(fs.realpathSync(dir));
  });

  it('an attached vertex receive takes the streams and its allow list, one at a time, and agent.yaml\'s comes back when it leaves', () => {
    receiver.configure({ dir, overwrite: false });
    const got: string[] = [];
    const attached = receiver.attach({ allow: ['alice@a.test'], onStream: (s) => void got.push(s.peer) });
    expect(attached.displaced).toEqual({ dir: fs.realpathSync(dir) });
    expect(node.exposed.get('file-transfer')?.allow).toEqual(['alice@a.test']);
    expect(receiver.status()).toMatchObject({ by: 'vertex receive', allow: ['alice@a.test'] });
    expect(() => receiver.attach({ allow: ['*'], onStream: () => undefined })).toThrow(expect.objectContaining({ code: 'Usage' }));

    node.exposed.get('file-transfer')?.onConnection(fakeStream('alice@a.test'));
    expect(got).toEqual(['alice@a.test']);

    attached.detach();
    attached.detach();
    expect(node.exposed.get('file-transfer')?.allow).toEqual(['bob@b.test']);
    expect(receiver.status()?.by).toBe('agent.yaml');
  });

  it('takes its per-offer limits from receive:, the defaults otherwise, and a changed limit is a change', () => {
    receiver.configure({ dir, overwrite: false });
    expect(receiver.status()?.limits).toEqual(DEFAULT_RECEIVE_LIMITS);
    expect(receiver.configure({ dir, overwrite: false, limits: { maxFiles: 2, maxNameBytes: DEFAULT_RECEIVE_LIMITS.maxNameBytes } })).toBe('changed');
    expect(receiver.status()?.limits).toEqual({ maxFiles: 2, maxNameBytes: DEFAULT_RECEIVE_LIMITS.maxNameBytes });
    expect(receiver.configure({ dir, overwrite: false, limits: { maxFiles: 2, maxNameBytes: DEFAULT_RECEIVE_LIMITS.maxNameBytes } })).toBe('unchanged');
    expect(receiver.configure({ dir, overwrite: false, limits: { maxFiles: 2, maxNameBytes: 100 } })).toBe('changed');
    // A vertex receive standing in has limits of its own.
    const attached = receiver.attach({ allow: ['*'], onStream: () => undefined });
    expect(receiver.status()?.limits).toBeNull();
    attached.detach();
  });

  it('without receive: a detached client takes the service offline again', () => {
    const attached = receiver.attach({ allow: ['*'], onStream: () => undefined });
    expect(node.exposed.has('file-transfer')).toBe(true);
    expect(attached.displaced).toBeNull();
    attached.detach();
    expect(node.exposed.has('file-transfer')).toBe(false);
    expect(receiver.status()).toBeNull();
  });

  it('an attached client is ready only once the node says the home server lists the service', async () => {
    let listed: () => void = () => undefined;
    const slowNode = {
      ...fakeNode(),
      expose: (_service: string, _opts: ServiceOptions) => new Promise<void>((resolve) => { listed = resolve; }),
    };
    const slow = new AgentReceiver({ node: slowNode, defaultAllow: () => ['bob@b.test'] });
    const attached = slow.attach({ allow: ['*'], onStream: () => undefined });
    let ready = false;
    void attached.ready.then(() => { ready = true; });
    await new Promise((r) => setImmediate(r));
    expect(ready).toBe(false);
    listed();
    await attached.ready;
    expect(ready).toBe(true);
    attached.detach();
    slow.stop();
  });
});
