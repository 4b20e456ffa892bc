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
