import { buildAgentConfig } from '../../../config/load';
import { planReload, type CurrentExpose, type CurrentForward } from '../../../agent/reload-plan';
import type { AgentOverrides } from '../../../config/load';

const config = (o: AgentOverrides = {}) => buildAgentConfig(o);
const OWNER = ['bob@b.test'];
const exposeOf = (service: string, target: string, allow: string[], source: 'config' | 'cli'): CurrentExpose => {
  const [host, port] = target.split(':');
  return { service, target: { host: host ?? '', port: Number(port) }, allow, source };
};

describe('planReload', () => {
  it('removes agent.yaml entries the file dropped, applies new and changed ones, leaves equal ones alone', () => {
    const prev = config({ expose: [{ service: 'ssh', target: '127.0.0.1:22' }, { service: 'old', target: '127.0.0.1:1' }] });
    const next = config({ expose: [{ service: 'ssh', target: '127.0.0.1:22' }, { service: 'web', target: '127.0.0.1:80', allow: ['*'] }] });
    const plan = planReload(prev, next, {
      exposes: [exposeOf('ssh', '127.0.0.1:22', OWNER, 'config'), exposeOf('old', '127.0.0.1:1', OWNER, 'config')],
      forwards: [],
      defaultAllow: OWNER,
    });
    expect(plan.exposes.remove).toEqual(['old']);
    expect(plan.exposes.apply.map((e) => e.service)).toEqual(['web']);
    expect(plan.needRestart).toEqual([]);
  });

  it('a changed allow list or target is applied again; an omitted allow equals the owner alone', () => {
    const next = config({ expose: [{ service: 'ssh', target: '127.0.0.1:22', allow: ['*@b.test'] }, { service: 'web', target: '127.0.0.1:81' }, { service: 'db', target: '127.0.0.1:5432' }] });
    const plan = planReload(next, next, {
      exposes: [exposeOf('ssh', '127.0.0.1:22', OWNER, 'config'), exposeOf('web', '127.0.0.1:80', OWNER, 'config'), exposeOf('db', '127.0.0.1:5432', OWNER, 'config')],
      forwards: [],
      defaultAllow: OWNER,
    });
    expect(plan.exposes.apply.map((e) => e.service)).toEqual(['ssh', 'web']);
  });

  it('never removes a runtime (cli) entry, and keeps one that replaced a file entry on purpose', () => {
    const next = config({ expose: [{ service: 'ssh', target: '127.0.0.1:22' }], forwards: [{ listen: '127.0.0.1:2222', to: 'alice@a.test:ssh' }] });
    const forwards: CurrentForward[] = [
      { key: '127.0.0.1:2222', to: 'carol@a.test:ssh', source: 'cli' },
      { key: '127.0.0.1:40000', to: 'alice@a.test:web', source: 'cli' },
    ];
    const plan = planReload(next, next, { exposes: [exposeOf('ssh', '127.0.0.1:2200', ['*'], 'cli'), exposeOf('extra', '127.0.0.1:9', OWNER, 'cli')], forwards, defaultAllow: OWNER });
    expect(plan.exposes).toEqual({ remove: [], apply: [] });
    expect(plan.forwards).toEqual({ remove: [], add: [] });
  });

  it('a forward whose destination changed is removed and added again; a dropped one goes; a new one comes', () => {
    const prev = config({ forwards: [{ listen: '127.0.0.1:2222', to: 'alice@a.test:ssh' }, { listen: '2223', to: 'alice@a.test:web' }] });
    const next = config({ forwards: [{ listen: '127.0.0.1:2222', to: 'alice@a.test:http' }, { listen: '127.0.0.1:2224', to: 'alice@a.test:db' }] });
    const plan = planReload(prev, next, {
      exposes: [],
      forwards: [{ key: '127.0.0.1:2222', to: 'alice@a.test:ssh', source: 'config' }, { key: '127.0.0.1:2223', to: 'alice@a.test:web', source: 'config' }],
      defaultAllow: OWNER,
    });
    expect(plan.forwards.remove).toEqual(['127.0.0.1:2222', '127.0.0.1:2223']);
    expect(plan.forwards.add.map((f) => `${f.listen.host}:${f.listen.port} ${f.to}`)).toEqual(['127.0.0.1:2222 alice@a.test:http', '127.0.0.1:2224 alice@a.test:db']);
  });

  it('lists the sections that need a restart', () => {
    const plan = planReload(config(), config({ routes: ['relay'], socks: { listen: '127.0.0.1:1081' }, device: 'laptop' }), { exposes: [], forwards: [], defaultAllow: OWNER });
    expect(plan.needRestart).toEqual(['device', 'socks', 'routes']);
  });
});
