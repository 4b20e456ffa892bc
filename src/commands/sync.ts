/**
 * `casa sync`: one round of changeset sync (pull and merge the other
 * devices' changes in one transaction, then push this device's), `--watch`
 * to stay connected and sync as changes happen, `--conflicts` to list the
 * merge decisions. The capture triggers are (re)installed first, so a
 * database the app migrated is captured with its new columns.
 *
 * `--watch` holds the vault's live WebSocket (the relay's Durable Object
 * announces each new changeset) and polls the database's data_version for
 * local writes; network drops and relay restarts are retried with backoff,
 * and every reconnect runs a full round so nothing announced meanwhile is
 * missed. SIGINT/SIGTERM finish the round in progress and exit 0.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { AuthError, CasaError, FailureError, UnreachableError, UsageError } from '../errors.js';
import { acquireLock, type Lock } from '../lock.js';
import { readState } from '../state.js';
import { detachCapture, detachedSince, pendingCount } from '../changesets/capture.js';
import { ChangesetApi } from '../relay/changesets.js';
import { listConflicts } from '../changesets/merge.js';
import { refreshCapture, schemaVersion, type Refreshed } from '../changesets/refresh.js';
import { SyncSchemaError, type SyncDeclarations, type SyncSchema } from '../changesets/rules.js';
import { loadSyncState, syncRound, type SyncEnv, type SyncRound } from '../changesets/sync-run.js';
import type { VaultKeys } from '../crypto/kdf.js';
import type { DeviceSession } from '../relay/client.js';
import { deviceSession, loadPaired, tracer, vaultKeys, type Context, type Paired } from './context.js';

export interface SyncOptions {
  watch?: boolean;
  conflicts?: boolean;
  limit?: string;
  detach?: boolean;
  attach?: boolean;
}

/** Where a user declares which tables sync and how (rules.ts reads the declarations). */
export function declarationsPath(home: string): string {
  return join(home, 'sync-tables.json');
}

export function readDeclarations(home: string): SyncDeclarations {
  const path = declarationsPath(home);
  if (!existsSync(path)) return {};
  try {
    const d = JSON.parse(readFileSync(path, 'utf8')) as SyncDeclarations;
    if (typeof d !== 'object' || d === null || Array.isArray(d)) throw new Error('not a JSON object');
    return d;
  } catch (err) {
    throw new FailureError(`cannot read ${path} (${(err as Error).message})`, {
      hints: ['it holds {"tables": {"NAME": "lww" | "set" | "snapshot-only"}}; see casa-sync(1)'],
    });
  }
}

/** The database open for sync, its capture refreshed (refreshSynced). */
export interface Synced {
  db: Database.Database;
  schema: SyncSchema;
  /** What the refresh at open found: a schema change the app made, and what was caught up. */
  refreshed: Refreshed;
}

/**
 * Opens the database and refreshes capture before anything else reads or
 * writes the change log: the schema sync works with, and the app's writes
 * made since a migration caught up. `deviceId` (when paired) lets received
 * changes waiting for the new schema be applied at once.
 */
export function openSynced(ctx: Context, deviceId: string | null = null): Synced {
  const dbPath = ctx.globals.db;
  if (!existsSync(dbPath)) {
    throw new FailureError(`no database at ${dbPath}`, {
      hints: ['check --db (or CASA_DB), or `casa restore` the newest snapshot first'],
    });
  }
  let db: Database.Database;
  try {
    db = new Database(dbPath, { fileMustExist: true });
    db.pragma('busy_timeout = 10000');
    db.pragma('journal_mode = WAL');
  } catch (err) {
    throw new FailureError(`cannot open the database ${dbPath} (${(err as Error).message})`);
  }
  try {
    const refreshed = refreshSynced(ctx, db, deviceId);
    return { db, schema: refreshed.schema, refreshed };
  } catch (err) {
    db.close();
    throw err;
  }
}

