/**
 * The unit files in systemd/ are checked by systemd itself
 * (`systemd-analyze verify`), on copies whose ExecStart= points at this
 * checkout's bin/vertex, because verify refuses a binary that does not exist.
 * verify only warns about unknown keys and unparsable values and still exits
 * 0, so any output at all counts as a failure; the negative cases prove that
 * this check notices broken units.
 *
 * On top of that, each unit is read as INI and held to INTERFACE.md
 * ("Files", systemd).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DEFAULTS } from '../../../config/defaults';
import { describeWithTools, TOOLS } from '../../helpers/system-tools';

const ROOT = path.resolve(__dirname, '../../..');
const SYSTEMD_DIR = path.join(ROOT, 'systemd');
const VERTEX_BIN = path.join(ROOT, 'bin', 'vertex');
/**
 * The units name the bare command: systemd looks it up in its fixed search
 * path (/usr/local/bin, /usr/bin, ...), which covers `npm install -g` under
 * either usual prefix.
 */
const INSTALLED_BIN = 'vertex';
const VERIFY_TIMEOUT_MS = 30_000;

interface UnitFile {
  /** Path under systemd/. */
  readonly file: string;
  /** The unit name verify is asked about (an instance, for a template). */
  readonly verifyAs: string;
  readonly manager: 'system' | 'user';
}

const UNITS: readonly UnitFile[] = [
  { file: 'vertex-server.service', verifyAs: 'vertex-server.service', manager: 'system' },
  { file: 'vertex-agent.service', verifyAs: 'vertex-agent.service', manager: 'system' },
  { file: 'vertex-agent@.service', verifyAs: 'vertex-agent@alice.service', manager: 'system' },
  { file: 'user/vertex-agent.service', verifyAs: 'vertex-agent.service', manager: 'user' },
];

let work: string;

beforeAll(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-units-'));
});

