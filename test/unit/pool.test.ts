/**
 * The worker pool: jobs run on worker threads and, with `mainLane`, on the
 * main thread too; a failure keeps its class on either lane (an integrity
 * failure in a worker is still an integrity failure), and results are the
 * same wherever a job ran.
 */
import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { vaultKeysFromRoot } from '../../src/crypto/kdf.js';
import { AuthenticationError } from '../../src/crypto/objects.js';
import { sealPack } from '../../src/snapshots/manifest.js';
import { hashPages } from '../../src/snapshots/page-hash.js';
import { WorkerPool } from '../../src/snapshots/pool.js';

const keys = vaultKeysFromRoot(new Uint8Array(32).fill(3));

describe('WorkerPool', () => {
  for (const mainLane of [false, true]) {
    it(`runs hash, seal and open jobs${mainLane ? ' with the main thread as a lane' : ''}`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'casa-pool-'));
      const pool = new WorkerPool(keys, 1, { mainLane });
      try {
        expect(pool.size).toBe(mainLane ? 2 : 1);
        const data = randomBytes(64 * 4096);
        const file = join(dir, 'db');
        writeFileSync(file, data);
        const fd = openSync(file, 'r');
        const hashes = await Promise.all(
          [0, 16, 32, 48].map((first) => pool.run({ kind: 'hash', fd, pageSize: 4096, firstPage: first, pageCount: 16 })),
        );
        expect(Buffer.concat(hashes.map((h) => h.hashes))).toEqual(Buffer.from(hashPages(data, 4096)));
        const pages = Uint32Array.from({ length: 64 }, (_, i) => i);
        const sealed = await Promise.all([0, 1, 2].map(() => pool.run({ kind: 'seal', fd, pageSize: 4096, pages, salt: randomBytes(32) })));
        const ids = new Set(sealed.map((s) => s.id));
        expect(ids).toEqual(new Set([sealPack(keys, data, hashPages(data, 4096), randomBytes(32), 4096).id]));
        expect(Buffer.from(sealed[0]!.hashes)).toEqual(Buffer.from(hashPages(data, 4096)));
        closeSync(fd);
        const opened = await pool.run({ kind: 'open', id: sealed[0]!.id, object: sealed[1]!.object, bytes: data.length, pageSize: 4096, withHashes: false });
        expect(Buffer.from(opened.plaintext)).toEqual(data);
        const bad = Uint8Array.from(sealed[2]!.object);
        bad[bad.length - 1]! ^= 1;
        const failures = await Promise.all(
          [0, 1, 2].map(() =>
            pool.run({ kind: 'open', id: sealed[0]!.id, object: Uint8Array.from(bad), bytes: data.length, pageSize: 4096, withHashes: false }).catch((e: unknown) => e),
          ),
        );
        for (const f of failures) expect(f).toBeInstanceOf(AuthenticationError);
      } finally {
        await pool.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