/** refreshCapture with the user's declarations, saying what a schema change led to; a schema that cannot sync is exit 2 with the way out. */
export function refreshSynced(ctx: Context, db: Database.Database, deviceId: string | null): Refreshed {
  const decl = readDeclarations(ctx.globals.home);
  let r: Refreshed;
  try {
    r = refreshCapture(db, decl, { now: ctx.deps.now(), deviceId });
  } catch (err) {
    if (err instanceof SyncSchemaError) {
      throw new FailureError(err.message, {
        code: 'usage',
        hints: [`declare it in ${declarationsPath(ctx.globals.home)}, e.g. {"tables": {"${err.table ?? 'NAME'}": "snapshot-only"}}`],
      });
    }
    throw err;
  }
  const { out } = ctx;
  for (const c of r.refresh.caughtUp) {
    const rows = `${c.rows} row${c.rows === 1 ? '' : 's'} of ${c.tbl}`;
    if (c.what === 'writes') out.note(`capture attached again: caught up ${rows} written while it was detached`);
    else out.note(`the database's schema changed: caught up ${rows}, ${c.what === 'rows' ? 'its rows (a table new to sync)' : 'values of the columns the app added'}`);
  }
  if (r.refresh.lostCopy !== undefined) {
    out.warn(`the copy \`casa sync --detach\` took is gone (${r.refresh.lostCopy}): writes made while detached to existing fields cannot be told apart`);
  }
  for (const t of r.refresh.rebuilt) {
    out.warn(
      `table ${t} was rebuilt by the app (dropped and created again): its capture is back, its new columns caught up; ` +
        'an edit of an existing field made before now cannot be told from the synced value (`casa verify --sync` compares)',
    );
  }
  for (const t of r.refresh.dropped) out.note(`table ${t} no longer syncs (dropped, or declared snapshot-only); changes to it are kept pending`);
  if (r.applied > 0) out.note(`applied ${r.applied} received change${r.applied === 1 ? '' : 's'} that waited for the new schema`);
  return r;
}

export async function syncEnv(ctx: Context): Promise<SyncEnv> {
  const p = loadPaired(ctx);
  return syncEnvOf(ctx, p, await deviceSession(p), await vaultKeys(p));
}

/** The sync environment of a vault a command has already opened (restore, pull): no second token. */
export function syncEnvOf(ctx: Context, p: Paired, session: DeviceSession, keys: VaultKeys): SyncEnv {
  return {
    home: ctx.globals.home,
    dbPath: ctx.globals.db,
    keys,
    deviceId: p.vault.deviceId,
    api: new ChangesetApi(session),
    token: () => session.getToken(),
    clockOffsetMs: () => p.client.clockOffsetMs,
    now: ctx.deps.now,
    random: ctx.deps.random,
    signal: ctx.deps.signal,
    server: p.client.server,
    trace: tracer(ctx),
  };
}

function syncLock(ctx: Context): Lock {
  return acquireLock(ctx.globals.home, `${ctx.globals.db}#sync`, 'sync');
}

function roundDoc(r: SyncRound): Record<string, unknown> {
  return {
    pushed_batches: r.pushedBatches,
    pushed_changes: r.pushedChanges,
    pulled_batches: r.pulledBatches,
    pulled_changes: r.pulledChanges,
    applied_changes: r.applied,
    conflicts: r.conflicts,
    pending_columns: r.pending,
    cursor: r.cursor,
    head: r.head,
    pending_local: r.pendingLocal,
  };
}

/** What the refresh at the start found, for --json: `changed` false when the schema was as capture last saw it. */
function refreshDoc(r: Refreshed): Record<string, unknown> {
  return {
    changed: r.refresh.changed,
    fingerprint: r.schema.fingerprint,
    caught_up: r.refresh.caughtUp.map((c) => ({ table: c.tbl, rows: c.rows, what: c.what })),
    rebuilt: r.refresh.rebuilt,
    dropped: r.refresh.dropped,
    attached: r.refresh.attached,
    applied_pending: r.applied,
  };
}

function roundLine(r: SyncRound): string {
  const parts = [`pushed ${r.pushedChanges} change${r.pushedChanges === 1 ? '' : 's'}`, `applied ${r.applied} of ${r.pulledChanges} pulled`];
  if (r.conflicts) parts.push(`${r.conflicts} conflict${r.conflicts === 1 ? '' : 's'} decided (casa sync --conflicts)`);
  if (r.pending) parts.push(`${r.pending} kept pending for a newer schema`);
  return `${parts.join(', ')}; at ${r.cursor} of ${r.head}`;
}

