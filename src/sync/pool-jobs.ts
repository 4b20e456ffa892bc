/**
 * The CPU-heavy jobs of snapshots and restores (src/sync/pool.ts): hashing
 * pages, sealing packs (read pages → compress → encrypt), opening packs
 * (decrypt → decompress → verify), writing a pack's runs into a restore.
 * Pages are read here with pread, so multi-MiB buffers never cross threads
 * twice. They run on the pool's worker threads, and on the main thread when
 * the pool lends it a lane.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import type { VaultKeys } from '../crypto/kdf.js';
import { openPack, sealPack } from './manifest.js';
import { hashPages } from './page-hash.js';
import type { Job, JobResult } from './pool.js';

/**
 * One reusable buffer per thread for pages that do not leave the worker
 * (hashing, sealing): a snapshot's memory stays flat however many packs it writes.
 */
let scratch = new Uint8Array(0);

/**
 * A restore's pack plaintext never leaves the thread (its runs are written
 * to the file here): one reused buffer per thread instead of 8 MiB of
 * garbage per pack — which on the main thread's lane, collected only when V8
 * decides, added tens of MB to a restore's peak memory.
 */
let restoreScratch = new Uint8Array(0);
function restoreBuffer(bytes: number): Uint8Array {
  if (restoreScratch.length <= bytes) restoreScratch = new Uint8Array(bytes + 1);
  return restoreScratch;
}

function readPages(path: string, pageSize: number, pages: Uint32Array, reuse = false): Uint8Array {
  const total = pages.length * pageSize;
  let out: Uint8Array;
  if (reuse) {
    if (scratch.length < total) scratch = new Uint8Array(total);
    out = scratch.subarray(0, total);
  } else {
    out = new Uint8Array(total);
  }
  const fd = openSync(path, 'r');
  try {
    let i = 0;
    while (i < pages.length) {
      // Read consecutive pages in one call.
      let j = i + 1;
      while (j < pages.length && pages[j] === pages[j - 1]! + 1) j++;
      const want = (j - i) * pageSize;
      const got = readSync(fd, out, i * pageSize, want, pages[i]! * pageSize);
      if (got !== want) throw new Error(`short read of ${path} at page ${pages[i]}`);
      i = j;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** Runs one job on this thread; `transfer` lists the buffers a worker hands back without copying. */
export function runJob(keys: VaultKeys, job: Job): { result: JobResult; transfer: ArrayBuffer[] } {
  switch (job.kind) {
    case 'hash': {
      const pages = new Uint32Array(job.pageCount);
      for (let i = 0; i < job.pageCount; i++) pages[i] = job.firstPage + i;
      const data = readPages(job.path, job.pageSize, pages, true);
      const hashes = hashPages(data, job.pageSize);
      return { result: { kind: 'hash', hashes }, transfer: [hashes.buffer as ArrayBuffer] };
    }
    case 'seal': {
      const plaintext = readPages(job.path, job.pageSize, job.pages, true);
      const hashes = job.withHashes === false ? new Uint8Array(0) : hashPages(plaintext, job.pageSize);
      const { id, object } = sealPack(keys, plaintext, job.salt);
      return {
        result: { kind: 'seal', id, object, bytes: plaintext.length, hashes },
        transfer: [object.buffer as ArrayBuffer, hashes.buffer as ArrayBuffer],
      };
    }
    case 'restore': {
      const plaintext = openPack(keys, job.id, job.object, job.bytes, false, restoreBuffer(job.bytes));
      for (let i = 0; i < job.writes.length; i += 3) {
        const [offset, length, position] = [job.writes[i]!, job.writes[i + 1]!, job.writes[i + 2]!];
        if (offset + length > plaintext.length) throw new Error('restore write outside its pack');
        for (let done = 0; done < length; ) {
          done += writeSync(job.fd, plaintext, offset + done, length - done, position + done);
        }
      }
      const hashes = hashPages(plaintext, job.pageSize);
      return { result: { kind: 'restore', hashes }, transfer: [hashes.buffer as ArrayBuffer] };
    }
    case 'open': {
      const plaintext = openPack(keys, job.id, job.object, job.bytes);
      const hashes = job.withHashes ? hashPages(plaintext, job.pageSize) : new Uint8Array(0);
      return {
        result: { kind: 'open', plaintext, hashes },
        transfer: [plaintext.buffer as ArrayBuffer, hashes.buffer as ArrayBuffer],
      };
    }
  }
}

