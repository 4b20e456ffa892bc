/**
 * `casa verify`: the restore drill (docs/ARCHITECTURE.md §3). Restores the newest snapshot
 * (`--snapshot ID` another, `--all` every one) into a temp directory with
 * every check a restore runs — manifest identity, each pack's AEAD and id,
 * the whole file's SHA-256, `PRAGMA quick_check` (`integrity_check` with
 * --thorough) — then removes it. Touches nothing else: not the database, not
 * the local index. Exit 6 if any snapshot fails (4 if one was sealed under
 * another key).
 *
 * `casa verify --sync`: the divergence check (docs/FORMAT.md §8). One sync
 * round, then this device's digest of its synced tables is published
 * (sealed) and compared with every other device's that is in the same state
 * (same changeset cursor and schema, nothing left to push). Exit 6 when a
 * table differs, so a split between devices is never silent; devices not in
 * a comparable state are listed with what to run there. The record also
 * carries this device's view of the key history (epoch, history hash,
 * verified revocations): exit 6 when another device's shows the relay gave
 * the two devices different key histories (a fork, an epoch or a revocation
 * withheld from this device), checked whether or not the tables compare.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthError, CasaError, EXIT, IntegrityError, UsageError } from '../errors.js';
import { acquireLock } from '../lock.js';
import { readState } from '../state.js';
import { exchangeDigests, type DigestReport, type PeerResult } from '../changesets/digest-exchange.js';
import type { KeyView } from '../changesets/key-view.js';
import { membershipView, openVaultKeys } from '../keys/open.js';
import { removeWithSidecars, restoreToTemp, shortId } from '../snapshots/restore.js';
import { loadSyncState, pullRound, syncRound } from '../changesets/sync-run.js';
import type { SnapshotInfo } from '../relay/snapshots.js';
import { progress } from '../ui/progress.js';
import type { Context } from './context.js';
import { formatBytes, plural } from '../ui/format.js';
import { listChecked, noSnapshotError, noteVerifiedSeq, openVault, resolveSnapshot } from './vault.js';
import { openSynced, syncEnvOf } from './synced.js';
import { deviceSession, loadPaired } from './context.js';

export interface VerifyOptions {
  all?: boolean;
  snapshot?: string;
  thorough?: boolean;
  sync?: boolean;
}

export interface VerifyReport {
  message_type: 'verify';
  snapshots: { snapshot_id: string; seq: number; ok: boolean; error: string | null }[];
}

export interface VerifySyncReport {
  message_type: 'verify_sync';
  device: string;
  cursor: number;
  /** This device's table digests ({} when it is not in a comparable state). */
  tables: Record<string, string>;
  comparable: boolean;
  why: string | null;
  published: boolean;
  devices: {
    device_id: string;
    name: string;
    status: 'same' | 'differs' | 'not_comparable';
    tables_differ: string[];
    why: string | null;
    /** Its key history against this device's (FORMAT.md §8 "Key view"). */
    key_history: {
      status: 'same' | 'behind' | 'ahead' | 'fork' | 'unknown' | 'unreadable';
      epoch: number | null;
      hidden_revocations: string[];
      missing_revocations: string[];
    } | null;
  }[];
  digest_ms: number;
  rows: number;
  /** This device's view of the key history, as published. */
  key_history: { epoch: number; history: string; revoked: string[] } | null;
}

