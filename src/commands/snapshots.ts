/**
 * `casa snapshots`: the vault's snapshots, newest first, the head marked.
 * Also the rollback check (docs/ARCHITECTURE.md §3): a head older than the highest seq
 * this device has seen (authenticated) is exit 6.
 *
 * Shared with restore, pull and verify: opening the vault's snapshot API,
 * listing with the rollback check, and resolving `--snapshot ID`.
 */
import { FailureError, UsageError } from '../errors.js';
import { noteSeenSeq } from '../state.js';
import type { VaultKeys } from '../crypto/kdf.js';
import { checkNotRolledBack, SnapshotApi, type SnapshotInfo } from '../relay/snapshots.js';
import { deviceSession, loadPaired, vaultKeys, type Context, type Paired } from './context.js';

export interface SnapshotEntry {
  snapshot_id: string;
  seq: number;
  time: number;
  device_id: string;
  device_name: string | null;
  db_bytes: number;
  stored_bytes: number;
  new_bytes: number;
  pack_count: number;
  head: boolean;
}

export interface SnapshotsReport {
  message_type: 'snapshots';
  head_seq: number | null;
  snapshots: SnapshotEntry[];
}

export interface OpenVault {
  p: Paired;
  api: SnapshotApi;
  keys: VaultKeys;
}

/** The paired vault's snapshot API and keys (exit 7 unpaired). */
export async function openVault(ctx: Context): Promise<OpenVault> {
  const p = loadPaired(ctx);
  const session = await deviceSession(p);
  const keys = await vaultKeys(p);
  return { p, api: new SnapshotApi(session), keys };
}

/** The relay's snapshot list, checked against the highest seq this device has seen (exit 6 on a rollback). */
export async function listChecked(ctx: Context, v: { p: Paired; api: SnapshotApi }) {
  const list = await v.api.list();
  checkNotRolledBack(list.head, v.p.vault.highestSeq ?? 0, v.p.client.server);
  return list;
}

/**
 * Records a snapshot seq as seen. Only seqs whose manifest this device
 * authenticated (restored, verified) count: the relay's list is not trusted,
 * and a relay that could raise the recorded seq at will could make every
 * honest answer after look like a rollback.
 */
export function noteVerifiedSeq(ctx: Context, seq: number): void {
  noteSeenSeq(ctx.globals.home, seq);
}

/** `--snapshot ID`: a full id or a unique prefix of 6+ characters. */
export function resolveSnapshot(snapshots: SnapshotInfo[], query: string): SnapshotInfo {
  const q = query.trim().toLowerCase();
  if (!/^[0-9a-f]{6,32}$/.test(q)) {
    throw new UsageError(`${JSON.stringify(query)} is not a snapshot id`, {
      hints: ['give the id or a unique prefix of at least 6 characters; `casa snapshots` lists them'],
    });
  }
  const exact = snapshots.find((s) => s.id === q);
  if (exact) return exact;
  const hits = snapshots.filter((s) => s.id.startsWith(q));
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) throw new UsageError(`${q} matches ${hits.length} snapshots`, { hints: ['give more characters of the id'] });
  throw new FailureError(`no snapshot ${q} in this vault`, { hints: ['`casa snapshots` lists the snapshots'] });
}

export function noSnapshotError(): FailureError {
  return new FailureError('the vault has no snapshot yet', {
    hints: ['run `casa snapshot` on a machine that has the database'],
  });
}

export async function runSnapshots(ctx: Context): Promise<SnapshotsReport> {
  const p = loadPaired(ctx);
  const api = new SnapshotApi(await deviceSession(p));
  const { head, snapshots } = await listChecked(ctx, { p, api });
  const report: SnapshotsReport = {
    message_type: 'snapshots',
    head_seq: head?.seq ?? null,
    snapshots: snapshots.map((s) => ({
      snapshot_id: s.id,
      seq: s.seq,
      time: s.time,
      device_id: s.deviceId,
      device_name: s.deviceName,
      db_bytes: s.dbBytes,
      stored_bytes: s.storedBytes,
      new_bytes: s.newBytes,
      pack_count: s.packCount,
      head: head !== null && s.id === head.id,
    })),
  };
  ctx.out.print(formatSnapshots(report.snapshots));
  ctx.out.result({ ...report });
  return report;
}

export function formatSnapshots(list: SnapshotEntry[]): string {
  if (list.length === 0) return 'no snapshots yet (`casa snapshot` takes one)';
  const iso = (t: number) => new Date(t).toISOString().replace(/\.\d+Z$/, 'Z');
  const rows = [
    ['', 'ID', 'SEQ', 'TIME', 'DEVICE', 'SIZE', 'NEW'],
    ...list.map((s) => [
      s.head ? '*' : ' ',
      s.snapshot_id.slice(0, 12),
      String(s.seq),
      iso(s.time),
      s.device_name ?? s.device_id,
      formatBytes(s.db_bytes),
      formatBytes(s.new_bytes),
    ]),
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const right = new Set([2, 5, 6]);
  return rows
    .map((r) => r.map((cell, c) => (right.has(c) ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!))).join('  ').trimEnd())
    .join('\n');
}

/**
 * An integer with thousands separators ("1,234,567"). Not toLocaleString:
 * its first call loads ICU's number formatting, ~5 MB of resident memory
 * measured at the end of a 1 GiB snapshot, for a comma.
 */
export function formatCount(n: number): string {
  const s = String(Math.trunc(Math.abs(n)));
  let out = '';
  for (let i = 0; i < s.length; i++) out += (i > 0 && (s.length - i) % 3 === 0 ? ',' : '') + s[i];
  return (n < 0 ? '-' : '') + out;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[u]}`;
}
