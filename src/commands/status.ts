/**
 * `casa status`: what this device knows and what the relay says, without
 * changing anything. Exit 0 whenever it could tell — an unreachable relay or
 * a revoked device is part of the answer, not a failure of the command.
 */
import { statSync } from 'node:fs';
import { readState, SECRET_PHRASE } from '../state.js';
import { formatBytes, sanitize as printable } from '../ui/format.js';
import { RelayHttpError } from '../relay/client.js';
import { CasaError, RestartCommand } from '../errors.js';
import { deviceSession, loadPaired, vaultKeys, type Context, type Paired } from './context.js';
import { readIndex, sameStat, statDatabase } from '../snapshots/page-index.js';
import { SnapshotApi } from '../relay/snapshots.js';
import Database from 'better-sqlite3';
import type { VaultKeys } from '../crypto/kdf.js';
import { ChangesetApi } from '../relay/changesets.js';
import { readSyncState } from '../changesets/sync-state.js';
import { readDigestMemory } from '../changesets/digest-exchange.js';
import { detachedSince } from '../changesets/capture.js';
import { plural } from '../ui/format.js';
import { describeRun, JOBS, runViews, type Job, type RunView } from '../last-run.js';
import { readManifest } from '../service/manifest.js';

export interface StatusReport {
  message_type: 'status';
  paired: boolean;
  home: string;
  vault_id: string | null;
  device_id: string | null;
  device_name: string | null;
  device_status: 'active' | 'revoked' | 'unknown' | null;
  keystore: string | null;
  server: string;
  relay: { reachable: boolean; version: string | null; error: string | null };
  clock_offset_ms: number | null;
  database: { path: string; exists: boolean; size: number | null; changed_since_sync: boolean | null };
  /** The snapshot this database was last synced to on this device (snapshot or restore), if any. */
  last_sync: { snapshot_id: string; seq: number; time: number; source: 'snapshot' | 'restore' } | null;
  relay_head: { snapshot_id: string; seq: number; time: number; device_id: string; device_name: string | null } | null;
  newer_available: boolean | null;
  rollback_detected: boolean;
  /** Keys (docs/SECURITY.md §2): the epoch this device holds, the relay's, and whether this device keeps the recovery phrase. */
  keys: { epoch: number | null; relay_epoch: number | null; phrase_held: boolean | null } | null;
  /** Enrolments, revocations, key epochs and paper replacements of the last 7 days, newest first (`casa devices --log`). */
  recent_events: { at: number; event: string; device: string | null; by: string | null }[];
  /** The vault's usage of the relay beside the quotas its operator set (docs/RELAY-API.md "Quotas"), or null. */
  usage: {
    stored_bytes: number;
    stored_bytes_quota: number;
    devices: number;
    devices_quota: number;
    commits_today: number;
    commits_per_day_quota: number;
    pushes_today: number;
    pushes_per_day_quota: number;
  } | null;
  /** Changeset sync: local changes not pushed yet, and how far this device has applied the vault's changesets. */
  changesets: {
    pending_local: number | null;
    /** When capture was detached (`casa sync --detach`), ISO time; null when attached (or not set up). */
    detached_since: string | null;
    cursor: number | null;
    relay_head: number | null;
    last_sync_at: number | null;
    /** The last `casa verify --sync` here (remembered, not asked again), or null. */
    last_comparison: LastComparisonInfo | null;
  } | null;
  /** The last snapshot and sync runs on this device (src/last-run.ts), with their health: ok, failed, late, running, stopped. */
  runs: Record<Job, RunView | null>;
}

export interface LastComparisonInfo {
  at: number;
  cursor: number;
  comparable: boolean;
  same: number;
  not_comparable: number;
  differs: { device_id: string; name: string; tables: string[] }[];
}

