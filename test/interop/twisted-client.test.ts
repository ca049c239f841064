/**
 * Interop tier (issue 15): Twisted's own AMP as a client of a real `vertex
 * server`, over TLS 1.3 with ALPN q2q/2, hello first. The cases are the table
 * in control-cases.ts. Each runs twice, each time against a fresh server:
 *
 *  - as is: every case must pass, every answer must carry the tag Twisted
 *    asked with, and the error table in docs/amp.md must be what Twisted saw;
 *  - against a deliberately wrong answer: the answer box is altered before
 *    Twisted reads it (another code, a changed value, two tags swapped), and
 *    the server drops no over-limit box; every case must then fail.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createCsr, generateKeyPair } from '../../q2q/identity';
import { ROOT, runVertex, startServer, stopAll, tempDir, type ServerHandle } from '../helpers/cli';
import {
  CASES,
  DECLARED_CODES,
  IDENTITIES,
  PASSWORD,
  SESSIONS,
  type Call,
  type CaseContext,
  type ControlCase,
  type Expect,
  type PipelineCase,
  type SessionName,
  type Typed,
} from './control-cases';
import { describeWithTwisted, runTwistedClient, type JsonValue, type Line } from './twisted/python';

const DOMAIN = 'example.test';
const DOC = path.join(ROOT, 'docs', 'amp.md');
const TABLE_START = '<!-- twisted-client-errors:start -->';
const TABLE_END = '<!-- twisted-client-errors:end -->';

afterAll(stopAll);

function isPipeline(c: ControlCase | PipelineCase): c is PipelineCase {
  return 'pipeline' in c;
}

/** What Twisted raises for an error code, given that every case declares all of ours. */
function twistedException(code: string): string {
  if (code === 'UNHANDLED') return 'UnhandledCommand';
  if (code === 'UNKNOWN') return 'UnknownRemoteError';
  return DECLARED_CODES.includes(code) ? code : 'UnknownRemoteError';
}

function field(line: Line | undefined, key: string): JsonValue | undefined {
  const v = line?.[key];
  return v === null ? undefined : v;
}

function rawText(line: Line, key: string): string | undefined {
  const raw = line.raw as Record<string, { text?: string }> | undefined;
  return raw?.[key]?.text;
}

/** Null when the line is what the call expects, else what differs. */
function check(call: Call, expect: Expect, line: Line, ctx: CaseContext): string[] {
  const bad: string[] = [];
  switch (expect.kind) {
    case 'answer': {
      if (line.outcome !== 'answer') {
        bad.push(`expected an answer, got ${line.outcome} ${String(line.exception ?? '')} ${String(line.code ?? '')}: ${String(line.description ?? '')}`);
        break;
      }
      if (rawText(line, '_answer') !== line.tag) bad.push(`answer tag ${rawText(line, '_answer')} for ask ${String(line.tag)}`);
      const fields = (line.fields ?? {}) as Record<string, JsonValue>;
      for (const [key, spec] of Object.entries(expect.fields)) {
        const problem = spec.match(fields[key.replace(/-/g, '_')], ctx);
        if (problem) bad.push(`${key}: ${problem}`);
      }
      break;
    }
    case 'error': {
      if (line.outcome !== 'error' || line.code !== expect.code) {
        bad.push(`expected error ${expect.code}, got ${line.outcome} ${String(line.code ?? '')}: ${String(line.description ?? JSON.stringify(line.fields)).slice(0, 200)}`);
        break;
      }
      if (line.exception !== twistedException(expect.code)) bad.push(`expected Twisted to raise ${twistedException(expect.code)}, got ${String(line.exception)}`);
      if (rawText(line, '_error') !== line.tag) bad.push(`error tag ${rawText(line, '_error')} for ask ${String(line.tag)}`);
      if (typeof line.description !== 'string' || line.description === '') bad.push('no description');
      break;
    }
    case 'lost':
      if (line.outcome !== 'error' || line.raw !== undefined || !/^Connection(Lost|Done)$/.test(String(line.exception))) {
        bad.push(`expected the server to drop the connection, got ${line.outcome} ${String(line.exception ?? line.code ?? '')}`);
      }
      break;
    default: {
      const never: never = expect;
      throw new Error(`unknown expectation ${JSON.stringify(never)}`);
    }
  }
  void call;
  return bad;
}

/** The wrong answer each case is also run against. */
function wrongAnswer(expect: Expect): Record<string, string> | null {
  switch (expect.kind) {
    case 'answer': {
      const first = Object.keys(expect.fields)[0];
      return first === undefined ? { kind: 'code', to: 'Internal' } : { kind: 'value', key: first };
    }
    case 'error':
      // UNHANDLED -> UnknownCommand is what the server sent before issue 15.
      return { kind: 'code', to: expect.code === 'UNHANDLED' ? 'UnknownCommand' : 'Internal' };
    case 'lost':
      return null; // the wrong server of that pass answers instead of dropping
    default:
      return null;
  }
}

