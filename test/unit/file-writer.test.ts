/**
 * The restore's writer thread (src/sync/file-writer.ts): slices land where
 * they are sent, in the order sent (a later slice over an earlier one wins),
 * windows cycle back whatever the order the main thread fills them in; a
 * failing write (ENOSPC on /dev/full) fails flush and every later acquire,
 * and close() returns only once the thread has handed every window back.
 */
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { FileWriter, WriteError, type Slice } from '../../src/sync/file-writer.js';
import { writeFailure } from '../../src/sync/restore.js';
import { CasaError, FailureError } from '../../src/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'casa-writer-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('FileWriter', () => {
  it('writes every slice at its position, in the order sent, through a few cycling windows', async () => {
    const FILE = 64 * 1024;
    const WINDOW = 4096;
    const slice = fc.record({ offset: fc.nat(WINDOW - 1), length: fc.integer({ min: 1, max: WINDOW }), position: fc.nat(FILE - 1), fill: fc.nat(255) });
    const window = fc.array(slice, { maxLength: 5 });
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(window, { minLength: 1, maxLength: 12 }), fc.integer({ min: 1, max: 3 }), async (windows, count) => {
        const path = join(dir, `prop-${run++}`);
        const fd = openSync(path, 'w+');
        const model = new Uint8Array(FILE);
        const writer = new FileWriter(WINDOW, count);
        writer.attach(fd);
        try {
          for (const spec of windows) {
            const buf = await writer.acquire();
            const slices: Slice[] = [];
            for (const s of spec) {
              const length = Math.min(s.length, WINDOW - s.offset, FILE - s.position);
              buf.fill(s.fill, s.offset, s.offset + length);
              slices.push([s.offset, length, s.position]);
            }
            // What the file must hold: the slices applied in order (a later one over an earlier one).
            for (const [offset, length, position] of slices) model.set(buf.subarray(offset, offset + length), position);
            writer.submit(buf, slices);
          }
          await writer.flush();
        } finally {
          await writer.close();
          closeSync(fd);
        }
        const out = readFileSync(path);
        const expected = Buffer.from(model.subarray(0, out.length));
        expect(out.equals(expected)).toBe(true);
        expect(model.subarray(out.length).every((b) => b === 0)).toBe(true);
      }),
      { numRuns: 40 },
    );
  });

  it('refuses a slice outside its window', async () => {
    const fd = openSync(join(dir, 'range'), 'w+');
    const writer = new FileWriter(1024, 1);
    try {
      const early = await writer.acquire();
      expect(() => writer.submit(early, [[0, 1, 0]])).toThrow(/no file/);
      writer.attach(fd);
      expect(() => writer.attach(fd)).toThrow(/already/);
      writer.submit(early, []);
      const buf = await writer.acquire();
      expect(() => writer.submit(buf, [[1000, 100, 0]])).toThrow(RangeError);
      expect(() => writer.submit(buf, [[0, 0, 0]])).toThrow(RangeError);
      writer.submit(buf, []); // nothing to write: the window is free again at once
      expect(await writer.acquire()).toBe(buf);
    } finally {
      await writer.close();
      closeSync(fd);
    }
  });

  it('a failing write (a full disk) fails flush and every acquire after it, waiting ones too; close still returns', async () => {
    const fd = openSync('/dev/full', 'r+');
    const writer = new FileWriter(4096, 2);
    writer.attach(fd);
    try {
      const a = await writer.acquire();
      const b = await writer.acquire();
      const waiting = writer.acquire().catch((e: unknown) => e); // no window free: waits, then learns of the failure
      writer.submit(a, [[0, 4096, 0]]);
      writer.submit(b, [[0, 4096, 4096]]);
      const err = await writer.flush().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(WriteError);
      expect((err as WriteError).code).toBe('ENOSPC');
      expect(await waiting).toBe(err);
      await expect(writer.acquire()).rejects.toBe(err);
      expect(() => writer.submit(new Uint8Array(4096), [[0, 1, 0]])).toThrow(WriteError);
    } finally {
      await writer.close();
      closeSync(fd);
    }
  });

  it('a full disk during a restore is a plain failure with what it needs; other errors pass through', () => {
    const full = writeFailure(new WriteError('no space', 'ENOSPC'), '/data/.casa.db.casa-restore-x', 3 * 1024 * 1024 + 1);
    expect(full).toBeInstanceOf(FailureError);
    expect((full as CasaError).message).toContain('/data');
    expect((full as CasaError).hints.join(' ')).toContain('4 MiB');
    const other = new Error('EIO');
    expect(writeFailure(other, '/x', 1)).toBe(other);
  });
});

describe('the main thread young generation', () => {
  it('stays at its first size after a writer thread starts (a worker start resets V8 flags; holdYoungGeneration sets them again)', () => {
    // In a process of its own, as bin/casa runs: the flag first, then a writer thread, then garbage.
    const root = fileURLToPath(new URL('../..', import.meta.url));
    const script = `
      import { setFlagsFromString, getHeapSpaceStatistics } from 'node:v8';
      setFlagsFromString('--semi-space-growth-factor=1');
      const { openSync } = await import('node:fs');
      const { FileWriter } = await import(${JSON.stringify(join(root, 'dist', 'sync', 'file-writer.js'))});
      const w = new FileWriter(4096, 1);
      w.attach(openSync(${JSON.stringify(join(dir, 'young'))}, 'w+'));
      await new Promise((r) => w.worker.once('online', () => setImmediate(r)));
      const keep = [];
      for (let i = 0; i < 3e6; i++) { const o = { a: i, b: [i] }; if (i % 3 === 0) keep.push(o); if (keep.length > 50000) keep.length = 0; }
      await w.close();
      process.stdout.write(String(getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    // V8's default would have grown it to 2 × 16 MiB by now.
    expect(Number(r.stdout)).toBeLessThanOrEqual(4 * 1024 * 1024);
  });
});
