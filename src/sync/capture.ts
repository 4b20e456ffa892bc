/**
 * Change capture (DESIGN §7 "Capture", docs/MERGE.md §3-§5): plain-SQL
 * triggers on the synced tables log every changed field into `casa_changes`,
 * whatever program writes (the Casaconomy app, the sqlite3 shell) and whether
 * casa runs or not: no application-defined functions. Each log row keeps the
 * write's wall time from SQLite's own clock and the device's HLC floor at
 * write time; `takeLocalChanges` turns rows into HLC-stamped changes, so an
 * edit made offline a week ago keeps its week-old time.
 *
 * casa's tables, all `casa_*` and never synced themselves:
 * - casa_changes: the local change log (seq order = local write order);
 * - casa_meta: key/value: 'applying' (1 only inside casa's apply
 *   transaction: the triggers stay quiet, so applied changes do not echo),
 *   'hlc_floor' (highest HLC received), 'hlc_issued' (highest HLC stamped
 *   here), 'fingerprint' and 'capture' (what the triggers were made from);
 * - casa_clock: the winning HLC of each field and the row markers (merge.ts);
 * - casa_pending: received changes for columns or tables this database does
 *   not have yet (merge.ts);
 * - casa_conflicts: the merge decisions (merge.ts).
 *
 * The change encoding (`encodeChanges`) is a batch body (FORMAT.md §7):
 * compact, deterministic, lossless for every SQLite type, strict on decode.
 */
import { createHash } from 'node:crypto';
import { anumber, bytesToHex, bytesToUtf8, hexToBytes } from '../crypto/bytes.js';
import { IntegrityError } from '../errors.js';
import { compareState, formatHlc, isHlc, MAX_WALL, maxState, parseHlc, tick, ZERO_HLC, type HlcState } from './hlc.js';
import { quoteId, type SyncSchema, type SyncTable } from './rules.js';

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
}

export interface LogRow {
  seq: number;
  tbl: string;
  pk: string;
  col: string | null;
  op: string;
  val: SqlValue;
  wall: number;
  floor: string | null;
  /** Set once stamped (takeLocalChanges, or applyRemote before it merges). */
  hlc: string | null;
}

/** A changeset body (or a pk) that is not exactly what encodeChanges (encodePk) makes. */
export class ChangeFormatError extends IntegrityError {
  constructor(message: string) {
    super(`malformed changes: ${message}`);
  }
}

/** casa_clock row markers: the newest insert (or set add) and the newest delete (or remove) of a row. */
export const INSERT_MARKER = '+';
export const DELETE_MARKER = '-';

// ---------------------------------------------------------------- the tables

const CASA_TABLES = `
CREATE TABLE IF NOT EXISTS casa_meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS casa_changes (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT, pk TEXT, col TEXT, op TEXT, val, wall INTEGER, floor TEXT, hlc TEXT);
CREATE TABLE IF NOT EXISTS casa_clock (
  tbl TEXT NOT NULL, pk TEXT NOT NULL, col TEXT NOT NULL, hlc TEXT NOT NULL, val,
  PRIMARY KEY (tbl, pk, col)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS casa_pending (
  id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, pk TEXT NOT NULL, col TEXT, op TEXT NOT NULL, val, hlc TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS casa_pending_change ON casa_pending (hlc, tbl, pk, ifnull(col, ''), op);
CREATE TABLE IF NOT EXISTS casa_conflicts (
  id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, pk TEXT NOT NULL, col TEXT, local_val, local_hlc TEXT,
  remote_val, remote_hlc TEXT NOT NULL, winner TEXT NOT NULL, rule TEXT NOT NULL, decided_at INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS casa_conflicts_decision
  ON casa_conflicts (tbl, pk, ifnull(col, ''), ifnull(local_hlc, ''), remote_hlc);
`;

/** Bump when the generated trigger SQL changes meaning: installCapture then regenerates them. */
const CAPTURE_VERSION = 1;

type Db = import('better-sqlite3').Database;

const quoteStr = (s: string): string => `'${s.replace(/'/g, "''")}'`;

const WALL = "CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)";
const FLOOR = "(SELECT value FROM casa_meta WHERE key = 'hlc_floor')";
const QUIET = "(SELECT value FROM casa_meta WHERE key = 'applying') IS NOT 1";

