/**
 * The control commands as a Twisted client calls them (issue 15): one line
 * per case. A new server command is one line per argument shape here.
 *
 * Each case names the session it runs on (sessions below), the command, its
 * arguments with their AMP types (what a Twisted programmer would declare),
 * and what must come back: an answer whose fields pass their matchers, an
 * error with a given `_error_code`, or a dropped connection. `open` asks for
 * a probe afterwards: is the connection still up?
 *
 * Every case declares all of our error codes on its Command, as a Twisted
 * client of Vertex would (`errors = {BadPassword: b"BadPassword", ...}`), so
 * Twisted raises an exception named after the code; UNHANDLED raises
 * UnhandledCommand, as it does for any Twisted command.
 */
import { ERROR_CODES } from '../../q2q/errors';
import type { JsonValue } from './twisted/python';

export type WireType = 'String' | 'Unicode' | 'Integer' | 'Boolean' | 'ListOf:String' | 'ListOf:Integer' | 'ListOf:Unicode';

export interface Typed {
  type: WireType;
  value: JsonValue;
}

/** Values only known once the world is up: CSRs, certificates, the CA. */
export interface CaseContext {
  caPem: string;
  csr: (address: string) => string;
  certPem: (who: Identity) => string;
  /** The token alice's Twisted listener answers inbound with. */
  listenerToken: string;
  listenerCandidates: string;
}

type Arg = Typed | ((ctx: CaseContext) => Typed);
/** Null when the value is right, else what is wrong with it. */
export type Matcher = (value: JsonValue | undefined, ctx: CaseContext) => string | null;

export type Expect =
  | { kind: 'answer'; fields: Record<string, { type: WireType; optional?: boolean; match: Matcher }> }
  | { kind: 'error'; code: string }
  | { kind: 'lost' };

export interface Call {
  command: string;
  args?: Record<string, Arg>;
  expect: Expect;
}

export interface ControlCase extends Call {
  id: string;
  session: SessionName;
  /** For docs/amp.md: what is wrong with the request (errors only). */
  failure?: string;
  /** Probe afterwards: is the connection still open? */
  open?: boolean;
}

export interface PipelineCase {
  id: string;
  session: SessionName;
  pipeline: Call[];
}

export type SessionName = 'pre-hello' | 'anon' | 'alice' | 'dora' | 'bob' | 'solo';
/** Users registered through the CLI before the Twisted client runs; their sessions present their certificates. */
export type Identity = 'alice' | 'bob' | 'dora';
export const IDENTITIES: Identity[] = ['alice', 'bob', 'dora'];

export interface SessionSpec {
  name: SessionName;
  identity: Identity | null;
  /** Left open until every session has run (alice listens while bob calls inbound). */
  keep?: boolean;
  /** Commands the server may send this session, and the answer Twisted gives. */
  responders?: Array<{ command: string; args: Array<{ key: string; type: WireType; optional?: boolean }>; answer: (ctx: CaseContext) => Record<string, string> }>;
}

// ---------------------------------------------------------------- values

export const S = (value: string): Typed => ({ type: 'String', value: { text: value } });
export const Hex = (hex: string): Typed => ({ type: 'String', value: { hex } });
export const U = (value: string): Typed => ({ type: 'Unicode', value });
export const I = (value: number): Typed => ({ type: 'Integer', value });
export const B = (value: boolean): Typed => ({ type: 'Boolean', value });
export const L = (items: string[]): Typed => ({ type: 'ListOf:String', value: items.map((text) => ({ text })) });
/** `count` copies of `text`, built by the Python side (no 64 KB JSON strings in the plan). */
export const Rep = (text: string, count: number): Typed => ({ type: 'String', value: { repeat: [text, count] } });

// ---------------------------------------------------------------- matchers

function textOf(value: JsonValue | undefined): string | undefined {
  if (value && typeof value === 'object' && !Array.isArray(value) && typeof value.text === 'string') return value.text;
  return undefined;
}

