/**
 * The scheduled handler (wrangler.jsonc `triggers.crons`; locally the
 * launcher's own timer): retention (docs/RELAY-API.md "Retention"),
 * covered changesets, expired challenges and old pairing sessions. Each step is idempotent and
 * safe to run twice, concurrently, or beside uploads and commits:
 *
 * - D1 first, R2 second: a blob is deleted only after the row naming it is
 *   gone, by the key that row named (keys are per upload, so a later upload
 *   of the same pack has another key and is never touched);
 * - a pack row is deleted by one statement that re-checks, as it deletes,
 *   that no snapshot references it and nobody touched it within the grace
 *   period; a commit checks that its packs exist in its own transaction, so
 *   a committed snapshot never references a deleted pack;
 * - a blob no row names is deleted only once it is older than the grace
 *   period (an upload writes its row right after its blob);
 * - a changeset is pruned only once every retained snapshot includes it
 *   (cursor ≤ the lowest changeset_watermark), by a statement that reads
 *   the watermarks as it deletes.
 *
 * Work per run is bounded: BATCH rows or keys per step and round, at most
 * ROUNDS rounds; the R2 sweep resumes where the last run stopped (a cursor
 * per prefix in cron_state). Whatever is left waits for the next run.
 */
import { UPLOAD_KINDS, deleteBlobs } from './blobs.js';
import { pruneChangesets, vaultsToPrune } from './changeset-db.js';
import { deleteExpiredChallenges } from './db.js';
import type { Env } from './env.js';
import { deleteOldPairings } from './pairing-db.js';
import {
  deleteStalePendingManifests,
  deleteUnreferencedPacks,
  dropOldSnapshots,
  getCronState,
  setCronState,
  unnamedKeys,
  vaultsOverRetention,
} from './snapshot-db.js';

export const DEFAULT_RETENTION_KEEP = 30;
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
}

/** A var as a whole number (at least `min`), or the default when unset or malformed. */
function numberVar(text: string | undefined, fallback: number, min: number): number {
  if (text === undefined || !/^\d+$/.test(text.trim())) return fallback;
  const n = Number(text.trim());
  return Number.isSafeInteger(n) ? Math.max(n, min) : fallback;
}

function retentionSettings(env: Env): { keep: number; graceMs: number } {
  return {
    // At least 1: the head is never deleted (the commit's compare-and-swap reads it).
    keep: numberVar(env.RETENTION_KEEP, DEFAULT_RETENTION_KEEP, 1),
    graceMs: numberVar(env.PACK_GRACE_MS, DEFAULT_PACK_GRACE_MS, 0),
  };
}

export async function runCron(env: Env, now: number): Promise<CronReport> {
  const { keep, graceMs } = retentionSettings(env);
  const cutoff = now - graceMs;
  const report: CronReport = {
    expiredChallenges: 0,
    snapshotsDropped: 0,
    packsDeleted: 0,
    pendingManifestsDeleted: 0,
    changesetsPruned: 0,
    orphansDeleted: 0,
    pairingSessionsDeleted: 0,
  };

  // 1. Snapshots beyond the newest `keep` per vault, with their references and manifests.
  for (const vaultId of await vaultsOverRetention(env.DB, keep, BATCH)) {
    for (let round = 0; round < ROUNDS; round++) {
      const manifests = await dropOldSnapshots(env.DB, vaultId, keep, BATCH);
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

  // 3. Changesets every retained snapshot covers (after step 1, so only retained snapshots count).
  for (const vaultId of await vaultsToPrune(env.DB, BATCH)) {
    for (let round = 0; round < ROUNDS; round++) {
      const keys = await pruneChangesets(env.DB, vaultId, BATCH);
      await deleteBlobs(env.BLOBS, keys);
      report.changesetsPruned += keys.length;
      if (keys.length < BATCH) break;
    }
  }

  // 4. Blobs under packs/, manifests/ and changesets/ that no row names, older than the grace period.
  for (const kind of UPLOAD_KINDS) report.orphansDeleted += await sweepOrphans(env, `${kind}/`, cutoff);

  // 5. Expired challenges.
  report.expiredChallenges = await deleteExpiredChallenges(env.DB, now);

  // 6. Pairing sessions that expired more than PAIRING_KEEP_MS ago (whatever their state).
  for (let round = 0; round < ROUNDS; round++) {
    const n = await deleteOldPairings(env.DB, now - PAIRING_KEEP_MS, BATCH);
    report.pairingSessionsDeleted += n;
    if (n < BATCH) break;
  }
  return report;
}

/** Lists up to ROUNDS × BATCH keys under `prefix` from the saved cursor, deleting the unnamed old ones. */
async function sweepOrphans(env: Env, prefix: string, cutoff: number): Promise<number> {
  const cursorName = `sweep:${prefix}`;
  let startAfter = (await getCronState(env.DB, cursorName)) ?? undefined;
  let deleted = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const page = await env.BLOBS.list({ prefix, limit: BATCH, ...(startAfter === undefined ? {} : { startAfter }) });
    const old = page.objects.filter((o) => o.uploaded.getTime() < cutoff).map((o) => o.key);
    const orphans = await unnamedKeys(env.DB, old);
    await deleteBlobs(env.BLOBS, orphans);
    deleted += orphans.length;
    const last = page.objects[page.objects.length - 1]?.key;
    startAfter = page.truncated && last !== undefined ? last : undefined;
    if (startAfter === undefined) break;
  }
  await setCronState(env.DB, cursorName, startAfter ?? null);
  return deleted;
}
