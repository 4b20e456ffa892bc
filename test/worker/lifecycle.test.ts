// The launcher and what outlives a request: migrations (wrangler's
// d1_migrations bookkeeping, idempotent across restarts), persistence of D1
// and the JWT secret under the data directory, the cron, and the R2 helpers.
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobChecksumError, blobKey, deleteBlobs, getBlob, putBlob } from '../../worker/blobs.js';
import { PACKAGE_ROOT, applyMigrations, splitSql, stripJsonc } from '../../src/local-relay/launcher.js';
import { createBody, enrollBody, getChallenge, newDevice, newVault, post, setupVault, startTestRelay, type TestRelay } from '../helpers/relay.js';

describe('cron', () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay();
  });
  afterAll(async () => {
    await relay?.stop();
  });

  it('deletes expired challenges, keeps live ones, and is idempotent', async () => {
    const { vault, device } = await setupVault(relay.url);
    const expired = await getChallenge(relay.url, vault.vaultId, device.deviceId);
    const live = await getChallenge(relay.url, vault.vaultId, device.deviceId);
    await relay.vaults().prepare('UPDATE challenges SET expires_at = ?2 WHERE challenge = ?1').bind(expired, Date.now() - 1000).run();
    await relay.runCron();
    await relay.runCron();
    const { results } = await relay.vaults().prepare('SELECT challenge FROM challenges WHERE device_id = ?1').bind(device.deviceId).all();
    expect(results).toEqual([{ challenge: live }]);
  });
});

describe('launcher persistence', () => {
  let dataDir: string;
  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'casa-relay-persist-'));
  });
  afterAll(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('keeps vaults, the JWT secret and tokens across a restart, applying each migration once', async () => {
    const first = await startTestRelay({ dataDir });
    let vaultId: string;
    let token: string;
    const files = (await readdir(join(PACKAGE_ROOT, 'migrations'))).filter((f) => f.endsWith('.sql')).sort();
    try {
      const s = await setupVault(first.url);
      vaultId = s.vault.vaultId;
      token = s.token;
      // The vault's object applied every file of migrations/, in name order (0001_init.sql first), and the bundle lists them all.
      const { results } = await first.vault(vaultId).prepare('SELECT name FROM d1_migrations ORDER BY id').all();
      expect(files[0]).toBe('0001_init.sql');
      expect(files).toContain('0007_keys.sql');
      expect(results).toEqual(files.map((name) => ({ name })));
      const listed = [...(await readFile(join(PACKAGE_ROOT, 'worker', 'schema.ts'), 'utf8')).matchAll(/^  \['([^']+\.sql)', m\d+\],$/gm)].map((m) => m[1]);
      expect(listed).toEqual(files);
      // The global index (D1) has its own, migrations/d1; running them again finds nothing to do.
      const index = (await readdir(join(PACKAGE_ROOT, 'migrations', 'd1'))).filter((f) => f.endsWith('.sql')).sort();
      const applied = await first.d1().prepare('SELECT name FROM d1_migrations ORDER BY id').all();
      expect(applied.results).toEqual(index.map((name) => ({ name })));
      expect(await applyMigrations(first.d1())).toEqual([]);
    } finally {
      await first.stop();
    }
    expect((await stat(join(dataDir, 'jwt-secret'))).mode & 0o777).toBe(0o600);
    const secret = await readFile(join(dataDir, 'jwt-secret'), 'utf8');
    // wrangler's layout: D1 under v3/d1, so `wrangler d1 --local --persist-to DIR` shares it.
    expect((await stat(join(dataDir, 'v3', 'd1', 'miniflare-D1DatabaseObject'))).isDirectory()).toBe(true);

    const lines: string[] = [];
    const second = await startTestRelay({ dataDir, log: (l) => lines.push(l) });
    try {
      expect(lines.filter((l) => l.includes('migration'))).toEqual([]);
      const { results } = await second.vault(vaultId).prepare('SELECT name FROM d1_migrations').all();
      expect(results).toHaveLength(files.length);
      expect(await second.vault(vaultId).prepare('SELECT id FROM vaults WHERE id = ?1').bind(vaultId).first()).toEqual({ id: vaultId });
      expect(await readFile(join(dataDir, 'jwt-secret'), 'utf8')).toBe(secret);
      const res = await fetch(`${second.url}/v1/vaults/${vaultId}/devices`, { headers: { Authorization: `Bearer ${token}` } });
      expect(res.status).toBe(200);
    } finally {
      await second.stop();
    }
  });
});