export async function runSync(ctx: Context, opts: SyncOptions): Promise<void> {
  const modes = (['watch', 'conflicts', 'detach', 'attach'] as const).filter((m) => opts[m]);
  if (modes.length > 1) throw new UsageError(`--${modes[0]} and --${modes[1]} cannot be used together`);
  if (opts.detach) return runDetach(ctx);
  if (opts.attach) return runAttach(ctx);
  if (opts.conflicts) return runConflicts(ctx, opts);
  if (opts.limit !== undefined) throw new UsageError('--limit goes with --conflicts');
  const env = await syncEnv(ctx);
  const lock = syncLock(ctx);
  const { db, schema, refreshed } = openSynced(ctx, env.deviceId);
  try {
    if (opts.watch) return await watch(ctx, env, db, refreshed);
    const r = await syncRound(env, db, schema);
    ctx.out.print(r.pushedChanges === 0 && r.pulledChanges === 0 ? `up to date (at ${r.cursor} of ${r.head})` : roundLine(r));
    ctx.out.result({ message_type: 'sync', ...roundDoc(r), schema: refreshDoc(refreshed) });
  } finally {
    db.close();
    lock.release();
  }
}

// ---------------------------------------------------------------- --detach, --attach

/**
 * `casa sync --detach` (docs/MERGE.md §8): capture steps aside so an app
 * update can drop or change a synced column, which SQLite refuses while a
 * trigger reads it. Local only: no relay, no lock (a running --watch pauses
 * while capture is detached). Capture is refreshed first (a detach while
 * detached attaches and catches up before copying again), so the copies hold
 * exactly what the change log does not.
 */
async function runDetach(ctx: Context): Promise<void> {
  const { db, schema, refreshed } = openSynced(ctx, localDeviceId(ctx));
  try {
    const copyPath = detachedCopyPath(ctx);
    const d = detachCapture(db, schema, { now: ctx.deps.now(), copyPath });
    const rows = d.tables.reduce((n, t) => n + t.rows, 0);
    ctx.out.print(
      `capture detached: copied ${rows} row${rows === 1 ? '' : 's'} of ${d.tables.length} synced table${d.tables.length === 1 ? '' : 's'}`,
    );
    ctx.out.note('let the app update now; then `casa sync --attach` (or any `casa sync`) catches up every write made meanwhile');
    ctx.out.result({
      message_type: 'sync_detach',
      detached_at: new Date(d.at).toISOString(),
      tables: d.tables.map((t) => ({ table: t.tbl, rows: t.rows })),
      schema: refreshDoc(refreshed),
    });
  } finally {
    db.close();
  }
}

/** Where `--detach` keeps its copy of the synced tables: CASA_HOME/detached/, one file per database (by its path). */
function detachedCopyPath(ctx: Context): string {
  const dir = join(ctx.globals.home, 'detached');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const id = createHash('sha256').update(resolve(ctx.globals.db)).digest('hex').slice(0, 16);
  return join(dir, `${id}.db`);
}

/** This device's id when paired (received changes waiting for the new schema then apply at the refresh), else null; no keystore, no relay. */
function localDeviceId(ctx: Context): string | null {
  return readState(ctx.globals.home)?.vault?.deviceId ?? null;
}

/** `casa sync --attach`: capture back, every write made while detached caught up; nothing is sent (the next `casa sync` does). */
async function runAttach(ctx: Context): Promise<void> {
  const { db, refreshed } = openSynced(ctx, localDeviceId(ctx));
  try {
    const writes = refreshed.refresh.caughtUp.reduce((n, c) => n + c.rows, 0);
    ctx.out.print(
      refreshed.refresh.attached
        ? `capture attached: caught up ${writes} row write${writes === 1 ? '' : 's'}; \`casa sync\` sends them`
        : 'capture is attached',
    );
    ctx.out.result({ message_type: 'sync_attach', schema: refreshDoc(refreshed) });
  } finally {
    db.close();
  }
}

