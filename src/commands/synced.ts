/**
 * The synced database as commands open it (`casa sync`, `pull`, `restore`,
 * `verify --sync`): the user's table declarations, the database opened with
 * capture refreshed before anything reads or writes the change log
 * (docs/MERGE.md §8), what the refresh found said once, and the environment
 * a sync round runs in. Shared by the commands; no command of its own.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { FailureError, UsageError } from '../errors.js';
import { refreshCapture, type Refreshed } from '../changesets/refresh.js';
import { SyncSchemaError, declareCommand, type SyncSchema } from '../changesets/rules.js';
import { importDeclarationsFile, readSettings } from '../changesets/settings.js';
import type { SyncEnv } from '../changesets/sync-run.js';
import type { VaultKeys } from '../crypto/kdf.js';
import { ChangesetApi } from '../relay/changesets.js';
import type { DeviceSession } from '../relay/client.js';
import { openVaultKeys } from '../keys/open.js';
import { deviceSession, loadPaired, tracer, type Context, type Paired } from './context.js';

/** The file an earlier casa read the declarations from; imported once into the vault's settings (settings.ts). */
export function declarationsPath(home: string): string {
  return join(home, 'sync-tables.json');
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
export function openSynced(ctx: Context, deviceId: string | null = null, opts: { lenient?: boolean } = {}): Synced {
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
    const refreshed = refreshSynced(ctx, db, deviceId, opts);
    return { db, schema: refreshed.schema, refreshed };
  } catch (err) {
    db.close();
    throw err;
  }
}

/**
 * refreshCapture with the vault's settings (the declarations file of an
 * earlier casa imported into them first), saying what a schema change led
 * to. A schema that cannot sync is exit 2 with the way out; `lenient`
 * leaves tables that need a decision out instead (schema.undecided): a
 * restore or pull never fails on settings, and a sync pulls first (another
 * device may have decided).
 */
export function refreshSynced(ctx: Context, db: Database.Database, deviceId: string | null, opts: { lenient?: boolean } = {}): Refreshed {
  const file = declarationsPath(ctx.globals.home);
  const imported = importDeclarationsFile(db, file);
  if (imported.length > 0) ctx.out.note(`the declarations in ${file} are now the vault's settings (${imported.join(', ')}): \`casa tables\` shows them; the file is renamed .imported`);
  let r: Refreshed;
  try {
    r = refreshCapture(db, readSettings(db), { now: ctx.deps.now(), deviceId, lenient: opts.lenient === true });
  } catch (err) {
    if (err instanceof SyncSchemaError) throw undecidedError(err);
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

/** A schema that cannot sync as input needed (exit 2), with the command that decides every table at once. */
export function undecidedError(err: SyncSchemaError): UsageError {
  const names = err.undecided.length > 0 ? err.undecided : err.table !== null ? [err.table] : [];
  return new UsageError(err.message, {
    hints: names.length > 0 ? [`to sync the rest and leave ${names.length === 1 ? 'it' : 'them'} to snapshots: ${declareCommand(names)}`, 'see `casa tables`'] : ['see `casa tables`'],
  });
}
