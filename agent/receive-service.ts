/**
 * The agent's `file-transfer` service: who takes the files that `vertex
 * send` offers to this identity on this device.
 *
 * Two owners, one at a time:
 *
 * - the agent itself, from `receive: { dir, allow, overwrite }` in
 *   agent.yaml: every offer that passes the allow list lands in `dir`,
 *   unasked (a systemd machine accepts files with no extra process);
 * - a `vertex receive` attached through the control API: it gets each
 *   stream and does the receiving (its own directory, questions on its
 *   terminal, its progress bar). While it is attached it stands in for the
 *   agent.yaml entry, which comes back when it leaves.
 *
 * With neither, the service is not exposed, and a sender hears NotExposed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { asVertexError, vertexError } from '../q2q/errors';
import type { Q2QStream, ServiceOptions } from '../q2q/negotiate/types';
import { silentLogger, type Logger } from '../q2q/util/log';
import { DEFAULT_RECEIVE_LIMITS, FILE_TRANSFER_SERVICE, receiveFiles, type ReceiveLimits } from './file-transfer';

/** `receive:` of agent.yaml, as the daemon holds it. */
export interface ReceiveSettings {
  /** An absolute path; created (0700) when missing. */
  readonly dir: string;
  /** Who may send; omitted means the owner alone, on any of the owner's devices. */
  readonly allow?: readonly string[];
  /** Replace an existing file of the same name instead of refusing the offer. */
  readonly overwrite: boolean;
  /** What one offer may ask (agent.yaml max_files, max_name_bytes); DEFAULT_RECEIVE_LIMITS when omitted. */
  readonly limits?: Readonly<ReceiveLimits>;
}

/** A `vertex receive` attached through the control API. */
export interface ReceiveClient {
  readonly allow: readonly string[];
  onStream(stream: Q2QStream): void;
}

export interface ReceiveStatus {
  /** Who takes the offers now. */
  by: 'agent.yaml' | 'vertex receive';
  /** Where the agent puts files: agent.yaml's dir (also while a `vertex receive` stands in), else null. */
  dir: string | null;
  allow: readonly string[];
  overwrite: boolean;
  /** What one offer may ask of the agent's own receiving; null while a `vertex receive` stands in (it has its own). */
  limits: Readonly<ReceiveLimits> | null;
  /** Transfers the agent itself received and failed since it started. */
  received: number;
  failed: number;
  active: number;
}

export type ReceiveChange = 'unchanged' | 'on' | 'off' | 'changed';

export interface AgentReceiverOptions {
  /** Where the service is put online; the agent's Q2Q node. */
  node: { expose(service: string, opts: ServiceOptions): void | Promise<void>; unexpose(service: string): void };
  /** The allow list an entry without one gets: the owner alone. */
  defaultAllow: () => readonly string[];
  /** Called for every inbound stream, before it is handled (the agent records it as a tunnel). */
  onInbound?: (stream: Q2QStream) => void;
  /** Called when the allow list in force changed (the ping service follows it). */
  onAllowChange?: () => void;
  log?: Logger;
}

/** ReceiveSettings with every default filled in. */
type Settled = ReceiveSettings & { readonly allow: readonly string[]; readonly limits: Readonly<ReceiveLimits> };

export class AgentReceiver {
  readonly #opts: AgentReceiverOptions;
  readonly #log: Logger;
  #settings: Settled | undefined;
  #client: ReceiveClient | undefined;
  #exposed = false;
  #received = 0;
  #failed = 0;
  readonly #active = new Set<AbortController>();
  /** Final paths being written, so two offers of one name do not race. */
  readonly #busy = new Set<string>();

  constructor(opts: AgentReceiverOptions) {
    this.#opts = opts;
    this.#log = (opts.log ?? silentLogger).child({ component: 'receive' });
  }

