/**
 * The history index opened for a command (docs/MERGE.md §9): what `casa
 * history`, `casa log` and `casa restore --at` share, no command of its own.
 * The index brought up to the relay's head (src/changesets/history.ts: every
 * batch checked as sync checks it, exit 6 on tampering), the devices' names,
 * a table and a key as the user types them, the window's bounds in messages,
 * and values for people and for --json.
 *
 * Everything is decrypted on this device; the relay serves the same batches
 * it serves a sync and learns nothing else.
 */
import { existsSync } from 'node:fs';
import type Database from 'better-sqlite3';
import { bytesToHex } from '../crypto/bytes.js';
import { UsageError } from '../errors.js';
import type { SqlValue } from '../changesets/change.js';
import { historyPath, historyWindow, hasRow, indexedTables, openHistory, updateHistory, type Entry, type HistoryWindow } from '../changesets/history.js';
import { decodePk, encodePk } from '../changesets/pk-text.js';
import { quoteId } from '../changesets/rules.js';
import { ChangesetApi } from '../relay/changesets.js';
import { openVaultKeys } from '../keys/open.js';
import { parseDevices } from './vault.js';
import { deviceSession, loadPaired, tracer, type Context, type Paired } from './context.js';
import type { DeviceSession } from '../relay/client.js';
import type { VaultKeys } from '../crypto/kdf.js';
import { peekSettings } from '../changesets/settings.js';
import { sanitize } from '../ui/format.js';

/** The history index, up to date with the relay, and what the commands print with it. */
export interface Indexed {
  db: Database.Database;
  window: HistoryWindow;
  /** Device id → the relay's name for it (revoked devices too). */
  names: Map<string, string>;
  /** This device's id. */
  deviceId: string;
  now: number;
}

/**
 * Opens the history index and brings it up to the relay's head (the
 * device's token, its keys; those of a vault the command already opened).
 */
export async function openIndexed(ctx: Context, opened?: { p: Paired; session: DeviceSession; keys: VaultKeys }): Promise<Indexed> {
  const p = opened?.p ?? loadPaired(ctx);
  const session = opened?.session ?? (await deviceSession(p));
  let keys = opened?.keys ?? (await openVaultKeys(ctx, p, session));
  const db = openHistory(historyPath(ctx.globals.home), p.vault.vaultId);
  try {
    await updateHistory(db, {
      keys,
      refreshKeys: async () => {
        session.forgetToken();
        keys = await openVaultKeys(ctx, p, session);
        return keys;
      },
      api: new ChangesetApi(session),
      server: p.client.server,
      signal: ctx.deps.signal,
      trace: tracer(ctx),
    });
    const devices = parseDevices(await session.call('GET', '/devices'), p.vault.deviceId, p.client.server);
    return { db, window: historyWindow(db), names: new Map(devices.map((d) => [d.id, d.name])), deviceId: p.vault.deviceId, now: ctx.deps.now() };
  } catch (err) {
    db.close();
    throw err;
  }
}

/** A time for history: UTC to the millisecond, as `--at` and `--since` take it back. */
export const formatMoment = (ms: number): string => new Date(ms).toISOString();

/** The window's bounds for messages: "from … to …". */
export function windowText(w: HistoryWindow, now: number): string {
  const from = w.start ?? w.oldest;
  return from === null ? `nothing yet, up to ${formatMoment(now)}` : `${formatMoment(from)} to ${formatMoment(now)}`;
}

/** The window as --json documents carry it. */
export function windowJson(w: HistoryWindow, now: number) {
  return { start: w.start, oldest_change: w.oldest, end: now, pruned_through: w.prunedThrough, head: w.head };
}

/** A device for people: the relay's name (sanitized), else its id. */
export function deviceLabel(ix: Indexed, id: string): string {
  const n = ix.names.get(id);
  return n === undefined ? id : sanitize(n);
}

/** A value for people: NULL, numbers as they are, text as a JSON string, blobs as x'hex'. */
export function formatValue(v: SqlValue): string {
  if (v === null) return 'NULL';
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') return Number.isInteger(v) ? v.toFixed(1) : String(v);
  if (typeof v === 'string') return JSON.stringify(v);
  return `x'${bytesToHex(v)}'`;
}

