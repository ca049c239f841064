import { CONTROL_OPS, isStreamOp, parseControlArgs, parseControlResult } from '../../../agent/control-protocol';

describe('control protocol schemas', () => {
  it('checks each op\'s args and names the first bad key', () => {
    expect(parseControlArgs('expose-add', { service: 'web', target: '127.0.0.1:80', allow: ['*'] })).toEqual({ service: 'web', target: '127.0.0.1:80', allow: ['*'] });
    expect(parseControlArgs('status', undefined)).toEqual({});
    expect(() => parseControlArgs('expose-add', { service: 'web', target: 80 })).toThrow(expect.objectContaining({ code: 'BadRequest', message: expect.stringMatching(/^control request expose-add: "target": /) }));
    expect(() => parseControlArgs('ping', { target: 'bob@b.test', count: 1.5 })).toThrow(expect.objectContaining({ code: 'BadRequest', message: expect.stringMatching(/"count"/) }));
    expect(() => parseControlArgs('receive', { allow: 'alice@a.test' })).toThrow(expect.objectContaining({ message: expect.stringMatching(/"allow"/) }));
    expect(() => parseControlArgs('connect', { target: 'bob@b.test:ssh', timeoutMs: -1 })).toThrow(expect.objectContaining({ message: expect.stringMatching(/"timeoutMs"/) }));
  });

  it('knows which ops carry a stream after the reply', () => {
    expect(CONTROL_OPS.filter(isStreamOp)).toEqual(['connect', 'receive', 'receive-accept']);
  });

  it('checks replies, keeps fields a newer agent adds, and refuses a reply of the wrong shape', () => {
    const reply = { listen: '127.0.0.1:2222', to: 'bob@b.test:ssh', extra: 1 };
    expect(parseControlResult('forward-add', reply)).toEqual(reply);
    expect(() => parseControlResult('ping', { target: 'bob@b.test', peer: 'bob@b.test', device: 'x', route: 'tcp', connectMs: 'fast', kind: 'echo', rttMs: [] }))
      .toThrow(expect.objectContaining({ code: 'BadRequest', message: 'agent reply to ping: "connectMs": Invalid input: expected number, received string' }));
  });

  it('checks the status reply: an older agent without receive passes, a reply of the wrong shape names the key', () => {
    const status = {
      identity: 'alice@a.test',
      device: 'laptop',
      devices: { online: ['laptop'], conflicts: [], moreConflicts: 0, replacedBy: null },
      certificate: { notAfter: '2027-01-01T00:00:00.000Z' },
      server: { state: 'online', server: '127.0.0.1:8788', since: '2026-12-02T10:00:00.000Z', lastError: null },
      reflexive: { tcp: null, udp: null },
      peerListen: null,
      socks: null,
      control: null,
      exposed: [],
      forwards: [],
      tunnels: [],
    };
    expect(parseControlResult('status', status)).toEqual(status);
    expect(() => parseControlResult('status', { ...status, tunnels: [{ id: 1, kind: 'socks' }] }))
      .toThrow(expect.objectContaining({ code: 'BadRequest', message: expect.stringMatching(/^agent reply to status: "tunnels\.0\.target": /) }));
    expect(() => parseControlResult('status', { ...status, server: undefined }))
      .toThrow(expect.objectContaining({ message: expect.stringMatching(/^agent reply to status: "server": /) }));
  });
});
