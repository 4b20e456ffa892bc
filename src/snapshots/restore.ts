/**
 * Restoring a snapshot (docs/ARCHITECTURE.md §3, docs/FORMAT.md §5): the
 * machinery shared by `casa restore`, `casa pull` and `casa verify`.
 *
 * 1. fetch and open the manifest, authenticated against the snapshot id and
 *    seq the relay listed it under (a moved or swapped manifest fails);
 * 2. assemble into a temp file: packs downloaded a few at a time, each opened
 *    (AEAD), decompressed through a 1 MiB window and its runs written at
 *    their offsets, while libuv's pool reads the new file ahead of the
 *    writes (warmPageCache: the kernel's page-cache pages get made off the
 *    main thread); memory holds only the two packs in flight (their
 *    ciphertext) and the window, never the database nor a whole pack's
 *    plaintext;
 * 3. check the database checksum (SHA-256 over every page's SHA-256, from
 *    the pages as written) against the manifest and `PRAGMA quick_check`
 *    (`integrity_check` when thorough) while the file is fsynced;
 * 4. install (restore and pull only): checkpoint the old database, remove its
 *    -wal/-shm/-journal, hard-link it to a backup beside it, rename the temp
 *    over it, fsync the directory.
 *
 * Invariants: a kill at any point leaves the target as the old database or
 * the new one, byte for byte, and no sidecar file SQLite would apply to the
 * new one (sidecars go before the rename; the temp lives in the target's
 * directory so the rename is atomic). Any failure before the rename leaves
 * the target untouched and removes the temp; temps of a killed run are
 * removed by the next run on that database (under its lock).
 */
