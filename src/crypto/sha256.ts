/**
 * SHA-256 as lowercase hex: the hash a sealed upload is named and checked by
 * (the relay's `X-Casa-Sha256`, docs/RELAY-API.md) and the hash that chains a
 * device's changeset batches (docs/FORMAT.md §7). Pure: bytes in, text out.
 */
import { createHash } from 'node:crypto';

/** Lowercase hex SHA-256 of `bytes` (64 characters). */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
