/**
 * Exposes and forwards added at runtime (`vertex expose`, `vertex forward`
 * on a running agent) persist across restarts, as `tailscale serve` does,
 * without rewriting the user's agent.yaml: they live in their own file,
 * `<home>/runtime.json`, which the agent writes on every change and merges
 * over agent.yaml at start (issue 13, problem 4).
 *
 *     {"version":1,
 *      "expose":[{"service":"web","target":"127.0.0.1:8080","allow":["alice@a.test"]}],
 *      "forwards":[{"listen":"127.0.0.1:2222","to":"bob@b.test:ssh"}]}
 *
 * A runtime entry with the same service (or listen address) as an
 * agent.yaml entry replaced it with `--replace`, so it wins at start and at
 * reload. The file is written whole (temporary file, then rename), mode 0600.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { vertexError } from '../q2q/errors';

export const RUNTIME_STATE_FILE = 'runtime.json';

const runtimeStateSchema = z.strictObject({
  version: z.literal(1),
  expose: z.array(z.strictObject({ service: z.string().min(1), target: z.string().min(1), allow: z.array(z.string().min(1)).min(1) })),
  forwards: z.array(z.strictObject({ listen: z.string().min(1), to: z.string().min(1) })),
});

export type RuntimeState = Omit<z.infer<typeof runtimeStateSchema>, 'version'>;

export const EMPTY_RUNTIME_STATE: RuntimeState = { expose: [], forwards: [] };

/** Where the daemon keeps its runtime entries; injected, so the daemon itself touches no file. */
export interface RuntimeStateStore {
  /** Where it is, for messages. */
  readonly where: string;
  load(): RuntimeState;
  save(state: RuntimeState): void;
}

export class RuntimeStateFile implements RuntimeStateStore {
  readonly where: string;

  constructor(file: string) {
    this.where = file;
  }

  load(): RuntimeState {
    let text: string;
    try {
      text = fs.readFileSync(this.where, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { expose: [], forwards: [] };
      throw vertexError('Config', `${this.where}: cannot read: ${(err as Error).message}`, err);
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw vertexError('Config', `${this.where}: not JSON; it holds the exposes and forwards added with vertex expose/forward (fix it or remove it)`);
    }
    const parsed = runtimeStateSchema.safeParse(value);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw vertexError('Config', `${this.where}: ${issue ? `${issue.path.join('.') || '(top level)'}: ${issue.message}` : 'invalid'}; fix it or remove it`);
    }
    return { expose: parsed.data.expose, forwards: parsed.data.forwards };
  }

  save(state: RuntimeState): void {
    const tmp = path.join(path.dirname(this.where), `.${path.basename(this.where)}.${process.pid}.tmp`);
    fs.writeFileSync(tmp, `${JSON.stringify({ version: 1, ...state }, null, 2)}\n`, { mode: 0o600 });
    fs.renameSync(tmp, this.where);
  }
}
