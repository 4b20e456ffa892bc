/**
 * The synced tables' digest and the sealed digest record (docs/FORMAT.md §8,
 * `casa verify --sync`): two devices that applied the same changesets and
 * have nothing left to push hold identical synced tables, so equal digests
 * are what "in step" means, and a difference is a split that must not stay
 * silent.
 *
 * Invariants:
 * - One SHA-256 per synced table (schema.tables only: casa_*, sqlite_* and
 *   snapshot-only tables are never in a SyncSchema), over a canonical
 *   encoding that depends on the table's content and nothing else: a header
 *   naming the table, its key columns (key order) and its other columns
 *   (sorted, as the schema fingerprint sorts them, so two devices whose
 *   columns were added in another order still compare), then every row in
 *   primary-key order, each value typed exactly as SQLite stores it
 *   (integer, real, text, blob, NULL are distinct; integers read as 64-bit).
 *   Insertion order, rowids, pages and free space never enter it.
 * - Rows are streamed (`.iterate()`, one 64 KiB buffer): memory stays flat
 *   whatever the table's size. The caller runs it inside a read transaction
 *   (syncDigest opens one if none is open), so the digest is one committed
 *   state of the database.
 * - Read-only: nothing in the database changes.
 * - The record (cursor, fingerprint, table digests, and in format 2 the
 *   device's key view: src/changesets/key-view.ts) leaves the device only
 *   sealed (type 7, a fresh random salt each time, padded to 1 KiB steps): the
 *   relay sees neither the digests nor the view nor whether two devices' are
 *   equal. A format-1 record (casa before key views) opens as it always did,
 *   and a record without a view seals to the same bytes it did.
 */
import { createHash, createHmac } from 'node:crypto';
import type Database from 'better-sqlite3';
import { bytesToUtf8, concatBytes, u32be, utf8ToBytes } from '../crypto/bytes.js';
import { hkdfSha256, type VaultKeys } from '../crypto/kdf.js';
import { keysFor } from '../crypto/keyring.js';
import { Codec, ObjectType, openObject, SALT_BYTES, sealObject } from '../crypto/objects.js';
import { isDeviceId, isLowerHex, isVaultId } from '../protocol/ids.js';
import { DIGEST_MAX_BYTES } from '../protocol/messages.js';
import { KEY_HISTORY_HEX, type KeyView } from './key-view.js';
import { quoteId, type SyncSchema, type SyncTable } from './rules.js';

/** Hex characters of a table digest (the first 128 bits of its SHA-256). */
export const TABLE_DIGEST_HEX = 32;
/** Domain label at the start of every table's hashed bytes. */
export const TABLE_DIGEST_LABEL = 'casa/v1/table-digest';
/** Value tags of the canonical row encoding. */
export const TAG = { null: 0x00, integer: 0x01, real: 0x02, text: 0x03, blob: 0x04 } as const;

const CHUNK = 64 * 1024;
/**
 * Mapped reads while digesting: a table whose key is not its rowid is read
 * through its key's index, one row lookup per index entry, all over the
 * table; through the page cache's mapping instead of a read() per page this
 * costs ~35% less on a 100 MiB database (measured, docs/FORMAT.md §8). The
 * mapped pages are the OS page cache's, not the process's memory, and the
 * mapping is dropped when the digest is done.
 */
const MMAP_BYTES = 1 << 30;

export interface SyncDigest {
  /** Per synced table: 32 lowercase hex. */
  tables: Record<string, string>;
  /** Rows digested, over every table. */
  rows: number;
  /** Time it took, in ms. */
  ms: number;
}

/** Buffers encoded bytes and hands them on in chunks of up to 64 KiB. */
class Writer {
  private readonly buf = Buffer.allocUnsafe(CHUNK);
  private at = 0;
  constructor(private readonly sink: (bytes: Uint8Array) => void) {}

  private room(n: number): void {
    if (CHUNK - this.at < n) this.flush();
  }

  flush(): void {
    if (this.at === 0) return;
    this.sink(this.buf.subarray(0, this.at));
    this.at = 0;
  }

  byte(b: number): void {
    this.room(1);
    this.buf[this.at++] = b;
  }

  u32(n: number): void {
    this.room(4);
    this.buf.writeUInt32BE(n, this.at);
    this.at += 4;
  }

