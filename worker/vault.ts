/**
 * Vault: one SQLite-backed Durable Object per vault (named by the vault id:
 * env.VAULT.idFromName(vaultId)) that holds everything about its vault in
 * its own database (ctx.storage.sql): the vault row, devices, challenges,
 * snapshots and their head, the packs index, changesets and cursors,
 * digests, key epochs and membership records, its pairing sessions, its
 * audit log and its retention cursors (schema: migrations/*.sql through
 * worker/schema.ts). Blobs stay in R2 under the vault's prefixes.
 *
 * - Requests: the Worker (worker/index.ts) forwards every
 *   /v1/vaults/{vaultId}/... request, and the join side of a pairing found
 *   by its nameplate, to this object, which runs the same route tree
 *   (worker/app.ts) with DB bound to a D1-shaped adapter over its own
 *   SQLite (worker/do-sql.ts), INDEX to the global D1 and LIVE to itself.
 * - Schema: versioned in the object (d1_migrations), migrated in the
 *   constructor under blockConcurrencyWhile. An object whose vault was
 *   never created has no schema and gets none: every read finds nothing and
 *   every write changes nothing (do-sql.ts), so an unknown vault id answers
 *   as before and leaves no storage behind. createVault() creates it.
 * - Live sockets (the former VaultHub): hibernatable WebSockets
 *   (ctx.acceptWebSocket) with their state as attachments (see Attachment);
 *   the first message authenticates (docs/RELAY-API.md `/live`).
 * - Retention: the object's alarm runs the retention job (worker/cron.ts)
 *   for this vault every RETENTION_EVERY_MS (0: never; `casa relay` sets
 *   it from --retention-every), the same alarm that closes sockets whose
 *   auth deadline passed.
 *
 * Internal paths (never reached from the public URL: the Worker only
 * forwards /v1/... paths):
 *   POST /_relay/retention   runs the retention job now; 200 CronReport JSON (the launcher's runCron)
 *   POST /_relay/announce    JSON object → sent to every authenticated socket; 200 {"delivered": n}
 *   POST /_relay/sql         {"sql","params"} → {"results","changes"}: test-only, and only when the
 *                            binding CASA_TEST_HOOKS is "1" (set by test/helpers/relay.ts, never in
 *                            wrangler.jsonc); else 404
 */
import { DurableObject } from 'cloudflare:workers';
import {
  LIVE_AUTH_TIMEOUT_MS,
  WS_CLOSE_DEVICE_REVOKED,
  WS_CLOSE_DEVICE_REVOKED_REASON,
  WS_CLOSE_UNAUTHORIZED,
  WS_CLOSE_UNAUTHORIZED_REASON,
} from '../src/protocol/messages.js';
import { app } from './app.js';
import { deviceOfToken } from './auth.js';
import { SWEEP_DUE, runCron, type CronReport } from './cron.js';
import { createVault, type VaultRow } from './db.js';
import { DoDatabase } from './do-sql.js';
import { findVaultByRecoveryId } from './membership-db.js';
import type { Env, Live, RouteEnv } from './env.js';
import { getCronState, setCronState } from './snapshot-db.js';
import {
  abandonedSettings,
  deleteVaultBlobs,
  expiringVault,
  finishExpiry,
  lastSeen,
  reportAbandoned,
  wipeRows,
  type AbandonedState,
  EXPIRE_AFTER_LISTED_MS,
} from './abandoned.js';
import { MOVED_TABLES, MOVE_PAGE, deleteLegacyVault, legacyVaultExists, readLegacyPage, writeLegacyRows } from './legacy.js';
import { hasSchema, migrate, migrateIn } from './schema.js';

/** A socket's state, kept as its attachment (it survives hibernation). */
type Attachment =
  /** Waiting for its auth message until `deadline` (ms). */
  | { vaultId: string; deadline: number }
  /** Authenticated as `deviceId`. */
  | { vaultId: string; deviceId: string };

