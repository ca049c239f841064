/**
 * Faults the integration tests inject into a real `vertex server` process,
 * to show that each security test can fail (PROTOCOL: every new security test
 * also runs against the behaviour it forbids). VERTEX_TEST_FAULT is a comma
 * list; it is honoured only when NODE_ENV is `test` (jest sets it, and the
 * servers a test starts inherit it), so an operator's environment cannot
 * switch a check off by accident. An active fault is logged as a warning.
 *
 * - `no-change-feed`: the server does not follow the store's change feed, so
 *   a revocation or removal made by `vertex server revoke|remove-user` (another
 *   process) never closes live sessions nor pushes `revoked`.
 * - `no-request-check`: requests on a session (renew, inbound, listen) are not
 *   re-authorized against the store when made; only the TLS-time check holds.
 * - `no-cert-status`: foreign certificates are not checked with their issuing
 *   server (cert-status), only against the pinned CA.
 * - `no-admission-priority`: unauthenticated connections are admitted as
 *   before the known-good set (server/admission.ts): no pressure mode, every
 *   newcomer evicts for its place, whoever it is.
 * - `relay-no-leg-proof`: relay legs are taken without checking the request's
 *   signature against its certificate, its token proof (HMAC) or that its
 *   nonce is fresh: the name of a token and any certificate open a leg.
 * - `no-node-cert-check`: the node-to-node mesh admits any node certificate
 *   of the domain CA, recorded or not, revoked or not (server/node-mesh.ts).
 * - `relay-carry-unknown`: a node carries a relay leg whose token id no node
 *   announced to it to another live node (as a design that asks around
 *   would), instead of refusing it where it lands (server/relay.ts).
 * - `windowed-password-budgets`: the per-account password budget is a fixed
 *   window again, not a token bucket (server/rate-limiter.ts): a flood from
 *   several addresses buys all their checks at once.
 */
export type TestFault = 'no-change-feed' | 'no-request-check' | 'no-cert-status' | 'no-admission-priority' | 'relay-no-leg-proof' | 'no-node-cert-check'
  | 'windowed-password-budgets' | 'relay-carry-unknown';

const KNOWN: readonly TestFault[] = ['no-change-feed', 'no-request-check', 'no-cert-status', 'no-admission-priority', 'relay-no-leg-proof', 'no-node-cert-check',
  'windowed-password-budgets', 'relay-carry-unknown'];

export function testFaults(env: NodeJS.ProcessEnv = process.env): ReadonlySet<TestFault> {
  if (env.NODE_ENV !== 'test' || !env.VERTEX_TEST_FAULT) return new Set();
  const wanted = env.VERTEX_TEST_FAULT.split(',').map((s) => s.trim());
  return new Set(KNOWN.filter((f) => wanted.includes(f)));
}