  u64(n: number): void {
    this.room(8);
    this.buf.writeBigUInt64BE(BigInt(n), this.at);
    this.at += 8;
  }

  /** u32be(byte length) || UTF-8. */
  text(s: string): void {
    // A UTF-16 code unit is at most 3 UTF-8 bytes: small strings go straight into the buffer.
    if (s.length * 3 + 4 <= CHUNK) {
      this.room(s.length * 3 + 4);
      const n = this.buf.write(s, this.at + 4, 'utf8');
      this.buf.writeUInt32BE(n, this.at);
      this.at += 4 + n;
      return;
    }
    this.bytes(Buffer.from(s, 'utf8'));
  }

  /** u32be(length) || bytes. */
  bytes(b: Uint8Array): void {
    this.u32(b.length);
    this.raw(b);
  }

  /** The bytes as they are. */
  raw(b: Uint8Array): void {
    if (b.length <= CHUNK - this.at) {
      this.buf.set(b, this.at);
      this.at += b.length;
      return;
    }
    this.flush();
    this.sink(b);
  }

  /** One value as SQLite stores it (read with safeIntegers: integers are bigint, reals number). */
  value(v: unknown): void {
    if (v === null || v === undefined) {
      this.byte(TAG.null);
    } else if (typeof v === 'bigint') {
      this.room(9);
      this.buf[this.at] = TAG.integer;
      this.buf.writeBigInt64BE(v, this.at + 1);
      this.at += 9;
    } else if (typeof v === 'number') {
      this.room(9);
      this.buf[this.at] = TAG.real;
      this.buf.writeDoubleBE(v, this.at + 1); // every bit, -0.0 included (SQLite stores no NaN)
      this.at += 9;
    } else if (typeof v === 'string') {
      this.byte(TAG.text);
      this.text(v);
    } else if (v instanceof Uint8Array) {
      this.byte(TAG.blob);
      this.bytes(v);
    } else {
      throw new TypeError(`unexpected SQLite value of type ${typeof v}`);
    }
  }
}

/** The table's columns in digest order: the key (key order), then the others sorted as the fingerprint sorts them. */
function digestColumns(t: SyncTable): { pk: string[]; columns: string[] } {
  return { pk: [...t.pk], columns: [...t.columns].sort() };
}

/** Bytewise order of two encoded rows (for the rows whose key holds a NULL). */
function compareBytes(a: Uint8Array, b: Uint8Array): number {
  return Buffer.compare(a, b);
}

/**
 * One table's digest. Rows come in primary-key order (the key's own
 * collations), which is a total order for every key without a NULL: a
 * primary key is unique under its collations. A rowid table may hold
 * several rows whose key has a NULL (SQLite allows it there), which that
 * order cannot tell apart: those are set aside and hashed after the others,
 * sorted by their encoding (there are none in a sane database).
 */
export function tableDigest(db: Database.Database, t: SyncTable): { digest: string; rows: number } {
  const { pk, columns } = digestColumns(t);
  const all = [...pk, ...columns];
  const hash = createHash('sha256');
  const w = new Writer((b) => hash.update(b));
  w.text(TABLE_DIGEST_LABEL);
  w.text(t.name);
  w.u32(pk.length);
  for (const c of pk) w.text(c);
  w.u32(columns.length);
  for (const c of columns) w.text(c);

  const sql = `SELECT ${all.map(quoteId).join(', ')} FROM main.${quoteId(t.name)} ORDER BY ${pk.map(quoteId).join(', ')}`;
  const stmt = db.prepare(sql).raw(true).safeIntegers(true);
  const keyCount = pk.length;
  const width = all.length;
  let ordered = 0;
  const nullKeyed: Uint8Array[] = [];
  for (const row of stmt.iterate() as IterableIterator<unknown[]>) {
    let nullKey = false;
    for (let i = 0; i < keyCount; i++) if (row[i] === null) nullKey = true;
    if (nullKey) {
      const parts: Uint8Array[] = [];
      const side = new Writer((b) => parts.push(Uint8Array.from(b)));
      for (let i = 0; i < width; i++) side.value(row[i]);
      side.flush();
      nullKeyed.push(concatBytes(...parts));
      continue;
    }
    for (let i = 0; i < width; i++) w.value(row[i]);
    ordered++;
  }
  nullKeyed.sort(compareBytes);
  for (const r of nullKeyed) w.raw(r);
  w.u64(ordered);
  w.u64(nullKeyed.length);
  w.flush();
  return { digest: hash.digest('hex').slice(0, TABLE_DIGEST_HEX), rows: ordered + nullKeyed.length };
}

