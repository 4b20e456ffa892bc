/**
 * The restore machinery (src/snapshots/restore.ts) against an in-process fake of
 * the relay's snapshot API, with real SQLite files and the real writer thread:
 * assembly from deduplicated, out-of-order packs; every integrity failure
 * leaves no temp; the install step keeps the old file (its -wal folded in)
 * as the backup and leaves no sidecar beside the new one.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPages, pagesDigest } from '../../src/snapshots/page-hash.js';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { vaultKeysFromRoot, type VaultKeys } from '../../src/crypto/kdf.js';
import { sealManifest, sealPack, type Manifest } from '../../src/snapshots/manifest.js';
import {
  checkRestoredDatabase,
  installDatabase,
  pruneBackups,
  removeStaleTemps,
  restoreToTemp,
  tempPathBeside,
} from '../../src/snapshots/restore.js';
import type { SnapshotApi } from '../../src/relay/snapshots.js';
import { CasaError, IntegrityError } from '../../src/errors.js';

const keys: VaultKeys = vaultKeysFromRoot(new Uint8Array(32).fill(7));
const otherKeys: VaultKeys = vaultKeysFromRoot(new Uint8Array(32).fill(9));
const salt = () => new Uint8Array(randomBytes(32));
const random = (n: number) => new Uint8Array(randomBytes(n));
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'casa-restore-unit-'));
});
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
});

function makeDb(path: string, rows: number, tag = 'a'): Uint8Array {
  const db = new Database(path);
  db.pragma('journal_mode = DELETE');
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
  const ins = db.prepare('INSERT INTO t (v) VALUES (?)');
  db.transaction(() => {
    for (let i = 0; i < rows; i++) ins.run(`${tag}-${i}-${'x'.repeat(200)}`);
  })();
  db.close();
  return new Uint8Array(readFileSync(path));
}

/** A relay in memory: blobs by id, with the manifest sealed for (id, seq). */
function fakeApi(blobs: Map<string, Uint8Array>): SnapshotApi {
  const get = async (k: string) => {
    const b = blobs.get(k);
    if (!b) throw new IntegrityError(`the relay has lost ${k}`);
    return new Uint8Array(b);
  };
  return { getManifest: (id: string) => get(`m:${id}`), getPack: (id: string) => get(`p:${id}`) } as unknown as SnapshotApi;
}

/**
 * Seals `file` as a snapshot in packs of `perPack` pages, in reverse page
 * order (readers must accept any order), plus one unused page per pack (a
 * deduplicated pack holds pages other snapshots need).
 */
function snapshotOf(file: Uint8Array, perPack: number, seq = 1, sealKeys = keys) {
  const pageSize = 4096;
  const pageCount = file.length / pageSize;
  const blobs = new Map<string, Uint8Array>();
  const packs: Manifest['packs'] = [];
  const placed: [number, number, number][] = []; // page, pack index, offset
  for (let end = pageCount; end > 0; end -= perPack) {
    const start = Math.max(0, end - perPack);
    const junk = new Uint8Array(pageSize).fill(packs.length + 1);
    const plain = new Uint8Array((end - start + 1) * pageSize);
    plain.set(junk, 0);
    plain.set(file.subarray(start * pageSize, end * pageSize), pageSize);
    const { id, object } = sealPack(sealKeys, plain, hashPages(plain, pageSize), salt(), pageSize);
    blobs.set(`p:${id}`, object);
    for (let p = start; p < end; p++) placed.push([p, packs.length, (p - start + 1) * pageSize]);
    packs.push({ id, bytes: plain.length });
  }
  placed.sort((a, b) => a[0] - b[0]);
  const runs: number[] = [];
  for (const [page, pack, off] of placed) {
    const n = runs.length;
    if (n && runs[n - 2] === pack && runs[n - 1]! + runs[n - 3]! * pageSize === off) runs[n - 3]!++;
    else runs.push(page, 1, pack, off);
  }
  const snapshotId = randomBytes(16).toString('hex');
  const manifest: Manifest = {
    format: 1,
    vaultId: keys.vaultId,
    snapshotId,
    seq,
    parentId: seq === 1 ? null : randomBytes(16).toString('hex'),
    parentSeq: seq - 1,
    deviceId: '0123456789abcdef',
    time: 1_795_000_000_000,
    pageSize,
    pageCount,
    dbBytes: file.length,
    pagesSha256: pagesDigest(hashPages(file, pageSize)),
    schemaVersion: 1,
    userVersion: 0,
    changesetWatermark: 0,
    packs,
    runs,
  };
  blobs.set(`m:${snapshotId}`, sealManifest(sealKeys, manifest, salt()));
  return { blobs, manifest, ref: { id: snapshotId, seq } };
}

