/**
 * The SQL of changesets (schema: migrations/0004_changesets.sql), in the
 * style of db.ts: one small function each, numbered bound parameters.
 *
 * A push is one D1 batch (one transaction): the row is inserted only if its
 * seq is the device's last seq + 1, under cursor = the vault's head + 1, and
 * the head and the device's last seq move only if that insert happened
 * (recognised by the upload's own R2 key, which no other push can have).
 * So two pushes racing for one seq, or for one cursor, cannot both win.
 * The vault's head and each device's last seq live in their own tables, not
 * in MAX() over the rows, because pruning deletes rows. Once the vault has
 * key epochs (migrations/0007_keys.sql), the same transaction also refuses a
 * batch sealed under a key id other than the vault's current one.
 */
import { currentKeyId } from './membership-db.js';

export interface ChangesetRow {
  cursor: number;
  device_id: string;
  seq: number;
  sha256: string;
  r2_key: string;
  bytes: number;
}

export interface ChangesetState {
  head: number;
  prunedThrough: number;
}

export interface PushInput {
  vaultId: string;
  deviceId: string;
  seq: number;
  r2Key: string;
  bytes: number;
  sha256: string;
  /** The key id in the batch's object header (bytes 8..16, hex; '' if too short). */
  keyId: string;
  now: number;
}

export interface PushOutcome {
  /** The cursor given to this upload, or null if it was not inserted. */
  cursor: number | null;
  /** The device's batch at this seq after the transaction (ours, or the one that was already there). */
  existing: { cursor: number; sha256: string; r2_key: string } | null;
  /** The device's last seq after the transaction (0 before its first batch). */
  lastSeq: number;
  /** The batch was sealed under a key id that is not the vault's current epoch's (never at epoch 0). */
  stale: boolean;
}

const ours = 'SELECT 1 FROM changesets c WHERE c.vault_id = ?1 AND c.r2_key = ?2';

/** The conditional insert and its bookkeeping, in one transaction; the last two statements read the outcome. */
export async function pushChangeset(db: D1Database, p: PushInput): Promise<PushOutcome> {
  const results = await db.batch([
    db.prepare('INSERT INTO changeset_state (vault_id) VALUES (?1) ON CONFLICT (vault_id) DO NOTHING').bind(p.vaultId),
    db
      .prepare(
        `INSERT INTO changesets (vault_id, cursor, device_id, seq, r2_key, bytes, sha256, created_at)
         SELECT ?1, s.head + 1, ?2, ?3, ?4, ?5, ?6, ?7 FROM changeset_state s
         WHERE s.vault_id = ?1
           AND ?3 = COALESCE((SELECT d.seq FROM changeset_devices d WHERE d.vault_id = ?1 AND d.device_id = ?2), 0) + 1
           AND ${currentKeyId('?8')}`,
      )
      .bind(p.vaultId, p.deviceId, p.seq, p.r2Key, p.bytes, p.sha256, p.now, p.keyId),
    db
      .prepare(`UPDATE changeset_state SET head = head + 1 WHERE vault_id = ?1 AND EXISTS (${ours} AND c.cursor = changeset_state.head + 1)`)
      .bind(p.vaultId, p.r2Key),
    db
      .prepare(
        `INSERT INTO changeset_devices (vault_id, device_id, seq, cursor)
         SELECT c.vault_id, c.device_id, c.seq, c.cursor FROM changesets c WHERE c.vault_id = ?1 AND c.r2_key = ?2
         ON CONFLICT (vault_id, device_id) DO UPDATE SET seq = excluded.seq, cursor = excluded.cursor`,
      )
      .bind(p.vaultId, p.r2Key),
    db
      .prepare('SELECT cursor, sha256, r2_key FROM changesets WHERE vault_id = ?1 AND device_id = ?2 AND seq = ?3')
      .bind(p.vaultId, p.deviceId, p.seq),
    db.prepare('SELECT seq FROM changeset_devices WHERE vault_id = ?1 AND device_id = ?2').bind(p.vaultId, p.deviceId),
    db.prepare(`SELECT ${currentKeyId('?2')} AS ok`).bind(p.vaultId, p.keyId),
  ]);
  const existing = (results[4]!.results as NonNullable<PushOutcome['existing']>[])[0] ?? null;
  const last = (results[5]!.results as { seq: number }[])[0];
  return {
    cursor: existing !== null && existing.r2_key === p.r2Key ? existing.cursor : null,
    existing,
    lastSeq: last?.seq ?? 0,
    stale: (results[6]!.results as { ok: number | null }[])[0]?.ok !== 1,
  };
}

const STATE = 'SELECT head, pruned_through FROM changeset_state WHERE vault_id = ?1';

function state(rows: { head: number; pruned_through: number }[]): ChangesetState {
  const r = rows[0];
  return { head: r?.head ?? 0, prunedThrough: r?.pruned_through ?? 0 };
}

