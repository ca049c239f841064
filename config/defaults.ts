/**
 * Every configuration default, in one object, written the way the YAML files
 * write them (snake_case keys, `HOST:PORT` and duration strings). config/load.ts
 * fills each omitted key from here, and nowhere else holds a default. The
 * annotated examples in config/*.example.yaml repeat these values; their tests
 * check that the two agree.
 *
 * Keys that have no default (`identity`, an expose's `allow`, `advertise`,
 * `public_address`, the server's `domains`, `metrics`, which is off unless
 * written) are absent on purpose, and so is the agent's `device`, whose
 * default is the host name's first label: it is worked out by the node when
 * it starts (q2q/address.ts deviceFromHostname).
 *
 * AGENT_DEFAULTS and SERVER_DEFAULTS are the same values as typed config
 * objects, for code that runs with no file at all.
 */
import { deepFreeze, toAgentConfig, toServerConfig, type AgentConfig, type ServerConfig } from './schema';

export const DEFAULTS = deepFreeze({
  agent: {
    socks: {
      listen: '127.0.0.1:1080',
      auth: 'none',
      passthrough: false,
    },
    forwards: [],
    expose: [],
    domains: {},
    routes: ['tcp', 'ptcp', 'relay'],
    ports: { 22: 'ssh', 80: 'http', 443: 'https' },
    control: { socket: 'auto' },
    log: { level: 'info' },
    relay_delay_ms: 1000,
    peer_listen: '0.0.0.0:0',
  },
  /**
   * The rest of an agent.yaml `receive:` that is written (dir has no default, so the
   * agent receives nothing unless it is). Not under agent: a file with every key of
   * agent: must load as the defaults, and a receive: there would switch receiving on.
   * The limits are per offer (issue 11), also what `vertex receive` uses.
   */
  agent_receive: {
    overwrite: false,
    max_files: 10_000,
    max_name_bytes: 1_048_576,
  },
  server: {
    listen: '0.0.0.0:8788',
    data_dir: '/var/lib/vertex',
    registration: 'invite',
    certificate_lifetime: '30d',
    relay: {
      enabled: true,
      max_streams: 10_000,
      per_user_rate: 0,
    },
    limits: {
      max_connections: 10_000,
      handshake_timeout: '10s',
      max_box_bytes: 262_144,
      unauthenticated_per_address: 256,
      unauthenticated_max: 2000,
      unauthenticated_idle_timeout: '10s',
      unauthenticated_lifetime: '60s',
      unauthenticated_handshakes: 128,
      unauthenticated_newcomer_interval: '10s',
      known_addresses: 10_000,
      known_address_lifetime: '24h',
      password_guesses_per_account_address: 5,
      password_guesses_per_address: 20,
      password_guesses_per_account: 100,
      password_window: '15m',
      registrations_per_address: 20,
      invite_guesses_per_address: 5,
      logins_waiting_per_account: 16,
    },
    store: 'sqlite',
    log: { level: 'info' },
  },
} as const);

export type Defaults = typeof DEFAULTS;

/** The agent configuration of a file that says only `version: 1`. */
export const AGENT_DEFAULTS: AgentConfig = deepFreeze(toAgentConfig({ version: 1 }, DEFAULTS.agent, DEFAULTS.agent_receive));

/**
 * The server configuration with every default and no domain. A file must
 * name at least one domain; code starting from here must add one too.
 */
export const SERVER_DEFAULTS: ServerConfig = deepFreeze(toServerConfig({ version: 1, domains: [] }, DEFAULTS.server));
