/**
 * `casa pull`: replace the database with the relay's newest snapshot when it
 * is newer than the one this database was last synced to (the local page
 * index's manifest). Never loses local work: a database that changed since
 * (a consistent view's page hashes differ from the index's; a database with
 * no index counts as changed) is refused with exit 3 unless --force, and even
 * then the replaced file is kept as a backup. Same machinery as restore;
 * what it says about the snapshot comes from its authenticated manifest.
 */
import { existsSync } from 'node:fs';
import { ConflictError } from '../errors.js';
import { readDatabase, scratchDir } from '../snapshots/db-copy.js';
import { readIndex, statDatabase, type PageIndex } from '../snapshots/page-index.js';
import type { WorkerPool } from '../snapshots/pool.js';
import { shortId } from '../snapshots/restore.js';
import type { Context } from './context.js';
import { printRestored, restoredFields, restoreInto, type RestoreReport } from './install.js';
import { describeSnapshot, listChecked, openHead, openVault, type OpenVault } from './vault.js';

export interface PullOptions {
  force?: boolean;
}

export type PullReport =
  | { message_type: 'pull'; status: 'up_to_date'; seq: number | null; db_path: string }
  | ({ status: 'pulled' } & Omit<RestoreReport, 'message_type'> & { message_type: 'pull' });

export async function runPull(ctx: Context, opts: PullOptions): Promise<PullReport> {
  const dbPath = ctx.globals.db;
  const started = ctx.deps.now();
  const v = await openVault(ctx);
  const { head, snapshots } = await listChecked(ctx, v);
  const index = readIndex(ctx.globals.home, v.keys, dbPath);
  const synced = index?.manifest.seq ?? 0;

  if (!head || (head.seq <= synced && existsSync(dbPath))) {
    const report: PullReport = { message_type: 'pull', status: 'up_to_date', seq: synced || null, db_path: dbPath };
    ctx.out.print(
      head ? `up to date: ${dbPath} is at snapshot ${shortId(index!.manifest.snapshotId)} (seq ${synced})` : 'up to date: the vault has no snapshot yet',
    );
    ctx.out.result(report);
    return report;
  }

  // The head's manifest first (a head that does not open names the newest snapshot that does: vault.ts openHead).
  const opened = await openHead(v, head, snapshots);
  describeSnapshot(ctx, v, opened);
  const done = await restoreInto(ctx, v, opened, {
    thorough: false,
    command: 'pull',
    beforeInstall: async (pool) => {
      if (!existsSync(dbPath)) return;
      // With changeset sync, local work lives in the change log: push it, and nothing is lost.
      if (await pushPending(ctx, v)) return;
      if (opts.force) return;
      if (!index || (await changedSince(ctx, pool, dbPath, index))) {
        throw new ConflictError(
          index
            ? `${dbPath} changed since snapshot ${shortId(index.manifest.snapshotId)} (seq ${synced}); pulling would lose those changes`
            : `${dbPath} was never synced on this device; pulling would replace it`,
          {
            hints: [
              'run `casa snapshot` first to keep the local changes in the vault',
              'or `casa pull --force` to replace the database anyway (the current file is kept as a backup)',
            ],
          },
        );
      }
    },
  });
  const report: PullReport = { message_type: 'pull', status: 'pulled', ...restoredFields(ctx, done, started) };
  printRestored(ctx, report);
  ctx.out.result(report);
  return report;
}

/**
 * If the database has changeset capture, pushes its pending changes (they
 * come back after the snapshot as changesets) and says true; else false.
 */
async function pushPending(ctx: Context, v: OpenVault): Promise<boolean> {
  const { hasCapture } = await import('../changesets/capture.js');
  const Database = (await import('better-sqlite3')).default;
  // Read-write only so that closing it removes the -wal/-shm a read-only connection would leave behind.
  const probe = new Database(ctx.globals.db, { fileMustExist: true });
  let captured: boolean;
  try {
    captured = hasCapture(probe);
  } finally {
    probe.close();
  }
  if (!captured) return false;
  const { syncEnvOf, openSynced } = await import('./synced.js');
  const { pushRound } = await import('../changesets/sync-run.js');
  const env = syncEnvOf(ctx, v.p, v.api.session, v.keys);
  const { db, schema } = openSynced(ctx, v.p.vault.deviceId, { lenient: true });
  try {
    const r = await pushRound(env, db, schema);
    if (r.pushedChanges > 0) ctx.out.note(`pushed ${r.pushedChanges} local changes before replacing the database`);
  } finally {
    db.close();
  }
  return true;
}

/** Whether the database's pages differ from the index's (a consistent view, hashed). */
async function changedSince(ctx: Context, pool: WorkerPool, dbPath: string, index: PageIndex): Promise<boolean> {
  const copy = await readDatabase(dbPath, () => scratchDir(ctx.globals.home, statDatabase(dbPath).size, ctx.globals.tmpDir), pool);
  try {
    if (copy.pageCount !== index.manifest.pageCount || copy.pageSize !== index.manifest.pageSize) return true;
    return !Buffer.from(copy.hashes).equals(Buffer.from(index.hashes));
  } finally {
    copy.close();
  }
}
