/**
 * Snapshot manifests and packs (docs/FORMAT.md §5): pure encoding, strict
 * validation and sealing. No I/O: the snapshot and restore code feed bytes in.
 *
 * Invariants a decoded manifest satisfies (anything else is a ManifestError,
 * which callers report as an integrity failure):
 * - it is the manifest it was fetched as (vault id, snapshot id, seq), so the
 *   relay cannot swap or move one;
 * - `runs` are sorted quadruples covering pages 0 … pageCount−1 exactly once,
 *   each slice inside its pack's plaintext and page-aligned.
 */
import { createHmac } from 'node:crypto';
import { bytesToUtf8, concatBytes, utf8ToBytes } from '../crypto/bytes.js';
import type { VaultKeys } from '../crypto/kdf.js';
import { EpochMarkError, keysFor, markOf } from '../crypto/keyring.js';
import { ObjectType, openObject, openObjectReader, sealEncoded, type OpenParams } from '../crypto/objects.js';
import { Codec, compress, compressStream, type DecompressReader } from '../codec.js';
import { isDeviceId, isPackId, isSha256Hex, isSnapshotId, isVaultId } from '../protocol/ids.js';
import { hashPages, PAGE_HASH_BYTES } from './page-hash.js';

export const MANIFEST_FORMAT = 1;
/** A writer closes a pack when the next page would take it past this. */
export const PACK_TARGET_BYTES = 8 * 1024 * 1024;
/** Readers refuse larger pack plaintexts (a writer never makes one over the target + one page). */
export const PACK_MAX_BYTES = 16 * 1024 * 1024;
/** Readers refuse larger manifest plaintexts: ~1.3 M runs, far beyond a 1 GiB database's 262,144 pages. */
export const MANIFEST_MAX_BYTES = 64 * 1024 * 1024;

export interface PackRef {
  id: string;
  /** Plaintext size of the pack. */
  bytes: number;
}

export interface Manifest {
  format: 1;
  vaultId: string;
  snapshotId: string;
  seq: number;
  parentId: string | null;
  parentSeq: number;
  deviceId: string;
  time: number;
  pageSize: number;
  pageCount: number;
  dbBytes: number;
  /** The database digest: SHA-256 over the pages' SHA-256s in page order (FORMAT.md §5). */
  pagesSha256: string;
  schemaVersion: number;
  userVersion: number;
  changesetWatermark: number;
  packs: PackRef[];
  /** Flat quadruples: firstPage, pageCount, packIndex, byteOffset. */
  runs: number[];
}

export interface ManifestIdentity {
  vaultId: string;
  snapshotId: string;
  seq: number;
}

export class ManifestError extends Error {
  constructor(readonly reason: string) {
    super(`invalid manifest: ${reason}`);
    this.name = 'ManifestError';
  }
}

function manifestIdentity(m: ManifestIdentity): string {
  return `manifest:${m.snapshotId}:${m.seq}`;
}

function packIdentity(packId: string): string {
  return `pack:${packId}`;
}

/**
 * The pack id (FORMAT.md §5): a keyed hash of the pack's page hashes — the
 * SHA-256 of each page, which a snapshot computes anyway — so sealing a pack
 * costs no second pass over its plaintext (an HMAC of the plaintext was
 * ~0.9 s per GiB here). Binds every byte of every page, their order and the
 * page size, like a MAC of the plaintext.
 */
function packIdFromHashes(idMacKey: Uint8Array, pageSize: number, pageHashes: Uint8Array): string {
  const size = Buffer.alloc(4);
  size.writeUInt32BE(pageSize, 0);
  return createHmac('sha256', idMacKey).update('casa/v1/pack-pages\0').update(size).update(pageHashes).digest('hex');
}

/** The pack id of a plaintext of whole pages. */
export function packId(idMacKey: Uint8Array, plaintext: Uint8Array, pageSize: number): string {
  if (plaintext.length % pageSize !== 0) throw new ManifestError('a pack holds whole pages');
  return packIdFromHashes(idMacKey, pageSize, hashPages(plaintext, pageSize));
}

