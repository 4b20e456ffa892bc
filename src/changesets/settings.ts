/**
 * The vault's sync settings (docs/MERGE.md §2 "Settings that travel"):
 * which tables sync and how, as rows of `casa_tables` in the synced
 * database itself. The table syncs like the app's own tables (last writer
 * wins per table), is sealed in the same batches, travels in snapshots, and
 * so every device — one restored from a snapshot on a fresh machine too —
 * derives the same synced schema from it, with no file to copy.
 *
 * - `rule`: "lww", "set", "snapshot-only", or a rule object as JSON
 *   (`{"kind":"lww","columns":{...}}`), as rules.ts reads it.
 * - A declaration may name a table this device's database does not have yet
 *   (the app has not migrated here): it applies once the table appears.
 * - The file an earlier casa read (CASA_HOME/sync-tables.json) is imported
 *   once, the rows it names that the vault has not decided, and renamed
 *   `sync-tables.json.imported`.
 */
import { existsSync, readFileSync, renameSync } from 'node:fs';
import Database from 'better-sqlite3';
import { FailureError } from '../errors.js';
import { SETTINGS_TABLE, type SyncDeclarations, type TableRule } from './rules.js';

type Db = import('better-sqlite3').Database;

export type RuleName = 'lww' | 'set' | 'snapshot-only';
export const RULE_NAMES: readonly RuleName[] = ['lww', 'set', 'snapshot-only'];

/** The app's tables a rule can name: every table of the main schema but SQLite's and casa's own, sorted. */
export function appTableNames(db: Db): string[] {
  return (
    db
      .prepare("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type IN ('table', 'virtual') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE 'casa\\_%' ESCAPE '\\'")
      .pluck()
      .all() as string[]
  ).sort();
}

/** Creates the settings table if the database has none (idempotent; no row written). */
export function ensureSettingsTable(db: Db): void {
  db.exec(`CREATE TABLE IF NOT EXISTS ${SETTINGS_TABLE} (tbl TEXT PRIMARY KEY NOT NULL, rule TEXT NOT NULL)`);
}

/** The stored text of a rule. */
export function ruleText(rule: TableRule | RuleName): string {
  if (typeof rule === 'string') return rule;
  if (rule.kind !== 'lww' || rule.columns === undefined) return rule.kind;
  return JSON.stringify(rule);
}

function parseRule(text: string): TableRule | RuleName {
  if ((RULE_NAMES as readonly string[]).includes(text)) return text as RuleName;
  try {
    return JSON.parse(text) as TableRule;
  } catch {
    // Kept as written: rules.ts names the table and the bad rule.
    return text as RuleName;
  }
}

/** The declarations the vault's settings hold (rules.ts deriveSyncSchema reads them). */
export function readSettings(db: Db, opts: { create?: boolean } = {}): SyncDeclarations {
  if (opts.create !== false) ensureSettingsTable(db);
  const rows = db.prepare(`SELECT tbl, rule FROM ${SETTINGS_TABLE} ORDER BY tbl`).all() as { tbl: string; rule: string }[];
  const tables: NonNullable<SyncDeclarations['tables']> = {};
  for (const r of rows) tables[r.tbl] = parseRule(String(r.rule));
  return { tables };
}

/** The declarations a database file holds, read only (none if it has no settings table or no file). */
export function peekSettings(path: string): SyncDeclarations {
  if (!existsSync(path)) return { tables: {} };
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const has = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(SETTINGS_TABLE);
    return has === undefined ? { tables: {} } : readSettings(db, { create: false });
  } finally {
    db.close();
  }
}

/** Declares `tbl`'s rule for the whole vault (captured like any write; the next sync carries it). */
export function setRule(db: Db, tbl: string, rule: TableRule | RuleName): void {
  ensureSettingsTable(db);
  db.prepare(`INSERT INTO ${SETTINGS_TABLE} (tbl, rule) VALUES (?, ?) ON CONFLICT (tbl) DO UPDATE SET rule = excluded.rule WHERE rule IS NOT excluded.rule`).run(
    tbl,
    ruleText(rule),
  );
}

/** Takes `tbl`'s declaration back: the default applies again. */
export function clearRule(db: Db, tbl: string): boolean {
  ensureSettingsTable(db);
  return db.prepare(`DELETE FROM ${SETTINGS_TABLE} WHERE tbl = ?`).run(tbl).changes > 0;
}

/**
 * Imports the declarations file an earlier casa read, once: every table it
 * names that the vault has not decided; the file is renamed `.imported`.
 * Returns the tables imported.
 */
export function importDeclarationsFile(db: Db, path: string): string[] {
  if (!existsSync(path)) return [];
  let decl: SyncDeclarations;
  try {
    decl = JSON.parse(readFileSync(path, 'utf8')) as SyncDeclarations;
    if (typeof decl !== 'object' || decl === null || Array.isArray(decl)) throw new Error('not a JSON object');
  } catch (err) {
    throw new FailureError(`cannot read ${path} (${(err as Error).message})`, {
      hints: ['it held {"tables": {"NAME": "lww" | "set" | "snapshot-only"}}; fix or remove it, then declare with `casa tables set`'],
    });
  }
  ensureSettingsTable(db);
  const insert = db.prepare(`INSERT INTO ${SETTINGS_TABLE} (tbl, rule) VALUES (?, ?) ON CONFLICT (tbl) DO NOTHING`);
  const imported: string[] = [];
  db.transaction(() => {
    for (const [tbl, rule] of Object.entries(decl.tables ?? {})) {
      if (insert.run(tbl, ruleText(rule as TableRule | RuleName)).changes > 0) imported.push(tbl);
    }
  })();
  renameSync(path, `${path}.imported`);
  return imported;
}