function attachmentOf(ws: WebSocket): Attachment | null {
  try {
    const a = ws.deserializeAttachment() as Attachment | null;
    return a && typeof a === 'object' && typeof a.vaultId === 'string' ? a : null;
  } catch {
    return null;
  }
}

const deviceOf = (ws: WebSocket): string | null => {
  const a = attachmentOf(ws);
  return a !== null && 'deviceId' in a ? a.deviceId : null;
};

/** The token of a first message `{"type":"auth","token":"..."}`, or null. */
function authToken(message: string | ArrayBuffer): string | null {
  if (typeof message !== 'string' || message.length > 4096) return null;
  try {
    const m = JSON.parse(message) as Record<string, unknown>;
    return m !== null && typeof m === 'object' && m.type === 'auth' && typeof m.token === 'string' ? m.token : null;
  } catch {
    return null;
  }
}

function close(ws: WebSocket, code: number, reason: string): void {
  try {
    ws.close(code, reason);
  } catch {
    // already closing
  }
}

/** A request that names its vault (the Worker forwards only well-formed ids). */
const VAULT_PATH = /^\/v1\/vaults\/([0-9a-f]{32})\//;

/** The routes that store a blob: PUT packs/{id}, PUT snapshots/{id}/manifest, POST changesets. */
function isUpload(method: string, path: string): boolean {
  const rest = path.slice('/v1/vaults/'.length + 33);
  if (method === 'PUT') return /^packs\/[^/]+$/.test(rest) || /^snapshots\/[^/]+\/manifest$/.test(rest);
  return method === 'POST' && rest === 'changesets';
}

/** The marker of a move from an older relay's D1 under way: per table, the last D1 rowid copied (-1: all). */
const MOVE_MARKER = 'legacy_move';

