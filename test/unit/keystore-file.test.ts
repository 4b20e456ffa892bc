// The file keystore (src/keystore/file.ts): round trip, 0600 from the start,
// atomic writes, refusal of a group/other-readable file, an unwritable
// CASA_HOME, and a corrupt file — each a FailureError with a hint, never
// carrying a stored value.

import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EXIT, FailureError, UsageError } from '../../src/errors.js';
import { openKeystore, parseKeystoreKind } from '../../src/keystore/index.js';

const SECRET = 'abandon ability able about above absent absorb abstract absurd abuse access accident';
const isRoot = process.getuid?.() === 0;

let dir: string;
let home: string;
let file: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'casa-keystore-'));
  home = path.join(dir, 'home');
  file = path.join(home, 'keystore.json');
});

afterEach(async () => {
  await chmod(dir, 0o700).catch(() => undefined);
  await chmod(home, 0o700).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

function fileStore() {
  return openKeystore('file', { home, namespace: 'ns1' });
}

async function failure(p: Promise<unknown>): Promise<FailureError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(FailureError);
  const f = err as FailureError;
  expect(f.exitCode).toBe(EXIT.failure);
  expect(f.message).not.toContain(SECRET);
  for (const hint of f.hints) expect(hint).not.toContain(SECRET);
  return f;
}

describe('file keystore', () => {
  it('round-trips values through the file', async () => {
    const ks = fileStore();
    expect(ks.kind).toBe('file');
    expect(await ks.get('phrase')).toBeNull();
    await ks.set('phrase', SECRET);
    await ks.set('device-key', 'k1');
    await ks.set('device-key', 'k2');
    expect(await ks.get('phrase')).toBe(SECRET);

    const again = fileStore();
    expect(await again.get('device-key')).toBe('k2');
    await again.delete('phrase');
    await again.delete('phrase'); // absent: no error
    expect(await again.get('phrase')).toBeNull();

    expect(JSON.parse(await readFile(file, 'utf8'))).toEqual({ version: 1, entries: { 'device-key': 'k2' } });
  });

  it('reads nothing and writes nothing while empty', async () => {
    const ks = fileStore();
    await ks.delete('phrase');
    expect(await ks.get('phrase')).toBeNull();
    await expect(stat(home)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('creates the file 0600 (and CASA_HOME 0700) even with umask 0', async () => {
    const old = process.umask(0);
    try {
      await fileStore().set('phrase', SECRET);
    } finally {
      process.umask(old);
    }
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await stat(home)).mode & 0o777).toBe(0o700);
  });

  it('writes atomically: no temp files left, concurrent writes all land', async () => {
    const ks = fileStore();
    await Promise.all(Array.from({ length: 20 }, (_, i) => ks.set(`k${i}`, `v${i}`)));
    await ks.delete('k0');
    expect(await readdir(home)).toEqual(['keystore.json']);
    const fresh = fileStore();
    expect(await fresh.get('k0')).toBeNull();
    for (let i = 1; i < 20; i++) expect(await fresh.get(`k${i}`)).toBe(`v${i}`);
  });

  it.each([0o644, 0o640, 0o604, 0o660])('refuses a keystore file with mode %o', async (mode) => {
    await fileStore().set('phrase', SECRET);
    await chmod(file, mode);
    const err = await failure(fileStore().get('phrase'));
    expect(err.message).toBe(
      `keystore file ${file} is accessible by other users (mode 0${mode.toString(8)}); refusing to use it`,
    );
    expect(err.hints).toEqual([`chmod 600 ${file}`]);
    // writing would mean reading it first: refused too
    await failure(fileStore().set('other', 'x'));
  });

  it('does not follow a symbolic link', async () => {
    await mkdir(home, { mode: 0o700 });
    const real = path.join(dir, 'elsewhere.json');
    await writeFile(real, JSON.stringify({ version: 1, entries: { phrase: SECRET } }), { mode: 0o600 });
    await symlink(real, file);
    const err = await failure(fileStore().get('phrase'));
    expect(err.message).toMatch(/is a symbolic link$/);
  });

  it('fails clearly when CASA_HOME cannot be written', async () => {
    // root bypasses permission bits, so as root the home sits under a regular
    // file (ENOTDIR); otherwise a read-only (0500) directory.
    if (isRoot) {
      const blocker = path.join(dir, 'a-file');
      await writeFile(blocker, 'not a directory');
      home = path.join(blocker, 'sub');
    } else {
      await mkdir(home, { mode: 0o500 });
    }
    const err = await failure(fileStore().set('phrase', SECRET));
    expect(err.message).toBe(
      `cannot write the keystore in ${home} (${isRoot ? 'a path component is not a directory' : 'permission denied'})`,
    );
    expect(err.hints).toEqual([`make ${home} a directory you can write to, or point CASA_HOME (--home) at one`]);
    await failure(fileStore().probe());
  });

  it('probes a writable CASA_HOME without leaving anything behind', async () => {
    await fileStore().probe();
    expect(await readdir(home)).toEqual([]);
  });

  it.each([
    ['{"version": 1, "entries": {', 'not valid JSON'],
    ['[]', 'not a JSON object'],
    ['{"entries": {}}', 'missing or unknown "version"'],
    ['{"version": 1, "entries": []}', '"entries" is not an object'],
    ['{"version": 1, "entries": {"phrase": 42}}', 'entry "phrase" is not a string'],
  ])('calls %j corrupt (%s)', async (content, what) => {
    await mkdir(home, { mode: 0o700 });
    await writeFile(file, content, { mode: 0o600 });
    const err = await failure(fileStore().get('phrase'));
    expect(err.message).toBe(`keystore file ${file} is corrupt (${what})`);
    expect(err.hints).toHaveLength(1);
  });

  it('names a newer format version instead of calling it corrupt', async () => {
    await mkdir(home, { mode: 0o700 });
    await writeFile(file, JSON.stringify({ version: 2, entries: { phrase: SECRET } }), { mode: 0o600 });
    const err = await failure(fileStore().get('phrase'));
    expect(err.message).toBe(`keystore file ${file} has format version 2, newer than this casa knows`);
    expect(err.hints).toEqual(['upgrade casa']);
  });

  it('rejects entry names casa would never use', async () => {
    const ks = fileStore();
    await expect(ks.set('', 'x')).rejects.toBeInstanceOf(RangeError);
    await expect(ks.get('../x')).rejects.toBeInstanceOf(RangeError);
  });
});

describe('parseKeystoreKind', () => {
  it('accepts keychain and file', () => {
    expect(parseKeystoreKind('keychain')).toBe('keychain');
    expect(parseKeystoreKind('file')).toBe('file');
  });

  it.each(['File', '', 'plaintext'])('rejects %j as a usage error quoting it', (value) => {
    let err: unknown;
    try {
      parseKeystoreKind(value);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect((err as UsageError).exitCode).toBe(EXIT.usage);
    expect((err as UsageError).message).toBe(`unknown keystore ${JSON.stringify(value)}`);
    expect((err as UsageError).hints).toEqual(['use --keystore keychain (the default) or --keystore file']);
  });
});