// ---------------------------------------------------------------- --conflicts

async function runConflicts(ctx: Context, opts: SyncOptions): Promise<void> {
  const limit = opts.limit === undefined ? 50 : Number(opts.limit);
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > 100_000) throw new UsageError('--limit takes 1..100000');
  loadPaired(ctx);
  const { db } = openSynced(ctx);
  try {
    const rows = listConflicts(db, { limit });
    // JSON has no 64-bit integers or bytes: big integers as strings, blobs as {"base64": ...}.
    const plain = (v: unknown): unknown =>
      typeof v === 'bigint' ? v.toString() : v instanceof Uint8Array ? { base64: Buffer.from(v).toString('base64') } : v;
    ctx.out.result({
      message_type: 'conflicts',
      conflicts: rows.map((r) => Object.fromEntries(Object.entries(r as unknown as Record<string, unknown>).map(([k, v]) => [k, plain(v)]))),
    });
    if (rows.length === 0) {
      ctx.out.print('no conflicts decided');
      return;
    }
    const show = (v: unknown) => {
      const s = v === null || v === undefined ? 'NULL' : v instanceof Uint8Array ? `<${v.length} bytes>` : String(v);
      return s.length > 40 ? `${s.slice(0, 37)}...` : s;
    };
    const table = [['WHEN', 'TABLE', 'KEY', 'FIELD', 'LOCAL', 'REMOTE', 'WINNER', 'RULE']];
    for (const c of rows as unknown as Record<string, unknown>[]) {
      const at = typeof c.decided_at === 'number' ? new Date(c.decided_at).toISOString().replace(/\.\d+Z$/, 'Z') : show(c.decided_at);
      table.push([at, show(c.tbl), show(c.pk), show(c.col ?? '(row)'), show(c.local_val), show(c.remote_val), show(c.winner), show(c.rule)]);
    }
    const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
    ctx.out.print(table.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n'));
  } finally {
    db.close();
  }
}

// ---------------------------------------------------------------- --watch

const POLL_MS = 50;
const SAFETY_ROUND_MS = 30_000;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 30_000;

