/**
 * The SQL of snapshots and their retention (schema: migrations/0002_snapshots.sql),
 * in the style of db.ts: one small function each, numbered bound parameters.
 * Lists of ids travel as one JSON array parameter read with json_each(), so
 * 10,000 ids are one statement (D1 binds at most 100 parameters).
 *
 * The commit is a compare-and-swap: the head check, the pack and manifest
 * checks (the manifest sealed under the vault's current key id, once it has
 * key epochs) and the insert are one INSERT … SELECT … WHERE inside one batch
 * (one D1 transaction), and UNIQUE (vault_id, seq) backs it.
 */
import type { SnapshotView } from '../src/protocol/messages.js';
import { currentKeyId } from './membership-db.js';

export interface PackRow {
  vault_id: string;
  id: string;
  r2_key: string;
  bytes: number;
  created_at: number;
  touched_at: number;
}

export type { SnapshotView };

interface SnapshotViewRow {
  id: string;
  seq: number;
  device_id: string;
  device_name: string | null;
  time: number;
  db_bytes: number;
  stored_bytes: number;
  new_bytes: number;
  pack_count: number;
  changeset_watermark: number;
}

const VIEW = `SELECT s.id, s.seq, s.device_id, d.name AS device_name, s.time, s.db_bytes, s.stored_bytes, s.new_bytes, s.pack_count,
    s.changeset_watermark
  FROM snapshots s LEFT JOIN devices d ON d.id = s.device_id AND d.vault_id = s.vault_id
  WHERE s.vault_id = ?1`;

function view(r: SnapshotViewRow): SnapshotView {
  return {
    id: r.id,
    seq: r.seq,
    deviceId: r.device_id,
    deviceName: r.device_name,
    time: r.time,
    dbBytes: r.db_bytes,
    storedBytes: r.stored_bytes,
    newBytes: r.new_bytes,
    packCount: r.pack_count,
    changesetWatermark: r.changeset_watermark,
  };
}

// ---- packs -----------------------------------------------------------------

export async function getPack(db: D1Database, vaultId: string, packId: string): Promise<{ r2_key: string; bytes: number } | null> {
  return db.prepare('SELECT r2_key, bytes FROM packs WHERE vault_id = ?1 AND id = ?2').bind(vaultId, packId).first();
}

/** Restarts the pack's grace period; its size, or null if there is no such pack. */
export async function touchPack(db: D1Database, vaultId: string, packId: string, now: number): Promise<number | null> {
  const row = await db
    .prepare('UPDATE packs SET touched_at = ?3 WHERE vault_id = ?1 AND id = ?2 RETURNING bytes')
    .bind(vaultId, packId, now)
    .first<{ bytes: number }>();
  return row === null ? null : row.bytes;
}

/**
 * Inserts the pack, or (someone stored it first) only touches the existing
 * row. Returns the row that counts: its r2_key is ours only if we inserted.
 */
export async function upsertPack(db: D1Database, p: PackRow): Promise<{ r2_key: string; bytes: number }> {
  const row = await db
    .prepare(
      `INSERT INTO packs (vault_id, id, r2_key, bytes, created_at, touched_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
       ON CONFLICT (vault_id, id) DO UPDATE SET touched_at = excluded.touched_at
       RETURNING r2_key, bytes`,
    )
    .bind(p.vault_id, p.id, p.r2_key, p.bytes, p.created_at, p.touched_at)
    .first<{ r2_key: string; bytes: number }>();
  if (row === null) throw new Error('pack upsert returned no row');
  return row;
}

/** Touches every listed pack that exists and returns the others, in one transaction. */
export async function checkPacks(db: D1Database, vaultId: string, ids: readonly string[], now: number): Promise<string[]> {
  const list = JSON.stringify(ids);
  const [, missing] = await db.batch<{ id: string }>([
    db
      .prepare('UPDATE packs SET touched_at = ?3 WHERE vault_id = ?1 AND id IN (SELECT value FROM json_each(?2))')
      .bind(vaultId, list, now),
    missingPacks(db, vaultId, list),
  ]);
  return missing!.results.map((r) => r.id);
}

/** The ids of the JSON list `list` that are not packs of the vault, in list order. */
function missingPacks(db: D1Database, vaultId: string, list: string): D1PreparedStatement {
  return db
    .prepare(
      `SELECT j.value AS id FROM json_each(?2) j
       WHERE NOT EXISTS (SELECT 1 FROM packs p WHERE p.vault_id = ?1 AND p.id = j.value) ORDER BY j.key`,
    )
    .bind(vaultId, list);
}

// ---- manifests ---------------------------------------------------------------