import {
  chmodSync,
  closeSync,
  constants,
  copyFileSync,
  existsSync,
  fsyncSync,
  ftruncateSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
  renameSync,
  rmSync,
} from 'node:fs';
import { fsync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import type { VaultKeys } from '../crypto/kdf.js';
import { CancelledError, FailureError, IntegrityError } from '../errors.js';
import { mapCryptoError, objectFailure } from '../failures.js';
import { fsyncDir } from '../state.js';
import { digestFile } from './db-copy.js';
import { ManifestError, openManifest, openPackReader, type Manifest } from './manifest.js';
import { hashPagesInto, pagesDigest, PAGE_HASH_BYTES } from './page-hash.js';
import { warmPageCache, worthWarming, type Warmer } from './page-cache.js';
import { collectYoung } from '../gc.js';
import type { SnapshotApi } from '../relay/snapshots.js';

/**
 * Packs between "download started" and "written": one is opened and written
 * while the other downloads. Each lane reads its packs into one reused
 * buffer, so memory holds two packs' ciphertext whatever the database size
 * (a third lane measured no faster on a 1 GiB restore, and 4–8 MB heavier).
 */
export const MAX_PACKS_IN_FLIGHT = 2;
/**
 * Worker threads for `pull`'s check of the local database before it restores
 * (hashing its pages), besides the main thread's lane: none; a worker's heap
 * costs ~10 MB. A restore itself opens and writes its packs on the main
 * thread, while the relay serving the packs and the page-cache warming
 * (libuv's pool) keep the second core busy.
 */
export const PULL_CHECK_WORKERS = 0;

/**
 * The window a pack's plaintext is decompressed through (a multiple of every
 * SQLite page size, 512 B to 64 KiB): the plaintext is never whole, and
 * memory holds 1 MiB of it at most.
 */
const RESTORE_WINDOW_BYTES = 1024 * 1024;

/** The name every restore temp file carries after `.<database file name>`. */
const TEMP_MARK = '.casa-restore-';
/** SQLite's sidecar files: any of them beside the new file would be applied to it. */
const SIDECARS = ['-wal', '-shm', '-journal'] as const;

export interface SnapshotRef {
  id: string;
  seq: number;
}

export const shortId = (id: string): string => id.slice(0, 12);

/**
 * A manifest or pack that did not open, as src/failures.ts maps it: sealed
 * under another key exit 4, anything else (authentication, format, a
 * ManifestError) exit 6; other errors pass through.
 */
function openFailure(err: unknown, what: string): unknown {
  return err instanceof ManifestError ? objectFailure('malformed', what) : mapCryptoError(err, what);
}

/** Fetches and opens a snapshot's manifest; any crypto or format failure is an integrity failure (exit 6) or wrong key (exit 4). */
export async function fetchManifest(api: SnapshotApi, keys: VaultKeys, ref: SnapshotRef): Promise<{ manifest: Manifest; bytes: number }> {
  const object = await api.getManifest(ref.id);
  try {
    return { manifest: openManifest(keys, object, { vaultId: keys.vaultId, snapshotId: ref.id, seq: ref.seq }), bytes: object.length };
  } catch (err) {
    throw openFailure(err, `the manifest of snapshot ${shortId(ref.id)}`);
  }
}

export interface RestoreParams {
  api: SnapshotApi;
  keys: VaultKeys;
  ref: SnapshotRef;
  /** The temp file to assemble into (must not exist); see tempPathBeside. */
  tmpPath: string;
  thorough: boolean;
  signal: AbortSignal;
  /** Called once the manifest is known; returns the per-write progress callback. */
  onStart?: (m: Manifest) => (bytes: number) => void;
  /** Timing marks for `CASA_TRACE=1`. */
  trace?: (label: string) => void;
  /** The manifest of `ref`, already fetched and opened by the caller (fetchManifest); else step 1 fetches it. */
  opened?: { manifest: Manifest; bytes: number };
}

export interface Restored {
  manifest: Manifest;
  tmpPath: string;
  /** SHA-256 of each page written (the digest's input, and the local index). */
  hashes: Uint8Array;
  /** Manifest and pack ciphertext bytes fetched from the relay. */
  downloadedBytes: number;
}

/** Steps 1–3: a checked, fsynced copy of the snapshot at `tmpPath`. On any failure the temp is removed. */
export async function restoreToTemp(p: RestoreParams): Promise<Restored> {
  try {
    const { manifest, bytes } = p.opened ?? (await fetchManifest(p.api, p.keys, p.ref));
    if (manifest.snapshotId !== p.ref.id || manifest.seq !== p.ref.seq) throw new Error('restoreToTemp: the manifest given is not the one of ref');
    p.trace?.('manifest fetched and opened');
    const onBytes = p.onStart?.(manifest) ?? (() => {});
    const { hashes, downloadedBytes, synced } = await assemble(p, manifest, onBytes);
    // The checks read the file from the page cache while the kernel writes it out: neither waits for the other.
    try {
      p.signal.throwIfAborted();
      await checkRestoredDatabase(p.tmpPath, manifest, p.thorough, hashes);
      p.trace?.(p.thorough ? 'digest and integrity_check ok' : 'digest and quick_check ok');
    } finally {
      await synced;
    }
    p.trace?.('fsynced');
    return { manifest, tmpPath: p.tmpPath, hashes, downloadedBytes: downloadedBytes + bytes };
  } catch (err) {
    removeWithSidecars(p.tmpPath);
    if (p.signal.aborted && !(err instanceof CancelledError)) throw new CancelledError();
    throw err;
  }
}

/** Downloads, opens and writes every pack the manifest's runs use, a few at a time. */
async function assemble(
  p: RestoreParams,
  m: Manifest,
  onBytes: (bytes: number) => void,
): Promise<{ hashes: Uint8Array; downloadedBytes: number; synced: Promise<void> }> {
  // Runs by pack: each pack is fetched once, whatever number of runs it serves.
  const runsOf = new Map<number, number[]>();
  for (let i = 0; i < m.runs.length; i += 4) {
    const pack = m.runs[i + 2]!;
    const list = runsOf.get(pack);
    if (list) list.push(i);
    else runsOf.set(pack, [i]);
  }
  const order = [...runsOf.keys()].sort((a, b) => a - b);
  const hashes = new Uint8Array(m.pageCount * PAGE_HASH_BYTES);
  let downloadedBytes = 0;

  mkdirSync(dirname(p.tmpPath), { recursive: true, mode: 0o700 });
  const fd = openSync(p.tmpPath, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600);
  const window = new Uint8Array(RESTORE_WINDOW_BYTES);
  let warmer: Warmer | undefined;
  let synced: Promise<void> | undefined;
  try {
    ftruncateSync(fd, m.dbBytes);
    if (worthWarming(dirname(p.tmpPath))) warmer = warmPageCache(fd, m.dbBytes);
    let next = 0;
    let failure: unknown;
    const lane = async () => {
      // Each lane reads pack after pack into the same buffer (grown when a pack is larger): no
      // 2–8 MiB of garbage per pack for V8 to collect late.
      let slot: Uint8Array | undefined;
      while (failure === undefined && next < order.length) {
        if (p.signal.aborted) throw new CancelledError();
        const index = order[next++]!;
        const pack = m.packs[index]!;
        const object = await p.api.getPack(pack.id, slot);
        slot = new Uint8Array(object.buffer);
        downloadedBytes += object.length;
        if (failure !== undefined) return;
        const writes = runsOf.get(index)!.map((r): Run => [m.runs[r + 3]!, m.runs[r + 1]! * m.pageSize, m.runs[r]! * m.pageSize]);
        try {
          writePack(p.keys, pack.id, object, pack.bytes, m.pageSize, writes, fd, window, hashes);
        } catch (err) {
          throw openFailure(err, `pack ${shortId(pack.id)} of snapshot ${shortId(m.snapshotId)}`);
        }
        for (const [, length] of writes) onBytes(length);
      }
    };
    // Every lane settles before the file is closed: a lane still running must never write to a reused fd.
    const lanes = Array.from({ length: Math.min(MAX_PACKS_IN_FLIGHT, Math.max(1, order.length)) }, () =>
      lane().catch((err) => {
        if (failure === undefined) failure = err;
      }),
    );
    await Promise.all(lanes);
    if (failure !== undefined) throw failure;
    await warmer?.stop();
    p.trace?.('packs downloaded, opened and written');
    // fsync on libuv's thread pool; the descriptor is closed once it is done.
    synced = new Promise<void>((resolve, reject) => fsync(fd, (err) => (err ? reject(err) : resolve()))).finally(() => closeSync(fd));
  } catch (err) {
    throw writeFailure(err, p.tmpPath, m.dbBytes);
  } finally {
    if (synced === undefined) {
      // The warming stops before the descriptor is closed: it must never read a reused fd.
      await warmer?.stop();
      closeSync(fd);
    }
  }
  return { hashes, downloadedBytes, synced };
}

/** A run of a pack: [offset in the pack's plaintext, length, position in the file], page-aligned. */
type Run = readonly [offset: number, length: number, position: number];

/**
 * Opens one pack (AES-GCM for every chunk first; not its id, see
 * openPackReader), decompresses it through `window` and writes the runs
 * `writes` names with pwrite. Each page written is hashed into `hashes` (the
 * database digest's input) at its page number. The plaintext is never whole.
 */
function writePack(
  keys: VaultKeys,
  id: string,
  object: Uint8Array,
  bytes: number,
  pageSize: number,
  writes: Run[],
  fd: number,
  window: Uint8Array,
  hashes: Uint8Array,
): void {
  for (const [offset, length] of writes) {
    if (offset % pageSize !== 0 || length % pageSize !== 0 || offset + length > bytes) throw new ManifestError('a run lies outside its pack');
  }
  const reader = openPackReader(keys, id, object, bytes);
  for (let at = 0; at < bytes; ) {
    const win = window.subarray(0, Math.min(window.length, bytes - at));
    reader.read(win); // fills the window, or throws (the pack is shorter than its size)
    const end = at + win.length;
    for (const [offset, length, position] of writes) {
      // The part of the run [offset, offset + length) inside this window.
      const from = Math.max(offset, at);
      const to = Math.min(offset + length, end);
      if (from >= to) continue;
      const piece = win.subarray(from - at, to - at);
      const target = position + (from - offset);
      for (let done = 0; done < piece.length; ) done += writeSync(fd, piece, done, piece.length - done, target + done);
      hashPagesInto(piece, pageSize, hashes, (target / pageSize) * PAGE_HASH_BYTES);
    }
    at = end;
  }
  reader.end(); // nothing left over
  collectYoung();
}

/** A disk that fills up (or a quota) is the user's to fix: said plainly, with what it takes. */
export function writeFailure(err: unknown, tmpPath: string, dbBytes: number): unknown {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code !== 'ENOSPC' && code !== 'EDQUOT') return err;
  return new FailureError(`no space left in ${dirname(tmpPath)} to write the restored database`, {
    hints: [`the restore needs ${formatMiB(dbBytes)} free there; nothing was changed`],
  });
}