function wireArgs(call: Call, ctx: CaseContext): Array<{ key: string; type: string; value: JsonValue }> {
  return Object.entries(call.args ?? {}).map(([key, arg]) => {
    const typed: Typed = typeof arg === 'function' ? arg(ctx) : arg;
    return { key, type: typed.type, value: typed.value };
  });
}

function planCall(call: Call, ctx: CaseContext) {
  const response = call.expect.kind === 'answer'
    ? Object.entries(call.expect.fields).map(([key, f]) => ({ key, type: f.type, optional: f.optional ?? false }))
    : [];
  return { command: call.command, args: wireArgs(call, ctx), response, declare: DECLARED_CODES };
}

interface Pass {
  lines: Line[];
  ctx: CaseContext;
  byCase: Map<string, Line>;
}

async function registerUser(server: ServerHandle, address: string): Promise<{ cert: string; key: string }> {
  const home = tempDir('home');
  const result = await runVertex([...server.resolveArg(DOMAIN), '--home', home, 'register', address, '--password-stdin'], { input: `${PASSWORD}\n` });
  if (result.code !== 0) throw new Error(`register ${address}: ${result.stderr}`);
  const dir = path.join(home, 'identities', address);
  return { cert: path.join(dir, 'cert.pem'), key: path.join(dir, 'key.pem') };
}

const CSR_ADDRESSES = ['alice', 'bob', 'carol', 'dora', 'dave', 'erin', 'frank', 'nobody'].map((u) => `${u}@${DOMAIN}`).concat('dave@other.test');

async function runPass(wrong: boolean): Promise<Pass> {
  const configDir = tempDir('cfg');
  const config = path.join(configDir, 'server.yaml');
  // The wrong pass's server takes boxes of any size, so a drop it should make does not happen.
  const limits = wrong ? 'limits:\n  max_box_bytes: 16777216\n' : '';
  fs.writeFileSync(config, `version: 1\ndomains: [${DOMAIN}]\nregistration: open\n${limits}`);
  const server = await startServer([], { extraArgs: ['--config', config] });
  try {
    const identities = Object.fromEntries(await Promise.all(IDENTITIES.map(async (who) => [who, await registerUser(server, `${who}@${DOMAIN}`)] as const)));
    const csrs = new Map<string, string>();
    for (const address of CSR_ADDRESSES) csrs.set(address, await createCsr(address, (await generateKeyPair()).privateKeyPem));
    const ctx: CaseContext = {
      caPem: fs.readFileSync(path.join(server.dataDir, 'ca', DOMAIN, 'cert.pem'), 'utf8'),
      csr: (address) => {
        const csr = csrs.get(address);
        if (csr === undefined) throw new Error(`no csr made for ${address}; add it to CSR_ADDRESSES`);
        return csr;
      },
      // As the server passes it on: X509Certificate's PEM, which ends with a newline.
      certPem: (who) => new X509Certificate(fs.readFileSync(identities[who]!.cert)).toString(),
      listenerToken: randomBytes(16).toString('hex'),
      listenerCandidates: JSON.stringify([{ host: '192.0.2.7', port: 4242 }]),
    };

    const sessionOf = (name: SessionName) => SESSIONS.find((s) => s.name === name);
    const plannedCase = (c: ControlCase | PipelineCase) => {
      if (isPipeline(c)) {
        return { id: c.id, pipeline: c.pipeline.map((call) => planCall(call, ctx)), mutation: { kind: 'swap', a: 0, b: 1 } };
      }
      const probe = c.open !== undefined || c.expect.kind === 'error';
      return { id: c.id, ...planCall(c, ctx), probe, mutation: wrongAnswer(c.expect) };
    };
    const sessions: unknown[] = [];
    const addSession = (name: string, spec: (typeof SESSIONS)[number] | undefined, cases: Array<ControlCase | PipelineCase>) => {
      sessions.push({
        name,
        identity: spec?.identity ?? null,
        keep: spec?.keep ?? false,
        responders: (spec?.responders ?? []).map((r) => {
          const answer = r.answer(ctx);
          return { command: r.command, args: r.args, response: Object.keys(answer).map((key) => ({ key, type: 'String' })), answer };
        }),
        cases: cases.map(plannedCase),
      });
    };
    for (const spec of SESSIONS) {
      addSession(spec.name, spec, CASES.filter((c) => c.session === spec.name));
      if (spec.name === 'anon') {
        for (const c of CASES.filter((x) => x.session === 'solo')) addSession(`solo:${c.id}`, undefined, [c]);
      }
    }
    const plan = {
      host: '127.0.0.1',
      port: server.port,
      ca: path.join(server.dataDir, 'ca', DOMAIN, 'cert.pem'),
      identities,
      mutate: wrong,
      sessions,
    };
    const lines = await runTwistedClient(plan);
    const byCase = new Map<string, Line>();
    for (const line of lines) if (typeof line.case === 'string') byCase.set(line.case, line);
    return { lines, ctx, byCase };
  } finally {
    await server.proc.stop();
  }
}

