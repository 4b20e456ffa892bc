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
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import type { WebSocket as UndiciWebSocket } from 'undici';
import { CancelledError, CasaError, UsageError } from '../errors.js';
import { deviceRevoked, isTransient } from '../failures.js';
import { acquireLock, type Lock } from '../lock.js';
import { readState } from '../state.js';
import { recordRun, WATCH_REFRESH_MS } from '../last-run.js';
import { detachCapture, detachedSince } from '../changesets/capture.js';
import { pendingCount } from '../changesets/change-log.js';
import { listConflicts } from '../changesets/merge.js';
import { schemaVersion, type Refreshed } from '../changesets/refresh.js';
import { SyncSchemaError, declareCommand, type SyncSchema } from '../changesets/rules.js';
import { setRule } from '../changesets/settings.js';
import { confirm } from '../ui/prompts.js';
import { loadSyncState, syncRound, type SyncEnv, type SyncRound } from '../changesets/sync-run.js';
import { WS_CLOSE_DEVICE_REVOKED } from '../protocol/messages.js';
import { Context, loadPaired } from './context.js';
import { openSynced, refreshSynced, syncEnv, undecidedError } from './synced.js';

export interface SyncOptions {
  watch?: boolean;
  conflicts?: boolean;
  limit?: string;
  detach?: boolean;
  attach?: boolean;
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
  // A watch's rounds talk to the relay without the signal: SIGINT/SIGTERM
  // stop the watch, and the round in progress finishes (a second signal
  // exits at once; every request has its timeout).
  const env = await syncEnv(opts.watch ? new Context(ctx.globals, { ...ctx.deps, signal: new AbortController().signal }) : ctx);
  const lock = syncLock(ctx);
  // Lenient: a table that needs a decision is left out until after the pull (another device may have decided).
  const { db, schema, refreshed } = openSynced(ctx, env.deviceId, { lenient: true });
  try {
    if (opts.watch) {
      warnUndecided(ctx, schema);
      return await watch(ctx, env, db, refreshed);
    }
    const r = await settledRound(ctx, env, db, schema);
    ctx.summary = r.pushedChanges === 0 && r.pulledChanges === 0 ? `up to date (at ${r.cursor} of ${r.head})` : roundLine(r);
    ctx.out.print(ctx.summary);
    ctx.out.result({ message_type: 'sync', ...roundDoc(r), schema: refreshDoc(refreshed) });
  } finally {
    db.close();
    lock.release();
  }
}

/**
 * A sync round, then whatever the pull changed in the vault's settings or
 * the schema (a table another device declared) derived again and sent in a
 * second round; then every table that still needs a decision: on a
 * terminal, one question for all of them (snapshot-only); without one,
 * exit 2 naming them all and the command (what could sync has synced).
 */
async function settledRound(ctx: Context, env: SyncEnv, db: Database.Database, schema: SyncSchema): Promise<SyncRound> {
  let r = await syncRound(env, db, schema);
  let now = refreshSynced(ctx, db, env.deviceId, { lenient: true }).schema;
  if (now.fingerprint !== schema.fingerprint) r = addRounds(r, await syncRound(env, db, now));
  if (now.undecided.length === 0) return r;
  const names = now.undecided.map((u) => u.name);
  const list = now.undecided.map((u) => `${u.name} (${u.reason})`).join('; ');
  if (ctx.out.interactive && !ctx.out.opts.json) {
    ctx.out.note(`${names.length === 1 ? 'a table' : `${names.length} tables`} cannot sync field by field: ${list}`);
    const yes = await confirm(ctx.out, `Leave ${names.join(', ')} to snapshots, for the whole vault?`, declareCommand(names));
    if (yes) {
      for (const n of names) setRule(db, n, 'snapshot-only');
      now = refreshSynced(ctx, db, env.deviceId).schema;
      ctx.out.note(`declared snapshot-only for the vault: ${names.join(', ')} (\`casa tables\` shows every table's rule)`);
      return addRounds(r, await syncRound(env, db, now));
    }
  }
  throw undecidedError(new SyncSchemaError(`${names.length === 1 ? 'table' : `${names.length} tables`} need a decision: ${list}`, names[0]!, names));
}

