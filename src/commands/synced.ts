/**
 * The synced database as commands open it (`casa sync`, `pull`, `restore`,
 * `verify --sync`): the user's table declarations, the database opened with
 * capture refreshed before anything reads or writes the change log
 * (docs/MERGE.md §8), what the refresh found said once, and the environment
 * a sync round runs in. Shared by the commands; no command of its own.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { FailureError } from '../errors.js';
import { refreshCapture, type Refreshed } from '../changesets/refresh.js';
import { SyncSchemaError, type SyncDeclarations, type SyncSchema } from '../changesets/rules.js';
import type { SyncEnv } from '../changesets/sync-run.js';
import type { VaultKeys } from '../crypto/kdf.js';
import { ChangesetApi } from '../relay/changesets.js';
import type { DeviceSession } from '../relay/client.js';
import { openVaultKeys } from '../keys/open.js';
import { deviceSession, loadPaired, tracer, type Context, type Paired } from './context.js';

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
  const session = await deviceSession(p);
  return syncEnvOf(ctx, p, session, await openVaultKeys(ctx, p, session));
}

/** The sync environment of a vault a command has already opened (restore, pull): no second token. */
export function syncEnvOf(ctx: Context, p: Paired, session: DeviceSession, keys: VaultKeys): SyncEnv {
  return {
    home: ctx.globals.home,
    dbPath: ctx.globals.db,
    keys,
    refreshKeys: async () => {
      session.forgetToken();
      return openVaultKeys(ctx, p, session);
    },
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
