/**
 * Change capture (docs/MERGE.md §3-§5): plain-SQL
 * triggers on the synced tables log every row write (an insert's row, an
 * update's changed fields, a delete's key) as one row of `casa_changes`,
 * whatever program writes (the Casaconomy app, the sqlite3 shell) and whether
 * casa runs or not: no application-defined functions. Each log row keeps the
 * write's wall time from SQLite's own clock and the device's HLC floor at
 * write time; `takeLocalChanges` turns rows into HLC-stamped changes, so an
 * edit made offline a week ago keeps its week-old time.
 *
 * casa's tables, all `casa_*` and never synced themselves:
 * - casa_changes: the local change log (seq order = local write order);
 * - casa_layout: which columns a log row's values v0, v1, ... are;
 * - casa_meta: key/value: 'applying' (1 only inside casa's apply
 *   transaction: the triggers stay quiet, so applied changes do not echo),
 *   'hlc_floor' (highest HLC received), 'hlc_issued' (highest HLC stamped
 *   here), 'log_taken' (highest HLC a taken batch covered: dropLocalChanges),
 *   'fingerprint' and 'capture' (what the triggers were made from);
 * - casa_clock: the winning HLC of each field and the row markers (merge.ts);
 * - casa_pending: received changes for columns or tables this database does
 *   not have yet (merge.ts);
 * - casa_conflicts: the merge decisions (merge.ts).
 *
 * The change encoding (`encodeChanges`) is a batch body (FORMAT.md §7):
 * compact, deterministic, lossless for every SQLite type, strict on decode.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
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

/**
 * One row of the change log: one row write (capture version 1 logged an
 * update as one row per changed field, `col` naming it; such rows are still read).
 */
export interface LogRow {
  seq: number;
  tbl: string;
  /** The key as canonical pk text (a version-1 row: as its trigger wrote it, until stamped). */
  pk: string;
  /** A version-1 update's column; null otherwise. */
  col: string | null;
  op: string;
  /** A version-1 update's value, or a version-1 insert's row as JSON; null otherwise. */
  val: SqlValue;
  /** The fields the write logged, in column order: an lww insert's every column, an update's changed ones; null for a delete or a set element. */
  fields: [string, SqlValue][] | null;
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

/**
 * The change log, one row per row write (docs/MERGE.md §3). `seq` is a plain
 * rowid (AUTOINCREMENT would cost every logged write a read and a write of
 * sqlite_sequence): once every row is dropped a seq can come again, which
 * dropLocalChanges makes harmless. A row's values are stored as they are, in
 * columns v0, v1, ... (added as the widest synced table needs), in the order
 * of its `layout` (casa_layout): the key columns, then the other columns.
 */
const logTable = (name: string) => `CREATE TABLE IF NOT EXISTS ${name} (
  seq INTEGER PRIMARY KEY, tbl TEXT, pk TEXT, col TEXT, op TEXT, val, wall INTEGER, floor TEXT, hlc TEXT, layout INTEGER);`;

const CASA_TABLES = `
CREATE TABLE IF NOT EXISTS casa_meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
${logTable('casa_changes')}
CREATE TABLE IF NOT EXISTS casa_layout (id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, pk TEXT NOT NULL, cols TEXT NOT NULL);
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
const CAPTURE_VERSION = 2;

type Db = import('better-sqlite3').Database;

const quoteStr = (s: string): string => `'${s.replace(/'/g, "''")}'`;

const WALL = "CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)";
const FLOOR = "(SELECT value FROM casa_meta WHERE key = 'hlc_floor')";
const QUIET = "(SELECT value FROM casa_meta WHERE key = 'applying') IS NOT 1";

/** Which table, key columns and columns the v0, v1, ... of a log row hold: its key columns, then its columns. */
interface Layout {
  tbl: string;
  pk: string[];
  cols: string[];
}

/** A table's layout id: a hash of the layout, so that the trigger SQL is a function of the schema alone. */
function layoutId(t: SyncTable): number {
  const h = createHash('sha256').update(JSON.stringify([t.name, t.pk, t.columns])).digest('hex');
  return parseInt(h.slice(0, 12), 16);
}

/** How many bits of a change mask one integer holds (an update of a wider table has several, as text "m0,m1,..."). */
const MASK_BITS = 62;

/**
 * True when OLD.c and NEW.c differ in value, or only in case under a
 * non-binary collation. (A change between equal numbers of different types,
 * 1 → 1.0, is not one: column affinity normalises those in typed columns.)
 */
const differs = (c: string): string => `OLD.${quoteId(c)} IS NOT NEW.${quoteId(c)} COLLATE BINARY`;

