/**
 * `casa snapshots`: the vault's snapshots, newest first, the head marked,
 * listed with the rollback check (vault.ts listChecked; docs/ARCHITECTURE.md
 * §3): a head older than the highest seq this device has seen
 * (authenticated) is exit 6.
 */
import { SnapshotApi } from '../relay/snapshots.js';
import { formatBytes } from '../ui/format.js';
import { deviceSession, loadPaired, type Context } from './context.js';
import { listChecked } from './vault.js';

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

function formatSnapshots(list: SnapshotEntry[]): string {
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
