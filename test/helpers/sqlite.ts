/**
 * Real SQLite databases for the snapshot/restore e2e tests: a Casaconomy-ish
 * database to edit, the bytes a snapshot of it holds (as `casa snapshot`
 * reads them: a WAL-mode file checkpointed and read in place, any other
 * through SQLite's backup API), SHA-256 of files, and integrity checks
 * run on a copy so the checked file gets no -wal/-shm of the test's making.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import Database from 'better-sqlite3';

export const sha256 = (b: Uint8Array | string): string =>
  createHash('sha256')
    .update(typeof b === 'string' ? readFileSync(b) : b)
    .digest('hex');

/** Creates (or extends) a database with `rows` rows of about `rowBytes` bytes, in WAL mode like the app. */
export function writeRows(path: string, rows: number, tag: string, rowBytes = 300): void {
  const db = new Database(path);
  try {
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE IF NOT EXISTS tx (id INTEGER PRIMARY KEY, memo TEXT, amount INTEGER)');
    const ins = db.prepare('INSERT INTO tx (memo, amount) VALUES (?, ?)');
    db.transaction(() => {
      for (let i = 0; i < rows; i++) ins.run(`${tag} ${i} ${'·'.repeat(rowBytes / 2)}${Math.random()}`, i);
    })();
  } finally {
    db.close(); // last connection: checkpoints and removes the -wal
  }
}

/** Updates a few scattered rows (a typical edit). */
export function editRows(path: string, tag: string, every = 97): void {
  const db = new Database(path);
  try {
    db.prepare('UPDATE tx SET memo = ? || memo WHERE id % ? = 0').run(tag, every);
  } finally {
    db.close();
  }
}

/**
 * The bytes `casa snapshot` would store for the database now, while nothing
 * else writes to it: a WAL-mode database with its WAL folded in, read in
 * place; any other through SQLite's backup API (src/snapshots/db-copy.ts).
 */
export async function consistentCopy(path: string): Promise<Buffer> {
  const rw = new Database(path, { fileMustExist: true });
  try {
    if (String(rw.pragma('journal_mode', { simple: true })).toLowerCase() === 'wal') {
      const row = (rw.pragma('wal_checkpoint(PASSIVE)') as { log: number; checkpointed: number }[])[0]!;
      if (row.log !== row.checkpointed) throw new Error('consistentCopy: the WAL could not be folded in (a reader holds it)');
      const pageCount = Number(rw.pragma('page_count', { simple: true }));
      const pageSize = Number(rw.pragma('page_size', { simple: true }));
      return readFileSync(path).subarray(0, pageCount * pageSize);
    }
  } finally {
    rw.close();
  }
  const dir = mkdtempSync(join(tmpdir(), 'casa-copy-'));
  try {
    const db = new Database(path, { readonly: true });
    try {
      await db.backup(join(dir, 'c.db'));
    } finally {
      db.close();
    }
    return readFileSync(join(dir, 'c.db'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** PRAGMA integrity_check of a copy of the file (and of its -wal, if any, as SQLite would see it). */
export function integrityCheck(path: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'casa-check-'));
  try {
    const p = join(dir, 'x.db');
    copyFileSync(path, p);
    if (existsSync(`${path}-wal`)) copyFileSync(`${path}-wal`, `${p}-wal`);
    const db = new Database(p, { readonly: true });
    try {
      return (db.pragma('integrity_check') as { integrity_check: string }[]).map((r) => r.integrity_check).join('; ');
    } finally {
      db.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Temp files a restore of `dbPath` would leave beside it. */
export function restoreTemps(dbPath: string): string[] {
  return readdirSync(dirname(dbPath)).filter((n) => n.startsWith(`.${basename(dbPath)}.casa-restore-`));
}

export function backupsOf(dbPath: string): string[] {
  return readdirSync(dirname(dbPath))
    .filter((n) => n.startsWith(`${basename(dbPath)}.casa-backup-`))
    .map((n) => join(dirname(dbPath), n));
}