export async function isCommitted(db: D1Database, vaultId: string, snapshotId: string): Promise<boolean> {
  const row = await db.prepare('SELECT 1 AS ok FROM snapshots WHERE vault_id = ?1 AND id = ?2').bind(vaultId, snapshotId).first();
  return row !== null;
}

/**
 * Records (or replaces) the pending manifest of a snapshot not yet
 * committed, with the key id it was sealed under: 'stored', or why not (then
 * nothing changed): 'committed', or 'stale' when the vault has key epochs
 * and the key id is not its current one's. The checks and the write are one
 * statement, so a concurrent commit or new epoch cannot slip between.
 */
export async function putPendingManifest(
  db: D1Database,
  m: { vaultId: string; snapshotId: string; r2Key: string; bytes: number; keyId: string; now: number },
): Promise<'stored' | 'committed' | 'stale'> {
  const [res, stale] = await db.batch([
    db
      .prepare(
        `INSERT INTO manifest_uploads (vault_id, snapshot_id, r2_key, bytes, created_at, key_id)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS (SELECT 1 FROM snapshots WHERE vault_id = ?1 AND id = ?2)
           AND ${currentKeyId('?6')}
         ON CONFLICT (vault_id, snapshot_id) DO UPDATE SET
           r2_key = excluded.r2_key, bytes = excluded.bytes, created_at = excluded.created_at, key_id = excluded.key_id`,
      )
      .bind(m.vaultId, m.snapshotId, m.r2Key, m.bytes, m.now, m.keyId),
    db.prepare(`SELECT NOT ${currentKeyId('?2')} AS stale`).bind(m.vaultId, m.keyId),
  ]);
  if ((res!.meta.changes ?? 0) > 0) return 'stored';
  return (stale!.results as { stale: number | null }[])[0]?.stale === 1 ? 'stale' : 'committed';
}

/** The R2 key of the snapshot's manifest: the committed one, else the pending one. */
export async function getManifestKey(db: D1Database, vaultId: string, snapshotId: string): Promise<string | null> {
  const row = await db
    .prepare(
      `SELECT COALESCE(
         (SELECT manifest_key FROM snapshots WHERE vault_id = ?1 AND id = ?2),
         (SELECT r2_key FROM manifest_uploads WHERE vault_id = ?1 AND snapshot_id = ?2)) AS r2_key`,
    )
    .bind(vaultId, snapshotId)
    .first<{ r2_key: string | null }>();
  return row?.r2_key ?? null;
}

// ---- snapshots ---------------------------------------------------------------

export interface CommitInput {
  vaultId: string;
  snapshotId: string;
  seq: number;
  parentSeq: number;
  deviceId: string;
  packs: readonly string[];
  dbBytes: number;
  storedBytes: number;
  newBytes: number;
  /** The vault-wide changeset cursor the snapshot includes (checked ≤ the vault's head by the route). */
  changesetWatermark: number;
  now: number;
}

export interface CommitOutcome {
  inserted: boolean;
  /** The head as the transaction saw it before its insert. */
  head: SnapshotView | null;
  /** Listed packs that did not exist. */
  missing: string[];
  hasManifest: boolean;
  /** The pending manifest was sealed under a key id that is not the vault's current epoch's (never at epoch 0). */
  staleManifest: boolean;
  /** A snapshot that already had this id (a retried commit, or a reused id). */
  existing: { seq: number; device_id: string; time: number } | null;
}

/**
 * The compare-and-swap commit. The batch is one transaction: its first four
 * statements read exactly the state its insert is judged on (for the
 * answer), the insert succeeds only if the head is parentSeq, the pending
 * manifest exists and every listed pack exists, and the rest (pack
 * references, audit row, dropping the pending manifest row) apply only if
 * this insert happened (the row with this commit's device, seq and time).
 */
