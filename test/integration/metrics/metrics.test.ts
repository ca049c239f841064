/**
 * /metrics and /health on real `vertex server` and `vertex agent` processes:
 * after traffic through the relay (curl through alice's SOCKS5 to bob's web
 * page), a registration and a wrong password, `curl` on /metrics shows the
 * counters moved, and the text parses as Prometheus exposition format with
 * an independent parser (python3-prometheus-client, installed by .ci/run).
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { runVertex, startServer, stopAll, tempDir, type ServerHandle } from '../../helpers/cli';
import { PASSWORD, type World } from '../../helpers/q2q-world';
import { PAGE, run, startAgent, startWeb, stopClients, type AgentHandle, type Closable } from '../agent/helpers';

const PYTHON = '/usr/bin/python3';
const PARSE = `
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
`;

interface Sample { family: string; type: string; name: string; labels: Record<string, string>; value: number }

/** Parses exposition text with prometheus_client; throws if it is not valid. */
function parseExposition(text: string): Sample[] {
  return JSON.parse(execFileSync(PYTHON, ['-c', PARSE], { input: text, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] })) as Sample[];
}

async function curl(url: string): Promise<{ status: number; body: string }> {
  const r = await run('curl', ['-sS', '-o', '-', '-w', '\n%{http_code}', url]);
  const text = r.stdout.toString();
  const cut = text.lastIndexOf('\n');
  return { status: Number(text.slice(cut + 1)), body: text.slice(0, cut) };
}

/** The sum of samples named `name` whose labels include `labels`. */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

async function scrape(url: string): Promise<Sample[]> {
  const r = await curl(url);
  expect(r.status).toBe(200);
  return parseExposition(r.body);
}

afterAll(async () => {
  await stopClients();
  await stopAll();
});