const leftovers = (d: string) => readdirSync(d).filter((n) => n.includes('.casa-restore-'));

async function restore(blobs: Map<string, Uint8Array>, ref: { id: string; seq: number }, target: string) {
  return restoreToTemp({
    api: fakeApi(blobs),
    keys,
    ref,
    tmpPath: tempPathBeside(target, random),
    thorough: true,
    signal: new AbortController().signal,
  });
}

async function expectFailure(p: Promise<unknown>, exitCode: number, message: RegExp) {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CasaError);
  expect((err as CasaError).exitCode).toBe(exitCode);
  expect((err as CasaError).message).toMatch(message);
}

describe('restoreToTemp', () => {
  it('assembles deduplicated, out-of-order packs into the exact file, with its page hashes', async () => {
    const d = mkdtempSync(join(dir, 'ok-'));
    const file = makeDb(join(d, 'src.db'), 3000);
    const { blobs, ref, manifest } = snapshotOf(file, 37);
    const target = join(d, 'target.db');
    const r = await restore(blobs, ref, target);
    expect(r.tmpPath.startsWith(join(d, '.target.db.casa-restore-'))).toBe(true);
    const out = readFileSync(r.tmpPath);
    expect(out.equals(Buffer.from(file))).toBe(true);
    expect(Buffer.from(r.hashes).equals(Buffer.from(hashPages(file, 4096)))).toBe(true);
    expect(r.manifest.snapshotId).toBe(manifest.snapshotId);
    expect(r.downloadedBytes).toBe([...blobs.values()].reduce((a, b) => a + b.length, 0));
    expect(existsSync(target)).toBe(false);
  });

  it('packs larger than the restore window: written and hashed a window at a time, runs crossing its edges', async () => {
    const d = mkdtempSync(join(dir, 'big-'));
    const file = makeDb(join(d, 'src.db'), 20_000);
    expect(file.length).toBeGreaterThan(3 * 1024 * 1024);
    // 500 pages + one unused page in front: ~2 MiB packs whose runs start one page into the pack.
    const { blobs, ref } = snapshotOf(file, 500);
    const r = await restore(blobs, ref, join(d, 'target.db'));
    expect(readFileSync(r.tmpPath).equals(Buffer.from(file))).toBe(true);
    expect(Buffer.from(r.hashes).equals(Buffer.from(hashPages(file, 4096)))).toBe(true);
  });

  const cases: [string, (s: ReturnType<typeof snapshotOf>) => { id: string; seq: number } | void, number, RegExp][] = [
    ['a flipped byte in a pack', (s) => void (s.blobs.get(`p:${s.manifest.packs[1]!.id}`)![500] ^= 1), 6, /pack .* failed its integrity check/],
    ['a truncated pack', (s) => void s.blobs.set(`p:${s.manifest.packs[0]!.id}`, s.blobs.get(`p:${s.manifest.packs[0]!.id}`)!.subarray(0, 1000)), 6, /integrity check/],
    [
      'two packs swapped',
      (s) => {
        const [a, b] = [`p:${s.manifest.packs[0]!.id}`, `p:${s.manifest.packs[1]!.id}`];
        const t = s.blobs.get(a)!;
        s.blobs.set(a, s.blobs.get(b)!);
        s.blobs.set(b, t);
      },
      6,
      /integrity check/,
    ],
    [
      'a pack shorter than the manifest says (the manifest re-sealed with the key)',
      (s) => {
        s.manifest.packs[0]!.bytes += 4096;
        s.blobs.set(`m:${s.ref.id}`, sealManifest(keys, s.manifest, salt()));
      },
      6,
      /pack .* failed its integrity check/,
    ],
    ['a lost pack', (s) => void s.blobs.delete(`p:${s.manifest.packs[2]!.id}`), 6, /lost/],
    ['a flipped manifest', (s) => void (s.blobs.get(`m:${s.ref.id}`)![60] ^= 1), 6, /manifest .* failed its integrity check/],
    ['a manifest listed under another seq', (s) => ({ id: s.ref.id, seq: 2 }), 6, /manifest .* failed its integrity check/],
  ];
  for (const [name, tamper, code, message] of cases) {
    it(`${name}: exit ${code}, no temp left`, async () => {
      const d = mkdtempSync(join(dir, 'bad-'));
      const s = snapshotOf(makeDb(join(d, 'src.db'), 800), 20);
      const ref = tamper(s) ?? s.ref;
      await expectFailure(restore(s.blobs, ref, join(d, 'target.db')), code, message);
      expect(leftovers(d)).toEqual([]);
    });
  }

  it('an object sealed under another key: exit 4 (wrong key), no temp left', async () => {
    const d = mkdtempSync(join(dir, 'key-'));
    const s = snapshotOf(makeDb(join(d, 'src.db'), 100), 20, 1, otherKeys);
    await expectFailure(restore(s.blobs, s.ref, join(d, 'target.db')), 4, /another key/);
    expect(leftovers(d)).toEqual([]);
  });

  it("a manifest whose checksum does not match the pages: exit 6", async () => {
    const d = mkdtempSync(join(dir, 'sha-'));
    const file = makeDb(join(d, 'src.db'), 300);
    const s = snapshotOf(file, 20);
    const bad = { ...s.manifest, pagesSha256: sha(Buffer.from('other')) };
    s.blobs.set(`m:${s.ref.id}`, sealManifest(keys, bad, salt()));
    await expectFailure(restore(s.blobs, s.ref, join(d, 'target.db')), 6, /checksum/);
    expect(leftovers(d)).toEqual([]);
  });

  it('a file that is not a sound database fails the SQLite check: exit 6', async () => {
    const d = mkdtempSync(join(dir, 'qc-'));
    const file = makeDb(join(d, 'src.db'), 300);
    // Damage a b-tree page but keep the manifest consistent with it: only SQLite can tell.
    file.fill(0xee, 4096 * 3 + 8, 4096 * 3 + 200);
    const s = snapshotOf(file, 20);
    await expectFailure(restore(s.blobs, s.ref, join(d, 'target.db')), 6, /integrity_check/);
    expect(leftovers(d)).toEqual([]);
  });
});

