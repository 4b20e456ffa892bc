/**
 * The change log read, stamped and taken (docs/MERGE.md §3-§4): the rows of
 * `casa_changes` the capture triggers (capture.ts) write, turned into
 * HLC-stamped changes for the next batch and forgotten once it is pushed.
 *
 * Invariants:
 * - One row write, one HLC (stampLocal): above the floor recorded at write
 *   time and above every HLC stamped here before (casa_meta 'hlc_issued'),
 *   at the write's own wall time when that is higher, so an edit made
 *   offline a week ago keeps its week-old time.
 * - Stamps are stored in the log and recorded as the fields' local clocks in
 *   casa_clock: the same rows give the same changes until they are dropped.
 * - A batch (takeLocalChanges) never splits a row write, and keeps only the
 *   last update of a field.
 * - dropLocalChanges forgets only rows a taken batch covered (seq ≤ uptoSeq
 *   and hlc ≤ casa_meta 'log_taken'): a repeated drop cannot lose a newer write.
 * - Capture version 1 rows (an update as one row per field, an insert's row
 *   as JSON) are still read; the one-write rule groups them as it always did.
 */
import { anumber } from '../crypto/bytes.js';
import { IntegrityError } from '../errors.js';
import { DELETE_MARKER, detachedSince, hasCapture, INSERT_MARKER, type Layout, loadLayouts, MASK_BITS, meta, setMeta } from './capture.js';
import { passVector, VectorStore } from './causal.js';
import { toBytes, type Change, type SqlValue } from './change.js';
import { compareState, formatHlc, isHlc, MAX_WALL, maxState, parseHlc, tick, type HlcState } from './hlc.js';
import { canonicalPk, encodePk, parseObject } from './pk-text.js';

type Db = import('better-sqlite3').Database;

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
  /** The stamping pass's vector (casa_vectors id): what this device had seen when it wrote; null for none. */
  vec: number | null;
}

function safeRows<T>(db: Db, sql: string, ...args: unknown[]): T[] {
  return db.prepare(sql).safeIntegers(true).all(...args) as T[];
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
    vec: r.vec === null || r.vec === undefined ? null : Number(r.vec),
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
    if (detachedSince(db) !== null) {
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
  const setHlc = db.prepare('UPDATE casa_changes SET hlc = ?, pk = ?, vec = ? WHERE seq = ?');
  const put = db.prepare(
    'INSERT INTO casa_clock (tbl, pk, col, hlc, val, vec) VALUES (?, ?, ?, ?, NULL, ?) ' +
      'ON CONFLICT (tbl, pk, col) DO UPDATE SET hlc = excluded.hlc, val = NULL, vec = excluded.vec WHERE excluded.hlc > casa_clock.hlc',
  );
  // Every row this pass stamps was written under what this device knows now (docs/MERGE.md §5a).
  let vec: number | null | undefined;
  const passVec = (): number | null => (vec === undefined ? (vec = new VectorStore(db).intern(passVector(db, deviceId))) : vec);
  const clock = (tbl: string, pk: string, col: string, h: string) => put.run(tbl, pk, col, h, passVec());
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
        if (r.op === 'i') clock(r.tbl, pk, INSERT_MARKER, hlc);
        if (r.op === 'd') clock(r.tbl, pk, DELETE_MARKER, hlc);
      }
      for (const c of columnsOf(r)) {
        cols.add(c);
        if (c !== null) clock(r.tbl, pk, c, hlc);
      }
      setHlc.run(hlc, pk, passVec(), r.seq);
      stamped++;
    }
    after = page[page.length - 1]!.seq;
  }
  if (stamped > 0) {
    const top = formatHlc({ ...issued, deviceId });
    setMeta(db, 'hlc_issued', top);
    db.prepare(
      'INSERT INTO casa_seen (dev, hlc) VALUES (?, ?) ON CONFLICT (dev) DO UPDATE SET hlc = excluded.hlc WHERE excluded.hlc > casa_seen.hlc',
    ).run(deviceId, top);
  }
  return issued;
}

/** A stamped log row as changes: one per field it logged (in column order), or one for the whole row; `seen`, its pass's vector. */
function expand(r: LogRow, seen: string[] | undefined): Change[] {
  if (r.hlc === null) throw new Error('an unstamped log row inside the batch');
  const op = r.op as Change['op'];
  const one = (col: string | null, val: SqlValue): Change =>
    seen === undefined ? { tbl: r.tbl, pk: r.pk, col, op, val, hlc: r.hlc! } : { tbl: r.tbl, pk: r.pk, col, op, val, hlc: r.hlc!, seen };
  if (r.fields !== null) return r.fields.map(([col, val]) => one(col, val));
  return [one(null, null)];
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
      const vectors = new VectorStore(db);
      const all = rows.flatMap((r) => expand(r, vectors.get(r.vec)));
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
