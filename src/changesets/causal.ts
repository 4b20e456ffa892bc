/**
 * What a write had seen (docs/MERGE.md §5a): version vectors, so that the
 * merge can tell an edit made after seeing another device's value (merged
 * silently) from one made without it (a conflict, recorded).
 *
 * A vector is a list of HLCs, one per device, sorted by device id (an HLC
 * ends with its device id, hlc.ts): for each device, the newest of its
 * writes the holder had seen, directly or through the writes it saw. Since
 * a device's own writes are in HLC order, "had seen device D's write h" is
 * exactly `vector[D] >= h` (covers).
 *
 * casa's tables (in the user's database, never synced themselves):
 * - casa_seen (dev, hlc): this database's knowledge: per device, the
 *   newest write merged or stamped here, or seen by a write merged here;
 * - casa_vectors (id, vec): vectors by id, vec the HLCs concatenated;
 *   referenced by casa_changes.vec (the vector of the stamping pass that
 *   gave the log row its HLC), casa_pending.vec (of a received change
 *   waiting for its column) and casa_clock.vec (the vector of the write
 *   that set the field's or marker's clock; NULL: unknown, as for clocks
 *   set before vectors existed, which merge as they always did).
 *
 * Invariants:
 * - A stamping pass (change-log.ts stampLocal) runs before every merge, so
 *   every log row it stamps was written under one knowledge state: the
 *   pass's vector is the knowledge before the pass, less this device's own
 *   entry (its own writes are in order anyway).
 * - Knowledge only grows: casa_seen keeps the highest HLC per device.
 * - A vector in a received batch is checked for shape (change-codec.ts);
 *   what it claims only ever decides whether a decision is recorded, never
 *   which value wins.
 */
import { HLC_LENGTH, isHlc } from './hlc.js';

type Db = import('better-sqlite3').Database;

export const CAUSAL_TABLES = `
CREATE TABLE IF NOT EXISTS casa_seen (dev TEXT PRIMARY KEY, hlc TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS casa_vectors (id INTEGER PRIMARY KEY, vec TEXT NOT NULL UNIQUE);
`;

const DEVICE_AT = 16;
const deviceOf = (hlc: string): string => hlc.slice(DEVICE_AT);

/** True when `vec` holds the write `hlc`: an entry of its device at or above it. */
export function covers(vec: readonly string[] | undefined, hlc: string): boolean {
  if (vec === undefined || vec.length === 0 || hlc === '') return false;
  const dev = deviceOf(hlc);
  let lo = 0;
  let hi = vec.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const d = deviceOf(vec[mid]!);
    if (d === dev) return vec[mid]! >= hlc;
    if (d < dev) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}

/** True when `vec` is a well-formed vector: at least one HLC, sorted by device, each device once. */
export function isVector(vec: unknown): vec is string[] {
  if (!Array.isArray(vec) || vec.length === 0) return false;
  for (let i = 0; i < vec.length; i++) {
    if (!isHlc(vec[i])) return false;
    if (i > 0 && deviceOf(vec[i - 1] as string) >= deviceOf(vec[i] as string)) return false;
  }
  return true;
}

const joinVec = (vec: readonly string[]): string => vec.join('');

function splitVec(text: string): string[] {
  const out: string[] = [];
  for (let at = 0; at < text.length; at += HLC_LENGTH) out.push(text.slice(at, at + HLC_LENGTH));
  return out;
}

/** Adds the columns that reference vectors to a database captured before they existed. */
export function ensureCausal(db: Db): void {
  db.exec(CAUSAL_TABLES);
  for (const tbl of ['casa_clock', 'casa_changes', 'casa_pending']) {
    const names = db.prepare('SELECT name FROM pragma_table_info(?)').pluck().all(tbl) as string[];
    if (names.length > 0 && !names.includes('vec')) db.exec(`ALTER TABLE ${tbl} ADD COLUMN vec INTEGER`);
  }
}

/** casa_vectors read and written within one transaction, with a cache both ways. */
export class VectorStore {
  private readonly byId = new Map<number, string[]>();
  private readonly byText = new Map<string, number>();
  private readonly ids = new WeakMap<readonly string[], number>();
  private get_?: import('better-sqlite3').Statement;
  private put_?: import('better-sqlite3').Statement;
  private find_?: import('better-sqlite3').Statement;