export const text = (want: string | ((ctx: CaseContext) => string)): Matcher => (value, ctx) => {
  const expected = typeof want === 'string' ? want : want(ctx);
  return textOf(value) === expected ? null : `expected ${JSON.stringify(expected.slice(0, 80))}, got ${JSON.stringify(value)?.slice(0, 120)}`;
};
export const matches = (re: RegExp): Matcher => (value) => (re.test(textOf(value) ?? '') ? null : `expected ${re}, got ${JSON.stringify(value)?.slice(0, 120)}`);
export const int = (check: (n: number) => boolean, what: string): Matcher => (value) =>
  typeof value === 'number' && check(value) ? null : `expected ${what}, got ${JSON.stringify(value)}`;
export const absent: Matcher = (value) => (value === undefined || value === null ? null : `expected no value, got ${JSON.stringify(value)}`);
const CERT_PEM = /^-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n?$/;
export const certPem = matches(CERT_PEM);

export const answer = (fields: Record<string, [WireType, Matcher] | [WireType, Matcher, 'optional']> = {}): Expect => ({
  kind: 'answer',
  fields: Object.fromEntries(Object.entries(fields).map(([k, [type, match, optional]]) => [k, { type, match, optional: optional === 'optional' }])),
});
export const error = (code: string): Expect => ({ kind: 'error', code });
export const lost: Expect = { kind: 'lost' };

/** Every code of ours, declared on every Command, as a Twisted client of Vertex would. */
export const DECLARED_CODES: string[] = Object.keys(ERROR_CODES);

// ---------------------------------------------------------------- the table

const DOMAIN = 'example.test';
const ALICE = `alice@${DOMAIN}`;
const BOB = `bob@${DOMAIN}`;
export const PASSWORD = 'correct horse battery staple';
const VERSION = S('2');
const MAX_VALUE = 65_535;

const hello = answer({ version: ['String', text('2')], software: ['Unicode', matches(/^vertex\/\d/)], identity: ['Unicode', absent, 'optional'] });
const helloAs = (who: string) => answer({ version: ['String', text('2')], software: ['Unicode', matches(/^vertex\/\d/)], identity: ['Unicode', text(who)] });
const issued = answer({ certificate: ['Unicode', certPem], ca: ['Unicode', text((ctx) => ctx.caPem)] });
const csrFor = (address: string): Arg => (ctx) => U(ctx.csr(address));

export const SESSIONS: SessionSpec[] = [
  { name: 'pre-hello', identity: null },
  { name: 'anon', identity: null },
  {
    name: 'alice',
    identity: 'alice',
    keep: true,
    responders: [{
      command: 'inbound',
      args: [
        ...['from', 'service', 'certificate', 'candidates', 'routes'].map((key) => ({ key, type: 'String' as const })),
        { key: 'from_device', type: 'String', optional: true },
      ],
      answer: (ctx) => ({ token: ctx.listenerToken, candidates: ctx.listenerCandidates }),
    }],
  },
  // Listens, but has no responder for inbound (an agent of another protocol version).
  { name: 'dora', identity: 'dora', keep: true },
  { name: 'bob', identity: 'bob' },
];

