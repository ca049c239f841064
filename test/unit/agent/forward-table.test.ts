import * as net from 'node:net';
import { Duplex, PassThrough } from 'node:stream';
import { ForwardTable } from '../../../agent/forward-table';
import { connectTcp } from '../../helpers/net';

/** A tunnel that echoes what the client sends, as the far service would. */
function echoTunnel(): Duplex {
  const echo = new PassThrough();
  return Duplex.from({ readable: echo, writable: echo });
}

function roundTrip(socket: net.Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    socket.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.length >= text.length) resolve(got);
    });
    socket.on('error', reject);
    socket.write(text);
  });
}

describe('ForwardTable', () => {
  let dials: Array<{ target: string; local: string }>;
  let table: ForwardTable;
  const any = { host: '127.0.0.1', port: 0 };

  beforeEach(() => {
    dials = [];
    table = new ForwardTable({
      dial: async (target, local) => {
        dials.push({ target, local });
        return echoTunnel();
      },
    });
  });

  afterEach(async () => {
    await table.closeAll(async (_what, fn) => fn());
  });

  it('tunnels each client to its target, normalised', async () => {
    const entry = await table.open({ listen: any, to: 'Bob@B.test:echo' }, 'config');
    expect(entry.to).toBe('bob@b.test:echo');
    const port = entry.listener.address?.port as number;
    const client = await connectTcp(port);
    expect(await roundTrip(client, 'through the forward')).toBe('through the forward');
    client.destroy();
    expect(dials).toEqual([{ target: 'bob@b.test:echo', local: expect.stringMatching(/^127\.0\.0\.1:\d+$/) }]);
  });

  it('a config entry keeps its written address as key; cli entries on port 0 are keyed by the port they got, so several coexist', async () => {
    const config = await table.open({ listen: any, to: 'bob@b.test:a' }, 'config');
    expect(config.key).toBe('127.0.0.1:0');
    const one = await table.add({ listen: any, to: 'bob@b.test:b' }, 'cli');
    const two = await table.add({ listen: any, to: 'bob@b.test:c' }, 'cli');
    expect(one.listen).not.toBe(two.listen);
    expect(table.entries().map((f) => f.key).sort()).toEqual(['127.0.0.1:0', one.listen, two.listen].sort());
    expect(table.addresses()).toHaveLength(3);
  });

  it('an existing listen address is replaced only with replace', async () => {
    const first = await table.add({ listen: any, to: 'bob@b.test:ssh' }, 'cli');
    const port = Number(first.listen.split(':')[1]);
    const listen = { host: '127.0.0.1', port };
    await expect(table.add({ listen, to: 'carol@c.test:ssh' }, 'cli')).rejects.toMatchObject({
      code: 'Usage',
      message: `forward 127.0.0.1:${port}: already forwarding to bob@b.test:ssh (from vertex forward); add --replace to replace it`,
    });
    const replaced = await table.add({ listen, to: 'carol@c.test:ssh' }, 'cli', { replace: true });
    expect(replaced).toEqual({ listen: `127.0.0.1:${port}`, to: 'carol@c.test:ssh', replaced: { to: 'bob@b.test:ssh' } });
    const client = await connectTcp(port);
    await roundTrip(client, 'x');
    client.destroy();
    expect(dials.at(-1)?.target).toBe('carol@c.test:ssh');
  });

  it('remove finds a forward by its written or its bound address and stops listening; an unknown one is a usage error', async () => {
    const added = await table.add({ listen: any, to: 'bob@b.test:ssh' }, 'cli');
    const port = Number(added.listen.split(':')[1]);
    expect((await table.remove(String(port))).to).toBe('bob@b.test:ssh');
    await expect(connectTcp(port)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await expect(table.remove(String(port))).rejects.toMatchObject({ code: 'Usage', message: `forward 127.0.0.1:${port}: no such forward on this agent` });
    const config = await table.open({ listen: any, to: 'bob@b.test:ssh' }, 'config');
    const bound = config.listener.address?.port as number;
    expect(await table.remove(`127.0.0.1:${bound}`)).toBe(config);
    expect(await table.close('127.0.0.1:1')).toBeUndefined();
    expect(table.entries()).toEqual([]);
  });
});
