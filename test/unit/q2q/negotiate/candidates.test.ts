import { formatCandidate, parseCandidates, parseRoutes } from '../../../../q2q/negotiate/candidates';

describe('candidates', () => {
  it('parses what formatCandidate writes and skips what it does not understand', () => {
    const json = JSON.stringify([formatCandidate('tcp', '192.0.2.7', 4242), formatCandidate('ptcp', '2001:db8::1', 9), 'udp:192.0.2.1:1', 'tcp:example.com:80', 7, null, 'nat:easy']);
    expect(parseCandidates(json)).toEqual([
      { route: 'tcp', host: '192.0.2.7', port: 4242 },
      { route: 'ptcp', host: '2001:db8::1', port: 9 },
    ]);
    expect(parseCandidates('not json')).toEqual([]);
    expect(parseRoutes('["relay","bogus","tcp"]')).toEqual(['tcp', 'relay']);
  });

  it('skips a deeply nested entry instead of overflowing the stack', () => {
    // Regression: String() of an array nested 20,000 deep, from a caller's inbound, threw a
    // RangeError out of the listener's inbound responder (the same bug the control fuzz found
    // in the server's listen).
    const deep = `[${'['.repeat(20_000)}${']'.repeat(20_000)}, "tcp:192.0.2.7:1"]`;
    expect(parseCandidates(deep)).toEqual([{ route: 'tcp', host: '192.0.2.7', port: 1 }]);
  });
});