export function encodeManifest(m: Manifest): Uint8Array {
  return concatBytes(...manifestParts(m).map((part) => utf8ToBytes(part)));
}

/** Numbers of `runs` per piece of the encoding. */
const RUNS_PER_PART = 4096;

/**
 * The manifest's JSON in pieces: the same text as JSON.stringify(m) when
 * `runs` is its last key (as assembleManifest and JSON.parse make it), else
 * the same document with `runs` moved last. A 1 GiB database's runs are a
 * few hundred thousand numbers: one string of them, and JSON.stringify's
 * own garbage on the way, were the largest allocation of a snapshot.
 */
function manifestParts(m: Manifest): string[] {
  validateManifest(m);
  const { runs, ...rest } = m;
  const head = JSON.stringify(rest);
  const parts = [`${head.slice(0, -1)}${head.length > 2 ? ',' : ''}"runs":[`];
  for (let i = 0; i < runs.length; i += RUNS_PER_PART) parts.push((i > 0 ? ',' : '') + runs.slice(i, i + RUNS_PER_PART).join(','));
  parts.push(']}');
  return parts;
}

function decodeManifest(bytes: Uint8Array, expected: ManifestIdentity): Manifest {
  let doc: unknown;
  try {
    doc = JSON.parse(bytesToUtf8(bytes));
  } catch {
    throw new ManifestError('not JSON');
  }
  const m = doc as Manifest;
  validateManifest(m);
  if (m.vaultId !== expected.vaultId) throw new ManifestError('belongs to another vault');
  if (m.snapshotId !== expected.snapshotId) throw new ManifestError('belongs to another snapshot');
  if (m.seq !== expected.seq) throw new ManifestError('has another sequence number');
  return m;
}

const isUint = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

export function validateManifest(m: Manifest): void {
  const fail = (why: string): never => {
    throw new ManifestError(why);
  };
  if (typeof m !== 'object' || m === null) fail('not an object');
  if (m.format !== MANIFEST_FORMAT) fail(`unsupported format ${String(m.format)}`);
  if (!isVaultId(m.vaultId)) fail('bad vaultId');
  if (!isSnapshotId(m.snapshotId)) fail('bad snapshotId');
  if (!isUint(m.seq) || m.seq < 1) fail('bad seq');
  if (!isUint(m.parentSeq) || m.parentSeq !== m.seq - 1) fail('seq is not parentSeq + 1');
  if (m.parentId !== null && !isSnapshotId(m.parentId)) fail('bad parentId');
  if ((m.parentId === null) !== (m.parentSeq === 0)) fail('parentId and parentSeq disagree');
  if (!isDeviceId(m.deviceId)) fail('bad deviceId');
  for (const k of ['time', 'pageCount', 'dbBytes', 'schemaVersion', 'userVersion', 'changesetWatermark'] as const) {
    if (!isUint(m[k])) fail(`bad ${k}`);
  }
  if (!isUint(m.pageSize) || m.pageSize < 512 || m.pageSize > 65536 || (m.pageSize & (m.pageSize - 1)) !== 0) fail('bad pageSize');
  if (m.dbBytes !== m.pageCount * m.pageSize) fail('dbBytes is not pageCount × pageSize');
  if (!isSha256Hex(m.pagesSha256)) fail('bad pagesSha256');
  if (!Array.isArray(m.packs)) fail('bad packs');
  for (const p of m.packs) {
    if (typeof p !== 'object' || p === null || !isPackId(p.id)) fail('bad pack id');
    if (!isUint(p.bytes) || p.bytes === 0 || p.bytes > PACK_MAX_BYTES || p.bytes % m.pageSize !== 0) fail('bad pack size');
  }
  if (new Set(m.packs.map((p) => p.id)).size !== m.packs.length) fail('duplicate pack');
  const r = m.runs;
  if (!Array.isArray(r) || r.length % 4 !== 0) fail('bad runs');
  let next = 0;
  for (let i = 0; i < r.length; i += 4) {
    const [first, count, pack, offset] = [r[i], r[i + 1], r[i + 2], r[i + 3]];
    if (!isUint(first) || !isUint(count) || !isUint(pack) || !isUint(offset)) fail('bad run');
    if (first !== next) fail(first! < next ? 'runs overlap' : 'runs leave a gap');
    if (count === 0) fail('empty run');
    const p = m.packs[pack!];
    if (!p) fail('run names no pack');
    if (offset! % m.pageSize !== 0 || offset! + count! * m.pageSize > p!.bytes) fail('run outside its pack');
    next = first! + count!;
  }
  if (next !== m.pageCount) fail('runs do not cover the database');
}

