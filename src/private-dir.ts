/**
 * casa's working directories (CASA_HOME, CASA_TMPDIR) are private
 * (docs/SECURITY.md §7): they hold the page index, the sync state, working
 * copies of the database (plaintext), and, with the file keystore, the
 * phrase. A directory casa creates is 0700; an existing one must be the
 * user's own and writable by nobody else — a directory another user owns or
 * can write to could swap a working copy under casa, or read it, so it is
 * refused (exit 1, `unsafe_directory`); one of the user's own that others
 * can only read or enter is tightened to 0700.
 *
 * Where permission bits mean nothing (Windows: no process.getuid) nothing
 * is checked. A leaf: it imports only src/failures.ts.
 */
import { chmodSync, mkdirSync, statSync, type Stats } from 'node:fs';
import { failure } from './failures.js';

/**
 * Checks `dir` if it exists (see above): refuses it, or tightens it to 0700.
 * `what` names it for the message ("CASA_HOME", "CASA_TMPDIR", "the working
 * directory").
 */
export function guardPrivateDir(dir: string, what: string): void {
  if (typeof process.getuid !== 'function') return;
  let st: Stats;
  try {
    // stat, not lstat: a link is judged by what it leads to (a link to a directory of the user's own is fine).
    st = statSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    throw unsafe(dir, what, `cannot be read (${code ?? (err as Error).message})`);
  }
  if (!st.isDirectory()) throw unsafe(dir, what, 'is not a directory');
  const uid = process.getuid();
  if (st.uid !== uid) throw unsafe(dir, what, `belongs to another user (uid ${st.uid})`);
  if ((st.mode & 0o022) !== 0) {
    throw unsafe(dir, what, `can be written by ${(st.mode & 0o002) !== 0 ? 'every user' : 'its group'} (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')})`);
  }
  if ((st.mode & 0o077) !== 0) {
    try {
      chmodSync(dir, 0o700);
    } catch (err) {
      throw unsafe(dir, what, `cannot be made private (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
  }
}

/** Creates `dir` (and missing parents) 0700 if it does not exist, then guardPrivateDir. Returns `dir`. */
export function ensurePrivateDir(dir: string, what: string): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  guardPrivateDir(dir, what);
  return dir;
}

function unsafe(dir: string, what: string, why: string) {
  return failure('unsafe_directory', `${what} ${dir} ${why}`, {
    hints: [
      `casa keeps private files there: use a directory of your own that only you can write to (chmod 700 ${dir}), or point ${what === 'CASA_HOME' ? '--home (or CASA_HOME)' : 'CASA_TMPDIR'} elsewhere`,
    ],
  });
}
