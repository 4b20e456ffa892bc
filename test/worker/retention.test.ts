// Retention (docs/RELAY-API.md "Retention", worker/cron.ts) against the real
// worker in workerd, with RETENTION_KEEP=3 and a short grace period: what is
// kept, what goes and when, idempotence, and the cron racing commits.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bearer,
  commit,
  commitBody,
  commitSnapshot,
  post,
  randomHex,
  setupVault,
  sha256Hex,
  startTestRelay,
  uploadManifest,
  uploadPack,
  type TestRelay,
} from '../helpers/relay.js';

const KEEP = 3;
// Long enough that the set-up before the first cron run stays inside it on a slow machine.
const GRACE_MS = 4000;

let relay: TestRelay;
beforeAll(async () => {
  relay = await startTestRelay({ vars: { RETENTION_KEEP: String(KEEP), PACK_GRACE_MS: String(GRACE_MS) } });
});
afterAll(async () => {
  await relay?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function packRows(vaultId: string): Promise<Map<string, string>> {
  const { results } = await relay.d1().prepare('SELECT id, r2_key FROM packs WHERE vault_id = ?1').bind(vaultId).all<{ id: string; r2_key: string }>();
  return new Map(results.map((r) => [r.id, r.r2_key]));
}

async function r2Has(key: string): Promise<boolean> {
  return (await relay.r2().head(key)) !== null;
}

async function seqs(vaultId: string): Promise<number[]> {
  const { results } = await relay.d1().prepare('SELECT seq FROM snapshots WHERE vault_id = ?1 ORDER BY seq').bind(vaultId).all<{ seq: number }>();
  return results.map((r) => r.seq);
}

/** Everything D1 and R2 hold for the vault, for comparing runs. */
async function state(vaultId: string): Promise<unknown> {
  const d1 = relay.d1();
  const tables = await Promise.all(
    ['SELECT id, r2_key FROM packs', 'SELECT id, manifest_key FROM snapshots', 'SELECT snapshot_id, pack_id FROM snapshot_packs', 'SELECT snapshot_id, r2_key FROM manifest_uploads'].map(
      async (q) => (await d1.prepare(`${q} WHERE vault_id = ?1 ORDER BY 1, 2`).bind(vaultId).all()).results,
    ),
  );
  const keys = [...(await relay.r2().list({ prefix: `packs/${vaultId}/` })).objects, ...(await relay.r2().list({ prefix: `manifests/${vaultId}/` })).objects].map((o) => o.key).sort();
  return { tables, keys };
}

/** No retained snapshot references a pack whose row or blob is gone. */
async function expectReferencesIntact(vaultId: string): Promise<void> {
  const { results } = await relay
    .d1()
    .prepare(
      `SELECT sp.pack_id, p.r2_key FROM snapshot_packs sp LEFT JOIN packs p ON p.vault_id = sp.vault_id AND p.id = sp.pack_id
       WHERE sp.vault_id = ?1`,
    )
    .bind(vaultId)
    .all<{ pack_id: string; r2_key: string | null }>();
  for (const r of results) {
    expect(r.r2_key, `pack ${r.pack_id} row`).not.toBeNull();
    expect(await r2Has(r.r2_key!), `pack ${r.pack_id} blob`).toBe(true);
  }
}

describe('retention', () => {
  it('keeps the newest snapshots and their packs; deletes the rest only after the grace period; idempotent', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const shared = await uploadPack(relay.url, v, token);
    const own: string[] = [];
    const manifestKeys: string[] = [];
    for (let seq = 1; seq <= 5; seq++) {
      own.push(await uploadPack(relay.url, v, token));
      const sid = await commitSnapshot(relay.url, v, token, seq, [shared, own[seq - 1]!]);
      manifestKeys.push((await relay.d1().prepare('SELECT manifest_key FROM snapshots WHERE id = ?1').bind(sid).first<{ manifest_key: string }>())!.manifest_key);
    }
    const uncommitted = await uploadPack(relay.url, v, token);
    const pendingSid = randomHex(16);
    await uploadManifest(relay.url, v, token, pendingSid);
    // Orphans of interrupted uploads: blobs no row names.
    const orphans = [`packs/${v}/${randomHex(32)}/${randomHex(16)}`, `manifests/${v}/${randomHex(16)}/${randomHex(16)}`];
    for (const key of orphans) await relay.r2().put(key, new Uint8Array([1, 2, 3]));
    const keysOf = await packRows(v);

    // Within the grace period: old snapshots go, but no pack and no blob.
    await relay.runCron();
    expect(await seqs(v)).toEqual([3, 4, 5]);
    for (const key of manifestKeys.slice(0, 2)) expect(await r2Has(key)).toBe(false);
    for (const key of manifestKeys.slice(2)) expect(await r2Has(key)).toBe(true);
    expect((await relay.d1().prepare('SELECT COUNT(*) AS n FROM snapshot_packs WHERE vault_id = ?1').bind(v).first())!.n).toBe(6);
    expect([...(await packRows(v)).keys()].sort()).toEqual([shared, ...own, uncommitted].sort());
    for (const key of orphans) expect(await r2Has(key)).toBe(true);
    expect(await relay.d1().prepare('SELECT 1 FROM manifest_uploads WHERE snapshot_id = ?1').bind(pendingSid).first()).not.toBeNull();

    // After it: the dropped snapshots' own packs, the uncommitted pack, the pending manifest and the orphans go.
    await sleep(GRACE_MS + 200);
    await relay.runCron();
    const kept = [shared, ...own.slice(2)];
    expect([...(await packRows(v)).keys()].sort()).toEqual([...kept].sort());
    for (const id of kept) expect(await r2Has(keysOf.get(id)!)).toBe(true);
    for (const id of [...own.slice(0, 2), uncommitted]) expect(await r2Has(keysOf.get(id)!)).toBe(false);
    for (const key of orphans) expect(await r2Has(key)).toBe(false);
    expect(await relay.d1().prepare('SELECT 1 FROM manifest_uploads WHERE snapshot_id = ?1').bind(pendingSid).first()).toBeNull();
    expect(await relay.r2().list({ prefix: `manifests/${v}/${pendingSid}/` })).toHaveProperty('objects', []);
    expect(await seqs(v)).toEqual([3, 4, 5]);
    await expectReferencesIntact(v);
    const res = await fetch(`${relay.url}/v1/vaults/${v}/packs/${own[0]}`, { headers: bearer(token) });
    expect(res.status).toBe(404);

    // Idempotent: another run changes nothing, and the vault goes on committing.
    const before = await state(v);
    await relay.runCron();
    expect(await state(v)).toEqual(before);
    await commitSnapshot(relay.url, v, token, 6, [shared]);
    await relay.runCron();
    expect(await seqs(v)).toEqual([4, 5, 6]);
    await expectReferencesIntact(v);
  });

  it('never lets a committed snapshot reference a missing pack while the cron races uploads and commits', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    let head = 0;
    const outcomes = { committed: 0, missingPacks: 0 };
    for (let i = 0; i < 36; i++) {
      // An old pack nothing references (past its grace period), and a fresh one.
      const old = await uploadPack(relay.url, v, token);
      await relay.d1().prepare('UPDATE packs SET touched_at = 0 WHERE vault_id = ?1 AND id = ?2').bind(v, old).run();
      const fresh = await uploadPack(relay.url, v, token, new Uint8Array(randomBytes(2000)));
      const sid = randomHex(16);
      await uploadManifest(relay.url, v, token, sid);
      const client = async (): Promise<Response> => {
        // Some iterations touch the old pack first (as a real client does), some race the cron bare.
        if (i % 3 === 0) await post(`${relay.url}/v1/vaults/${v}/packs/check`, { ids: [old, fresh] }, bearer(token));
        if (i % 3 === 1) await sleep(i % 4);
        return commit(relay.url, v, token, commitBody(sid, head + 1, [old, fresh]));
      };
      const [, res] = await Promise.all([relay.runCron(), client()]);
      const body = (await res.json()) as { error?: { code: string }; missing?: string[] };
      if (res.status === 201) {
        head++;
        outcomes.committed++;
      } else {
        expect(res.status).toBe(409);
        expect(body).toEqual({ error: { code: 'missing_packs', message: expect.any(String) }, missing: [old] });
        outcomes.missingPacks++;
      }
      await expectReferencesIntact(v);
    }
    expect(outcomes.committed).toBeGreaterThan(0);
    expect(outcomes.committed + outcomes.missingPacks).toBe(36);
    // Once more with nothing racing: still intact, KEEP snapshots left.
    await relay.runCron();
    await expectReferencesIntact(v);
    expect((await seqs(v)).length).toBe(Math.min(KEEP, head));
  });

  it('leaves a re-uploaded pack alone when an older upload of it is deleted', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const data = new Uint8Array([4, 5, 6]);
    const packId = await uploadPack(relay.url, v, token, data);
    const firstKey = (await packRows(v)).get(packId)!;
    await relay.d1().prepare('UPDATE packs SET touched_at = 0 WHERE vault_id = ?1').bind(v).run();
    await relay.runCron();
    expect(await r2Has(firstKey)).toBe(false);
    const again = await fetch(`${relay.url}/v1/vaults/${v}/packs/${packId}`, {
      method: 'PUT',
      headers: { ...bearer(token), 'X-Casa-Sha256': sha256Hex(data) },
      body: data,
    });
    expect(await again.json()).toMatchObject({ created: true });
    const secondKey = (await packRows(v)).get(packId)!;
    expect(secondKey).not.toBe(firstKey);
    await relay.runCron();
    expect(await r2Has(secondKey)).toBe(true);
  });
});