/**
 * One value as JSON that json_array/json_object cannot fail on and that loses
 * nothing: blobs as {"x":hex}, reals as {"r":quote()} (exact decimal), text
 * copied (`|| ''`) so a JSON subtype does not turn it into JSON structure.
 */
function jsonValue(v: string): string {
  return `CASE typeof(${v}) WHEN 'text' THEN ${v} || '' WHEN 'blob' THEN json_object('x', hex(${v})) WHEN 'real' THEN json_object('r', quote(${v})) ELSE ${v} END`;
}

/** The key as a JSON array of the pk columns. */
function pkSql(t: SyncTable, row: 'NEW' | 'OLD'): string {
  return `json_array(${t.pk.map((c) => jsonValue(`${row}.${quoteId(c)}`)).join(', ')})`;
}

/**
 * True when OLD.c and NEW.c differ in value, or only in case under a
 * non-binary collation. (A change between equal numbers of different types,
 * 1 → 1.0, is not one: column affinity normalises those in typed columns.)
 */
const differs = (c: string): string => `OLD.${quoteId(c)} IS NOT NEW.${quoteId(c)} COLLATE BINARY`;

const INTO = 'INSERT INTO casa_changes (tbl, pk, col, op, val, wall, floor)';

/** 'u' rows: one per column whose value changed. */
function logUpdates(t: SyncTable, where: string): string {
  const arms = t.columns.map((c, i) =>
    i === 0
      ? `SELECT ${quoteStr(c)} AS c, NEW.${quoteId(c)} AS v, ${differs(c)} AS ch`
      : `SELECT ${quoteStr(c)}, NEW.${quoteId(c)}, ${differs(c)}`,
  );
  return `${INTO} SELECT ${quoteStr(t.name)}, ${pkSql(t, 'NEW')}, c, 'u', v, ${WALL}, ${FLOOR} FROM (${arms.join(' UNION ALL ')}) WHERE ch AND ${where};`;
}

/** One row for a whole-row event: 'd', a set's 'i', or an 'i' carrying the new row as a JSON object. */
function logRow(t: SyncTable, row: 'NEW' | 'OLD', op: 'i' | 'd', where: string | null): string {
  const val =
    op === 'i' && t.kind === 'lww'
      ? `json_object(${t.columns.map((c) => `${quoteStr(c)}, ${jsonValue(`NEW.${quoteId(c)}`)}`).join(', ')})`
      : 'NULL';
  return (
    `${INTO} SELECT ${quoteStr(t.name)}, ${pkSql(t, row)}, NULL, '${op}', ${val}, ${WALL}, ${FLOOR}` +
    (where === null ? '' : ` WHERE ${where}`) +
    ';'
  );
}

/** The capture triggers of one table: name → CREATE TRIGGER statement (docs/MERGE.md §3). */
export function triggerSql(t: SyncTable): Map<string, string> {
  const out = new Map<string, string>();
  const head = (kind: string, event: string) =>
    `CREATE TRIGGER ${quoteId(`casa_${kind}_${t.name}`)} AFTER ${event} ON ${quoteId(t.name)} WHEN ${QUIET} BEGIN `;
  const keyChanged = `(${t.pk.map(differs).join(' OR ')})`;
  out.set(`casa_i_${t.name}`, `${head('i', 'INSERT')}${logRow(t, 'NEW', 'i', null)} END`);
  // A key change is a delete of the old key and an insert of the new one; a
  // trigger of its own (UPDATE OF the key) so that ordinary updates pay nothing for it.
  if (t.kind === 'lww') out.set(`casa_u_${t.name}`, `${head('u', 'UPDATE')}${logUpdates(t, `NOT ${keyChanged}`)} END`);
  out.set(
    `casa_k_${t.name}`,
    `CREATE TRIGGER ${quoteId(`casa_k_${t.name}`)} AFTER UPDATE OF ${t.pk.map(quoteId).join(', ')} ON ${quoteId(t.name)} ` +
      `WHEN ${keyChanged} AND ${QUIET} BEGIN ${logRow(t, 'OLD', 'd', null)} ${logRow(t, 'NEW', 'i', null)} END`,
  );
  out.set(`casa_d_${t.name}`, `${head('d', 'DELETE')}${logRow(t, 'OLD', 'd', null)} END`);
  return out;
}