const formatMiB = (bytes: number): string => `${Math.ceil(bytes / (1024 * 1024))} MiB`;

/**
 * The database digest against the manifest (from the page hashes of what was
 * written, or of the file as it is on disk when none are given), then
 * SQLite's own check. Read-only: the file's bytes never change.
 */
export async function checkRestoredDatabase(path: string, m: Manifest, thorough: boolean, hashes?: Uint8Array): Promise<void> {
  const what = `snapshot ${shortId(m.snapshotId)} (seq ${m.seq})`;
  const digest = hashes ? pagesDigest(hashes) : digestFile(path, m.pageSize);
  if (digest !== m.pagesSha256) {
    throw new IntegrityError(`the database assembled from ${what} does not match the snapshot's checksum`, {
      hints: ['the relay served damaged or tampered data; nothing was changed here'],
    });
  }
  const check = thorough ? 'integrity_check' : 'quick_check';
  let answer: string;
  try {
    const db = new Database(path, { readonly: true, fileMustExist: true });
    try {
      // The check reads every page once: better-sqlite3's 16 MB page cache would only add memory
      // (measured on 1 GiB: 0.9 s and 51 MB with 2 MB, 1.0–1.3 s and 65 MB with 16 MB).
      db.pragma('cache_size = -2048');
      const rows = db.pragma(check) as Record<string, unknown>[];
      answer = rows.map((r) => String(Object.values(r)[0])).join('; ');
    } finally {
      db.close();
    }
  } catch (err) {
    answer = (err as Error).message;
  } finally {
    // A read-only open of a WAL-mode file leaves empty -wal/-shm beside it.
    for (const s of SIDECARS) rmSync(`${path}${s}`, { force: true });
  }
  if (answer !== 'ok') {
    throw new IntegrityError(`${what} fails SQLite's ${check}: ${answer.slice(0, 200)}`, {
      hints: ['the snapshot was taken from a damaged database; an older one may be sound (`casa verify --all`)'],
    });
  }
}