/** One log row: the values are stored as they are (no JSON, nothing to encode), in the table's layout. */
function logInsert(t: SyncTable, op: 'i' | 'u' | 'd', val: string, values: string[]): string {
  const vs = values.map((_, i) => `v${i}`).join(', ');
  return (
    `INSERT INTO casa_changes (tbl, op, val, wall, floor, layout, ${vs}) ` +
    `VALUES (${quoteStr(t.name)}, '${op}', ${val}, ${WALL}, ${FLOOR}, ${layoutId(t)}, ${values.join(', ')});`
  );
}

const keyOf = (t: SyncTable, row: 'NEW' | 'OLD'): string[] => t.pk.map((c) => `${row}.${quoteId(c)}`);

/** A whole-row event: 'd' (the key), or 'i' (the key and, lww, every column). */
function logRow(t: SyncTable, row: 'NEW' | 'OLD', op: 'i' | 'd'): string {
  return logInsert(t, op, 'NULL', op === 'i' ? [...keyOf(t, row), ...t.columns.map((c) => `NEW.${quoteId(c)}`)] : keyOf(t, row));
}

/**
 * An update: the key, the new value of each changed column (NULL in the
 * others), and `val` = the change mask: bit i set when column i changed
 * (an integer; for more than MASK_BITS columns the integers as text "m0,m1,...").
 */
function logUpdate(t: SyncTable): string {
  const masks: string[] = [];
  for (let at = 0; at < t.columns.length; at += MASK_BITS) {
    const bits = t.columns.slice(at, at + MASK_BITS).map((c, i) => `((${differs(c)}) << ${i})`);
    masks.push(`(${bits.join(' | ')})`);
  }
  const mask = masks.join(" || ',' || ");
  return logInsert(t, 'u', mask, [...keyOf(t, 'NEW'), ...t.columns.map((c) => `CASE WHEN ${differs(c)} THEN NEW.${quoteId(c)} END`)]);
}

