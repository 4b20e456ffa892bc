/**
 * Positioned writes into one file on a thread of their own, for a restore:
 * the main thread fills a window buffer (decrypt, decompress, hash), hands it
 * over with the slices to write where, and fills the next one while the
 * writer thread copies the last into the page cache.
 *
 * Why not write on the main thread: on the VMs measured here, the first touch
 * of a page-cache page costs a host fault, ~2.5 s per GiB written (`dd` of
 * 1 GiB: 2.4 s into fresh memory, 0.23 s into pages a deleted file just
 * freed), which `writeSync` adds to the main thread's own ~2 s of work. Why
 * not libuv's pool: a restore's runs are short (61,000 slices for the bench's
 * 1 GiB week), and a round trip through the pool per slice cost more than
 * the write (9–12 s instead of 5). Why one thread: buffered writes to one
 * file take its inode lock, and a second writer spins on it, burning the
 * core the main thread needs.
 *
 * The thread starts with the writer, before the file is known (a restore
 * makes it first thing, so its ~25 ms start overlaps the manifest's
 * download); `attach` names the file.
 *
 * Windows cycle: `acquire` gives a free one (waiting while all are with the
 * writer), `submit` sends it (transferred, not copied), and it comes back
 * once its slices are written. Memory: `count` windows and the thread's small
 * heap (~10 MB), whatever the file size.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { holdYoungGeneration } from '../gc.js';

/** A slice of a window: [offset in the window, length, position in the file]. */
export type Slice = readonly [offset: number, length: number, position: number];

/** The writer holds no more than a few windows and their slice lists. */
const WRITER_LIMITS = { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 16 };

function writerFile(): string {
  const here = fileURLToPath(import.meta.url);
  // Under the test runner this module is TypeScript source; the thread always runs the compiled file.
  if (here.endsWith('.ts')) return join(dirname(here), '..', '..', 'dist', 'sync', 'writer-worker.js');
  return join(dirname(here), 'writer-worker.js');
}

/** Why the writer failed: the errno code survives the thread boundary (ENOSPC is the user's to fix). */
export class WriteError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
    this.name = 'WriteError';
  }
}

export class FileWriter {
  /** The writer thread (readonly; exposed for tests that wait for it to be online). */
  readonly worker: Worker;
  private readonly free: Uint8Array[] = [];
  private readonly waiters: { resolve: (b: Uint8Array) => void; reject: (e: Error) => void }[] = [];
  /** Windows with the writer. */
  private out = 0;
  /** Callers of flush/settle waiting for every window to come back. */
  private readonly drained: (() => void)[] = [];
  private failure: Error | undefined;
  private closed = false;

  private attached = false;

  constructor(windowBytes: number, count: number) {
    for (let i = 0; i < count; i++) this.free.push(new Uint8Array(windowBytes));
    this.worker = new Worker(writerFile(), { resourceLimits: WRITER_LIMITS });
    this.worker.unref();
    // A worker's start resets V8's flags (see holdYoungGeneration).
    this.worker.once('online', holdYoungGeneration);
    this.worker.on('message', (msg: { buffer: ArrayBuffer; error?: { code?: string; message: string } }) => {
      this.out--;
      if (msg.error) this.fail(new WriteError(msg.error.message, msg.error.code));
      this.release(new Uint8Array(msg.buffer));
      if (this.out === 0) for (const d of this.drained.splice(0)) d();
    });
    this.worker.on('error', (err) => {
      // The thread died (out of memory, say): its windows never come back.
      this.fail(err);
      this.out = 0;
      for (const d of this.drained.splice(0)) d();
    });
  }

  /** The file every later slice is written to (a descriptor open for writing; it must stay open until close()). */
  attach(fd: number): void {
    if (this.attached) throw new Error('the writer already has a file');
    this.attached = true;
    this.worker.postMessage({ fd });
  }

  /** A free window (its old contents are garbage); waits while all are with the writer. Rejects after a write failed. */
  acquire(): Promise<Uint8Array> {
    if (this.failure) return Promise.reject(this.failure);
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    // A write failure while waiting rejects every waiter (see fail()).
    return new Promise<Uint8Array>((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Sends `slices` of `buffer` (from acquire) to be written, in order after everything sent before. */
  submit(buffer: Uint8Array, slices: Slice[]): void {
    if (this.failure) throw this.failure;
    if (this.closed) throw new Error('the writer is closed');
    if (!this.attached) throw new Error('the writer has no file');
    const list = new Float64Array(slices.length * 3);
    slices.forEach(([offset, length, position], k) => {
      if (!(offset >= 0 && length > 0 && offset + length <= buffer.length && position >= 0)) throw new RangeError('slice outside its window');
      list.set([offset, length, position], k * 3);
    });
    if (slices.length === 0) {
      this.release(buffer);
      return;
    }
    this.out++;
    this.worker.postMessage({ buffer: buffer.buffer, slices: list }, [buffer.buffer as ArrayBuffer]);
  }

  /** Resolves once everything sent is written; rejects with the first write failure. */
  async flush(): Promise<void> {
    await this.drain();
    if (this.failure) throw this.failure;
  }

  /** Waits for every window to come back (written or not), then stops the thread: after this, nothing writes to the fd. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    await this.drain();
    await (this.stopped ??= this.worker.terminate());
  }

  private stopped: Promise<number> | undefined;

  private drain(): Promise<void> {
    if (this.out === 0) return Promise.resolve();
    return new Promise<void>((resolve) => this.drained.push(resolve));
  }

  private release(buffer: Uint8Array): void {
    const w = this.waiters.shift();
    if (w) w.resolve(buffer);
    else this.free.push(buffer);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiters.splice(0)) w.reject(this.failure);
  }
}
