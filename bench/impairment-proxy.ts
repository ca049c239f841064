/**
 * A UDP impairment proxy on 127.0.0.1 for transport tests (the kernel here has no netem).
 *
 * Clients send to `proxy.port`; the proxy forwards to `target` from a second socket, and
 * the target's answers go back to the client that spoke last. Each direction drops,
 * duplicates and delays datagrams (fixed delay plus uniform jitter, which reorders them)
 * from a seeded PRNG, so a failing run can be replayed. Queues are bounded: a datagram
 * arriving to a full queue is dropped and counted.
 *
 * It lives in bench/ because bench/ptcp.ts measures through it too, and bench/
 * never imports test/ (test/unit/layers.test.ts); the tests import it from here.
 */
import * as dgram from 'node:dgram';

export interface Impairment {
  /** Probability of dropping a datagram. */
  loss?: number;
  /** Probability of sending a datagram twice (each copy delayed on its own). */
  duplicate?: number;
  delayMs?: number;
  jitterMs?: number;
  /** Most datagrams held for delay at once. */
  maxQueue?: number;
}

export interface DirectionStats {
  received: number;
  forwarded: number;
  dropped: number;
  duplicated: number;
  overflow: number;
}

export interface ImpairmentProxyOptions {
  target: { host?: string; port: number };
  /** Client to target. */
  up?: Impairment;
  /** Target to client. */
  down?: Impairment;
  seed?: number;
}

/** mulberry32: small, fast and good enough to pick drops. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Held {
  at: number;
  order: number;
  buf: Buffer;
}

/** A binary min-heap on (at, order), so one timer serves every delayed datagram. */
class DelayQueue {
  #heap: Held[] = [];

  get size(): number {
    return this.#heap.length;
  }

  peek(): Held | undefined {
    return this.#heap[0];
  }

  #less(a: Held, b: Held): boolean {
    return a.at < b.at || (a.at === b.at && a.order < b.order);
  }

  push(item: Held): void {
    const h = this.#heap;
    h.push(item);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.#less(h[i] as Held, h[p] as Held)) break;
      [h[i], h[p]] = [h[p] as Held, h[i] as Held];
      i = p;
    }
  }

  pop(): Held | undefined {
    const h = this.#heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.#less(h[l] as Held, h[m] as Held)) m = l;
        if (r < h.length && this.#less(h[r] as Held, h[m] as Held)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m] as Held, h[i] as Held];
        i = m;
      }
    }
    return top;
  }

  clear(): void {
    this.#heap = [];
  }
}

class Direction {
  readonly stats: DirectionStats = { received: 0, forwarded: 0, dropped: 0, duplicated: 0, overflow: 0 };
  readonly #queue = new DelayQueue();
  #timer: NodeJS.Timeout | null = null;
  #order = 0;
  #closed = false;

  constructor(
    readonly impairment: Impairment,
    readonly random: () => number,
    readonly send: (buf: Buffer) => void,
  ) {}

  handle(buf: Buffer): void {
    if (this.#closed) return;
    this.stats.received++;
    const imp = this.impairment;
    const copies = imp.duplicate && this.random() < imp.duplicate ? 2 : 1;
    if (copies === 2) this.stats.duplicated++;
    for (let c = 0; c < copies; c++) {
      if (imp.loss && this.random() < imp.loss) {
        this.stats.dropped++;
        continue;
      }
      const delay = (imp.delayMs ?? 0) + (imp.jitterMs ? this.random() * imp.jitterMs : 0);
      if (delay <= 0) {
        this.stats.forwarded++;
        this.send(buf);
        continue;
      }
      if (this.#queue.size >= (imp.maxQueue ?? 10_000)) {
        this.stats.overflow++;
        continue;
      }
      this.#queue.push({ at: performance.now() + delay, order: this.#order++, buf });
      this.#schedule();
    }
  }

  #schedule(): void {
    if (this.#timer || this.#closed) return;
    const next = this.#queue.peek();
    if (!next) return;
    this.#timer = setTimeout(() => this.#release(), Math.max(0, next.at - performance.now()));
  }

  #release(): void {
    this.#timer = null;
    const now = performance.now();
    for (let next = this.#queue.peek(); next && next.at <= now + 0.5; next = this.#queue.peek()) {
      this.#queue.pop();
      this.stats.forwarded++;
      this.send(next.buf);
    }
    this.#schedule();
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#queue.clear();
  }
}

async function bindLoopback(): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      s.off('error', reject);
      try {
        s.setRecvBufferSize(4 * 1024 * 1024);
        s.setSendBufferSize(4 * 1024 * 1024);
      } catch {
        // Kernel limits apply.
      }
      resolve(s);
    });
  });
}

export class ImpairmentProxy {
  readonly #front: dgram.Socket;
  #back: dgram.Socket;
  readonly #up: Direction;
  readonly #down: Direction;
  #client: { address: string; port: number } | null = null;

  private constructor(front: dgram.Socket, back: dgram.Socket, opts: ImpairmentProxyOptions) {
    this.#front = front;
    this.#back = back;
    const random = seededRandom(opts.seed ?? 1);
    const host = opts.target.host ?? '127.0.0.1';
    this.#up = new Direction(opts.up ?? {}, random, (buf) => this.#back.send(buf, opts.target.port, host));
    this.#down = new Direction(opts.down ?? {}, random, (buf) => {
      if (this.#client) front.send(buf, this.#client.port, this.#client.address);
    });
    front.on('message', (buf, rinfo) => {
      this.#client = { address: rinfo.address, port: rinfo.port };
      this.#up.handle(buf);
    });
    back.on('message', (buf) => this.#down.handle(buf));
  }

  /** Moves the target-facing side to a new source port, as a NAT rebinding would. */
  async rebind(): Promise<void> {
    const fresh = await bindLoopback();
    fresh.on('message', (buf) => this.#down.handle(buf));
    const old = this.#back;
    this.#back = fresh;
    await new Promise<void>((r) => old.close(() => r()));
  }

  /** The source port the target currently sees. */
  get targetFacingPort(): number {
    return this.#back.address().port;
  }

  static async start(opts: ImpairmentProxyOptions): Promise<ImpairmentProxy> {
    const [front, back] = await Promise.all([bindLoopback(), bindLoopback()]);
    return new ImpairmentProxy(front, back, opts);
  }

  get port(): number {
    return this.#front.address().port;
  }

  get stats(): { up: DirectionStats; down: DirectionStats } {
    return { up: { ...this.#up.stats }, down: { ...this.#down.stats } };
  }

  /** Changes the impairment of one direction from now on. */
  set(direction: 'up' | 'down', impairment: Impairment): void {
    Object.assign(direction === 'up' ? this.#up.impairment : this.#down.impairment, { loss: 0, duplicate: 0, delayMs: 0, jitterMs: 0 }, impairment);
  }

  async close(): Promise<void> {
    this.#up.close();
    this.#down.close();
    const back = this.#back;
    await Promise.all([new Promise<void>((r) => this.#front.close(() => r())), new Promise<void>((r) => back.close(() => r()))]);
  }
}
