/**
 * A consistent copy of the live database (DESIGN §6.1): SQLite's backup API
 * (better-sqlite3 `backup()`, in large steps), never a raw file copy and never
 * `VACUUM INTO` (it re-lays pages and defeats page dedup). Works while the
 * app writes in WAL mode: the copy is one committed state.
 *
 * Then, without holding the database: the copy's page size, page count,
 * schema and user versions, the SHA-256 of every page (on the worker pool, in
 * 8 MiB ranges) and the database digest made from them.
 */
import { closeSync, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, statfsSync } from 'node:fs';
import { freemem } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import { FailureError } from '../errors.js';
import { processAlive } from '../lock.js';
import { hashPages, pagesDigest, PAGE_HASH_BYTES } from './page-hash.js';
import type { WorkerPool } from './pool.js';

/** Pages per backup step: 64 MiB at 4 KiB pages (DESIGN §6.1: large steps, 450 MiB/s vs 265 at the default). */
const BACKUP_STEP_PAGES = 16_384;

/** Bytes of pages one hash job reads at once (several jobs run at a time, one per worker). */
const HASH_RANGE_BYTES = 8 * 1024 * 1024;

export interface DbCopy {
  path: string;
  pageSize: number;
  pageCount: number;
  dbBytes: number;
  schemaVersion: number;
  userVersion: number;
  /** SHA-256 over the page hashes (FORMAT.md §5). */
  pagesSha256: string;
  /** pageCount × 16 bytes of keyed page hashes. */
  hashes: Uint8Array;
  remove(): void;
}

export function openDatabaseReadonly(dbPath: string): Database.Database {
  try {
    return new Database(dbPath, { readonly: true, fileMustExist: true });
  } catch (err) {
    throw new FailureError(`cannot open the database ${dbPath} (${(err as Error).message})`, {
      hints: ['check --db (or CASA_DB): it should name the Casaconomy database file'],
    });
  }
}

/**
 * Where the working copy goes. The copy is a throwaway: writing it to disk
 * and fsyncing it at the end of the backup (SQLite commits it like any
 * database) is most of a snapshot's cost — measured here for 1 GiB, 1.4–3.5 s
 * to disk against 0.8 s to tmpfs. So on Linux it goes to a private directory
 * in /dev/shm (RAM, never on disk: no plaintext left on a platter either)
 * when that has room for it twice over and the machine has the memory free;
 * otherwise to CASA_HOME/tmp. `CASA_TMPDIR` (given as `override`) names the
 * directory outright.
 */
export function scratchDir(home: string, dbBytes: number, override?: string, shm = '/dev/shm'): string {
  if (override) return override;
  const fallback = join(home, 'tmp');
  if (process.platform !== 'linux' || typeof process.getuid !== 'function') return fallback;
  const dir = join(shm, `casa-${process.getuid()}`);
  try {
    const fs = statfsSync(shm);
    if (fs.bavail * fs.bsize < 2 * dbBytes + (64 << 20) || freemem() < 2 * dbBytes + (256 << 20)) return fallback;
    mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') return fallback;
  }
  try {
    // Only a directory of our own that nobody else can enter: never follow a planted link.
    const st = lstatSync(dir);
    if (!st.isDirectory() || st.uid !== process.getuid() || (st.mode & 0o077) !== 0) return fallback;
  } catch {
    return fallback;
  }
  return dir;
}

