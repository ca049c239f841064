import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { ManualClock } from '../../../q2q/util/clock';
import { untilTrue } from '../../helpers/net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ControlApi, MAX_REQUEST_BYTES, parseRequest, type ControlHandlers } from '../../../agent/control-api';
import { callAgent, openControl, sendRequest } from '../../../agent/control-client';
import { vertexError } from '../../../q2q/errors';
import { readAll, socketPairs, type PairFactory } from './socket-pair';

/** Sends raw bytes and returns everything the API answers before it closes. */
function rawExchange(socketPath: string, bytes: string | Buffer, end = false): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socketPath);
    const chunks: Buffer[] = [];
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('close', () => resolve(Buffer.concat(chunks).toString()));
    s.on('error', reject);
    s.write(bytes);
    if (end) s.end();
  });
}

describe('control API', () => {
  let dir: string;
  let socketPath: string;
  let api: ControlApi;
  let pairs: PairFactory;
  let clock: ManualClock;
  const calls: Array<{ op: string; args: unknown }> = [];

  const handlers: ControlHandlers = {
    call: async ({ op, args }) => {
      calls.push({ op, args });
      if (op === 'expose-remove') throw vertexError('NotExposed', 'unexpose web: this agent does not expose it');
      return { op, echo: args };
    },
    open: async (request) => {
      if (request.op !== 'connect') throw vertexError('BadRequest', `not here: ${request.op}`);
      const { args } = request;
      if (args.target === 'nobody@b.test:x') throw vertexError('Offline', 'nobody@b.test is offline');
      const [mine, theirs] = await pairs.pair();
      theirs.pipe(theirs);
      return { stream: mine, info: { route: 'relay', target: args.target }, framed: args.framed === true };
    },
  };

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-control-'));
    socketPath = path.join(dir, 'run', 'agent.sock');
    pairs = await socketPairs();
    // The request timeout runs on a manual clock: it fires when a test moves time, never
    // because the machine was slow to hand over a request line.
    clock = new ManualClock();
    api = new ControlApi({ socketPath, handlers, requestTimeoutMs: 200, clock });
    await api.start();
    calls.length = 0;
  });
  afterEach(async () => {
    await api.stop();
    await pairs.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('creates the socket 0600 inside a 0700 directory and removes it on stop', async () => {
    expect(fs.statSync(socketPath).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.dirname(socketPath)).mode & 0o777).toBe(0o700);
    await api.stop();
    expect(fs.existsSync(socketPath)).toBe(false);
    expect(await openControl(socketPath)).toBeNull();
  });

  it('answers a request with its result, and an error with its code', async () => {
    expect(await callAgent(socketPath, 'status')).toEqual({ agent: true, result: { op: 'status', echo: {} } });
    expect(await callAgent(socketPath, 'ping', { target: 'bob@b.test' })).toEqual({ agent: true, result: { op: 'ping', echo: { target: 'bob@b.test' } } });
    await expect(callAgent(socketPath, 'expose-remove', { service: 'web' })).rejects.toMatchObject({ code: 'NotExposed', message: 'unexpose web: this agent does not expose it' });
  });

  it('connect turns the socket into the tunnel, with half-close', async () => {
    const s = (await openControl(socketPath))!;
    expect(await sendRequest(s, 'connect', { target: 'bob@b.test:echo' })).toEqual({ route: 'relay', target: 'bob@b.test:echo' });
    const back = readAll(s);
    s.end('through the tunnel');
    expect((await back).toString()).toBe('through the tunnel');
    const failed = (await openControl(socketPath))!;
    await expect(sendRequest(failed, 'connect', { target: 'nobody@b.test:x' })).rejects.toMatchObject({ code: 'Offline' });
    failed.destroy();
  });

  it.each([
    ['not JSON', 'hello\n', /"code":"BadRequest".*not JSON/],
    ['an array', '[1]\n', /"code":"BadRequest".*JSON object/],
    ['an unknown op', '{"op":"reboot"}\n', /"code":"BadRequest".*unknown op \\"reboot\\"/],
    ['bad args', '{"op":"status","args":[1]}\n', /"code":"BadRequest".*args must be an object/],
    ['args of the wrong type', '{"op":"ping","args":{"target":7}}\n', /"code":"BadRequest".*ping: \\"target\\": /],
    ['args missing', '{"op":"expose-add","args":{"service":"web"}}\n', /"code":"BadRequest".*expose-add: \\"target\\": /],
  ])('refuses %s and closes that connection only', async (_name, line, expected) => {
    expect(await rawExchange(socketPath, line)).toMatch(expected);
    expect(calls).toEqual([]);
    expect(await callAgent(socketPath, 'status')).toMatchObject({ agent: true });
  });

  it('closes a connection whose request line is too long or never comes', async () => {
    expect(await rawExchange(socketPath, Buffer.alloc(MAX_REQUEST_BYTES + 10, 0x61))).toMatch(/longer than/);
    const cutShort = rawExchange(socketPath, '{"op":');
    await untilTrue('the server to accept the connection', () => clock.pendingTimers() === 1);
    clock.advance(199);
    expect(clock.pendingTimers()).toBe(1);
    clock.advance(1);
    expect(await cutShort).toBe('');
    expect(await rawExchange(socketPath, '', true)).toBe('');
  });

  it('takes over a stale socket file, and refuses to start beside a live agent', async () => {
    const stale = path.join(dir, 'stale.sock');
    // An agent that was killed leaves its socket file behind with nobody listening.
    spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    expect(fs.existsSync(stale)).toBe(true);
    const second = new ControlApi({ socketPath: stale, handlers });
    await second.start();
    expect(await callAgent(stale, 'status')).toMatchObject({ agent: true });
    await second.stop();

    const third = new ControlApi({ socketPath, handlers });
    await expect(third.start()).rejects.toMatchObject({ code: 'Usage' });
    const file = path.join(dir, 'plain-file');
    fs.writeFileSync(file, 'x');
    await expect(new ControlApi({ socketPath: file, handlers }).start()).rejects.toMatchObject({ code: 'Usage' });
  });

  it('the client names what it waited for when the agent does not answer', async () => {
    const mute = path.join(dir, 'mute.sock');
    const server = net.createServer((s) => s.on('data', () => undefined));
    await new Promise<void>((resolve) => server.listen(mute, () => resolve()));
    try {
      const s = (await openControl(mute))!;
      await expect(sendRequest(s, 'status', {}, { timeoutMs: 100 })).rejects.toMatchObject({ code: 'Timeout', message: expect.stringContaining("the agent's answer to status") });
      s.destroy();
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('the client reads a reply line of several MB (status with 10,000 tunnels) and keeps the bytes after it', async () => {
    const big = path.join(dir, 'big.sock');
    const tunnels = Array.from({ length: 10_000 }, (_, i) => ({ id: i, kind: 'socks', target: 'bob@b.test:http', note: 'x'.repeat(250) }));
    const line = Buffer.from(`${JSON.stringify({ ok: true, result: { tunnels } })}\n`);
    expect(line.length).toBeGreaterThan(2 * 1024 * 1024);
    // Written in small pieces, the newline in the middle of the last one, tunnel bytes after it.
    const server = net.createServer((s) => s.once('data', () => {
      for (let at = 0; at < line.length - 10; at += 4096) s.write(line.subarray(at, Math.min(at + 4096, line.length - 10)));
      s.write(Buffer.concat([line.subarray(line.length - 10), Buffer.from('after')]));
    }));
    await new Promise<void>((resolve) => server.listen(big, () => resolve()));
    const s = (await openControl(big))!;
    try {
      const result = await sendRequest(s, 'status', {}) as { tunnels: unknown[] };
      expect(result.tunnels).toHaveLength(10_000);
      s.resume();
      expect((await new Promise<Buffer>((resolve) => s.once('data', resolve))).toString()).toBe('after');
    } finally {
      s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('parseRequest defaults args to an empty object', () => {
    expect(parseRequest('{"op":"status"}')).toEqual({ op: 'status', args: {} });
  });

});