function addRounds(a: SyncRound, b: SyncRound): SyncRound {
  return {
    pushedBatches: a.pushedBatches + b.pushedBatches,
    pushedChanges: a.pushedChanges + b.pushedChanges,
    pulledBatches: a.pulledBatches + b.pulledBatches,
    pulledChanges: a.pulledChanges + b.pulledChanges,
    applied: a.applied + b.applied,
    conflicts: a.conflicts + b.conflicts,
    pending: b.pending,
    cursor: b.cursor,
    head: b.head,
    pendingLocal: b.pendingLocal,
  };
}

/** A watch cannot ask: it says once which tables are left out and how to decide. */
function warnUndecided(ctx: Context, schema: SyncSchema): void {
  if (schema.undecided.length === 0) return;
  const names = schema.undecided.map((u) => u.name);
  ctx.out.warn(`not synced until decided: ${names.join(', ')} (${declareCommand(names)})`);
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

/** undici's WebSocket, imported when --watch starts (not every command pays for it). */
type WebSocketClass = typeof UndiciWebSocket;
type WebSocketInstance = InstanceType<WebSocketClass>;

/**
 * `casa sync --watch`, as its steps (the Watcher below): the first round,
 * then the live socket; the local poll and a safety round every 30 s start
 * rounds too; it runs until a signal (then finishes the round in progress)
 * or a failure that is not transient (src/failures.ts isTransient), which
 * it throws once everything is closed.
 */
async function watch(ctx: Context, env: SyncEnv, db: Database.Database, opened: Refreshed): Promise<void> {
  const { WebSocket } = await import('undici');
  await new Watcher(ctx, env, db, opened, WebSocket).run();
}

/**
 * The state of one `--watch`. Rounds run one at a time: a trigger during a
 * round asks for one more after it. Failures of rounds and of the socket
 * share one count for the backoff; a success (a round, an open socket)
 * resets it.
 */
class Watcher {
  /** The synced schema, and the schema_version it was derived at. */
  private schema: SyncSchema;
  private seenSchema: number;
  /** When capture was detached, as last seen (null while attached): each change is noted once. */
  private pausedSince: number | null = null;
  /** SQLite's data_version at the last poll: a write by another connection moves it. */
  private lastVersion: number;
  /** The round in progress, and whether another was asked for meanwhile. */
  private running: Promise<void> | null = null;
  private again = false;
  private failures = 0;
  private ws: WebSocketInstance | null = null;
  private wsTimer: NodeJS.Timeout | null = null;
  /** Set once, by a signal or a failure; `fatal` is the first failure, thrown when the watch ends. */
  private stopped = false;
  private fatal: unknown = null;
  private wakeStop: () => void = () => {};
  private readonly stoppedPromise = new Promise<void>((r) => (this.wakeStop = r));
  /** For the last-run record: when the watch started, rounds done, the last one that moved anything, and what was last recorded. */
  private readonly startedAt: number;
  private roundsDone = 0;
  private lastRound = '';
  private recordedOk: boolean | null = null;
  private recordedAt = 0;

  constructor(
    private readonly ctx: Context,
    private readonly env: SyncEnv,
    private readonly db: Database.Database,
    opened: Refreshed,
    private readonly WebSocket: WebSocketClass,
  ) {
    this.schema = opened.schema;
    this.seenSchema = opened.schemaVersion;
    this.lastVersion = Number(db.pragma('data_version', { simple: true }));
    this.startedAt = ctx.deps.now();
  }

  /** Start, wait for the stop, close everything, wait for the round in progress; throws the failure that stopped it. */
  async run(): Promise<void> {
    const { out } = this.ctx;
    const signal = this.ctx.deps.signal;
    if (signal.aborted) return;
    signal.addEventListener('abort', () => this.stop(), { once: true });
    const poll = setInterval(() => this.pollLocal(), POLL_MS);
    const safety = setInterval(() => void this.round('timer'), SAFETY_ROUND_MS);

    out.note(`watching ${this.env.dbPath}; Ctrl-C stops`);
    out.note(`at changeset ${loadSyncState(this.env).cursor}`);
    this.record(false, 'watching: started');
    await this.round('start');
    await this.connect();
    await this.stoppedPromise;

    clearInterval(poll);
    clearInterval(safety);
    if (this.wsTimer) clearTimeout(this.wsTimer);
    this.ws?.close(1000, 'bye');
    await this.running;
    this.ctx.summary = `stopped after ${this.roundsDone} round${this.roundsDone === 1 ? '' : 's'}${this.lastRound ? `; last: ${this.lastRound}` : ''}`;
    if (this.fatal !== null) throw this.fatal;
    out.note('stopped');
  }

  /**
   * The last-run record while watching (src/last-run.ts): exit null, this
   * process; refreshed after a round at most every WATCH_REFRESH_MS, and at
   * once when the watch turns from failing to working or back. Never fails
   * the watch.
   */
  private record(ok: boolean, summary: string): void {
    const now = this.ctx.deps.now();
    if (ok === this.recordedOk && now - this.recordedAt < WATCH_REFRESH_MS) return;
    try {
      recordRun(this.ctx.globals.home, { job: 'sync', command: 'sync --watch', startedAt: this.startedAt, at: now, exit: null, ok, summary });
      this.recordedOk = ok;
      this.recordedAt = now;
    } catch {
      // CASA_HOME unwritable: the watch's own work says so soon enough.
    }
  }

  private stop(err?: unknown): void {
    // After a signal, a cancelled request is the stop itself, not a failure.
    if (err instanceof CancelledError && this.ctx.deps.signal.aborted) err = undefined;
    if (err !== undefined && this.fatal === null) this.fatal = err;
    if (this.stopped) return;
    this.stopped = true;
    this.wakeStop();
  }

  // ---- rounds

  /** A round now, or one more after the round in progress; resolves when no round is left to run. */
  private round(why: string): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = this.rounds(why).finally(() => {
      this.running = null;
    });
    return this.running;
  }

  /** Rounds while more are asked for; a transient failure waits out the backoff and tries again, any other stops the watch. */
  private async rounds(why: string): Promise<void> {
    do {
      this.again = false;
      try {
        if (!(await this.syncOnce(why))) return;
      } catch (err) {
        if (!isTransient(err)) {
          this.stop(err);
          return;
        }
        this.failures++;
        this.ctx.out.warn(`${(err as Error).message}; retrying`);
        this.record(false, `retrying: ${(err as Error).message}`);
        await sleep(this.backoff(), this.stoppedPromise);
        this.again = !this.stopped;
      }
    } while (this.again && !this.stopped);
  }

  /** One round, reported when it moved anything; false (no round) while capture is detached. */
  private async syncOnce(why: string): Promise<boolean> {
    if (this.detached()) {
      // Alive but not syncing: the record stays fresh, and turns LATE if the pause lasts.
      this.record(false, 'paused: capture is detached (`casa sync --attach` resumes)');
      return false;
    }
    this.schemaMoved();
    if (why === 'epoch' && this.env.refreshKeys) this.env.keys = await this.env.refreshKeys();
    // Not cancelled by the signal: a round in progress finishes.
    const r = await syncRound({ ...this.env, signal: new AbortController().signal }, this.db, this.schema);
    this.failures = 0;
    this.roundsDone++;
    if (r.pushedChanges || r.pulledChanges) this.lastRound = roundLine(r);
    this.record(true, `watching: ${this.roundsDone} round${this.roundsDone === 1 ? '' : 's'}, at ${r.cursor} of ${r.head}${this.lastRound ? `; last: ${this.lastRound}` : ''}`);
    if (r.pushedChanges || r.pulledChanges) {
      this.ctx.out.print(`${new Date(this.ctx.deps.now()).toISOString()} ${roundLine(r)}`);
      this.ctx.out.result({ message_type: 'sync', trigger: why, ...roundDoc(r) });
    }
    return true;
  }

  /** The wait before the next try, from the failures so far and the injected randomness. */
  private backoff(): number {
    return backoff(this.failures, this.ctx.deps.random);
  }

  // ---- the live socket

  /**
   * Opens the vault's live WebSocket and authenticates it with a fresh token
   * as its first message (docs/RELAY-API.md `/live`: never in the URL); the
   * relay's hello says it is in. A failure to get a token is retried after
   * the backoff; a refused one (close 4001) reconnects like any close.
   */
  private async connect(): Promise<void> {
    if (this.stopped) return;
    let token: string;
    try {
      token = await this.env.token();
    } catch (err) {
      if (!isTransient(err)) return this.stop(err);
      this.failures++;
      this.reconnectLater();
      return;
    }
    const url = `${this.env.server.replace(/^http/, 'ws')}/v1/vaults/${this.env.keys.vaultId}/live`;
    const sock = new this.WebSocket(url);
    this.ws = sock;
    let authenticated = false;
    sock.addEventListener('open', () => sock.send(JSON.stringify({ type: 'auth', token })));
    sock.addEventListener('message', (ev) => {
      if (authenticated) return this.announced(ev.data);
      let m: unknown;
      try {
        m = JSON.parse(String(ev.data));
      } catch {
        return;
      }
      if ((m as { type?: unknown } | null)?.type !== 'hello') return;
      authenticated = true;
      this.failures = 0;
      // Anything announced while we were away: a full round.
      void this.round('connect');
    });
    sock.addEventListener('close', (ev) => this.closed(sock, ev.code));
    sock.addEventListener('error', () => {
      // A close event follows.
    });
  }

  /** Another device's changeset announced: a round. Anything else on the socket is ignored. */
  private announced(data: unknown): void {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(String(data)) as Record<string, unknown>;
    } catch {
      return;
    }
    if (m.type === 'announce' && m.kind === 'changeset' && m.deviceId !== this.env.deviceId) void this.round('announce');
    // A new key epoch (a revocation, `casa rotate`): its keys at once, then a round under them.
    if (m.type === 'announce' && m.kind === 'epoch') void this.round('epoch');
  }

  /** The socket closed: revoked stops the watch; anything else reconnects after the backoff (warned once per outage). */
  private closed(sock: WebSocketInstance, code: number): void {
    if (this.ws !== sock || this.stopped) return;
    this.ws = null;
    if (code === WS_CLOSE_DEVICE_REVOKED) return this.stop(deviceRevoked());
    this.failures++;
    if (this.failures === 1) this.ctx.out.warn(`lost the live connection to ${this.env.server}; retrying`);
    this.reconnectLater();
  }

  private reconnectLater(): void {
    this.wsTimer = setTimeout(() => void this.connect(), this.backoff());
  }

  // ---- the local poll

  /**
   * Every POLL_MS: a write by another connection (data_version) starts a
   * round when it left something to send or came with a migration
   * (schema_version; capture is refreshed first). A schema that cannot sync
   * any more (a new table keyed by the rowid) stops the watch, as `casa
   * sync` would refuse it.
   */
  private pollLocal(): void {
    let v: number;
    let moved: boolean;
    try {
      v = Number(this.db.pragma('data_version', { simple: true }));
      moved = v !== this.lastVersion && !this.detached() && this.schemaMoved();
    } catch (err) {
      if (err instanceof CasaError) this.stop(err);
      return;
    }
    if (v !== this.lastVersion) {
      this.lastVersion = v;
      if (moved || pendingCount(this.db) > 0) void this.round(moved ? 'schema' : 'local');
    }
  }

  /** The app changed the schema (a migration): capture is refreshed before anything reads the log again. */
  private schemaMoved(): boolean {
    const v = schemaVersion(this.db);
    if (v === this.seenSchema) return false;
    const r = refreshSynced(this.ctx, this.db, this.env.deviceId);
    this.schema = r.schema;
    this.seenSchema = r.schemaVersion;
    return true;
  }

  // ---- the detached-capture pause

  /**
   * Whether capture is detached (`casa sync --detach`): no round until it is
   * attached again, which is the user's to do (the app may be mid-update).
   * The pause and the resume are each noted once.
   */
  private detached(): boolean {
    const d = detachedSince(this.db);
    if (d !== null && this.pausedSince !== d.at) this.ctx.out.note('capture is detached (`casa sync --detach`): paused until `casa sync --attach`');
    if (d === null && this.pausedSince !== null) this.ctx.out.note('capture is attached again: resuming');
    this.pausedSince = d?.at ?? null;
    return d !== null;
  }
}

/** Doubling from BACKOFF_MIN_MS up to BACKOFF_MAX_MS, with jitter (half to all of it) drawn from `random`. */
function backoff(failures: number, random: (n: number) => Uint8Array): number {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(failures, 10));
  return Math.round(base * (0.5 + unitInterval(random) / 2));
}

/** A number in [0, 1) from four random bytes. */
function unitInterval(random: (n: number) => Uint8Array): number {
  const b = random(4);
  return new DataView(b.buffer, b.byteOffset, 4).getUint32(0) / 2 ** 32;
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