/**
 * Every synced table's digest, in one read transaction (the caller's, if it
 * holds one: then the checks it made in it describe the same state).
 */
export function syncDigest(db: Database.Database, schema: SyncSchema, now: () => number = () => performance.now()): SyncDigest {
  const started = now();
  const mmap = Number(db.pragma('mmap_size', { simple: true }));
  db.pragma(`mmap_size = ${MMAP_BYTES}`);
  try {
    const run = (): Omit<SyncDigest, 'ms'> => {
      const entries: [string, string][] = [];
      let rows = 0;
      for (const t of [...schema.tables].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
        const d = tableDigest(db, t);
        entries.push([t.name, d.digest]);
        rows += d.rows;
      }
      // fromEntries: a table named like an Object.prototype property is still a plain own key.
      return { tables: Object.fromEntries(entries), rows };
    };
    const out = db.inTransaction ? run() : db.transaction(run)();
    return { ...out, ms: Math.round(now() - started) };
  } finally {
    db.pragma(`mmap_size = ${Number.isSafeInteger(mmap) ? mmap : 0}`);
  }
}

// ---------------------------------------------------------------- the record

/**
 * The record format (the plaintext's JSON `format`): 1 without a key view
 * (casa before key views; still opened and compared), 2 with one (what this
 * casa seals when it knows its key view).
 */
export const RECORD_FORMAT = 2;
/** The format of a record without a key view. */
export const RECORD_FORMAT_NO_KEYS = 1;
/** The largest sealed record: the relay's cap on `PUT /digest` (413 beyond). */
export const MAX_SEALED_RECORD = DIGEST_MAX_BYTES;
/** Plaintexts are padded with zero bytes to a multiple of this: the size says little about the tables. */
export const RECORD_PAD = 1024;
/** The largest plaintext a sealed record can hold (header 48, one tag 16). */
const MAX_RECORD_PLAINTEXT = Math.floor((MAX_SEALED_RECORD - 48 - 16) / RECORD_PAD) * RECORD_PAD;
export const DIGEST_KEY_LABEL = 'casa/v1/digest-key';
export const DIGEST_MAC_LABEL = 'casa/v1/digest-local-mac';

const RECORD_KEYS = ['format', 'vaultId', 'deviceId', 'seq', 'cursor', 'fingerprint', 'tables', 'keys', 'at'] as const;
const KEY_VIEW_KEYS = ['epoch', 'history', 'revoked'] as const;

/** What a device publishes: its state (cursor, schema) and its digests there. */
export interface DigestRecord {
  deviceId: string;
  /** Per device, from 1, one more each time it publishes (a reader refuses a lower one: rollback). */
  seq: number;
  /** The vault-wide changeset cursor the digest is at. */
  cursor: number;
  /** The synced schema's fingerprint (rules.ts). */
  fingerprint: string;
  tables: Record<string, string>;
  /** The device's view of the key history (format 2); absent in a record of casa before key views (format 1). */
  keys?: KeyView;
  /** The device's clock when it computed the digest, ms. */
  at: number;
}

/** The record's key (AEAD) and the local MAC key, both from the changeset key (FORMAT.md §2). */
function digestKeys(keys: VaultKeys): { sealKey: Uint8Array; macKey: Uint8Array } {
  const empty = new Uint8Array(0);
  return {
    sealKey: hkdfSha256(keys.changesetKey, empty, utf8ToBytes(DIGEST_KEY_LABEL), 32),
    macKey: hkdfSha256(keys.changesetKey, empty, utf8ToBytes(DIGEST_MAC_LABEL), 32),
  };
}

/** The object identity: `digest:v1:` in both record formats (the reader learns the format only once it opened the object). */
const recordIdentity = (deviceId: string): string => `digest:v1:${deviceId}`;