export async function runStatus(ctx: Context): Promise<StatusReport> {
  const state = readState(ctx.globals.home);
  const server = ctx.server(state);
  const db = databaseInfo(ctx.globals.db);
  const report: StatusReport = {
    message_type: 'status',
    paired: Boolean(state?.vault),
    home: ctx.globals.home,
    vault_id: state?.vault?.vaultId ?? null,
    device_id: state?.vault?.deviceId ?? null,
    device_name: state?.vault?.deviceName ?? null,
    device_status: null,
    keystore: state?.vault ? (ctx.globals.keystore ?? state.vault.keystore) : null,
    server,
    relay: { reachable: false, version: null, error: null },
    clock_offset_ms: null,
    database: db,
    last_sync: null,
    relay_head: null,
    newer_available: null,
    rollback_detected: false,
    keys: state?.vault ? { epoch: null, relay_epoch: null, phrase_held: null } : null,
    recent_events: [],
    usage: null,
    changesets: null,
    runs: runViews(ctx.globals.home, ctx.deps.now(), installedInterval(ctx.globals.home)),
  };

  const client = ctx.client(server, 5_000);
  let paired: Paired | undefined;
  if (state?.vault) {
    try {
      paired = { ...loadPaired(ctx), client };
      if (report.keys) report.keys.phrase_held = Boolean(await paired.keystore.get(SECRET_PHRASE));
      const keys = await vaultKeys(paired);
      if (report.keys) report.keys.epoch = keys.epoch ?? null;
      const idx = readIndex(ctx.globals.home, keys, ctx.globals.db);
      report.changesets = changesetInfo(ctx.globals.home, keys, ctx.globals.db, db.exists);
      if (idx) {
        const m = idx.manifest;
        report.last_sync = { snapshot_id: m.snapshotId, seq: m.seq, time: m.time, source: idx.source };
        if (idx.dbStat && db.exists) report.database.changed_since_sync = !sameStat(idx.dbStat, statDatabase(ctx.globals.db));
      } else if (db.exists) {
        report.database.changed_since_sync = true;
      }
    } catch (err) {
      if (err instanceof CasaError && err.exitCode === 130) throw err;
      // The keystore may be locked; status still says what it can.
    }
  }

  // A paired device asks the relay once (GET status: docs/RELAY-API.md "Status"); otherwise, or when that fails, /v1/health says whether a relay answers.
  if (paired) {
    try {
      const session = await deviceSession(paired);
      report.device_status = 'unknown';
      const d = await session.request('GET', '/status');
      report.relay = { reachable: true, version: typeof d.version === 'string' ? printable(d.version) : null, error: null };
      report.clock_offset_ms = client.clockOffsetMs;
      report.device_status = 'active';
      if (report.keys) report.keys.relay_epoch = session.relayEpoch?.epoch ?? null;
      report.recent_events = recentEvents(d, ctx.deps.now());
      report.usage = usageOf(d);
      const head = new SnapshotApi(session).headOf(d);
      if (head) {
        report.relay_head = { snapshot_id: head.id, seq: head.seq, time: head.time, device_id: head.deviceId, device_name: head.deviceName };
      }
      const local = report.last_sync?.seq ?? 0;
      report.newer_available = (head?.seq ?? 0) > local;
      report.rollback_detected = (head?.seq ?? 0) < (state!.vault!.highestSeq ?? 0);
      if (report.changesets) report.changesets.relay_head = new ChangesetApi(session).headsOf(d.changesets as Record<string, unknown>).head;
    } catch (err) {
      if (err instanceof RestartCommand || (err instanceof CasaError && err.exitCode === 130)) throw err;
      if ((err instanceof RelayHttpError || err instanceof CasaError) && err.code === 'device_revoked') report.device_status = 'revoked';
    }
  }
  if (!report.relay.reachable) {
    try {
      const h = await client.health();
      report.relay = { reachable: true, version: h.version, error: null };
      report.clock_offset_ms = client.clockOffsetMs;
    } catch (err) {
      if (err instanceof CasaError && err.exitCode === 130) throw err;
      report.relay.error = err instanceof Error ? err.message : String(err);
    }
  }

  ctx.out.print(formatStatus(report, ctx.deps.now()));
  ctx.out.result(report as unknown as Record<string, unknown>);
  return report;
}

const NOTABLE = new Set(['device_enrolled', 'device_revoked', 'epoch_created', 'paper_replaced']);

/** Usage and quotas from the status answer (null from a relay without them). */
function usageOf(d: Record<string, unknown>): StatusReport['usage'] {
  const u = d.usage as Record<string, unknown> | undefined;
  const q = d.quotas as Record<string, unknown> | undefined;
  const n = (x: unknown) => (typeof x === 'number' && Number.isSafeInteger(x) && x >= 0 ? x : null);
  if (!u || !q || typeof u !== 'object' || typeof q !== 'object') return null;
  const v = [n(u.storedBytes), n(q.storedBytes), n(u.devices), n(q.devices), n(u.commitsToday), n(q.commitsPerDay), n(u.pushesToday), n(q.pushesPerDay)];
  if (v.some((x) => x === null)) return null;
  const [sb, sq, dv, dq, ct, cq, pt, pq] = v as number[];
  return {
    stored_bytes: sb!,
    stored_bytes_quota: sq!,
    devices: dv!,
    devices_quota: dq!,
    commits_today: ct!,
    commits_per_day_quota: cq!,
    pushes_today: pt!,
    pushes_per_day_quota: pq!,
  };
}