/**
 * Runs from a per-page assignment (pack index and byte offset for every
 * page), merging neighbours that continue each other in the same pack.
 */
export function buildRuns(packOf: Int32Array, offsetOf: Float64Array, pageSize: number): number[] {
  const runs: number[] = [];
  const n = packOf.length;
  let i = 0;
  while (i < n) {
    const pack = packOf[i]!;
    const off = offsetOf[i]!;
    let j = i + 1;
    while (j < n && packOf[j] === pack && offsetOf[j] === off + (j - i) * pageSize) j++;
    runs.push(i, j - i, pack, off);
    i = j;
  }
  return runs;
}

/** Expands runs into per-page arrays (the inverse of buildRuns). */
export function expandRuns(m: Pick<Manifest, 'runs' | 'pageCount' | 'pageSize'>): { packOf: Int32Array; offsetOf: Float64Array } {
  const packOf = new Int32Array(m.pageCount);
  const offsetOf = new Float64Array(m.pageCount);
  for (let i = 0; i < m.runs.length; i += 4) {
    const first = m.runs[i]!;
    const count = m.runs[i + 1]!;
    const pack = m.runs[i + 2]!;
    const off = m.runs[i + 3]!;
    for (let k = 0; k < count; k++) {
      packOf[first + k] = pack;
      offsetOf[first + k] = off + k * m.pageSize;
    }
  }
  return { packOf, offsetOf };
}

/** Bytes of each pack that the manifest uses (its live data), by pack index. */
export function liveBytes(m: Pick<Manifest, 'runs' | 'packs' | 'pageSize'>): number[] {
  const live = new Array<number>(m.packs.length).fill(0);
  for (let i = 0; i < m.runs.length; i += 4) live[m.runs[i + 2]!]! += m.runs[i + 1]! * m.pageSize;
  return live;
}

export function sealManifest(keys: VaultKeys, m: Manifest, salt: Uint8Array): Uint8Array {
  // Compressed piece by piece: the JSON is never one string nor one buffer.
  const parts = manifestParts(m);
  const frame = compressStream(parts.reduce((n, part) => n + Buffer.byteLength(part, 'utf8'), 0));
  for (const part of parts) frame.write(utf8ToBytes(part));
  return sealEncoded({
    type: ObjectType.manifest,
    codec: Codec.zstd,
    keyId: keys.keyId,
    purposeKey: keys.snapshotKey,
    vaultId: m.vaultId,
    identity: manifestIdentity(m),
    encoded: frame.end(),
    salt,
  });
}

/** Opens and validates a manifest; crypto errors (format, wrong key, authentication) pass through typed. */
export function openManifest(vaultKeys: VaultKeys, object: Uint8Array, expected: ManifestIdentity): Manifest {
  // Sealed by an older epoch: its keys, and only at a seq before that epoch ended (docs/SECURITY.md §4.2).
  const keys = keysFor(vaultKeys, object);
  const mark = markOf(vaultKeys, object);
  if (mark && expected.seq > mark.seq) throw new EpochMarkError(`snapshot ${expected.seq} is sealed under epoch ${keys.epoch ?? 1}, which ended at snapshot ${mark.seq}`);
  const plaintext = openObject({
    type: ObjectType.manifest,
    keyId: keys.keyId,
    purposeKey: keys.snapshotKey,
    vaultId: expected.vaultId,
    identity: manifestIdentity(expected),
    object,
    maxPlaintext: MANIFEST_MAX_BYTES,
  });
  return decodeManifest(plaintext, expected);
}

