import { ExposeTable } from '../../../agent/expose-table';
import { TunnelRegistry } from '../../../agent/tunnels';
import type { ServiceOptions } from '../../../q2q/negotiate/types';

/** Records what the table puts online, as the agent's node would see it. */
function fakeNode() {
  const online = new Map<string, ServiceOptions>();
  const calls: string[] = [];
  return {
    online,
    calls,
    expose: (service: string, opts: ServiceOptions) => {
      calls.push(`expose ${service}`);
      online.set(service, opts);
    },
    unexpose: (service: string) => {
      calls.push(`unexpose ${service}`);
      online.delete(service);
    },
  };
}

describe('ExposeTable', () => {
  let node: ReturnType<typeof fakeNode>;
  let changes: number;
  let table: ExposeTable;
  const ssh = { host: '127.0.0.1', port: 22 };
  const other = { host: '127.0.0.1', port: 2222 };

  beforeEach(() => {
    node = fakeNode();
    changes = 0;
    table = new ExposeTable({
      node: () => node,
      address: () => 'alice@a.test',
      defaultAllow: () => ['alice@a.test'],
      tunnels: new TunnelRegistry(),
      onChange: () => void (changes += 1),
    });
  });

  it('an entry without allow admits the owner alone; the node gets it with its allow list', () => {
    const entry = table.apply({ service: 'SSH', target: ssh }, 'config');
    expect(entry).toEqual({ service: 'ssh', target: ssh, allow: ['alice@a.test'], source: 'config' });
    expect(node.online.get('ssh')?.allow).toEqual(['alice@a.test']);
    expect(table.get('ssh')).toEqual(entry);
    expect(changes).toBe(1);
  });

  it('a name already exposed is replaced only with replace, and says where the entry came from', () => {
    table.apply({ service: 'ssh', target: ssh, allow: ['*@a.test'] }, 'config');
    expect(() => table.add({ service: 'ssh', target: other }, 'cli')).toThrow(expect.objectContaining({
      code: 'Usage',
      message: 'expose ssh: already exposed -> 127.0.0.1:22 (allow *@a.test; from agent.yaml); add --replace to replace it',
    }));
    expect(table.get('ssh')?.target).toEqual(ssh);
    expect(node.calls).toEqual(['expose ssh']);
  });

  it('a replaced entry keeps its allow list unless the new one names one', () => {
    table.apply({ service: 'ssh', target: ssh, allow: ['*@a.test', 'bob@b.test'] }, 'config');
    const kept = table.add({ service: 'ssh', target: other }, 'cli', { replace: true });
    expect(kept).toEqual({
      address: 'alice@a.test:ssh', target: '127.0.0.1:2222', allow: ['*@a.test', 'bob@b.test'],
      replaced: { target: '127.0.0.1:22', allow: ['*@a.test', 'bob@b.test'], source: 'config' },
    });
    expect(node.online.get('ssh')?.allow).toEqual(['*@a.test', 'bob@b.test']);
    const narrowed = table.add({ service: 'ssh', target: other, allow: ['carol@c.test'] }, 'cli', { replace: true });
    expect(narrowed.allow).toEqual(['carol@c.test']);
    expect(table.get('ssh')).toMatchObject({ allow: ['carol@c.test'], source: 'cli' });
    // A new name reports no replacement.
    expect(table.add({ service: 'web', target: other }, 'cli')).not.toHaveProperty('replaced');
  });

  it('refuses the names the agent serves itself', () => {
    expect(() => table.add({ service: 'vertex-ping', target: ssh }, 'cli')).toThrow(expect.objectContaining({ code: 'Usage', message: expect.stringMatching(/reserved for vertex ping/) }));
    expect(() => table.apply({ service: 'file-transfer', target: ssh }, 'config')).toThrow(expect.objectContaining({ code: 'Usage', message: expect.stringMatching(/reserved for receiving files/) }));
    expect(node.online.size).toBe(0);
  });

  it('remove takes the service offline; an unknown one is NotExposed', () => {
    table.apply({ service: 'ssh', target: ssh, allow: ['*@a.test'] }, 'config');
    table.apply({ service: 'web', target: other, allow: ['bob@b.test'] }, 'cli');
    expect([...table.allowPatterns()].sort()).toEqual(['*@a.test', 'bob@b.test']);
    expect(table.remove('ssh')).toMatchObject({ service: 'ssh', source: 'config' });
    expect(node.online.has('ssh')).toBe(false);
    expect([...table.allowPatterns()]).toEqual(['bob@b.test']);
    expect(() => table.remove('ssh')).toThrow(expect.objectContaining({ code: 'NotExposed' }));
    expect(changes).toBe(3);
    table.clear();
    expect(table.entries()).toEqual([]);
    // clear() leaves the node alone: a stopping node withdraws everything at once.
    expect(node.online.has('web')).toBe(true);
  });
});
