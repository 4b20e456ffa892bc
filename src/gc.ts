/**
 * Explicit garbage collection for the worker pool's threads: each job leaves
 * a few multi-MiB buffers that V8 collects late. `--expose-gc` is set at run
 * time and the function read from a fresh context, as V8 exposes it there.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('typeof gc === "function" ? gc : undefined') as ((o?: { type: 'minor' | 'major' }) => void) | undefined;

/** A full collection: cheap on a worker's small heap. */
export function collectGarbage(): void {
  gc?.();
}

/**
 * A young-generation collection (about a millisecond): frees the large
 * buffers a job just dropped. They live outside V8's heap, so they hardly
 * fill the young generation and would otherwise wait for V8's external
 * memory limit (tens of MB) to be reclaimed.
 */
export function collectYoung(): void {
  gc?.({ type: 'minor' });
}

/**
 * Keeps the main thread's young generation at its first size (1 MiB
 * semi-spaces) instead of letting V8 grow it to 16 MiB ones: casa's garbage
 * is a few large buffers per pack, outside V8's heap, so a larger young
 * generation only adds resident memory (measured on a 1 GiB restore: 28 MB
 * of heap instead of 45, and no slower). `--max-semi-space-size` is read once,
 * when the heap is made; the growth factor is read whenever new space would
 * grow, so it can be set at run time (bin/casa does, first thing). Starting a
 * worker thread puts V8's flags back to their defaults, so the worker pool
 * calls this again once each worker is online.
 */
export function holdYoungGeneration(): void {
  setFlagsFromString('--semi-space-growth-factor=1');
}