function meta(db: Db, key: string): unknown {
  return (db.prepare('SELECT value FROM casa_meta WHERE key = ?').get(key) as { value: unknown } | undefined)?.value;
}

function setMeta(db: Db, key: string, value: unknown): void {
  db.prepare('INSERT INTO casa_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
}

/** True when the database has casa's change log (read-only connections welcome). */
export function hasCapture(db: Db): boolean {
  const n = db
    .prepare("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name IN ('casa_changes', 'casa_meta')")
    .get() as { n: number };
  return n.n === 2;
}

/**
 * Creates casa's tables and the capture triggers of every synced table.
 * Idempotent; when the schema (or casa's trigger SQL) changed since the last
 * install, every casa trigger is dropped and recreated, in one transaction.
 */
export function installCapture(db: Db, schema: SyncSchema): void {
  const triggers = new Map<string, string>();
  for (const t of schema.tables) for (const [name, sql] of triggerSql(t)) triggers.set(name, sql);
  const digest = createHash('sha256')
    .update(JSON.stringify([CAPTURE_VERSION, [...triggers.entries()]]))
    .digest('hex')
    .slice(0, 32);
  db.transaction(() => {
    db.exec(CASA_TABLES);
    const ins = db.prepare('INSERT OR IGNORE INTO casa_meta (key, value) VALUES (?, ?)');
    ins.run('applying', 0);
    ins.run('hlc_floor', ZERO_HLC);
    ins.run('hlc_issued', ZERO_HLC);
    ins.run('fingerprint', '');
    ins.run('capture', '');
    const existing = (
      db.prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'casa\\_%' ESCAPE '\\'").all() as { name: string }[]
    ).map((r) => r.name);
    const same =
      meta(db, 'capture') === digest && existing.length === triggers.size && existing.every((n) => triggers.has(n));
    if (same) return;
    for (const name of existing) db.exec(`DROP TRIGGER IF EXISTS ${quoteId(name)}`);
    for (const sql of triggers.values()) db.exec(sql);
    setMeta(db, 'capture', digest);
    setMeta(db, 'fingerprint', schema.fingerprint);
    setMeta(db, 'applying', 0);
  }).immediate();
}

// ---------------------------------------------------------------- pk text

const HEX_LOWER = /^(?:[0-9a-f]{2})*$/;

function realText(n: number): string {
  if (Number.isNaN(n)) throw new RangeError('a real must not be NaN');
  return Object.is(n, -0) ? '-0' : String(n);
}

/**
 * The canonical pk text: a JSON array, no spaces, of the key's values in pk
 * order — text as JSON strings, integers as decimal, `null`, reals as
 * {"r":"<shortest decimal>"} and blobs as {"x":"<lowercase hex>"}.
 */
export function encodePk(values: readonly SqlValue[]): string {
  const parts = values.map((v) => {
    if (v === null) return 'null';
    if (typeof v === 'bigint') return v.toString();
    if (typeof v === 'number') return `{"r":"${realText(v)}"}`;
    if (typeof v === 'string') return JSON.stringify(v);
    if (v instanceof Uint8Array) return `{"x":"${bytesToHex(v)}"}`;
    throw new TypeError('a pk value must be an SqlValue');
  });
  return `[${parts.join(',')}]`;
}

function parseReal(s: string): number {
  if (s === 'Inf' || s === 'Infinity') return Infinity;
  if (s === '-Inf' || s === '-Infinity') return -Infinity;
  if (s === '-0') return -0;
  const n = Number(s);
  if (s.trim() === '' || Number.isNaN(n)) throw new RangeError('bad real');
  return n;
}

/**
 * A reader for the JSON the triggers write (SQLite's: any escapes, upper-case
 * hex, reals as quote() text) and for canonical pk text: arrays and objects
 * of strings, exact integers, null, {"x":hex} blobs and {"r":text} reals.
 */
class JsonValues {
  private i = 0;
  constructor(private readonly s: string) {}

  private ws(): void {
    while (this.i < this.s.length && ' \t\n\r'.includes(this.s[this.i]!)) this.i++;
  }

  private expect(ch: string): void {
    this.ws();
    if (this.s[this.i] !== ch) throw new RangeError(`expected ${ch}`);
    this.i++;
  }

  private peek(): string | undefined {
    this.ws();
    return this.s[this.i];
  }

  private string(): string {
    this.ws();
    const start = this.i;
    if (this.s[start] !== '"') throw new RangeError('expected a string');
    for (let j = start + 1; j < this.s.length; j++) {
      const c = this.s.charCodeAt(j);
      if (c === 0x5c) j++;
      else if (c === 0x22) {
        this.i = j + 1;
        return JSON.parse(this.s.slice(start, j + 1)) as string;
      }
    }
    throw new RangeError('unterminated string');
  }

  value(): SqlValue {
    const c = this.peek();
    if (c === '"') return this.string();
    if (c === '{') {
      this.i++;
      const key = this.string();
      this.expect(':');
      const v = this.string();
      this.expect('}');
      if (key === 'x') {
        if (!/^(?:[0-9a-fA-F]{2})*$/.test(v)) throw new RangeError('bad hex');
        return hexToBytes(v);
      }
      if (key === 'r') return parseReal(v);
      throw new RangeError('bad object key');
    }
    if (this.s.startsWith('null', this.i)) {
      this.i += 4;
      return null;
    }
    const m = /^-?[0-9]+/.exec(this.s.slice(this.i, this.i + 24));
    if (!m) throw new RangeError('bad value');
    const n = BigInt(m[0]);
    if (n < -(2n ** 63n) || n >= 2n ** 63n) throw new RangeError('integer out of range');
    this.i += m[0].length;
    return n;
  }

  array(): SqlValue[] {
    const out: SqlValue[] = [];
    this.expect('[');
    if (this.peek() === ']') this.i++;
    else {
      for (;;) {
        out.push(this.value());
        if (this.peek() === ',') this.i++;
        else break;
      }
      this.expect(']');
    }
    return out;
  }

  object(): [string, SqlValue][] {
    const out: [string, SqlValue][] = [];
    this.expect('{');
    if (this.peek() === '}') this.i++;
    else {
      for (;;) {
        const k = this.string();
        this.expect(':');
        out.push([k, this.value()]);
        if (this.peek() === ',') this.i++;
        else break;
      }
      this.expect('}');
    }
    return out;
  }

  end(): void {
    this.ws();
    if (this.i !== this.s.length) throw new RangeError('trailing text');
  }
}

function parseArray(s: string): SqlValue[] {
  const r = new JsonValues(s);
  const v = r.array();
  r.end();
  return v;
}

function parseObject(s: string): [string, SqlValue][] {
  const r = new JsonValues(s);
  const v = r.object();
  r.end();
  return v;
}

/** The values of a canonical pk text; anything but canonical throws ChangeFormatError. */
export function decodePk(pk: string): SqlValue[] {
  let values: SqlValue[];
  try {
    values = parseArray(pk);
    if (values.length === 0) throw new RangeError('empty');
    if (encodePk(values) !== pk) throw new RangeError('not canonical');
  } catch (err) {
    throw new ChangeFormatError(`bad pk ${JSON.stringify(pk.slice(0, 80))} (${(err as Error).message})`);
  }
  return values;
}

/** A logged pk (as a trigger wrote it) in canonical form. */
function canonicalPk(logged: string): string {
  return encodePk(parseArray(logged));
}

// ---------------------------------------------------------------- change encoding

const OPS = ['i', 'u', 'd'] as const;
const TAG_NULL = 0;
const TAG_INT = 1;
const TAG_REAL = 2;
const TAG_TEXT = 3;
const TAG_BLOB = 4;
const SAME_HLC = 0x20;
const FORMAT = 1;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

const utf8 = new TextEncoder();

/** Throws `fail(message)` unless c is a well-formed change (the pk's canonical form is checked apart: decodePk). */
export function checkChange(c: Change, i: number, fail: (m: string) => Error): void {
  const at = `change ${i}`;
  if (typeof c !== 'object' || c === null) throw fail(`${at} is not an object`);
  if (typeof c.tbl !== 'string' || c.tbl === '') throw fail(`${at}: tbl must be a non-empty string`);
  if (typeof c.pk !== 'string') throw fail(`${at}: pk must be a string`);
  if (c.op !== 'i' && c.op !== 'u' && c.op !== 'd') throw fail(`${at}: op must be i, u or d`);
  if (c.col !== null && (typeof c.col !== 'string' || c.col === '')) throw fail(`${at}: col must be null or a non-empty string`);
  if (!isHlc(c.hlc)) throw fail(`${at}: hlc must be 32 lowercase hex characters`);
  const v = c.val;
  if (typeof v === 'number' && Number.isNaN(v)) throw fail(`${at}: a real must not be NaN`);
  if (typeof v === 'bigint' && (v < INT64_MIN || v > INT64_MAX)) throw fail(`${at}: an integer must fit 64 bits`);
  if (!(v === null || typeof v === 'number' || typeof v === 'bigint' || typeof v === 'string' || v instanceof Uint8Array)) {
    throw fail(`${at}: val must be an SQLite value`);
  }
  if (c.op === 'u' && c.col === null) throw fail(`${at}: an update names a column`);
  if (c.op === 'd' && c.col !== null) throw fail(`${at}: a delete names no column`);
  if (c.col === null && v !== null) throw fail(`${at}: a row change without a column carries no value`);
}

class Writer {
  buf = new Uint8Array(1024);
  len = 0;
  private view = new DataView(this.buf.buffer);
  ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  byte(b: number): void {
    this.ensure(1);
    this.buf[this.len++] = b;
  }
  uvarint(n: number): void {
    this.ensure(10);
    while (n >= 0x80) {
      this.buf[this.len++] = (n % 0x80) | 0x80;
      n = Math.floor(n / 0x80);
    }
    this.buf[this.len++] = n;
  }
  uvarintBig(n: bigint): void {
    if (n <= 0x1fffffffffffffn) return this.uvarint(Number(n));
    this.ensure(10);
    while (n >= 0x80n) {
      this.buf[this.len++] = Number(n & 0x7fn) | 0x80;
      n >>= 7n;
    }
    this.buf[this.len++] = Number(n);
  }
  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  f64(x: number): void {
    this.ensure(8);
    this.view.setFloat64(this.len, x, false);
    this.len += 8;
  }
}

/** The batch body: deterministic (same changes → same bytes) and lossless. See docs/MERGE.md §6. */
export function encodeChanges(changes: Change[]): Uint8Array {
  const fail = (m: string) => new ChangeFormatError(m);
  const strings = new Map<string, number>();
  const order: string[] = [];
  const ref = (s: string): number => {
    let k = strings.get(s);
    if (k === undefined) {
      k = order.length;
      strings.set(s, k);
      order.push(s);
    }
    return k;
  };
  const body = new Writer();
  body.uvarint(changes.length);
  let prevHlc = '';
  changes.forEach((c, i) => {
    checkChange(c, i, fail);
    decodePk(c.pk);
    body.uvarint(ref(c.tbl));
    body.uvarint(ref(c.pk));
    body.uvarint(c.col === null ? 0 : ref(c.col) + 1);
    const v = c.val;
    const tag =
      v === null ? TAG_NULL : typeof v === 'bigint' ? TAG_INT : typeof v === 'number' ? TAG_REAL : typeof v === 'string' ? TAG_TEXT : TAG_BLOB;
    const same = i > 0 && c.hlc === prevHlc;
    body.byte(OPS.indexOf(c.op) | (tag << 2) | (same ? SAME_HLC : 0));
    if (!same) body.bytes(hexToBytes(c.hlc));
    prevHlc = c.hlc;
    if (tag === TAG_INT) {
      const n = v as bigint;
      body.uvarintBig(n < 0n ? -2n * n - 1n : 2n * n);
    } else if (tag === TAG_REAL) body.f64(v as number);
    else if (tag === TAG_TEXT || tag === TAG_BLOB) {
      const b = tag === TAG_TEXT ? utf8.encode(v as string) : (v as Uint8Array);
      body.uvarint(b.length);
      body.bytes(b);
    }
  });
  const head = new Writer();
  head.byte(FORMAT);
  head.uvarint(order.length);
  for (const s of order) {
    const b = utf8.encode(s);
    head.uvarint(b.length);
    head.bytes(b);
  }
  const out = new Uint8Array(head.len + body.len);
  out.set(head.buf.subarray(0, head.len), 0);
  out.set(body.buf.subarray(0, body.len), head.len);
  return out;
}

class Reader {
  at = 0;
  private view: DataView;
  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  need(n: number): void {
    if (this.at + n > this.buf.length) throw new ChangeFormatError('truncated');
  }
  byte(): number {
    this.need(1);
    return this.buf[this.at++]!;
  }
  uvarint(): number {
    let n = 0;
    let mul = 1;
    for (let k = 0; ; k++) {
      const b = this.byte();
      n += (b & 0x7f) * mul;
      if (b < 0x80) {
        if (k > 0 && b === 0) throw new ChangeFormatError('non-minimal varint');
        if (n > Number.MAX_SAFE_INTEGER) throw new ChangeFormatError('varint out of range');
        return n;
      }
      mul *= 0x80;
      if (k >= 7) throw new ChangeFormatError('varint out of range');
    }
  }
  uvarintBig(): bigint {
    let n = 0n;
    let shift = 0n;
    for (let k = 0; ; k++) {
      const b = this.byte();
      n |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) {
        if (k > 0 && b === 0) throw new ChangeFormatError('non-minimal varint');
        if (n >= 2n ** 64n) throw new ChangeFormatError('integer out of range');
        return n;
      }
      shift += 7n;
      if (k >= 9) throw new ChangeFormatError('integer out of range');
    }
  }
  bytes(n: number): Uint8Array {
    this.need(n);
    const out = this.buf.slice(this.at, this.at + n);
    this.at += n;
    return out;
  }
  f64(): number {
    this.need(8);
    const x = this.view.getFloat64(this.at, false);
    this.at += 8;
    return x;
  }
}