/** A fresh temp path in the target's directory (so the final rename is atomic). */
export function tempPathBeside(dbPath: string, random: (n: number) => Uint8Array): string {
  return join(dirname(dbPath), `.${basename(dbPath)}${TEMP_MARK}${Buffer.from(random(6)).toString('hex')}`);
}

/** Removes the temps (and their sidecars) a killed restore of `dbPath` left. Call only under the database's lock. */
export function removeStaleTemps(dbPath: string): string[] {
  const prefix = `.${basename(dbPath)}${TEMP_MARK}`;
  let names: string[];
  try {
    names = readdirSync(dirname(dbPath));
  } catch {
    return [];
  }
  const removed = names.filter((n) => n.startsWith(prefix));
  for (const n of removed) rmSync(join(dirname(dbPath), n), { force: true });
  return removed;
}

export function removeWithSidecars(path: string): void {
  rmSync(path, { force: true });
  for (const s of SIDECARS) rmSync(`${path}${s}`, { force: true });
}

/** How many `.casa-backup-*` files of a database a restore or pull keeps (docs/SECURITY.md §7). */
export const BACKUPS_KEPT = 3;

/**
 * Step 4: puts the restored file in place of `dbPath`, keeping the old one
 * (if any) as `<db>.casa-backup-<UTC time>`, mode 0600 like the restored
 * file. Returns the backup's path. On a failure before the rename, the temp
 * is removed and the target untouched. Backups beyond the newest
 * BACKUPS_KEPT are then removed (pruneBackups).
 */
