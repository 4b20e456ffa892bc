/**
 * Merge (docs/MERGE.md §4-§5): applies remote changes to the
 * database in one SQLite transaction, deterministically, so that the same
 * set of changes in any order, any number of times, gives identical synced
 * tables on every device (the state is a function of the set of changes).
 *
 * Rules (HLC order is the total order of src/changesets/hlc.ts; a missing clock is
 * the baseline, older than any change):
 * - Fields: last writer wins per field by HLC. A write is kept iff its HLC is
 *   above the field's clock and above the row's newest delete.
 * - Rows: present iff the newest insert HLC is above the newest delete HLC
 *   (a row nobody inserted or deleted since the baseline stays as it is).
 * - DELETE VS UPDATE: a delete wins over updates of the row whatever their
 *   HLCs: an update never brings a deleted row back. Only an insert of the
 *   key with an HLC above the delete does, with the fields it carries except
 *   those whose clock is newer: updates newer than the delete that arrived
 *   while the row was gone are kept (their values held in casa_clock.val)
 *   and win over the re-insert's older fields. Columns the re-insert does
 *   not carry and nothing newer than the delete wrote get their default.
 * - Same key inserted on two devices: merged field by field, as above.
 * - Sets (link tables): an element is present iff its newest add is above
 *   its newest remove (LWW element set), i.e. the row rule without fields.
 * - A change for a table or column this database does not have is kept in
 *   casa_pending and applied once the schema has it (applyPending, run first
 *   by every applyRemote).
 * Every decision where two devices' different values met is written to
 * casa_conflicts (rules 'lww', 'delete-wins', 'set-lww', 'reinsert'); the
 * winner is the same everywhere, the list of decisions a device saw depends
 * on the order changes reached it. ("Rule N" in the comments below is
 * item N of docs/MERGE.md §5.)
 *
 * Foreign keys are off while applying (PRAGMA foreign_keys cannot change
 * inside a transaction, so it is switched around it and restored): the
 * result must not depend on the order rows arrive in, and an ON DELETE
 * CASCADE must not remove rows without a change that says so. Concurrent
 * edits can thus leave a row pointing at a deleted parent, the same on every
 * device.
 */
import type { Database, Statement } from 'better-sqlite3';
import { FailureError } from '../errors.js';
import { DELETE_MARKER, INSERT_MARKER } from './capture.js';
import { covers, Knowledge, pruneVectors, VectorStore } from './causal.js';
import { type Change, ChangeFormatError, type SqlValue } from './change.js';
import { checkChange } from './change-codec.js';
import { stampLocal } from './change-log.js';
import { decodePk } from './pk-text.js';
import { isDeviceId } from '../protocol/ids.js';
import { ClockSkewError, MAX_SKEW_MS, parseHlc } from './hlc.js';
import { quoteId, type SyncSchema, type SyncTable } from './rules.js';

export interface ApplyOptions {
  /** This device's time, ms (corrected by the relay's offset when known). */
  now: number;
  maxSkewMs?: number;
  /** Stamps this device's unpushed log rows before merging (16 hex). */
  localDeviceId: string;
}

export interface ApplyResult {
  /** Changes that moved a field or a row marker. */
  applied: number;
  /** Duplicates and changes that lost. */
  ignored: number;
  /** New rows in casa_conflicts. */
  conflicts: number;
  /** Changes kept in casa_pending (unknown table or column). */
  pending: number;
}

export type ConflictRule = 'lww' | 'delete-wins' | 'set-lww' | 'reinsert';

export interface ConflictRow {
  id: number;
  tbl: string;
  pk: string;
  /** null: the row (or set element) itself. */
  col: string | null;
  local_val: SqlValue;
  local_hlc: string | null;
  remote_val: SqlValue;
  remote_hlc: string;
  winner: 'local' | 'remote';
  rule: ConflictRule;
  /** ms, the applying device's `now`. */
  decided_at: number;
}


