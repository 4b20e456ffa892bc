/**
 * Which tables sync and how each column merges (docs/MERGE.md §2,
 * docs/MERGE.md §2): THE one place this is decided. Everything else (the
 * capture triggers, the merge) reads the SyncSchema derived here.
 *
 * Defaults, from the database's own schema (sqlite_master, PRAGMA
 * table_list / table_xinfo):
 * - a table whose primary key is not the rowid: last-writer-wins per column;
 * - a table whose columns are all in its primary key (a link table such as
 *   transaction_tags): a set, whose elements are added and removed;
 * - a table keyed by the integer rowid (INTEGER PRIMARY KEY, or no declared
 *   primary key): refused with SyncSchemaError naming the table — rowids
 *   assigned on two devices collide — unless declared snapshot-only;
 * - casa's own tables (casa_*), SQLite's (sqlite_*), virtual tables and their
 *   shadow tables are never synced (a virtual table is the app's derived
 *   index; its module maintains the shadow tables).
 *
 * Declarations (a JSON file the caller names) override the defaults:
 * `{"tables": {"NAME": "snapshot-only" | "lww" | "set" | {"kind": ...}}}`.
 * A declaration cannot make an integer-rowid table sync.
 */
import { createHash } from 'node:crypto';
import { FailureError } from '../errors.js';

export type TableRule = { kind: 'lww'; columns?: Record<string, 'lww'> } | { kind: 'set' } | { kind: 'snapshot-only' };

export interface SyncDeclarations {
  tables?: Record<string, TableRule | 'lww' | 'set' | 'snapshot-only'>;
}

export interface SyncTable {
  name: string;
  kind: 'lww' | 'set';
  /** Primary-key columns, in primary-key order. */
  pk: string[];
  /** The other (writable, non-generated) columns, in table order; empty for a set. */
  columns: string[];
}

export interface SyncSchema {
  /** The synced tables, by name. */
  tables: SyncTable[];
  /** Tables left to snapshots (declared, or virtual/shadow), by name. */
  snapshotOnly: string[];
  /** 16 hex: a hash of the synced tables, their key and columns and kinds (a batch's "schema" field). */
  fingerprint: string;
}

/** Column names casa_clock reserves for the row markers (docs/MERGE.md §3). */
export const RESERVED_COLUMNS: readonly string[] = ['+', '-'];

/** The database's schema cannot sync as declared; `table` names the table at fault, when there is one. */
export class SyncSchemaError extends FailureError {
  readonly table: string | null;

  constructor(message: string, table: string | null = null) {
    super(message, { code: 'usage' });
    this.table = table;
  }
}

interface Db {
  prepare(sql: string): { all(...args: unknown[]): unknown[] };
}

interface ColumnInfo {
  name: string;
  type: string;
  pk: number;
  hidden: number;
}

/** An SQL identifier, double-quoted. */
export const quoteId = (name: string): string => `"${name.replace(/"/g, '""')}"`;

function normaliseRule(name: string, rule: unknown): TableRule {
  if (rule === 'lww' || rule === 'set' || rule === 'snapshot-only') return { kind: rule };
  if (typeof rule === 'object' && rule !== null && !Array.isArray(rule)) {
    const r = rule as Record<string, unknown>;
    const keys = Object.keys(r);
    if (r.kind === 'lww' && keys.every((k) => k === 'kind' || k === 'columns')) {
      if (r.columns === undefined) return { kind: 'lww' };
      if (typeof r.columns === 'object' && r.columns !== null && !Array.isArray(r.columns)) {
        const cols = r.columns as Record<string, unknown>;
        if (Object.values(cols).every((v) => v === 'lww')) return { kind: 'lww', columns: cols as Record<string, 'lww'> };
      }
      throw new SyncSchemaError(`table ${name}: the only column rule is "lww"`, name);
    }
    if ((r.kind === 'set' || r.kind === 'snapshot-only') && keys.length === 1) return { kind: r.kind };
  }
  throw new SyncSchemaError(`table ${name}: a rule is "lww", "set" or "snapshot-only"`, name);
}