export function installDatabase(tmpPath: string, dbPath: string, now: number): string | null {
  let backup: string | null = null;
  try {
    if (existsSync(dbPath)) {
      checkpoint(dbPath);
      backup = keepBackup(dbPath, now);
    }
    // A -wal or -journal beside the target would be applied to the new file: none may survive the rename.
    for (const s of SIDECARS) rmSync(`${dbPath}${s}`, { force: true });
    renameSync(tmpPath, dbPath);
  } catch (err) {
    removeWithSidecars(tmpPath);
    if (err instanceof FailureError) throw err;
    throw new FailureError(`cannot replace ${dbPath} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, {
      hints: ['the database was left as it was; check the permissions of its directory'],
    });
  }
  fsyncDir(dirname(dbPath));
  if (backup !== null) {
    // A hard link shares the old file's inode: only now, renamed over, is it the backup's alone.
    try {
      chmodSync(backup, 0o600);
    } catch {
      // A file system without modes (or a copy we cannot chmod): the backup is still kept.
    }
  }
  pruneBackups(dbPath);
  return backup;
}

/** `<db>.casa-backup-YYYYMMDDTHHMMSSZ[-n]`: keepBackup's names, and nothing else. */
function backupPattern(dbPath: string): RegExp {
  const base = basename(dbPath).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`^${base}\\.casa-backup-(\\d{8}T\\d{6}Z)(?:-(\\d+))?$`);
}

/**
 * Removes the `.casa-backup-*` files of `dbPath` beyond the newest `keep`
 * (newest by the time in the name, then its counter); returns the removed
 * paths. A file it cannot remove is left. Call under the database's lock.
 */
export function pruneBackups(dbPath: string, keep = BACKUPS_KEPT): string[] {
  const dir = dirname(dbPath);
  const pattern = backupPattern(dbPath);
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const backups = names
    .map((name) => ({ name, m: pattern.exec(name) }))
    .filter((b): b is { name: string; m: RegExpExecArray } => b.m !== null)
    .map((b) => ({ name: b.name, stamp: b.m[1]!, n: b.m[2] === undefined ? 1 : Number(b.m[2]) }))
    .sort((x, y) => (x.stamp === y.stamp ? y.n - x.n : x.stamp < y.stamp ? 1 : -1));
  const removed: string[] = [];
  for (const b of backups.slice(keep)) {
    const path = join(dir, b.name);
    try {
      rmSync(path, { force: true });
      removed.push(path);
    } catch {
      // Not ours to force (permissions): left for the user.
    }
  }
  return removed;
}

/**
 * Folds the old database's -wal into it (TRUNCATE), so the old file alone is
 * the whole old database: then its sidecars can go and it can be the backup.
 * A program holding the database open keeps the checkpoint from completing:
 * that is refused rather than losing what its -wal holds.
 */
function checkpoint(dbPath: string): void {
  let db: Database.Database;
  try {
    db = new Database(dbPath, { fileMustExist: true });
  } catch (err) {
    throw new FailureError(`cannot open ${dbPath} to replace it (${(err as Error).message})`);
  }
  try {
    const row = (db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[])[0];
    if (row && row.busy !== 0) {
      throw new FailureError(`${dbPath} is in use by another program`, {
        hints: ['close Casaconomy (or whatever has the database open) and run the command again'],
      });
    }
  } catch (err) {
    if (err instanceof FailureError) throw err;
    const code = (err as { code?: string }).code;
    // Not a database at all (SQLITE_NOTADB): nothing to fold in; it is still kept as the backup.
    if (code !== 'SQLITE_NOTADB') {
      throw new FailureError(`cannot checkpoint ${dbPath} before replacing it (${(err as Error).message})`, {
        hints: ['close Casaconomy (or whatever has the database open) and run the command again'],
      });
    }
  } finally {
    db.close();
  }
}

/** Hard-links the old database to a backup path beside it (a copy where links are not supported). */
function keepBackup(dbPath: string, now: number): string {
  const stamp = new Date(now).toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  for (let n = 1; ; n++) {
    const backup = `${dbPath}.casa-backup-${stamp}${n === 1 ? '' : `-${n}`}`;
    try {
      linkSync(dbPath, backup);
      return backup;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') continue;
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EXDEV' && code !== 'EMLINK') throw err;
      copyFileSync(dbPath, backup, constants.COPYFILE_EXCL);
      const fd = openSync(backup, 'r');
      try {
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      return backup;
    }
  }
}
