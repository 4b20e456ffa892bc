/**
 * A consistent view of the live database's pages (docs/ARCHITECTURE.md §7), read with
 * pread by any thread of the pool:
 *
 * - WAL mode (Casaconomy's): the database file itself, under a read
 *   transaction that casa holds until the view is closed. A passive checkpoint
 *   first folds the WAL into the file; when it reports every frame folded
 *   after our transaction began, the file holds exactly our snapshot and
 *   stays so while we read: SQLite never backfills frames past an open
 *   reader's mark, nor truncates the file under it (its WAL locking
 *   protocol), and the app keeps writing to the WAL meanwhile (which cannot
 *   be folded back until the snapshot ends: a long upload lets it grow by
 *   what the app writes meanwhile, like any long reader). No copy: a
 *   1 GiB database costs no 1 GiB write (1–3.5 s measured here) and no
 *   second gigabyte of page cache.
 * - Otherwise (a WAL the checkpoint could not fold, e.g. an old reader holds
 *   it; a rollback-journal database, whose shared lock would block the app's
 *   writers for the whole snapshot): a copy through SQLite's backup API, as
 *   before — never a raw copy of an unlocked file, never `VACUUM INTO` (it
 *   re-lays pages and defeats page dedup).
 *
 * POSIX drops all of a process's locks on a file when any descriptor of it is
 * closed: the view opens the database file once, hands that descriptor to
 * the readers, and closes it only after SQLite's connection is gone.
 *
 * Then, without the app noticing: the page size, page count, schema and user
 * versions, and (hashDatabase) the SHA-256 of every page, on the worker pool
 * in 8 MiB ranges, and the database digest made from them.
 */
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, statfsSync } from 'node:fs';
import { freemem } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import { FailureError } from '../errors.js';
import { processAlive } from '../lock.js';
import { ensurePrivateDir } from '../private-dir.js';
import { hashPages, pagesDigest, PAGE_HASH_BYTES } from './page-hash.js';
import type { WorkerPool } from './pool.js';
import { statDatabase, type DbStat } from './page-index.js';

/** Pages per backup step: 64 MiB at 4 KiB pages (docs/ARCHITECTURE.md §7: large steps, 450 MiB/s vs 265 at the default). */
const BACKUP_STEP_PAGES = 16_384;

/** Bytes of pages one hash job reads at once (several jobs run at a time, one per worker). */
const HASH_RANGE_BYTES = 8 * 1024 * 1024;

/** Checkpoint attempts before falling back to a copy (the app may commit between our read and the checkpoint). */
const LIVE_ATTEMPTS = 3;

/** A consistent, unchanging view of the database's pages. */
export interface DbSource {
  /** Read pages here with pread; valid until close(). Any thread of this process may use it. */
  fd: number;
  /** 'live': the database file under casa's read transaction; 'copy': a backup-API copy in a scratch directory. */
  kind: 'live' | 'copy';
  /** The database's and its -wal's size and mtime as of the view (taken before anything newer could be written). */
  stat: DbStat;
  pageSize: number;
  pageCount: number;
  dbBytes: number;
  schemaVersion: number;
  userVersion: number;
  /** Ends the read transaction (or removes the copy). Idempotent. */
  close(): void;
}

/** A view with every page hashed. */
export interface DbCopy extends DbSource {
  /** SHA-256 over the page hashes (FORMAT.md §5). */
  pagesSha256: string;
  /** pageCount × 32 bytes: each page's SHA-256. */
  hashes: Uint8Array;
}

