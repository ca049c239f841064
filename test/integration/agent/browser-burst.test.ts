/**
 * Issue 12, "a browser-like burst": headless Chromium, through alice's agent's
 * SOCKS5 proxy, loads a page from bob's exposed HTTP server with 50
 * subresources (25 PNG images and 25 scripts, each of its own bytes). Real
 * `vertex server`s for a.test and b.test, real agents for alice and bob; bob's
 * page goes online with `vertex expose http ... --allow alice@a.test` on his
 * running agent.
 *
 * The server closes the connection after every response, so each resource is
 * a new SOCKS connection, a new stream: 51 in a burst, six at a time as
 * Chromium opens them. The page checks every byte itself: each script hands
 * its payload to the page, which compares length and two 32-bit hashes with
 * the values the HTML carries; each image is drawn to a canvas and its pixels
 * are hashed the same way; and Resource Timing must report each body at its
 * exact size. The verdict goes into the DOM, which --dump-dom prints.
 *
 * Afterwards alice's agent holds one peer session to bob, whose byte count
 * covers everything the page moved: the 51 connections were streams on it.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as zlib from 'node:zlib';
import type { AgentStatus } from '../../../agent/daemon';
import { stopAll, tempDir } from '../../helpers/cli';
import { listenOnPort0 } from '../../helpers/net';
import { startWorld, type World } from '../../helpers/q2q-world';
import { describeWithTools, TOOLS } from '../../helpers/system-tools';
import { run, startAgent, type AgentHandle } from './helpers';

const SCRIPTS = 25;
const IMAGES = 25;
const SUBRESOURCES = SCRIPTS + IMAGES;

/** FNV-1a, 32-bit, with the given offset basis: the page runs the same two (see PAGE_SCRIPT). */
function fnv(bytes: Uint8Array, basis: number): number {
  let h = basis >>> 0;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}
const BASIS_A = 0x811c9dc5;
const BASIS_B = 0x12345678;

/** An 8-bit RGB PNG (no colour profile, so the browser draws the pixels as they are). */
function png(width: number, height: number, rgb: Buffer): Buffer {
  const rows = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) rgb.copy(rows, y * (width * 3 + 1) + 1, y * width * 3, (y + 1) * width * 3);
  const chunk = (type: string, data: Buffer): Buffer => {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(body) >>> 0);
    return Buffer.concat([head, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(rows)), chunk('IEND', Buffer.alloc(0)),
  ]);
}

interface Site {
  /** path -> body */
  files: Map<string, { type: string; body: Buffer }>;
  totalBytes: number;
}

/** The page and its 50 subresources, each of its own random bytes. */
function buildSite(): Site {
  const files = new Map<string, { type: string; body: Buffer }>();
  const expected: { scripts: Array<[string, number, number, number]>; images: Array<[string, number, number, number, number, number]> } = { scripts: [], images: [] };
  for (let i = 0; i < SCRIPTS; i++) {
    const payload = randomBytes(20_000 + i * 1_000).toString('base64');
    const bytes = Buffer.from(payload, 'latin1');
    const body = Buffer.from(`window.__script(${i}, "${payload}");\n`);
    const path = `/js/${i}.js`;
    files.set(path, { type: 'text/javascript', body });
    expected.scripts.push([path, body.length, fnv(bytes, BASIS_A), fnv(bytes, BASIS_B)]);
  }
  for (let i = 0; i < IMAGES; i++) {
    const width = 60 + i;
    const height = 50 + (i % 7);
    const rgb = randomBytes(width * height * 3);
    const body = png(width, height, rgb);
    const path = `/img/${i}.png`;
    files.set(path, { type: 'image/png', body });
    expected.images.push([path, body.length, width, height, fnv(rgb, BASIS_A), fnv(rgb, BASIS_B)]);
  }
  const html = [
    '<!doctype html><html><head><meta charset="utf-8"><title>loading</title>',
    `<script>const EXPECTED = ${JSON.stringify(expected)};</script>`,
    `<script>${PAGE_SCRIPT}</script>`,
    '</head><body><pre id="verdict">not finished</pre>',
    ...expected.images.map(([path], i) => `<img id="img${i}" src="${path}">`),
    ...expected.scripts.map(([path]) => `<script async src="${path}"></script>`),
    '</body></html>',
  ].join('\n');
  files.set('/', { type: 'text/html; charset=utf-8', body: Buffer.from(html) });
  let totalBytes = 0;
  for (const f of files.values()) totalBytes += f.body.length;
  return { files, totalBytes };
}