/** Errors a watcher keeps going through (the relay or the network is away for a while). */
function transient(err: unknown): boolean {
  if (err instanceof UnreachableError) return err.code !== 'relay_protocol';
  if (err instanceof CasaError) return err.code === 'rate_limited' || /relay failed \(5\d\d/.test(err.message);
  return false;
}

async function watch(ctx: Context, env: SyncEnv, db: Database.Database, opened: Refreshed): Promise<void> {
  const { out } = ctx;
  let schema = opened.schema;
  let seenSchema = opened.schemaVersion;
  /** The app changed the schema (a migration): capture is refreshed before anything reads the log again. */
  let pausedSince: number | null = null;
  /** Capture detached (`casa sync --detach`): no round until it is attached again, which is the user's to do (the app may be mid-update). */
  const detached = (): boolean => {
    const d = detachedSince(db);
    if (d !== null && pausedSince !== d.at) out.note('capture is detached (`casa sync --detach`): paused until `casa sync --attach`');
    if (d === null && pausedSince !== null) out.note('capture is attached again: resuming');
    pausedSince = d?.at ?? null;
    return d !== null;
  };
  const schemaMoved = (): boolean => {
    const v = schemaVersion(db);
    if (v === seenSchema) return false;
    const r = refreshSynced(ctx, db, env.deviceId);
    schema = r.schema;
    seenSchema = r.schemaVersion;
    return true;
  };
  const signal = ctx.deps.signal;
  const { WebSocket } = await import('undici');
  let stopped = false;
  let running: Promise<void> | null = null;
  let again = false;
  let fatal: unknown = null;
  let failures = 0;
  let lastVersion = Number(db.pragma('data_version', { simple: true }));
  let ws: InstanceType<typeof WebSocket> | null = null;
  let wsTimer: NodeJS.Timeout | null = null;
  let wakeStop: () => void = () => {};
  const stoppedPromise = new Promise<void>((r) => (wakeStop = r));

  const stop = (err?: unknown) => {
    if (err !== undefined && fatal === null) fatal = err;
    if (stopped) return;
    stopped = true;
    wakeStop();
  };
  signal.addEventListener('abort', () => stop(), { once: true });

  const round = (why: string): Promise<void> => {
    if (stopped) return Promise.resolve();
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        try {
          if (detached()) return;
          schemaMoved();
          const r = await syncRound({ ...env, signal: new AbortController().signal }, db, schema);
          failures = 0;
          if (r.pushedChanges || r.pulledChanges) {
            out.print(`${new Date(ctx.deps.now()).toISOString()} ${roundLine(r)}`);
            out.result({ message_type: 'sync', trigger: why, ...roundDoc(r) });
          }
        } catch (err) {
          if (!transient(err)) {
            stop(err);
            return;
          }
          failures++;
          out.warn(`${(err as Error).message}; retrying`);
          await sleep(backoff(failures), stoppedPromise);
          again = !stopped;
        }
      } while (again && !stopped);
    })().finally(() => {
      running = null;
    });
    return running;
  };

  const connect = async (): Promise<void> => {
    if (stopped) return;
    let token: string;
    try {
      token = await env.token();
    } catch (err) {
      if (!transient(err)) return stop(err);
      failures++;
      wsTimer = setTimeout(() => void connect(), backoff(failures));
      return;
    }
    const url = `${env.server.replace(/^http/, 'ws')}/v1/vaults/${env.keys.vaultId}/live?token=${encodeURIComponent(token)}`;
    const sock = new WebSocket(url);
    ws = sock;
    sock.addEventListener('open', () => {
      failures = 0;
      // Anything announced while we were away: a full round.
      void round('connect');
    });
    sock.addEventListener('message', (ev) => {
      let m: Record<string, unknown>;
      try {
        m = JSON.parse(String(ev.data)) as Record<string, unknown>;
      } catch {
        return;
      }
      if (m.type === 'announce' && m.kind === 'changeset' && m.deviceId !== env.deviceId) void round('announce');
    });
    sock.addEventListener('close', (ev) => {
      if (ws !== sock || stopped) return;
      ws = null;
      if (ev.code === 4003) return stop(new AuthError('this device was revoked from the vault', { code: 'device_revoked' }));
      failures++;
      if (failures === 1) out.warn(`lost the live connection to ${env.server}; retrying`);
      wsTimer = setTimeout(() => void connect(), backoff(failures));
    });
    sock.addEventListener('error', () => {
      // A close event follows.
    });
  };

  const poll = setInterval(() => {
    let v: number;
    let moved: boolean;
    try {
      v = Number(db.pragma('data_version', { simple: true }));
      moved = v !== lastVersion && !detached() && schemaMoved();
    } catch (err) {
      // A schema that cannot sync any more (a new table keyed by the rowid): stop, as `casa sync` would refuse.
      if (err instanceof CasaError) stop(err);
      return;
    }
    if (v !== lastVersion) {
      lastVersion = v;
      if (moved || pendingCount(db) > 0) void round(moved ? 'schema' : 'local');
    }
  }, POLL_MS);
  const safety = setInterval(() => void round('timer'), SAFETY_ROUND_MS);

  out.note(`watching ${env.dbPath}; Ctrl-C stops`);
  const first = loadSyncState(env);
  out.note(`at changeset ${first.cursor}`);
  await round('start');
  await connect();
  await stoppedPromise;

  clearInterval(poll);
  clearInterval(safety);
  if (wsTimer) clearTimeout(wsTimer);
  (ws as InstanceType<typeof WebSocket> | null)?.close(1000, 'bye');
  await running;
  if (fatal !== null) throw fatal;
  out.note('stopped');
}

function backoff(failures: number): number {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(failures, 10));
  return Math.round(base * (0.5 + Math.random() / 2));
}

function sleep(ms: number, cut: Promise<void>): Promise<void> {
  return new Promise((r) => {
    const t = setTimeout(r, ms);
    void cut.then(() => {
      clearTimeout(t);
      r();
    });
  });
}

