/**
 * A relay that serves damaged or tampered snapshot data, made by editing the
 * real relay's R2 blobs and D1 rows under the CLI: each case must fail with
 * the documented exit code and a `casa: error:` line, in `casa restore`,
 * `casa pull` and `casa verify` alike, leaving the database byte for byte as
 * it was and no temp file behind. Each case undoes its tampering after.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { useRelay } from '../helpers/cli.js';
import { editRows, restoreTemps, sha256, writeRows } from '../helpers/sqlite.js';

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;
const json = (s: string) => JSON.parse(s) as Record<string, unknown>;

let a: Machine;
let b: Machine;
let vaultId: string;
/** seq → snapshot id */
const ids: string[] = [];

const d1 = () => relay.relay.vaults();
const r2 = () => relay.relay.r2();

async function blob(key: string): Promise<Uint8Array> {
  const o = await r2().get(key);
  if (!o) throw new Error(`no blob ${key}`);
  return new Uint8Array(await o.arrayBuffer());
}
const put = (key: string, bytes: Uint8Array) => r2().put(key, bytes);

async function manifestKey(snapshotId: string): Promise<string> {
  const row = await d1().prepare('SELECT manifest_key FROM snapshots WHERE vault_id = ?1 AND id = ?2').bind(vaultId, snapshotId).first<{ manifest_key: string }>();
  return row!.manifest_key;
}

/** R2 keys of the packs the snapshot references, those only it uses first. */
async function packKeys(snapshotId: string): Promise<string[]> {
  const { results } = await d1()
    .prepare(
      `SELECT p.r2_key AS k, (SELECT count(*) FROM snapshot_packs o WHERE o.vault_id = p.vault_id AND o.pack_id = p.id) AS uses
       FROM snapshot_packs sp JOIN packs p ON p.vault_id = sp.vault_id AND p.id = sp.pack_id
       WHERE sp.vault_id = ?1 AND sp.snapshot_id = ?2 ORDER BY uses, p.r2_key`,
    )
    .bind(vaultId, snapshotId)
    .all<{ k: string }>();
  return results.map((r) => r.k);
}

async function snapshot(m: Machine): Promise<string> {
  const r = await m.run(['snapshot', '--json']);
  expect(r.code, r.stderr).toBe(0);
  return json(r.stdout).snapshot_id as string;
}

beforeAll(async () => {
  a = relay.machine('a');
  const phraseFile = join(a.home, 'phrase.txt');
  expect((await a.run(['pair', '--new', '--phrase-out', phraseFile])).code).toBe(0);
  vaultId = json((await a.run(['status', '--json'])).stdout).vault_id as string;
  // Big enough for several packs (8 MiB each), so the newest snapshot uses an old pack and new ones.
  writeRows(a.env.CASA_DB, 45_000, 'first', 400);
  ids[1] = await snapshot(a);
  editRows(a.env.CASA_DB, 'second', 3);
  ids[2] = await snapshot(a);
  expect((await packKeys(ids[2]!)).length).toBeGreaterThanOrEqual(2);

  // B holds snapshot 1 (so a pull has something newer to take) and has seen snapshot 2.
  b = relay.machine('b');
  const r = await b.run(['restore', '--phrase-file', phraseFile, '--snapshot', ids[1]!]);
  expect(r.code, r.stderr).toBe(0);
  expect((await b.run(['verify'])).code).toBe(0); // authenticates snapshot 2's manifest: B has now seen seq 2
}, 120_000);

/** Runs restore, pull and verify on B: each fails with `code`, nothing changes, no temp is left. */
async function expectRefused(code: number, message: RegExp) {
  const db = b.env.CASA_DB;
  const before = sha256(readFileSync(db));
  const dir = readdirSync(b.home).sort();
  for (const args of [['restore', '--yes'], ['pull', '--force'], ['verify'], ['verify', '--all']]) {
    const r = await b.run(args);
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(code);
    expect(r.stderr, args.join(' ')).toMatch(/^casa: error: /m);
    expect(r.stderr, args.join(' ')).toMatch(message);
    expect(r.stderr).not.toContain('internal error');
    expect(sha256(readFileSync(db)), args.join(' ')).toBe(before);
    expect(restoreTemps(db)).toEqual([]);
  }
  expect(readdirSync(b.home).sort()).toEqual(dir);
  const tmp = join(b.home, 'tmp');
  expect(readdirSync(b.home).includes('tmp') ? readdirSync(tmp) : []).toEqual([]);
}

/** Replaces the blob at `key` for the duration of `f`. */
async function withBlob(key: string, bytes: Uint8Array | null, f: () => Promise<void>) {
  const original = await blob(key);
  if (bytes === null) await r2().delete(key);
  else await put(key, bytes);
  try {
    await f();
  } finally {
    await put(key, original);
  }
}

