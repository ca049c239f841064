import * as net from 'node:net';
import { encodeAbort, encodeFrameHeader, FRAME, FrameDecoder, FramedTunnel, MAX_FRAME_PAYLOAD } from '../../../agent/control-tunnel';
import { isVertexError, vertexError } from '../../../q2q/errors';

describe('control tunnel frames', () => {
  it('golden bytes: DATA "hi", END, ABORT', () => {
    expect(Buffer.concat([encodeFrameHeader(FRAME.data, 2), Buffer.from('hi')]).toString('hex')).toBe('00000000026869');
    expect(encodeFrameHeader(FRAME.end, 0).toString('hex')).toBe('0100000000');
    const abort = encodeAbort(vertexError('Offline', 'gone'));
    expect(abort.subarray(0, 5).toString('hex')).toBe(`02${(abort.length - 5).toString(16).padStart(8, '0')}`);
    expect(JSON.parse(abort.subarray(5).toString())).toEqual({ code: 'Offline', message: 'gone' });
  });

  it('decodes the same frames split at every byte boundary', () => {
    const bytes = Buffer.concat([encodeFrameHeader(FRAME.data, 3), Buffer.from('abc'), encodeFrameHeader(FRAME.end, 0)]);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const d = new FrameDecoder();
      const frames = [...d.push(bytes.subarray(0, cut)), ...d.push(bytes.subarray(cut))];
      expect(frames).toEqual([{ type: 'data', payload: Buffer.from('abc') }, { type: 'end' }]);
    }
  });

  it('refuses an oversized frame and an unknown type', () => {
    expect(() => new FrameDecoder().push(encodeFrameHeader(FRAME.data, MAX_FRAME_PAYLOAD + 1))).toThrow(/more than/);
    expect(() => new FrameDecoder().push(encodeFrameHeader(7, 0))).toThrow(/unknown frame type/);
  });
});

describe('FramedTunnel over a socket pair', () => {
  async function pair(): Promise<{ a: FramedTunnel; b: FramedTunnel; close: () => void }> {
    const server = net.createServer({ allowHalfOpen: true });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const client = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    const s = await accepted;
    return { a: new FramedTunnel(client, { other: 'b' }), b: new FramedTunnel(s, { other: 'a' }), close: () => server.close() };
  }

  it('a clean end in both directions ends both without errors', async () => {
    const { a, b, close } = await pair();
    const got: Buffer[] = [];
    b.on('data', (d: Buffer) => got.push(d));
    const bEnded = new Promise<void>((r) => b.once('end', r));
    a.resume();
    a.end(Buffer.alloc(200_000, 7));
    await bEnded;
    b.end();
    await new Promise<void>((r) => a.once('close', r));
    expect(Buffer.concat(got).length).toBe(200_000);
    expect(a.errored).toBeNull();
    close();
  });

  it('destroy(err) reaches the other end as that error, code and message', async () => {
    const { a, b, close } = await pair();
    const failed = new Promise<Error>((r) => b.once('error', r));
    a.on('error', () => undefined);
    a.destroy(vertexError('PtcpReset', 'the peer reset it'));
    const err = await failed;
    expect(isVertexError(err, 'PtcpReset')).toBe(true);
    expect(err.message).toBe('the peer reset it');
    close();
  });

  it('a socket that closes without END or ABORT is a ConnectionLost', async () => {
    const server = net.createServer({ allowHalfOpen: true });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const client = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1' });
    const raw = await accepted;
    const tunnel = new FramedTunnel(client, { other: 'the agent' });
    const failed = new Promise<Error>((r) => tunnel.once('error', r));
    raw.end();
    const err = await failed;
    expect(isVertexError(err, 'ConnectionLost')).toBe(true);
    expect(err.message).toMatch(/the agent went away/);
    raw.destroy();
    server.close();
  });
});