/** Every mismatch of one case, given the pass's output. */
function verdict(c: ControlCase | PipelineCase, pass: Pass): string[] {
  const line = pass.byCase.get(c.id);
  if (!line) return ['no result'];
  if (isPipeline(c)) {
    const results = (line.results ?? []) as Line[];
    if (results.length !== c.pipeline.length) return [`${results.length} results for ${c.pipeline.length} calls`];
    return c.pipeline.flatMap((call, i) => check(call, call.expect, results[i] as Line, pass.ctx).map((m) => `call ${i} (${call.command}): ${m}`));
  }
  const bad = check(c, c.expect, line, pass.ctx);
  const wantOpen = c.open ?? (c.expect.kind === 'error' ? true : undefined);
  if (wantOpen !== undefined && field(line, 'open_after') !== wantOpen) {
    bad.push(`expected the connection ${wantOpen ? 'open' : 'closed'} afterwards, it is ${field(line, 'open_after') ? 'open' : 'closed'}`);
  }
  if (c.id === 'inbound/ok') {
    // What the server forwarded to alice's Twisted responder.
    const event = pass.lines.find((l) => l.event === 'responder' && l.command === 'inbound');
    const args = (event?.args ?? {}) as Record<string, { text?: string }>;
    if (args.From?.text !== `bob@${DOMAIN}`) bad.push(`alice was told the caller is ${JSON.stringify(args.From)}`);
    if (args.service?.text !== 'ssh') bad.push(`alice was asked for service ${JSON.stringify(args.service)}`);
    if (args.certificate?.text !== pass.ctx.certPem('bob')) bad.push("alice did not get bob's certificate");
  }
  if (c.id === 'inbound/device') {
    const events = pass.lines.filter((l) => l.event === 'responder' && l.command === 'inbound');
    const args = (events[1]?.args ?? {}) as Record<string, { text?: string }>;
    if (args.from_device?.text !== 'phone') bad.push(`alice was told the caller's device is ${JSON.stringify(args.from_device)}`);
  }
  return bad;
}

function errorTable(pass: Pass): string {
  const rows = ['| command | request | `_error_code` | Twisted raises | connection after |', '|---|---|---|---|---|'];
  for (const c of CASES) {
    if (isPipeline(c) || c.expect.kind === 'answer') continue;
    const line = pass.byCase.get(c.id);
    const code = c.expect.kind === 'error' ? `\`${c.expect.code}\`` : '(none: dropped)';
    const raised = c.expect.kind === 'error' ? String(line?.exception) : `${String(line?.exception)} (the call)`;
    const open = field(line, 'open_after') === true ? 'open' : 'closed';
    rows.push(`| \`${c.command}\` | ${c.failure ?? c.id} | ${code} | ${raised} | ${open} |`);
  }
  return rows.join('\n');
}

describeWithTwisted('interop: Twisted AMP client -> vertex server', () => {
  let clean: Pass;
  let wrong: Pass;
  beforeAll(async () => {
    clean = await runPass(false);
    wrong = await runPass(true);
  }, 300_000);

  it('connects over TLS 1.3 with ALPN q2q/2 and sees the pinned domain CA', () => {
    const sessions = clean.lines.filter((l) => typeof l.session === 'string');
    expect(sessions.length).toBeGreaterThanOrEqual(SESSIONS.length);
    for (const s of sessions) expect({ session: s.session, alpn: s.alpn, tls: s.tls, pinned: s.pinned }).toEqual({ session: s.session, alpn: 'q2q/2', tls: 'TLSv1.3', pinned: true });
  });

  const ids = CASES.map((c) => c.id);
  it('has one line per case, and unique ids', () => {
    expect(new Set(ids).size).toBe(ids.length);
  });

  it.each(ids)('%s', (id) => {
    const c = CASES.find((x) => x.id === id)!;
    expect(verdict(c, clean)).toEqual([]);
  });

  it.each(ids)('%s fails against a wrong answer', (id) => {
    const c = CASES.find((x) => x.id === id)!;
    expect(verdict(c, wrong)).not.toEqual([]);
  });

  it('answers pipelined calls each under the tag it was asked with', () => {
    const line = clean.byCase.get('pipeline/mixed')!;
    const results = line.results as Line[];
    expect(results.map((r) => rawText(r, '_answer') ?? rawText(r, '_error'))).toEqual(results.map((r) => r.tag));
    // Tags are Twisted's: lower-case hex without padding.
    for (const r of results) expect(String(r.tag)).toMatch(/^[1-9a-f][0-9a-f]*$/);
  });

  it('docs/amp.md lists the error each failure gives a Twisted client', () => {
    const doc = fs.readFileSync(DOC, 'utf8');
    const start = doc.indexOf(TABLE_START);
    const end = doc.indexOf(TABLE_END);
    expect(start).toBeGreaterThanOrEqual(0);
    const documented = doc.slice(start + TABLE_START.length, end).trim();
    const observed = errorTable(clean);
    if (documented !== observed) process.stderr.write(`docs/amp.md should read:\n${observed}\n`);
    expect(documented).toBe(observed);
  });
});