/**
 * A value in --json, lossless: null, text as a string, an integer as a
 * number (as {"i": "<decimal>"} beyond 2^53), a real as a number (as
 * {"r": "<text>"} when not finite or -0, or integral, so it is not read as
 * an integer), a blob as {"x": "<hex>"}.
 */
export function jsonValue(v: SqlValue): unknown {
  if (v === null || typeof v === 'string') return v;
  if (typeof v === 'bigint') return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : { i: v.toString() };
  if (typeof v === 'number') return Number.isFinite(v) && !Number.isInteger(v) ? v : { r: Object.is(v, -0) ? '-0' : String(v) };
  return { x: bytesToHex(v) };
}

export const OP_NAMES = { i: 'insert', u: 'update', d: 'delete' } as const;

/** What every change carries in --json: when, which device, what op. */
export function changeJson(ix: Indexed, e: Entry) {
  return { time: e.wall, hlc: e.hlc, device_id: e.device, device_name: ix.names.get(e.device) ?? null, op: OP_NAMES[e.op] };
}

/** What the local database says of a table: its key and other columns, or null when it lacks it. */
interface TableShape {
  pk: string[];
  columns: string[];
}

async function localShape(ctx: Context, table: string): Promise<TableShape | null> {
  if (!existsSync(ctx.globals.db)) return null;
  const Sqlite = (await import('better-sqlite3')).default;
  const db = new Sqlite(ctx.globals.db, { readonly: true, fileMustExist: true });
  try {
    const cols = db.prepare('SELECT name, type, pk, hidden FROM pragma_table_xinfo(?)').all(table) as { name: string; type: string; pk: number; hidden: number }[];
    if (cols.length === 0) return null;
    const visible = cols.filter((c) => c.hidden === 0);
    const pk = visible.filter((c) => c.pk > 0).sort((a, b) => a.pk - b.pk);
    // INTEGER PRIMARY KEY of a rowid table is the rowid itself (docs/MERGE.md §2): keyed by the rowid, as a table without a key.
    const list = db.prepare('SELECT wr FROM pragma_table_list WHERE schema = ? AND name = ?').get('main', table) as { wr: number } | undefined;
    const rowidAlias = list?.wr === 0 && pk.length === 1 && pk[0]!.type.toUpperCase() === 'INTEGER';
    return { pk: rowidAlias ? [] : pk.map((c) => c.name), columns: visible.filter((c) => rowidAlias || c.pk === 0).map((c) => c.name) };
  } catch {
    return null;
  } finally {
    db.close();
  }
}

/**
 * A table the user named: one the index has changes of or the local
 * database has, and not one that syncs by snapshot only (it has no field
 * history); anything else is a usage error naming the tables that have one.
 */
export async function resolveTable(ctx: Context, ix: Indexed, table: string): Promise<TableShape | null> {
  const known = indexedTables(ix.db);
  const shape = /^(sqlite|casa)_/i.test(table) ? null : await localShape(ctx, table);
  const list = known.length > 0 ? `tables with history: ${known.join(', ')}` : 'no table has changes in the window yet';
  const rule = peekSettings(ctx.globals.db).tables?.[table];
  if (rule === 'snapshot-only' || (typeof rule === 'object' && rule !== null && (rule as { kind?: string }).kind === 'snapshot-only')) {
    throw new UsageError(`table ${table} syncs by snapshot only: casa keeps no field history of it`, { hints: [list] });
  }
  if (!known.includes(table) && shape === null) {
    throw new UsageError(`no table ${JSON.stringify(table)} in the database or its history`, { hints: [list] });
  }
  if (shape !== null && shape.pk.length === 0 && !known.includes(table)) {
    throw new UsageError(`table ${table} is keyed by the rowid and does not sync: casa keeps no field history of it`, { hints: [list] });
  }
  return shape;
}

/**
 * The canonical pk texts KEY may mean (docs/MERGE.md §9): a JSON array is
 * the key's values in key order (strings text, whole numbers integers,
 * other numbers reals, null, {"x": hex} a blob; canonical pk text as
 * `casa log` prints it is one); anything else is a single-column key, text
 * or, when it reads as a number, that number too.
 */