export async function runVerify(ctx: Context, opts: VerifyOptions): Promise<VerifyReport | VerifySyncReport> {
  if (opts.sync) {
    if (opts.all || opts.snapshot !== undefined || opts.thorough) {
      throw new UsageError('--sync cannot be used with --all, --snapshot or --thorough', {
        hints: ["`casa verify --sync` compares the devices' synced tables; `casa verify` with those flags checks snapshots: run them one after the other"],
      });
    }
    return runVerifySync(ctx);
  }
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

// ---------------------------------------------------------------- --sync

/** One sync round, then the digest exchange, under the database's sync lock (as `casa sync` takes it). */
async function runVerifySync(ctx: Context): Promise<VerifySyncReport> {
  const p = loadPaired(ctx);
  const session = await deviceSession(p);
  const env = syncEnvOf(ctx, p, session, await openVaultKeys(ctx, p, session));
  const lock = acquireLock(ctx.globals.home, `${ctx.globals.db}#sync`, 'verify --sync');
  let report: DigestReport;
  try {
    const { db, schema } = openSynced(ctx, env.deviceId, { lenient: true });
    try {
      const round = await syncRound(env, db, schema);
      if (round.pushedChanges > 0 || round.pulledChanges > 0) {
        const n = round.pushedChanges;
        ctx.out.note(`synced first: pushed ${plural(n, 'change')}, applied ${round.applied} of ${round.pulledChanges} pulled`);
      }
      // A batch pushed while another device pushed lands after the cursor: one more pull takes it in.
      const st = loadSyncState(env);
      if (st.pushed.seq > (st.chains[env.deviceId]?.seq ?? 0)) await pullRound(env, db, schema);
      report = await exchangeDigests(env, db, schema, { publish: true, keyView: { membership: () => membershipView(ctx, p, session) } });
    } finally {
      db.close();
    }
  } finally {
    lock.release();
  }
  const name = readState(ctx.globals.home)?.vault?.deviceName ?? env.deviceId;
  const doc: VerifySyncReport = {
    message_type: 'verify_sync',
    device: report.deviceId,
    cursor: report.cursor,
    tables: report.tables ?? {},
    comparable: report.tables !== null,
    why: report.why,
    published: report.published,
    devices: report.devices.map((d) => ({
      device_id: d.deviceId,
      name: d.name,
      status: d.status,
      tables_differ: d.tablesDiffer,
      why: d.why,
      key_history: d.keys && { status: d.keys.status, epoch: d.keys.epoch, hidden_revocations: d.keys.hiddenRevocations, missing_revocations: d.keys.missingRevocations },
    })),
    digest_ms: report.ms,
    rows: report.rows,
    key_history: report.keys && { epoch: report.keys.epoch, history: report.keys.history, revoked: report.keys.revoked },
  };
  ctx.out.print(formatVerifySync(name, report));
  ctx.out.result({ ...doc });
  if (report.why !== null) ctx.out.note(`hint: nothing was compared: ${report.why}; run \`casa verify --sync\` again once that is resolved`);
  for (const d of report.devices) {
    if (d.status === 'not_comparable' && report.why === null) {
      ctx.out.note(`hint: on ${d.name}, run \`casa verify --sync\` (it syncs first), then run \`casa verify --sync\` here again`);
    }
  }
  // The key history first: a relay that showed the devices different keys makes every other verdict moot.
  const keyProblem = keyHistoryError(report, env.server, `this device (${name})`);
  if (keyProblem) throw keyProblem;
  const differ = report.devices.filter((d) => d.status === 'differs');
  if (differ.length > 0) throw divergenceError(differ);
  return doc;
}

/** What to do when the relay showed this device a key history other than another device's. */
function keyHints(server: string): string[] {
  return [
    `the relay at ${server} showed this device and another different key histories: treat it as hostile (nothing was changed here)`,
    'from a device you trust, start new keys for the members it verified (`casa rotate`), then run `casa verify --sync` on every device; ' +
      'a device still apart afterwards: pair it again with the recovery phrase (`casa pair --join`); see docs/SECURITY.md §4.5',
  ];
}

/**
 * The first key-history verdict that says the relay showed the devices
 * different histories (FORMAT.md §8 "Key view"), as an IntegrityError; null
 * when there is none (a device behind, or one of casa before key views, is
 * only listed).
 */
export function keyHistoryError(report: Pick<DigestReport, 'devices' | 'keys'>, server: string, selfName = 'this device'): IntegrityError | null {
  const label = (d: PeerResult) => `device ${d.name} (${d.deviceId.slice(0, 8)})`;
  const mine = report.keys;
  for (const d of report.devices) {
    if (d.keys?.status === 'fork') {
      const at = d.keys.epoch === mine?.epoch ? `epoch ${d.keys.epoch}` : `epoch ${d.keys.epoch}, which this device holds too`;
      return new IntegrityError(`the relay showed ${selfName} and ${label(d)} different key histories: other keys or records at ${at} (a fork)`, { hints: keyHints(server) });
    }
  }
  for (const d of report.devices) {
    if (d.keys?.status === 'ahead') {
      return new IntegrityError(`the relay withholds epoch ${d.keys.epoch} that ${label(d)} holds (this device holds epoch ${mine?.epoch ?? '?'})`, {
        hints: [`this device may seal to devices revoked since: do not run \`casa rotate\` or \`casa devices revoke\` here until this is resolved`, ...keyHints(server)],
      });
    }
    if (d.keys?.status === 'unreadable') {
      return new IntegrityError(
        `the digest of ${label(d)} is sealed under keys the relay does not serve this device: the relay showed the two devices different key histories (an epoch withheld from this device, or a fork)`,
        { hints: [`this device may seal to devices revoked since: do not run \`casa rotate\` or \`casa devices revoke\` here until this is resolved`, ...keyHints(server)] },
      );
    }
  }
  for (const d of report.devices) {
    const hidden = d.keys?.hiddenRevocations ?? [];
    if (hidden.length > 0) {
      const names = new Map(report.devices.map((x) => [x.deviceId, x.name]));
      const list = hidden.map((id) => (names.has(id) ? `${names.get(id)} (${id})` : id)).join(', ');
      return new IntegrityError(`${label(d)} verified the revocation of ${list}, which the relay does not show this device`, {
        hints: [
          `this device would seal the next keys to ${hidden.length === 1 ? 'it' : 'them'}: revoke ${hidden.length === 1 ? 'it' : 'them'} here as well (\`casa devices revoke ${hidden[0]}\`): this device then remembers the revocation whatever the relay shows`,
          ...keyHints(server),
        ],
      });
    }
  }
  return null;
}

function divergenceError(differ: DigestReport['devices']): IntegrityError {
  const tables = [...new Set(differ.flatMap((d) => d.tablesDiffer))].sort();
  const who = differ.length === 1 ? `device ${differ[0]!.name}` : `${differ.length} devices (${differ.map((d) => d.name).join(', ')})`;
  return new IntegrityError(`synced tables differ from ${who}: ${tables.join(', ')}`, {
    code: 'integrity',
    hints: [
      `both applied the same changesets, yet ${tables.join(', ')} hold${tables.length === 1 ? 's' : ''} other rows: a write casa did not capture, or a bug (\`casa sync --conflicts\` lists recent merge decisions)`,
      'decide which device holds the right data: run `casa snapshot --force` there, then `casa pull --force` on the other (its file is kept as a backup), then `casa verify --sync` on both',
    ],
  });
}

const STATUS_WORD = { same: 'same', differs: 'DIFFERS', not_comparable: 'not comparable' } as const;

/** This device's key view and how the others' compare, in one line. */
function keyLine(k: KeyView, devices: PeerResult[]): string {
  const parts = [`epoch ${k.epoch}, ${plural(k.revoked.length, 'revocation')} verified`];
  const by = (s: string) => devices.filter((d) => d.keys?.status === s);
  const names = (ds: PeerResult[], withEpoch = false) => ds.map((d) => (withEpoch ? `${d.name} (epoch ${d.keys!.epoch})` : d.name)).join(', ');
  if (by('same').length > 0) parts.push(`same as ${names(by('same'))}`);
  if (by('behind').length > 0) parts.push(`behind: ${names(by('behind'), true)}`);
  if (by('ahead').length > 0) parts.push(`AHEAD (withheld here): ${names(by('ahead'), true)}`);
  if (by('fork').length > 0) parts.push(`FORKED: ${names(by('fork'), true)}`);
  if (by('unreadable').length > 0) parts.push(`UNREADABLE (keys not served here): ${names(by('unreadable'))}`);
  const hidden = devices.filter((d) => (d.keys?.hiddenRevocations.length ?? 0) > 0);
  if (hidden.length > 0) parts.push(`REVOCATIONS HIDDEN here: ${hidden.map((d) => `${d.name} verified ${d.keys!.hiddenRevocations.join(', ')}`).join('; ')}`);
  const missing = devices.filter((d) => (d.keys?.missingRevocations.length ?? 0) > 0);
  if (missing.length > 0) parts.push(`not yet verified by ${missing.map((d) => `${d.name}: ${d.keys!.missingRevocations.join(', ')}`).join('; ')}`);
  if (by('unknown').length > 0) parts.push(`unknown (no digest yet, or an older casa): ${names(by('unknown'))}`);
  return parts.join('; ');
}

function formatVerifySync(name: string, r: DigestReport): string {
  const lines: string[] = [];
  const self =
    r.tables === null
      ? `not comparable: ${r.why}`
      : `${r.rows.toLocaleString('en-US')} rows in ${Object.keys(r.tables).length} tables digested in ${r.ms} ms`;
  lines.push(`this device  ${name} (${r.deviceId.slice(0, 8)}) at changeset ${r.cursor}: ${self}`);
  if (r.keys) lines.push(`key history  ${keyLine(r.keys, r.devices)}`);
  if (r.devices.length === 0) {
    lines.push('no other device in the vault');
    return lines.join('\n');
  }
  const table = [['DEVICE', 'STATUS', 'DETAIL']];
  for (const d of r.devices) {
    const detail = d.status === 'differs' ? d.tablesDiffer.join(', ') : (d.why ?? '');
    table.push([`${d.name} (${d.deviceId.slice(0, 8)})`, STATUS_WORD[d.status], detail]);
  }
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  for (const row of table) lines.push(row.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
  return lines.join('\n');
}