function hint(name: string): string {
  return `declare it snapshot-only: {"tables": {${JSON.stringify(name)}: "snapshot-only"}} in the sync declarations file`;
}

/** Derives the synced schema from the database and the declarations; throws SyncSchemaError. */
export function deriveSyncSchema(db: Db, decl: SyncDeclarations = {}): SyncSchema {
  if (typeof decl !== 'object' || decl === null || Array.isArray(decl)) throw new SyncSchemaError('the sync declarations must be a JSON object');
  const extra = Object.keys(decl).filter((k) => k !== 'tables');
  if (extra.length > 0) throw new SyncSchemaError(`the sync declarations have an unknown key: ${extra[0]}`);
  const declared = decl.tables ?? {};
  if (typeof declared !== 'object' || declared === null || Array.isArray(declared)) {
    throw new SyncSchemaError('"tables" in the sync declarations must be an object');
  }

  const list = db.prepare('PRAGMA main.table_list').all() as { name: string; type: string; wr: number }[];
  const userTables = new Map<string, { type: string; wr: number }>();
  for (const t of list) {
    if (/^sqlite_/i.test(t.name) || /^casa_/i.test(t.name)) continue;
    if (t.type === 'table' || t.type === 'virtual' || t.type === 'shadow') userTables.set(t.name, t);
  }
  for (const name of Object.keys(declared)) {
    if (!userTables.has(name)) throw new SyncSchemaError(`the sync declarations name table ${name}, which the database does not have`, name);
  }

  const tables: SyncTable[] = [];
  const snapshotOnly: string[] = [];
  for (const name of [...userTables.keys()].sort()) {
    const info = userTables.get(name)!;
    const raw = declared[name];
    const rule = raw === undefined ? null : normaliseRule(name, raw);
    if (rule?.kind === 'snapshot-only' || info.type !== 'table') {
      snapshotOnly.push(name);
      continue;
    }
    const cols = (db.prepare(`PRAGMA main.table_xinfo(${quoteId(name)})`).all() as ColumnInfo[]).filter((c) => c.hidden === 0);
    const pkCols = cols.filter((c) => c.pk > 0).sort((a, b) => a.pk - b.pk);
    const rowidKey =
      info.wr === 0 && (pkCols.length === 0 || (pkCols.length === 1 && pkCols[0]!.type.toUpperCase() === 'INTEGER'));
    if (rowidKey) {
      throw new SyncSchemaError(
        `table ${name} is keyed by the integer rowid, which two devices would assign alike: ${hint(name)}`,
        name,
      );
    }
    for (const c of cols) {
      if (RESERVED_COLUMNS.includes(c.name)) {
        throw new SyncSchemaError(`table ${name} has a column named ${JSON.stringify(c.name)}, which casa reserves: ${hint(name)}`, name);
      }
    }
    const columns = cols.filter((c) => c.pk === 0).map((c) => c.name);
    let kind: 'lww' | 'set' = columns.length === 0 ? 'set' : 'lww';
    if (rule?.kind === 'set' && columns.length > 0) {
      throw new SyncSchemaError(`table ${name} cannot be a set: columns outside its primary key (${columns.join(', ')})`, name);
    }
    if (rule?.kind === 'lww') {
      if (columns.length === 0) throw new SyncSchemaError(`table ${name} has no columns outside its primary key: declare it "set"`, name);
      for (const c of Object.keys(rule.columns ?? {})) {
        if (!columns.includes(c)) throw new SyncSchemaError(`the sync declarations name column ${name}.${c}, which is not a synced column`, name);
      }
      kind = 'lww';
    }
    tables.push({ name, kind, pk: pkCols.map((c) => c.name), columns });
  }

  const canon = tables.map((t) => [t.name, t.kind, t.pk, [...t.columns].sort()]);
  const fingerprint = createHash('sha256').update(JSON.stringify(['casa-sync-schema/1', canon])).digest('hex').slice(0, 16);
  return { tables, snapshotOnly, fingerprint };
}
