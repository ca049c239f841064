/**
 * The NAT lab's own guarantees: the topology is what the scenarios assume
 * (NAT kinds, a routing hop between the NATs, no way out of the lab), and
 * teardown leaves no namespace and no process behind.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ts from 'typescript';
import { labSkipReason, NetnsLab, requireLabTools, SERVER_ADDRESS } from './lab';

const SKIP = labSkipReason();
if (SKIP) process.stderr.write(`NAT lab skipped: ${SKIP}\n`);
const describeLab = SKIP ? describe.skip : describe;

/** A UDP exchange inside the lab: a reflector in inet, a client in `ns` that prints what inet saw. */
const REFLECTOR = `const d=require('dgram');const s=d.createSocket('udp4');s.on('message',(m,r)=>s.send(r.address+':'+r.port,r.port,r.address));s.bind(Number(process.argv[2]),process.argv[1],()=>console.log('up'));`;
const ASK = `const d=require('dgram');const s=d.createSocket('udp4');const out=[];const t=process.argv.slice(1);s.on('message',(m)=>{out.push(String(m));if(out.length===t.length){console.log(out.join(' '));process.exit(0)}});s.bind(40000,()=>t.forEach((x)=>{const [h,p]=x.split(':');s.send('?',Number(p),h)}));setTimeout(()=>{console.log('timeout '+out.join(' '));process.exit(1)},2000);`;

describeLab('NAT lab topology', () => {
  let lab: NetnsLab;

  beforeAll(() => {
    requireLabTools();
    lab = NetnsLab.create();
  });

  afterAll(async () => {
    await lab?.teardown();
  });

  async function reflexive(ns: string): Promise<string[]> {
    const r = await lab.run(ns, process.execPath, ['-e', ASK, `${SERVER_ADDRESS['a.test']}:9000`, `${SERVER_ADDRESS['b.test']}:9000`], { timeoutMs: 5_000 });
    expect(r.code).toBe(0);
    return r.stdout.trim().split(' ').sort();
  }

  it('easy NAT keeps the port for every destination, hard NAT picks one per destination, public hosts are seen as themselves', async () => {
    for (const host of Object.values(SERVER_ADDRESS)) {
      const reflector = lab.spawn(lab.inet, process.execPath, ['-e', REFLECTOR, host, '9000']);
      await reflector.waitFor(/up/);
    }
    try {
      lab.addSide('alice', { kind: 'easy' });
      lab.addSide('bob', { kind: 'hard' });
      expect(await reflexive(lab.side('alice').host)).toEqual(['203.0.113.66:40000', '203.0.113.66:40000']);
      const hard = await reflexive(lab.side('bob').host);
      expect(hard.every((a) => a.startsWith('198.51.100.2:'))).toBe(true);
      expect(new Set(hard).size).toBe(2);
      lab.removeSide('alice');
      lab.addSide('alice', { kind: 'public' });
      expect(await reflexive(lab.side('alice').host)).toEqual(['203.0.113.66:40000', '203.0.113.66:40000']);
    } finally {
      lab.removeSide('alice');
      lab.removeSide('bob');
    }
  });

  it('has a routing hop between the NATs, no default route in inet, and no interface outside the lab', () => {
    lab.addSide('alice', { kind: 'easy' });
    lab.addSide('bob', { kind: 'easy' });
    try {
      expect(lab.ip(lab.inet, ['route', 'show', 'default']).trim()).toBe('');
      // inet forwards between the WAN links: the hop where a TTL-2 probe dies.
      expect(lab.exec(lab.inet, 'sysctl', ['-n', 'net.ipv4.ip_forward']).trim()).toBe('1');
      expect(lab.ip(lab.side('alice').router ?? '', ['route', 'show', 'default'])).toMatch(/via 203\.0\.113\.65/);
      // Every lab interface is a veth (or lo) whose peer is in this lab, never in the host's namespace.
      const lab_ns = [lab.inet, ...['alice', 'bob'].flatMap((n) => { const s = lab.side(n as 'alice' | 'bob'); return [s.host, s.router ?? '']; })];
      for (const ns of lab_ns) {
        const links = JSON.parse(lab.ip(ns, ['-j', '-d', 'link', 'show'])) as Array<{ ifname: string; link_type: string; linkinfo?: { info_kind?: string }; link_netnsid?: number }>;
        for (const l of links) {
          if (l.ifname === 'lo') continue;
          expect(l.linkinfo?.info_kind).toBe('veth');
          expect(l.link_netnsid).toBeDefined();
        }
      }
      const hostLinks = spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).stdout;
      for (const name of ['to-a', 'to-b']) expect(hostLinks).not.toMatch(new RegExp(`\\d+: ${name}[@:]`));
    } finally {
      lab.removeSide('alice');
      lab.removeSide('bob');
    }
  });

  it('teardown kills the lab\'s processes by pid and deletes every namespace', async () => {
    const other = NetnsLab.create();
    other.addSide('alice', { kind: 'easy' });
    const sleeper = other.spawn(other.side('alice').host, 'sleep', ['600']);
    await new Promise((r) => setTimeout(r, 100));
    expect(other.existing().length).toBe(3);
    const pid = sleeper.child.pid;
    await other.teardown();
    expect(await sleeper.exited).toBeNull();
    expect(sleeper.child.signalCode).toBe('SIGKILL');
    expect(pid && processAlive(pid)).toBeFalsy();
    expect(other.existing()).toEqual([]);
  });
});

describeLab('NAT lab interrupted', () => {
  it('a run stopped by SIGINT deletes its namespaces and kills its processes on the way out', async () => {
    // The lab module as plain JS, run in a child that builds a lab, starts a process in it and waits.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-lab-sigint-'));
    try {
      // lab.ts and what it imports from the test tree, transpiled into the same layout.
      for (const file of ['netns/lab.ts', 'helpers/system-tools.ts']) {
        const source = fs.readFileSync(path.join(__dirname, '..', file), 'utf8');
        fs.mkdirSync(path.join(dir, path.dirname(file)), { recursive: true });
        fs.writeFileSync(path.join(dir, file.replace(/\.ts$/, '.js')), ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 } }).outputText);
      }
      const script = `const { NetnsLab } = require(${JSON.stringify(path.join(dir, 'netns', 'lab.js'))});
        const lab = NetnsLab.create();
        lab.addSide('alice', { kind: 'easy' });
        const p = lab.spawn(lab.side('alice').host, 'sleep', ['600']);
        setTimeout(() => console.log(JSON.stringify({ prefix: lab.prefix, pid: p.child.pid })), 200);
        setInterval(() => {}, 1000);`;
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      const line = await new Promise<string>((resolve, reject) => {
        child.stdout.once('data', (d: Buffer) => resolve(d.toString()));
        child.once('exit', (code) => reject(new Error(`child exited ${code} before building its lab`)));
      });
      const { prefix, pid } = JSON.parse(line) as { prefix: string; pid: number };
      const names = () => spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.split('\n').filter((l) => l.startsWith(prefix));
      expect(names().length).toBe(3);
      child.kill('SIGINT');
      const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, sig) => resolve(sig)));
      expect(signal).toBe('SIGINT');
      expect(names()).toEqual([]);
      await new Promise((r) => setTimeout(r, 100));
      expect(processAlive(pid)).toBe(false);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** Running, not merely a zombie waiting for a reaper (the dead child's orphans go to pid 1). */
function processAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}