describe('installDatabase', () => {
  it('keeps the old database (its -wal folded in) as a backup and leaves no sidecar beside the new one', async () => {
    const d = mkdtempSync(join(dir, 'install-'));
    const target = join(d, 'casaconomy.db');
    makeDb(target, 50, 'old');
    // Leave committed rows in a -wal: they belong to the old database and must end up in the backup.
    const w = new Database(target);
    w.pragma('journal_mode = WAL');
    w.pragma('wal_autocheckpoint = 0');
    w.prepare('INSERT INTO t (v) VALUES (?)').run('in the wal');
    const walCopy = readFileSync(`${target}-wal`);
    expect(walCopy.length).toBeGreaterThan(0);
    // Simulate a crashed writer: its -wal stays behind.
    writeFileSync(join(d, 'wal.bak'), walCopy);
    w.close();
    writeFileSync(`${target}-wal`, walCopy);

    const file = makeDb(join(d, 'new.db'), 500, 'new');
    const s = snapshotOf(file, 30);
    const r = await restore(s.blobs, s.ref, target);
    const backup = installDatabase(r.tmpPath, target, Date.UTC(2026, 10, 23, 10, 15, 0));
    expect(backup).toBe(`${target}.casa-backup-20261123T101500Z`);
    expect(readFileSync(target).equals(Buffer.from(file))).toBe(true);
    for (const s of ['-wal', '-shm', '-journal']) expect(existsSync(`${target}${s}`)).toBe(false);
    const old = new Database(backup!, { readonly: true });
    expect(old.prepare("SELECT count(*) AS n FROM t WHERE v = 'in the wal'").get()).toEqual({ n: 1 });
    old.close();
    const now = new Database(target, { readonly: true });
    expect(now.prepare('SELECT count(*) AS n FROM t').get()).toEqual({ n: 500 });
    now.close();
    expect(leftovers(d)).toEqual([]);

    // A second replacement in the same second gets its own backup name.
    const s2 = snapshotOf(makeDb(join(d, 'new2.db'), 10, 'n2'), 30);
    const r2 = await restore(s2.blobs, s2.ref, target);
    expect(installDatabase(r2.tmpPath, target, Date.UTC(2026, 10, 23, 10, 15, 0))).toBe(`${target}.casa-backup-20261123T101500Z-2`);
  });

  it('onto no database: no backup, and a stale -wal of a deleted database is removed first', async () => {
    const d = mkdtempSync(join(dir, 'fresh-'));
    const target = join(d, 'casaconomy.db');
    writeFileSync(`${target}-wal`, randomBytes(5000));
    const file = makeDb(join(d, 'new.db'), 100);
    const s = snapshotOf(file, 30);
    const r = await restore(s.blobs, s.ref, target);
    expect(installDatabase(r.tmpPath, target, Date.now())).toBeNull();
    expect(existsSync(`${target}-wal`)).toBe(false);
    expect(readFileSync(target).equals(Buffer.from(file))).toBe(true);
  });

  it('removeStaleTemps removes only the temps of that database', () => {
    const d = mkdtempSync(join(dir, 'stale-'));
    const target = join(d, 'a.db');
    for (const n of ['.a.db.casa-restore-0011', '.a.db.casa-restore-0011-wal', '.b.db.casa-restore-22', 'a.db', 'a.db.casa-backup-1']) {
      writeFileSync(join(d, n), 'x');
    }
    expect(removeStaleTemps(target).sort()).toEqual(['.a.db.casa-restore-0011', '.a.db.casa-restore-0011-wal']);
    expect(readdirSync(d).sort()).toEqual(['.b.db.casa-restore-22', 'a.db', 'a.db.casa-backup-1']);
  });

  it('checkRestoredDatabase accepts a sound file read-only and leaves no sidecar', async () => {
    const d = mkdtempSync(join(dir, 'check-'));
    const p = join(d, 'x.db');
    const file = makeDb(p, 100);
    const db = new Database(p);
    db.pragma('journal_mode = WAL'); // the header now says WAL: a read-only open creates -wal/-shm
    db.close();
    const bytes = readFileSync(p);
    const m = { ...snapshotOf(new Uint8Array(bytes), 10).manifest };
    await checkRestoredDatabase(p, m, false);
    expect(readFileSync(p).equals(bytes)).toBe(true);
    expect(readdirSync(d)).toEqual(['x.db']);
    expect(file.length).toBe(bytes.length);
  });
});

