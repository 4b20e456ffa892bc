/**
 * Abandoned vaults: a vault none of whose devices has been seen (asked for
 * a token) for ABANDONED_AFTER_MS, nor created within it. Each vault's
 * object checks itself at the end of its retention run (worker/vault.ts):
 *
 * - "report" (ABANDONED_POLICY, the default): the vault is listed in the
 *   index's abandoned_vaults (migrations/d1/0009_abandoned.sql) with when it
 *   was last seen, and logged once. Nothing is deleted. A device seen again
 *   takes it off the list at the next run.
 * - "expire": as "report", then, once listed for 30 days and still abandoned,
 *   the vault is deleted: first its rows, in one
 *   transaction that leaves only a marker (table `expired`) — from then on
 *   the vault is unknown to every request, as if never created — then its
 *   blobs under its R2 prefixes, a bounded number per run (the alarm comes
 *   back soon while any are left), then its index rows, and last the
 *   object's storage. The list keeps the row with expired_at set.
 *
 * ABANDONED_AFTER_MS under 90 days (MIN_ABANDONED_AFTER_MS) is taken for a
 * mistake and the default applies; with "expire", a vault is deleted only
 * once it has been listed for EXPIRE_AFTER_LISTED_MS (30 days) and is still
 * abandoned at that moment.
 */
import { UPLOAD_KINDS } from './blobs.js';
import type { RouteEnv } from './env.js';

const DAY_MS = 24 * 60 * 60 * 1000;

/** 400 days: a vault used once a year is never abandoned. */
export const DEFAULT_ABANDONED_AFTER_MS = 400 * DAY_MS;

/** The shortest ABANDONED_AFTER_MS taken (a shorter one is a mistake, e.g. days written for ms: the default applies). */
export const MIN_ABANDONED_AFTER_MS = 90 * DAY_MS;

/** With ABANDONED_POLICY "expire", a vault is deleted only once it has been listed this long (the operator sees it first). */
export const EXPIRE_AFTER_LISTED_MS = 30 * DAY_MS;

export type AbandonedPolicy = 'report' | 'expire';

export interface AbandonedSettings {
  afterMs: number;
  policy: AbandonedPolicy;
}

/**
 * The operator's settings; a malformed value, or a time under
 * MIN_ABANDONED_AFTER_MS, falls back to the default (never to a shorter
 * time or to expiry).
 */
export function abandonedSettings(env: Pick<RouteEnv, 'ABANDONED_AFTER_MS' | 'ABANDONED_POLICY'>): AbandonedSettings {
  const text = env.ABANDONED_AFTER_MS?.trim() ?? '';
  const n = /^\d{1,16}$/.test(text) ? Number(text) : NaN;
  const after = Number.isSafeInteger(n) && n >= MIN_ABANDONED_AFTER_MS ? n : DEFAULT_ABANDONED_AFTER_MS;
  return { afterMs: after, policy: env.ABANDONED_POLICY?.trim() === 'expire' ? 'expire' : 'report' };
}

/** When a device of the vault was last seen (or the vault or a device was created): the newest of them. */
export function lastSeen(sql: SqlStorage): number {
  const row = sql
    .exec<{ t: number | null }>(
      `SELECT max(v.created_at, COALESCE((SELECT max(max(created_at, COALESCE(last_seen_at, 0))) FROM devices), 0)) AS t
       FROM vaults v LIMIT 1`,
    )
    .toArray()[0];
  return row?.t ?? 0;
}

/** What the check found, for the retention report. */
export type AbandonedState = 'active' | 'reported' | 'expired';

/** cron_state: set while the vault is listed in the index (so an active vault's run touches no D1). */
const LISTED = 'abandoned:listed';

/**
 * Lists the vault in the index if abandoned (logged once), or takes it off
 * if a device was seen again; when it was first listed, or null when it is
 * not abandoned. D1 is written only when the state changes.
 */
