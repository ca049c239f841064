import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { createLogger, isJournalStream, syslogPriority } from '../../../cli/logger';
import { isVertexError } from '../../../q2q/errors';

/** A destination that keeps every write, as pino hands it over. */
function memory(): { stream: Writable; lines: () => string[] } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _enc, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  return { stream, lines: () => chunks.join('').split('\n').filter((l) => l !== '') };
}

function parse(line: string): Record<string, unknown> {
  return JSON.parse(line) as Record<string, unknown>;
}

describe('createLogger', () => {
  it('writes one JSON object per line with level, time, name and message', () => {
    const out = memory();
    const log = createLogger({ level: 'info', name: 'vertex', destination: out.stream, env: {} });
    log.info({ conn: 7 }, 'hello');
    const lines = out.lines();
    expect(lines).toHaveLength(1);
    const entry = parse(lines[0] ?? '');
    expect(entry).toMatchObject({ level: 30, name: 'vertex', conn: 7, msg: 'hello' });
    expect(typeof entry['time']).toBe('string');
    expect(Number.isNaN(Date.parse(String(entry['time'])))).toBe(false);
  });

  it('drops lines below the level and keeps those at or above it', () => {
    const out = memory();
    const log = createLogger({ level: 'warn', destination: out.stream, env: {} });
    log.debug('no');
    log.info('no');
    log.warn('yes');
    log.error('yes');
    expect(out.lines().map((l) => parse(l)['msg'])).toEqual(['yes', 'yes']);
  });

  it('redacts passwords, keys and tokens, also one or two levels down', () => {
    const out = memory();
    const log = createLogger({ level: 'info', destination: out.stream, env: {} });
    log.info(
      {
        password: 'hunter2',
        key: 'k1',
        keyPem: '-----BEGIN PRIVATE KEY-----',
        token: 't1',
        identity: { keyPem: 'pem2', key: 'k2', user: 'alice' },
        config: { socks: { auth: { username: 'u', password: 'nested' } }, auth: { password: 'p2' } },
      },
      'secrets',
    );
    const line = out.lines()[0] ?? '';
    for (const secret of ['hunter2', 'k1', 'BEGIN PRIVATE KEY', 't1', 'pem2', 'k2', 'p2']) {
      expect(line).not.toContain(secret);
    }
    const entry = parse(line);
    expect(entry['password']).toBe('[redacted]');
    expect((entry['identity'] as Record<string, unknown>)['user']).toBe('alice');
  });

  it('redacts in child loggers too', () => {
    const out = memory();
    const log = createLogger({ level: 'info', destination: out.stream, env: {} }).child({ conn: 'c1' });
    log.info({ token: 'secret-token' }, 'claim');
    const line = out.lines()[0] ?? '';
    expect(line).not.toContain('secret-token');
    expect(parse(line)).toMatchObject({ conn: 'c1', token: '[redacted]' });
  });

  it('under journald prefixes each line with its syslog priority and omits time', () => {
    const out = memory();
    const log = createLogger({ level: 'trace', destination: out.stream, env: { JOURNAL_STREAM: '8:12345' } });
    log.trace('t');
    log.debug('d');
    log.info('i');
    log.warn('w');
    log.error('e');
    log.fatal('f');
    const lines = out.lines();
    expect(lines.map((l) => l.slice(0, 3))).toEqual(['<7>', '<7>', '<6>', '<4>', '<3>', '<2>']);
    for (const line of lines) {
      const entry = parse(line.slice(3));
      expect(entry).not.toHaveProperty('time');
    }
    expect(parse(lines[3]?.slice(3) ?? '')).toMatchObject({ level: 40, msg: 'w' });
  });

  it('the journald prefix follows child loggers and runtime level changes', () => {
    const out = memory();
    const log = createLogger({ level: 'info', destination: out.stream, journald: true });
    const child = log.child({ component: 'socks' });
    child.warn('from child');
    log.level = 'debug';
    log.debug('now visible');
    expect(out.lines().map((l) => l.slice(0, 3))).toEqual(['<4>', '<7>']);
  });

  it('journald follows JOURNAL_STREAM by default and can be forced either way', () => {
    const plain = memory();
    createLogger({ level: 'info', destination: plain.stream, env: {} }).info('x');
    expect(plain.lines()[0]?.startsWith('{')).toBe(true);

    const forcedOff = memory();
    createLogger({ level: 'info', destination: forcedOff.stream, env: { JOURNAL_STREAM: '8:1' }, journald: false }).info('x');
    expect(forcedOff.lines()[0]?.startsWith('{')).toBe(true);

    const forcedOn = memory();
    createLogger({ level: 'info', destination: forcedOn.stream, env: {}, journald: true }).info('x');
    expect(forcedOn.lines()[0]?.startsWith('<6>{')).toBe(true);
  });

  it('rejects an unknown level with a Usage error', () => {
    let caught: unknown;
    try {
      createLogger({ level: 'loud', destination: memory().stream, env: {} });
    } catch (err) {
      caught = err;
    }
    expect(isVertexError(caught, 'Usage')).toBe(true);
  });

  it('silent writes nothing', () => {
    const out = memory();
    const log = createLogger({ level: 'silent', destination: out.stream, env: {} });
    log.fatal('nothing');
    expect(out.lines()).toEqual([]);
  });
});