/** Decodes a batch body; anything but exactly what encodeChanges makes throws ChangeFormatError. */
export function decodeChanges(bytes: Uint8Array): Change[] {
  if (!(bytes instanceof Uint8Array)) throw new TypeError('bytes must be a Uint8Array');
  const r = new Reader(bytes);
  const version = r.byte();
  if (version !== FORMAT) throw new ChangeFormatError(`unknown format ${version}`);
  const nStrings = r.uvarint();
  if (nStrings > bytes.length) throw new ChangeFormatError('string count beyond the body');
  const strings: string[] = [];
  for (let k = 0; k < nStrings; k++) {
    const b = r.bytes(r.uvarint());
    try {
      strings.push(bytesToUtf8(b));
    } catch {
      throw new ChangeFormatError(`string ${k} is not UTF-8`);
    }
  }
  if (new Set(strings).size !== strings.length) throw new ChangeFormatError('a string is listed twice');
  // Canonical: the strings are listed in the order of their first use.
  let firstUnused = 0;
  const str = (k: number): string => {
    const s = strings[k];
    if (s === undefined) throw new ChangeFormatError(`string index ${k} out of range`);
    if (k === firstUnused) firstUnused++;
    else if (k > firstUnused) throw new ChangeFormatError('strings out of order');
    return s;
  };
  const n = r.uvarint();
  if (n > bytes.length) throw new ChangeFormatError('change count beyond the body');
  const changes: Change[] = [];
  const pkOk = new Set<string>();
  let prevHlc = '';
  for (let i = 0; i < n; i++) {
    const tbl = str(r.uvarint());
    const pk = str(r.uvarint());
    const colRef = r.uvarint();
    const col = colRef === 0 ? null : str(colRef - 1);
    const flags = r.byte();
    if (flags & 0xc0) throw new ChangeFormatError(`change ${i}: reserved flag bits set`);
    const op = OPS[flags & 3];
    if (op === undefined) throw new ChangeFormatError(`change ${i}: unknown op`);
    const tag = (flags >> 2) & 7;
    let hlc: string;
    if (flags & SAME_HLC) {
      if (i === 0) throw new ChangeFormatError('the first change has no previous hlc');
      hlc = prevHlc;
    } else {
      hlc = bytesToHex(r.bytes(16));
      if (hlc === prevHlc) throw new ChangeFormatError(`change ${i}: a repeated hlc spelled out`);
    }
    prevHlc = hlc;
    let val: SqlValue;
    if (tag === TAG_NULL) val = null;
    else if (tag === TAG_INT) {
      const z = r.uvarintBig();
      val = z & 1n ? -(z >> 1n) - 1n : z >> 1n;
    } else if (tag === TAG_REAL) val = r.f64();
    else if (tag === TAG_TEXT) {
      try {
        val = bytesToUtf8(r.bytes(r.uvarint()));
      } catch (err) {
        if (err instanceof ChangeFormatError) throw err;
        throw new ChangeFormatError(`change ${i}: text is not UTF-8`);
      }
    } else if (tag === TAG_BLOB) val = r.bytes(r.uvarint());
    else throw new ChangeFormatError(`change ${i}: unknown value type ${tag}`);
    const c: Change = { tbl, pk, col, op, val, hlc };
    checkChange(c, i, (m) => new ChangeFormatError(m));
    if (!pkOk.has(pk)) {
      decodePk(pk);
      pkOk.add(pk);
    }
    changes.push(c);
  }
  if (r.at !== bytes.length) throw new ChangeFormatError('trailing bytes');
  if (firstUnused !== strings.length) throw new ChangeFormatError('an unused string');
  return changes;
}

