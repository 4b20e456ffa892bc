/**
 * The device-local history index (docs/MERGE.md §9): every change of every
 * changeset batch the relay still keeps, decrypted and checked exactly as
 * sync checks it (checkPulled: epoch mark, AEAD under the claimed identity,
 * header, per-device hash chain, strict decoding; the cursor rules of a
 * pull), kept in CASA_HOME/history.db (0600) so `casa history`, `casa log`
 * and `casa restore --at` fetch only the batches pushed since the last call.
 *
 * One row per change: the batch's cursor, the writer (the HLC's device id),
 * the HLC and its wall time (ms), table, canonical pk text, column, op and
 * the value as SQLite stores it (nothing encoded, as in casa_changes).
 *
 * Invariants:
 * - The index holds exactly the changes of the batches with cursor in
 *   (base, cursor]; `base` is the relay's prunedThrough when the index began
 *   or last had to start over. Rows at or below the relay's prunedThrough
 *   are dropped on every update: the index answers for the relay's window,
 *   no more.
 * - A page of batches is written in one transaction together with the new
 *   cursor and chains, and only if the cursor is still the one the fetch
 *   started from (another casa may have indexed it meanwhile): never twice.
 * - A relay whose head goes behind the index's cursor is a rollback (exit 6);
 *   a batch that fails a check fails the whole update, nothing of its page
 *   written.
 * - The index belongs to one vault: another vault's id wipes it.
 */
import { chmodSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { VaultKeys } from '../crypto/kdf.js';
import { CancelledError, IntegrityError } from '../errors.js';
import type { ChangesetApi } from '../relay/changesets.js';
import type { ChainPoint } from './batch.js';
import { toBytes, type Change, type SqlValue } from './change.js';
import { parseHlc } from './hlc.js';
import { checkPulled, knowsKeyId } from './sync-run.js';

export const HISTORY_FILE = 'history.db';

export function historyPath(home: string): string {
  return join(home, HISTORY_FILE);
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (cursor INTEGER PRIMARY KEY, device TEXT NOT NULL, seq INTEGER NOT NULL, time INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS changes (id INTEGER PRIMARY KEY, cursor INTEGER NOT NULL, device TEXT NOT NULL, wall INTEGER NOT NULL,
  hlc TEXT NOT NULL, tbl TEXT NOT NULL, pk TEXT NOT NULL, col TEXT, op TEXT NOT NULL, val);
CREATE INDEX IF NOT EXISTS changes_row ON changes (tbl, pk, hlc);
CREATE INDEX IF NOT EXISTS changes_field ON changes (tbl, pk, col, hlc);
CREATE INDEX IF NOT EXISTS changes_wall ON changes (wall);
CREATE INDEX IF NOT EXISTS changes_cursor ON changes (cursor);
`;

/** Opens (creating, 0600) the index; `vaultId` another than the one it holds empties it. */
export function openHistory(path: string, vaultId: string): Database.Database {
  const fresh = !existsSync(path);
  const db = new Database(path);
  try {
    if (fresh) chmodSync(path, 0o600);
    db.pragma('busy_timeout = 10000');
    db.pragma('journal_mode = WAL');
    db.exec(SCHEMA);
    db.defaultSafeIntegers(true);
    if (metaOf(db, 'vault') !== vaultId) {
      db.transaction(() => {
        db.exec('DELETE FROM changes; DELETE FROM batches; DELETE FROM meta;');
        setMeta(db, 'vault', vaultId);
      })();
    }
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

function metaOf(db: Database.Database, key: string): unknown {
  const r = db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: unknown } | undefined;
  return typeof r?.value === 'bigint' ? Number(r.value) : r?.value;
}

function setMeta(db: Database.Database, key: string, value: unknown): void {
  db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value as never);
}

interface IndexState {
  /** The last cursor indexed (0: none). */
  cursor: number;
  /** The cursor the index starts after: batches at or below it are not in it. */
  base: number;
  /** Each device's last batch indexed. */
  chains: Record<string, ChainPoint>;
}

function readIndexState(db: Database.Database): IndexState {
  const chains = metaOf(db, 'chains');
  return {
    cursor: Number(metaOf(db, 'cursor') ?? 0),
    base: Number(metaOf(db, 'base') ?? 0),
    chains: typeof chains === 'string' ? (JSON.parse(chains) as Record<string, ChainPoint>) : {},
  };
}

/** The relay's window as the index last saw it. */
export interface HistoryWindow {
  /** Every batch up to this cursor was pruned by the relay. */
  prunedThrough: number;
  /** The relay's head cursor. */
  head: number;
  /**
   * From when the history is whole: the sealing time of the oldest batch the
   * relay keeps, once it has pruned any (older changes may be gone); null
   * while it has pruned none (every change since sync began is there).
   */
  start: number | null;
  /** The oldest change's wall time in the index, null when empty. */
  oldest: number | null;
}

export function historyWindow(db: Database.Database): HistoryWindow {
  const pruned = Number(metaOf(db, 'pruned') ?? 0);
  const first = db.prepare('SELECT min(time) AS t FROM batches').get() as { t: bigint | null };
  const oldest = db.prepare('SELECT min(wall) AS w FROM changes').get() as { w: bigint | null };
  return {
    prunedThrough: pruned,
    head: Number(metaOf(db, 'head') ?? 0),
    start: pruned > 0 && first.t !== null ? Number(first.t) : null,
    oldest: oldest.w === null ? null : Number(oldest.w),
  };
}

export interface UpdateEnv {
  keys: VaultKeys;
  /** The vault's keys again after a batch names an epoch these keys lack (src/keys/open.ts). */
  refreshKeys?: () => Promise<VaultKeys>;
  api: ChangesetApi;
  server: string;
  signal: AbortSignal;
  trace?: (label: string) => void;
}

export interface Updated {
  batches: number;
  changes: number;
  head: number;
  prunedThrough: number;
}

/** Pages asked of the relay at once (its most). */
const PAGE = 500;

/**
 * Brings the index up to the relay's head: pulls the batches after the
 * index's cursor, checks each (checkPulled), and stores their changes.
 */
export async function updateHistory(db: Database.Database, env: UpdateEnv): Promise<Updated> {
  const out: Updated = { batches: 0, changes: 0, head: 0, prunedThrough: 0 };
  const insertBatch = db.prepare('INSERT OR IGNORE INTO batches (cursor, device, seq, time) VALUES (?, ?, ?, ?)');
  const insertChange = db.prepare('INSERT INTO changes (cursor, device, wall, hlc, tbl, pk, col, op, val) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)');
  for (;;) {
    if (env.signal.aborted) throw new CancelledError();
    let st = readIndexState(db);
    const page = await env.api.pull(st.cursor, { limit: PAGE });
    out.head = page.head;
    out.prunedThrough = page.prunedThrough;
    if (page.head < st.cursor) {
      throw new IntegrityError(`the relay's changeset head (${page.head}) is behind what this device's history index holds (${st.cursor})`, {
        code: 'rollback',
        hints: [`the relay at ${env.server} rolled back or lost data; nothing was changed`],
      });
    }
    const startedAt = st.cursor;
    // Pruned past the index's cursor: the batches between are gone; the index starts over after them.
    if (page.prunedThrough > st.cursor) st = { cursor: page.prunedThrough, base: page.prunedThrough, chains: {} };
    const chains = { ...st.chains };
    const rows: { cursor: number; device: string; seq: number; time: number; changes: Change[] }[] = [];
    let cursor = st.cursor;
    for (const cs of page.changesets) {
      if (env.refreshKeys && cs.bytes.length >= 16 && !knowsKeyId(env.keys, cs.bytes)) env.keys = await env.refreshKeys();
      if (cs.cursor <= cursor) {
        throw new IntegrityError(`the relay served changeset ${cs.cursor} out of order`, { hints: [`the relay at ${env.server} may be tampering; nothing was changed`] });
      }
      const { verdict, opened, changes } = checkPulled(env.keys, cs, chains[cs.deviceId] ?? null, st.base > 0, env.server);
      cursor = cs.cursor;
      if (verdict === 'duplicate') continue;
      chains[cs.deviceId] = { seq: cs.seq, hash: opened.hash };
      rows.push({ cursor: cs.cursor, device: cs.deviceId, seq: cs.seq, time: opened.header.time, changes });
    }
    const wrote = db.transaction(() => {
      if (Number(metaOf(db, 'cursor') ?? 0) !== startedAt) return false; // another casa indexed this page meanwhile
      for (const r of rows) {
        insertBatch.run(r.cursor, r.device, r.seq, r.time);
        for (const c of r.changes) {
          const h = parseHlc(c.hlc);
          insertChange.run(r.cursor, h.deviceId, h.wall, c.hlc, c.tbl, c.pk, c.col, c.op, c.val as never);
        }
      }
      // What the relay pruned leaves the index too: it answers for the relay's window.
      db.prepare('DELETE FROM changes WHERE cursor <= ?').run(page.prunedThrough);
      db.prepare('DELETE FROM batches WHERE cursor <= ?').run(page.prunedThrough);
      setMeta(db, 'cursor', cursor);
      setMeta(db, 'base', st.base);
      setMeta(db, 'chains', JSON.stringify(chains));
      setMeta(db, 'head', page.head);
      setMeta(db, 'pruned', page.prunedThrough);
      return true;
    })();
    if (wrote) {
      out.batches += rows.length;
      for (const r of rows) out.changes += r.changes.length;
    }
    env.trace?.(`history indexed through ${cursor}`);
    if (!page.more || page.changesets.length === 0) break;
  }
  return out;
}

/** One change as the index holds it. */
export interface Entry {
  cursor: number;
  /** The writer: the HLC's device id. */
  device: string;
  wall: number;
  hlc: string;
  tbl: string;
  pk: string;
  col: string | null;
  op: 'i' | 'u' | 'd';
  val: SqlValue;
}

function entryOf(r: Record<string, unknown>): Entry {
  return {
    cursor: Number(r.cursor),
    device: r.device as string,
    wall: Number(r.wall),
    hlc: r.hlc as string,
    tbl: r.tbl as string,
    pk: r.pk as string,
    col: (r.col as string | null) ?? null,
    op: r.op as Entry['op'],
    val: toBytes(r.val as SqlValue),
  };
}

/** The tables the index has changes of. */
export function indexedTables(db: Database.Database): string[] {
  return (db.prepare('SELECT DISTINCT tbl FROM changes ORDER BY tbl').all() as { tbl: string }[]).map((r) => r.tbl);
}

/** Whether the index holds any change of row `pk` of `tbl`. */
export function hasRow(db: Database.Database, tbl: string, pk: string): boolean {
  return db.prepare('SELECT 1 FROM changes WHERE tbl = ? AND pk = ? LIMIT 1').get(tbl, pk) !== undefined;
}

/** Whether the index holds any change of column `col` of `tbl`. */
export function hasColumn(db: Database.Database, tbl: string, col: string): boolean {
  return db.prepare('SELECT 1 FROM changes WHERE tbl = ? AND col = ? LIMIT 1').get(tbl, col) !== undefined;
}

/**
 * Every change of one row, oldest first (HLC order; an insert's fields in
 * column order); with `col`, that field's changes and the row's deletes
 * (a delete ends every field).
 */
export function rowHistory(db: Database.Database, tbl: string, pk: string, col: string | null): Entry[] {
  const rows =
    col === null
      ? db.prepare('SELECT * FROM changes WHERE tbl = ? AND pk = ? ORDER BY hlc, id').all(tbl, pk)
      : db.prepare("SELECT * FROM changes WHERE tbl = ? AND pk = ? AND (col = ? OR op = 'd') ORDER BY hlc, id").all(tbl, pk, col);
  return (rows as Record<string, unknown>[]).map(entryOf);
}

/** What a field held just before a change. */
export type Before =
  | { kind: 'value'; value: SqlValue }
  /** The row did not exist: never inserted within the window, or deleted. */
  | { kind: 'absent' }
  /** The value predates the window: no earlier change of the field is in the index. */
  | { kind: 'unknown' };

export interface LogEntry extends Entry {
  before: Before;
}

export interface LogFilter {
  /** Changes with wall ≥ since. */
  since?: number;
  /** Writers' device ids. */
  devices?: string[];
  table?: string;
  limit?: number;
}

/**
 * The changes matching `f`, newest first (HLC order, descending; an
 * insert's fields in column order), each with the field's value before it:
 * the field's previous change in HLC order, `absent` when the row's newest
 * earlier event was a delete (or, for an insert, when nothing earlier is
 * known), `unknown` when no earlier change of the field is in the index.
 * One statement, streamed.
 */
export function logEntries(db: Database.Database, f: LogFilter): LogEntry[] {
  return [...logStream(db, f)];
}

/** logEntries one at a time, holding none of them: `casa log` prints 100,000 changes without keeping them. */
export function* logStream(db: Database.Database, f: LogFilter): Generator<LogEntry> {
  const where: string[] = [];
  const args: unknown[] = [];
  if (f.since !== undefined) {
    where.push('c.wall >= ?');
    args.push(f.since);
  }
  if (f.table !== undefined) {
    where.push('c.tbl = ?');
    args.push(f.table);
  }
  if (f.devices !== undefined) {
    where.push(`c.device IN (${f.devices.map(() => '?').join(',') || 'NULL'})`);
    args.push(...f.devices);
  }
  const cond = where.length > 0 ? `WHERE ${where.join(' AND ')}` : '';
  const limit = f.limit === undefined ? '' : `LIMIT ${Math.max(0, Math.floor(f.limit))}`;
  // Per change picked, by index seeks ((tbl, pk, col, hlc) and (tbl, pk, hlc)): the field's previous
  // change and the row's last delete before it. Costs what is picked, not the whole window.
  const stmt = db.prepare(`
    SELECT c.cursor, c.device, c.wall, c.hlc, c.tbl, c.pk, c.col, c.op, c.val, p.val, p.hlc,
      (SELECT max(d.hlc) FROM changes d WHERE d.tbl = c.tbl AND d.pk = c.pk AND d.op = 'd' AND d.hlc < c.hlc)
    FROM changes c LEFT JOIN changes p ON p.id = (
      SELECT q.id FROM changes q WHERE q.tbl = c.tbl AND q.pk = c.pk AND q.col IS c.col AND (q.hlc < c.hlc OR (q.hlc = c.hlc AND q.id < c.id))
      ORDER BY q.hlc DESC, q.id DESC LIMIT 1)
    ${cond} ORDER BY c.hlc DESC, c.id ${limit}`);
  for (const r of stmt.raw().iterate(...args) as Iterable<unknown[]>) {
    const [cursor, device, wall, hlc, tbl, pk, col, op, val, prevVal, prevHlc, delHlc] = r as [bigint, string, bigint, string, string, string, string | null, Entry['op'], SqlValue, SqlValue, string | null, string | null];
    let before: Before;
    if (op === 'd') before = { kind: 'value', value: null };
    else if (delHlc !== null && (prevHlc === null || prevHlc < delHlc)) before = { kind: 'absent' };
    else if (prevHlc !== null && col !== null) before = { kind: 'value', value: toBytes(prevVal) };
    else before = op === 'i' ? { kind: 'absent' } : { kind: 'unknown' };
    yield { cursor: Number(cursor), device, wall: Number(wall), hlc, tbl, pk, col, op, val: toBytes(val), before };
  }
}

/**
 * The changes of the batches after cursor `after` written at or before
 * `upto` (HLC wall time), as Changes to merge, `limit` at a time
 * (applyRemote is order-free, so a restore may apply them in pieces).
 */
export function* changesAfter(db: Database.Database, after: number, upto: number, limit: number): Generator<Change[]> {
  const stmt = db.prepare('SELECT id, tbl, pk, col, op, val, hlc FROM changes WHERE cursor > ? AND wall <= ? AND id > ? ORDER BY id LIMIT ?');
  let last = 0n;
  for (;;) {
    const rows = stmt.all(after, upto, last, limit) as { id: bigint; tbl: string; pk: string; col: string | null; op: Change['op']; val: SqlValue; hlc: string }[];
    if (rows.length === 0) return;
    last = rows[rows.length - 1]!.id;
    yield rows.map((r) => ({ tbl: r.tbl, pk: r.pk, col: r.col, op: r.op, val: toBytes(r.val), hlc: r.hlc }));
  }
}
