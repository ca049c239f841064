/**
 * Where a listener may send punch probes (issue 11, item 7).
 *
 * The caller names its own PTCP candidates in `inbound`, and the listener
 * answers by sending low-TTL probes toward them (punch.ts). Unchecked, that
 * lets any allowed caller make the listener send datagrams to host:port pairs
 * of its choosing: its own loopback services, broadcast and multicast groups,
 * its LAN. So before any probe leaves, each candidate must pass a sanity check:
 *
 * - not unspecified (0.0.0.0/8, ::), loopback (127.0.0.0/8, ::1), multicast
 *   (224.0.0.0/4, ff00::/8), reserved or limited broadcast (240.0.0.0/4,
 *   which holds 255.255.255.255), IPv6 link-local (fe80::/10, which needs a
 *   scope no candidate carries), nor the IPv4-mapped form of any of these;
 * - not an address of the listener's own host (its interfaces), nor the
 *   directed broadcast address of one of its IPv4 subnets;
 *
 * and at most MAX_PUNCH_TARGETS distinct candidates are probed, in the
 * caller's order (callers list their reflexive address first). A probe to the
 * listener's own host is never needed: no NAT lies between a host and itself,
 * and a caller on the same host reaches the listener's PTCP socket directly.
 */
import * as net from 'node:net';
import * as os from 'node:os';

/** Distinct candidates a listener probes for one inbound (each gets LISTENER_LOW_TTL_PROBES datagrams). */
export const MAX_PUNCH_TARGETS = 4;

export interface ProbeTarget {
  host: string;
  port: number;
}

/** What the listener knows about its own host: interface addresses and IPv4 directed broadcasts. */
export interface LocalHost {
  addresses: readonly string[];
  broadcasts: readonly string[];
}

const NEVER = new net.BlockList();
NEVER.addSubnet('0.0.0.0', 8, 'ipv4');
NEVER.addSubnet('127.0.0.0', 8, 'ipv4');
NEVER.addSubnet('224.0.0.0', 4, 'ipv4');
NEVER.addSubnet('240.0.0.0', 4, 'ipv4');
NEVER.addAddress('::', 'ipv6');
NEVER.addAddress('::1', 'ipv6');
NEVER.addSubnet('ff00::', 8, 'ipv6');
NEVER.addSubnet('fe80::', 10, 'ipv6');

const MAPPED_V4 = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i;

function ipv4Number(address: string): number {
  return address.split('.').reduce((n, octet) => ((n << 8) | Number(octet)) >>> 0, 0);
}

function ipv4Text(n: number): string {
  return [24, 16, 8, 0].map((shift) => (n >>> shift) & 0xff).join('.');
}

/** The local host as os.networkInterfaces() describes it. */
export function localHost(interfaces: NodeJS.Dict<os.NetworkInterfaceInfo[]> = os.networkInterfaces()): LocalHost {
  const addresses: string[] = [];
  const broadcasts: string[] = [];
  for (const info of Object.values(interfaces).flat()) {
    if (!info) continue;
    addresses.push(info.address);
    if (info.family === 'IPv4' && net.isIPv4(info.netmask)) {
      const mask = ipv4Number(info.netmask);
      // /31 and /32 have no broadcast address (RFC 3021).
      if ((~mask >>> 0) > 1) broadcasts.push(ipv4Text((ipv4Number(info.address) | ~mask) >>> 0));
    }
  }
  return { addresses, broadcasts };
}

/** Why the listener must not probe `host`, or null when it may. */
export function probeRefusal(host: string, local: LocalHost): string | null {
  const mapped = MAPPED_V4.exec(host);
  const address = mapped?.[1] ?? host;
  const family = net.isIPv4(address) ? 'ipv4' : net.isIPv6(address) ? 'ipv6' : null;
  if (family === null) return 'not an IP address';
  if (NEVER.check(address, family)) return 'unspecified, loopback, multicast, broadcast, reserved or link-local';
  const own = new net.BlockList();
  for (const a of [...local.addresses, ...local.broadcasts]) {
    const m = MAPPED_V4.exec(a)?.[1] ?? a;
    if (net.isIPv4(m)) own.addAddress(m, 'ipv4');
    else if (net.isIPv6(m)) own.addAddress(m, 'ipv6');
  }
  if (own.check(address, family)) return "an address of the listener's own host";
  return null;
}

/**
 * The caller's candidates the listener may probe: those that pass probeRefusal,
 * without duplicates, at most `max`, in the caller's order.
 */
export function punchTargets(candidates: readonly ProbeTarget[], local: LocalHost, max = MAX_PUNCH_TARGETS): ProbeTarget[] {
  const out: ProbeTarget[] = [];
  const seen = new Set<string>();
  for (const c of candidates) {
    if (out.length >= max) break;
    if (!Number.isInteger(c.port) || c.port < 1 || c.port > 65535) continue;
    const key = `${c.host.toLowerCase()}|${c.port}`;
    if (seen.has(key) || probeRefusal(c.host, local) !== null) continue;
    seen.add(key);
    out.push({ host: c.host, port: c.port });
  }
  return out;
}
