/**
 * `casa snapshot [--force]`: pushes a snapshot of the database when it
 * changed since the last one this device made (docs/ARCHITECTURE.md §3). Made for cron, a
 * systemd timer or launchd: no prompt, nothing on stdout with --quiet, a
 * documented exit code, a progress bar only on a terminal. The work is the
 * engine's (src/snapshots/snapshot.ts); this file checks the inputs, takes the
 * database's lock, and reports.
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { CasaError, FailureError } from '../errors.js';
import { acquireLock } from '../lock.js';
import { WorkerPool } from '../snapshots/pool.js';
import type { VaultKeys } from '../crypto/kdf.js';
import { readSyncState } from '../changesets/sync-state.js';
import { takeSnapshot, type SnapshotPhase, type SnapshotResult } from '../snapshots/snapshot.js';
import { progress, type ProgressBar } from '../ui/progress.js';
import { tracer, type Context } from './context.js';
import { formatBytes, formatCount } from '../ui/format.js';
import { openVault } from './vault.js';

/**
 * Threads that hash and seal (zstd, AES-GCM). An incremental snapshot hashes
 * every page and seals a few packs: on the main thread, which then waits for
 * the relay between packs (a worker would cost ~18 MB of memory for no time
 * measured here: 1 GiB + a week, 2.5 s either way). A snapshot that seals
 * every page (the first one) uses one worker for sealing, and the main
 * thread only uploads: the relay takes the other core (1 GiB: ~6 s, against
 * ~7.5 s sealing on the main thread).
 */
const FULL_UPLOAD_WORKERS = 1;

export interface SnapshotCommandOptions {
  force?: boolean;
}

/** The `--json` document (a benchmark harness parses it: keep the fields stable). */
export interface SnapshotReport {
  message_type: 'snapshot';
  status: 'committed' | 'up_to_date';
  snapshot_id: string;
  seq: number;
  db_bytes: number;
  changed_pages: number;
  total_pages: number;
  uploaded_bytes: number;
  uploaded_objects: number;
  reused_packs: number;
  stored_bytes: number;
  duration_ms: number;
}

/** How far `casa sync` has applied the vault's changesets to this database (0 if it never did). */
function changesetCursor(ctx: Context, keys: VaultKeys, dbPath: string): number {
  try {
    return readSyncState(ctx.globals.home, keys, dbPath)?.cursor ?? 0;
  } catch {
    return 0; // a damaged state file: `casa sync` reports it; the snapshot claims nothing
  }
}

export async function runSnapshot(ctx: Context, opts: SnapshotCommandOptions): Promise<SnapshotReport> {
  try {
    return await snapshotOnce(ctx, opts);
  } catch (err) {
    // Another device started a key epoch while this one was sealing: once more, under the new keys.
    if (!(err instanceof CasaError && err.relay?.code === 'stale_epoch')) throw err;
    ctx.out.note('the vault started a new key epoch during the snapshot; taking it again under the new keys');
    return await snapshotOnce(ctx, opts);
  }
}

async function snapshotOnce(ctx: Context, opts: SnapshotCommandOptions): Promise<SnapshotReport> {
  const dbPath = ctx.globals.db;
  const v = await openVault(ctx);
  requireSqliteFile(dbPath);
  const lock = acquireLock(ctx.globals.home, dbPath, 'snapshot');
  const pool = new WorkerPool(v.keys, 0, { mainLane: true });
  let bar: ProgressBar | undefined;
  try {
    const labels: Record<SnapshotPhase, string> = { copy: 'copying', read: 'reading', upload: 'uploading' };
    const r = await takeSnapshot(
      {
        home: ctx.globals.home,
        dbPath,
        keys: v.keys,
        deviceId: v.p.vault.deviceId,
        highestSeq: v.p.vault.highestSeq ?? 0,
        api: v.api,
        server: v.p.client.server,
        pool,
        fullUploadPool: () => new WorkerPool(v.keys, FULL_UPLOAD_WORKERS),
        random: ctx.deps.random,
        now: ctx.deps.now,
        signal: ctx.deps.signal,
        onPhase: (phase, total) => {
          bar?.done();
          bar = progress(ctx.out, labels[phase], total);
        },
        onProgress: (bytes) => bar?.add(bytes),
        trace: tracer(ctx),
        tmpDir: ctx.deps.term.env.CASA_TMPDIR || undefined,
        // Read before the view is taken: it then holds at least every changeset up to here.
        changesetWatermark: changesetCursor(ctx, v.keys, dbPath),
      },
      { force: Boolean(opts.force) },
    );
    bar?.done();
    const report = toReport(r);
    ctx.summary = formatSnapshot(r);
    ctx.out.print(ctx.summary);
    ctx.out.result({ ...report });
    return report;
  } finally {
    bar?.done();
    await pool.close();
    lock.release();
  }
}

function toReport(r: SnapshotResult): SnapshotReport {
  return {
    message_type: 'snapshot',
    status: r.status,
    snapshot_id: r.snapshotId,
    seq: r.seq,
    db_bytes: r.dbBytes,
    changed_pages: r.changedPages,
    total_pages: r.totalPages,
    uploaded_bytes: r.uploadedBytes,
    uploaded_objects: r.uploadedObjects,
    reused_packs: r.reusedPacks,
    stored_bytes: r.storedBytes,
    duration_ms: r.durationMs,
  };
}

export function formatSnapshot(r: SnapshotResult): string {
  const n = formatCount;
  if (r.status === 'up_to_date') return `up to date: snapshot ${r.seq} already holds this database`;
  const packs = `${n(r.uploadedObjects)} ${r.uploadedObjects === 1 ? 'pack' : 'packs'}`;
  const compacted = r.compactedPages > 0 ? ` (${n(r.compactedPages)} unchanged pages re-packed)` : '';
  return (
    `snapshot ${r.seq} committed: ${n(r.changedPages)} of ${n(r.totalPages)} pages changed, ` +
    `${formatBytes(r.uploadedBytes)} uploaded in ${packs}${compacted}`
  );
}

const SQLITE_MAGIC = Buffer.from('SQLite format 3\0', 'latin1');

/** That --db names a readable SQLite file (by its header, nothing more); a clear exit 1 for the usual mistakes: no file, a directory, or a file that is not SQLite. */
function requireSqliteFile(dbPath: string): void {
  const hints = ['point --db (or CASA_DB) at the Casaconomy database file'];
  let size: number;
  try {
    const st = statSync(dbPath);
    if (!st.isFile()) throw new FailureError(`${dbPath} is not a file`, { hints });
    size = st.size;
  } catch (err) {
    if (err instanceof FailureError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new FailureError(code === 'ENOENT' ? `no database at ${dbPath}` : `cannot read ${dbPath} (${code})`, { hints });
  }
  const head = Buffer.alloc(SQLITE_MAGIC.length);
  let got = 0;
  try {
    const fd = openSync(dbPath, 'r');
    try {
      got = readSync(fd, head, 0, head.length, 0);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    throw new FailureError(`cannot read ${dbPath} (${(err as NodeJS.ErrnoException).code})`, { hints });
  }
  if (size === 0 || got < head.length || !head.equals(SQLITE_MAGIC)) {
    throw new FailureError(`${dbPath} is not a SQLite database`, { hints });
  }
}