describe('R2 blob helpers (worker/blobs.ts) against the local R2', () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay();
  });
  afterAll(async () => {
    await relay?.stop();
  });
  const vaultId = 'ab'.repeat(16);
  const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

  it('puts with a matching SHA-256, gets, and deletes idempotently', async () => {
    const bucket = relay.r2() as unknown as R2Bucket;
    const data = new Uint8Array(100_000).map((_, i) => i % 251);
    const key = blobKey(vaultId, 'pack', 'p1');
    expect(key).toBe(`v/${vaultId}/pack/p1`);
    const obj = await putBlob(bucket, key, data, sha(data));
    expect(obj.size).toBe(data.length);
    const got = await getBlob(bucket, key);
    expect(new Uint8Array(await got!.arrayBuffer())).toEqual(data);
    await deleteBlobs(bucket, [key, blobKey(vaultId, 'pack', 'missing')]);
    await deleteBlobs(bucket, [key]);
    expect(await getBlob(bucket, key)).toBeNull();
  });

  it('refuses a body whose SHA-256 differs, storing nothing', async () => {
    const bucket = relay.r2() as unknown as R2Bucket;
    const data = new TextEncoder().encode('ciphertext');
    const key = blobKey(vaultId, 'pack', 'p2');
    await expect(putBlob(bucket, key, data, sha(new TextEncoder().encode('other')))).rejects.toBeInstanceOf(BlobChecksumError);
    expect(await getBlob(bucket, key)).toBeNull();
    await expect(putBlob(bucket, key, data, 'XYZ')).rejects.toBeInstanceOf(RangeError);
    expect(() => blobKey('nothex', 'pack', 'p')).toThrow(RangeError);
    expect(() => blobKey(vaultId, 'pack', '../x')).toThrow(RangeError);
  });
});

describe('launcher parsing', () => {
  it('strips JSONC comments and trailing commas but not string contents', () => {
    const text = `{
      // comment
      "a": "http://x/*y*/", /* block */
      "b": [1, 2, /* c */ ],
      "c": "quote \\" // not a comment",
    }`;
    expect(JSON.parse(stripJsonc(stripJsonc(text)))).toEqual({ a: 'http://x/*y*/', b: [1, 2], c: 'quote " // not a comment' });
  });

  it('splits SQL on semicolons outside strings, comments and trigger bodies', () => {
    const sql = `-- a; comment
      CREATE TABLE t (a TEXT DEFAULT 'x;y'); /* b; */
      CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 'z;'; DELETE FROM t WHERE a = 'q'; END;
      INSERT INTO t VALUES ('it''s; fine')`;
    expect(splitSql(sql)).toEqual([
      "CREATE TABLE t (a TEXT DEFAULT 'x;y')",
      "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 'z;'; DELETE FROM t WHERE a = 'q'; END",
      "INSERT INTO t VALUES ('it''s; fine')",
    ]);
  });
});

describe('unexpected failures', () => {
  it('answer a bare 500 internal with nothing leaked, and log only to the launcher', async () => {
    const lines: string[] = [];
    const relay = await startTestRelay({ log: (l) => lines.push(l) });
    try {
      // A vault whose object lost a table: the next write that needs it fails.
      const v = newVault();
      expect((await post(`${relay.url}/v1/vaults`, createBody(v))).status).toBe(201);
      await relay.vault(v.vaultId).prepare('DROP TABLE audit_log').run();
      const res = await post(`${relay.url}/v1/vaults/${v.vaultId}/devices`, enrollBody(v, newDevice()));
      expect(res.status).toBe(500);
      expect(res.headers.get('X-Casa-Time')).toMatch(/^\d+$/);
      expect(await res.text()).toBe('{"error":{"code":"internal","message":"internal error"}}');
      // workerd's stderr arrives asynchronously.
      const logged = () => lines.some((l) => l.includes('casa-relay: internal error'));
      for (let i = 0; i < 40 && !logged(); i++) await new Promise((r) => setTimeout(r, 50));
      expect(logged()).toBe(true);
    } finally {
      await relay.stop();
    }
  });
});