/** An authenticated record that breaks the record format (only a device holding the vault keys can make one). */
export class RecordFormatError extends Error {
  constructor(message: string) {
    super(`digest record is malformed: ${message}`);
    this.name = 'RecordFormatError';
  }
}

const uint = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function keyViewProblem(k: unknown): string | null {
  if (typeof k !== 'object' || k === null || Array.isArray(k)) return 'keys must be an object';
  const v = k as Record<string, unknown>;
  if (Object.keys(v).join(',') !== KEY_VIEW_KEYS.join(',')) return 'keys must hold epoch, history and revoked';
  if (!uint(v.epoch) || v.epoch < 1) return 'keys.epoch must be a positive integer';
  if (!isLowerHex(v.history, KEY_HISTORY_HEX)) return 'keys.history must be 64 lowercase hex characters';
  const revoked = v.revoked;
  if (!Array.isArray(revoked) || !revoked.every((id, i) => isDeviceId(id) && (i === 0 || (revoked[i - 1] as string) < id))) {
    return 'keys.revoked must be device ids, sorted, each once';
  }
  return null;
}

function recordProblem(r: Record<string, unknown>): string | null {
  if (r.format !== RECORD_FORMAT && r.format !== RECORD_FORMAT_NO_KEYS) return 'unsupported format';
  if (r.format === RECORD_FORMAT_NO_KEYS ? 'keys' in r : !('keys' in r)) return r.format === RECORD_FORMAT_NO_KEYS ? 'unknown field' : 'keys missing';
  if ('keys' in r) {
    const k = keyViewProblem(r.keys);
    if (k !== null) return k;
  }
  if (!isVaultId(r.vaultId)) return 'vaultId must be 32 lowercase hex characters';
  if (!isDeviceId(r.deviceId)) return 'deviceId must be 16 lowercase hex characters';
  if (!uint(r.seq) || r.seq < 1) return 'seq must be a positive integer';
  if (!uint(r.cursor)) return 'cursor must be a non-negative integer';
  if (typeof r.fingerprint !== 'string' || r.fingerprint.length === 0 || r.fingerprint.length > 128) return 'fingerprint must be 1 to 128 characters';
  const t = r.tables;
  if (typeof t !== 'object' || t === null || Array.isArray(t)) return 'tables must be an object';
  for (const [name, d] of Object.entries(t)) {
    if (name.length === 0 || !isLowerHex(d, TABLE_DIGEST_HEX)) return 'tables must map names to 32 lowercase hex characters';
  }
  if (!uint(r.at)) return 'at must be a non-negative integer';
  if (Object.keys(r).some((k) => !(RECORD_KEYS as readonly string[]).includes(k))) return 'unknown field';
  return null;
}

/**
 * The record's JSON, fields in a fixed order and tables by name: the same
 * record gives the same bytes. Without a key view it is format 1, byte for
 * byte what casa before key views sealed.
 */
function recordJson(vaultId: string, r: DigestRecord): string {
  const tables = Object.fromEntries(Object.keys(r.tables).sort().map((k) => [k, r.tables[k]!]));
  const head = { vaultId, deviceId: r.deviceId, seq: r.seq, cursor: r.cursor, fingerprint: r.fingerprint, tables };
  if (r.keys === undefined) return JSON.stringify({ format: RECORD_FORMAT_NO_KEYS, ...head, at: r.at });
  const keys = { epoch: r.keys.epoch, history: r.keys.history, revoked: [...r.keys.revoked] };
  return JSON.stringify({ format: RECORD_FORMAT, ...head, keys, at: r.at });
}

/**
 * Seals a record: type 7 (digest), codec none, under the digest key, identity
 * `digest:v1:<device id>`; plaintext `u32be(len(json)) || json || zero padding`
 * to a multiple of 1 KiB. RangeError for a bad record or one too large for a
 * slot (some 250 synced tables).
 */