describe('metrics', () => {
  let a: ServerHandle;
  let b: ServerHandle;
  let world: World;
  let web: Closable & { release(): void };
  let alice: AgentHandle;
  let bob: AgentHandle;
  const metricsUrl = (proc: { output(): string }, who: string) => {
    const m = proc.output().match(new RegExp(`vertex ${who}: metrics on (http://\\S+/metrics)`));
    if (!m) throw new Error(`no metrics address in output:\n${proc.output()}`);
    return m[1] as string;
  };

  beforeAll(async () => {
    a = await startServer(['a.test'], { extraArgs: ['--metrics', '127.0.0.1:0'] });
    b = await startServer(['b.test'], { extraArgs: ['--metrics', '127.0.0.1:0', ...a.resolveArg('a.test')] });
    await b.proc.waitFor(/metrics on http/);
    const resolveArgs = [...a.resolveArg('a.test'), ...b.resolveArg('b.test')];
    world = {
      a, b, resolveArgs,
      endpoints: new Map([['a.test', { host: '127.0.0.1', port: a.port }], ['b.test', { host: '127.0.0.1', port: b.port }]]),
      user: () => { throw new Error('not used'); },
    };
    const homes: Record<string, string> = {};
    for (const address of ['alice@a.test', 'bob@b.test']) {
      homes[address] = tempDir('home');
      const r = await runVertex([...resolveArgs, '--home', homes[address]!, 'register', address, '--password-stdin'], { input: PASSWORD });
      expect(r.code).toBe(0);
    }
    web = await startWeb();
    bob = await startAgent(world, homes['bob@b.test']!, [
      `expose: [{ service: http, target: "127.0.0.1:${web.port}", allow: [alice@a.test] }]`,
      'metrics: { listen: 127.0.0.1:0 }',
    ].join('\n'));
    // Relay only, so the server's relay counters move too.
    alice = await startAgent(world, homes['alice@a.test']!, ['routes: [relay]', 'metrics: { listen: "127.0.0.1:0" }'].join('\n'));
    await alice.proc.waitFor(/vertex agent: metrics on/);
    await bob.proc.waitFor(/vertex agent: metrics on/);
  });

  afterAll(async () => {
    await web?.close();
  });

  it('the server answers /health once its store answers, and /live; other paths are 404', async () => {
    const base = metricsUrl(a.proc, 'server').replace(/\/metrics$/, '');
    expect(await curl(`${base}/health`)).toEqual({ status: 200, body: 'ok\n' });
    expect((await curl(`${base}/live`)).status).toBe(200);
    expect((await curl(`${base}/nothing`)).status).toBe(404);
    // Loopback only unless told otherwise.
    expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  });

  it('after traffic, the counters moved on both servers and both agents, and every text parses as Prometheus exposition', async () => {
    const bServer = metricsUrl(b.proc, 'server');
    const aServer = metricsUrl(a.proc, 'server');
    const before = await scrape(bServer);
    expect(value(before, 'vertex_server_relay_pairs_total')).toBe(0);

    const page = await run('curl', ['-sS', '--max-time', '20', '--socks5-hostname', `127.0.0.1:${alice.socksPort}`, 'http://bob.b.test.q2q/']);
    expect(page.stdout.toString()).toBe(PAGE);
    const wrong = await runVertex([...world.resolveArgs, '--home', tempDir('home'), 'login', 'alice@a.test', '--password-stdin'], { input: 'not the password at all' });
    expect(wrong.code).toBe(3);

    const server = await scrape(bServer);
    expect(value(server, 'vertex_server_commands_total', { command: 'inbound', outcome: 'ok' })).toBeGreaterThanOrEqual(1);
    expect(value(server, 'vertex_server_relay_pairs_total')).toBe(1);
    expect(value(server, 'vertex_server_relay_bytes_total')).toBeGreaterThan(PAGE.length);
    expect(value(server, 'vertex_server_sessions')).toBeGreaterThanOrEqual(1);
    expect(value(server, 'vertex_server_online_agents')).toBe(1);
    expect(value(server, 'vertex_server_account_events_total', { event: 'registration', outcome: 'ok' })).toBe(1);
    expect(value(server, 'vertex_server_store_seconds_count')).toBeGreaterThan(0);
    expect(server.find((s) => s.name === 'vertex_server_sessions')?.labels['node']).toBeTruthy();

    const home = await scrape(aServer);
    expect(value(home, 'vertex_server_account_events_total', { event: 'login', outcome: 'BadPassword' })).toBe(1);
    expect(value(home, 'vertex_server_commands_total', { command: 'sign', outcome: 'BadPassword' })).toBe(1);

    const caller = await scrape(metricsUrl(alice.proc, 'agent'));
    expect(value(caller, 'vertex_agent_tunnels_total', { kind: 'socks', route: 'relay' })).toBe(1);
    expect(value(caller, 'vertex_agent_connects_total', { outcome: 'ok' })).toBe(1);
    expect(value(caller, 'vertex_agent_connect_seconds_count', { route: 'relay' })).toBe(1);
    expect(value(caller, 'vertex_agent_bytes_total', { route: 'relay', direction: 'in' })).toBeGreaterThanOrEqual(PAGE.length);
    expect(value(caller, 'vertex_agent_home_online')).toBe(1);

    const listener = await scrape(metricsUrl(bob.proc, 'agent'));
    expect(value(listener, 'vertex_agent_tunnels_total', { kind: 'inbound', route: 'relay' })).toBe(1);
    expect(value(listener, 'vertex_agent_bytes_total', { route: 'relay', direction: 'out' })).toBeGreaterThanOrEqual(PAGE.length);
  });

  it('the parser used above rejects text that is not exposition format (so the parse check can fail)', () => {
    expect(() => parseExposition('vertex_server_sessions{node="x"} not-a-number\n')).toThrow();
  });

  it('metrics are off without the config section: no listener is announced', async () => {
    const plain = await startServer(['off.test']);
    expect(plain.proc.output()).not.toMatch(/metrics on/);
    await plain.proc.stop();
    expect(fs.existsSync(path.join(plain.dataDir, 'vertex.db'))).toBe(true);
  });
});
