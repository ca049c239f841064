import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { MetricsHttpServer } from '../../../q2q/util/metrics-http';
import { instrumentStore, ServerMetrics } from '../../../server/metrics';
import { SqliteAccountStore } from '../../../server/store/sqlite-store';

function get(port: number, p: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: p }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

describe('server metrics endpoint', () => {
  let dir: string;
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vertex-metrics-')); });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('/health is 503 until the store answers, 200 while it does, 503 again once it stops answering', async () => {
    const metrics = new ServerMetrics({ node: 'n1' });
    const http_ = new MetricsHttpServer(metrics);
    const { port } = await http_.listen('127.0.0.1', 0);
    const store = instrumentStore(new SqliteAccountStore(path.join(dir, 'vertex.db')), metrics);
    try {
      expect(await get(port, '/health')).toEqual({ status: 503, body: 'not ready: starting\n' });
      metrics.attach({
        sessions: () => 3, onlineAgents: () => 2, relayActive: () => 1, unauthenticated: () => ({ open: 7, underPressure: true }),
      }, () => store.ping());
      metrics.unauthenticatedRefused('shed');
      metrics.unauthenticatedRefused('shed');
      expect(await get(port, '/health')).toEqual({ status: 200, body: 'ok\n' });
      await store.createAccount('a.test', 'alice', 'h');
      const text = (await get(port, '/metrics')).body;
      expect(text).toMatch(/^vertex_server_sessions\{node="n1"\} 3$/m);
      expect(text).toMatch(/^vertex_server_unauthenticated_connections\{node="n1"\} 7$/m);
      expect(text).toMatch(/^vertex_server_unauthenticated_pressure\{node="n1"\} 1$/m);
      expect(text).toMatch(/^vertex_server_unauthenticated_refused_total\{reason="shed",node="n1"\} 2$/m);
      expect(text).toMatch(/^vertex_server_store_seconds_count\{node="n1",op="createAccount",outcome="ok"\} 1$/m);
      await store.close();
      const down = await get(port, '/health');
      expect(down.status).toBe(503);
      expect(down.body).toMatch(/^not ready: account store: ping: /);
    } finally {
      await http_.close();
    }
  });
});
