/**
 * Installing a snapshot over the database: the part `casa restore` and `casa
 * pull` share (docs/ARCHITECTURE.md §3) — the database's locks (exit 8 if
 * another casa holds one), temps a killed run left removed, the snapshot
 * assembled and checked beside the target (src/snapshots/restore.ts), the
 * replacement with a backup kept, the local page index and the verified seq
 * recorded, then the changesets after the snapshot applied. What both print
 * and put in `--json` is built here too.
 */
import { rmSync } from 'node:fs';
import { CancelledError, UnreachableError } from '../errors.js';
import { indexPath, writeIndex } from '../snapshots/page-index.js';
import { WorkerPool } from '../snapshots/pool.js';
import { installDatabase, PULL_CHECK_WORKERS, removeStaleTemps, removeWithSidecars, restoreToTemp, shortId, tempPathBeside } from '../snapshots/restore.js';
import type { Manifest } from '../snapshots/manifest.js';
import { acquireLock } from '../lock.js';
import { progress } from '../ui/progress.js';
import { formatBytes, sanitize } from '../ui/format.js';
import { tracer, type Context } from './context.js';
import { noteVerifiedSeq, type OpenedSnapshot, type OpenVault } from './vault.js';

/**
 * The `--json` document (a benchmark parses it: keep the fields; new ones
 * are only added). `snapshot_time`, `device_id`: from the authenticated
 * manifest (when and on which device the snapshot was taken);
 * `device_name`: the relay's name for that device, or null.
 */
export interface RestoreReport {
  message_type: 'restore';
  snapshot_id: string;
  seq: number;
  snapshot_time: number;
  device_id: string;
  device_name: string | null;
  db_path: string;
  db_bytes: number;
  downloaded_bytes: number;
  backup_path: string | null;
  duration_ms: number;
}

/** The fields `restore --json` and `pull --json` share. */
export function restoredFields(ctx: Context, done: Installed, started: number): Omit<RestoreReport, 'message_type'> {
  return {
    snapshot_id: done.manifest.snapshotId,
    seq: done.manifest.seq,
    snapshot_time: done.manifest.time,
    device_id: done.manifest.deviceId,
    device_name: done.deviceName,
    db_path: ctx.globals.db,
    db_bytes: done.manifest.dbBytes,
    downloaded_bytes: done.downloadedBytes,
    backup_path: done.backupPath,
    duration_ms: ctx.deps.now() - started,
  };
}

export function printRestored(ctx: Context, r: Omit<RestoreReport, 'message_type'>): void {
  ctx.out.print(
    [
      `restored snapshot ${shortId(r.snapshot_id)} (seq ${r.seq}, ${formatBytes(r.db_bytes)}) to ${r.db_path}`,
      ...(r.backup_path ? [`the previous database is kept as ${r.backup_path}`] : []),
    ].join('\n'),
  );
}

export interface Installed {
  manifest: Manifest;
  /** The relay's name of the device the manifest names (sanitized), or null. */
  deviceName: string | null;
  downloadedBytes: number;
  backupPath: string | null;
}

/**
 * Restores the opened snapshot over the database under its lock (exit 8 if
 * another casa holds it): removes temps a killed run left, assembles and
 * checks beside the target, replaces it keeping a backup (and at most
 * BACKUPS_KEPT of them: src/snapshots/restore.ts installDatabase), then
 * records the local page index and the seq, authenticated.
 * `beforeInstall` runs under the lock, before any pack is downloaded
 * (`casa pull` checks for local changes there).
 */