/**
 * Runs in Chromium. Scripts report their payload; at the load event (every
 * subresource loaded or failed) the images are hashed from a canvas, the
 * Resource Timing sizes are compared, and the verdict is written as JSON.
 */
const PAGE_SCRIPT = `
const BASIS_A = ${BASIS_A}, BASIS_B = ${BASIS_B};
function fnv(get, n, basis) {
  let h = basis >>> 0;
  for (let i = 0; i < n; i++) h = Math.imul(h ^ get(i), 0x01000193) >>> 0;
  return h;
}
const ok = {}, why = {};
window.__script = (i, payload) => {
  const e = EXPECTED.scripts[i];
  const get = (k) => payload.charCodeAt(k);
  const a = fnv(get, payload.length, BASIS_A), b = fnv(get, payload.length, BASIS_B);
  if (a === e[2] && b === e[3]) ok['script' + i] = true; else why['script' + i] = 'payload hash ' + a + '/' + b;
};
window.addEventListener('load', () => {
  EXPECTED.images.forEach((e, i) => {
    const img = document.getElementById('img' + i);
    if (!img.complete || img.naturalWidth !== e[2] || img.naturalHeight !== e[3]) { why['image' + i] = 'not loaded or wrong size ' + img.naturalWidth + 'x' + img.naturalHeight; return; }
    const canvas = document.createElement('canvas');
    canvas.width = e[2]; canvas.height = e[3];
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, e[2], e[3]).data;
    // RGB only: index k of the RGB stream is pixel k/3, channel k%3.
    const get = (k) => px[(k / 3 | 0) * 4 + k % 3];
    const n = e[2] * e[3] * 3;
    const a = fnv(get, n, BASIS_A), b = fnv(get, n, BASIS_B);
    if (a === e[4] && b === e[5]) ok['image' + i] = true; else why['image' + i] = 'pixel hash ' + a + '/' + b;
  });
  const sizes = {};
  for (const r of performance.getEntriesByType('resource')) sizes[new URL(r.name).pathname] = r.decodedBodySize;
  const all = [...EXPECTED.scripts.map((e, i) => ['script' + i, e]), ...EXPECTED.images.map((e, i) => ['image' + i, e])];
  let exact = 0;
  for (const [name, e] of all) {
    if (!ok[name]) { if (!why[name]) why[name] = 'never ran or never loaded'; continue; }
    if (sizes[e[0]] !== e[1]) { why[name] = 'body size ' + sizes[e[0]] + ', expected ' + e[1]; continue; }
    exact += 1;
  }
  document.getElementById('verdict').textContent = 'VERDICT ' + JSON.stringify({ exact, of: all.length, why });
  document.title = 'burst ' + exact + '/' + all.length;
});
`;

interface Web {
  port: number;
  connections: number;
  requests: string[];
  /** Paths served with one byte changed (the control: the page's checks catch it). */
  tamper: Set<string>;
  close(): Promise<void>;
}

/** Serves the site; every response closes its connection, so each resource is a new SOCKS connection. */
async function startSite(site: Site): Promise<Web> {
  const web: Omit<Web, 'port' | 'close'> = { connections: 0, requests: [], tamper: new Set() };
  const server = http.createServer((req, res) => {
    web.requests.push(req.url ?? '');
    const file = site.files.get(req.url ?? '');
    res.shouldKeepAlive = false;
    if (!file) {
      res.writeHead(404, { connection: 'close' }).end();
      return;
    }
    let body = file.body;
    if (web.tamper.has(req.url ?? '')) {
      // One byte changed in the middle (in a script, inside its base64 payload: still valid JavaScript).
      body = Buffer.from(body);
      const at = body.length >> 1;
      body[at] = body[at] === 0x41 ? 0x42 : 0x41;
    }
    res.writeHead(200, { 'content-type': file.type, 'content-length': body.length, 'cache-control': 'no-store', connection: 'close' });
    res.end(body);
  });
  server.on('connection', () => { web.connections += 1; });
  const port = await listenOnPort0(server);
  return Object.assign(web, {
    port,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  });
}

