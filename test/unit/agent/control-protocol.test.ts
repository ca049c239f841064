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
});