// ---------------------------------------------------------------- the log

function safeRows<T>(db: Db, sql: string, ...args: unknown[]): T[] {
  return db.prepare(sql).safeIntegers(true).all(...args) as T[];
}

const toBytes = (v: SqlValue): SqlValue => (v instanceof Uint8Array && !(v.constructor === Uint8Array) ? new Uint8Array(v) : v);

function toLogRow(r: Record<string, unknown>): LogRow {
  return {
    seq: Number(r.seq),
    tbl: r.tbl as string,
    pk: r.pk as string,
    col: (r.col as string | null) ?? null,
    op: r.op as string,
    val: toBytes(r.val as SqlValue),
    wall: Number.isFinite(Number(r.wall)) ? Math.trunc(Number(r.wall)) : 0,
    floor: (r.floor as string | null) ?? null,
    hlc: (r.hlc as string | null) ?? null,
  };
}

/** Raw log rows with seq > afterSeq, in seq order. */
export function readLog(db: Db, afterSeq: number, limit: number): LogRow[] {
  anumber(afterSeq, 'afterSeq');
  anumber(limit, 'limit', 1);
  return safeRows<Record<string, unknown>>(db, 'SELECT * FROM casa_changes WHERE seq > ? ORDER BY seq LIMIT ?', afterSeq, limit).map(toLogRow);
}