describeWithTools('a browser-like burst through SOCKS (issue 12)', [TOOLS.chromium], () => {
  let world: World;
  let alice: AgentHandle;
  let bob: AgentHandle;
  let web: Web;
  let site: Site;
  const dirs: string[] = [];

  beforeAll(async () => {
    site = buildSite();
    web = await startSite(site);
    world = await startWorld();
    const aliceUser = await world.user('alice@a.test');
    const bobUser = await world.user('bob@b.test');
    dirs.push(aliceUser.home.dir, bobUser.home.dir);
    bob = await startAgent(world, bobUser.home.dir);
    alice = await startAgent(world, aliceUser.home.dir);
    const exposed = await bob.vertex(['expose', 'http', `127.0.0.1:${web.port}`, '--allow', 'alice@a.test']);
    expect(exposed.stderr).toBe('');
    expect(exposed.code).toBe(0);
  });

  afterAll(async () => {
    await stopAll();
    await web?.close();
    for (const d of [...dirs, world?.a.dataDir, world?.b.dataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  /** Loads bob's page in a fresh headless Chromium through alice's SOCKS proxy; returns the page's verdict. */
  async function loadPage(): Promise<{ exact: number; of: number; why: Record<string, string> }> {
    const profile = tempDir('chromium');
    dirs.push(profile);
    const r = await run('chromium', [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--user-data-dir=${profile}`, `--proxy-server=socks5://127.0.0.1:${alice.socksPort}`,
      // Lets the page's load handler run, however busy the machine, before the DOM is printed.
      '--virtual-time-budget=60000',
      '--dump-dom', 'http://bob.b.test.q2q/',
    ], { ms: 120_000 });
    const dom = r.stdout.toString();
    const m = /VERDICT (\{.*\})/.exec(dom);
    if (!m) throw new Error(`no verdict in Chromium's DOM (exit ${r.code}); stderr: ${r.stderr.slice(-2000)}; dom: ${dom.slice(0, 500)}`);
    return JSON.parse(m[1] as string) as { exact: number; of: number; why: Record<string, string> };
  }

  it('Chromium loads a page with 50 subresources from bob\'s exposed server, every byte exact, over one peer session', async () => {
    const verdict = await loadPage();
    expect(verdict.why).toEqual({});
    expect(verdict).toMatchObject({ exact: SUBRESOURCES, of: SUBRESOURCES });

    // Every resource was fetched, each on a connection of its own.
    const fetched = new Set(web.requests);
    for (const path of site.files.keys()) expect(fetched.has(path)).toBe(true);
    expect(web.connections).toBeGreaterThanOrEqual(SUBRESOURCES + 1);

    // Reuse: those connections were streams on one session from alice to bob, which carried all the bytes.
    const status = JSON.parse((await alice.vertex(['status', '--json'])).stdout) as AgentStatus;
    const toBob = (status.sessions ?? []).filter((s) => s.peer === 'bob@b.test');
    expect(toBob).toHaveLength(1);
    expect(toBob[0]).toMatchObject({ role: 'caller', state: 'open' });
    expect(toBob[0]?.bytesIn).toBeGreaterThanOrEqual(site.totalBytes);
    const bobStatus = JSON.parse((await bob.vertex(['status', '--json'])).stdout) as AgentStatus;
    expect((bobStatus.sessions ?? []).filter((s) => s.peer === 'alice@a.test')).toHaveLength(1);
  }, 180_000);

  it('(the check can fail) one changed byte in a script and in an image is caught by the page', async () => {
    web.tamper = new Set(['/js/3.js', '/img/7.png']);
    try {
      const verdict = await loadPage();
      expect(Object.keys(verdict.why).sort()).toEqual(['image7', 'script3']);
      expect(verdict.exact).toBe(SUBRESOURCES - 2);
    } finally {
      web.tamper = new Set();
    }
  }, 180_000);
});
