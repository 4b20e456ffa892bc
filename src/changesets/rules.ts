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
  /**
   * Tables that need a decision (keyed by the integer rowid, or with a
   * reserved column name), by name: left out of sync until one is declared
   * (`casa tables set`). Only a lenient derivation returns any.
   */
  undecided: { name: string; reason: string }[];
  /** 16 hex: a hash of the synced tables, their key and columns and kinds (a batch's "schema" field). */
  fingerprint: string;
}

/**
 * The vault's sync settings: which tables sync and how, one row per declared
 * table (`rule`: "lww", "set", "snapshot-only", or a rule object as JSON).
 * casa's one table that syncs like the app's (last writer wins), so every
 * device, and a restore, reads the same declarations (settings.ts).
 */
export const SETTINGS_TABLE = 'casa_tables';

/** Column names casa_clock reserves for the row markers (docs/MERGE.md §3). */
export const RESERVED_COLUMNS: readonly string[] = ['+', '-'];

/** The database's schema cannot sync as declared; `table` names the table at fault, when there is one. */
export class SyncSchemaError extends FailureError {
  readonly table: string | null;
  /** Every table that needs a decision, when that is the error (else empty). */
  readonly undecided: string[];

  constructor(message: string, table: string | null = null, undecided: string[] = []) {
    super(message, { code: 'usage' });
    this.table = table;
    this.undecided = undecided;
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

/** The command that decides for `names`: each declared snapshot-only. */
export function declareCommand(names: string[]): string {
  return names.map((n) => `casa tables set ${/^[A-Za-z0-9_.-]+$/.test(n) ? n : JSON.stringify(n)} snapshot-only`).join(' && ');
}

/**
 * Derives the synced schema from the database and the declarations; throws
 * SyncSchemaError. A declaration naming a table the database lacks is kept
 * for when the app creates it (the settings travel with the vault). Tables
 * that need a decision: all named in one SyncSchemaError, or, `lenient`,
 * left out of sync and listed in `undecided`.
 */
export function deriveSyncSchema(db: Db, decl: SyncDeclarations = {}, opts: { lenient?: boolean } = {}): SyncSchema {
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
    if (/^sqlite_/i.test(t.name) || (/^casa_/i.test(t.name) && t.name !== SETTINGS_TABLE)) continue;
    if (t.type === 'table' || t.type === 'virtual' || t.type === 'shadow') userTables.set(t.name, t);
  }
  const tables: SyncTable[] = [];
  const snapshotOnly: string[] = [];
  const undecided: { name: string; reason: string }[] = [];
  for (const name of [...userTables.keys()].sort()) {
    const info = userTables.get(name)!;
    const raw = name === SETTINGS_TABLE ? undefined : declared[name];
    let rule: TableRule | null;
    try {
      rule = raw === undefined ? null : normaliseRule(name, raw);
    } catch (err) {
      // A rule another device declared that this casa cannot read: that table waits, the rest syncs.
      if (!(err instanceof SyncSchemaError) || opts.lenient !== true) throw err;
      undecided.push({ name, reason: `has a declared rule this casa cannot use (${err.message})` });
      continue;
    }
    if (rule?.kind === 'snapshot-only' || info.type !== 'table') {
      snapshotOnly.push(name);
      continue;
    }
    const cols = (db.prepare(`PRAGMA main.table_xinfo(${quoteId(name)})`).all() as ColumnInfo[]).filter((c) => c.hidden === 0);
    const pkCols = cols.filter((c) => c.pk > 0).sort((a, b) => a.pk - b.pk);
    const rowidKey =
      info.wr === 0 && (pkCols.length === 0 || (pkCols.length === 1 && pkCols[0]!.type.toUpperCase() === 'INTEGER'));
    if (rowidKey) {
      undecided.push({ name, reason: 'is keyed by the integer rowid, which two devices would assign alike' });
      continue;
    }
    const reserved = cols.find((c) => RESERVED_COLUMNS.includes(c.name));
    if (reserved !== undefined) {
      undecided.push({ name, reason: `has a column named ${JSON.stringify(reserved.name)}, which casa reserves` });
      continue;
    }
    const columns = cols.filter((c) => c.pk === 0).map((c) => c.name);
    let kind: 'lww' | 'set' = columns.length === 0 ? 'set' : 'lww';
    let impossible: string | null = null;
    if (rule?.kind === 'set' && columns.length > 0) impossible = `table ${name} cannot be a set: columns outside its primary key (${columns.join(', ')})`;
    if (rule?.kind === 'lww') {
      if (columns.length === 0) impossible = `table ${name} has no columns outside its primary key: declare it "set"`;
      const stray = Object.keys(rule.columns ?? {}).find((c) => !columns.includes(c));
      if (stray !== undefined) impossible = `the sync declarations name column ${name}.${stray}, which is not a synced column`;
      kind = 'lww';
    }
    if (impossible !== null) {
      // The app's schema changed under a declaration (or another device declared for its own schema): lenient, the table waits.
      if (opts.lenient !== true) throw new SyncSchemaError(impossible, name);
      undecided.push({ name, reason: `has a declared rule it cannot have here (${impossible})` });
      continue;
    }
    tables.push({ name, kind, pk: pkCols.map((c) => c.name), columns });
  }

  if (undecided.length > 0 && opts.lenient !== true) {
    const names = undecided.map((u) => u.name);
    const what =
      undecided.length === 1
        ? `table ${names[0]} ${undecided[0]!.reason}`
        : `${undecided.length} tables need a decision: ${undecided.map((u) => `${u.name} (${u.reason})`).join('; ')}`;
    throw new SyncSchemaError(`${what}: declare ${names.length === 1 ? 'it' : 'each'} snapshot-only (${declareCommand(names)})`, names[0]!, names);
  }
  const canon = tables.map((t) => [t.name, t.kind, t.pk, [...t.columns].sort()]);
  const fingerprint = createHash('sha256').update(JSON.stringify(['casa-sync-schema/1', canon])).digest('hex').slice(0, 16);
  return { tables, snapshotOnly, undecided, fingerprint };
}