function hasMoveMarker(sql: SqlStorage): boolean {
  return sql.exec(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '${MOVE_MARKER}'`).toArray().length > 0;
}

/** How many blobs an expiring vault deletes per step, and how soon the next step comes. */
const EXPIRY_BLOBS_PER_STEP = 10_000;
const EXPIRY_STEP_MS = 30_000;

const MAX_RETENTION_EVERY_MS = 30 * 24 * 60 * 60 * 1000;

/** When the next retention run is due (the vault's cron_state). */
const RETENTION_NEXT = 'retention:next';

/** RETENTION_EVERY_MS as a whole number of ms; 0 (or malformed): the alarm never runs retention. */
export function retentionEvery(env: Env): number {
  const text = env.RETENTION_EVERY_MS?.trim() ?? '';
  const n = /^\d{1,16}$/.test(text) ? Number(text) : 0;
  // 0 (or malformed): never; else between a second (`casa relay --retention-every 1s`) and 30 days.
  return n <= 0 ? 0 : Math.min(Math.max(n, 1000), MAX_RETENTION_EVERY_MS);
}

export class Vault extends DurableObject<Env> implements Live {
  private readonly db: DoDatabase;
  private ready = false;
  private readonly routeEnv: RouteEnv;
  /** A move from an older relay's D1 under way (worker/legacy.ts). */
  private adopting: Promise<void> | null = null;
  /** This object's vault was found in no older relay's D1: never asked again (a request for an unknown id costs no D1 query). */
  private noLegacy = false;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.db = new DoDatabase(ctx.storage, () => this.ready);
    this.routeEnv = { ...env, DB: this.db.asD1(), INDEX: env.DB, LIVE: this };
    // Answered by the runtime without waking the object.
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair('{"type":"ping"}', '{"type":"pong"}'));
    void ctx.blockConcurrencyWhile(async () => {
      // A move from D1 cut off: the vault is not here until it finishes (the next request goes on with it).
      if (!hasSchema(ctx.storage.sql) || hasMoveMarker(ctx.storage.sql)) {
        // A vault being expired (worker/abandoned.ts) goes on deleting its blobs.
        if (expiringVault(ctx.storage.sql) !== null) await this.armAlarm(Date.now() + EXPIRY_STEP_MS);
        return;
      }
      migrate(ctx.storage);
      this.ready = true;
      await this.scheduleRetention(false);
    });
  }

  // ---- requests -----------------------------------------------------------------

  override async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    if (url.pathname.startsWith('/_relay/')) return this.internal(request, url.pathname);
    const named = VAULT_PATH.exec(url.pathname);
    if (named !== null) await this.ensure(named[1]!);
    const upload = isUpload(request.method, url.pathname);
    let res: Response;
    try {
      res = await app.fetch(request, this.routeEnv, {
        waitUntil: (p: Promise<unknown>) => this.ctx.waitUntil(p),
        passThroughOnException: () => {},
        props: {},
      } as ExecutionContext);
    } catch (err) {
      if (upload && this.ready) this.markUpload(Date.now());
      throw err;
    }
    // An upload refused before its blob was stored (4xx: unauthenticated, malformed, over quota) leaves nothing to sweep.
    if (upload && this.ready && (res.status < 400 || res.status >= 500)) this.markUpload(Date.now());
    return res;
  }

  private async internal(request: Request, path: string): Promise<Response> {
    if (request.method !== 'POST') return new Response('not found', { status: 404 });
    if (path === '/_relay/retention') return Response.json(await this.runRetention(Date.now()));
    if (path === '/_relay/announce') {
      let msg: unknown;
      try {
        msg = await request.json();
      } catch {
        return new Response('bad json', { status: 400 });
      }
      if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) return new Response('bad json', { status: 400 });
      return Response.json({ delivered: await this.announce(msg as Record<string, unknown>) });
    }
    if (path === '/_relay/sql' && this.env.CASA_TEST_HOOKS === '1') {
      const { sql, params, batch } = await request.json<{ sql: string; params?: unknown[]; batch?: { sql: string; params: unknown[] }[] }>();
      try {
        if (batch !== undefined) {
          const rs = await this.db.batch(batch.map((b) => this.db.prepare(b.sql).bind(...b.params)));
          return Response.json({ batch: rs.map((r) => ({ results: r.results, changes: r.meta.changes })) });
        }
        const r = await this.db.prepare(sql).bind(...(params ?? [])).run();
        return Response.json({ results: r.results, changes: r.meta.changes });
      } catch (err) {
        return Response.json({ error: err instanceof Error ? err.message : String(err) }, { status: 500 });
      }
    }
    return new Response('not found', { status: 404 });
  }

  // ---- RPC from the Worker (worker/routes/vaults.ts, keys.ts) ------------------------

  /** Creates the vault in this object (its schema first); false if it exists already. */
  async createVault(row: VaultRow): Promise<boolean> {
    await this.ensure(row.id);
    // An expired vault's id is taken again only once its blobs are gone.
    if (expiringVault(this.ctx.storage.sql) !== null) return false;
    if (!this.ready) {
      migrate(this.ctx.storage);
      this.ready = true;
    }
    const created = await createVault(this.db.asD1(), row);
    if (created) await this.scheduleRetention(true);
    return created;
  }

  /**
   * This vault's id if a paper with `recoveryId` opens it: its current
   * replacement's id, or its own id while its paper was never replaced.
   */
  async recoveryVault(vaultId: string, recoveryId: string): Promise<string | null> {
    await this.ensure(vaultId);
    return findVaultByRecoveryId(this.db.asD1(), recoveryId);
  }

  /** True if this object holds the vault `vaultId` (its name). */
  async isVault(vaultId: string): Promise<boolean> {
    await this.ensure(vaultId);
    return this.ready && (await this.db.prepare('SELECT 1 FROM vaults').first()) !== null;
  }

  /**
   * The cron's move of a vault still in an older relay's D1 (worker/legacy.ts):
   * adopts its rows unless this object holds the vault already, then deletes
   * them from D1 (again, if an earlier delete failed).
   */
  async adoptLegacy(vaultId: string): Promise<void> {
    await this.ensure(vaultId);
    if (this.ready || expiringVault(this.ctx.storage.sql) !== null) await deleteLegacyVault(this.env.DB, vaultId);
  }

  /**
   * Before anything else is asked of the vault `vaultId` (this object's
   * name): if the object holds nothing yet and an older relay's D1 holds
   * the vault, its rows move here first, with no other request let in
   * meanwhile (blockConcurrencyWhile).
   */
  private async ensure(vaultId: string): Promise<void> {
    if (this.ready) return;
    this.adopting ??= this.ctx.blockConcurrencyWhile(() => this.adopt(vaultId)).finally(() => {
      this.adopting = null;
    });
    await this.adopting;
  }

  private async adopt(vaultId: string): Promise<void> {
    if (this.ready) return;
    const sql = this.ctx.storage.sql;
    const D1 = this.env.DB;
    // An expiring vault is not brought back from D1's leftovers: they only go.
    if (expiringVault(sql) !== null) return void (await deleteLegacyVault(D1, vaultId));
    if (!hasMoveMarker(sql)) {
      if (this.noLegacy || !(await legacyVaultExists(D1, vaultId))) {
        this.noLegacy = true;
        return;
      }
      this.ctx.storage.transactionSync(() => {
        migrateIn(sql);
        sql.exec(`CREATE TABLE ${MOVE_MARKER} (name TEXT PRIMARY KEY, after INTEGER NOT NULL)`);
        // The old relay may have left blobs no row names: the first retention run sweeps (worker/cron.ts step 4).
        sql.exec("INSERT INTO cron_state (name, value) VALUES (?1, '0') ON CONFLICT (name) DO NOTHING", SWEEP_DUE);
      });
    }
    const now = Date.now();
    let rows = 0;
    for (const table of MOVED_TABLES) {
      let after = sql.exec<{ after: number }>(`SELECT after FROM ${MOVE_MARKER} WHERE name = ?1`, table).toArray()[0]?.after ?? 0;
      while (after >= 0) {
        const page = await readLegacyPage(D1, table, vaultId, after, now);
        const next = page.length < MOVE_PAGE ? -1 : Number(page[page.length - 1]!._rowid);
        this.ctx.storage.transactionSync(() => {
          writeLegacyRows(sql, table, page);
          sql.exec(`INSERT INTO ${MOVE_MARKER} (name, after) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET after = excluded.after`, table, next);
        });
        rows += page.length;
        after = next;
      }
    }
    sql.exec(`DROP TABLE ${MOVE_MARKER}`);
    this.ready = true;
    console.log(`casa-relay: moved vault ${vaultId} from D1 into its object (${rows} rows in this step)`);
    try {
      await deleteLegacyVault(D1, vaultId);
    } catch (err) {
      console.error('casa-relay: deleting a moved vault from D1 failed (the cron retries):', err instanceof Error ? err.message : 'non-error thrown');
    }
    await this.scheduleRetention(true);
  }

  /**
   * An upload may leave a blob no row names (a retry's surplus copy, a
   * request cut off after its put): the retention job sweeps for those only
   * after an upload (worker/cron.ts step 4), so it is noted here.
   */
  private markUpload(now: number): void {
    // Writes a row only when no sweep is due yet (rows written are billed).
    this.ctx.storage.sql.exec('INSERT INTO cron_state (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING', SWEEP_DUE, String(now));
  }

  // ---- retention --------------------------------------------------------------------

  private vaultId(): string | null {
    if (!this.ready) return null;
    return this.ctx.storage.sql.exec<{ id: string }>('SELECT id FROM vaults LIMIT 1').toArray()[0]?.id ?? null;
  }

  /**
   * The retention job for this vault (worker/cron.ts), now, then the
   * abandoned-vault check (worker/abandoned.ts); for an object expiring its
   * vault, the next step of that; nothing for an object without a vault.
   */
  async runRetention(now: number): Promise<(CronReport & { abandoned: AbandonedState; rowsRead: number }) | null> {
    const vaultId = this.vaultId();
    if (vaultId === null) {
      await this.continueExpiry(now);
      return null;
    }
    const readBefore = this.db.rowsRead;
    const report = await runCron(this.routeEnv, now, vaultId);
    const settings = abandonedSettings(this.env);
    let abandoned: AbandonedState = 'active';
    const listed = await reportAbandoned(this.env.DB, this.ctx.storage.sql, vaultId, now, settings.afterMs);
    if (listed !== null) {
      abandoned = 'reported';
      // Expired only a while after it was first listed (the operator sees it listed first), and only if still
      // abandoned now: a device may have come back during the awaits above.
      const sql = this.ctx.storage.sql;
      if (settings.policy === 'expire' && listed <= now - EXPIRE_AFTER_LISTED_MS && Date.now() - lastSeen(sql) >= settings.afterMs) {
        console.log(`casa-relay: expiring abandoned vault ${vaultId} (ABANDONED_POLICY=expire)`);
        for (const ws of this.ctx.getWebSockets()) close(ws, WS_CLOSE_UNAUTHORIZED, WS_CLOSE_UNAUTHORIZED_REASON);
        wipeRows(this.ctx.storage, vaultId, now);
        this.ready = false;
        await this.continueExpiry(now);
        abandoned = 'expired';
      }
    }
    // Rows the job read in the vault's SQLite (billed per row): what one run costs.
    return { ...report, abandoned, rowsRead: this.db.rowsRead - readBefore };
  }

  /** Deletes the next EXPIRY_BLOBS_PER_STEP blobs of an expiring vault; once none are left, its index rows and this object's storage. */
  private async continueExpiry(now: number): Promise<void> {
    const vaultId = expiringVault(this.ctx.storage.sql);
    if (vaultId === null) return;
    if (!(await deleteVaultBlobs(this.env.BLOBS, vaultId, EXPIRY_BLOBS_PER_STEP))) {
      await this.armAlarm(now + EXPIRY_STEP_MS);
      return;
    }
    await finishExpiry(this.env.DB, vaultId, now);
    await this.ctx.storage.deleteAlarm();
    await this.ctx.storage.deleteAll();
    console.log(`casa-relay: vault ${vaultId} expired`);
  }

  /** Sets the next retention run (now + RETENTION_EVERY_MS) if none is set, or afresh when `reset`. */
  private async scheduleRetention(reset: boolean): Promise<void> {
    const every = retentionEvery(this.env);
    if (every <= 0) return;
    let due = Number((await getCronState(this.db.asD1(), RETENTION_NEXT)) ?? NaN);
    if (reset || !Number.isFinite(due)) {
      due = Date.now() + every;
      await setCronState(this.db.asD1(), RETENTION_NEXT, String(due));
    }
    await this.armAlarm(due);
  }

  // ---- live sockets (Live) -------------------------------------------------------------

  /** Accepts the upgrade; the socket waits for its auth message until LIVE_AUTH_TIMEOUT_MS. */
  async connectLive(vaultId: string): Promise<Response> {
    const pair = new WebSocketPair();
    const server = pair[1];
    this.ctx.acceptWebSocket(server);
    const deadline = Date.now() + LIVE_AUTH_TIMEOUT_MS;
    server.serializeAttachment({ vaultId, deadline } satisfies Attachment);
    await this.armAlarm(deadline);
    return new Response(null, { status: 101, webSocket: pair[0] });
  }

  /** Sends `{"type":"announce", ...message}` to every authenticated socket; how many. */
  async announce(message: Record<string, unknown>): Promise<number> {
    const { type: _ignored, ...fields } = message;
    const text = JSON.stringify({ type: 'announce', ...fields });
    let delivered = 0;
    for (const ws of this.ctx.getWebSockets()) {
      if (deviceOf(ws) === null) continue;
      try {
        ws.send(text);
        delivered++;
      } catch {
        // a socket closing under us: it will get webSocketClose
      }
    }
    return delivered;
  }

  /** Closes a revoked device's sockets. */
  async disconnect(deviceId: string): Promise<number> {
    let closed = 0;
    for (const ws of this.ctx.getWebSockets()) {
      if (deviceOf(ws) !== deviceId) continue;
      close(ws, WS_CLOSE_DEVICE_REVOKED, WS_CLOSE_DEVICE_REVOKED_REASON);
      closed++;
    }
    return closed;
  }

  /** The first message authenticates the socket; after that, clients only listen (the ping is auto-answered). */
  override async webSocketMessage(ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
    const a = attachmentOf(ws);
    if (a === null) return close(ws, WS_CLOSE_UNAUTHORIZED, WS_CLOSE_UNAUTHORIZED_REASON);
    if ('deviceId' in a) return;
    const token = authToken(message);
    const who = token === null ? 'unauthorized' : await deviceOfToken(this.routeEnv, a.vaultId, token, Date.now());
    if (who === 'revoked') return close(ws, WS_CLOSE_DEVICE_REVOKED, WS_CLOSE_DEVICE_REVOKED_REASON);
    if (who === 'unauthorized') return close(ws, WS_CLOSE_UNAUTHORIZED, WS_CLOSE_UNAUTHORIZED_REASON);
    // A second auth message sent before the first was answered: one hello.
    const now = attachmentOf(ws);
    if (now === null || 'deviceId' in now) return;
    ws.serializeAttachment({ vaultId: a.vaultId, deviceId: who.deviceId } satisfies Attachment);
    ws.send(JSON.stringify({ type: 'hello', time: Date.now() }));
  }

  override async webSocketClose(ws: WebSocket, code: number, reason: string): Promise<void> {
    close(ws, code === 1005 || code === 1006 ? 1000 : code, reason);
  }

  override async webSocketError(ws: WebSocket): Promise<void> {
    close(ws, 1011, 'error');
  }

  // ---- the alarm ---------------------------------------------------------------------------

  /**
   * Closes every socket whose auth deadline passed and, when due, runs the
   * retention job; then sets the alarm again for whichever comes next.
   */
  override async alarm(): Promise<void> {
    const now = Date.now();
    if (!this.ready && expiringVault(this.ctx.storage.sql) !== null) {
      this.closeLateSockets(now);
      return this.continueExpiry(now);
    }
    const every = retentionEvery(this.env);
    let due = Infinity;
    if (this.ready && every > 0) {
      due = Number((await getCronState(this.db.asD1(), RETENTION_NEXT)) ?? 0);
      if (!Number.isFinite(due) || due <= now) {
        try {
          await this.runRetention(now);
        } catch (err) {
          console.error('casa-relay: retention failed:', err instanceof Error ? `${err.name}: ${err.message}` : 'non-error thrown');
        }
        // The run expired the vault: the expiry keeps its own alarm (continueExpiry).
        if (!this.ready) return;
        due = Date.now() + every;
        await setCronState(this.db.asD1(), RETENTION_NEXT, String(due));
      }
    }
    // Deadlines read after the run's awaits (a socket may have connected meanwhile), and an alarm set meanwhile kept.
    const next = Math.min(due, this.closeLateSockets(Date.now()), (await this.ctx.storage.getAlarm()) ?? Infinity);
    if (next !== Infinity) await this.ctx.storage.setAlarm(next);
  }

  /** Closes every socket whose auth deadline passed; the earliest deadline still to come (Infinity: none). */
  private closeLateSockets(now: number): number {
    let next = Infinity;
    for (const ws of this.ctx.getWebSockets()) {
      const a = attachmentOf(ws);
      if (a === null || 'deviceId' in a) continue;
      if (a.deadline <= now) close(ws, WS_CLOSE_UNAUTHORIZED, WS_CLOSE_UNAUTHORIZED_REASON);
      else next = Math.min(next, a.deadline);
    }
    return next;
  }


  /** The alarm at `at`, unless one is already set as early. */
  private async armAlarm(at: number): Promise<void> {
    const current = await this.ctx.storage.getAlarm();
    if (current === null || current > at) await this.ctx.storage.setAlarm(at);
  }
}
