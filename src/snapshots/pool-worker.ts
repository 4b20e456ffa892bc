/**
 * A worker thread of src/snapshots/pool.ts: runs the jobs of pool-jobs.ts it is
 * sent, and collects garbage after each that allocated large buffers.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { VaultKeys } from '../crypto/kdf.js';
import type { Job } from './pool.js';
import { runJob } from './pool-jobs.js';
import { collectGarbage } from '../gc.js';

const keys = (workerData as { keys: VaultKeys }).keys;

// Every job but hashing leaves several MiB of garbage buffers (ciphertext,
// compressed and plain bytes) that V8 would let pile up to tens of MiB per
// thread before collecting; collecting after each keeps the process's memory
// flat. A full GC of this small heap costs about a millisecond.

parentPort!.on('message', (msg: { id: number; job: Job }) => {
  try {
    const { result, transfer } = runJob(keys, msg.job);
    parentPort!.postMessage({ id: msg.id, result }, transfer);
  } catch (err) {
    const e = err as Error;
    parentPort!.postMessage({ id: msg.id, error: { name: e.name, message: e.message, reason: (e as { reason?: string }).reason } });
  }
  // Hash jobs allocate almost nothing beyond the reused scratch buffer: collecting after them only costs time.
  if (msg.job.kind !== 'hash') collectGarbage();
});