/** The vault's security events of the last 7 days, from the status answer (names from its device list). */
function recentEvents(d: Record<string, unknown>, now: number): StatusReport['recent_events'] {
  const names = new Map<string, string>();
  for (const x of Array.isArray(d.devices) ? (d.devices as Record<string, unknown>[]) : []) {
    if (typeof x?.id === 'string' && typeof x.name === 'string') names.set(x.id, printable(x.name));
  }
  const name = (id: unknown) => (typeof id !== 'string' ? null : id === 'recovery' ? 'the recovery phrase' : (names.get(id) ?? printable(id)));
  return (Array.isArray(d.events) ? (d.events as Record<string, unknown>[]) : [])
    .filter((e) => typeof e?.at === 'number' && typeof e.event === 'string' && NOTABLE.has(e.event) && now - (e.at as number) < 7 * 86_400_000)
    .slice(0, 5)
    .map((e) => ({ at: e.at as number, event: e.event as string, device: name(e.deviceId), by: name(e.actorId) }));
}

function ago(ms: number): string {
  const m = Math.round(ms / 60_000);
  if (m < 60) return `${Math.max(m, 0)} min ago`;
  const h = Math.round(m / 60);
  return h < 48 ? `${h} h ago` : `${Math.round(h / 24)} days ago`;
}

/** The change log's length (read-only: status installs nothing) and the sync state's cursor. */
function changesetInfo(home: string, keys: VaultKeys, dbPath: string, exists: boolean): NonNullable<StatusReport['changesets']> {
  const out: NonNullable<StatusReport['changesets']> = {
    pending_local: null,
    detached_since: null,
    cursor: null,
    relay_head: null,
    last_sync_at: null,
    last_comparison: null,
  };
  try {
    const st = readSyncState(home, keys, dbPath);
    if (st) {
      out.cursor = st.cursor;
      out.last_sync_at = st.lastSyncAt;
    }
  } catch {
    // A damaged state file: `casa sync` says so.
  }
  const last = readDigestMemory(home, keys, dbPath)?.last;
  if (last) {
    out.last_comparison = {
      at: last.at,
      cursor: last.cursor,
      comparable: last.comparable,
      same: last.devices.filter((d) => d.status === 'same').length,
      not_comparable: last.devices.filter((d) => d.status === 'not_comparable').length,
      differs: last.devices.filter((d) => d.status === 'differs').map((d) => ({ device_id: d.deviceId, name: d.name, tables: d.tablesDiffer })),
    };
  }
  if (exists) {
    try {
      // Not read-only: a read-only connection to a WAL database leaves -wal/-shm files behind. Nothing is written.
      const db = new Database(dbPath, { fileMustExist: true });
      try {
        const has = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'casa_changes'").get();
        out.pending_local = has ? Number((db.prepare('SELECT count(*) AS n FROM casa_changes').get() as { n: number }).n) : null;
        const d = has ? detachedSince(db) : null;
        out.detached_since = d === null ? null : new Date(d.at).toISOString();
      } finally {
        db.close();
      }
    } catch {
      // Not a database, or locked: nothing to say.
    }
  }
  return out;
}

/** The installed service's snapshot interval (CASA_HOME/service.json), if any: it sets when a snapshot is late. */
function installedInterval(home: string): number | null {
  try {
    return readManifest(home)?.snapshot_every_ms ?? null;
  } catch {
    return null; // a damaged manifest: `casa service status` says so
  }
}

function databaseInfo(path: string): StatusReport['database'] {
  try {
    const st = statSync(path);
    return { path, exists: st.isFile(), size: st.isFile() ? st.size : null, changed_since_sync: null };
  } catch {
    return { path, exists: false, size: null, changed_since_sync: null };
  }
}

