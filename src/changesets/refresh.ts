/**
 * Keeping capture in step with the app's schema (docs/MERGE.md §8). Apps
 * migrate their database on update: a column or table added while casa's
 * triggers predate it is not captured. Every command that reads or writes
 * the change log calls refreshCapture before anything else, and `casa sync
 * --watch` calls it as soon as `PRAGMA schema_version` moves: the synced
 * schema is derived again, the triggers are remade, the writes the old
 * triggers missed are caught up (installCapture), and received changes that
 * were waiting for the new columns or tables are applied.
 */
import type Database from 'better-sqlite3';
import { installCapture, type CaptureRefresh } from './capture.js';
import { applyPending, pendingRemoteCount } from './merge.js';
import { deriveSyncSchema, type SyncDeclarations, type SyncSchema } from './rules.js';

export interface Refreshed {
  schema: SyncSchema;
  refresh: CaptureRefresh;
  /** Received changes the new schema had room for, applied now. */
  applied: number;
  /** PRAGMA schema_version after the refresh (it moves when the triggers are remade). */
  schemaVersion: number;
}

/** The database's schema cookie: it changes with every CREATE, ALTER or DROP. */
export function schemaVersion(db: Database.Database): number {
  return Number(db.pragma('schema_version', { simple: true }));
}

/**
 * Derives the synced schema, (re)installs capture with its catch-up, and
 * applies what casa_pending now has room for. `now` is this device's time in
 * ms; `deviceId` stamps this device's log rows before the pending changes
 * merge (merge.ts). Throws SyncSchemaError when the schema cannot sync;
 * `lenient`: tables that need a decision are left out (schema.undecided).
 */
export function refreshCapture(
  db: Database.Database,
  decl: SyncDeclarations,
  opts: { now: number; deviceId: string | null; lenient?: boolean },
): Refreshed {
  const schema = deriveSyncSchema(db, decl, { lenient: opts.lenient === true });
  const refresh = installCapture(db, schema, { now: opts.now });
  let applied = 0;
  if (refresh.changed && opts.deviceId !== null && pendingRemoteCount(db) > 0) {
    applied = applyPending(db, schema, { now: opts.now, localDeviceId: opts.deviceId }).applied;
  }
  return { schema, refresh, applied, schemaVersion: schemaVersion(db) };
}