export function sealRecord(keys: VaultKeys, r: DigestRecord, random: (n: number) => Uint8Array): Uint8Array {
  const json = utf8ToBytes(recordJson(keys.vaultId, r));
  const problem = recordProblem(JSON.parse(bytesToUtf8(json)) as Record<string, unknown>);
  if (problem !== null) throw new RangeError(`digest record: ${problem}`);
  const size = Math.ceil((4 + json.length) / RECORD_PAD) * RECORD_PAD;
  if (size > MAX_RECORD_PLAINTEXT) throw new RangeError(`digest record is over ${MAX_RECORD_PLAINTEXT} bytes (too many synced tables)`);
  const plaintext = new Uint8Array(size);
  plaintext.set(u32be(json.length), 0);
  plaintext.set(json, 4);
  return sealObject({
    type: ObjectType.digest,
    codec: Codec.none,
    keyId: keys.keyId,
    purposeKey: digestKeys(keys).sealKey,
    vaultId: keys.vaultId,
    identity: recordIdentity(r.deviceId),
    plaintext,
    salt: random(SALT_BYTES),
  });
}

/**
 * Opens the slot the relay says is `deviceId`'s. AuthenticationError /
 * ObjectFormatError / WrongKeyError propagate as they are (a slot moved to
 * another device fails authentication); an authenticated record that is
 * malformed or names another vault or device is RecordFormatError.
 */
export function openRecord(vaultKeys: VaultKeys, deviceId: string, bytes: Uint8Array): DigestRecord {
  if (!isDeviceId(deviceId)) throw new RangeError('deviceId must be 16 lowercase hex characters');
  const keys = keysFor(vaultKeys, bytes);
  const plaintext = openObject({
    type: ObjectType.digest,
    keyId: keys.keyId,
    purposeKey: digestKeys(keys).sealKey,
    vaultId: keys.vaultId,
    identity: recordIdentity(deviceId),
    object: bytes,
    maxPlaintext: MAX_RECORD_PLAINTEXT,
  });
  if (plaintext.length < 4 || plaintext.length % RECORD_PAD !== 0) throw new RecordFormatError('not padded');
  const len = new DataView(plaintext.buffer, plaintext.byteOffset, 4).getUint32(0, false);
  if (len > plaintext.length - 4) throw new RecordFormatError('length out of range');
  if (plaintext.subarray(4 + len).some((b) => b !== 0)) throw new RecordFormatError('padding is not zero');
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytesToUtf8(plaintext.subarray(4, 4 + len)));
  } catch {
    throw new RecordFormatError('not JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new RecordFormatError('not an object');
  const r = parsed as Record<string, unknown>;
  const problem = recordProblem(r);
  if (problem !== null) throw new RecordFormatError(problem);
  if (r.vaultId !== keys.vaultId || r.deviceId !== deviceId) throw new RecordFormatError('it names another vault or device');
  const out: DigestRecord = { deviceId, seq: r.seq as number, cursor: r.cursor as number, fingerprint: r.fingerprint as string, tables: r.tables as Record<string, string>, at: r.at as number };
  if (r.keys !== undefined) {
    const k = r.keys as KeyView;
    out.keys = { epoch: k.epoch, history: k.history, revoked: [...k.revoked] };
  }
  return out;
}

/**
 * A keyed MAC of what a record says about the database (cursor, schema,
 * digests: not seq or time) and, when it carries one, the key view, kept in
 * CASA_HOME to tell whether the record to publish differs from the last one
 * without keeping the digests there (an unkeyed digest would let a reader
 * of CASA_HOME confirm a guess of a whole table).
 */
export function recordMac(keys: VaultKeys, r: Pick<DigestRecord, 'cursor' | 'fingerprint' | 'tables' | 'keys'>): string {
  const tables = Object.keys(r.tables)
    .sort()
    .map((k) => [k, r.tables[k]]);
  const what =
    r.keys === undefined
      ? ['casa/v1/digest-published', r.cursor, r.fingerprint, tables]
      : ['casa/v2/digest-published', r.cursor, r.fingerprint, tables, [r.keys.epoch, r.keys.history, r.keys.revoked]];
  return createHmac('sha256', digestKeys(keys).macKey).update(JSON.stringify(what), 'utf8').digest('hex');
}

/** The tables whose digests differ, or that one side lacks, by name. */
export function differingTables(a: Record<string, string>, b: Record<string, string>): string[] {
  const names = new Set([...Object.keys(a), ...Object.keys(b)]);
  const at = (r: Record<string, string>, n: string) => (Object.hasOwn(r, n) ? r[n] : undefined);
  return [...names].filter((n) => at(a, n) !== at(b, n)).sort();
}
