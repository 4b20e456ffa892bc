/**
 * One casa at a time per database: a lock file in CASA_HOME/locks, created
 * with O_EXCL and holding the owner's pid and host. A second casa on the same
 * database gets BusyError (exit 8); a lock left by a process that no longer
 * runs on this host is stale and taken over.
 */
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync, constants } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { BusyError, FailureError } from './errors.js';

export interface Lock {
  path: string;
  release(): void;
}

interface Owner {
  pid: number;
  host: string;
  command: string;
  since: number;
}

export function lockPath(home: string, dbPath: string): string {
  const key = createHash('sha256').update(dbPath).digest('hex').slice(0, 16);
  return join(home, 'locks', `${key}.lock`);
}

/** Whether a process with this pid runs on this host (EPERM: it does, as another user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function acquireLock(home: string, dbPath: string, command: string): Lock {
  const path = lockPath(home, dbPath);
  try {
    mkdirSync(join(home, 'locks'), { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new FailureError(`cannot create ${join(home, 'locks')} (${(err as NodeJS.ErrnoException).code})`, {
      hints: ['point --home (or CASA_HOME) at a writable directory'],
    });
  }
  const me: Owner = { pid: process.pid, host: hostname(), command, since: Date.now() };
  for (let attempt = 0; attempt < 3; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new FailureError(`cannot create the lock ${path} (${(err as NodeJS.ErrnoException).code})`);
      }
      const owner = readOwner(path);
      if (owner && owner.host === me.host && !processAlive(owner.pid)) {
        rmSync(path, { force: true }); // stale: its process is gone
        continue;
      }
      if (owner === null) {
        // Being written right now, or garbage left by a crash mid-write: wait a moment, then treat as stale.
        if (attempt === 0) {
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200); // lock files are written in one call
          continue;
        }
        rmSync(path, { force: true });
        continue;
      }
      // `<db>#sync` is the changeset-sync lock of <db>: name the database.
      throw new BusyError(`another casa (pid ${owner.pid}, \`casa ${owner.command}\`) is using ${dbPath.replace(/#sync$/, '')}`, {
        hints: ['wait for it to finish and run the command again', `if no casa is running, remove ${path}`],
      });
    }
    try {
      writeSync(fd, JSON.stringify(me));
    } finally {
      closeSync(fd);
    }
    let released = false;
    return {
      path,
      release() {
        if (released) return;
        released = true;
        const owner = readOwner(path);
        if (owner && owner.pid === me.pid && owner.since === me.since) rmSync(path, { force: true });
      },
    };
  }
  throw new BusyError(`could not take the lock on ${dbPath.replace(/#sync$/, '')}`, { hints: ['run the command again'] });
}

function readOwner(path: string): Owner | null {
  try {
    const o = JSON.parse(readFileSync(path, 'utf8')) as Owner;
    return typeof o.pid === 'number' && typeof o.host === 'string' ? o : null;
  } catch {
    return null;
  }
}