describe('createLogger: one value per key, lines for people on a terminal', () => {
  it('a child that rebinds a key writes it once, the innermost value winning', () => {
    const out = memory();
    const log = createLogger({ level: 'info', destination: out.stream, env: {} }).child({ component: 'agent' }).child({ component: 'home', conn: 1 });
    log.info({ conn: 2 }, 'online');
    const line = out.lines()[0] ?? '';
    expect(line.match(/"component"/g)).toHaveLength(1);
    expect(line.match(/"conn"/g)).toHaveLength(1);
    expect(parse(line)).toMatchObject({ component: 'home', conn: 2, msg: 'online' });
  });

  it('JSON lines carry an error\'s message but not its stack, unless the level is debug', () => {
    const quiet = memory();
    createLogger({ level: 'info', destination: quiet.stream, env: {} }).warn({ err: new Error('boom') }, 'failed');
    expect(parse(quiet.lines()[0] ?? '')).toMatchObject({ err: { message: 'boom' } });
    expect(quiet.lines()[0]).not.toContain('stack');
    const loud = memory();
    createLogger({ level: 'debug', destination: loud.stream, env: {} }).warn({ err: new Error('boom') }, 'failed');
    expect(loud.lines()[0]).toContain('"stack"');
  });

  it('pretty: time, level, component, message and key=value pairs, no JSON and no stack', () => {
    const out = memory();
    const log = createLogger({ level: 'info', destination: out.stream, env: {}, pretty: true }).child({ component: 'agent' });
    log.warn({ target: 'bob@b.test:ssh', route: 'tcp', err: new Error('connect ECONNREFUSED'), note: 'two words' }, 'tunnel failed');
    const line = out.lines()[0] ?? '';
    expect(line).toMatch(/^\d\d:\d\d:\d\d\.\d{3} WARN  agent: tunnel failed target=bob@b\.test:ssh route=tcp err="connect ECONNREFUSED" note="two words"$/);
    expect(line).not.toContain('at ');
  });

  it('journald wins over pretty: the journal wants JSON', () => {
    const out = memory();
    createLogger({ level: 'info', destination: out.stream, env: {}, journald: true, pretty: true }).info('x');
    expect(out.lines()[0]?.startsWith('<6>{')).toBe(true);
  });
});

describe('syslogPriority', () => {
  it('maps pino levels to syslog priorities', () => {
    expect([10, 20, 30, 40, 50, 60].map(syslogPriority)).toEqual([7, 7, 6, 4, 3, 2]);
    // Custom levels in between round down to the nearest named one.
    expect(syslogPriority(35)).toBe(6);
    expect(syslogPriority(55)).toBe(3);
  });
});

describe('isJournalStream', () => {
  it('is true only when JOURNAL_STREAM names the device and inode of the fd', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-logger-'));
    const fd = fs.openSync(path.join(dir, 'stderr'), 'w');
    try {
      const st = fs.fstatSync(fd);
      expect(isJournalStream(`${st.dev}:${st.ino}`, fd)).toBe(true);
      expect(isJournalStream(`${st.dev}:${st.ino + 1}`, fd)).toBe(false);
      expect(isJournalStream(undefined, fd)).toBe(false);
      expect(isJournalStream('', fd)).toBe(false);
    } finally {
      fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