describe('scratchDir: where the working copy goes', async () => {
  const { scratchDir } = await import('../../src/snapshots/db-copy.js');
  const { chmodSync, mkdirSync: mk, statSync } = await import('node:fs');
  it('uses CASA_TMPDIR when given, else a private tmpfs directory with room, else CASA_HOME/tmp', () => {
    const home = mkdtempSync(join(tmpdir(), 'casa-scratch-'));
    const shm = mkdtempSync(join(tmpdir(), 'casa-shm-'));
    try {
      expect(scratchDir(home, 1, '/somewhere')).toBe('/somewhere');
      if (process.platform !== 'linux') return;
      const dir = scratchDir(home, 1024, undefined, shm);
      expect(dir).toBe(join(shm, `casa-${process.getuid!()}`));
      expect(statSync(dir).mode & 0o777).toBe(0o700);
      // a database larger than the free space: the home's tmp
      expect(scratchDir(home, Number.MAX_SAFE_INTEGER / 4, undefined, shm)).toBe(join(home, 'tmp'));
      // a directory others can enter (planted, or loosened) is never used
      chmodSync(dir, 0o755);
      expect(scratchDir(home, 1024, undefined, shm)).toBe(join(home, 'tmp'));
      rmSync(dir, { recursive: true });
      mk(dir, { mode: 0o700 });
      expect(scratchDir(home, 1024, undefined, shm)).toBe(dir);
    } finally {
      rmSync(home, { recursive: true, force: true });
      rmSync(shm, { recursive: true, force: true });
    }
  });
});