export const CASES: Array<ControlCase | PipelineCase> = [
  // Before hello: every command but hello is refused, and the connection stays usable.
  { id: 'ping/before-hello', session: 'pre-hello', command: 'ping', expect: error('ProtocolVersion'), failure: 'sent before hello', open: true },
  { id: 'identify/before-hello', session: 'pre-hello', command: 'identify', args: { domain: U(DOMAIN) }, expect: error('ProtocolVersion'), failure: 'sent before hello' },
  { id: 'unknown/before-hello', session: 'pre-hello', command: 'frobnicate', expect: error('UNHANDLED'), failure: 'unknown command, before hello', open: true },
  { id: 'hello/ok', session: 'pre-hello', command: 'hello', args: { version: VERSION }, expect: hello },
  { id: 'ping/ok', session: 'pre-hello', command: 'ping', expect: answer() },

  // hello: a wrong version is answered, then the server closes.
  { id: 'hello/version-3', session: 'solo', command: 'hello', args: { version: S('3') }, expect: error('ProtocolVersion'), failure: 'unsupported version', open: false },
  { id: 'hello/version-integer', session: 'solo', command: 'hello', args: { version: I(1) }, expect: error('ProtocolVersion'), failure: 'version as Integer 1', open: false },
  { id: 'hello/version-boolean', session: 'solo', command: 'hello', args: { version: B(true) }, expect: error('ProtocolVersion'), failure: 'version as Boolean', open: false },
  { id: 'hello/missing-version', session: 'solo', command: 'hello', expect: error('ProtocolVersion'), failure: 'missing version', open: false },

  { id: 'hello/anonymous', session: 'anon', command: 'hello', args: { version: VERSION }, expect: hello },
  // identify
  { id: 'identify/ok', session: 'anon', command: 'identify', args: { domain: U(DOMAIN) }, expect: answer({ ca: ['Unicode', text((ctx) => ctx.caPem)] }) },
  { id: 'identify/upper-case', session: 'anon', command: 'identify', args: { domain: U('EXAMPLE.test') }, expect: answer({ ca: ['Unicode', text((ctx) => ctx.caPem)] }) },
  { id: 'identify/unknown-domain', session: 'anon', command: 'identify', args: { domain: U('other.test') }, expect: error('UnknownDomain'), failure: 'domain not served', open: true },
  { id: 'identify/missing-domain', session: 'anon', command: 'identify', expect: error('BadRequest'), failure: 'missing domain' },
  { id: 'identify/domain-integer', session: 'anon', command: 'identify', args: { domain: I(42) }, expect: error('UnknownDomain'), failure: 'domain as Integer' },
  { id: 'identify/domain-not-utf8', session: 'anon', command: 'identify', args: { domain: Hex('ff6578') }, expect: error('BadRequest'), failure: 'domain not UTF-8' },
  { id: 'identify/domain-64k', session: 'anon', command: 'identify', args: { domain: Rep('a', MAX_VALUE) }, expect: error('UnknownDomain'), failure: 'domain of 65,535 bytes', open: true },
  // who-am-i and ping
  { id: 'who-am-i/ok', session: 'anon', command: 'who-am-i', expect: answer({ host: ['String', text('127.0.0.1')], port: ['Integer', int((n) => n > 0 && n < 65536, 'a port')] }) },
  { id: 'who-am-i/extra-argument', session: 'anon', command: 'who-am-i', args: { extra: S('ignored') }, expect: answer({ host: ['String', text('127.0.0.1')] }) },
  { id: 'ping/value-64k', session: 'anon', command: 'ping', args: { padding: Rep('p', MAX_VALUE) }, expect: answer() },
  { id: 'ping/key-255', session: 'anon', command: 'ping', args: { ['k'.repeat(255)]: S('v') }, expect: answer() },
  // unknown commands: Twisted's UNHANDLED, and the connection stays open
  { id: 'unknown/command', session: 'anon', command: 'frobnicate', expect: error('UNHANDLED'), failure: 'unknown command', open: true },
  { id: 'unknown/case', session: 'anon', command: 'PING', expect: error('UNHANDLED'), failure: 'command names are case-sensitive', open: true },
  { id: 'unknown/twisted-vertex', session: 'anon', command: 'Who-Am-I', expect: error('UNHANDLED'), failure: "2005 Vertex's Who-Am-I", open: true },
  // register
  { id: 'register/ok', session: 'anon', command: 'register', args: { address: U(`carol@${DOMAIN}`), password: U(PASSWORD), csr: csrFor(`carol@${DOMAIN}`) }, expect: issued },
  { id: 'register/name-taken', session: 'anon', command: 'register', args: { address: U(ALICE), password: U(PASSWORD), csr: csrFor(ALICE) }, expect: error('NameTaken'), failure: 'name taken' },
  { id: 'register/missing-csr', session: 'anon', command: 'register', args: { address: U(`dave@${DOMAIN}`), password: U(PASSWORD) }, expect: error('BadRequest'), failure: 'missing csr' },
  { id: 'register/missing-password', session: 'anon', command: 'register', args: { address: U(`dave@${DOMAIN}`), csr: csrFor(`dave@${DOMAIN}`) }, expect: error('BadRequest'), failure: 'missing password' },
  { id: 'register/invalid-name', session: 'anon', command: 'register', args: { address: U(`Dave!@${DOMAIN}`), password: U(PASSWORD), csr: csrFor(`dave@${DOMAIN}`) }, expect: error('InvalidName'), failure: 'invalid user name' },
  { id: 'register/unknown-domain', session: 'anon', command: 'register', args: { address: U('dave@other.test'), password: U(PASSWORD), csr: csrFor('dave@other.test') }, expect: error('UnknownDomain'), failure: 'domain not served' },
  { id: 'register/short-password', session: 'anon', command: 'register', args: { address: U(`dave@${DOMAIN}`), password: I(42), csr: csrFor(`dave@${DOMAIN}`) }, expect: error('BadRequest'), failure: 'password as Integer 42 (too short)' },
  { id: 'register/password-64k', session: 'anon', command: 'register', args: { address: U(`dave@${DOMAIN}`), password: Rep('x', MAX_VALUE), csr: csrFor(`dave@${DOMAIN}`) }, expect: error('BadRequest'), failure: 'password of 65,535 bytes' },
  { id: 'register/csr-other-name', session: 'anon', command: 'register', args: { address: U(`dave@${DOMAIN}`), password: U(PASSWORD), csr: csrFor(`erin@${DOMAIN}`) }, expect: error('BadCertificateRequest'), failure: "csr for another name" },
  { id: 'register/csr-der', session: 'anon', command: 'register', args: { address: U(`dave@${DOMAIN}`), password: U(PASSWORD), csr: Hex('3082010a0282010100c0ffee') }, expect: error('BadRequest'), failure: 'csr as DER bytes (2005 Vertex)' },
  { id: 'register/csr-garbage', session: 'anon', command: 'register', args: { address: U(`dave@${DOMAIN}`), password: U(PASSWORD), csr: U('not a csr') }, expect: error('BadCertificateRequest'), failure: 'csr not PEM' },
  { id: 'register/csr-list', session: 'anon', command: 'register', args: { address: U(`dave@${DOMAIN}`), password: U(PASSWORD), csr: L(['a', 'b']) }, expect: error('BadCertificateRequest'), failure: 'csr as ListOf(String)' },
  // sign (login)
  { id: 'sign/ok', session: 'anon', command: 'sign', args: { address: U(ALICE), password: U(PASSWORD), csr: csrFor(ALICE) }, expect: issued },
  { id: 'sign/wrong-password', session: 'anon', command: 'sign', args: { address: U(ALICE), password: U('not the password'), csr: csrFor(ALICE) }, expect: error('BadPassword'), failure: 'wrong password', open: true },
  { id: 'sign/no-such-user', session: 'anon', command: 'sign', args: { address: U(`nobody@${DOMAIN}`), password: U(PASSWORD), csr: csrFor(`nobody@${DOMAIN}`) }, expect: error('NoSuchUser'), failure: 'no such account' },
  { id: 'sign/missing-address', session: 'anon', command: 'sign', args: { password: U(PASSWORD), csr: csrFor(ALICE) }, expect: error('BadRequest'), failure: 'missing address' },
  { id: 'sign/address-integer', session: 'anon', command: 'sign', args: { address: I(7), password: U(PASSWORD), csr: csrFor(ALICE) }, expect: error('InvalidName'), failure: 'address as Integer' },
  // commands that need a certificate, without one
  { id: 'renew/anonymous', session: 'anon', command: 'renew', args: { csr: csrFor(ALICE) }, expect: error('NotAllowed'), failure: 'no client certificate' },
  { id: 'listen/anonymous', session: 'anon', command: 'listen', args: { services: U('["ssh"]') }, expect: error('NotAllowed'), failure: 'no client certificate' },
  { id: 'inbound/anonymous', session: 'anon', command: 'inbound', args: { to: U(ALICE), service: U('ssh') }, expect: error('NotAllowed'), failure: 'no client certificate' },

  // alice, with her certificate: listens, and answers the inbound bob sends her.
  { id: 'hello/authenticated', session: 'alice', command: 'hello', args: { version: VERSION }, expect: helloAs(ALICE) },
  { id: 'listen/services-list', session: 'alice', command: 'listen', args: { services: L(['ssh', 'http']) }, expect: error('BadRequest'), failure: 'services as ListOf(String), not JSON' },
  { id: 'listen/services-object', session: 'alice', command: 'listen', args: { services: U('{"ssh":1}') }, expect: error('BadRequest'), failure: 'services a JSON object' },
  { id: 'listen/services-integer', session: 'alice', command: 'listen', args: { services: I(5) }, expect: error('BadRequest'), failure: 'services as Integer' },
  { id: 'listen/services-numbers', session: 'alice', command: 'listen', args: { services: U('[22,80]') }, expect: error('BadRequest'), failure: 'services JSON numbers, not names' },
  // Regression (fuzz): String() of a deeply nested array overflowed the stack, answered UNKNOWN.
  { id: 'listen/services-nested-deep', session: 'alice', command: 'listen', args: { services: U(`${'['.repeat(5000)}${']'.repeat(5000)}`) }, expect: error('BadRequest'), failure: 'services a JSON array nested 5,000 deep' },
  { id: 'listen/bad-service', session: 'alice', command: 'listen', args: { services: U('["no such name!"]') }, expect: error('InvalidName'), failure: 'invalid service name' },
  { id: 'listen/device-invalid', session: 'alice', command: 'listen', args: { services: U('["ssh"]'), device: U('no--dash') }, expect: error('InvalidName'), failure: "device with '--'" },
  { id: 'listen/device-64k', session: 'alice', command: 'listen', args: { services: U('["ssh"]'), device: Rep('d', MAX_VALUE) }, expect: error('InvalidName'), failure: 'device of 65,535 bytes' },
  { id: 'listen/ok', session: 'alice', command: 'listen', args: { services: U('["ssh","http"]'), device: U('Laptop') }, expect: answer({ device: ['Unicode', text('laptop')], devices: ['Unicode', text('["laptop"]')], conflicts: ['Unicode', text('[]')] }) },
  { id: 'renew/ok', session: 'alice', command: 'renew', args: { csr: csrFor(ALICE) }, expect: issued },
  { id: 'renew/csr-other-name', session: 'alice', command: 'renew', args: { csr: csrFor(BOB) }, expect: error('BadCertificateRequest'), failure: "csr for another name" },
  { id: 'renew/missing-csr', session: 'alice', command: 'renew', expect: error('BadRequest'), failure: 'missing csr' },
  { id: 'renew/csr-boolean', session: 'alice', command: 'renew', args: { csr: B(false) }, expect: error('BadCertificateRequest'), failure: 'csr as Boolean' },

  { id: 'hello/dora', session: 'dora', command: 'hello', args: { version: VERSION }, expect: helloAs(`dora@${DOMAIN}`) },
  { id: 'listen/dora-ok', session: 'dora', command: 'listen', args: { services: U('["ssh"]') }, expect: answer() },

  // bob calls alice through the server; alice's Twisted responder answers.
  { id: 'hello/bob', session: 'bob', command: 'hello', args: { version: VERSION }, expect: helloAs(BOB) },
  {
    id: 'inbound/ok', session: 'bob', command: 'inbound', args: { to: U(ALICE), service: U('ssh'), candidates: U('[]'), routes: U('["tcp"]') },
    expect: answer({
      token: ['String', text((ctx) => ctx.listenerToken)],
      candidates: ['Unicode', text((ctx) => ctx.listenerCandidates)],
      certificate: ['Unicode', text((ctx) => ctx.certPem('alice'))],
      relay: ['String', matches(/^[01]$/)],
      device: ['Unicode', text('laptop')],
    }),
  },
  { id: 'inbound/device', session: 'bob', command: 'inbound', args: { to: U(ALICE), device: U('LAPTOP'), service: U('http'), from_device: U('phone') }, expect: answer({ token: ['String', text((ctx) => ctx.listenerToken)], device: ['Unicode', text('laptop')] }) },
  { id: 'inbound/device-offline', session: 'bob', command: 'inbound', args: { to: U(ALICE), device: U('desktop'), service: U('ssh') }, expect: error('Offline'), failure: 'no such device online' },
  { id: 'inbound/device-invalid', session: 'bob', command: 'inbound', args: { to: U(ALICE), device: U('a--b'), service: U('ssh') }, expect: error('InvalidName'), failure: "device with '--'" },
  { id: 'inbound/from-device-invalid', session: 'bob', command: 'inbound', args: { to: U(ALICE), service: U('ssh'), from_device: Hex('ff') }, expect: error('BadRequest'), failure: 'from_device not UTF-8' },
  { id: 'inbound/not-exposed', session: 'bob', command: 'inbound', args: { to: U(ALICE), service: U('smtp') }, expect: error('NotExposed'), failure: 'service not exposed' },
  { id: 'inbound/listener-unhandled', session: 'bob', command: 'inbound', args: { to: U(`dora@${DOMAIN}`), service: U('ssh') }, expect: error('ProtocolVersion'), failure: "the listener's agent has no inbound (UNHANDLED there)" },
  { id: 'inbound/offline', session: 'bob', command: 'inbound', args: { to: U(`carol@${DOMAIN}`), service: U('ssh') }, expect: error('Offline'), failure: 'listener not online' },
  { id: 'inbound/unknown-domain', session: 'bob', command: 'inbound', args: { to: U('alice@other.test'), service: U('ssh') }, expect: error('UnknownDomain'), failure: 'domain not served' },
  { id: 'inbound/missing-to', session: 'bob', command: 'inbound', args: { service: U('ssh') }, expect: error('BadRequest'), failure: 'missing to' },
  { id: 'inbound/missing-service', session: 'bob', command: 'inbound', args: { to: U(ALICE) }, expect: error('BadRequest'), failure: 'missing service' },
  { id: 'inbound/to-integer', session: 'bob', command: 'inbound', args: { to: I(42), service: U('ssh') }, expect: error('InvalidName'), failure: 'to as Integer' },
  { id: 'inbound/service-list', session: 'bob', command: 'inbound', args: { to: U(ALICE), service: L(['ssh']) }, expect: error('InvalidName'), failure: 'service as ListOf(String)' },
  { id: 'listen/bob-ok', session: 'bob', command: 'listen', args: { services: U('[]') }, expect: answer() },

  // Pipelined: every call is written before any answer is read; each answer
  // must reach its own call by its tag (register waits for scrypt, the rest do not).
  {
    id: 'pipeline/mixed', session: 'anon', pipeline: [
      { command: 'identify', args: { domain: U(DOMAIN) }, expect: answer({ ca: ['Unicode', text((ctx) => ctx.caPem)] }) },
      { command: 'identify', args: { domain: U('other.test') }, expect: error('UnknownDomain') },
      { command: 'register', args: { address: U(`frank@${DOMAIN}`), password: U(PASSWORD), csr: csrFor(`frank@${DOMAIN}`) }, expect: issued },
      { command: 'ping', expect: answer() },
      { command: 'frobnicate', expect: error('UNHANDLED') },
      { command: 'who-am-i', expect: answer({ host: ['String', text('127.0.0.1')] }) },
      { command: 'register', args: { address: U(`frank@${DOMAIN}`), password: U('short') }, expect: error('BadRequest') },
      { command: 'sign', args: { address: U(`nobody@${DOMAIN}`), password: U(PASSWORD), csr: csrFor(`nobody@${DOMAIN}`) }, expect: error('NoSuchUser') },
      ...Array.from({ length: 24 }, (_, i): Call => (i % 2 === 0
        ? { command: 'ping', args: { n: I(i) }, expect: answer() }
        : { command: 'identify', args: { domain: U(`d${i}.test`) }, expect: error('UnknownDomain') })),
    ],
  },

  // A box over the server's limit (max_box_bytes, 256 KiB by default) breaks framing: dropped.
  { id: 'framing/box-over-limit', session: 'solo', command: 'ping', args: { a: Rep('a', MAX_VALUE), b: Rep('b', MAX_VALUE), c: Rep('c', MAX_VALUE), d: Rep('d', MAX_VALUE) }, expect: lost, failure: 'four 65,535-byte values: a box over 256 KiB', open: false },
];
