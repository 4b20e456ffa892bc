/**
 * Moving a vault from an older relay's D1 into its own object.
 *
 * Before each vault had its own Durable Object (worker/vault.ts), every
 * vault's rows lived in the one D1 database, in the tables migrations/*.sql
 * create. After the upgrade those tables are still there (D1 keeps them:
 * migrations/d1 only adds the index), and nothing writes them any more. A
 * vault's object adopts its rows the first time it is asked about the
 * vault and holds none (worker/vault.ts `ensure`), and the Worker's cron
 * moves the vaults nobody asked about yet, a bounded number per run
 * (worker/index.ts), so every vault is moved without a stop:
 *
 * 1. read every row of the vault from each table below (D1, async);
 * 2. write them into the object in one transaction, the object's schema
 *    first (all or nothing: a failure leaves the object empty and the D1
 *    rows in place, and the next request tries again);
 * 3. delete the vault's rows from D1 in one batch, its `vaults` row last.
 *    Should that fail, the object already holds the vault and never reads
 *    D1 for it again; the cron finds the `vaults` row still there, asks the
 *    object again, and the object (holding the vault) only deletes.
 *
 * Not moved: pairing sessions (a live one is at most minutes old, and its
 * nameplate was never in the index: it expires and the user pairs again),
 * expired challenges and the old global cron cursors (the object's
 * retention starts its own). Recovery ids stay in D1 too, where the index
 * reads them (migrations/d1/0008_index.sql), and are copied into the object.
 */
type SqlStorageValue = string | number | null | ArrayBuffer;

/** Every per-vault table of the old D1 schema, keyed by `vault_id` (and `vaults` by `id`). */
export const LEGACY_TABLES = [
  'devices',
  'challenges',
  'audit_log',
  'packs',
  'manifest_uploads',
  'snapshots',
  'snapshot_packs',
  'changesets',
  'changeset_state',
  'changeset_devices',
  'digests',
  'epochs',
  'epoch_wraps',
  'recovery_records',
  'recovery_ids',
] as const;

/** Tables deleted from D1 after the move but not copied. */
const DROPPED_TABLES = ['pairing_sessions'] as const;

export type LegacyRows = { table: string; rows: Record<string, SqlStorageValue>[] }[];

/** True if this D1 still holds an older relay's per-vault tables. */
export async function hasLegacyTables(d1: D1Database): Promise<boolean> {
  const row = await d1.prepare("SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = 'vaults'").first();
  return row !== null;
}

/** Every row of `vaultId` in an older relay's D1, or null if it holds no such vault. */
export async function readLegacyVault(d1: D1Database, vaultId: string): Promise<LegacyRows | null> {
  if (!(await hasLegacyTables(d1))) return null;
  const vault = await d1.prepare('SELECT * FROM vaults WHERE id = ?1').bind(vaultId).all<Record<string, SqlStorageValue>>();
  if (vault.results.length === 0) return null;
  const out: LegacyRows = [{ table: 'vaults', rows: vault.results }];
  const now = Date.now();
  for (const table of LEGACY_TABLES) {
    const where = table === 'challenges' ? 'vault_id = ?1 AND expires_at > ?2' : 'vault_id = ?1';
    const stmt = d1.prepare(`SELECT * FROM ${table} WHERE ${where}`);
    const rows = await (table === 'challenges' ? stmt.bind(vaultId, now) : stmt.bind(vaultId)).all<Record<string, SqlStorageValue>>();
    out.push({ table, rows: rows.results });
  }
  return out;
}

/** Inserts the rows (inside the caller's transaction), each with the columns it came with. */
export function writeLegacyRows(sql: SqlStorage, rows: LegacyRows): number {
  let n = 0;
  for (const { table, rows: list } of rows) {
    for (const row of list) {
      const cols = Object.keys(row);
      if (!cols.every((c) => /^[a-z_][a-z0-9_]*$/.test(c))) throw new Error(`legacy ${table}: unexpected column name`);
      const marks = cols.map((_, i) => `?${i + 1}`).join(', ');
      sql.exec(`INSERT INTO ${table} (${cols.join(', ')}) VALUES (${marks})`, ...cols.map((c) => row[c]));
      n++;
    }
  }
  return n;
}

/** Deletes the vault's rows from the old D1 tables, `vaults` last, in one batch. */
export async function deleteLegacyVault(d1: D1Database, vaultId: string): Promise<void> {
  const tables = [...LEGACY_TABLES.filter((t) => t !== 'recovery_ids'), ...DROPPED_TABLES];
  await d1.batch([
    ...tables.map((t) => d1.prepare(`DELETE FROM ${t} WHERE vault_id = ?1`).bind(vaultId)),
    d1.prepare('DELETE FROM vaults WHERE id = ?1').bind(vaultId),
  ]);
}

/** Up to `limit` vault ids still in the old D1 tables (for the cron to move). */
export async function legacyVaultIds(d1: D1Database, limit: number): Promise<string[]> {
  if (!(await hasLegacyTables(d1))) return [];
  const rows = await d1.prepare('SELECT id FROM vaults ORDER BY id LIMIT ?1').bind(limit).all<{ id: string }>();
  return rows.results.map((r) => r.id);
}
