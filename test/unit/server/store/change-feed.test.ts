import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { AccountEvent } from '../../../../server/store/account-store';
import { ChangeFeedFollower } from '../../../../server/store/change-feed';
import { SqliteAccountStore } from '../../../../server/store/sqlite-store';

describe('ChangeFeedFollower', () => {
  let dir: string;
  let store: SqliteAccountStore;
  let admin: SqliteAccountStore;
  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-feed-'));
    store = new SqliteAccountStore(path.join(dir, 'vertex.db'));
    admin = new SqliteAccountStore(path.join(dir, 'vertex.db'));
    await admin.createAccount('a.test', 'bob', 'h');
    for (const serial of ['01', '02', '03']) await admin.recordCertificate({ serial, domain: 'a.test', user: 'bob', notBefore: 1, notAfter: 2 });
  });
  afterEach(async () => {
    await store.close();
    await admin.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('starts at the end of the feed, then hands on each later event once, in order', async () => {
    await admin.revokeCertificate('01'); // before start: not handed on
    const seen: AccountEvent[] = [];
    const feed = new ChangeFeedFollower({ store, onEvent: (e) => { seen.push(e); }, pollMs: 3_600_000 });
    await feed.start();
    await admin.revokeCertificate('02');
    await admin.removeAccount('a.test', 'bob');
    await Promise.all([feed.wake(), feed.wake(), feed.wake()]);
    await feed.wake();
    await feed.stop();
    expect(seen.map((e) => e.kind)).toEqual(['certificate-revoked', 'account-removed']);
    expect(feed.position).toBe(seen[1]!.id);
  });

  it("finds another process's change by polling, with no wake-up", async () => {
    const seen: AccountEvent[] = [];
    let resolveSeen: () => void = () => undefined;
    const arrived = new Promise<void>((r) => { resolveSeen = r; });
    const feed = new ChangeFeedFollower({ store, onEvent: (e) => { seen.push(e); resolveSeen(); }, pollMs: 20 });
    await feed.start();
    await admin.revokeCertificate('03'); // another handle: SQLite does not wake this one
    await arrived;
    await feed.stop();
    expect(seen.map((e) => e.kind)).toEqual(['certificate-revoked']);
  });

  it('a handler that throws does not stop the feed', async () => {
    const seen: number[] = [];
    const feed = new ChangeFeedFollower({ store, onEvent: (e) => { seen.push(e.id); if (seen.length === 1) throw new Error('boom'); }, pollMs: 3_600_000 });
    await feed.start();
    await store.revokeCertificate('01');
    await store.revokeCertificate('02');
    await feed.wake();
    await feed.stop();
    expect(seen).toHaveLength(2);
  });
});
