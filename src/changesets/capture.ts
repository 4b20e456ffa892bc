/**
 * Change capture (docs/MERGE.md §3, §8): plain-SQL
 * triggers on the synced tables log every row write (an insert's row, an
 * update's changed fields, a delete's key) as one row of `casa_changes`,
 * whatever program writes (the Casaconomy app, the sqlite3 shell) and whether
 * casa runs or not: no application-defined functions. Each log row keeps the
 * write's wall time from SQLite's own clock and the device's HLC floor at
 * write time; `takeLocalChanges` (change-log.ts) turns rows into HLC-stamped
 * changes, so an edit made offline a week ago keeps its week-old time.
 *
 * casa's tables, all `casa_*` and never synced themselves:
 * - casa_changes: the local change log (seq order = local write order);
 * - casa_layout: which columns a log row's values v0, v1, ... are;
 * - casa_meta: key/value: 'applying' (1 only inside casa's apply
 *   transaction: the triggers stay quiet, so applied changes do not echo),
 *   'hlc_floor' (highest HLC received), 'hlc_issued' (highest HLC stamped
 *   here), 'log_taken' (highest HLC a taken batch covered: dropLocalChanges),
 *   'fingerprint' and 'capture' (what the triggers were made from),
 *   'captured' (the tables and columns they cover), 'detached' (detachCapture);
 * - casa_clock: the winning HLC of each field and the row markers (merge.ts);
 * - casa_pending: received changes for columns or tables this database does
 *   not have yet (merge.ts);
 * - casa_conflicts: the merge decisions (merge.ts);
 * - casa_seen, casa_vectors: what each write had seen (causal.ts).
 *
 * Invariants:
 * - The trigger SQL is a function of the synced schema alone (a layout's id
 *   is a hash of it), so every device with the same schema logs alike.
 * - installCapture is idempotent; when the triggers change it drops and
 *   remakes them and catches up what the old ones could not see, in one
 *   transaction: no write falls between two sets of triggers unlogged.
 * - While capture is detached (detachCapture, docs/MERGE.md §8 "Detached
 *   capture"), the detach's copy holds exactly what the log does not; only a
 *   copy holding the detach's token is ever read or removed.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { IntegrityError } from '../errors.js';
import { ensureCausal } from './causal.js';
import { toBytes, type SqlValue } from './change.js';
import { ZERO_HLC } from './hlc.js';
import { encodePk } from './pk-text.js';
import { quoteId, type SyncSchema, type SyncTable } from './rules.js';

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
  seq INTEGER PRIMARY KEY, tbl TEXT, pk TEXT, col TEXT, op TEXT, val, wall INTEGER, floor TEXT, hlc TEXT, layout INTEGER, vec INTEGER);`;

const CASA_TABLES = `
CREATE TABLE IF NOT EXISTS casa_meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
${logTable('casa_changes')}
CREATE TABLE IF NOT EXISTS casa_layout (id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, pk TEXT NOT NULL, cols TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS casa_clock (
  tbl TEXT NOT NULL, pk TEXT NOT NULL, col TEXT NOT NULL, hlc TEXT NOT NULL, val, vec INTEGER,
  PRIMARY KEY (tbl, pk, col)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS casa_pending (
  id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, pk TEXT NOT NULL, col TEXT, op TEXT NOT NULL, val, hlc TEXT NOT NULL, vec INTEGER);
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
export interface Layout {
  tbl: string;
  pk: string[];
  cols: string[];
}

/** A table's layout id: a hash of the layout, so that the trigger SQL is a function of the schema alone. */
function layoutId(t: SyncTable): number {
  const h = createHash('sha256').update(JSON.stringify([t.name, t.pk, t.columns])).digest('hex');
  return parseInt(h.slice(0, 12), 16);
}

/** The layouts log rows refer to (casa_layout), by id. */
export function loadLayouts(db: Db): Map<number, Layout> {
  const out = new Map<number, Layout>();
  const has = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'casa_layout'").get();
  if (!has) return out;
  for (const r of db.prepare('SELECT id, tbl, pk, cols FROM casa_layout').all() as { id: number; tbl: string; pk: string; cols: string }[]) {
    out.set(r.id, { tbl: r.tbl, pk: JSON.parse(r.pk) as string[], cols: JSON.parse(r.cols) as string[] });
  }
  return out;
}

/** How many bits of a change mask one integer holds (an update of a wider table has several, as text "m0,m1,..."). */
export const MASK_BITS = 62;

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

/** A casa_meta value (undefined when the key is not there). */
export function meta(db: Db, key: string): unknown {
  return (db.prepare('SELECT value FROM casa_meta WHERE key = ?').get(key) as { value: unknown } | undefined)?.value;
}

/** Sets a casa_meta value. */
export function setMeta(db: Db, key: string, value: unknown): void {
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
    ensureCausal(db);
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
