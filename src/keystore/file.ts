/**
 * The file keystore: `<CASA_HOME>/keystore.json`, for machines with no
 * reachable OS keychain (headless cron, CI), used only when the user asks for
 * it (docs/ARCHITECTURE.md §5).
 *
 * Format: `{ "version": 1, "entries": { "<name>": "<value>" } }`.
 *
 * Invariants:
 * - The file is never readable by group or other: every write creates a new
 *   file with mode 0600 from the start (open with the mode, never chmod
 *   afterwards), and a file whose mode allows group/other access is refused
 *   rather than read (like ssh with a private key).
 * - Writes are atomic: temp file (0600, same directory) → fsync → rename →
 *   fsync the directory. A crash leaves the old file or the new one, never a
 *   torn one.
 * - Operations on one FileKeystore run one at a time, so concurrent calls in
 *   one process do not lose each other's writes. (Two processes are kept
 *   apart by the CLI's lock, not here.)
 * - No value appears in any message.
 */

import { constants, promises as fs } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { FailureError } from '../errors.js';
import { assertEntryName, type Keystore } from './index.js';

export const KEYSTORE_FILE = 'keystore.json';
const FORMAT_VERSION = 1;
const isWindows = process.platform === 'win32';

type Entries = Map<string, string>;

export class FileKeystore implements Keystore {
  readonly kind = 'file' as const;
  readonly #home: string;
  readonly #file: string;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(home: string) {
    if (typeof home !== 'string' || home === '') throw new TypeError('home must be a non-empty string');
    this.#home = path.resolve(home);
    this.#file = path.join(this.#home, KEYSTORE_FILE);
  }

  async get(name: string): Promise<string | null> {
    assertEntryName(name);
    return this.#serial(async () => (await this.#read()).get(name) ?? null);
  }

  async set(name: string, value: string): Promise<void> {
    assertEntryName(name);
    if (typeof value !== 'string') throw new TypeError('value must be a string');
    return this.#serial(async () => {
      const entries = await this.#read();
      entries.set(name, value);
      await this.#write(entries);
    });
  }

  async delete(name: string): Promise<void> {
    assertEntryName(name);
    return this.#serial(async () => {
      const entries = await this.#read();
      if (entries.delete(name)) await this.#write(entries);
    });
  }

  /** Reads the file if there is one (mode, format) and proves CASA_HOME takes a new 0600 file. */
  async probe(): Promise<void> {
    return this.#serial(async () => {
      await this.#read();
      await this.#ensureHome();
      const tmp = this.#tempPath();
      try {
        const fh = await fs.open(tmp, 'wx', 0o600);
        await fh.close();
      } catch (err) {
        throw this.#unwritable(err);
      } finally {
        await fs.rm(tmp, { force: true }).catch(() => undefined);
      }
    });
  }

  #serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(op, op);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #read(): Promise<Entries> {
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(this.#file, constants.O_RDONLY | (isWindows ? 0 : constants.O_NOFOLLOW));
    } catch (err) {
      // No file, or no directory to hold one: either way there is nothing stored.
      if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return new Map();
      if (errnoCode(err) === 'ELOOP') {
        throw new FailureError(`keystore file ${this.#file} is a symbolic link`, {
          hints: [`replace it with the file itself (casa does not follow links for its secrets)`],
        });
      }
      throw new FailureError(`cannot read keystore file ${this.#file} (${errnoReason(err)})`, {
        cause: err,
        hints: [`make ${this.#file} readable by you`],
      });
    }
    let text: string;
    try {
      const st = await fh.stat();
      if (!st.isFile()) {
        throw new FailureError(`keystore file ${this.#file} is not a regular file`);
      }
      // Windows reports 0o666 for every writable file; ACLs, not modes, guard it there.
      if (!isWindows && (st.mode & 0o077) !== 0) {
        const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
        throw new FailureError(
          `keystore file ${this.#file} is accessible by other users (mode ${mode}); refusing to use it`,
          { hints: [`chmod 600 ${this.#file}`] },
        );
      }
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
    return this.#parse(text);
  }

  #parse(text: string): Entries {
    const corrupt = (what: string): FailureError =>
      new FailureError(`keystore file ${this.#file} is corrupt (${what})`, {
        hints: [
          `restore it from a backup, or move it aside and join again with the recovery phrase (casa pair --join)`,
        ],
      });
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      throw corrupt('not valid JSON');
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw corrupt('not a JSON object');
    const { version, entries } = doc as { version?: unknown; entries?: unknown };
    if (version !== FORMAT_VERSION) {
      if (typeof version === 'number' && Number.isInteger(version) && version > FORMAT_VERSION) {
        throw new FailureError(`keystore file ${this.#file} has format version ${version}, newer than this casa knows`, {
          hints: ['upgrade casa'],
        });
      }
      throw corrupt('missing or unknown "version"');
    }
    if (typeof entries !== 'object' || entries === null || Array.isArray(entries)) {
      throw corrupt('"entries" is not an object');
    }
    const out: Entries = new Map();
    for (const [name, value] of Object.entries(entries)) {
      if (typeof value !== 'string') throw corrupt(`entry ${JSON.stringify(name)} is not a string`);
      out.set(name, value);
    }
    return out;
  }

  async #write(entries: Entries): Promise<void> {
    await this.#ensureHome();
    const doc = { version: FORMAT_VERSION, entries: Object.fromEntries(entries) };
    const data = `${JSON.stringify(doc, null, 2)}\n`;
    const tmp = this.#tempPath();
    try {
      // 'wx': a fresh file, created 0600 (the umask can only narrow it).
      const fh = await fs.open(tmp, 'wx', 0o600);
      try {
        await fh.writeFile(data, 'utf8');
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.rename(tmp, this.#file);
    } catch (err) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      throw this.#unwritable(err);
    }
    await this.#syncHome();
  }

  async #ensureHome(): Promise<void> {
    try {
      await fs.mkdir(this.#home, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw this.#unwritable(err);
    }
  }

  /** Makes the rename durable. Windows cannot open a directory for fsync; NTFS journals the rename. */
  async #syncHome(): Promise<void> {
    if (isWindows) return;
    const dir = await fs.open(this.#home, constants.O_RDONLY);
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  #tempPath(): string {
    return path.join(this.#home, `.${KEYSTORE_FILE}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  }

  #unwritable(err: unknown): FailureError {
    return new FailureError(`cannot write the keystore in ${this.#home} (${errnoReason(err)})`, {
      cause: err,
      hints: [`make ${this.#home} a directory you can write to, or point CASA_HOME (--home) at one`],
    });
  }
}

function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string'
    ? err.code
    : undefined;
}

/** A short, value-free reason for an fs error: the errno name and its meaning. */
function errnoReason(err: unknown): string {
  const reasons: Record<string, string> = {
    EACCES: 'permission denied',
    EPERM: 'operation not permitted',
    EROFS: 'read-only file system',
    ENOTDIR: 'a path component is not a directory',
    ENOSPC: 'no space left on the device',
    EDQUOT: 'disk quota exceeded',
    EISDIR: 'is a directory',
    EEXIST: 'a file of that name already exists',
  };
  const code = errnoCode(err);
  if (code === undefined) return err instanceof Error ? err.message : 'unknown error';
  return reasons[code] ?? code;
}