/** Local changes not pushed yet (log rows). */
export function pendingCount(db: Db): number {
  if (!hasCapture(db)) return 0;
  return (db.prepare('SELECT count(*) AS n FROM casa_changes').get() as { n: number }).n;
}

/** Forgets pushed log rows. */
export function dropLocalChanges(db: Db, uptoSeq: number): void {
  anumber(uptoSeq, 'uptoSeq');
  db.prepare('DELETE FROM casa_changes WHERE seq <= ?').run(uptoSeq);
}

/** Empties the log (after a restore: the restored file's log is another device's). */
export function clearLocalLog(db: Db): void {
  db.transaction(() => {
    db.prepare('DELETE FROM casa_changes').run();
    db.prepare("UPDATE casa_meta SET value = 0 WHERE key = 'applying'").run();
  }).immediate();
}

function floorState(floor: string | null): HlcState {
  if (floor === null || !isHlc(floor)) return { wall: 0, counter: 0 };
  const h = parseHlc(floor);
  return { wall: h.wall, counter: h.counter };
}

function sameWrite(a: LogRow, b: LogRow, cols: Set<string | null>): boolean {
  return a.tbl === b.tbl && a.pk === b.pk && a.op === b.op && a.wall === b.wall && a.floor === b.floor && !cols.has(b.col);
}