export async function commitSnapshot(db: D1Database, c: CommitInput): Promise<CommitOutcome> {
  const list = JSON.stringify(c.packs);
  const ours = 'EXISTS (SELECT 1 FROM snapshots WHERE vault_id = ?1 AND id = ?2 AND seq = ?3 AND device_id = ?4 AND time = ?5)';
  const results = await db.batch([
    db.prepare(`${VIEW} ORDER BY s.seq DESC LIMIT 1`).bind(c.vaultId),
    missingPacks(db, c.vaultId, list),
    db
      .prepare(`SELECT NOT ${currentKeyId('m.key_id')} AS stale FROM manifest_uploads m WHERE m.vault_id = ?1 AND m.snapshot_id = ?2`)
      .bind(c.vaultId, c.snapshotId),
    db.prepare('SELECT seq, device_id, time FROM snapshots WHERE vault_id = ?1 AND id = ?2').bind(c.vaultId, c.snapshotId),
    db
      .prepare(
        `INSERT INTO snapshots (vault_id, id, seq, device_id, time, db_bytes, stored_bytes, new_bytes, pack_count, manifest_key, changeset_watermark)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, m.r2_key, ?12 FROM manifest_uploads m
         WHERE m.vault_id = ?1 AND m.snapshot_id = ?2
           AND (SELECT COALESCE(MAX(seq), 0) FROM snapshots WHERE vault_id = ?1) = ?10
           AND NOT EXISTS (SELECT 1 FROM snapshots WHERE vault_id = ?1 AND id = ?2)
           AND ${currentKeyId('m.key_id')}
           AND NOT EXISTS (SELECT 1 FROM json_each(?11) j
                           WHERE NOT EXISTS (SELECT 1 FROM packs p WHERE p.vault_id = ?1 AND p.id = j.value))`,
      )
      .bind(c.vaultId, c.snapshotId, c.seq, c.deviceId, c.now, c.dbBytes, c.storedBytes, c.newBytes, c.packs.length, c.parentSeq, list, c.changesetWatermark),
    db
      .prepare(`INSERT OR IGNORE INTO snapshot_packs (vault_id, snapshot_id, pack_id) SELECT ?1, ?2, value FROM json_each(?6) WHERE ${ours}`)
      .bind(c.vaultId, c.snapshotId, c.seq, c.deviceId, c.now, list),
    db
      .prepare(`INSERT INTO audit_log (vault_id, device_id, event, at) SELECT ?1, ?4, 'snapshot_committed', ?5 WHERE ${ours}`)
      .bind(c.vaultId, c.snapshotId, c.seq, c.deviceId, c.now),
    db
      .prepare(`DELETE FROM manifest_uploads WHERE vault_id = ?1 AND snapshot_id = ?2 AND ${ours}`)
      .bind(c.vaultId, c.snapshotId, c.seq, c.deviceId, c.now),
  ]);
  const head = (results[0]!.results as SnapshotViewRow[])[0];
  return {
    inserted: (results[4]!.meta.changes ?? 0) === 1,
    head: head === undefined ? null : view(head),
    missing: (results[1]!.results as { id: string }[]).map((r) => r.id),
    hasManifest: results[2]!.results.length > 0,
    staleManifest: (results[2]!.results as { stale: number | null }[])[0]?.stale === 1,
    existing: (results[3]!.results as CommitOutcome['existing'][])[0] ?? null,
  };
}

/** The vault's snapshots, newest first, with the committing device's name. */
export async function listSnapshots(db: D1Database, vaultId: string): Promise<SnapshotView[]> {
  const { results } = await db.prepare(`${VIEW} ORDER BY s.seq DESC`).bind(vaultId).all<SnapshotViewRow>();
  return results.map(view);
}

export async function getHead(db: D1Database, vaultId: string): Promise<SnapshotView | null> {
  const row = await db.prepare(`${VIEW} ORDER BY s.seq DESC LIMIT 1`).bind(vaultId).first<SnapshotViewRow>();
  return row === null ? null : view(row);
}

// ---- retention (worker/cron.ts) ------------------------------------------------

/**
 * Retention's tiers at one instant (worker/cron.ts thinningAt), as relay
 * times in ms: a snapshot committed at or after `windowStart` is kept; before
 * it, one per UTC day from `dailyFrom`, one per ISO week from `weeklyFrom`,
 * one per calendar month (UTC) before that.
 */
export interface Thinning {
  windowStart: number;
  dailyFrom: number;
  weeklyFrom: number;
}

/**
 * The bucket of a snapshot committed before the window, from its relay time
 * `time`: 'd' + the UTC day number, 'w' + the ISO week number counted from
 * the Monday before the epoch (day 0 was a Thursday), or 'm' + YYYY-MM.
 * Parameters ?1 dailyFrom, ?2 weeklyFrom.
 */
const BUCKET = `CASE
    WHEN time >= ?1 THEN 'd' || (time / 86400000)
    WHEN time >= ?2 THEN 'w' || ((time / 86400000 + 3) / 7)
    ELSE 'm' || strftime('%Y-%m', time / 1000, 'unixepoch')
  END`;

/**
 * Snapshots committed before the window (?3) that their bucket does not
 * keep: all but the newest (highest seq) of each bucket. The head is the
 * newest of the vault, so it is the newest of its bucket and never listed;
 * `AND seq < head` says so again.
 */
function thinnedOut(columns: string, vaultFilter: string): string {
  return `SELECT ${columns} FROM (
      SELECT vault_id, id, seq, row_number() OVER (PARTITION BY vault_id, bucket ORDER BY seq DESC) AS rank FROM (
        SELECT vault_id, id, seq, ${BUCKET} AS bucket FROM snapshots WHERE time < ?3${vaultFilter})) r
    WHERE r.rank > 1
      AND r.seq < (SELECT MAX(h.seq) FROM snapshots h WHERE h.vault_id = r.vault_id)`;
}

