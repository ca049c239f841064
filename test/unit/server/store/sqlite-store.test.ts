import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SqliteAccountStore } from '../../../../server/store/sqlite-store';
import { isVertexError } from '../../../../q2q/errors';

describe('SqliteAccountStore', () => {
  let dir: string;
  let store: SqliteAccountStore;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-store-'));
    store = new SqliteAccountStore(path.join(dir, 'vertex.db'));
  });
  afterEach(() => {
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('uses WAL journaling', () => {
    store.createAccount('a.test', 'alice', 'h');
    expect(fs.existsSync(path.join(dir, 'vertex.db-wal'))).toBe(true);
  });

  it('creates, finds and refuses a taken name with NameTaken', () => {
    store.createAccount('a.test', 'alice', 'hash1');
    expect(store.getAccount('a.test', 'alice')?.passwordHash).toBe('hash1');
    expect(store.getAccount('b.test', 'alice')).toBeNull();
    let code = '';
    try { store.createAccount('a.test', 'alice', 'hash2'); } catch (err) { code = isVertexError(err) ? err.code : 'other'; }
    expect(code).toBe('NameTaken');
    expect(store.getAccount('a.test', 'alice')?.passwordHash).toBe('hash1');
  });

  it('records and revokes certificates; removing an account revokes its certificates', () => {
    store.createAccount('a.test', 'alice', 'h');
    store.recordCertificate({ serial: 'aa01', domain: 'a.test', user: 'alice', notBefore: 1, notAfter: 2 });
    store.recordCertificate({ serial: 'aa02', domain: 'a.test', user: 'alice', notBefore: 1, notAfter: 2 });
    expect(store.revokeCertificate('AA01')).toBe(true);
    expect(store.getCertificate('aa01')?.revokedAt).not.toBeNull();
    expect(store.getCertificate('aa02')?.revokedAt).toBeNull();
    expect(store.revokeCertificate('ffff')).toBe(false);
    expect(store.removeAccount('a.test', 'alice')).toBe(true);
    expect(store.getCertificate('aa02')?.revokedAt).not.toBeNull();
    expect(store.removeAccount('a.test', 'alice')).toBe(false);
  });

  it('invites are single use and expire', () => {
    store.createInvite('a.test', 'code1', 1000);
    expect(store.consumeInvite('a.test', 'code1', 2000)).toBe(false);
    store.createInvite('a.test', 'code2', 5000);
    expect(store.consumeInvite('b.test', 'code2', 100)).toBe(false);
    expect(store.consumeInvite('a.test', 'code2', 100)).toBe(true);
    expect(store.consumeInvite('a.test', 'code2', 100)).toBe(false);
  });
});