/**
 * Stamps unstamped log rows (at least `limit` of them when there are that
 * many, and the rest of the last row write) with this device's HLCs, and
 * records them in casa_clock as the fields' local clocks. One row write (the
 * log rows of one trigger run) gets one HLC: above the floor recorded at
 * write time and above every HLC stamped here before, at the write's own
 * wall time if that is higher. Returns the highest HLC stamped here (state).
 *
 * Call inside a write transaction.
 */
export function stampLocal(db: Db, deviceId: string, limit = Number.MAX_SAFE_INTEGER): HlcState {
  let issued = floorState((meta(db, 'hlc_issued') as string | null) ?? null);
  const fetch = db.prepare('SELECT * FROM casa_changes WHERE hlc IS NULL AND seq > ? ORDER BY seq LIMIT 1000').safeIntegers(true);
  const setHlc = db.prepare('UPDATE casa_changes SET hlc = ?, pk = ? WHERE seq = ?');
  const clock = db.prepare(
    'INSERT INTO casa_clock (tbl, pk, col, hlc, val) VALUES (?, ?, ?, ?, NULL) ' +
      'ON CONFLICT (tbl, pk, col) DO UPDATE SET hlc = excluded.hlc, val = NULL WHERE excluded.hlc > casa_clock.hlc',
  );
  const pks = new Map<string, string>();
  let group: LogRow | null = null;
  let cols = new Set<string | null>();
  let hlc = '';
  let stamped = 0;
  let after = 0;
  outer: for (;;) {
    const page = (fetch.all(after) as Record<string, unknown>[]).map(toLogRow);
    if (page.length === 0) break;
    for (const r of page) {
      const joins = group !== null && sameWrite(group, r, cols);
      // Past the limit, only the rest of the last row write: an insert never spans two batches.
      if (!joins && stamped >= limit) break outer;
      let pk = pks.get(r.pk);
      if (pk === undefined) {
        pk = canonicalPk(r.pk);
        pks.set(r.pk, pk);
      }
      if (!joins) {
        issued = tick(maxState(issued, floorState(r.floor)), Math.min(Math.max(r.wall, 0), MAX_WALL));
        hlc = formatHlc({ ...issued, deviceId });
        group = r;
        cols = new Set();
        if (r.op === 'i') clock.run(r.tbl, pk, INSERT_MARKER, hlc);
        if (r.op === 'd') clock.run(r.tbl, pk, DELETE_MARKER, hlc);
      }
      cols.add(r.col);
      setHlc.run(hlc, pk, r.seq);
      if (r.col !== null) clock.run(r.tbl, pk, r.col, hlc);
      else if (r.op === 'i' && typeof r.val === 'string') for (const [col] of parseObject(r.val)) clock.run(r.tbl, pk, col, hlc);
      stamped++;
    }
    after = page[page.length - 1]!.seq;
  }
  if (stamped > 0) setMeta(db, 'hlc_issued', formatHlc({ ...issued, deviceId }));
  return issued;
}

