/**
 * The retention job of one vault, run by the vault's object (worker/vault.ts)
 * on its own database when its alarm is due (RETENTION_EVERY_MS), or when
 * the local launcher pokes it (`casa relay --retention-every`, tests'
 * runCron): retention (docs/RELAY-API.md "Retention"), covered changesets,
 * expired challenges and old pairing sessions. Each step is idempotent and
 * safe to run twice, concurrently, or beside uploads and commits:
 *
 * - retention is by age, from times the relay recorded itself (a snapshot's
 *   commit time, a changeset's arrival): nothing committed within
 *   RETENTION_WINDOW goes, older snapshots are thinned to one per day, week
 *   or month, the head always stays (docs/SECURITY.md §4.7). No count is
 *   involved, so no number of commits from one device pushes anything out;
 * - the database first, R2 second: a blob is deleted only after the row naming it is
 *   gone, by the key that row named (keys are per upload, so a later upload
 *   of the same pack has another key and is never touched);
 * - a pack row is deleted by one statement that re-checks, as it deletes,
 *   that no snapshot references it and nobody touched it within the grace
 *   period; a commit checks that its packs exist in its own transaction, so
 *   a committed snapshot never references a deleted pack;
 * - a blob no row names is deleted only once it is older than the grace
 *   period (an upload writes its row right after its blob);
 * - a changeset is pruned only once it arrived before the window and every
 *   retained snapshot includes it (cursor ≤ the lowest changeset_watermark),
 *   by a statement that reads the watermarks and arrival times as it deletes.
 *
 * Work per run is bounded: BATCH rows or keys per step and round, at most
 * ROUNDS rounds; the R2 sweep resumes where the last run stopped (a cursor
 * per prefix in the vault's cron_state). Whatever is left waits for the next run.
 */
import { UPLOAD_KINDS, deleteBlobs } from './blobs.js';
import { pruneChangesets, vaultsToPrune } from './changeset-db.js';
import { deleteExpiredChallenges } from './db.js';
import type { RouteEnv } from './env.js';
import { quotasOf } from './quotas.js';
import { deleteOldPairings } from './pairing-db.js';
import {
  deleteStalePendingManifests,
  deleteUnreferencedPacks,
  getCronState,
  setCronState,
  thinSnapshots,
  unnamedKeys,
  vaultsToThin,
  type Thinning,
} from './snapshot-db.js';

const DAY_MS = 24 * 60 * 60 * 1000;
/** RETENTION_WINDOW's default: 30 days. */
export const DEFAULT_RETENTION_WINDOW_MS = 30 * DAY_MS;
/** Past the window, one snapshot per UTC day is kept up to this age, one per ISO week up to the next, one per month beyond. */
export const DAILY_UNTIL_MS = 90 * DAY_MS;
export const WEEKLY_UNTIL_MS = 365 * DAY_MS;
export const DEFAULT_PACK_GRACE_MS = 6 * 60 * 60 * 1000;
/** A pairing session is deleted this long after it expired (until then its end is still visible). */
export const PAIRING_KEEP_MS = 60 * 60 * 1000;
const BATCH = 500;
const ROUNDS = 4;

export interface CronReport {
  expiredChallenges: number;
  snapshotsDropped: number;
  packsDeleted: number;
  pendingManifestsDeleted: number;
  /** Changeset batches every retained snapshot covers. */
  changesetsPruned: number;
  /** Blobs no row names (packs, manifests, changesets). */
  orphansDeleted: number;
  pairingSessionsDeleted: number;
  /** Audit rows past a vault's QUOTA_AUDIT_ROWS (worker/quotas.ts). */
  auditRowsDeleted: number;
  /** R2 list calls made (billed per call: an idle vault makes none). */
  r2Lists: number;
}

/** A var as a whole number (at least `min`), or the default when unset or malformed. */
function numberVar(text: string | undefined, fallback: number, min: number): number {
  if (text === undefined || !/^\d+$/.test(text.trim())) return fallback;
  const n = Number(text.trim());
  return Number.isSafeInteger(n) ? Math.max(n, min) : fallback;
}