export async function getChangesetState(db: D1Database, vaultId: string): Promise<ChangesetState> {
  const row = await db.prepare(STATE).bind(vaultId).first<{ head: number; pruned_through: number }>();
  return state(row === null ? [] : [row]);
}

/** Up to `limit` rows after cursor `after`, in cursor order, and the state they were read with (one transaction). */
export async function listChangesets(
  db: D1Database,
  vaultId: string,
  after: number,
  limit: number,
): Promise<ChangesetState & { rows: ChangesetRow[] }> {
  const [s, rows] = await db.batch([
    db.prepare(STATE).bind(vaultId),
    db
      .prepare(
        `SELECT cursor, device_id, seq, sha256, r2_key, bytes FROM changesets
         WHERE vault_id = ?1 AND cursor > ?2 ORDER BY cursor LIMIT ?3`,
      )
      .bind(vaultId, after, limit),
  ]);
  return { ...state(s!.results as { head: number; pruned_through: number }[]), rows: rows!.results as ChangesetRow[] };
}

/** The vault's state and every device's last seq and its cursor, by device id (one transaction). */
export async function changesetHeads(
  db: D1Database,
  vaultId: string,
): Promise<ChangesetState & { devices: { device_id: string; seq: number; cursor: number }[] }> {
  const [s, devices] = await db.batch([
    db.prepare(STATE).bind(vaultId),
    db.prepare('SELECT device_id, seq, cursor FROM changeset_devices WHERE vault_id = ?1 ORDER BY device_id').bind(vaultId),
  ]);
  return {
    ...state(s!.results as { head: number; pruned_through: number }[]),
    devices: devices!.results as { device_id: string; seq: number; cursor: number }[],
  };
}

// ---- retention (worker/cron.ts) ------------------------------------------------
//
// A batch is pruned only if the relay received it before the window
// (created_at, the relay's clock at the push) and every retained snapshot
// covers it. Pruning takes the oldest batches first and stops at the first
// batch received within the window, so what is left is always every batch
// after pruned_through.

/** The vault's lowest snapshot watermark: every retained snapshot includes the batches up to it. */
const COVERED = '(SELECT MIN(changeset_watermark) FROM snapshots WHERE vault_id = ?1)';

/** The vault's first batch (by cursor) received at or after the window's start ?2, if any. */
const FIRST_PROTECTED = '(SELECT cursor FROM changesets WHERE vault_id = ?1 AND created_at >= ?2 ORDER BY cursor LIMIT 1)';

/**
 * Vaults whose oldest batch was received before `windowStart` and is
 * covered by every retained snapshot: the ones pruneChangesets would change.
 */
export async function vaultsToPrune(db: D1Database, windowStart: number, limit: number): Promise<string[]> {
  const { results } = await db
    .prepare(
      `SELECT f.vault_id FROM (SELECT vault_id, MIN(cursor) AS first FROM changesets GROUP BY vault_id) f
       JOIN changesets c ON c.vault_id = f.vault_id AND c.cursor = f.first
       WHERE c.created_at < ?1
         AND f.first <= (SELECT MIN(s.changeset_watermark) FROM snapshots s WHERE s.vault_id = f.vault_id)
       LIMIT ?2`,
    )
    .bind(windowStart, limit)
    .all<{ vault_id: string }>();
  return results.map((r) => r.vault_id);
}

/**
 * Deletes up to `limit` of the vault's oldest batches that were received
 * before `windowStart` (and precede every batch received since) and that
 * every retained snapshot covers, and moves pruned_through to just below
 * the oldest batch left (never past the coverage), in one transaction;
 * returns their R2 keys. Coverage and arrival times are read by the
 * statements themselves, so a snapshot committed or dropped meanwhile is
 * taken into account.
 */
export async function pruneChangesets(db: D1Database, vaultId: string, windowStart: number, limit: number): Promise<string[]> {
  const [deleted] = await db.batch<{ r2_key: string }>([
    db
      .prepare(
        `DELETE FROM changesets WHERE vault_id = ?1 AND cursor IN (
           SELECT cursor FROM changesets WHERE vault_id = ?1 AND cursor <= ${COVERED}
             AND cursor < COALESCE(${FIRST_PROTECTED}, cursor + 1)
           ORDER BY cursor LIMIT ?3)
         RETURNING r2_key`,
      )
      .bind(vaultId, windowStart, limit),
    db
      .prepare(
        `UPDATE changeset_state SET pruned_through = MAX(pruned_through, MIN(
           COALESCE(${COVERED}, 0),
           COALESCE((SELECT MIN(cursor) FROM changesets WHERE vault_id = ?1) - 1, head)))
         WHERE vault_id = ?1`,
      )
      .bind(vaultId),
  ]);
  return deleted!.results.map((r) => r.r2_key);
}
