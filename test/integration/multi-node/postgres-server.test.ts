/**
 * `vertex server` on a PostgreSQL store, through the built CLI: the store
 * chosen by `store:` in server.yaml and by `--store`, the admin subcommands
 * against it, and two nodes of one domain sharing it (same domain CA).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describeCertificate } from '../../../q2q/identity';
import { runVertex, startServer, stopAll, tempDir, type ServerHandle } from '../../helpers/cli';
import { describePostgres, postgresDatabase } from '../../helpers/postgres';

const PASSWORD = 'correct horse battery staple';
const DOMAIN = 'pg.test';

function certSerial(home: string, address: string): string {
  return describeCertificate(fs.readFileSync(path.join(home, 'identities', address, 'cert.pem'), 'utf8')).serial;
}

/** The URL without its password, and the password for PGPASSWORD, as docs/deploy.md recommends. */
function splitPassword(url: string): { url: string; password: string } {
  const u = new URL(url);
  const password = decodeURIComponent(u.password);
  u.password = '';
  return { url: u.toString(), password };
}

afterAll(stopAll);

// A hang guard, not a timing: the admin test alone runs ten `vertex server` processes and three
// scrypt logins; at a load average of 15 on two cores it passed 60 s in a CI run.
jest.setTimeout(180_000);

describePostgres('vertex server on PostgreSQL', () => {
  const database = postgresDatabase();
  let storeUrl: string;
  let node1: ServerHandle;
  let node2: ServerHandle;

  beforeAll(async () => {
    storeUrl = await database().freshSchema();
    // Node 1: store: in server.yaml.
    const configDir = tempDir('cfg');
    const config = path.join(configDir, 'server.yaml');
    fs.writeFileSync(config, `version: 1\ndomains: [${DOMAIN}]\nregistration: open\nstore: "${storeUrl}"\n`);
    node1 = await startServer([], { extraArgs: ['--config', config] });
    // Node 2: the same domain CA (copied, as docs/deploy.md describes), --store on the command line.
    const data2 = tempDir('server');
    fs.cpSync(path.join(node1.dataDir, 'ca'), path.join(data2, 'ca'), { recursive: true });
    node2 = await startServer([DOMAIN], { dataDir: data2, extraArgs: ['--store', storeUrl] });
  });

  async function account(server: ServerHandle, home: string, address: string, command: 'register' | 'login', extra: string[] = []) {
    return runVertex([...server.resolveArg(DOMAIN), '--home', home, command, address, '--password-stdin', ...extra], { input: `${PASSWORD}\n` });
  }

  it('says where the accounts are, without the password', () => {
    expect(node2.proc.output()).toMatch(/accounts in postgres:\/\/vertex_test:\*\*\*@127\.0\.0\.1/);
    expect(node2.proc.output()).not.toContain(':vertex_test@');
  });

  it('keeps no SQLite database when the store is PostgreSQL', () => {
    expect(fs.existsSync(path.join(node1.dataDir, 'vertex.db'))).toBe(false);
  });

  it('register on node 1, log in on node 2', async () => {
    const r = await account(node1, tempDir('home'), `alice@${DOMAIN}`, 'register');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const l = await account(node2, tempDir('home'), `alice@${DOMAIN}`, 'login');
    expect(l.stderr).toBe('');
    expect(l.code).toBe(0);
    const taken = await account(node2, tempDir('home'), `alice@${DOMAIN}`, 'register');
    expect(taken.code).toBe(1);
    expect(taken.stderr).toMatch(/taken/);
  });

  it('admin subcommands work on the PostgreSQL store (password from PGPASSWORD): add-user, list-users, invite, revoke, remove-user', async () => {
    const { url, password } = splitPassword(storeUrl);
    const admin = (args: string[], input?: string) => runVertex(['server', ...args, '--store', url], { env: { PGPASSWORD: password }, ...(input ? { input } : {}) });

    const add = await admin(['add-user', `grace@${DOMAIN}`, '--domain', DOMAIN, '--password-stdin'], PASSWORD);
    expect(add.stderr).toBe('');
    expect(add.code).toBe(0);
    // A domain that no node here serves is refused.
    const typo = await admin(['add-user', 'grace@pg.tset', '--domain', DOMAIN, '--password-stdin'], PASSWORD);
    expect(typo.code).toBe(1);
    expect(typo.stderr).toMatch(/no CA for pg\.tset/);

    const home = tempDir('home');
    expect((await account(node2, home, `grace@${DOMAIN}`, 'login')).code).toBe(0);
    const list = await admin(['list-users', '--json']);
    expect(list.code).toBe(0);
    expect(JSON.parse(list.stdout).map((r: { address: string }) => r.address)).toEqual(expect.arrayContaining([`alice@${DOMAIN}`, `grace@${DOMAIN}`]));

    const invite = await admin(['invite', '--domain', DOMAIN]);
    expect(invite.code).toBe(0);
    const code = invite.stdout.trim();
    expect((await account(node1, tempDir('home'), `henry@${DOMAIN}`, 'register', ['--invite', code])).code).toBe(0);

    const serial = certSerial(home, `grace@${DOMAIN}`);
    expect((await admin(['revoke', serial])).code).toBe(0);
    expect((await admin(['revoke', 'abcdef'])).code).toBe(3);
    expect((await admin(['remove-user', `grace@${DOMAIN}`])).code).toBe(0);
    expect((await admin(['remove-user', `grace@${DOMAIN}`])).code).toBe(3);
    const gone = await account(node1, tempDir('home'), `grace@${DOMAIN}`, 'login');
    expect(gone.code).toBe(3);
  });

  it('an unreachable store: the server does not start, and says which store and why', async () => {
    const r = await runVertex(['server', '--listen', '127.0.0.1:0', '--data', tempDir('server'), '--domain', DOMAIN, '--store', 'postgres://vertex:secret@127.0.0.1:1/vertex']);
    expect(r.code).toBe(1);
    // The error is one line (log lines before it are JSON).
    expect(r.stderr.trim().split('\n').filter((l) => l.startsWith('vertex:'))).toHaveLength(1);
    expect(r.stderr).toMatch(/vertex: open account store postgres:\/\/vertex:\*\*\*@127\.0\.0\.1:1\/vertex: .*ECONNREFUSED/);
    expect(r.stderr).not.toContain('secret');
  });
});