describe('local hygiene of the files a restore writes (docs/SECURITY.md §7)', async () => {
  const { chmodSync, statSync, mkdirSync: mk } = await import('node:fs');
  const { openDatabaseView } = await import('../../src/snapshots/db-copy.js');

  it('pruneBackups keeps the newest three by the time in their names, then their counter, and touches nothing else', () => {
    const d = mkdtempSync(join(tmpdir(), 'casa-prune-'));
    try {
      const db = join(d, 'my.db');
      const names = [
        'my.db.casa-backup-20260101T000000Z',
        'my.db.casa-backup-20260102T000000Z',
        'my.db.casa-backup-20260102T000000Z-2',
        'my.db.casa-backup-20260102T000000Z-10',
        'my.db.casa-backup-20251231T235959Z-3',
      ];
      const others = ['my.db', 'other.db.casa-backup-20200101T000000Z', 'my.db.casa-backup-notes.txt', 'my.dbx.casa-backup-20200101T000000Z'];
      for (const n of [...names, ...others]) writeFileSync(join(d, n), n);
      const removed = pruneBackups(db).map((p) => p.slice(d.length + 1)).sort();
      expect(removed).toEqual(['my.db.casa-backup-20251231T235959Z-3', 'my.db.casa-backup-20260101T000000Z']);
      expect(readdirSync(d).sort()).toEqual(
        [...others, 'my.db.casa-backup-20260102T000000Z', 'my.db.casa-backup-20260102T000000Z-2', 'my.db.casa-backup-20260102T000000Z-10'].sort(),
      );
      expect(pruneBackups(db)).toEqual([]);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  it('installDatabase leaves the new file and the backup 0600 whatever the old file\'s mode', () => {
    const d = mkdtempSync(join(tmpdir(), 'casa-modes-'));
    try {
      const db = join(d, 'x.db');
      const old = new Database(db);
      old.exec('CREATE TABLE t (a)');
      old.close();
      chmodSync(db, 0o644);
      const tmp = tempPathBeside(db, random);
      const fresh = new Database(tmp);
      fresh.exec('CREATE TABLE u (b)');
      fresh.close();
      chmodSync(tmp, 0o600);
      const backup = installDatabase(tmp, db, Date.now())!;
      expect(statSync(db).mode & 0o777).toBe(0o600);
      expect(statSync(backup).mode & 0o777).toBe(0o600);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  it('a working copy (a database not in WAL mode) is 0600 in a directory created 0700', async () => {
    const d = mkdtempSync(join(tmpdir(), 'casa-copy-'));
    try {
      const db = join(d, 'app.db');
      const src = new Database(db);
      src.pragma('journal_mode = DELETE');
      src.exec('CREATE TABLE t (a); INSERT INTO t VALUES (1), (2)');
      src.close();
      chmodSync(db, 0o644);
      const scratch = join(d, 'scratch', 'inner');
      const view = await openDatabaseView(db, () => scratch);
      try {
        expect(view.kind).toBe('copy');
        const copies = readdirSync(scratch).filter((n) => n.endsWith('.db'));
        expect(copies).toHaveLength(1);
        expect(statSync(join(scratch, copies[0]!)).mode & 0o777).toBe(0o600);
        expect(statSync(scratch).mode & 0o777).toBe(0o700);
        expect(statSync(join(d, 'scratch')).mode & 0o777).toBe(0o700);
      } finally {
        view.close();
      }
      // A scratch directory others may write to is refused, not used.
      mk(join(d, 'open'));
      chmodSync(join(d, 'open'), 0o777);
      await expect(openDatabaseView(db, () => join(d, 'open'))).rejects.toThrow(/can be written by every user/);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
