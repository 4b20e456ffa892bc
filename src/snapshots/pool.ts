/**
 * A small pool of worker threads (one per core, at most 4) for the CPU-heavy
 * work of snapshots and restores (src/snapshots/pool-worker.ts), so compression,
 * encryption and hashing use every core while the main thread does I/O.
 * Jobs are queued; results come back with their buffers transferred.
 * Errors keep their class name and `reason`, so integrity failures in a
 * worker are still reported as integrity failures.
 */
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { VaultKeys } from '../crypto/kdf.js';
import { AuthenticationError, ObjectFormatError, WrongKeyError } from '../crypto/objects.js';
import { ManifestError } from './manifest.js';
import { runJob } from './pool-jobs.js';
import { collectYoung, holdYoungGeneration } from '../gc.js';

export type Job =
  /** Reads pages with pread from `fd` (fds are process-wide: a DbSource's) and hashes them. */
  | { kind: 'hash'; fd: number; pageSize: number; firstPage: number; pageCount: number }
  /**
   * Reads the pages from `fd`, hashes them (the pack id is made from the
   * hashes) and seals them into a pack: into `into` when it is long enough
   * (a buffer an earlier seal returned, handed back for reuse), the result
   * then being a view of it.
   */
  | { kind: 'seal'; fd: number; pageSize: number; pages: Uint32Array; salt: Uint8Array; into?: Uint8Array }
  | { kind: 'open'; id: string; object: Uint8Array; bytes: number; pageSize: number; withHashes: boolean };

export type JobResult =
  | { kind: 'hash'; hashes: Uint8Array }
  | { kind: 'seal'; id: string; object: Uint8Array; bytes: number; hashes: Uint8Array }
  | { kind: 'open'; plaintext: Uint8Array; hashes: Uint8Array };

type ResultOf<K extends Job['kind']> = Extract<JobResult, { kind: K }>;

/**
 * A small young generation: the workers' garbage is a few large buffers per
 * job (collected explicitly after each), so V8's default 16 MiB semi-spaces
 * per thread only cost resident memory (measured: ~16 MB less per snapshot).
 */
const WORKER_LIMITS = { maxYoungGenerationSizeMb: 2 };

function workerFile(): string {
  const here = fileURLToPath(import.meta.url);
  // Under the test runner this module is TypeScript source; workers always run the compiled file.
  if (here.endsWith('.ts')) return join(dirname(here), '..', '..', 'dist', 'snapshots', 'pool-worker.js');
  return join(dirname(here), 'pool-worker.js');
}

function rebuildError(e: { name: string; message: string; reason?: string }): Error {
  switch (e.name) {
    case 'AuthenticationError':
      return new AuthenticationError();
    case 'WrongKeyError':
      return new WrongKeyError();
    case 'ObjectFormatError':
      return new ObjectFormatError((e.reason ?? 'truncated_body') as never);
    case 'ManifestError':
      return new ManifestError(e.reason ?? e.message);
    default:
      return new Error(e.message);
  }
}

interface Pending {
  resolve: (r: JobResult) => void;
  reject: (e: Error) => void;
}

export class WorkerPool {
  private workers: Worker[] = [];
  private idle: Worker[] = [];
  private queue: { id: number; job: Job; transfer: ArrayBuffer[] }[] = [];
  private pending = new Map<number, Pending>();
  private busy = new Map<Worker, number>();
  private nextId = 1;
  private closed = false;
  private mainBusy = false;
  private readonly mainLane: boolean;

  /**
   * `size` worker threads; with `mainLane`, the main thread also takes a job
   * when every worker is busy (it blocks the event loop for one job, tens of
   * milliseconds; network I/O waits in the kernel meanwhile). On the 2-vCPU
   * machines measured here one worker plus the main thread is as fast as two
   * workers, for ~25 MB less memory (a thread's heap and buffers).
   */
  constructor(
    private readonly keys: VaultKeys,
    size = Math.min(4, Math.max(1, availableParallelism())),
    opts: { mainLane?: boolean } = {},
  ) {
    this.mainLane = opts.mainLane === true;
    for (let i = 0; i < size; i++) {
      const w = new Worker(workerFile(), { workerData: { keys }, resourceLimits: WORKER_LIMITS });
      // A worker's start resets V8's flags (see holdYoungGeneration).
      w.once('online', holdYoungGeneration);
      w.on('message', (msg: { id: number; result?: JobResult; error?: { name: string; message: string; reason?: string } }) => {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        this.busy.delete(w);
        this.idle.push(w);
        this.pump();
        if (!p) return;
        if (msg.error) p.reject(rebuildError(msg.error));
        else p.resolve(msg.result!);
      });
      w.on('error', (err) => {
        const id = this.busy.get(w);
        if (id !== undefined) this.pending.get(id)?.reject(err);
      });
      this.workers.push(w);
      this.idle.push(w);
    }
  }

  /** How many jobs run at once: the workers, plus the main thread's lane. */
  get size(): number {
    return this.workers.length + (this.mainLane ? 1 : 0);
  }

  run<J extends Job>(job: J, transfer: ArrayBuffer[] = []): Promise<ResultOf<J['kind']>> {
    if (this.closed) return Promise.reject(new Error('worker pool is closed'));
    const id = this.nextId++;
    return new Promise<JobResult>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.queue.push({ id, job, transfer });
      this.pump();
    }) as Promise<ResultOf<J['kind']>>;
  }

  private pump(): void {
    while (this.idle.length > 0 && this.queue.length > 0) {
      const w = this.idle.pop()!;
      const { id, job, transfer } = this.queue.shift()!;
      this.busy.set(w, id);
      w.postMessage({ id, job }, transfer);
    }
    if (this.mainLane && !this.mainBusy && this.queue.length > 0) {
      const { id, job } = this.queue.shift()!;
      this.mainBusy = true;
      // On a later turn, so the caller's own work (queuing more jobs, reading answers) goes first.
      setImmediate(() => {
        const p = this.pending.get(id);
        this.pending.delete(id);
        try {
          const { result } = runJob(this.keys, job);
          if (job.kind !== 'hash') collectYoung();
          p?.resolve(result);
        } catch (err) {
          p?.reject(err as Error);
        } finally {
          this.mainBusy = false;
          if (!this.closed) this.pump();
        }
      });
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const [, p] of this.pending) p.reject(new Error('worker pool closed'));
    this.pending.clear();
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
