/**
 * One change (docs/MERGE.md §4-§6): what the change log yields
 * (change-log.ts `takeLocalChanges`), the change encoding carries
 * (change-codec.ts) and merge applies (merge.ts `applyRemote`); the
 * vocabulary those modules share.
 *
 * Invariants:
 * - A value is an SQLite value as stored, nothing lost: INTEGER a bigint
 *   (all 64 bits), REAL a number, TEXT a string, BLOB a plain Uint8Array
 *   (toBytes: a copy, never the Buffer better-sqlite3 reads a blob as).
 * - A change's `pk` is canonical pk text (pk-text.ts); the changes of one row
 *   write share its `hlc`.
 * - Received bytes that are not exactly what casa makes (a batch body, a pk)
 *   are a ChangeFormatError, an integrity error: refused, never guessed at.
 */
import { IntegrityError } from '../errors.js';

/** An SQLite value: number is REAL, bigint is INTEGER (64-bit), string TEXT, Uint8Array BLOB. */
export type SqlValue = null | number | bigint | string | Uint8Array;

/**
 * One change: op 'i' (row inserted or set element added; one per column of
 * the new row, or one with col null for a set), 'u' (field updated), 'd'
 * (row deleted or element removed; col null). `pk` is the canonical pk text
 * (encodePk); `hlc` the write's HLC, shared by the changes of one row write.
 */
export interface Change {
  tbl: string;
  pk: string;
  col: string | null;
  op: 'i' | 'u' | 'd';
  val: SqlValue;
  hlc: string;
  /**
   * What the writer had seen when it wrote (causal.ts: a vector, shared by
   * the changes of one stamping pass); absent when it had seen no other
   * device's write, or the batch predates vectors (docs/MERGE.md §5a).
   */
  seen?: string[];
}

/** A changeset body (or a pk) that is not exactly what encodeChanges (encodePk) makes. */
export class ChangeFormatError extends IntegrityError {
  constructor(message: string) {
    super(`malformed changes: ${message}`);
  }
}

/** A value as better-sqlite3 read it, a blob as a plain Uint8Array (better-sqlite3 gives a Buffer). */
export const toBytes = (v: SqlValue): SqlValue => (v instanceof Uint8Array && !(v.constructor === Uint8Array) ? new Uint8Array(v) : v);
