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
 * 1. the object's schema and a marker (table `legacy_move`: per table, the
 *    last D1 rowid copied) in one transaction; while the marker is there,
 *    the object does not hold the vault yet (worker/vault.ts);
 * 2. table by table, MOVE_PAGE rows at a time: read from D1, then written
 *    into the object with the marker's progress in one transaction. Memory
 *    stays bounded, and a move cut off (the object reset, an error) goes
 *    on from the last page written the next time anyone asks;
 * 3. the marker dropped: the object holds the vault;
 * 4. delete the vault's rows from D1 in one batch, its `vaults` row last.
 *    Should that fail, the object already holds the vault and never reads
 *    D1 for it again; the cron finds the `vaults` row still there, asks the
 *    object again, and the object (holding the vault) only deletes.
 *
 * Not moved: pairing sessions (a live one is at most minutes old, and its
 * nameplate was never in the index: it expires and the user pairs again),
 * expired challenges and the old global cron cursors (the object's
 * retention starts its own). Recovery ids stay in D1 too, where the index
 * reads them (migrations/d1/0008_index.sql), and are copied into the object.
 * When no vault is left, the cron drops the old tables, and from then on no
 * request asks D1 about them.
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

/** In the order a move copies them: the vault first (devices name it). */
export const MOVED_TABLES = ['vaults', ...LEGACY_TABLES] as const;

/** Tables deleted from D1 after the move but not copied. */
const DROPPED_TABLES = ['pairing_sessions'] as const;

/** Rows read from D1 and written into the object per step: memory stays bounded whatever the vault's size. */
export const MOVE_PAGE = 1000;

export type LegacyRow = Record<string, SqlStorageValue>;

/**
 * Once an isolate has seen D1 without the old tables, it never asks again
 * (the cron drops them when the last vault has moved): after the upgrade,
 * a request for an unknown vault id costs no D1 query.
 */
let legacyGone = false;

/** True if this D1 still holds an older relay's per-vault tables. */
export async function hasLegacyTables(d1: D1Database): Promise<boolean> {
  if (legacyGone) return false;
  const row = await d1.prepare("SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = 'vaults'").first();
  if (row === null) legacyGone = true;
  return row !== null;
}

/** True if an older relay's D1 still holds the vault. */
export async function legacyVaultExists(d1: D1Database, vaultId: string): Promise<boolean> {
  if (!(await hasLegacyTables(d1))) return false;
  return (await d1.prepare('SELECT 1 AS x FROM vaults WHERE id = ?1').bind(vaultId).first()) !== null;
}

/** Up to MOVE_PAGE rows of the vault in `table` after D1 rowid `after`, each with its rowid as `_rowid`. */
export async function readLegacyPage(d1: D1Database, table: (typeof MOVED_TABLES)[number], vaultId: string, after: number, now: number): Promise<LegacyRow[]> {
  const key = table === 'vaults' ? 'id' : 'vault_id';
  // Expired challenges are not worth moving.
  const live = table === 'challenges' ? ' AND expires_at > ?4' : '';
  const stmt = d1.prepare(`SELECT rowid AS _rowid, * FROM ${table} WHERE ${key} = ?1 AND rowid > ?2${live} ORDER BY rowid LIMIT ?3`);
  const bound = table === 'challenges' ? stmt.bind(vaultId, after, MOVE_PAGE, now) : stmt.bind(vaultId, after, MOVE_PAGE);
  return (await bound.all<LegacyRow>()).results;
}

/** Inserts the rows (inside the caller's transaction), each with the columns it came with; the D1 rowid is not one of them. */
export function writeLegacyRows(sql: SqlStorage, table: string, rows: LegacyRow[]): void {
  for (const row of rows) {
    const cols = Object.keys(row).filter((c) => c !== '_rowid');
    if (!cols.every((c) => /^[a-z_][a-z0-9_]*$/.test(c))) throw new Error(`legacy ${table}: unexpected column name`);
    const marks = cols.map((_, i) => `?${i + 1}`).join(', ');
    sql.exec(`INSERT INTO ${table} (${cols.join(', ')}) VALUES (${marks})`, ...cols.map((c) => row[c]));
  }
}

/** Deletes the vault's rows from the old D1 tables, `vaults` last, in one batch. */
export async function deleteLegacyVault(d1: D1Database, vaultId: string): Promise<void> {
  if (!(await hasLegacyTables(d1))) return;
  const tables = [...LEGACY_TABLES.filter((t) => t !== 'recovery_ids'), ...DROPPED_TABLES];
  await d1.batch([
    ...tables.map((t) => d1.prepare(`DELETE FROM ${t} WHERE vault_id = ?1`).bind(vaultId)),
    d1.prepare('DELETE FROM vaults WHERE id = ?1').bind(vaultId),
  ]);
}

/**
 * Up to `limit` vault ids still in the old D1 tables, in random order (a
 * vault whose move keeps failing does not hold back the others).
 */
export async function legacyVaultIds(d1: D1Database, limit: number): Promise<string[]> {
  if (!(await hasLegacyTables(d1))) return [];
  const rows = await d1.prepare('SELECT id FROM vaults ORDER BY random() LIMIT ?1').bind(limit).all<{ id: string }>();
  return rows.results.map((r) => r.id);
}

/**
 * Once every vault has moved: drops the old per-vault tables (`devices`
 * before `vaults`, which it names), keeping `recovery_ids`, which is the
 * index's own table now. True if it dropped them.
 */
export async function dropLegacyTables(d1: D1Database): Promise<boolean> {
  if (!(await hasLegacyTables(d1))) return false;
  if ((await d1.prepare('SELECT 1 AS x FROM vaults LIMIT 1').first()) !== null) return false;
  const tables = [...LEGACY_TABLES.filter((t) => t !== 'recovery_ids'), ...DROPPED_TABLES, 'cron_state', 'vaults'];
  await d1.batch(tables.map((t) => d1.prepare(`DROP TABLE IF EXISTS ${t}`)));
  legacyGone = true;
  return true;
}
