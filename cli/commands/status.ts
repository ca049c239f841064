/**
 * `vertex status [--json]`: what the running agent is doing: identity and
 * device (with the identity's other devices online, and services they share),
 * certificate expiry, the server connection, the reflexive address, exposed
 * services, forwards, and every open tunnel with its route, age and bytes.
 */
import type { Argv, CommandModule } from 'yargs';
import { parseControlResult, type AgentStatusReply as AgentStatus } from '../../agent/control-protocol';
import { vertexError } from '../../q2q/errors';
import type { NatMapping } from '../../q2q/negotiate/nat-type';
import { callRunningAgent, noAgentMessage, type AgentArgs, type GlobalArgs } from '../context';
import { describeAllow, printResult } from '../output';

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatAge(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, '0')}h`;
}

function table(rows: string[][]): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  ').trimEnd());
}

/** What the NAT mapping means for the user: whether hole punching can work from here. */
function natText(nat: NatMapping): string {
  switch (nat) {
    case 'easy':
      return 'easy (one mapping for every destination: punching works)';
    case 'hard':
      return 'hard (a mapping per destination: peers behind hard NATs use the relay)';
    case 'unknown':
      return 'unknown (fewer than two servers answered over UDP)';
  }
}

/** `bob+laptop@b.test`: an address with one of its devices named. */
function withDevice(address: string, device: string): string {
  const at = address.indexOf('@');
  return at < 0 ? address : `${address.slice(0, at)}+${device}${address.slice(at)}`;
}

function deviceText(s: AgentStatus): string {
  if (s.devices.replacedBy !== null) return `${s.device} (replaced by a newer session from ${s.devices.replacedBy}: not online as this device)`;
  const others = s.devices.online.filter((d) => d !== s.device);
  if (s.devices.online.length === 0) return s.device;
  return others.length === 0 ? `${s.device} (the only device of ${s.identity} online)` : `${s.device} (also online: ${others.join(', ')})`;
}

/** Services this device shares with the identity's other devices, and which one an unqualified name reaches. */
function conflictLines(s: AgentStatus): string[] {
  const { conflicts, moreConflicts } = s.devices;
  if (conflicts.length === 0) return [];
  const lines = ['conflicts    services other devices of yours expose too; a name without a device reaches the first device by name'];
  lines.push(...table(conflicts.map((c) => [
    '  ',
    c.service,
    `on ${c.devices.join(', ')}`,
    `${s.identity}:${c.service} -> ${c.chosen}${c.chosen === s.device ? ' (this device)' : ''}`,
    `this device: ${withDevice(s.identity, s.device)}:${c.service}`,
  ])));
  if (moreConflicts > 0) lines.push(`  (and ${moreConflicts} more)`);
  return lines;
}

/** Who takes files sent to this device; an older agent does not say (undefined). */
function receiveText(s: AgentStatus): string {
  const r = s.receive;
  if (!r) return r === null ? 'off (receive: in agent.yaml, or vertex receive)' : '-';
  const counts = `${r.received} received, ${r.failed} failed${r.active > 0 ? `, ${r.active} in progress` : ''}`;
  if (r.by === 'vertex receive') return `by vertex receive (allow ${describeAllow(r.allow, s.identity)})${r.dir ? `; agent.yaml's ${r.dir} resumes when it exits` : ''}`;
  return `into ${r.dir} (allow ${describeAllow(r.allow, s.identity)}${r.overwrite ? ', overwrite' : ''}; from agent.yaml); ${counts}`;
}

/** While the agent waits to reconnect: when it tries next (`vertex agent` tries at once on SIGHUP). */
function nextTryText(s: AgentStatus, now: number): string {
  if (s.server.state === 'online' || !s.server.nextTry) return '';
  const inMs = Date.parse(s.server.nextTry) - now;
  return `; next try ${inMs > 0 ? `in ${Math.ceil(inMs / 1000)} s` : 'now'} (${s.server.nextTry}; SIGHUP tries at once)`;
}

export function formatStatus(s: AgentStatus, now = Date.now()): string {
  const expiresIn = Date.parse(s.certificate.notAfter) - now;
  const lines = [
    `identity     ${s.identity}`,
    `device       ${deviceText(s)}`,
    `certificate  valid until ${s.certificate.notAfter}${expiresIn > 0 ? ` (in ${formatAge(expiresIn)})` : ' (EXPIRED)'}`,
    `server       ${s.server.state}${s.server.server ? ` ${s.server.server}` : ''} since ${s.server.since}${s.server.lastError ? `; last error: ${s.server.lastError}` : ''}${nextTryText(s, now)}`,
    `reflexive    tcp ${s.reflexive.tcp ?? '-'}, udp ${s.reflexive.udp ?? '-'}${s.reflexive.nat ? `, NAT ${natText(s.reflexive.nat)}` : ''}`,
    `peer listen  ${s.peerListen ?? '-'}`,
    `socks5       ${s.socks ? `${s.socks.listen} (auth ${s.socks.auth}, passthrough ${s.socks.passthrough ? 'on' : 'off'})` : 'off'}`,
  ];
  lines.push(s.exposed.length === 0 ? 'exposed      (none)' : 'exposed');
  lines.push(...table(s.exposed.map((e) => ['  ', e.address, '->', e.target, `allow ${describeAllow(e.allow, s.identity)}`, `(${e.source})`])));
  lines.push(...conflictLines(s));
  lines.push(`receive      ${receiveText(s)}`);
  lines.push(s.forwards.length === 0 ? 'forwards     (none)' : 'forwards');
  lines.push(...table(s.forwards.map((f) => ['  ', f.listen, '->', f.to, `(${f.source})`])));
  if (s.tunnels.length === 0) {
    lines.push('tunnels      (none)');
  } else {
    lines.push('tunnels');
    lines.push(...table([
      ['  ', 'ID', 'KIND', 'TARGET', 'PEER', 'DEVICE', 'ROUTE', 'AGE', 'IN', 'OUT', 'LOCAL'],
      ...s.tunnels.map((t) => ['  ', String(t.id), t.kind, t.target, t.peer, t.device || '-', t.route, formatAge(t.ageMs), formatBytes(t.bytesIn), formatBytes(t.bytesOut), t.local]),
    ]));
  }
  const sessions = s.sessions ?? [];
  if (sessions.length === 0) {
    lines.push('sessions     (none)');
  } else {
    // One line per peer session: every tunnel to or from that peer device is a stream on it.
    lines.push('sessions');
    lines.push(...table([
      ['  ', 'PEER', 'DEVICE', 'ROLE', 'ROUTE', 'STATE', 'STREAMS', 'AGE', 'IN', 'OUT', 'ID'],
      ...sessions.map((x) => ['  ', x.peer, x.device || '-', x.role, x.route, x.state, String(x.streams), formatAge(x.ageMs), formatBytes(x.bytesIn), formatBytes(x.bytesOut), x.id.slice(0, 8)]),
    ]));
  }
  return lines.join('\n');
}

export const statusCommand: CommandModule<GlobalArgs, AgentArgs> = {
  command: 'status',
  describe: 'show the running agent: identity, server connection, exposes, forwards, tunnels with routes',
  builder: (y) => y.option('config', { type: 'string', describe: 'agent.yaml [<home>/agent.yaml]' }) as Argv<AgentArgs>,
  handler: async (args) => {
    const reply = await callRunningAgent(args, 'status');
    if (!reply.agent) throw vertexError('Internal', noAgentMessage(reply.looked));
    // Checked, then printed as the agent sent it: --json keeps a newer agent's extra fields.
    const status = parseControlResult('status', reply.result);
    printResult(args.json, formatStatus(status), reply.result);
  },
};