export function keyCandidates(key: string): string[] {
  const k = key.trim();
  if (k.startsWith('[')) {
    try {
      decodePk(k);
      return [k];
    } catch {
      // not canonical: read it as JSON below
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(k);
    } catch {
      throw new UsageError(`key ${JSON.stringify(key)} is not a JSON array`, { hints: ['a composite key is a JSON array of its values in key order, e.g. \'["acct-1", 2024]\''] });
    }
    if (!Array.isArray(parsed) || parsed.length === 0) throw new UsageError(`key ${JSON.stringify(key)} is not a non-empty JSON array`);
    const values = parsed.map((v): SqlValue => {
      if (v === null || typeof v === 'string') return v;
      if (typeof v === 'number') {
        if (Number.isInteger(v) && !/[.eE]/.test(String(v))) {
          if (!Number.isSafeInteger(v)) throw new UsageError(`key ${JSON.stringify(key)}: an integer beyond 2^53 must be written as casa log prints the key`);
          return BigInt(v);
        }
        return v;
      }
      if (typeof v === 'object' && v !== null && typeof (v as { x?: unknown }).x === 'string' && /^([0-9a-f]{2})*$/i.test((v as { x: string }).x)) {
        return Uint8Array.from(Buffer.from((v as { x: string }).x, 'hex'));
      }
      throw new UsageError(`key ${JSON.stringify(key)}: ${JSON.stringify(v)} is not a key value`, { hints: ['values are strings, numbers, null or {"x": "<hex>"} for a blob'] });
    });
    return [encodePk(values)];
  }
  const out = [encodePk([key])];
  if (/^-?\d{1,19}$/.test(k)) {
    const n = BigInt(k);
    if (n >= -(2n ** 63n) && n < 2n ** 63n) out.push(encodePk([n]));
  } else if (k !== '' && Number.isFinite(Number(k))) {
    out.push(encodePk([Number(k)]));
  }
  return out;
}

/**
 * The pk text of KEY in TABLE: the candidate the index has changes of, else
 * the one a row of the local database has; a key of the wrong width, or one
 * that names no row in either, is a usage error.
 */
export async function resolveKey(ctx: Context, ix: Indexed, table: string, shape: TableShape | null, key: string): Promise<string> {
  const candidates = keyCandidates(key);
  const hit = candidates.find((pk) => hasRow(ix.db, table, pk));
  if (hit !== undefined) return hit;
  const width = decodePk(candidates[0]!).length;
  if (shape !== null && shape.pk.length > 0 && shape.pk.length !== width) {
    throw new UsageError(`table ${table}'s key has ${shape.pk.length} columns (${shape.pk.join(', ')}); ${JSON.stringify(key)} gives ${width}`, {
      hints: [`give the key as a JSON array in key order, e.g. '${JSON.stringify(shape.pk.map((c) => `<${c}>`))}'`],
    });
  }
  if (shape !== null && shape.pk.length === width) {
    const local = await firstLocalRow(ctx, table, shape.pk, candidates);
    if (local !== undefined) return local;
  }
  throw new UsageError(`no row ${JSON.stringify(key)} in ${table}: neither the database nor the history window (${windowText(ix.window, ix.now)}) has it`, {
    hints: ['`casa log --table ' + table + '` lists the rows changed in the window, with their keys'],
  });
}

/** The first candidate key a row of the local database has. */
async function firstLocalRow(ctx: Context, table: string, pkCols: string[], candidates: string[]): Promise<string | undefined> {
  const Sqlite = (await import('better-sqlite3')).default;
  const db = new Sqlite(ctx.globals.db, { readonly: true, fileMustExist: true });
  try {
    const q = db.prepare(`SELECT 1 FROM ${quoteId(table)} WHERE ${pkCols.map((c) => `${quoteId(c)} IS ?`).join(' AND ')} LIMIT 1`);
    return candidates.find((pk) => q.get(...decodePk(pk).map((v) => (v instanceof Uint8Array ? Buffer.from(v) : v))) !== undefined);
  } finally {
    db.close();
  }
}
