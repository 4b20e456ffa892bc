/**
 * The vault object's schema: migrations/*.sql, applied in name order inside
 * each vault's Durable Object (worker/vault.ts), each file with its
 * bookkeeping row in one transactionSync. The bookkeeping table is
 * `d1_migrations`, the same table (and columns) wrangler keeps in D1, so the
 * files and their history read the same wherever they were applied.
 *
 * migrations/ is the one source of the vault schema; the global index in D1
 * has its own directory (migrations/d1/). A new file in migrations/ is added
 * to MIGRATIONS below too (the bundle imports each as text);
 * test/worker/lifecycle.test.ts checks the two lists agree. A file here may
 * not use BEGIN/COMMIT/SAVEPOINT or PRAGMA (Durable Object SQL refuses them).
 */
import { splitSql } from '../src/protocol/sql-split.js';
import m0001 from '../migrations/0001_init.sql';
import m0002 from '../migrations/0002_snapshots.sql';
import m0003 from '../migrations/0003_pairing.sql';
import m0004 from '../migrations/0004_changesets.sql';
import m0005 from '../migrations/0005_digests.sql';
import m0007 from '../migrations/0007_keys.sql';
import m0008 from '../migrations/0008_usage.sql';

export const MIGRATIONS: readonly (readonly [name: string, sql: string])[] = [
  ['0001_init.sql', m0001],
  ['0002_snapshots.sql', m0002],
  ['0003_pairing.sql', m0003],
  ['0004_changesets.sql', m0004],
  ['0005_digests.sql', m0005],
  ['0007_keys.sql', m0007],
  ['0008_usage.sql', m0008],
];

const TABLE = 'd1_migrations';

/** True once the object holds a vault's schema (its first migration was applied). */
export function hasSchema(sql: SqlStorage): boolean {
  return sql.exec(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '${TABLE}'`).toArray().length > 0;
}

/** Applies the migrations not yet applied, all in one transaction (all or nothing); returns their names. */
export function migrate(storage: DurableObjectStorage): string[] {
  return storage.transactionSync(() => migrateIn(storage.sql));
}

/** migrate() inside a transaction the caller holds. */
export function migrateIn(sql: SqlStorage): string[] {
  sql.exec(`CREATE TABLE IF NOT EXISTS ${TABLE} (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT UNIQUE,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL
  )`);
  const done = new Set(sql.exec<{ name: string }>(`SELECT name FROM ${TABLE}`).toArray().map((r) => r.name));
  const applied: string[] = [];
  for (const [name, text] of MIGRATIONS) {
    if (done.has(name)) continue;
    for (const statement of splitSql(text)) sql.exec(statement);
    sql.exec(`INSERT INTO ${TABLE} (name) VALUES (?1)`, name);
    applied.push(name);
  }
  return applied;
}
