/**
 * The CPU-heavy jobs of snapshots and restores (src/snapshots/pool.ts): hashing
 * pages, sealing packs (read pages → compress → encrypt), opening packs
 * (decrypt → decompress → verify).
 * Pages are read here with pread, so multi-MiB buffers never cross threads
 * twice. They run on the pool's worker threads, and on the main thread when
 * the pool lends it a lane.
 */
import { readSync } from 'node:fs';
import type { VaultKeys } from '../crypto/kdf.js';
import { openPack, sealPackEncoded } from './manifest.js';
import { compressStream } from '../codec.js';
import { hashPages, hashPagesInto, PAGE_HASH_BYTES } from './page-hash.js';
import type { Job, JobResult } from './pool.js';

/**
 * One reusable buffer per thread for pages that do not leave the worker
 * (hashing, sealing), READ_BLOCK_BYTES long: a snapshot's memory stays flat
 * however many packs it writes, and small whatever the pack size.
 */
let scratch = new Uint8Array(0);

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
      forEachBlock(job.fd, job.pageSize, pages, (block, first) => hashPagesInto(block, job.pageSize, hashes, first * PAGE_HASH_BYTES));
      return { result: { kind: 'hash', hashes }, transfer: [hashes.buffer as ArrayBuffer] };
    }
    case 'seal': {
      // Read, hashed and compressed 1 MiB at a time: the pack's plaintext is never held whole.
      const bytes = job.pages.length * job.pageSize;
      const hashes = new Uint8Array(job.pages.length * PAGE_HASH_BYTES);
      const frame = compressStream(bytes);
      forEachBlock(job.fd, job.pageSize, job.pages, (block, first) => {
        hashPagesInto(block, job.pageSize, hashes, first * PAGE_HASH_BYTES);
        frame.write(block);
      });
      const { id, object } = sealPackEncoded(keys, frame.end(), hashes, job.salt, job.pageSize, job.into);
      return {
        result: { kind: 'seal', id, object, bytes, hashes },
        transfer: [object.buffer as ArrayBuffer, hashes.buffer as ArrayBuffer],
      };
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