afterAll(() => {
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

/**
 * Writes `text` as `name` into a fresh directory and runs verify on
 * `verifyAs` there. A user manager needs a runtime directory of its own.
 */
function verify(name: string, text: string, verifyAs: string, manager: 'system' | 'user'): { status: number | null; output: string } {
  const dir = fs.mkdtempSync(path.join(work, 'unit-'));
  fs.writeFileSync(path.join(dir, name), text);
  const runtime = path.join(dir, 'runtime');
  fs.mkdirSync(runtime, { mode: 0o700 });
  const args = [...(manager === 'user' ? ['--user'] : []), 'verify', '--man=no', path.join(dir, verifyAs)];
  const result = spawnSync('systemd-analyze', args, {
    encoding: 'utf8',
    timeout: VERIFY_TIMEOUT_MS,
    env: { ...process.env, XDG_RUNTIME_DIR: runtime, SYSTEMD_LOG_COLOR: '0', SYSTEMD_PAGER: '' },
  });
  return { status: result.status, output: `${result.stdout}${result.stderr}`.trim() };
}

function readUnit(file: string): string {
  return fs.readFileSync(path.join(SYSTEMD_DIR, file), 'utf8');
}

/** The unit with `vertex` replaced by this checkout's launcher. */
function forThisCheckout(text: string): string {
  return text.split(`=${INSTALLED_BIN} `).join(`=${VERTEX_BIN} `);
}

/** section -> key -> every value assigned, in order (systemd keys may repeat). */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = new Map();
      sections.set(header[1] ?? '', current);
      continue;
    }
    const eq = line.indexOf('=');
    if (!current || eq < 0) throw new Error(`not a unit line: ${line}`);
    const key = line.slice(0, eq).trim();
    current.set(key, [...(current.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return sections;
}

function value(unit: Map<string, Map<string, string[]>>, section: string, key: string): string | undefined {
  return unit.get(section)?.get(key)?.at(-1);
}

describeWithTools('systemd units pass systemd-analyze verify', [TOOLS.systemdAnalyze], () => {
  it.each(UNITS)('$file', ({ file, verifyAs, manager }) => {
    const text = readUnit(file);
    expect(text).toContain(`ExecStart=${INSTALLED_BIN} `);
    const result = verify(path.basename(file), forThisCheckout(text), verifyAs, manager);
    expect(result.output).toBe('');
    expect(result.status).toBe(0);
  });
});

describeWithTools('the verify check catches broken units', [TOOLS.systemdAnalyze], () => {
  const server = forThisCheckout(readUnit('vertex-server.service'));

  it('an unknown directive', () => {
    const broken = server.replace('[Service]\n', '[Service]\nProtectEverything=yes\n');
    const result = verify('vertex-server.service', broken, 'vertex-server.service', 'system');
    expect(result.output).toMatch(/Unknown key.*ProtectEverything/);
  });

  it('an unparsable value', () => {
    const broken = server.replace(/^RestrictAddressFamilies=.*$/m, 'RestrictAddressFamilies=AF_INET AF_CARRIER_PIGEON');
    const result = verify('vertex-server.service', broken, 'vertex-server.service', 'system');
    expect(result.output).toContain('AF_CARRIER_PIGEON');
  });

  it('a missing binary', () => {
    const broken = server.split(VERTEX_BIN).join(path.join(work, 'no-such-vertex'));
    const result = verify('vertex-server.service', broken, 'vertex-server.service', 'system');
    expect(result.status).not.toBe(0);
    expect(result.output).toContain('no-such-vertex');
  });

  it('a typo in the user unit', () => {
    const broken = forThisCheckout(readUnit('user/vertex-agent.service')).replace('PrivateTmp=yes', 'PrivateTemp=yes');
    const result = verify('vertex-agent.service', broken, 'vertex-agent.service', 'user');
    expect(result.output).toMatch(/Unknown key.*PrivateTemp/);
  });

  it('a typo in the template, seen through an instance', () => {
    const broken = forThisCheckout(readUnit('vertex-agent@.service')).replace('Restart=on-failure', 'Restart=on-failure\nRestartSecs=2');
    const result = verify('vertex-agent@.service', broken, 'vertex-agent@alice.service', 'system');
    expect(result.output).toMatch(/Unknown key.*RestartSecs/);
  });
});

describe('the units keep INTERFACE.md\'s promises', () => {
  it.each(UNITS)('$file: Type=exec, Restart=on-failure and the required hardening', ({ file }) => {
    const unit = parseUnit(readUnit(file));
    expect(value(unit, 'Service', 'Type')).toBe('exec');
    expect(value(unit, 'Service', 'Restart')).toBe('on-failure');
    expect(value(unit, 'Service', 'NoNewPrivileges')).toBe('yes');
    expect(value(unit, 'Service', 'ProtectSystem')).toBe('strict');
    expect(['yes', 'read-only', 'tmpfs']).toContain(value(unit, 'Service', 'ProtectHome'));
    expect(value(unit, 'Service', 'PrivateTmp')).toBe('yes');
    const families = (value(unit, 'Service', 'RestrictAddressFamilies') ?? '').split(/\s+/);
    expect(families.slice(0, 3)).toEqual(['AF_INET', 'AF_INET6', 'AF_UNIX']);
    // The agents also need netlink to list interface addresses; nothing else is allowed.
    expect(families.slice(3)).toEqual(file.includes('agent') ? ['AF_NETLINK'] : []);
    expect(value(unit, 'Service', 'MemoryDenyWriteExecute')).toBeUndefined();
    expect(unit.get('Install')?.get('WantedBy')).toBeDefined();
  });

  it('the server: dedicated user, config in /etc/vertex, StateDirectory=vertex matching data_dir', () => {
    const unit = parseUnit(readUnit('vertex-server.service'));
    expect(value(unit, 'Service', 'User')).toBe('vertex');
    expect(value(unit, 'Service', 'Group')).toBe('vertex');
    expect(value(unit, 'Service', 'ExecStart')).toBe(`${INSTALLED_BIN} server --config /etc/vertex/server.yaml`);
    expect(value(unit, 'Service', 'StateDirectory')).toBe('vertex');
    expect(`/var/lib/${value(unit, 'Service', 'StateDirectory') ?? ''}`).toBe(DEFAULTS.server.data_dir);
    expect(value(unit, 'Service', 'ProtectHome')).toBe('yes');
    expect(value(unit, 'Service', 'CapabilityBoundingSet')).toBe('');
  });

  it('the system agent: dedicated user, config in /etc/vertex, home under StateDirectory, a runtime directory for its socket', () => {
    const unit = parseUnit(readUnit('vertex-agent.service'));
    expect(value(unit, 'Service', 'User')).toBe('vertex');
    expect(value(unit, 'Service', 'ExecStart')).toBe(`${INSTALLED_BIN} agent --config /etc/vertex/agent.yaml`);
    const state = value(unit, 'Service', 'StateDirectory') ?? '';
    expect(state.split('/')[0]).toBe('vertex');
    expect(value(unit, 'Service', 'Environment')).toBe(`VERTEX_HOME=/var/lib/${state}`);
    // /run/vertex/agent.sock: where `vertex status` looks for the system agent (cli/context.ts).
    expect(value(unit, 'Service', 'RuntimeDirectory')).toBe('vertex');
    expect(value(unit, 'Service', 'ProtectHome')).toBe('yes');
  });

  it('the per-user instance runs as the instance user and can write only its own ~/.config/vertex', () => {
    const unit = parseUnit(readUnit('vertex-agent@.service'));
    expect(value(unit, 'Service', 'User')).toBe('%i');
    expect(value(unit, 'Service', 'ProtectHome')).toBe('tmpfs');
    expect(value(unit, 'Service', 'BindPaths')).toBe('-/home/%i/.config/vertex');
    expect(value(unit, 'Service', 'RuntimeDirectory')).toBe('vertex-agent-%i');
  });

  it('the user unit puts its socket where the CLI looks: $XDG_RUNTIME_DIR/vertex', () => {
    const unit = parseUnit(readUnit('user/vertex-agent.service'));
    expect(value(unit, 'Service', 'RuntimeDirectory')).toBe('vertex');
    expect(value(unit, 'Service', 'ReadWritePaths')).toBe('-%h/.config/vertex');
    expect(value(unit, 'Install', 'WantedBy')).toBe('default.target');
  });
});

describe('sysusers.d/vertex.conf', () => {
  it('creates the vertex user and group in a scratch root', () => {
    const root = fs.mkdtempSync(path.join(work, 'root-'));
    fs.mkdirSync(path.join(root, 'etc'));
    const result = spawnSync('systemd-sysusers', [`--root=${root}`, path.join(SYSTEMD_DIR, 'sysusers.d', 'vertex.conf')], {
      encoding: 'utf8',
      timeout: VERIFY_TIMEOUT_MS,
    });
    expect(result.status).toBe(0);
    expect(fs.readFileSync(path.join(root, 'etc', 'passwd'), 'utf8')).toMatch(/^vertex:x:\d+:\d+:[^:]*:\/var\/lib\/vertex:/m);
    expect(fs.readFileSync(path.join(root, 'etc', 'group'), 'utf8')).toMatch(/^vertex:x:\d+:/m);
  });
});