  constructor(private readonly db: Db) {}

  /** The vector of an id (undefined for NULL or an id that is not there). */
  get(id: number | bigint | null | undefined): string[] | undefined {
    if (id === null || id === undefined) return undefined;
    const n = Number(id);
    let v = this.byId.get(n);
    if (v === undefined) {
      this.get_ ??= this.db.prepare('SELECT vec FROM casa_vectors WHERE id = ?').pluck();
      const text = this.get_.get(n) as string | undefined;
      if (text === undefined) return undefined;
      v = splitVec(text);
      this.byId.set(n, v);
      this.byText.set(text, n);
      this.ids.set(v, n);
    }
    return v;
  }

  /** The id of a vector, stored if new; null for none (undefined or empty). */
  intern(vec: readonly string[] | undefined): number | null {
    if (vec === undefined || vec.length === 0) return null;
    const known = this.ids.get(vec);
    if (known !== undefined) return known;
    const text = joinVec(vec);
    let id = this.byText.get(text);
    if (id === undefined) {
      this.put_ ??= this.db.prepare('INSERT INTO casa_vectors (vec) VALUES (?) ON CONFLICT (vec) DO NOTHING');
      this.find_ ??= this.db.prepare('SELECT id FROM casa_vectors WHERE vec = ?').pluck();
      this.put_.run(text);
      id = Number(this.find_.get(text));
      this.byText.set(text, id);
      this.byId.set(id, vec as string[]);
    }
    this.ids.set(vec, id);
    return id;
  }
}

/** This database's knowledge as the vector of a stamping pass: casa_seen less `deviceId`'s own entry. */
export function passVector(db: Db, deviceId: string): string[] {
  return (db.prepare('SELECT hlc FROM casa_seen WHERE dev <> ? ORDER BY dev').pluck().all(deviceId) as string[]).filter(isHlc);
}

/** Knowledge being gathered: the highest HLC per device, written to casa_seen by `save`. */
export class Knowledge {
  private readonly top = new Map<string, string>();
  private readonly merged = new WeakSet<readonly string[]>();

  /** A write seen: its own HLC and (once per vector) what it had seen. */
  see(hlc: string, vec?: readonly string[]): void {
    this.note(hlc);
    if (vec !== undefined && !this.merged.has(vec)) {
      this.merged.add(vec);
      for (const h of vec) this.note(h);
    }
  }

  private note(hlc: string): void {
    const dev = deviceOf(hlc);
    const was = this.top.get(dev);
    if (was === undefined || hlc > was) this.top.set(dev, hlc);
  }

  save(db: Db): void {
    if (this.top.size === 0) return;
    const put = db.prepare(
      'INSERT INTO casa_seen (dev, hlc) VALUES (?, ?) ON CONFLICT (dev) DO UPDATE SET hlc = excluded.hlc WHERE excluded.hlc > casa_seen.hlc',
    );
    for (const [dev, hlc] of this.top) put.run(dev, hlc);
  }
}

/**
 * Forgets vectors nothing references any more, once they have doubled
 * since the last time (and number over 1,024): a scan of casa_clock, rare.
 */
export function pruneVectors(db: Db): void {
  const n = db.prepare('SELECT count(*) FROM casa_vectors').pluck().get() as number;
  const kept = Number((db.prepare("SELECT value FROM casa_meta WHERE key = 'vectors_kept'").pluck().get() as number | undefined) ?? 0);
  if (n <= Math.max(1024, 2 * kept)) return;
  db.prepare(
    'DELETE FROM casa_vectors WHERE id NOT IN (SELECT vec FROM casa_clock WHERE vec IS NOT NULL) ' +
      'AND id NOT IN (SELECT vec FROM casa_changes WHERE vec IS NOT NULL) AND id NOT IN (SELECT vec FROM casa_pending WHERE vec IS NOT NULL)',
  ).run();
  const left = db.prepare('SELECT count(*) FROM casa_vectors').pluck().get() as number;
  db.prepare("INSERT INTO casa_meta (key, value) VALUES ('vectors_kept', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value").run(left);
}