  /**
   * Applies agent.yaml's `receive:` (at start and on reload). Throws Config
   * when the directory cannot be made or written; the previous settings
   * then stay in force.
   */
  configure(next: ReceiveSettings | undefined): ReceiveChange {
    const prev = this.#settings;
    const settings = next && {
      ...next,
      dir: prepareDir(next.dir),
      allow: next.allow && next.allow.length > 0 ? [...next.allow] : [...this.#opts.defaultAllow()],
      limits: { ...DEFAULT_RECEIVE_LIMITS, ...next.limits },
    };
    const change: ReceiveChange = !prev && !settings ? 'unchanged' : !prev ? 'on' : !settings ? 'off' : sameSettings(prev, settings) ? 'unchanged' : 'changed';
    this.#settings = settings;
    if (change !== 'unchanged') {
      if (settings) this.#log.info({ dir: settings.dir, allow: settings.allow, overwrite: settings.overwrite, limits: settings.limits }, 'receiving files');
      else this.#log.info('no longer receiving files (receive: removed)');
      this.#apply();
    }
    return change;
  }

  /**
   * A `vertex receive` takes the service until `detach()`. One at a time:
   * a second one is refused, so two terminals never race for one offer.
   */
  attach(client: ReceiveClient): { detach: () => void; displaced: { dir: string } | null; ready: Promise<void> } {
    if (this.#client) throw vertexError('Usage', 'receive: another `vertex receive` is already attached to this agent; stop it first');
    this.#client = client;
    this.#log.info({ allow: client.allow }, 'vertex receive attached');
    const ready = this.#apply();
    let attached = true;
    return {
      // Resolves once the home server lists the service, so the client's
      // "listening" is true when it is printed.
      ready,
      displaced: this.#settings ? { dir: this.#settings.dir } : null,
      detach: () => {
        if (!attached) return;
        attached = false;
        if (this.#client === client) this.#client = undefined;
        this.#log.info('vertex receive detached');
        this.#apply();
      },
    };
  }

  /** The allow list in force, for the ping service; empty when nothing receives. */
  allow(): readonly string[] {
    return this.#client?.allow ?? this.#settings?.allow ?? [];
  }

  status(): ReceiveStatus | null {
    const s = this.#settings;
    if (!s && !this.#client) return null;
    return {
      by: this.#client ? 'vertex receive' : 'agent.yaml',
      dir: s?.dir ?? null,
      allow: this.allow(),
      overwrite: this.#client ? false : (s?.overwrite ?? false),
      limits: this.#client ? null : (s?.limits ?? null),
      received: this.#received,
      failed: this.#failed,
      active: this.#active.size,
    };
  }

  /** Cancels the agent's own transfers (their partial data stays for a resume). */
  stop(): void {
    for (const c of this.#active) c.abort();
    this.#client = undefined;
    this.#settings = undefined;
  }

  #apply(): Promise<void> {
    const allow = this.allow();
    let listed: void | Promise<void> = undefined;
    if (!this.#client && !this.#settings) {
      if (this.#exposed) this.#opts.node.unexpose(FILE_TRANSFER_SERVICE);
      this.#exposed = false;
    } else {
      listed = this.#opts.node.expose(FILE_TRANSFER_SERVICE, { allow: [...allow], onConnection: (stream) => this.#inbound(stream) });
      this.#exposed = true;
    }
    this.#opts.onAllowChange?.();
    return Promise.resolve(listed);
  }

  #inbound(stream: Q2QStream): void {
    this.#opts.onInbound?.(stream);
    const client = this.#client;
    if (client) {
      client.onStream(stream);
      return;
    }
    const settings = this.#settings;
    if (!settings) {
      stream.destroy();
      return;
    }
    const controller = new AbortController();
    this.#active.add(controller);
    const log = this.#log.child({ peer: stream.peer, device: stream.device, route: stream.route });
    receiveFiles(stream, {
      dir: settings.dir,
      peer: stream.peer,
      allow: settings.allow,
      overwrite: settings.overwrite,
      limits: settings.limits,
      busy: this.#busy,
      signal: controller.signal,
      log,
      onAccept: (offer) => log.info({ files: offer.files.length, bytes: offer.totalBytes }, 'offer accepted'),
    }).then(
      (result) => {
        this.#received += 1;
        log.info({ files: result.files.slice(0, 10).map((f) => f.path), count: result.files.length, bytes: result.bytesTotal }, 'files received');
      },
      (err: unknown) => {
        this.#failed += 1;
        const e = asVertexError(err);
        log.warn({ code: e.code, err: e.message }, 'transfer not received');
      },
    ).finally(() => this.#active.delete(controller));
  }
}

/** Makes `dir` (0700) when missing and checks that it is a writable directory. */
function prepareDir(dir: string): string {
  if (!path.isAbsolute(dir)) throw vertexError('Config', `receive.dir ${dir}: expected an absolute path`);
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (!fs.statSync(dir).isDirectory()) throw vertexError('Config', `receive.dir ${dir}: not a directory`);
    fs.accessSync(dir, fs.constants.W_OK);
    return fs.realpathSync(dir);
  } catch (err) {
    throw asVertexError(err, 'Config', `receive.dir ${dir}`);
  }
}

function sameSettings(a: Settled, b: Settled): boolean {
  return a.dir === b.dir && a.overwrite === b.overwrite && JSON.stringify(a.allow) === JSON.stringify(b.allow) &&
    a.limits.maxFiles === b.limits.maxFiles && a.limits.maxNameBytes === b.limits.maxNameBytes;
}