describe('a tampering relay', () => {
  it('a flipped byte in a pack: exit 6', async () => {
    const [key] = await packKeys(ids[2]!);
    const bad = (await blob(key!)).slice();
    bad[bad.length >> 1]! ^= 0x01;
    await withBlob(key!, bad, () => expectRefused(6, /pack [0-9a-f]{12} of snapshot [0-9a-f]{12} failed its integrity check/));
  });

  it('a truncated pack: exit 6', async () => {
    const [key] = await packKeys(ids[2]!);
    const bad = (await blob(key!)).slice(0, 5000);
    await withBlob(key!, bad, () => expectRefused(6, /failed its integrity check/));
  });

  it("two packs' blobs swapped: exit 6", async () => {
    const [k1, k2] = await packKeys(ids[2]!);
    const [x, y] = [await blob(k1!), await blob(k2!)];
    await withBlob(k1!, y, () => withBlob(k2!, x, () => expectRefused(6, /failed its integrity check/)));
  });

  it('a pack blob deleted: exit 6', async () => {
    const [key] = await packKeys(ids[2]!);
    await withBlob(key!, null, () => expectRefused(6, /the relay has lost pack/));
  });

  it('a flipped manifest: exit 6', async () => {
    const key = await manifestKey(ids[2]!);
    const bad = (await blob(key)).slice();
    bad[bad.length - 3]! ^= 0x80;
    await withBlob(key, bad, () => expectRefused(6, /the manifest of snapshot [0-9a-f]{12} failed its integrity check/));
  });

  it("another snapshot's manifest served in its place: exit 6", async () => {
    const key = await manifestKey(ids[2]!);
    const older = await blob(await manifestKey(ids[1]!));
    await withBlob(key, older, () => expectRefused(6, /the manifest of snapshot .* failed its integrity check/));
  });

  it('a manifest moved to another seq (D1 says seq 3): exit 6', async () => {
    await d1().prepare('UPDATE snapshots SET seq = 3 WHERE vault_id = ?1 AND id = ?2').bind(vaultId, ids[2]).run();
    try {
      await expectRefused(6, /the manifest of snapshot .* failed its integrity check/);
    } finally {
      await d1().prepare('UPDATE snapshots SET seq = 2 WHERE vault_id = ?1 AND id = ?2').bind(vaultId, ids[2]).run();
    }
  });

  it('the head rolled back after this device saw it: exit 6', async () => {
    const row = await d1().prepare('SELECT * FROM snapshots WHERE vault_id = ?1 AND id = ?2').bind(vaultId, ids[2]).first<Record<string, unknown>>();
    await d1().prepare('DELETE FROM snapshots WHERE vault_id = ?1 AND id = ?2').bind(vaultId, ids[2]).run();
    try {
      await expectRefused(6, /serves snapshot 1 as the newest, but this device has already seen snapshot 2/);
    } finally {
      const cols = Object.keys(row!);
      await d1()
        .prepare(`INSERT INTO snapshots (${cols.join(', ')}) VALUES (${cols.map((_, i) => `?${i + 1}`).join(', ')})`)
        .bind(...cols.map((c) => row![c]))
        .run();
    }
  });

  it("another vault's manifest (sealed under another phrase's key): exit 4, wrong key", async () => {
    const x = relay.machine('x');
    expect((await x.run(['pair', '--new', '--phrase-out', join(x.home, 'p.txt')])).code).toBe(0);
    writeRows(x.env.CASA_DB, 100, 'other vault');
    const otherId = await snapshot(x);
    const otherVault = json((await x.run(['status', '--json'])).stdout).vault_id as string;
    const row = await d1().prepare('SELECT manifest_key FROM snapshots WHERE vault_id = ?1 AND id = ?2').bind(otherVault, otherId).first<{ manifest_key: string }>();
    const foreign = await blob(row!.manifest_key);
    await withBlob(await manifestKey(ids[2]!), foreign, () => expectRefused(4, /was encrypted with another key/));
  });

  it('a newest snapshot that does not verify is stepped over: restore and pull name the newest that does, and how to restore it', async () => {
    const key = await manifestKey(ids[2]!);
    const bad = (await blob(key)).slice();
    bad[bad.length - 3]! ^= 0x80;
    await withBlob(key, bad, async () => {
      for (const args of [['restore', '--yes'], ['pull', '--force']]) {
        const r = await b.run(args);
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(6);
        expect(r.stderr).toMatch(
          new RegExp(`^casa: error: the manifest of snapshot ${ids[2]!.slice(0, 12)} failed its integrity check; the newest snapshot that verifies is ${ids[1]} \\(seq 1, taken \\S+Z\\)$`, 'm'),
        );
        expect(r.stderr).toContain(`casa: hint: \`casa restore --snapshot ${ids[1]}\` restores it`);
        const j = await b.run([...args, '--json']);
        expect(json(j.stderr.trim().split('\n').pop()!)).toMatchObject({ code: 6, reason: 'integrity' });
      }
      // The command it names works, and says the snapshot is older than what this device has seen.
      const db = b.env.CASA_DB;
      const r = await b.run(['restore', '--yes', '--snapshot', ids[1]!]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toMatch(new RegExp(`^casa: snapshot ${ids[1]!.slice(0, 12)}: seq 1, taken \\S+Z on `, 'm'));
      expect(r.stderr).toMatch(/^casa: warning: snapshot [0-9a-f]{12} \(seq 1\) is older than snapshot 2, the newest this device has seen$/m);
      expect(restoreTemps(db)).toEqual([]);
    });
  });

  it('untampered again: all three succeed', async () => {
    const v = await b.run(['verify', '--all']);
    expect(v.code, v.stderr).toBe(0);
    const p = await b.run(['pull', '--force', '--json']);
    expect(p.code, p.stderr).toBe(0);
    expect(json(p.stdout)).toMatchObject({ status: 'pulled', seq: 2 });
  });
});
