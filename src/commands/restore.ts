/**
 * `casa restore`: the fresh-machine path (docs/ARCHITECTURE.md §3, casa-restore(1)) —
 * pair with the phrase if this home is not paired yet, then put the newest
 * snapshot (or `--snapshot ID`) in place of the database, keeping any
 * existing file as a backup beside it.
 *
 * Everything that can be refused cheaply is refused before anything is
 * written: a database in the way without a terminal or --yes (exit 2) even
 * before pairing. The replacement itself is src/snapshots/restore.ts; this file
 * also holds `restoreInto`, the part `casa pull` shares (lock, temp cleanup,
 * progress, local index, seen seq).
 */
import { existsSync, rmSync } from 'node:fs';
import { CancelledError, UnreachableError, UsageError } from '../errors.js';
import { readState } from '../state.js';
import { indexPath, writeIndex } from '../snapshots/page-index.js';
import { WorkerPool } from '../snapshots/pool.js';
import { installDatabase, PULL_CHECK_WORKERS, removeStaleTemps, removeWithSidecars, restoreToTemp, shortId, tempPathBeside } from '../snapshots/restore.js';
import type { Manifest } from '../snapshots/manifest.js';
import type { SnapshotInfo } from '../relay/snapshots.js';
import { acquireLock } from '../lock.js';
import { progress } from '../ui/progress.js';
import { confirm } from '../ui/prompts.js';
import { tracer, type Context } from './context.js';
import { runPair } from './pair.js';
import { formatBytes, listChecked, noSnapshotError, noteVerifiedSeq, openVault, resolveSnapshot, type OpenVault } from './snapshots.js';

export interface RestoreOptions {
  phraseStdin?: boolean;
  phraseFile?: string;
  snapshot?: string;
  thorough?: boolean;
  deviceName?: string;
}

/** The `--json` document (a benchmark parses it: keep the fields). */
export interface RestoreReport {
  message_type: 'restore';
  snapshot_id: string;
  seq: number;
  db_path: string;
  db_bytes: number;
  downloaded_bytes: number;
  backup_path: string | null;
  duration_ms: number;
}

export async function runRestore(ctx: Context, opts: RestoreOptions): Promise<RestoreReport> {
  const { out } = ctx;
  const dbPath = ctx.globals.db;
  if (opts.phraseStdin && opts.phraseFile !== undefined) {
    throw new UsageError('--phrase-stdin and --phrase-file cannot be used together');
  }
  // Refuse before pairing: a run that cannot finish should leave the home as it was.
  if (existsSync(dbPath) && !ctx.globals.yes && !out.interactive) {
    throw new UsageError(`${dbPath} already exists`, {
      hints: ['pass --yes to replace it (the old file is kept as a backup beside it)', 'or point --db (or CASA_DB) elsewhere'],
    });
  }

  const state = readState(ctx.globals.home);
  if (!state?.vault) {
    await runPair(ctx, { join: true, phraseStdin: opts.phraseStdin, phraseFile: opts.phraseFile, deviceName: opts.deviceName }, false);
  } else if (opts.phraseStdin || opts.phraseFile !== undefined || opts.deviceName !== undefined) {
    out.note(`this device is already paired with vault ${state.vault.vaultId}; the phrase and device name are not needed`);
  }

  const started = ctx.deps.now();
  const v = await openVault(ctx);
  const { head, snapshots } = await listChecked(ctx, v);
  if (!head) throw noSnapshotError();
  const chosen = opts.snapshot === undefined ? head : resolveSnapshot(snapshots, opts.snapshot);

  if (existsSync(dbPath) && !ctx.globals.yes) {
    const ok = await confirm(
      out,
      `Replace ${dbPath} with snapshot ${shortId(chosen.id)} (seq ${chosen.seq})? The current file is kept as a backup.`,
      'pass --yes',
    );
    if (!ok) throw new CancelledError('nothing restored');
  }

  const done = await restoreInto(ctx, v, chosen, { thorough: Boolean(opts.thorough), command: 'restore' });
  const report: RestoreReport = { message_type: 'restore', ...restoredFields(ctx, done, started) };
  printRestored(ctx, report);
  out.result({ ...report });
  return report;
}

/** The fields `restore --json` and `pull --json` share. */
export function restoredFields(ctx: Context, done: Installed, started: number): Omit<RestoreReport, 'message_type'> {
  return {
    snapshot_id: done.manifest.snapshotId,
    seq: done.manifest.seq,
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
  downloadedBytes: number;
  backupPath: string | null;
}

/**
 * Restores `snap` over the database under its lock (exit 8 if another casa
 * holds it): removes temps a killed run left, assembles and checks beside the
 * target, replaces it keeping a backup, then records the local page index.
 * `beforeInstall` runs under the lock, before anything is downloaded
 * (`casa pull` checks for local changes there).
 */
export async function restoreInto(
  ctx: Context,
  v: OpenVault,
  snap: SnapshotInfo,
  o: { thorough: boolean; command: string; beforeInstall?: (pool: WorkerPool) => Promise<void> },
): Promise<Installed> {
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
    return { manifest: restored.manifest, downloadedBytes: restored.downloadedBytes, backupPath };
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
  const { hasCapture, clearLocalLog } = await import('../changesets/capture.js');
  const Database = (await import('better-sqlite3')).default;
  const db = new Database(ctx.globals.db, { fileMustExist: true });
  try {
    if (!hasCapture(db)) return;
    clearLocalLog(db);
  } finally {
    db.close();
  }
  const { syncEnvOf, openSynced } = await import('./sync.js');
  const { loadSyncState, pullRound } = await import('../changesets/sync-run.js');
  const { writeSyncState } = await import('../changesets/sync-state.js');
  const env = syncEnvOf(ctx, v.p, v.api.session, v.keys);
  const before = loadSyncState(env);
  const w = manifest.changesetWatermark;
  writeSyncState(env.home, env.keys, env.dbPath, { ...before, cursor: w, baseCursor: w, chains: {} });
  const { db: synced, schema } = openSynced(ctx, v.p.vault.deviceId);
  try {
    const r = await pullRound(env, synced, schema);
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