/** Copies `dbPath` consistently into `tmpDir` and describes the copy. The caller removes it. */
export async function copyDatabase(
  dbPath: string,
  tmpDir: string,
  pool: WorkerPool,
  onProgress: (bytes: number) => void = () => {},
): Promise<DbCopy> {
  mkdirSync(tmpDir, { recursive: true, mode: 0o700 });
  sweepStaleCopies(tmpDir);
  // The pid in the name lets a later run remove the copy if this process is killed.
  const path = join(tmpDir, `copy-${process.pid}-${randomBytes(6).toString('hex')}.db`);
  const remove = () => {
    rmSync(path, { force: true });
    rmSync(`${path}-journal`, { force: true });
  };
  const db = openDatabaseReadonly(dbPath);
  try {
    let copied = 0;
    const pageSize = Number(db.pragma('page_size', { simple: true }));
    // better-sqlite3 builds with a 16 MiB page cache per connection; the backup only streams pages through it.
    db.pragma('cache_size = -2048');
    // A write by another connection between two backup steps restarts the backup from page 0, so
    // an app that writes every few seconds could keep a stepped copy of a large database from ever
    // finishing. In WAL mode one step holds a read transaction, which never blocks the app's
    // writers: copy everything in that one step. Other journal modes take a shared lock per step,
    // which does block writers: keep the steps short enough for the app's busy timeout.
    const wal = String(db.pragma('journal_mode', { simple: true })).toLowerCase() === 'wal';
    const done = await db.backup(path, {
      progress({ totalPages, remainingPages }) {
        const now = totalPages - remainingPages;
        onProgress((now - copied) * pageSize);
        copied = now;
        return wal ? 0x7fffffff : BACKUP_STEP_PAGES;
      },
    });
    onProgress((done.totalPages - copied) * pageSize);
  } catch (err) {
    remove();
    throw new FailureError(`cannot copy the database ${dbPath} (${(err as Error).message})`, {
      hints: ['check that the file is a SQLite database and that CASA_HOME has room for a copy'],
    });
  } finally {
    db.close();
  }
  try {
    return await describeCopy(path, pool, remove);
  } catch (err) {
    remove();
    throw err;
  }
}

/**
 * Removes copies left in `tmpDir` by casa processes that no longer run (a
 * SIGKILL or a power cut skips every cleanup); copies of live processes stay.
 */
export function sweepStaleCopies(tmpDir: string): void {
  let names: string[];
  try {
    names = readdirSync(tmpDir);
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^copy-(\d+)-[0-9a-f]+\.db(-journal)?$/.exec(name);
    if (!m || processAlive(Number(m[1]))) continue;
    rmSync(join(tmpDir, name), { force: true });
  }
}

/** Reads a database file's header and hashes its pages on the pool; the digest comes from the page hashes. */
export async function describeCopy(path: string, pool: WorkerPool, remove: () => void): Promise<DbCopy> {
  const fd = openSync(path, 'r');
  let size: number;
  const header = Buffer.alloc(100);
  try {
    size = fstatSync(fd).size;
    readSync(fd, header, 0, 100, 0);
  } finally {
    closeSync(fd);
  }
  // SQLite file header: page size at offset 16 (1 means 65536), user_version at 60, schema cookie at 40.
  const raw = header.readUInt16BE(16);
  const pageSize = raw === 1 ? 65536 : raw;
  if (pageSize < 512 || (pageSize & (pageSize - 1)) !== 0 || size % pageSize !== 0) {
    throw new FailureError(`${path} is not a SQLite database`);
  }
  const pageCount = size / pageSize;
  const schemaVersion = header.readUInt32BE(40);
  const userVersion = header.readUInt32BE(60);

  // A range is read whole by its worker: at most HASH_RANGE_BYTES, so memory stays flat with the database's size.
  const per = Math.max(1, Math.floor(HASH_RANGE_BYTES / pageSize));
  const hashes = new Uint8Array(pageCount * PAGE_HASH_BYTES);
  const jobs: Promise<void>[] = [];
  for (let first = 0; first < pageCount; first += per) {
    const count = Math.min(per, pageCount - first);
    jobs.push(
      pool.run({ kind: 'hash', path, pageSize, firstPage: first, pageCount: count }).then((r) => hashes.set(r.hashes, first * PAGE_HASH_BYTES)),
    );
  }
  await Promise.all(jobs);
  return { path, pageSize, pageCount, dbBytes: size, schemaVersion, userVersion, pagesSha256: pagesDigest(hashes), hashes, remove };
}

/** The digest of a database file read on this thread (tests, small files). */
export function digestFile(path: string, pageSize: number): string {
  return pagesDigest(hashPages(readFileSync(path), pageSize));
}