export function retentionSettings(env: Pick<RouteEnv, 'RETENTION_WINDOW' | 'PACK_GRACE_MS'>): { windowMs: number; graceMs: number } {
  return {
    // A malformed window falls back to the default, never to no protection.
    windowMs: numberVar(env.RETENTION_WINDOW, DEFAULT_RETENTION_WINDOW_MS, 0),
    // At least a second: an upload's blob lands a moment before its row, and a sweep must not fall between the two.
    graceMs: numberVar(env.PACK_GRACE_MS, DEFAULT_PACK_GRACE_MS, 1000),
  };
}

/**
 * The tiers at `now` (relay time): snapshots committed at or after
 * `windowStart` are all kept; before it, one per UTC day from `dailyFrom`,
 * one per ISO week from `weeklyFrom`, one per calendar month before that.
 * A window longer than a tier's age leaves that tier empty.
 */
export function thinningAt(now: number, windowMs: number): Thinning {
  const windowStart = now - windowMs;
  return {
    windowStart,
    dailyFrom: Math.min(windowStart, now - DAILY_UNTIL_MS),
    weeklyFrom: Math.min(windowStart, now - WEEKLY_UNTIL_MS),
  };
}

/** The retention job for one vault, run in its object (worker/vault.ts) on its own database. */
export async function runCron(env: RouteEnv, now: number, vaultId: string): Promise<CronReport> {
  const { windowMs, graceMs } = retentionSettings(env);
  const thinning = thinningAt(now, windowMs);
  const cutoff = now - graceMs;
  const report: CronReport = {
    expiredChallenges: 0,
    snapshotsDropped: 0,
    packsDeleted: 0,
    pendingManifestsDeleted: 0,
    changesetsPruned: 0,
    orphansDeleted: 0,
    pairingSessionsDeleted: 0,
    auditRowsDeleted: 0,
    r2Lists: 0,
  };

  // 1. Snapshots older than the window that their day, week or month does not keep, with their references and manifests.
  for (const vaultId of await vaultsToThin(env.DB, thinning, BATCH)) {
    for (let round = 0; round < ROUNDS; round++) {
      const manifests = await thinSnapshots(env.DB, vaultId, thinning, BATCH);
      await deleteBlobs(env.BLOBS, manifests);
      report.snapshotsDropped += manifests.length;
      if (manifests.length < BATCH) break;
    }
  }

  // 2. Packs nothing references, untouched for the grace period; then pending manifests never committed.
  for (const [step, field] of [
    [deleteUnreferencedPacks, 'packsDeleted'],
    [deleteStalePendingManifests, 'pendingManifestsDeleted'],
  ] as const) {
    for (let round = 0; round < ROUNDS; round++) {
      const keys = await step(env.DB, cutoff, BATCH);
      await deleteBlobs(env.BLOBS, keys);
      report[field] += keys.length;
      if (keys.length < BATCH) break;
    }
  }

  // 3. Changesets that arrived before the window and that every retained snapshot covers
  //    (after step 1, so only retained snapshots count).
  for (const vaultId of await vaultsToPrune(env.DB, thinning.windowStart, BATCH)) {
    for (let round = 0; round < ROUNDS; round++) {
      const keys = await pruneChangesets(env.DB, vaultId, thinning.windowStart, BATCH);
      await deleteBlobs(env.BLOBS, keys);
      report.changesetsPruned += keys.length;
      if (keys.length < BATCH) break;
    }
  }

  // 4. Blobs under the vault's packs/, manifests/ and changesets/ prefixes that no row names, older than the grace period:
  //    only once an upload (the only way to leave one) is past the grace period, so an idle vault lists nothing in R2.
  const due = Number((await getCronState(env.DB, SWEEP_DUE)) ?? NaN);
  if (Number.isFinite(due) && due < cutoff) {
    let done = true;
    for (const kind of UPLOAD_KINDS) {
      const r = await sweepOrphans(env, `${kind}/${vaultId}/`, cutoff, report);
      report.orphansDeleted += r.deleted;
      done &&= r.done;
    }
    if (done) {
      // Uploads since the cutoff are not covered yet: the next sweep comes once the newest of them is past the grace
      // period. (An upload that stored no row is not seen here: what it left is swept after the vault's next upload.)
      const last = await newestUpload(env.DB);
      await setCronState(env.DB, SWEEP_DUE, last >= cutoff ? String(last) : null);
    }
  }

  // 5. Expired challenges.
  report.expiredChallenges = await deleteExpiredChallenges(env.DB, now);

  // 6. Pairing sessions that expired more than PAIRING_KEEP_MS ago (whatever their state).
  for (let round = 0; round < ROUNDS; round++) {
    const n = await deleteOldPairings(env.DB, now - PAIRING_KEEP_MS, BATCH);
    report.pairingSessionsDeleted += n;
    if (n < BATCH) break;
  }

  // 7. Audit rows beyond each vault's quota, oldest first; membership events are never dropped.
  report.auditRowsDeleted = await pruneAudit(env.DB, quotasOf(env).auditRows);
  return report;
}

