/**
 * `casa verify`: the restore drill (DESIGN §6). Restores the newest snapshot
 * (`--snapshot ID` another, `--all` every one) into a temp directory with
 * every check a restore runs — manifest identity, each pack's AEAD and id,
 * the whole file's SHA-256, `PRAGMA quick_check` (`integrity_check` with
 * --thorough) — then removes it. Touches nothing else: not the database, not
 * the local index. Exit 6 if any snapshot fails (4 if one was sealed under
 * another key).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthError, CasaError, EXIT, IntegrityError, UsageError } from '../errors.js';
import { removeWithSidecars, restoreToTemp, shortId } from '../sync/restore.js';
import type { SnapshotInfo } from '../sync/snapshot-api.js';
import { progress } from '../ui/progress.js';
import type { Context } from './context.js';
import { formatBytes, listChecked, noSnapshotError, noteVerifiedSeq, openVault, resolveSnapshot } from './snapshots.js';

export interface VerifyOptions {
  all?: boolean;
  snapshot?: string;
  thorough?: boolean;
}

export interface VerifyReport {
  message_type: 'verify';
  snapshots: { snapshot_id: string; seq: number; ok: boolean; error: string | null }[];
}

export async function runVerify(ctx: Context, opts: VerifyOptions): Promise<VerifyReport> {
  if (opts.all && opts.snapshot !== undefined) throw new UsageError('--all and --snapshot cannot be used together');
  const v = await openVault(ctx);
  const { head, snapshots } = await listChecked(ctx, v);
  if (!head) throw noSnapshotError();
  const targets: SnapshotInfo[] = opts.all ? snapshots : [opts.snapshot === undefined ? head : resolveSnapshot(snapshots, opts.snapshot)];

  const report: VerifyReport = { message_type: 'verify', snapshots: [] };
  let firstFailure: CasaError | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'casa-verify-'));
  try {
    for (const s of targets) {
      const tmpPath = join(dir, `${s.id}.db`);
      let bar: ReturnType<typeof progress> | undefined;
      try {
        await restoreToTemp({
          api: v.api,
          keys: v.keys,
          ref: { id: s.id, seq: s.seq },
          tmpPath,
          thorough: Boolean(opts.thorough),
          signal: ctx.deps.signal,
          onStart: (m) => {
            bar = progress(ctx.out, `verifying ${shortId(s.id)}`, m.dbBytes);
            return (n) => bar!.add(n);
          },
        }).finally(() => bar?.done());
        removeWithSidecars(tmpPath);
        noteVerifiedSeq(ctx, s.seq);
        report.snapshots.push({ snapshot_id: s.id, seq: s.seq, ok: true, error: null });
        ctx.out.print(`ok      ${shortId(s.id)}  seq ${s.seq}  ${formatBytes(s.dbBytes)}`);
      } catch (err) {
        // Integrity and wrong-key failures are this snapshot's verdict; anything else (relay down, Ctrl-C) stops the drill.
        if (!(err instanceof CasaError) || (err.exitCode !== EXIT.integrity && err.exitCode !== EXIT.auth)) throw err;
        firstFailure ??= err;
        report.snapshots.push({ snapshot_id: s.id, seq: s.seq, ok: false, error: err.message });
        ctx.out.print(`FAILED  ${shortId(s.id)}  seq ${s.seq}  ${err.message}`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  ctx.out.result({ ...report });
  if (firstFailure) {
    const failed = report.snapshots.filter((s) => !s.ok).length;
    const msg =
      targets.length === 1 ? firstFailure.message : `${failed} of ${targets.length} snapshots failed verification (first: ${firstFailure.message})`;
    const Failure = firstFailure.exitCode === EXIT.auth ? AuthError : IntegrityError;
    throw new Failure(msg, { code: firstFailure.code, hints: firstFailure.hints });
  }
  return report;
}
