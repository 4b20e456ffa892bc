/**
 * The device's local page index (docs/FORMAT.md §5, "Local page index"): for
 * one database, the manifest of the last snapshot this device committed or
 * restored, and the SHA-256 of every page as it was then. A snapshot
 * uploads only pages whose hash changed; `casa pull` uses it to tell whether
 * the database changed locally since. A missing or damaged index is never an
 * error: it only costs a full upload.
 *
 * Page hashes of a known database would let whoever reads CASA_HOME confirm
 * guesses about its content, so the file is sealed like any casa object
 * (type 6, under the local-index key): nothing in it is readable, or
 * silently changeable, without the phrase.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { VaultKeys } from '../crypto/kdf.js';
import { writeFileAtomicWith } from '../state.js';
import { collectGarbage } from '../gc.js';
import { validateManifest, type Manifest } from './manifest.js';
import { PAGE_HASH_BYTES } from './page-hash.js';
import { ObjectType, openObject, sealObjectParts } from '../crypto/objects.js';
import { isPackId } from '../protocol/ids.js';

/** The most a sealed index may decrypt to: a 64 GiB database of 4 KiB pages, plus its manifest. */
const MAX_INDEX_BYTES = 1 << 30;

export interface PageIndex {
  /** The snapshot the database matched when the index was written. */
  manifest: Manifest;
  /** pageCount × 32 bytes: each page's SHA-256. */
  hashes: Uint8Array;
  source: 'snapshot' | 'restore';
  updatedAt: number;
  /**
   * Size and mtime of the database and its -wal when the database matched
   * the manifest (taken before the copy): `casa status` compares them to say
   * cheaply whether the database changed since, without reading it.
   */
  dbStat?: DbStat;
  /**
   * Stored (ciphertext) size of each pack the manifest names, where known:
   * `casa snapshot` reports the snapshot's stored bytes without asking the relay.
   */
  packSizes?: Record<string, number>;
}

export interface DbStat {
  size: number;
  mtimeMs: number;
  walSize: number;
  walMtimeMs: number;
}

/** Size and mtime of a database and its -wal (zeros for a missing file). */
export function statDatabase(dbPath: string): DbStat {
  const st = (p: string) => {
    try {
      const s = statSync(p);
      return { size: s.size, mtimeMs: Math.floor(s.mtimeMs) };
    } catch {
      return { size: 0, mtimeMs: 0 };
    }
  };
  const db = st(dbPath);
  const wal = st(`${dbPath}-wal`);
  return { size: db.size, mtimeMs: db.mtimeMs, walSize: wal.size, walMtimeMs: wal.mtimeMs };
}

export function sameStat(a: DbStat, b: DbStat): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.walSize === b.walSize && a.walMtimeMs === b.walMtimeMs;
}

function dbKey(keys: VaultKeys, dbPath: string): string {
  return createHmac('sha256', keys.localIndexKey).update(dbPath, 'utf8').digest('hex').slice(0, 16);
}

export function indexPath(home: string, keys: VaultKeys, dbPath: string): string {
  return join(home, 'index', keys.vaultId, `${dbKey(keys, dbPath)}.idx`);
}

function sealing(keys: VaultKeys, dbPath: string) {
  return {
    type: ObjectType.localIndex,
    keyId: keys.keyId,
    purposeKey: keys.localIndexKey,
    vaultId: keys.vaultId,
    identity: `local-index:${dbKey(keys, dbPath)}`,
  };
}

export function readIndex(home: string, keys: VaultKeys, dbPath: string): PageIndex | null {
  let buf: Buffer;
  try {
    buf = readFileSync(indexPath(home, keys, dbPath));
  } catch {
    return null;
  }
  try {
    // In place: the file's buffer becomes the plaintext (no second copy of the hashes).
    const plain = openObject({ ...sealing(keys, dbPath), object: buf, maxPlaintext: MAX_INDEX_BYTES, inPlace: true });
    buf = Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength); // a view, not a copy
    const jsonLen = buf.readUInt32BE(0);
    const meta = JSON.parse(buf.subarray(4, 4 + jsonLen).toString('utf8')) as Omit<PageIndex, 'hashes'>;
    validateManifest(meta.manifest);
    if (meta.manifest.vaultId !== keys.vaultId) return null;
    const hashes = new Uint8Array(buf.buffer, buf.byteOffset + 4 + jsonLen, buf.length - 4 - jsonLen); // a view
    if (hashes.length !== meta.manifest.pageCount * PAGE_HASH_BYTES) return null;
    if (meta.source !== 'snapshot' && meta.source !== 'restore') return null;
    const packSizes = validPackSizes(meta.packSizes);
    return {
      manifest: meta.manifest,
      hashes,
      source: meta.source,
      updatedAt: meta.updatedAt,
      ...(meta.dbStat ? { dbStat: meta.dbStat } : {}),
      ...(packSizes ? { packSizes } : {}),
    };
  } catch {
    return null;
  }
}

export function writeIndex(home: string, keys: VaultKeys, dbPath: string, idx: PageIndex): void {
  // The last large allocation of a snapshot or restore: what the work before left for V8 to collect
  // goes first (one full collection of a small heap, milliseconds), so the two do not add up.
  collectGarbage();
  const dbStat = idx.dbStat ?? statDatabase(dbPath);
  const json = Buffer.from(
    JSON.stringify({ manifest: idx.manifest, source: idx.source, updatedAt: idx.updatedAt, dbStat, packSizes: idx.packSizes }),
    'utf8',
  );
  const head = Buffer.alloc(4);
  head.writeUInt32BE(json.length, 0);
  // Sealed piece by piece straight into the file: the hashes (8 MiB per GiB of database) are never copied.
  writeFileAtomicWith(indexPath(home, keys, dbPath), 0o600, (fd) =>
    sealObjectParts({ ...sealing(keys, dbPath), parts: [head, json, idx.hashes], salt: new Uint8Array(randomBytes(32)) }, (bytes) => {
      for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done);
    }),
  );
}

function validPackSizes(v: unknown): Record<string, number> | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const out: Record<string, number> = {};
  for (const [id, n] of Object.entries(v)) {
    if (isPackId(id) && typeof n === 'number' && Number.isSafeInteger(n) && n > 0) out[id] = n;
  }
  return out;
}
