/**
 * `casa restore`: the fresh-machine path (docs/ARCHITECTURE.md §3, casa-restore(1)) —
 * pair with the phrase if this home is not paired yet, then put the newest
 * snapshot (or `--snapshot ID`) in place of the database, keeping any
 * existing file as a backup beside it. The snapshot's manifest is opened
 * first: what restore says about it (seq, time, device; a warning when it is
 * older than what this device has seen) is authenticated, and a newest
 * snapshot that does not open names the newest that does (vault.ts openHead).
 *
 * Everything that can be refused cheaply is refused before anything is
 * written: a database in the way without a terminal or --yes (exit 2) even
 * before pairing. The replacement is src/commands/install.ts (shared with
 * `casa pull`) and src/snapshots/restore.ts.
 */
import { existsSync } from 'node:fs';
import { CancelledError, UsageError } from '../errors.js';
import { readState } from '../state.js';
import { shortId } from '../snapshots/restore.js';
import { formatTime } from '../ui/format.js';
import { confirm } from '../ui/prompts.js';
import type { Context } from './context.js';
import { pairDevice } from './pair.js';
import { runRestoreAt, type RestoreAtReport } from './restore-at.js';
import { printRestored, restoredFields, restoreInto, type RestoreReport } from './install.js';
import { describeSnapshot, listChecked, noSnapshotError, openHead, openSnapshot, openVault, resolveSnapshot } from './vault.js';

export interface RestoreOptions {
  phraseStdin?: boolean;
  phraseFile?: string;
  snapshot?: string;
  thorough?: boolean;
  deviceName?: string;
  /** With `to`: the database as it was at this time, to a new file (src/commands/restore-at.ts). */
  at?: string;
  to?: string;
}


export async function runRestore(ctx: Context, opts: RestoreOptions): Promise<RestoreReport | RestoreAtReport> {
  if (opts.at !== undefined || opts.to !== undefined) return runRestoreAt(ctx, opts);
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
    await pairDevice(ctx, { join: true, phraseStdin: opts.phraseStdin, phraseFile: opts.phraseFile, deviceName: opts.deviceName });
  } else if (opts.phraseStdin || opts.phraseFile !== undefined || opts.deviceName !== undefined) {
    out.note(`this device is already paired with vault ${state.vault.vaultId}; the phrase and device name are not needed`);
  }

  const started = ctx.deps.now();
  const v = await openVault(ctx);
  const { head, snapshots } = await listChecked(ctx, v);
  if (!head) throw noSnapshotError();
  // The manifest first: what is said about the snapshot (and asked) is what it authenticates.
  const opened = opts.snapshot === undefined ? await openHead(v, head, snapshots) : await openSnapshot(v, resolveSnapshot(snapshots, opts.snapshot));
  describeSnapshot(ctx, v, opened);
  const m = opened.manifest;

  if (existsSync(dbPath) && !ctx.globals.yes) {
    const ok = await confirm(
      out,
      `Replace ${dbPath} with snapshot ${shortId(m.snapshotId)} (seq ${m.seq}, taken ${formatTime(m.time)})? The current file is kept as a backup.`,
      'pass --yes',
    );
    if (!ok) throw new CancelledError('nothing restored');
  }

  const done = await restoreInto(ctx, v, opened, { thorough: Boolean(opts.thorough), command: 'restore' });
  const report: RestoreReport = { message_type: 'restore', ...restoredFields(ctx, done, started) };
  printRestored(ctx, report);
  out.result({ ...report });
  return report;
}
