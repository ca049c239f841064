/**
 * One V8 setting for the agent, which carries bulk bytes: no incremental
 * marking, so V8 collects the old generation in one pause when it reaches its
 * limit instead of running marking cycles back to back during a transfer.
 *
 * Why: an agent moves every byte through fresh Buffers (each socket read is a
 * new 64 KiB ArrayBuffer, each TLS record a 16 KiB one) while its JS heap stays
 * at ~20 MB. V8 frees those buffers in scavenges, which it runs after every
 * 32 MB of them, but it also counts them against its global memory limit,
 * which for a 20 MB heap is reached first: V8 then starts a major marking
 * cycle, which frees nothing of the kind, and starts the next one as soon as
 * that ends. Traced in both agents of a bulk SOCKS transfer (--trace-gc): 5–33
 * mark-compacts per agent in 6 s, concurrent-marking threads taking 20–30 % of
 * their CPU and final pauses of 5–65 ms each, in whichever agent fell into it
 * (it comes and goes from run to run with the machine's load). With marking
 * off the old generation never reached its limit during a transfer: no major
 * collection at all, and both agents used 2.2–4 instead of 5–9 ms of CPU per MB
 * (bench/README.md "Bulk through the agents", every run). The price is that
 * when the old generation does fill (many connections opening at once) V8
 * marks it in one pause, about as long as the final pause of an incremental
 * cycle, once, instead of many short steps.
 *
 * Tried and not better, each in runs of its own: starting incremental
 * marking only at the hard limit (--no-incremental-marking-task), soft/hard
 * triggers at 70/90 % of the limit, a fixed young generation
 * (--semi-space-growth-factor=1), a doubled heap growing factor. A larger
 * young generation (--max-semi-space-size=64) helped as much but cannot be set
 * from inside the process (V8 sizes the heap before any JavaScript runs).
 *
 * v8.setFlagsFromString is Node's public API for this; V8 reads this flag
 * each time it decides how to collect, so setting it at startup takes effect.
 * VERTEX_GC_TUNING=0 leaves V8's defaults (for A/B measurement).
 * test/unit/cli/gc-tuning.test.ts fails if a Node upgrade no longer knows the flag.
 */
import * as v8 from 'node:v8';

export const GC_TUNING_FLAGS = ['--no-incremental-marking'] as const;

/** Applies GC_TUNING_FLAGS, unless VERTEX_GC_TUNING=0. */
export function tuneGcForBulk(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.VERTEX_GC_TUNING === '0') return false;
  for (const flag of GC_TUNING_FLAGS) v8.setFlagsFromString(flag);
  return true;
}