function openDatabaseReadonly(dbPath: string): Database.Database {
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

/**
 * Opens a consistent view of `dbPath`: the live file under a read
 * transaction when that is safe, else a backup-API copy in `tmpDir` (a
 * function: the directory is only chosen, and created, when a copy is made).
 */
export async function openDatabaseView(
  dbPath: string,
  tmpDir: () => string,
  onProgress: (bytes: number) => void = () => {},
  trace?: (label: string) => void,
): Promise<DbSource> {
  const live = openLiveView(dbPath);
  if (live) {
    trace?.('reading the live database under a read transaction');
    return live;
  }
  const copy = await copyDatabase(dbPath, tmpDir(), onProgress);
  trace?.('copied');
  return copy;
}

/**
 * The live view, or null when the database is not in WAL mode or its WAL
 * could not be folded into the file (a reader older than ours holds frames).
 */
function openLiveView(dbPath: string): DbSource | null {
  let db: Database.Database;
  try {
    // Read-only: a read-only connection never checkpoints or removes the WAL when it closes, so the
    // file's stat recorded below stays what `casa status` compares against.
    db = new Database(dbPath, { readonly: true, fileMustExist: true });
  } catch {
    return null; // not a database, unreadable...: the copy path reports what is wrong
  }
  let fd = -1;
  let open = true;
  const close = () => {
    if (!open) return;
    open = false;
    try {
      if (db.inTransaction) db.exec('COMMIT');
    } finally {
      db.close();
      // Only now: closing any descriptor of the file drops the process's SQLite locks on it.
      if (fd >= 0) closeSync(fd);
    }
  };
  try {
    if (String(db.pragma('journal_mode', { simple: true })).toLowerCase() !== 'wal') {
      close();
      return null;
    }
    fd = openSync(dbPath, 'r');
    for (let attempt = 0; attempt < LIVE_ATTEMPTS; attempt++) {
      // Our snapshot begins with the first read of the transaction.
      db.exec('BEGIN');
      db.prepare('SELECT count(*) FROM sqlite_master').get();
      const pageCount = Number(db.pragma('page_count', { simple: true }));
      const pageSize = Number(db.pragma('page_size', { simple: true }));
      // Fold the WAL into the file, from a second, writing connection (never the last one to close: ours is open).
      const ck = new Database(dbPath, { fileMustExist: true });
      let row: { busy: number; log: number; checkpointed: number } | undefined;
      try {
        ck.pragma('busy_timeout = 0');
        row = (ck.pragma('wal_checkpoint(PASSIVE)') as { busy: number; log: number; checkpointed: number }[])[0];
      } finally {
        ck.close();
      }
      // Every frame in the WAL folded: our snapshot's frames among them, and none newer exists (it could not have been folded past our mark).
      if (row && row.log >= 0 && row.checkpointed === row.log) {
        // After the checkpoint: it may have written the file. A later write by the app changes the -wal.
        const stat = statDatabase(dbPath);
        const size = fstatSync(fd).size;
        if (size < pageCount * pageSize) break;
        const header = Buffer.alloc(100);
        readSync(fd, header, 0, 100, 0);
        const h = parseHeader(header, pageCount * pageSize);
        if (h.pageSize !== pageSize) break;
        return {
          fd,
          kind: 'live',
          stat,
          pageSize,
          pageCount,
          dbBytes: pageCount * pageSize,
          schemaVersion: h.schemaVersion,
          userVersion: h.userVersion,
          close,
        };
      }
      db.exec('COMMIT');
    }
  } catch {
    // Any surprise (a read-only directory, a locked file...): the backup API is the safe path.
  }
  close();
  return null;
}

/**
 * Copies `dbPath` through SQLite's backup API into `tmpDir` (created 0700, or
 * checked to be private: src/private-dir.ts), as a file only the user can
 * read (0600, before a page is in it; SQLite gives its journal the same
 * mode). The caller closes the view (which removes the copy).
 */
async function copyDatabase(dbPath: string, tmpDir: string, onProgress: (bytes: number) => void): Promise<DbSource> {
  ensurePrivateDir(tmpDir, 'the working directory');
  sweepStaleCopies(tmpDir);
  // The pid in the name lets a later run remove the copy if this process is killed.
  const path = join(tmpDir, `copy-${process.pid}-${randomBytes(6).toString('hex')}.db`);
  const remove = () => {
    rmSync(path, { force: true });
    rmSync(`${path}-journal`, { force: true });
  };
  const stat = statDatabase(dbPath);
  const db = openDatabaseReadonly(dbPath);
  try {
    // An empty file is an empty database to SQLite: the backup fills it, keeping its mode.
    closeSync(openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600));
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
  let fd = -1;
  try {
    fd = openSync(path, 'r');
    const size = fstatSync(fd).size;
    const header = Buffer.alloc(100);
    readSync(fd, header, 0, 100, 0);
    const h = parseHeader(header, size);
    let open = true;
    const theFd = fd;
    return {
      fd,
      kind: 'copy',
      stat,
      pageSize: h.pageSize,
      pageCount: size / h.pageSize,
      dbBytes: size,
      schemaVersion: h.schemaVersion,
      userVersion: h.userVersion,
      close() {
        if (!open) return;
        open = false;
        closeSync(theFd);
        remove();
      },
    };
  } catch (err) {
    if (fd >= 0) closeSync(fd);
    remove();
    throw err;
  }
}

/** A view of `dbPath` with every page hashed (`casa pull` compares them with the index). The caller closes it. */
export async function readDatabase(dbPath: string, tmpDir: () => string, pool: WorkerPool): Promise<DbCopy> {
  const view = await openDatabaseView(dbPath, tmpDir);
  try {
    return { ...view, ...(await hashDatabase(view, pool)) };
  } catch (err) {
    view.close();
    throw err;
  }
}

/**
 * Removes copies left in `tmpDir` by casa processes that no longer run (a
 * SIGKILL or a power cut skips every cleanup); copies of live processes stay.
 */
function sweepStaleCopies(tmpDir: string): void {
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

/** Page size, schema cookie and user_version from a SQLite file header; throws if it is not one (or `size` is not whole pages). */
function parseHeader(header: Buffer, size: number): { pageSize: number; schemaVersion: number; userVersion: number } {
  // SQLite file header: page size at offset 16 (1 means 65536), user_version at 60, schema cookie at 40.
  const raw = header.readUInt16BE(16);
  const pageSize = raw === 1 ? 65536 : raw;
  if (header.subarray(0, 16).toString('latin1') !== 'SQLite format 3\0' || pageSize < 512 || (pageSize & (pageSize - 1)) !== 0 || size % pageSize !== 0) {
    throw new FailureError('the database file is not a SQLite database');
  }
  return { pageSize, schemaVersion: header.readUInt32BE(40), userVersion: header.readUInt32BE(60) };
}

/** The SHA-256 of every page of the view, on the pool, and the digest made from them. */
export async function hashDatabase(
  view: DbSource,
  pool: WorkerPool,
  onProgress: (bytes: number) => void = () => {},
): Promise<{ hashes: Uint8Array; pagesSha256: string }> {
  const { fd, pageSize, pageCount } = view;
  // A range is read whole by its worker: at most HASH_RANGE_BYTES, so memory stays flat with the database's size.
  const per = Math.max(1, Math.floor(HASH_RANGE_BYTES / pageSize));
  const hashes = new Uint8Array(pageCount * PAGE_HASH_BYTES);
  const jobs: Promise<void>[] = [];
  for (let first = 0; first < pageCount; first += per) {
    const count = Math.min(per, pageCount - first);
    jobs.push(
      pool.run({ kind: 'hash', fd, pageSize, firstPage: first, pageCount: count }).then((r) => {
        hashes.set(r.hashes, first * PAGE_HASH_BYTES);
        onProgress(count * pageSize);
      }),
    );
  }
  await Promise.all(jobs);
  return { hashes, pagesSha256: pagesDigest(hashes) };
}

/** The digest of a database file read on this thread (tests, small files). */
export function digestFile(path: string, pageSize: number): string {
  return pagesDigest(hashPages(readFileSync(path), pageSize));
}