/** A stamped log row as changes: an insert's packed row becomes one 'i' per column, in column order. */
function expand(r: LogRow): Change[] {
  if (r.hlc === null) throw new Error('an unstamped log row inside the batch');
  const op = r.op as Change['op'];
  if (op === 'i' && r.col === null && typeof r.val === 'string') {
    return parseObject(r.val).map(([col, val]) => ({ tbl: r.tbl, pk: r.pk, col, op, val, hlc: r.hlc! }));
  }
  return [{ tbl: r.tbl, pk: r.pk, col: r.col, op, val: r.val, hlc: r.hlc }];
}

/**
 * Up to `limit` log rows (more only to finish a row write) as HLC-stamped
 * changes, in log order; several updates of one field in the batch keep only
 * the last. `uptoSeq` is the last log row covered (for dropLocalChanges once
 * the batch is pushed); `state` is `state` moved past every HLC stamped. The
 * same rows give the same changes until they are dropped.
 */
export function takeLocalChanges(
  db: Db,
  opts: { deviceId: string; state: HlcState; limit: number },
): { changes: Change[]; uptoSeq: number; state: HlcState } {
  anumber(opts.limit, 'limit', 1);
  return db
    .transaction(() => {
      const issued = stampLocal(db, opts.deviceId, opts.limit);
      const state = compareState(issued, opts.state) > 0 ? issued : opts.state;
      const rows = readLog(db, 0, opts.limit);
      if (rows.length === 0) return { changes: [], uptoSeq: 0, state };
      for (;;) {
        const last = rows[rows.length - 1]!;
        const more = readLog(db, last.seq, 64);
        let taken = 0;
        for (const m of more) {
          if (m.hlc === null || m.hlc !== last.hlc) break;
          rows.push(m);
          taken++;
        }
        if (taken < more.length || more.length === 0) break;
      }
      const all = rows.flatMap(expand);
      const seen = new Set<string>();
      const changes: Change[] = [];
      for (let k = all.length - 1; k >= 0; k--) {
        const c = all[k]!;
        if (c.col !== null) {
          const key = `${c.tbl}\u0000${c.pk}\u0000${c.col}`;
          if (c.op === 'u' && seen.has(key)) continue;
          seen.add(key);
        }
        changes.push(c);
      }
      changes.reverse();
      return { changes, uptoSeq: rows[rows.length - 1]!.seq, state };
    })
    .immediate();
}
