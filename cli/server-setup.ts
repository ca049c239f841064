/**
 * The identity server's options from its config: what `vertex server` and
 * `vertex demo` share.
 */
import * as path from 'node:path';
import { vertexError } from '../q2q/errors';
import type { ServerConfig } from '../config/schema';
import type { IdentityServerOptions } from '../server/identity-server';
import type { LoginLimits } from '../server/rate-limiter';

const HOUR_MS = 3_600_000;

function loginLimits(l: ServerConfig['limits']['login']): Partial<LoginLimits> {
  // The per-account budget is a token bucket whose burst is one more than the
  // per-(account, address) budget (server/rate-limiter.ts says why).
  return {
    perAccountAddress: { limit: l.perAccountAddress, windowMs: l.windowMs },
    perAddress: { limit: l.perAddress, windowMs: l.windowMs },
    perAccount: { limit: l.perAccount, windowMs: l.windowMs, burst: Math.min(l.perAccountAddress + 1, l.perAccount) },
    registerPerAddress: { limit: l.registrationsPerAddress, windowMs: HOUR_MS },
    invitePerAddress: { limit: l.inviteGuessesPerAddress, windowMs: l.windowMs },
    maxWaitingPerAccount: l.waitingPerAccount,
  };
}

export function identityServerOptions(config: ServerConfig): Omit<IdentityServerOptions, 'log'> {
  if (config.domains.length === 0) {
    throw vertexError('Usage', 'no domain to serve: give --domain DOMAIN or a --config file with domains:');
  }
  return {
    domains: [...config.domains],
    listen: config.listen,
    dataDir: path.resolve(config.dataDir),
    registration: config.registration,
    certificateLifetimeMs: config.certificateLifetimeMs,
    relay: { ...config.relay },
    store: config.store,
    ...(config.metrics ? { metrics: { ...config.metrics.listen } } : {}),
    // A node's metrics carry its node name rather than the host name.
    ...(config.node ? { nodeName: config.node.name } : {}),
    ...(config.node ? { node: { name: config.node.name, listen: { ...config.node.listen }, ...(config.node.advertise && { advertise: config.node.advertise }) } } : {}),
    federation: {
      ...(config.federation.allow && { allow: [...config.federation.allow] }),
      ...(config.federation.certStatusCacheMs !== undefined && { certStatusCacheMs: config.federation.certStatusCacheMs }),
    },
    limits: {
      maxConnections: config.limits.maxConnections,
      handshakeTimeoutMs: config.limits.handshakeTimeoutMs,
      maxBoxBytes: config.limits.maxBoxBytes,
      unauthenticated: { ...config.limits.unauthenticated },
      login: loginLimits(config.limits.login),
    },
  };
}