/** Vaults holding a snapshot that retention thins out. */
export async function vaultsToThin(db: D1Database, t: Thinning, limit: number): Promise<string[]> {
  const { results } = await db
    .prepare(`SELECT DISTINCT vault_id FROM (${thinnedOut('r.vault_id', '')}) LIMIT ?4`)
    .bind(t.dailyFrom, t.weeklyFrom, t.windowStart, limit)
    .all<{ vault_id: string }>();
  return results.map((r) => r.vault_id);
}

/**
 * Deletes up to `limit` of the vault's snapshots that retention thins out,
 * oldest first, with their pack references, in one transaction; returns
 * their manifest keys. Both statements choose the same rows (the first
 * changes nothing they read), and a commit meanwhile only adds a snapshot
 * inside the window.
 */
export async function thinSnapshots(db: D1Database, vaultId: string, t: Thinning, limit: number): Promise<string[]> {
  const victims = `SELECT id FROM (${thinnedOut('r.id, r.seq', ' AND vault_id = ?4')}) ORDER BY seq LIMIT ?5`;
  const args = [t.dailyFrom, t.weeklyFrom, t.windowStart, vaultId, limit] as const;
  const [, dropped] = await db.batch<{ manifest_key: string }>([
    db.prepare(`DELETE FROM snapshot_packs WHERE vault_id = ?4 AND snapshot_id IN (${victims})`).bind(...args),
    db.prepare(`DELETE FROM snapshots WHERE vault_id = ?4 AND id IN (${victims}) RETURNING manifest_key`).bind(...args),
  ]);
  return dropped!.results.map((r) => r.manifest_key);
}

/**
 * Deletes up to `limit` packs that no snapshot references and nobody touched
 * since `cutoff`; returns their R2 keys. One statement, so the reference
 * check and the delete cannot be split by a commit.
 */
export async function deleteUnreferencedPacks(db: D1Database, cutoff: number, limit: number): Promise<string[]> {
  const { results } = await db
    .prepare(
      `DELETE FROM packs WHERE rowid IN (
         SELECT p.rowid FROM packs p WHERE p.touched_at < ?1
           AND NOT EXISTS (SELECT 1 FROM snapshot_packs sp WHERE sp.vault_id = p.vault_id AND sp.pack_id = p.id)
         LIMIT ?2)
       RETURNING r2_key`,
    )
    .bind(cutoff, limit)
    .all<{ r2_key: string }>();
  return results.map((r) => r.r2_key);
}

/** Deletes up to `limit` pending manifests uploaded before `cutoff` and never committed; returns their keys. */
export async function deleteStalePendingManifests(db: D1Database, cutoff: number, limit: number): Promise<string[]> {
  const { results } = await db
    .prepare(
      `DELETE FROM manifest_uploads WHERE rowid IN (SELECT rowid FROM manifest_uploads WHERE created_at < ?1 LIMIT ?2)
       RETURNING r2_key`,
    )
    .bind(cutoff, limit)
    .all<{ r2_key: string }>();
  return results.map((r) => r.r2_key);
}

/** The keys of `keys` that no row names (orphans, if old enough). */
export async function unnamedKeys(db: D1Database, keys: readonly string[]): Promise<string[]> {
  if (keys.length === 0) return [];
  const { results } = await db
    .prepare(
      `SELECT j.value AS k FROM json_each(?1) j
       WHERE NOT EXISTS (SELECT 1 FROM packs WHERE r2_key = j.value)
         AND NOT EXISTS (SELECT 1 FROM snapshots WHERE manifest_key = j.value)
         AND NOT EXISTS (SELECT 1 FROM manifest_uploads WHERE r2_key = j.value)
         AND NOT EXISTS (SELECT 1 FROM changesets WHERE r2_key = j.value)`,
    )
    .bind(JSON.stringify(keys))
    .all<{ k: string }>();
  return results.map((r) => r.k);
}

export async function getCronState(db: D1Database, name: string): Promise<string | null> {
  const row = await db.prepare('SELECT value FROM cron_state WHERE name = ?1').bind(name).first<{ value: string }>();
  return row?.value ?? null;
}

export async function setCronState(db: D1Database, name: string, value: string | null): Promise<void> {
  if (value === null) {
    await db.prepare('DELETE FROM cron_state WHERE name = ?1').bind(name).run();
  } else {
    await db
      .prepare('INSERT INTO cron_state (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value')
      .bind(name, value)
      .run();
  }
}