/** Equal as SQLite values: same storage class and same value (blobs byte for byte). */
export function sameValue(a: SqlValue, b: SqlValue): boolean {
  if (a instanceof Uint8Array || b instanceof Uint8Array) {
    if (!(a instanceof Uint8Array && b instanceof Uint8Array) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }
  if (typeof a === 'number' && typeof b === 'number') return Object.is(a, b) || a === b;
  return a === b;
}

const device = (hlc: string): string => hlc.slice(16);

// ---------------------------------------------------------------- prepared statements

interface TableOps {
  t: SyncTable;
  index: Map<string, number>;
  select: Statement;
  del: Statement;
  updates: Map<string, Statement>;
  inserts: Map<string, Statement>;
}

interface Prepared {
  fingerprint: string;
  tables: Map<string, TableOps>;
  clockLoad: Statement;
  /** clockPuts[n]: upsert of n clock entries. */
  clockPuts: Statement[];
  pendingPut: Statement;
  conflictPut: Statement;
}

const cache = new WeakMap<Database, Prepared>();

function prepare(db: Database, schema: SyncSchema): Prepared {
  const hit = cache.get(db);
  if (hit && hit.fingerprint === schema.fingerprint) return hit;
  const tables = new Map<string, TableOps>();
  for (const t of schema.tables) {
    const where = t.pk.map((c) => `${quoteId(c)} = ?`).join(' AND ');
    const cols = t.columns.length > 0 ? t.columns.map(quoteId).join(', ') : '1';
    tables.set(t.name, {
      t,
      index: new Map(t.columns.map((c, k) => [c, k])),
      select: db.prepare(`SELECT ${cols} FROM ${quoteId(t.name)} WHERE ${where}`).raw(true).safeIntegers(true),
      del: db.prepare(`DELETE FROM ${quoteId(t.name)} WHERE ${where}`),
      updates: new Map(),
      inserts: new Map(),
    });
  }
  const p: Prepared = {
    fingerprint: schema.fingerprint,
    tables,
    clockLoad: db.prepare('SELECT col, hlc, val, vec FROM casa_clock WHERE tbl = ? AND pk = ?').raw(true).safeIntegers(true),
    clockPuts: [],
    pendingPut: db.prepare('INSERT OR IGNORE INTO casa_pending (tbl, pk, col, op, val, hlc, vec) VALUES (?, ?, ?, ?, ?, ?, ?)'),
    conflictPut: db.prepare(
      'INSERT OR IGNORE INTO casa_conflicts (tbl, pk, col, local_val, local_hlc, remote_val, remote_hlc, winner, rule, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    ),
  };
  cache.set(db, p);
  return p;
}

/** `UPDATE ... SET` the columns at indexes `cols` (then the key), prepared once per column list. */
function updateStmt(db: Database, ops: TableOps, cols: number[]): Statement {
  const key = cols.join(',');
  let s = ops.updates.get(key);
  if (!s) {
    const set = cols.map((k) => `${quoteId(ops.t.columns[k]!)} = ?`).join(', ');
    const where = ops.t.pk.map((c) => `${quoteId(c)} = ?`).join(' AND ');
    s = db.prepare(`UPDATE ${quoteId(ops.t.name)} SET ${set} WHERE ${where}`);
    ops.updates.set(key, s);
  }
  return s;
}

/** `INSERT` of the key and the columns at indexes `cols` (the rest take their default), prepared once per column list. */
function insertStmt(db: Database, ops: TableOps, cols: number[]): Statement {
  const key = cols.join(',');
  let s = ops.inserts.get(key);
  if (!s) {
    const names = [...ops.t.pk, ...cols.map((k) => ops.t.columns[k]!)];
    s = db.prepare(
      `INSERT INTO ${quoteId(ops.t.name)} (${names.map(quoteId).join(', ')}) VALUES (${names.map(() => '?').join(', ')})`,
    );
    ops.inserts.set(key, s);
  }
  return s;
}

// ---------------------------------------------------------------- the merge

/** A casa_clock entry of a row: a column, or the '+' / '-' marker, its HLC, its held value and the vector of its write (casa_vectors id). */
type ClockPut = [col: string, hlc: string, val: SqlValue, vec: number | null];

const vecId = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

/** A change of the row's markers rather than of one field: a delete, a row insert, or any insert into a set. */
function isMarkerChange(c: Change, t: SyncTable): boolean {
  return c.op === 'd' || (c.op === 'i' && c.col === null) || (c.op === 'i' && t.kind === 'set');
}

/**
 * One row (or set element) while its changes merge: what the table and
 * casa_clock held before, and where this call's changes have moved it. ''
 * is the baseline HLC, older than every change (docs/MERGE.md §5). Columns
 * are by index in the table's synced columns.
 */
class RowMerge {
  /** Whether the table had the row before this call. */
  readonly wasPresent: boolean;
  /** The row's values as the table held them (when it was present). */
  readonly stored: SqlValue[] | undefined;
  /** Per column: the value casa_clock holds for a field written while the row was gone (else null). */
  readonly heldValue: SqlValue[];
  /** The newest insert ('+') and delete ('-') HLCs: as loaded, then as the changes move them. */
  insertHlc = '';
  deleteHlc = '';
  /** The vectors (casa_vectors ids) of the writes that set the markers, as the changes move them. */
  insertVec: number | null = null;
  deleteVec: number | null = null;
  readonly insertHlcBefore: string;
  readonly deleteHlcBefore: string;
  /** Per column: the field's clock, as the changes move it; and as loaded. */
  readonly fieldHlc: string[];
  readonly fieldHlcBefore: string[];
  /** Per column: the vector (casa_vectors id) of the write that set the field's clock. */
  readonly fieldVec: (number | null)[];
  /** Per column: whether a change of this call won the field, and with which value. */
  readonly won: boolean[];
  readonly wonValue: SqlValue[];

  constructor(ops: TableOps, stored: SqlValue[] | undefined, clocks: ClockPut[]) {
    const n = ops.t.columns.length;
    this.stored = stored;
    this.wasPresent = stored !== undefined;
    this.fieldHlc = new Array<string>(n).fill('');
    this.heldValue = new Array<SqlValue>(n).fill(null);
    this.fieldVec = new Array<number | null>(n).fill(null);
    for (const [col, hlc, val, vec] of clocks) {
      if (col === INSERT_MARKER) {
        this.insertHlc = hlc;
        this.insertVec = vecId(vec);
      } else if (col === DELETE_MARKER) {
        this.deleteHlc = hlc;
        this.deleteVec = vecId(vec);
      } else {
        const k = ops.index.get(col);
        if (k !== undefined) {
          this.fieldHlc[k] = hlc;
          this.heldValue[k] = val;
          this.fieldVec[k] = vecId(vec);
        }
      }
    }
    this.insertHlcBefore = this.insertHlc;
    this.deleteHlcBefore = this.deleteHlc;
    this.fieldHlcBefore = this.fieldHlc.slice();
    this.won = new Array<boolean>(n).fill(false);
    this.wonValue = new Array<SqlValue>(n).fill(null);
  }

  /** Present iff the newest insert is above the newest delete; with neither marker, as the table has it (rule 2). */
  isPresent(): boolean {
    return this.insertHlc === '' && this.deleteHlc === '' ? this.wasPresent : this.insertHlc > this.deleteHlc;
  }

  /** The field's current value, as far as this device knows it: won in this call, stored, or held. */
  valueOf(k: number): SqlValue {
    return this.won[k] ? this.wonValue[k]! : this.wasPresent ? this.stored![k]! : this.heldValue[k]!;
  }

  /** casa_clock entries for the markers the changes moved. */
  markerPuts(): ClockPut[] {
    const puts: ClockPut[] = [];
    if (this.insertHlc !== this.insertHlcBefore) puts.push([INSERT_MARKER, this.insertHlc, null, this.insertVec]);
    if (this.deleteHlc !== this.deleteHlcBefore) puts.push([DELETE_MARKER, this.deleteHlc, null, this.deleteVec]);
    return puts;
  }
}

class Applier {
  readonly result: ApplyResult = { applied: 0, ignored: 0, conflicts: 0, pending: 0 };
  private readonly vectors: VectorStore;

  constructor(
    private readonly db: Database,
    private readonly p: Prepared,
    private readonly now: number,
  ) {
    this.vectors = new VectorStore(db);
  }

  /**
   * Whether two writes of one field or marker were concurrent (docs/MERGE.md
   * §5a): neither writer had seen the other's write. The local side is the
   * clock `localHlc` with its vector (null: unknown); the remote, change c
   * with what it had seen (none: a batch from before vectors). Only decides
   * whether a decision is recorded, never who wins.
   */
  private concurrent(localHlc: string, localVec: number | null, c: Change): boolean {
    return !covers(c.seen, localHlc) && !covers(this.vectors.get(localVec), c.hlc);
  }

  private conflict(
    tbl: string,
    pk: string,
    col: string | null,
    localVal: SqlValue,
    localHlc: string | null,
    remoteVal: SqlValue,
    remoteHlc: string,
    winner: 'local' | 'remote',
    rule: ConflictRule,
  ): void {
    const r = this.p.conflictPut.run(tbl, pk, col, localVal, localHlc, remoteVal, remoteHlc, winner, rule, this.now);
    this.result.conflicts += r.changes;
  }

  private toPending(c: Change): void {
    this.p.pendingPut.run(c.tbl, c.pk, c.col, c.op, c.val, c.hlc, this.vectors.intern(c.seen));
    this.result.pending++;
  }

  /** True when the change can be applied with this schema (else it waits in casa_pending). */
  applicable(c: Change): boolean {
    const ops = this.p.tables.get(c.tbl);
    if (!ops) return false;
    if (c.col !== null && !ops.index.has(c.col)) return false;
    return decodePk(c.pk).length === ops.t.pk.length;
  }

  /** Applies changes; consecutive changes of one row are merged together (one read, one write). */
  run(changes: Change[]): void {
    let i = 0;
    while (i < changes.length) {
      const c = changes[i]!;
      let j = i + 1;
      while (j < changes.length && changes[j]!.pk === c.pk && changes[j]!.tbl === c.tbl) j++;
      this.row(changes, i, j);
      i = j;
    }
  }

  /**
   * Merges the changes [from, to) of one row (docs/MERGE.md §5): the row and
   * its clocks loaded, each change applied to them in memory, the
   * delete-vs-update decisions audited, then the table and casa_clock
   * written once. A row of a table or key width this schema does not have
   * waits in casa_pending.
   */
  private row(changes: Change[], from: number, to: number): void {
    const { tbl, pk } = changes[from]!;
    const ops = this.p.tables.get(tbl);
    const key = decodePk(pk);
    if (!ops || key.length !== ops.t.pk.length) {
      for (let i = from; i < to; i++) this.toPending(changes[i]!);
      return;
    }
    const clocks = this.p.clockLoad.all(tbl, pk) as ClockPut[];
    if (clocks.length === 0 && this.firstUpdates(ops, changes, from, to, key)) return;
    const row = new RowMerge(ops, ops.select.get(...key) as SqlValue[] | undefined, clocks);

    for (let i = from; i < to; i++) {
      const c = changes[i]!;
      if (isMarkerChange(c, ops.t)) this.applyMarker(ops.t, pk, row, c);
      else this.applyField(ops, pk, row, c);
    }

    const present = row.isPresent();
    const puts = row.markerPuts();
    if (ops.t.kind === 'lww') {
      this.auditDeleteVsUpdate(ops.t, pk, row, present);
      if (present && row.wasPresent && row.deleteHlc === row.deleteHlcBefore) this.updateInPlace(ops, key, row, puts);
      else if (present) this.materialise(ops, key, row, puts);
      else this.keepWhileAbsent(ops, key, row, puts);
    } else if (present !== row.wasPresent) {
      // A set element: the row itself is the element (docs/MERGE.md §5, rule 5).
      if (present) insertStmt(this.db, ops, []).run(...key);
      else ops.del.run(...key);
    }
    this.putClocks(tbl, pk, puts);
  }

  /**
   * A change of the row's '+' or '-' marker: a delete, a row insert, or a
   * set element's add (rules 2 and 5). The newest HLC wins; a set element's
   * add or remove meeting the other from another device is audited first.
   */
  private applyMarker(t: SyncTable, pk: string, row: RowMerge, c: Change): void {
    if (c.col !== null) {
      this.toPending(c);
      return;
    }
    if (t.kind === 'set') this.setDecision(t, pk, c, row);
    const marker = c.op === 'd' ? row.deleteHlc : row.insertHlc;
    if (c.hlc > marker) {
      if (c.op === 'd') {
        row.deleteHlc = c.hlc;
        row.deleteVec = this.vectors.intern(c.seen);
      } else {
        row.insertHlc = c.hlc;
        row.insertVec = this.vectors.intern(c.seen);
      }
      this.result.applied++;
    } else this.result.ignored++;
  }

  /**
   * A field write ('u', or one column of an insert, which also moves the '+'
   * marker (rule 1). Meeting another device's different value written
   * without seeing this one, or this one written without seeing it, is
   * audited ('lww'), whichever wins (§5a).
   */
  private applyField(ops: TableOps, pk: string, row: RowMerge, c: Change): void {
    let movedInsert = false;
    if (c.op === 'i' && c.hlc > row.insertHlc) {
      row.insertHlc = c.hlc;
      row.insertVec = this.vectors.intern(c.seen);
      movedInsert = true;
    }
    const k = c.col === null ? undefined : ops.index.get(c.col);
    if (k === undefined) {
      this.toPending(c);
      return;
    }
    const localHlc = row.fieldHlc[k]!;
    const wins = c.hlc > localHlc && c.hlc > row.deleteHlc;
    if (localHlc !== '' && localHlc !== c.hlc && device(localHlc) !== device(c.hlc) && localHlc > row.deleteHlc) {
      const localVal = row.valueOf(k);
      if (!sameValue(localVal, c.val) && this.concurrent(localHlc, row.fieldVec[k]!, c)) {
        this.conflict(ops.t.name, pk, c.col, localVal, localHlc, c.val, c.hlc, wins ? 'remote' : 'local', 'lww');
      }
    }
    if (wins) {
      row.fieldHlc[k] = c.hlc;
      row.fieldVec[k] = this.vectors.intern(c.seen);
      row.wonValue[k] = c.val;
      row.won[k] = true;
    }
    if (wins || movedInsert) this.result.applied++;
    else this.result.ignored++;
  }

  /**
   * The delete-vs-update and re-insert decisions of rule 3, audited: a
   * delete from this call removed a row with a newer field update (winner
   * remote); an update from this call newer than the row's delete stays
   * deleted (winner local); an insert newer than another device's delete
   * brought the row back.
   */
  private auditDeleteVsUpdate(t: SyncTable, pk: string, row: RowMerge, present: boolean): void {
    const del = row.deleteHlc;
    if (row.wasPresent && !present && del !== row.deleteHlcBefore) {
      for (let k = 0; k < t.columns.length; k++) {
        const h = row.fieldHlcBefore[k]!;
        if (h > del && device(h) !== device(del)) this.conflict(t.name, pk, t.columns[k]!, row.stored![k]!, h, null, del, 'remote', 'delete-wins');
      }
    }
    if (!present && del !== '') {
      for (let k = 0; k < t.columns.length; k++) {
        const h = row.fieldHlc[k]!;
        if (row.won[k] && h > del && device(h) !== device(del)) {
          this.conflict(t.name, pk, t.columns[k]!, null, del, row.wonValue[k]!, h, 'local', 'delete-wins');
        }
      }
    }
    // A key inserted again by a device that had seen it deleted is no conflict (§5a).
    const seenDelete = covers(this.vectors.get(row.insertVec), del);
    if (!row.wasPresent && present && row.deleteHlcBefore !== '' && device(del) !== device(row.insertHlc) && !seenDelete) {
      this.conflict(t.name, pk, null, null, del, null, row.insertHlc, 'remote', 'reinsert');
    }
  }

  /** A row that stays present with no new delete: the fields that won, in one UPDATE. */
  private updateInPlace(ops: TableOps, key: SqlValue[], row: RowMerge, puts: ClockPut[]): void {
    const wonCols: number[] = [];
    for (let k = 0; k < ops.t.columns.length; k++) {
      if (row.won[k]) {
        wonCols.push(k);
        puts.push([ops.t.columns[k]!, row.fieldHlc[k]!, null, row.fieldVec[k]!]);
      }
    }
    if (wonCols.length > 0) updateStmt(this.db, ops, wonCols).run(...wonCols.map((k) => row.wonValue[k]!), ...key);
  }

  /**
   * A row (re)inserted, or present across a delete it outlived: written
   * whole, with every field newer than the newest delete (a held value wins
   * over an older re-insert's) and the rest at their default, clocked at the
   * delete (rule 3).
   */
  private materialise(ops: TableOps, key: SqlValue[], row: RowMerge, puts: ClockPut[]): void {
    const del = row.deleteHlc;
    const carried: number[] = [];
    for (let k = 0; k < ops.t.columns.length; k++) {
      if (row.fieldHlc[k]! > del) {
        carried.push(k);
        if (row.won[k] || row.heldValue[k] !== null) puts.push([ops.t.columns[k]!, row.fieldHlc[k]!, null, row.fieldVec[k]!]);
      } else if (del !== '' && row.fieldHlc[k] !== del) {
        row.fieldHlc[k] = del;
        row.fieldVec[k] = row.deleteVec;
        puts.push([ops.t.columns[k]!, del, null, row.deleteVec]);
      }
    }
    const vals = carried.map((k) => row.valueOf(k));
    if (row.wasPresent) ops.del.run(...key);
    insertStmt(this.db, ops, carried).run(...key, ...vals);
  }

  /**
   * A row absent after the merge: removed if it was there, and the fields
   * newer than the delete kept with their values in casa_clock, for a
   * re-insert that may need them (rule 3).
   */
  private keepWhileAbsent(ops: TableOps, key: SqlValue[], row: RowMerge, puts: ClockPut[]): void {
    for (let k = 0; k < ops.t.columns.length; k++) {
      const h = row.fieldHlc[k]!;
      if (h > row.deleteHlc && (row.won[k] || row.wasPresent)) puts.push([ops.t.columns[k]!, h, row.valueOf(k), row.fieldVec[k]!]);
      else if (row.won[k]) puts.push([ops.t.columns[k]!, h, null, row.fieldVec[k]!]);
    }
    if (row.wasPresent) ops.del.run(...key);
  }

  /**
   * The common case, without reading the row: updates of distinct fields of
   * a row nothing has clocked yet (no markers, no field clocks: nothing to
   * lose to, nothing to audit). False, having written nothing, when the row
   * is not there or the changes are anything else.
   */
  private firstUpdates(ops: TableOps, changes: Change[], from: number, to: number, key: SqlValue[]): boolean {
    const cols: number[] = [];
    for (let i = from; i < to; i++) {
      const c = changes[i]!;
      const k = c.op === 'u' && c.col !== null ? ops.index.get(c.col) : undefined;
      if (k === undefined || cols.includes(k)) return false;
      cols.push(k);
    }
    const vals = [];
    for (let i = from; i < to; i++) vals.push(changes[i]!.val);
    if (updateStmt(this.db, ops, cols).run(...vals, ...key).changes !== 1) return false;
    const puts: ClockPut[] = [];
    for (let i = from; i < to; i++) puts.push([changes[i]!.col!, changes[i]!.hlc, null, this.vectors.intern(changes[i]!.seen)]);
    this.putClocks(changes[from]!.tbl, changes[from]!.pk, puts);
    this.result.applied += to - from;
    return true;
  }

  /** Upserts a row's clock entries: one statement for up to 16. */
  private putClocks(tbl: string, pk: string, puts: ClockPut[]): void {
    for (let i = 0; i < puts.length; i += 16) {
      const part = puts.slice(i, i + 16);
      let stmt = this.p.clockPuts[part.length];
      if (!stmt) {
        stmt = this.db.prepare(
          `INSERT INTO casa_clock (tbl, pk, col, hlc, val, vec) VALUES ${part.map(() => '(?, ?, ?, ?, ?, ?)').join(', ')} ` +
            'ON CONFLICT (tbl, pk, col) DO UPDATE SET hlc = excluded.hlc, val = excluded.val, vec = excluded.vec',
        );
        this.p.clockPuts[part.length] = stmt;
      }
      const args: SqlValue[] = [];
      for (const [col, hlc, val, vec] of part) args.push(tbl, pk, col, hlc, val, vec);
      stmt.run(...args);
    }
  }

  /** Set rule audit: a remote add meets a local remove, or the reverse, from another device. */
  private setDecision(t: SyncTable, pk: string, c: Change, row: RowMerge): void {
    const present = row.isPresent();
    // The local side: an add meets the element's remove while it is absent; a remove meets its add while present.
    const local = c.op === 'i' ? (present ? '' : row.deleteHlc) : present ? row.insertHlc : '';
    if (local === '' || local === c.hlc || device(local) === device(c.hlc)) return;
    if (!this.concurrent(local, c.op === 'i' ? row.deleteVec : row.insertVec, c)) return;
    this.conflict(t.name, pk, null, null, local, null, c.hlc, c.hlc > local ? 'remote' : 'local', 'set-lww');
  }

  /** Applies the pending changes the schema now has room for. */
  pending(): void {
    const rows = this.db.prepare('SELECT id, tbl, pk, col, op, val, hlc, vec FROM casa_pending ORDER BY tbl, pk, id').safeIntegers(true).all() as {
      id: bigint;
      tbl: string;
      pk: string;
      col: string | null;
      op: Change['op'];
      val: SqlValue;
      hlc: string;
      vec: bigint | null;
    }[];
    if (rows.length === 0) return;
    const ready: Change[] = [];
    const del = this.db.prepare('DELETE FROM casa_pending WHERE id = ?');
    for (const r of rows) {
      const seen = this.vectors.get(r.vec);
      const c: Change = seen === undefined ? { tbl: r.tbl, pk: r.pk, col: r.col, op: r.op, val: r.val, hlc: r.hlc } : { tbl: r.tbl, pk: r.pk, col: r.col, op: r.op, val: r.val, hlc: r.hlc, seen };
      if (!this.applicable(c)) continue;
      del.run(r.id);
      ready.push(c);
    }
    this.run(ready);
  }
}

function check(changes: Change[], opts: ApplyOptions): string {
  if (!Number.isSafeInteger(opts.now) || opts.now < 0) throw new RangeError('now must be an integer ms');
  if (!isDeviceId(opts.localDeviceId)) throw new RangeError('localDeviceId must be 16 lowercase hex characters');
  const maxSkew = opts.maxSkewMs ?? MAX_SKEW_MS;
  let top = '';
  changes.forEach((c, i) => {
    checkChange(c, i, (m) => new ChangeFormatError(m));
    if (c.hlc > top) top = c.hlc;
  });
  if (top !== '') {
    const wall = parseHlc(top).wall;
    if (wall - opts.now > maxSkew) throw new ClockSkewError(wall, opts.now);
  }
  return top;
}

/** Runs fn in one IMMEDIATE transaction with casa's triggers quiet and foreign keys off. */
function applying<T>(db: Database, fn: () => T): T {
  const fk = !db.inTransaction && db.pragma('foreign_keys', { simple: true }) === 1;
  if (fk) db.pragma('foreign_keys = OFF');
  else if (db.inTransaction) db.pragma('defer_foreign_keys = ON');
  const flag = db.prepare("UPDATE casa_meta SET value = ? WHERE key = 'applying'");
  try {
    return db
      .transaction(() => {
        flag.run(1);
        const out = fn();
        flag.run(0);
        return out;
      })
      .immediate();
  } catch (err) {
    const msg = (err as { code?: string }).code?.startsWith('SQLITE_CONSTRAINT') ? (err as Error).message : null;
    if (msg !== null) {
      throw new FailureError(`a remote change breaks a constraint of this database: ${msg}`, {
        cause: err,
        hints: ['two devices wrote the same unique value, or their schemas differ; nothing was applied'],
      });
    }
    throw err;
  } finally {
    if (fk) db.pragma('foreign_keys = ON');
  }
}

/**
 * Applies remote changes in one transaction (casa_pending first), after
 * stamping this device's unpushed log rows (their clocks must take part).
 * Throws ClockSkewError, applying nothing, when a change's wall time is more
 * than maxSkewMs ahead of `now`. Raises the HLC floor to the highest HLC seen.
 */
export function applyRemote(db: Database, schema: SyncSchema, changes: Change[], opts: ApplyOptions): ApplyResult {
  const top = check(changes, opts);
  return applying(db, () => {
    stampLocal(db, opts.localDeviceId);
    const a = new Applier(db, prepare(db, schema), opts.now);
    a.pending();
    a.run(changes);
    // What this device has now seen: every change received (pending ones too), and what their writers had (§5a).
    const seen = new Knowledge();
    for (const c of changes) seen.see(c.hlc, c.seen);
    seen.save(db);
    pruneVectors(db);
    if (top !== '') {
      db.prepare("UPDATE casa_meta SET value = ? WHERE key = 'hlc_floor' AND (value IS NULL OR value < ?)").run(top, top);
    }
    return a.result;
  });
}

/** Applies the pending changes this schema has room for (after the app added a column or table). */
export function applyPending(db: Database, schema: SyncSchema, opts: ApplyOptions): ApplyResult {
  return applyRemote(db, schema, [], opts);
}

/** Number of received changes waiting for a column or table. */
export function pendingRemoteCount(db: Database): number {
  const has = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'casa_pending'").get();
  if (!has) return 0;
  return (db.prepare('SELECT count(*) AS n FROM casa_pending').get() as { n: number }).n;
}

const plain = (v: SqlValue): SqlValue =>
  typeof v === 'bigint' && v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;

/** The newest merge decisions first; integers as numbers where exact (bigint beyond 2^53). */
export function listConflicts(db: Database, opts: { limit: number }): ConflictRow[] {
  const has = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'casa_conflicts'").get();
  if (!has) return [];
  const rows = db.prepare('SELECT * FROM casa_conflicts ORDER BY id DESC LIMIT ?').safeIntegers(true).all(opts.limit) as Record<string, SqlValue>[];
  return rows.map((r) => ({
    id: Number(r.id),
    tbl: r.tbl as string,
    pk: r.pk as string,
    col: r.col as string | null,
    local_val: plain(r.local_val ?? null),
    local_hlc: r.local_hlc as string | null,
    remote_val: plain(r.remote_val ?? null),
    remote_hlc: r.remote_hlc as string,
    winner: r.winner as 'local' | 'remote',
    rule: r.rule as ConflictRule,
    decided_at: Number(r.decided_at),
  }));
}
