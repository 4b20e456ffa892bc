/**
 * Page hashes (docs/FORMAT.md §5): SHA-256 of each page, and the database
 * digest — SHA-256 over the concatenated page hashes in page order. The
 * digest binds every byte of every page, their order and their count, like a
 * SHA-256 of the whole file, but the page hashes are computed in parallel on
 * the worker pool (a whole-file SHA-256 is one sequential pass: ~0.8 s per
 * GiB here, more than everything else a snapshot does to an unchanged file).
 */
import { createHash, hash } from 'node:crypto';

export const PAGE_HASH_BYTES = 32;

/** SHA-256 of each whole page of `data` (one-shot hashing: no per-page object). */
export function hashPages(data: Uint8Array, pageSize: number): Uint8Array {
  const n = Math.floor(data.length / pageSize);
  const out = new Uint8Array(n * PAGE_HASH_BYTES);
  for (let i = 0; i < n; i++) {
    out.set(hash('sha256', data.subarray(i * pageSize, (i + 1) * pageSize), 'buffer'), i * PAGE_HASH_BYTES);
  }
  return out;
}

/** The database digest: SHA-256 over the page hashes, in page order. */
export function pagesDigest(hashes: Uint8Array): string {
  return createHash('sha256').update(hashes).digest('hex');
}
