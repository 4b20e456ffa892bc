/**
 * Restore's helpers around writing the new file: the page-cache warming
 * (src/snapshots/page-cache.ts) never changes what the writes put in the file,
 * whatever they race with, stops cleanly and survives a bad descriptor; a
 * full disk is a plain failure with what it takes (restore.ts writeFailure);
 * and the main thread's young generation stays small after a worker thread
 * starts (src/gc.ts holdYoungGeneration, re-applied by the worker pool).
 */
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { warmPageCache, worthWarming } from '../../src/snapshots/page-cache.js';
import { writeFailure } from '../../src/snapshots/restore.js';
import { CasaError, FailureError } from '../../src/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'casa-page-cache-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const tick = () => new Promise((r) => setImmediate(r));

describe('warmPageCache', () => {
  it('the file holds exactly what was written, whatever the warming raced with', async () => {
    const SIZE = 3 * 1024 * 1024 + 4096;
    const write = fc.record({ position: fc.nat(SIZE - 1), length: fc.integer({ min: 1, max: 200_000 }), fill: fc.integer({ min: 1, max: 255 }), yieldAfter: fc.boolean() });
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(write, { maxLength: 20 }), async (writes) => {
        const path = join(dir, `w-${run++}`);
        const fd = openSync(path, 'w+');
        const model = new Uint8Array(SIZE);
        try {
          ftruncateSync(fd, SIZE);
          const warmer = warmPageCache(fd, SIZE);
          for (const w of writes) {
            const length = Math.min(w.length, SIZE - w.position);
            const data = new Uint8Array(length).fill(w.fill);
            writeSync(fd, data, 0, length, w.position);
            model.set(data, w.position);
            if (w.yieldAfter) await tick(); // lets a read complete and the next one start
          }
          await warmer.stop();
          expect(warmer.warmed).toBeLessThanOrEqual(SIZE);
        } finally {
          closeSync(fd);
        }
        expect(readFileSync(path).equals(Buffer.from(model))).toBe(true);
        rmSync(path);
      }),
      { numRuns: 30 },
    );
  });

  it('reads the whole file when left alone, and nothing after stop()', async () => {
    const SIZE = 70 * 1024 * 1024; // more than two reads
    const path = join(dir, 'whole');
    const fd = openSync(path, 'w+');
    try {
      ftruncateSync(fd, SIZE);
      const warmer = warmPageCache(fd, SIZE);
      for (let i = 0; i < 10_000 && warmer.warmed < SIZE; i++) await new Promise((r) => setTimeout(r, 5));
      expect(warmer.warmed).toBe(SIZE);
      await warmer.stop();
      const stopped = warmPageCache(fd, SIZE);
      await stopped.stop();
      const at = stopped.warmed;
      await new Promise((r) => setTimeout(r, 50));
      expect(stopped.warmed).toBe(at);
      expect(at).toBeLessThan(SIZE); // at most the read that was in flight
    } finally {
      closeSync(fd);
      rmSync(path);
    }
  });

  it('runs on local disk file systems only (not tmpfs, not a directory that is not there)', () => {
    const fsType = (p: string) => Number(statfsSync(p).type);
    if (existsSync('/dev/shm')) expect(worthWarming('/dev/shm')).toBe(false); // tmpfs
    expect(worthWarming(join(dir, 'no such dir'))).toBe(false);
    // The test directory: ext4/XFS/Btrfs/F2FS here means yes, anything else no.
    expect(worthWarming(dir)).toBe([0xef53, 0x58465342, 0x9123683e, 0xf2f52010].includes(fsType(dir)));
  });

  it('a descriptor it cannot read only stops the warming (no error escapes)', async () => {
    const path = join(dir, 'wo');
    const fd = openSync(path, 'w'); // write-only: reads fail with EBADF
    try {
      ftruncateSync(fd, 1 << 20);
      const warmer = warmPageCache(fd, 1 << 20);
      await warmer.stop();
      expect(warmer.warmed).toBe(0);
    } finally {
      closeSync(fd);
    }
  });
});

describe('writeFailure', () => {
  it('a full disk during a restore is a plain failure with what it takes; other errors pass through', () => {
    const full = writeFailure(Object.assign(new Error('no space'), { code: 'ENOSPC' }), '/data/.casa.db.casa-restore-x', 3 * 1024 * 1024 + 1);
    expect(full).toBeInstanceOf(FailureError);
    expect((full as CasaError).message).toContain('/data');
    expect((full as CasaError).hints.join(' ')).toContain('4 MiB');
    const other = Object.assign(new Error('EIO'), { code: 'EIO' });
    expect(writeFailure(other, '/x', 1)).toBe(other);
  });
});

describe('the main thread young generation', () => {
  it('stays at its first size after a worker thread starts (a worker start resets V8 flags; the pool sets them again)', () => {
    // In a process of its own, as bin/casa runs: the flag first, then a worker, then garbage.
    const root = fileURLToPath(new URL('../..', import.meta.url));
    const script = `
      import { setFlagsFromString, getHeapSpaceStatistics } from 'node:v8';
      setFlagsFromString('--semi-space-growth-factor=1');
      const { WorkerPool } = await import(${JSON.stringify(join(root, 'dist', 'snapshots', 'pool.js'))});
      const { vaultKeysFromRoot } = await import(${JSON.stringify(join(root, 'dist', 'crypto', 'kdf.js'))});
      const pool = new WorkerPool(vaultKeysFromRoot(new Uint8Array(32).fill(7)), 1);
      const { openSync, writeFileSync } = await import('node:fs');
      const file = ${JSON.stringify(join(dir, 'young.bin'))};
      writeFileSync(file, new Uint8Array(8192));
      await pool.run({ kind: 'hash', fd: openSync(file, 'r'), pageSize: 4096, firstPage: 0, pageCount: 2 });
      await new Promise((r) => setTimeout(r, 20));
      const keep = [];
      for (let i = 0; i < 3e6; i++) { const o = { a: i, b: [i] }; if (i % 3 === 0) keep.push(o); if (keep.length > 50000) keep.length = 0; }
      await pool.close();
      process.stdout.write(String(getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size));
    `;
    // A file, not --input-type=module -e: workers inherit the process's execArgv.
    const file = join(dir, 'young.mjs');
    writeFileSync(file, script);
    const r = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    // V8's default would have grown it to 2 × 16 MiB by now.
    expect(Number(r.stdout)).toBeLessThanOrEqual(4 * 1024 * 1024);
  });
});