/** The capture triggers of one table: name → CREATE TRIGGER statement (docs/MERGE.md §3). */
function triggerSql(t: SyncTable): Map<string, string> {
  const out = new Map<string, string>();
  const head = (kind: string, event: string, when = QUIET) =>
    `CREATE TRIGGER ${quoteId(`casa_${kind}_${t.name}`)} AFTER ${event} ON ${quoteId(t.name)} WHEN ${when} BEGIN `;
  const keyChanged = `(${t.pk.map(differs).join(' OR ')})`;
  out.set(`casa_i_${t.name}`, `${head('i', 'INSERT')}${logRow(t, 'NEW', 'i')} END`);
  // Only an update that changes a column logs a row.
  if (t.kind === 'lww') {
    out.set(`casa_u_${t.name}`, `${head('u', 'UPDATE', `${QUIET} AND NOT ${keyChanged} AND (${t.columns.map(differs).join(' OR ')})`)}${logUpdate(t)} END`);
  }
  // A key change is a delete of the old key and an insert of the new one; a
  // trigger of its own (UPDATE OF the key) so that ordinary updates pay nothing for it.
  out.set(
    `casa_k_${t.name}`,
    `CREATE TRIGGER ${quoteId(`casa_k_${t.name}`)} AFTER UPDATE OF ${t.pk.map(quoteId).join(', ')} ON ${quoteId(t.name)} ` +
      `WHEN ${keyChanged} AND ${QUIET} BEGIN ${logRow(t, 'OLD', 'd')} ${logRow(t, 'NEW', 'i')} END`,
  );
  out.set(`casa_d_${t.name}`, `${head('d', 'DELETE')}${logRow(t, 'OLD', 'd')} END`);
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

const LOG_COLUMNS = 'seq, tbl, pk, col, op, val, wall, floor, hlc';

/**
 * Brings casa_changes to this version: a log from capture version 1
 * (AUTOINCREMENT, values as JSON, no layout) is copied into a new one, and
 * value columns are added until there are `width`.
 */
function upgradeLog(db: Db, width: number): void {
  const names = db.prepare('SELECT name FROM pragma_table_info(?)').pluck().all('casa_changes') as string[];
  if (!names.includes('layout')) {
    db.exec(`${logTable('casa_changes_new')}
      INSERT INTO casa_changes_new (${LOG_COLUMNS}) SELECT ${LOG_COLUMNS} FROM casa_changes;
      DROP TABLE casa_changes;
      ALTER TABLE casa_changes_new RENAME TO casa_changes;`);
    names.length = 0;
  }
  const have = new Set(names);
  for (let i = 0; i < width; i++) if (!have.has(`v${i}`)) db.exec(`ALTER TABLE casa_changes ADD COLUMN v${i}`);
}

/** What installCapture found and did (docs/MERGE.md §8). */
export interface CaptureRefresh {
  /** The triggers were (re)made: the synced schema, or casa's trigger SQL, changed since the last install. */
  changed: boolean;
  /** Writes logged because capture did not cover them yet: per table, the rows of a table new to sync, or added columns' values. */
  caughtUp: { tbl: string; rows: number; what: 'rows' | 'columns' | 'writes' }[];
  /**
   * Capture was detached (`casa sync --detach`, detachCapture) and this
   * install attached it again: every write made meanwhile was caught up from
   * the copy taken at the detach (`what: 'writes'`).
   */
  attached: boolean;
  /** The detach's copy that was missing (or not the detach's) at the attach: the tables are reported as rebuilt. */
  lostCopy?: string;
  /**
   * Tables captured before whose triggers were gone: the app dropped and
   * created them again (SQLite's 12-step ALTER). Their new rows and added
   * columns are caught up; an edit of an existing field made before this
   * install cannot be told from the synced value (`casa verify --sync` finds it).
   */
  rebuilt: string[];
  /** Tables captured before that no longer sync (dropped by the app, or declared snapshot-only). */
  dropped: string[];
}

/** A table as capture last covered it (casa_meta 'captured'): its key columns and columns. */
interface Captured {
  pk: string[];
  cols: string[];
}

/**
 * What the triggers covered before this install: casa_meta 'captured', or
 * (a database captured by casa before that key existed) the layouts named
 * by the insert triggers still there. Null when capture was never installed.
 */
function capturedBefore(db: Db, existing: string[]): Map<string, Captured> | null {
  const saved = meta(db, 'captured');
  if (typeof saved === 'string' && saved !== '') {
    const parsed = JSON.parse(saved) as Record<string, Captured>;
    return new Map(Object.entries(parsed));
  }
  if (existing.length === 0) return null;
  const out = new Map<string, Captured>();
  const layouts = loadLayouts(db);
  const marker = `${FLOOR}, `;
  for (const name of existing.filter((n) => n.startsWith('casa_i_'))) {
    const sql = (db.prepare("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?").pluck().get(name) as string | undefined) ?? '';
    const at = sql.indexOf(marker);
    const id = at < 0 ? NaN : parseInt(sql.slice(at + marker.length), 10);
    const layout = layouts.get(id);
    if (layout) out.set(layout.tbl, { pk: layout.pk, cols: layout.cols });
  }
  return out;
}

/** The value an added column holds in rows written before it existed: its default (an SQL expression), or NULL. */
function columnDefaults(db: Db, table: string): Map<string, string> {
  const rows = db.prepare(`PRAGMA main.table_xinfo(${quoteId(table)})`).all() as { name: string; dflt_value: string | null }[];
  return new Map(rows.map((r) => [r.name, r.dflt_value ?? 'NULL']));
}

/**
 * Logs, as if the triggers had seen them, the writes made while capture did
 * not cover them (docs/MERGE.md §8): every row of a table new to sync that
 * no change ever inserted (no '+' marker), and every value of an added
 * column that differs from the column's default and that no change wrote
 * (no clock). Each log row gets the install's own time (`now`) and today's
 * floor, so stamping gives it an HLC above everything this device has seen
 * and no higher than any write made after it.
 */
function catchUp(db: Db, t: SyncTable, before: Captured | undefined, now: number): CaptureRefresh['caughtUp'][number] | null {
  const added = before ? t.columns.filter((c) => !before.cols.includes(c)) : t.columns;
  if (before && added.length === 0) return null;
  const width = t.pk.length + t.columns.length;
  const vs = Array.from({ length: width }, (_, i) => `v${i}`).join(', ');
  const put = db.prepare(
    `INSERT INTO casa_changes (tbl, op, val, wall, floor, layout, ${vs}) VALUES (?, ?, ?, ?, ${FLOOR}, ?, ${Array(width).fill('?').join(', ')})`,
  );
  const clocks = db.prepare('SELECT col FROM casa_clock WHERE tbl = ? AND pk = ?').pluck();
  const layout = layoutId(t);
  const all = [...t.pk, ...t.columns].map(quoteId).join(', ');
  const defaults = columnDefaults(db, t.name);
  const differs = before ? `(${added.map((c) => `${quoteId(c)} IS NOT (${defaults.get(c) ?? 'NULL'})`).join(' OR ')})` : '1';
  // Read in pages by key (the connection cannot write while a statement iterates).
  const key = t.pk.map(quoteId).join(', ');
  const page = (after: boolean) =>
    db
      .prepare(`SELECT ${all} FROM ${quoteId(t.name)} WHERE ${differs}${after ? ` AND (${key}) > (${t.pk.map(() => '?').join(', ')})` : ''} ORDER BY ${key} LIMIT 1000`)
      .raw(true)
      .safeIntegers(true);
  const first = page(false);
  const next = page(true);
  const p = t.pk.length;
  let rows = 0;
  const each = function* (): Generator<SqlValue[]> {
    let got = first.all() as SqlValue[][];
    while (got.length > 0) {
      yield* got;
      got = next.all(...got[got.length - 1]!.slice(0, p)) as SqlValue[][];
    }
  };
  for (const raw of each()) {
    const values = raw.map(toBytes);
    const have = new Set(clocks.all(t.name, encodePk(values.slice(0, p))) as string[]);
    if (!before) {
      // A table new to sync: the rows no change inserted, whole.
      if (have.has(INSERT_MARKER)) continue;
      put.run(t.name, 'i', null, now, layout, ...values);
      rows++;
      continue;
    }
    // Added columns: the values no change wrote (a NULL in the others, as an update logs them).
    const masks: bigint[] = Array(Math.max(1, Math.ceil(t.columns.length / MASK_BITS))).fill(0n);
    const out: SqlValue[] = values.map((v, i) => (i < p ? v : null));
    let any = false;
    t.columns.forEach((c, i) => {
      if (!added.includes(c) || have.has(c)) return;
      out[p + i] = values[p + i]!;
      masks[Math.floor(i / MASK_BITS)]! |= 1n << BigInt(i % MASK_BITS);
      any = true;
    });
    if (!any) continue;
    put.run(t.name, 'u', masks.length === 1 ? masks[0]! : masks.join(','), now, layout, ...out);
    rows++;
  }
  return rows > 0 ? { tbl: t.name, rows, what: before ? 'columns' : 'rows' } : null;
}

// ---------------------------------------------------------------- detached capture

/**
 * SQLite refuses `ALTER TABLE ... DROP COLUMN` while a trigger reads the
 * column, so an app update that drops a synced column fails while capture is
 * attached. `casa sync --detach` (detachCapture) copies every synced table
 * into a database file of its own (`casa_was_<table>`, columns c0, c1, ...:
 * the key columns, then the columns, values as stored; the synced database
 * does not grow) and drops the triggers; the next install attaches again and
 * logs, against the copy, every write made meanwhile (catchUpDetached): rows
 * that are new, fields that differ, rows that are gone. casa_meta 'detached'
 * records the time, each copy's columns, the copy's path and a random token
 * the copy holds too, so that only that copy is ever read or removed.
 */
const COPY_PREFIX = 'casa_was_';
/** The schema name the copy is attached under while casa reads or writes it. */
const COPY_DB = 'casa_detached';

/** Capture detached by detachCapture: since when (ms), per table the key columns and columns its copy holds, and where the copy is. */
export interface Detached {
  at: number;
  tables: Record<string, Captured>;
  copy: string;
  token: string;
}

function detachedState(db: Db): Detached | null {
  const v = meta(db, 'detached');
  return typeof v === 'string' && v !== '' ? (JSON.parse(v) as Detached) : null;
}

/** When capture was detached (`casa sync --detach`), or null; read-only, for any connection. */
export function detachedSince(db: Db): Detached | null {
  return hasCapture(db) ? detachedState(db) : null;
}

/** Attaches the detach's copy when it is there and holds the detach's token; false (nothing attached) otherwise. */
function attachCopy(db: Db, d: Detached): boolean {
  if (typeof d.copy !== 'string' || !existsSync(d.copy)) return false;
  db.prepare(`ATTACH DATABASE ? AS ${COPY_DB}`).run(d.copy);
  let ours = false;
  try {
    ours = db.prepare(`SELECT token FROM ${COPY_DB}.casa_copy`).pluck().get() === d.token;
  } catch {
    // Not a copy casa made.
  }
  if (!ours) db.exec(`DETACH DATABASE ${COPY_DB}`);
  return ours;
}

/**
 * Detaches capture (docs/MERGE.md §8 "Detached capture"): copies every synced
 * table as it is now into a new database file at `copyPath` (replaced if
 * there), drops casa's triggers and records the detach, in one transaction
 * that holds the database's write lock throughout, so no write falls between
 * the copy and the triggers' going. Capture must be installed and current
 * (refreshCapture first): the copy then holds exactly what the log does not.
 * The next installCapture attaches again. Returns the tables copied and their rows.
 */
export function detachCapture(
  db: Db,
  schema: SyncSchema,
  opts: { now: number; copyPath: string },
): { at: number; tables: { tbl: string; rows: number }[] } {
  const at = Math.trunc(opts.now);
  if (!hasCapture(db) || detachedState(db) !== null) throw new Error('capture is not attached');
  // An empty file is an empty database: ATTACH on a connection opened without SQLITE_OPEN_CREATE cannot make one.
  writeFileSync(opts.copyPath, '', { mode: 0o600 });
  db.prepare(`ATTACH DATABASE ? AS ${COPY_DB}`).run(opts.copyPath);
  let done = false;
  try {
    // Written once and read once: no rollback journal; synced to disk at commit.
    db.pragma(`${COPY_DB}.journal_mode = OFF`);
    db.pragma(`${COPY_DB}.synchronous = FULL`);
    const token = randomBytes(16).toString('hex');
    const out = db
      .transaction(() => {
        db.exec(`CREATE TABLE ${COPY_DB}.casa_copy (token TEXT NOT NULL)`);
        db.prepare(`INSERT INTO ${COPY_DB}.casa_copy (token) VALUES (?)`).run(token);
        const tables: { tbl: string; rows: number }[] = [];
        const record: Record<string, Captured> = {};
        for (const t of schema.tables) {
          const all = [...t.pk, ...t.columns];
          const name = quoteId(COPY_PREFIX + t.name);
          const cs = all.map((_, i) => `c${i}`);
          db.exec(`CREATE TABLE ${COPY_DB}.${name} (k INTEGER PRIMARY KEY, ${cs.join(', ')})`);
          const n = db.prepare(`INSERT INTO ${COPY_DB}.${name} (${cs.join(', ')}) SELECT ${all.map(quoteId).join(', ')} FROM main.${quoteId(t.name)}`).run().changes;
          db.exec(`CREATE INDEX ${COPY_DB}.${quoteId(`${COPY_PREFIX}${t.name}_key`)} ON ${name} (${cs.slice(0, t.pk.length).join(', ')})`);
          record[t.name] = { pk: t.pk, cols: t.columns };
          tables.push({ tbl: t.name, rows: n });
        }
        const triggers = db.prepare("SELECT name FROM main.sqlite_master WHERE type = 'trigger' AND name LIKE 'casa\\_%' ESCAPE '\\'").pluck().all() as string[];
        for (const name of triggers) db.exec(`DROP TRIGGER main.${quoteId(name)}`);
        setMeta(db, 'detached', JSON.stringify({ at, tables: record, copy: opts.copyPath, token } satisfies Detached));
        setMeta(db, 'capture', '');
        return { at, tables };
      })
      .immediate();
    done = true;
    return out;
  } finally {
    db.exec(`DETACH DATABASE ${COPY_DB}`);
    if (!done) rmSync(opts.copyPath, { force: true });
  }
}

/**
 * Logs every write made to `t` while capture was detached, against the copy
 * the detach took (`copy`: its key columns and columns then), in two
 * INSERT ... SELECTs that SQLite runs as joins on the keys (one pass over the
 * table, one over the copy): a row the copy lacks is an insert (the whole
 * row), a field that `IS NOT` the copy's (in binary) an update of it (the
 * change mask as the update trigger makes it), a copy row the table lacks a
 * delete. A column added meanwhile counts as
 * changed where it is not its default (nothing merges while detached, so no
 * clock can have written it). Log rows carry the attach's time `now`, as
 * every catch-up does.
 */
function catchUpDetached(db: Db, t: SyncTable, copy: Captured, now: number): CaptureRefresh['caughtUp'][number] | null {
  const table = `${COPY_DB}.${quoteId(COPY_PREFIX + t.name)}`;
  const p = t.pk.length;
  const width = p + t.columns.length;
  const vs = Array.from({ length: width }, (_, i) => `v${i}`);
  const into = (op: string, val: string, values: string[]) =>
    `INSERT INTO casa_changes (tbl, op, val, wall, floor, layout, ${vs.slice(0, values.length).join(', ')}) ` +
    `SELECT ${quoteStr(t.name)}, ${op}, ${val}, ${Math.trunc(now)}, ${FLOOR}, ${layoutId(t)}, ${values.join(', ')} `;
  const defaults = columnDefaults(db, t.name);
  const col = (c: string) => `t.${quoteId(c)}`;
  const changed = t.columns.map((c) => {
    const at = copy.cols.indexOf(c);
    return at >= 0 ? `(w.c${copy.pk.length + at} IS NOT ${col(c)} COLLATE BINARY)` : `(${col(c)} IS NOT (${defaults.get(c) ?? 'NULL'}))`;
  });
  const same = t.pk.map((c, i) => `w.c${i} IS ${col(c)} COLLATE BINARY`).join(' AND ');
  const from = `FROM main.${quoteId(t.name)} AS t LEFT JOIN ${table} AS w ON ${same}`;
  // Inserts and updates in one pass over the table: a row the copy lacks is an insert, whole.
  const fresh = 'w.k IS NULL';
  const masks: string[] = [];
  for (let at = 0; at < changed.length; at += MASK_BITS) {
    masks.push(`(${changed.slice(at, at + MASK_BITS).map((c, i) => `(${c} << ${i})`).join(' | ')})`);
  }
  const mask = masks.length > 0 ? `CASE WHEN ${fresh} THEN NULL ELSE ${masks.join(" || ',' || ")} END` : 'NULL';
  const values = [...t.pk.map(col), ...t.columns.map((c, i) => `CASE WHEN ${fresh} OR ${changed[i]} THEN ${col(c)} END`)];
  const which = changed.length > 0 ? `${fresh} OR ${changed.join(' OR ')}` : fresh;
  let rows = db.prepare(`${into(`CASE WHEN ${fresh} THEN 'i' ELSE 'u' END`, mask, values)}${from} WHERE ${which}`).run().changes;
  // Through the table's own key index first (its collation), then exactly.
  const there = t.pk.map((c, i) => `${col(c)} IS w.c${i} AND ${col(c)} IS w.c${i} COLLATE BINARY`).join(' AND ');
  const keys = t.pk.map((_, i) => `w.c${i}`);
  rows += db.prepare(`${into("'d'", 'NULL', keys)}FROM ${table} AS w WHERE NOT EXISTS (SELECT 1 FROM main.${quoteId(t.name)} AS t WHERE ${there})`).run().changes;
  return rows > 0 ? { tbl: t.name, rows, what: 'writes' } : null;
}

/**
 * Creates casa's tables and the capture triggers of every synced table.
 * Idempotent; when the schema (or casa's trigger SQL) changed since the last
 * install, every casa trigger is dropped and recreated, and what the app
 * wrote meanwhile that the old triggers could not see is caught up (catchUp),
 * in one transaction. `now` (ms) is the time the catch-up's log rows carry.
 */
export function installCapture(db: Db, schema: SyncSchema, opts: { now?: number } = {}): CaptureRefresh {
  const triggers = new Map<string, string>();
  for (const t of schema.tables) for (const [name, sql] of triggerSql(t)) triggers.set(name, sql);
  const digest = createHash('sha256')
    .update(JSON.stringify([CAPTURE_VERSION, [...triggers.entries()]]))
    .digest('hex')
    .slice(0, 32);
  const width = Math.max(1, ...schema.tables.map((t) => t.pk.length + t.columns.length));
  const now = Math.trunc(opts.now ?? Date.now());
  const refresh: CaptureRefresh = { changed: false, caughtUp: [], rebuilt: [], dropped: [], attached: false };
  const captured = JSON.stringify(Object.fromEntries(schema.tables.map((t): [string, Captured] => [t.name, { pk: t.pk, cols: t.columns }])));
  // A detach's copy is attached around the transaction (SQLite attaches outside one only).
  const detached = hasCapture(db) ? detachedState(db) : null;
  const haveCopy = detached !== null && attachCopy(db, detached);
  const install = db.transaction(() => {
    db.exec(CASA_TABLES);
    const ins = db.prepare('INSERT OR IGNORE INTO casa_meta (key, value) VALUES (?, ?)');
    ins.run('applying', 0);
    ins.run('hlc_floor', ZERO_HLC);
    ins.run('hlc_issued', ZERO_HLC);
    ins.run('fingerprint', '');
    ins.run('capture', '');
    // Every row stamped before this key existed counts as taken (dropLocalChanges).
    db.prepare("INSERT OR IGNORE INTO casa_meta (key, value) SELECT 'log_taken', value FROM casa_meta WHERE key = 'hlc_issued'").run();
    const existing = (
      db.prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'casa\\_%' ESCAPE '\\'").all() as { name: string }[]
    ).map((r) => r.name);
    const same =
      meta(db, 'capture') === digest && existing.length === triggers.size && existing.every((n) => triggers.has(n));
    if (same) {
      if (meta(db, 'captured') !== captured) setMeta(db, 'captured', captured);
      return;
    }
    refresh.changed = true;
    const before = capturedBefore(db, existing);
    for (const name of existing) db.exec(`DROP TRIGGER IF EXISTS ${quoteId(name)}`);
    upgradeLog(db, width);
    // The layouts the log refers to: the new ones, and the old ones while log rows use them.
    const put = db.prepare('INSERT INTO casa_layout (id, tbl, pk, cols) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING');
    const check = db.prepare('SELECT tbl, pk, cols FROM casa_layout WHERE id = ?');
    const ids: number[] = [];
    for (const t of schema.tables) {
      const id = layoutId(t);
      const row = [t.name, JSON.stringify(t.pk), JSON.stringify(t.columns)];
      put.run(id, ...row);
      const got = check.get(id) as { tbl: string; pk: string; cols: string };
      if (got.tbl !== row[0] || got.pk !== row[1] || got.cols !== row[2]) throw new IntegrityError(`casa_layout ${id} names another layout`);
      ids.push(id);
    }
    if (before !== null) {
      for (const t of schema.tables) {
        const was = before.get(t.name);
        // A table whose key changed is another table to sync: its rows are caught up whole.
        const same = was !== undefined && JSON.stringify(was.pk) === JSON.stringify(t.pk) ? was : undefined;
        // Without its copy (lost, or not ours), a detached table is as good as rebuilt: reported, never guessed.
        const copy = haveCopy ? detached!.tables[t.name] : undefined;
        const done =
          copy !== undefined && same !== undefined && JSON.stringify(copy.pk) === JSON.stringify(t.pk)
            ? catchUpDetached(db, t, copy, now)
            : catchUp(db, t, same, now);
        if (was !== undefined && copy === undefined && !existing.includes(`casa_i_${t.name}`)) refresh.rebuilt.push(t.name);
        if (done) refresh.caughtUp.push(done);
      }
      refresh.dropped = [...before.keys()].filter((name) => !schema.tables.some((t) => t.name === name)).sort();
    }
    if (detached !== null) {
      db.prepare("DELETE FROM casa_meta WHERE key = 'detached'").run();
      refresh.attached = true;
      if (!haveCopy) refresh.lostCopy = detached.copy;
    }
    db.prepare(
      `DELETE FROM casa_layout WHERE id NOT IN (${ids.map(() => '?').join(', ') || 'NULL'}) AND NOT EXISTS (SELECT 1 FROM casa_changes WHERE layout = casa_layout.id)`,
    ).run(...ids);
    for (const sql of triggers.values()) db.exec(sql);
    setMeta(db, 'capture', digest);
    setMeta(db, 'captured', captured);
    setMeta(db, 'fingerprint', schema.fingerprint);
    setMeta(db, 'applying', 0);
  });
  try {
    install.immediate();
  } finally {
    if (haveCopy) db.exec(`DETACH DATABASE ${COPY_DB}`);
  }
  // Committed: the copy has served (it is ours: it held the detach's token).
  if (haveCopy) rmSync(detached.copy, { force: true });
  return refresh;
}

// ---------------------------------------------------------------- pk text

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

/** The layouts log rows refer to (casa_layout), by id. */
function loadLayouts(db: Db): Map<number, Layout> {
  const out = new Map<number, Layout>();
  const has = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'casa_layout'").get();
  if (!has) return out;
  for (const r of db.prepare('SELECT id, tbl, pk, cols FROM casa_layout').all() as { id: number; tbl: string; pk: string; cols: string }[]) {
    out.set(r.id, { tbl: r.tbl, pk: JSON.parse(r.pk) as string[], cols: JSON.parse(r.cols) as string[] });
  }
  return out;
}

/** Which columns an update's mask (an integer, or integers as text "m0,m1,...") marks as changed. */
function maskBits(mask: unknown, n: number): boolean[] {
  const parts = typeof mask === 'bigint' || typeof mask === 'number' ? [BigInt(mask)] : typeof mask === 'string' ? mask.split(',').map((m) => BigInt(m)) : null;
  if (parts === null || parts.length !== Math.max(1, Math.ceil(n / MASK_BITS))) throw new IntegrityError('casa_changes: a bad update mask');
  return Array.from({ length: n }, (_, i) => ((parts[Math.floor(i / MASK_BITS)]! >> BigInt(i % MASK_BITS)) & 1n) === 1n);
}

function toLogRow(r: Record<string, unknown>, layouts: Map<number, Layout>): LogRow {
  const row: LogRow = {
    seq: Number(r.seq),
    tbl: r.tbl as string,
    pk: r.pk as string,
    col: (r.col as string | null) ?? null,
    op: r.op as string,
    val: toBytes(r.val as SqlValue),
    fields: null,
    wall: Number.isFinite(Number(r.wall)) ? Math.trunc(Number(r.wall)) : 0,
    floor: (r.floor as string | null) ?? null,
    hlc: (r.hlc as string | null) ?? null,
  };
  if (r.layout === null || r.layout === undefined) {
    // Capture version 1: an update field by field, an insert as a JSON object.
    if (row.col !== null) row.fields = [[row.col, row.val]];
    else if (row.op === 'i' && typeof row.val === 'string') row.fields = parseObject(row.val);
    return row;
  }
  const layout = layouts.get(Number(r.layout));
  if (layout === undefined || layout.tbl !== row.tbl) throw new IntegrityError(`casa_changes row ${row.seq}: unknown layout ${String(r.layout)}`);
  const v = (i: number): SqlValue => {
    const x = r[`v${i}`];
    if (x === undefined) throw new IntegrityError(`casa_changes row ${row.seq}: no column v${i}`);
    return toBytes(x as SqlValue);
  };
  const p = layout.pk.length;
  if (row.pk === null) row.pk = encodePk(layout.pk.map((_, i) => v(i)));
  if (row.op === 'u') {
    const bits = maskBits(r.val, layout.cols.length);
    row.fields = layout.cols.flatMap((c, i): [string, SqlValue][] => (bits[i] ? [[c, v(p + i)]] : []));
  } else if (row.op === 'i' && layout.cols.length > 0) {
    row.fields = layout.cols.map((c, i): [string, SqlValue] => [c, v(p + i)]);
  }
  row.val = null;
  return row;
}

/** Log rows with seq > afterSeq, in seq order. */
export function readLog(db: Db, afterSeq: number, limit: number): LogRow[] {
  anumber(afterSeq, 'afterSeq');
  anumber(limit, 'limit', 1);
  const layouts = loadLayouts(db);
  return safeRows<Record<string, unknown>>(db, 'SELECT * FROM casa_changes WHERE seq > ? ORDER BY seq LIMIT ?', afterSeq, limit).map((r) =>
    toLogRow(r, layouts),
  );
}

/** Local changes not pushed yet (log rows). */
export function pendingCount(db: Db): number {
  if (!hasCapture(db)) return 0;
  return (db.prepare('SELECT count(*) AS n FROM casa_changes').get() as { n: number }).n;
}

/**
 * Forgets pushed log rows: those up to `uptoSeq` that a takeLocalChanges
 * covered. The stamp bound matters once the log was emptied: a seq then comes
 * again (a plain rowid), and a repeated drop (a run killed between dropping and
 * clearing its outbox, finishing the batch again) must not forget rows written
 * since — those are stamped later, above every taken stamp, or not at all.
 */
export function dropLocalChanges(db: Db, uptoSeq: number): void {
  anumber(uptoSeq, 'uptoSeq');
  db.prepare(
    "DELETE FROM casa_changes WHERE seq <= ? AND hlc <= (SELECT value FROM casa_meta WHERE key = 'log_taken')",
  ).run(uptoSeq);
}

/** Empties the log (after a restore: the restored file's log is another device's). */
export function clearLocalLog(db: Db): void {
  db.transaction(() => {
    db.prepare('DELETE FROM casa_changes').run();
    if (detachedState(db) !== null) {
      // Another device's detach (its copy is not here, and never removed from here): the restored rows are the vault's.
      db.prepare("DELETE FROM casa_meta WHERE key = 'detached'").run();
      setMeta(db, 'captured', '');
    }
    db.prepare("UPDATE casa_meta SET value = 0 WHERE key = 'applying'").run();
  }).immediate();
}

function floorState(floor: string | null): HlcState {
  if (floor === null || !isHlc(floor)) return { wall: 0, counter: 0 };
  const h = parseHlc(floor);
  return { wall: h.wall, counter: h.counter };
}

/** The columns a log row writes (null: the whole row, a delete or a set element). */
const columnsOf = (r: LogRow): (string | null)[] => (r.fields === null ? [r.col] : r.fields.map(([c]) => c));

/**
 * True when log row b belongs to the row write of group a (whose columns so
 * far are `cols`): same table, key, op, wall time and floor, no column twice.
 * Capture version 1 logged an update as one row per field; the rule reads
 * those as one write, and gives today's rows the same HLCs it gave those.
 */
function sameWrite(a: LogRow, b: LogRow, cols: Set<string | null>): boolean {
  return (
    a.tbl === b.tbl && a.pk === b.pk && a.op === b.op && a.wall === b.wall && a.floor === b.floor && columnsOf(b).every((c) => !cols.has(c))
  );
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
  const layouts = loadLayouts(db);
  const pks = new Map<string, string>();
  let group: LogRow | null = null;
  let cols = new Set<string | null>();
  let hlc = '';
  let stamped = 0;
  let after = 0;
  outer: for (;;) {
    const page = (fetch.all(after) as Record<string, unknown>[]).map((r) => toLogRow(r, layouts));
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
      for (const c of columnsOf(r)) {
        cols.add(c);
        if (c !== null) clock.run(r.tbl, pk, c, hlc);
      }
      setHlc.run(hlc, pk, r.seq);
      stamped++;
    }
    after = page[page.length - 1]!.seq;
  }
  if (stamped > 0) setMeta(db, 'hlc_issued', formatHlc({ ...issued, deviceId }));
  return issued;
}

/** A stamped log row as changes: one per field it logged (in column order), or one for the whole row. */
function expand(r: LogRow): Change[] {
  if (r.hlc === null) throw new Error('an unstamped log row inside the batch');
  const op = r.op as Change['op'];
  if (r.fields !== null) return r.fields.map(([col, val]) => ({ tbl: r.tbl, pk: r.pk, col, op, val, hlc: r.hlc! }));
  return [{ tbl: r.tbl, pk: r.pk, col: null, op, val: null, hlc: r.hlc }];
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
      const top = rows[rows.length - 1]!.hlc!;
      // The highest stamp a batch covered: what dropLocalChanges may forget.
      const before = meta(db, 'log_taken');
      if (typeof before !== 'string' || before < top) setMeta(db, 'log_taken', top);
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