export async function restoreInto(
  ctx: Context,
  v: OpenVault,
  opened: OpenedSnapshot,
  o: { thorough: boolean; command: string; beforeInstall?: (pool: WorkerPool) => Promise<void> },
): Promise<Installed> {
  const snap = opened.snap;
  const dbPath = ctx.globals.db;
  const lock = acquireLock(ctx.globals.home, dbPath, o.command);
  // `casa sync` (or --watch) must not write to the file being replaced.
  let syncLock: ReturnType<typeof acquireLock>;
  try {
    syncLock = acquireLock(ctx.globals.home, `${dbPath}#sync`, o.command);
  } catch (err) {
    lock.release();
    throw err;
  }
  const trace = tracer(ctx);
  try {
    removeStaleTemps(dbPath);
    if (o.beforeInstall) {
      const pool = new WorkerPool(v.keys, PULL_CHECK_WORKERS, { mainLane: true });
      try {
        await o.beforeInstall(pool);
      } finally {
        await pool.close();
      }
    }
    let bar: ReturnType<typeof progress> | undefined;
    const restored = await restoreToTemp({
      api: v.api,
      keys: v.keys,
      ref: { id: snap.id, seq: snap.seq },
      opened,
      tmpPath: tempPathBeside(dbPath, ctx.deps.random),
      thorough: o.thorough,
      signal: ctx.deps.signal,
      trace,
      onStart: (m) => {
        bar = progress(ctx.out, `restoring ${shortId(m.snapshotId)}`, m.dbBytes);
        return (n) => bar!.add(n);
      },
    }).finally(() => bar?.done());
    if (ctx.deps.signal.aborted) {
      removeWithSidecars(restored.tmpPath);
      throw new CancelledError();
    }
    // The index describes the database being replaced: drop it first, so a kill between the
    // rename and the new index leaves no index (pull then counts the database as changed)
    // rather than one that claims the old snapshot.
    rmSync(indexPath(ctx.globals.home, v.keys, dbPath), { force: true });
    const backupPath = installDatabase(restored.tmpPath, dbPath, ctx.deps.now());
    trace?.('installed');
    writeIndex(ctx.globals.home, v.keys, dbPath, {
      manifest: restored.manifest,
      hashes: restored.hashes,
      source: 'restore',
      updatedAt: ctx.deps.now(),
    });
    noteVerifiedSeq(ctx, restored.manifest.seq);
    trace?.('index written');
    await catchUpChangesets(ctx, v, restored.manifest);
    const deviceName = snap.deviceId === restored.manifest.deviceId && snap.deviceName !== null ? sanitize(snap.deviceName) : null;
    return { manifest: restored.manifest, deviceName, downloadedBytes: restored.downloadedBytes, backupPath };
  } finally {
    syncLock.release();
    lock.release();
  }
}

/**
 * Changesets after the snapshot (docs/ARCHITECTURE.md §4): the restored database holds the
 * vault up to `manifest.changesetWatermark`; apply every changeset after it.
 * The change log the snapshot brought is the snapshotting device's, not this
 * one's: it is cleared (those changes are in the restored file; the device
 * that made them pushes them itself). This device's own push counter and
 * clock carry over, so its next batch continues its chain. A relay that is
 * away only delays the catch-up (the next `casa sync` does it); a tampered
 * changeset fails with exit 6, the restored snapshot staying in place.
 */
async function catchUpChangesets(ctx: Context, v: OpenVault, manifest: Manifest): Promise<void> {
  const { hasCapture } = await import('../changesets/capture.js');
  const { clearLocalLog } = await import('../changesets/change-log.js');
  const Database = (await import('better-sqlite3')).default;
  const db = new Database(ctx.globals.db, { fileMustExist: true });
  try {
    if (!hasCapture(db)) return;
    clearLocalLog(db);
  } finally {
    db.close();
  }
  const { syncEnvOf, openSynced, refreshSynced } = await import('./synced.js');
  const { loadSyncState, pullRound } = await import('../changesets/sync-run.js');
  const { writeSyncState } = await import('../changesets/sync-state.js');
  const env = syncEnvOf(ctx, v.p, v.api.session, v.keys);
  const before = loadSyncState(env);
  const w = manifest.changesetWatermark;
  writeSyncState(env.home, env.keys, env.dbPath, { ...before, cursor: w, baseCursor: w, chains: {} });
  const { db: synced, schema } = openSynced(ctx, v.p.vault.deviceId, { lenient: true });
  try {
    const r = await pullRound(env, synced, schema);
    // Settings the changesets carried (a table declared after the snapshot): derived again, and what waited for them applied.
    refreshSynced(ctx, synced, v.p.vault.deviceId, { lenient: true });
    if (r.pulledChanges > 0) ctx.out.note(`caught up: applied ${r.applied} of ${r.pulledChanges} changes from ${r.pulledBatches} changesets after the snapshot`);
  } catch (err) {
    if (err instanceof UnreachableError) {
      ctx.out.warn(`${err.message}: the changesets after the snapshot are not applied yet; \`casa sync\` applies them`);
      return;
    }
    throw err;
  } finally {
    synced.close();
  }
}