/** Events that are the vault's membership history: kept whatever the quota (bounded by the devices quota). */
const KEPT_EVENTS = "('vault_created', 'device_enrolled', 'device_revoked', 'epoch_created', 'paper_replaced')";

/** Deletes the oldest other audit rows once the vault holds more than a tenth past `keep`, down to `keep` (its object holds one vault). */
export async function pruneAudit(db: D1Database, keep: number): Promise<number> {
  // The count is kept by triggers (migrations/0008_usage.sql); prune only a tenth past the quota, so a run reads one row.
  const rows = await db.prepare("SELECT value AS n FROM usage WHERE name = 'audit_rows'").first<{ n: number }>();
  if ((rows?.n ?? 0) <= keep + Math.floor(keep / 10)) return 0;
  const res = await db
    .prepare(
      `DELETE FROM audit_log WHERE event NOT IN ${KEPT_EVENTS}
         AND id <= (SELECT id FROM audit_log ORDER BY id DESC LIMIT 1 OFFSET ?1)`,
    )
    .bind(keep)
    .run();
  return res.meta.changes ?? 0;
}

/** Lists up to ROUNDS × BATCH keys under `prefix` from the saved cursor, deleting the unnamed old ones. */
async function sweepOrphans(env: RouteEnv, prefix: string, cutoff: number, report: CronReport): Promise<{ deleted: number; done: boolean }> {
  const cursorName = `sweep:${prefix}`;
  let startAfter = (await getCronState(env.DB, cursorName)) ?? undefined;
  let deleted = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const page = await env.BLOBS.list({ prefix, limit: BATCH, ...(startAfter === undefined ? {} : { startAfter }) });
    report.r2Lists++;
    const old = page.objects.filter((o) => o.uploaded.getTime() < cutoff).map((o) => o.key);
    const orphans = await unnamedKeys(env.DB, old);
    await deleteBlobs(env.BLOBS, orphans);
    deleted += orphans.length;
    const last = page.objects[page.objects.length - 1]?.key;
    startAfter = page.truncated && last !== undefined ? last : undefined;
    if (startAfter === undefined) break;
  }
  await setCronState(env.DB, cursorName, startAfter ?? null);
  return { deleted, done: startAfter === undefined };
}

/** cron_state: the earliest upload not yet covered by a finished sweep (worker/vault.ts markUpload). */
export const SWEEP_DUE = 'sweep:due';

/** When the vault last stored a blob, by its rows (each read through an index: three rows). */
async function newestUpload(db: D1Database): Promise<number> {
  const row = await db
    .prepare(
      `SELECT max(coalesce((SELECT max(touched_at) FROM packs), 0), coalesce((SELECT max(created_at) FROM changesets), 0),
                  coalesce((SELECT max(created_at) FROM manifest_uploads), 0)) AS t`,
    )
    .first<{ t: number }>();
  return row?.t ?? 0;
}
