/**
 * The CPU-heavy jobs of snapshots and restores (src/sync/pool.ts): hashing
 * pages, sealing packs (read pages → compress → encrypt), opening packs
 * (decrypt → decompress → verify), writing a pack's runs into a restore.
 * Pages are read here with pread, so multi-MiB buffers never cross threads
 * twice. They run on the pool's worker threads, and on the main thread when
 * the pool lends it a lane.
 */
import { readSync, writeSync } from 'node:fs';
import type { VaultKeys } from '../crypto/kdf.js';
import { openPack, sealPackEncoded } from './manifest.js';
import { compressStream } from '../codec.js';
import { hashPages, PAGE_HASH_BYTES } from './page-hash.js';
import type { Job, JobResult } from './pool.js';

/**
 * One reusable buffer per thread for pages that do not leave the worker
 * (hashing, sealing), READ_BLOCK_BYTES long: a snapshot's memory stays flat
 * however many packs it writes, and small whatever the pack size.
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

/** Bytes of pages read at once: jobs read their pages in blocks of this size into the thread's scratch buffer. */
const READ_BLOCK_BYTES = 1024 * 1024;

/**
 * Reads the pages, in ascending runs of consecutive pages, at most
 * READ_BLOCK_BYTES at a time, into this thread's scratch buffer, and hands
 * each block to `use` with the index (in `pages`) of its first page. The
 * block is a view of the scratch buffer: valid only during the call.
 */
function forEachBlock(fd: number, pageSize: number, pages: Uint32Array, use: (block: Uint8Array, first: number) => void): void {
  const perBlock = Math.max(1, Math.floor(READ_BLOCK_BYTES / pageSize));
  if (scratch.length < perBlock * pageSize) scratch = new Uint8Array(perBlock * pageSize);
  let i = 0;
  while (i < pages.length) {
    // Consecutive pages, up to a block, in one read.
    let j = i + 1;
    while (j < pages.length && j - i < perBlock && pages[j] === pages[j - 1]! + 1) j++;
    const want = (j - i) * pageSize;
    for (let got = 0; got < want; ) {
      const n = readSync(fd, scratch, got, want - got, pages[i]! * pageSize + got);
      if (n === 0) throw new Error(`short read of the database at page ${pages[i]}`);
      got += n;
    }
    use(scratch.subarray(0, want), i);
    i = j;
  }
}

/** Runs one job on this thread; `transfer` lists the buffers a worker hands back without copying. */
export function runJob(keys: VaultKeys, job: Job): { result: JobResult; transfer: ArrayBuffer[] } {
  switch (job.kind) {
    case 'hash': {
      const pages = new Uint32Array(job.pageCount);
      for (let i = 0; i < job.pageCount; i++) pages[i] = job.firstPage + i;
      const hashes = new Uint8Array(job.pageCount * PAGE_HASH_BYTES);
      forEachBlock(job.fd, job.pageSize, pages, (block, first) => hashes.set(hashPages(block, job.pageSize), first * PAGE_HASH_BYTES));
      return { result: { kind: 'hash', hashes }, transfer: [hashes.buffer as ArrayBuffer] };
    }
    case 'seal': {
      // Read, hashed and compressed 1 MiB at a time: the pack's plaintext is never held whole.
      const bytes = job.pages.length * job.pageSize;
      const hashes = new Uint8Array(job.pages.length * PAGE_HASH_BYTES);
      const frame = compressStream(bytes);
      forEachBlock(job.fd, job.pageSize, job.pages, (block, first) => {
        hashes.set(hashPages(block, job.pageSize), first * PAGE_HASH_BYTES);
        frame.write(block);
      });
      const { id, object } = sealPackEncoded(keys, frame.end(), hashes, job.salt, job.pageSize);
      return {
        result: { kind: 'seal', id, object, bytes, hashes },
        transfer: [object.buffer as ArrayBuffer, hashes.buffer as ArrayBuffer],
      };
    }
    case 'restore': {
      const plaintext = openPack(keys, job.id, job.object, job.bytes, job.pageSize, false, restoreBuffer(job.bytes));
      for (let i = 0; i < job.writes.length; i += 3) {
        const [offset, length, position] = [job.writes[i]!, job.writes[i + 1]!, job.writes[i + 2]!];
        if (offset + length > plaintext.length) throw new Error('restore write outside its pack');
        for (let done = 0; done < length; ) {
          done += writeSync(job.fd, plaintext, offset + done, length - done, position + done);
        }
      }
      // Only the pages written: a pack may hold pages the manifest no longer uses.
      const hashes = new Uint8Array((plaintext.length / job.pageSize) * PAGE_HASH_BYTES);
      for (let i = 0; i < job.writes.length; i += 3) {
        const [offset, length] = [job.writes[i]!, job.writes[i + 1]!];
        hashes.set(hashPages(plaintext.subarray(offset, offset + length), job.pageSize), (offset / job.pageSize) * PAGE_HASH_BYTES);
      }
      return { result: { kind: 'restore', hashes }, transfer: [hashes.buffer as ArrayBuffer] };
    }
    case 'open': {
      const plaintext = openPack(keys, job.id, job.object, job.bytes, job.pageSize);
      const hashes = job.withHashes ? hashPages(plaintext, job.pageSize) : new Uint8Array(0);
      return {
        result: { kind: 'open', plaintext, hashes },
        transfer: [plaintext.buffer as ArrayBuffer, hashes.buffer as ArrayBuffer],
      };
    }
  }
}