/** Seals whole pages into a pack; `pageHashes` are their SHA-256s (hashPages), from which the id is made. */
export function sealPack(
  keys: VaultKeys,
  plaintext: Uint8Array,
  pageHashes: Uint8Array,
  salt: Uint8Array,
  pageSize: number,
): { id: string; object: Uint8Array } {
  if (pageHashes.length !== (plaintext.length / pageSize) * PAGE_HASH_BYTES) throw new ManifestError('one hash per page is needed');
  return sealPackEncoded(keys, compress(Codec.zstd, plaintext), pageHashes, salt, pageSize);
}

/** sealPack for pages already compressed into one zstd frame (compressStream), as a snapshot's seal job makes them. */
export function sealPackEncoded(
  keys: VaultKeys,
  frame: Uint8Array,
  pageHashes: Uint8Array,
  salt: Uint8Array,
  pageSize: number,
  into?: Uint8Array,
): { id: string; object: Uint8Array } {
  const id = packIdFromHashes(keys.idMacKey, pageSize, pageHashes);
  const object = sealEncoded({
    type: ObjectType.pack,
    codec: Codec.zstd,
    keyId: keys.keyId,
    purposeKey: keys.snapshotKey,
    vaultId: keys.vaultId,
    identity: packIdentity(id),
    encoded: frame,
    salt,
    ...(into ? { into } : {}),
  });
  return { id, object };
}

/** What opening a pack checks: its type, key, vault, identity (its id) and a plaintext of at most its size. */
function packOpening(vaultKeys: VaultKeys, id: string, object: Uint8Array, expectedBytes: number): OpenParams {
  const keys = keysFor(vaultKeys, object);
  return {
    type: ObjectType.pack,
    keyId: keys.keyId,
    purposeKey: keys.snapshotKey,
    vaultId: keys.vaultId,
    identity: packIdentity(id),
    object,
    maxPlaintext: Math.min(expectedBytes, PACK_MAX_BYTES),
  };
}

/**
 * Opens a pack whole: AES-GCM with the pack's identity in the associated
 * data, its size, and that its pages hash to its id. (A restore reads packs
 * through openPackReader instead.)
 */
export function openPack(
  keys: VaultKeys,
  id: string,
  object: Uint8Array,
  expectedBytes: number,
  pageSize: number,
): Uint8Array {
  const plaintext = openObject(packOpening(keys, id, object, expectedBytes));
  if (plaintext.length !== expectedBytes) throw new ManifestError(`pack ${id.slice(0, 12)} has the wrong size`);
  if (packId(keys.idMacKey, plaintext, pageSize) !== id) throw new ManifestError(`pack ${id.slice(0, 12)} does not match its id`);
  return plaintext;
}

/**
 * Opens a pack for reading piece by piece (AES-GCM checked for every chunk
 * first, then decompressed as it is read): `read` fills the caller's window,
 * `end` checks that the pack holds exactly `expectedBytes`. The pack id is
 * not checked — that would hash every page of the pack, dead ones too — as a
 * restore checks more: every page it writes goes into the database digest
 * that the authenticated manifest names.
 */
export function openPackReader(keys: VaultKeys, id: string, object: Uint8Array, expectedBytes: number): DecompressReader {
  const reader = openObjectReader(packOpening(keys, id, object, expectedBytes));
  let total = 0;
  const short = () => new ManifestError(`pack ${id.slice(0, 12)} has the wrong size`);
  return {
    read(into) {
      const n = reader.read(into);
      total += n;
      if (n < into.length && total < expectedBytes) throw short();
      return n;
    },
    end() {
      if (total !== expectedBytes) throw short();
      reader.end();
    },
  };
}