export async function reportAbandoned(index: D1Database, sql: SqlStorage, vaultId: string, now: number, afterMs: number): Promise<number | null> {
  const seenAt = lastSeen(sql);
  const listed = sql.exec<{ value: string }>('SELECT value FROM cron_state WHERE name = ?1', LISTED).toArray()[0];
  if (now - seenAt < afterMs) {
    if (listed !== undefined) {
      await index.prepare('DELETE FROM abandoned_vaults WHERE vault_id = ?1 AND expired_at IS NULL').bind(vaultId).run();
      sql.exec('DELETE FROM cron_state WHERE name = ?1', LISTED);
    }
    return null;
  }
  if (listed !== undefined) return Number(listed.value);
  // A vault once expired and created again under the same id starts a new row.
  const row = await index
    .prepare(
      `INSERT INTO abandoned_vaults (vault_id, last_seen_at, reported_at, expired_at) VALUES (?1, ?2, ?3, NULL)
       ON CONFLICT (vault_id) DO UPDATE SET last_seen_at = excluded.last_seen_at,
         reported_at = CASE WHEN abandoned_vaults.expired_at IS NULL THEN abandoned_vaults.reported_at ELSE excluded.reported_at END,
         expired_at = NULL
       RETURNING reported_at`,
    )
    .bind(vaultId, seenAt, now)
    .first<{ reported_at: number }>();
  const reportedAt = row?.reported_at ?? now;
  sql.exec('INSERT INTO cron_state (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value', LISTED, String(reportedAt));
  console.log(`casa-relay: vault ${vaultId} is abandoned (no device seen since ${new Date(seenAt).toISOString()})`);
  return reportedAt;
}

/** The marker table an expiring vault's object keeps while its blobs are deleted. */
export const EXPIRED_TABLE = 'expired';

/**
 * Deletes every table of the vault, leaving only the marker, in one
 * transaction: from the commit on, the vault is unknown.
 */
export function wipeRows(storage: DurableObjectStorage, vaultId: string, now: number): void {
  const sql = storage.sql;
  storage.transactionSync(() => {
    const tables = sql
      .exec<{ name: string }>(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\'",
      )
      .toArray()
      .map((r) => r.name)
      // `vaults` last: devices name it by a foreign key.
      .sort((a, b) => Number(a === 'vaults') - Number(b === 'vaults'));
    for (const t of tables) sql.exec(`DROP TABLE "${t.replaceAll('"', '""')}"`);
    sql.exec(`CREATE TABLE ${EXPIRED_TABLE} (vault_id TEXT NOT NULL, at INTEGER NOT NULL)`);
    sql.exec(`INSERT INTO ${EXPIRED_TABLE} (vault_id, at) VALUES (?1, ?2)`, vaultId, now);
  });
}

/** The vault this object is expiring, if it is (the marker wipeRows left). */
export function expiringVault(sql: SqlStorage): string | null {
  const has = sql.exec(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '${EXPIRED_TABLE}'`).toArray().length > 0;
  if (!has) return null;
  return sql.exec<{ vault_id: string }>(`SELECT vault_id FROM ${EXPIRED_TABLE} LIMIT 1`).toArray()[0]?.vault_id ?? null;
}

/** Every R2 prefix a vault's blobs live under (worker/blobs.ts). */
export function vaultPrefixes(vaultId: string): string[] {
  return [...UPLOAD_KINDS.map((k) => `${k}/${vaultId}/`), `v/${vaultId}/`];
}

/**
 * Deletes up to `maxKeys` of the vault's blobs; true when none are left.
 * Lists from the start of each prefix every time (what was deleted is gone).
 */
export async function deleteVaultBlobs(bucket: R2Bucket, vaultId: string, maxKeys: number): Promise<boolean> {
  let budget = maxKeys;
  for (const prefix of vaultPrefixes(vaultId)) {
    while (budget > 0) {
      const page = await bucket.list({ prefix, limit: Math.min(1000, budget) });
      if (page.objects.length === 0) break;
      await bucket.delete(page.objects.map((o) => o.key));
      budget -= page.objects.length;
      if (!page.truncated) break;
    }
    if (budget <= 0) return (await Promise.all(vaultPrefixes(vaultId).map((p) => bucket.list({ prefix: p, limit: 1 })))).every((l) => l.objects.length === 0);
  }
  return true;
}

/** The vault's index rows go (its nameplates and recovery ids); its abandoned_vaults row records the expiry. */
export async function finishExpiry(index: D1Database, vaultId: string, now: number): Promise<void> {
  await index.batch([
    index.prepare('DELETE FROM pairing_nameplates WHERE vault_id = ?1').bind(vaultId),
    index.prepare('DELETE FROM recovery_ids WHERE vault_id = ?1').bind(vaultId),
    index.prepare('UPDATE abandoned_vaults SET expired_at = ?2 WHERE vault_id = ?1').bind(vaultId, now),
  ]);
}