function formatStatus(r: StatusReport, now: number): string {
  const lines: string[] = [];
  const row = (k: string, v: string) => lines.push(`${(k + ':').padEnd(10)} ${v}`);
  if (!r.paired) {
    row('paired', 'no (run `casa pair` to create a vault or join one)');
  } else {
    row('paired', 'yes');
    row('vault', r.vault_id!);
    const st = r.device_status === 'revoked' ? ' — REVOKED: join again with `casa pair --join`' : r.device_status === 'active' ? '' : '';
    row('device', `${r.device_name} (${r.device_id})${st}`);
    row('keystore', r.keystore!);
    if (r.keys) {
      const relayEpoch = r.keys.relay_epoch !== null && r.keys.relay_epoch !== r.keys.epoch ? ` (the relay is at epoch ${r.keys.relay_epoch}: the next command picks it up)` : '';
      const phrase = r.keys.phrase_held === null ? '' : r.keys.phrase_held ? '; recovery phrase: HELD on this device (`casa show-phrase --forget` removes it)' : '; recovery phrase: not on this device';
      row('keys', `${r.keys.epoch === null ? 'format 1 (upgraded by the next command)' : `epoch ${r.keys.epoch}`}${relayEpoch}${phrase}`);
    }
    if (r.usage) {
      const u = r.usage;
      row('usage', `${formatBytes(u.stored_bytes)} of ${formatBytes(u.stored_bytes_quota)} stored, ${u.devices} of ${u.devices_quota} devices, today ${u.commits_today} of ${u.commits_per_day_quota} snapshots and ${u.pushes_today} of ${u.pushes_per_day_quota} changesets`);
    }
    for (const e of r.recent_events) {
      const what = { device_enrolled: 'joined', device_revoked: 'revoked', epoch_created: 'new keys', paper_replaced: 'recovery phrase replaced' }[e.event] ?? e.event;
      const subject = e.event === 'device_enrolled' || e.event === 'device_revoked' ? `${e.device} ${what}` : what;
      row('event', `${subject} ${ago(Date.now() - e.at)}${e.by ? ` by ${e.by}` : ''}`);
    }
  }
  const relay = r.relay.reachable
    ? `reachable, casa-relay ${r.relay.version}${r.clock_offset_ms === null ? '' : `, clock offset ${formatOffset(r.clock_offset_ms)}`}`
    : `unreachable (${r.relay.error})`;
  row('server', `${r.server} (${relay})`);
  const changed =
    r.database.changed_since_sync === null ? '' : r.database.changed_since_sync ? ', changed since last sync' : ', unchanged since last sync';
  row('database', `${r.database.path} (${r.database.exists ? `${r.database.size} bytes${changed}` : 'not found'})`);
  if (r.paired) {
    const iso = (t: number) => new Date(t).toISOString().replace(/\.\d+Z$/, 'Z');
    row('synced', r.last_sync ? `snapshot ${r.last_sync.seq} (${r.last_sync.source}, ${iso(r.last_sync.time)})` : 'never (run `casa snapshot` or `casa restore`)');
    if (r.relay_head) {
      const who = r.relay_head.device_name ?? r.relay_head.device_id;
      const newer = r.newer_available ? ' — NEWER than this database: `casa pull` fetches it' : '';
      row('head', `snapshot ${r.relay_head.seq} from ${who} at ${iso(r.relay_head.time)}${newer}`);
    } else if (r.relay.reachable && r.device_status === 'active') {
      row('head', 'no snapshot yet');
    }
    if (r.changesets && (r.changesets.cursor !== null || r.changesets.pending_local !== null)) {
      const c = r.changesets;
      const at = c.cursor === null ? 'never synced' : `at changeset ${c.cursor}${c.relay_head === null ? '' : ` of ${c.relay_head}`}`;
      const pend = c.pending_local === null ? 'capture not set up (run `casa sync`)' : `${plural(c.pending_local, 'local change')} to push`;
      row('sync', `${at}, ${pend}`);
      if (c.detached_since !== null) row('capture', `DETACHED since ${c.detached_since}: \`casa sync --attach\` catches up what the app wrote meanwhile`);
    }
    const cmp = r.changesets?.last_comparison;
    if (cmp) {
      const parts = cmp.differs.map((d) => `${d.name} DIFFERS (${d.tables.join(', ')}): see \`casa verify --sync\``);
      if (cmp.same > 0) parts.push(`${cmp.same} same`);
      if (cmp.not_comparable > 0) parts.push(`${cmp.not_comparable} not comparable`);
      const what = !cmp.comparable ? 'this device was not in a comparable state' : parts.length > 0 ? parts.join(', ') : 'no other device';
      row('compared', `at changeset ${cmp.cursor}, ${iso(cmp.at)}: ${what}`);
    }
    if (r.rollback_detected) row('WARNING', 'the relay serves an older head than this device has seen (rollback)');
  }
  for (const job of JOBS) {
    const v = r.runs[job];
    if (v) row('ran', describeRun(v, now));
  }
  row('home', r.home);
  return lines.join('\n');
}

function formatOffset(ms: number): string {
  const sign = ms >= 0 ? '+' : '-';
  const a = Math.abs(ms);
  return a < 1000 ? `${sign}${a} ms` : `${sign}${(a / 1000).toFixed(1)} s`;
}
