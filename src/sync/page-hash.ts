/**
 * The local page index's hash (docs/FORMAT.md §5): HMAC-SHA256 under the
 * local-index key, truncated to 16 bytes, one per page.
 */
import { createHmac } from 'node:crypto';

export const PAGE_HASH_BYTES = 16;

export function hashPages(key: Uint8Array, data: Uint8Array, pageSize: number): Uint8Array {
  const n = Math.floor(data.length / pageSize);
  const out = new Uint8Array(n * PAGE_HASH_BYTES);
  for (let i = 0; i < n; i++) {
    const d = createHmac('sha256', key)
      .update(data.subarray(i * pageSize, (i + 1) * pageSize))
      .digest();
    out.set(d.subarray(0, PAGE_HASH_BYTES), i * PAGE_HASH_BYTES);
  }
  return out;
}
