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
import { openPack, openPackReader, sealPackEncoded } from './manifest.js';
import { compressStream } from '../codec.js';
import { hashPages, PAGE_HASH_BYTES } from './page-hash.js';
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
 * A restore's pack plaintext never leaves the thread and is never whole: it
 * is decompressed through one window of this size per thread (a multiple of
 * any page size), written and hashed window by window.
 */
const RESTORE_WINDOW_BYTES = 1024 * 1024;
let restoreWindow = new Uint8Array(0);

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
      const { id, object } = sealPackEncoded(keys, frame.end(), hashes, job.salt, job.pageSize, job.into);
      return {
        result: { kind: 'seal', id, object, bytes, hashes },
        transfer: [object.buffer as ArrayBuffer, hashes.buffer as ArrayBuffer],
      };
    }
    case 'restore': {
      const { writes, pageSize, bytes } = job;
      for (let i = 0; i < writes.length; i += 3) {
        if (writes[i]! % pageSize !== 0 || writes[i + 1]! % pageSize !== 0 || writes[i]! + writes[i + 1]! > bytes) {
          throw new Error('restore write outside its pack');
        }
      }
      const reader = openPackReader(keys, job.id, job.object, bytes);
      const span = Math.max(pageSize, Math.floor(RESTORE_WINDOW_BYTES / pageSize) * pageSize);
      if (restoreWindow.length < span) restoreWindow = new Uint8Array(span);
      // Only the pages written are hashed: a pack may hold pages the manifest no longer uses.
      const hashes = new Uint8Array((bytes / pageSize) * PAGE_HASH_BYTES);
      for (let at = 0; at < bytes; ) {
        const win = restoreWindow.subarray(0, Math.min(span, bytes - at));
        reader.read(win); // fills the window, or throws (the pack is shorter than its size)
        const end = at + win.length;
        for (let i = 0; i < writes.length; i += 3) {
          // The part of the run [offset, offset + length) inside this window.
          const from = Math.max(writes[i]!, at);
          const to = Math.min(writes[i]! + writes[i + 1]!, end);
          if (from >= to) continue;
          const piece = win.subarray(from - at, to - at);
          const position = writes[i + 2]! + (from - writes[i]!);
          for (let done = 0; done < piece.length; ) done += writeSync(job.fd, piece, done, piece.length - done, position + done);
          hashes.set(hashPages(piece, pageSize), (from / pageSize) * PAGE_HASH_BYTES);
        }
        at = end;
      }
      reader.end(); // nothing left over
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

