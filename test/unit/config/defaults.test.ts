import { stringify } from 'yaml';
import { AGENT_DEFAULTS, DEFAULTS, SERVER_DEFAULTS } from '../../../config/defaults';
import { loadAgentConfig, loadServerConfig } from '../../../config/load';

describe('DEFAULTS', () => {
  it('written out as a file, the agent defaults load and change nothing', () => {
    const explicit = loadAgentConfig(stringify({ version: 1, ...DEFAULTS.agent }), 'defaults.yaml');
    expect(explicit).toEqual(loadAgentConfig('version: 1\n', 'minimal.yaml'));
  });

  it('written out as a file, the server defaults load and change nothing', () => {
    const explicit = loadServerConfig(stringify({ version: 1, domains: ['a.test'], ...DEFAULTS.server }), 'defaults.yaml');
    expect(explicit).toEqual(loadServerConfig('version: 1\ndomains: [a.test]\n', 'minimal.yaml'));
  });

  it('AGENT_DEFAULTS is what a file with only a version gives', () => {
    expect(AGENT_DEFAULTS).toEqual(loadAgentConfig('version: 1\n', 'minimal.yaml'));
  });

  it('SERVER_DEFAULTS is a minimal file without its domain', () => {
    expect(SERVER_DEFAULTS).toEqual({ ...loadServerConfig('version: 1\ndomains: [a.test]\n', 'minimal.yaml'), domains: [] });
  });

  it('is frozen all the way down, so no caller can change another caller\'s defaults', () => {
    expect(Object.isFrozen(DEFAULTS.agent.ports)).toBe(true);
    expect(Object.isFrozen(DEFAULTS.agent.routes)).toBe(true);
    expect(Object.isFrozen(DEFAULTS.server.limits)).toBe(true);
    expect(Object.isFrozen(AGENT_DEFAULTS.socks.listen)).toBe(true);
    expect(Object.isFrozen(SERVER_DEFAULTS.relay)).toBe(true);
  });

  it('a loaded config shares no mutable state with the defaults', () => {
    const config = loadAgentConfig('version: 1\nports: { 8080: web }\n', 'a.yaml');
    expect(config.ports).not.toBe(DEFAULTS.agent.ports);
    expect(DEFAULTS.agent.ports).not.toHaveProperty('8080');
  });
});
