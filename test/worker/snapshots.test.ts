// Snapshot routes (docs/RELAY-API.md "Snapshots: packs, manifests, the head")
// against the real worker in workerd: uploads checked on arrival, the 404
// rules, and the compare-and-swap commit.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bearer,
  commit,
  commitBody,
  commitSnapshot,
  enrollDevice,
  errorOf,
  getToken,
  post,
  putObject,
  randomHex,
  revokeBody,
  setupVault,
  sha256Hex,
  startTestRelay,
  uploadManifest,
  uploadPack,
  chunked,
  refusedEarly,
  type TestRelay,
} from '../helpers/relay.js';

let relay: TestRelay;
beforeAll(async () => {
  relay = await startTestRelay();
});
afterAll(async () => {
  await relay?.stop();
});

const MiB = 1024 * 1024;


const get = (url: string, token: string): Promise<Response> => fetch(url, { headers: bearer(token) });


function putChunked(url: string, token: string, bytes: Uint8Array, sha = sha256Hex(bytes)): Promise<Response> {
  return fetch(url, {
    method: 'PUT',
    headers: { ...bearer(token), 'X-Casa-Sha256': sha },
    body: chunked(bytes),
    duplex: 'half',
  } as RequestInit);
}

async function r2Keys(prefix: string): Promise<string[]> {
  return (await relay.r2().list({ prefix })).objects.map((o) => o.key);
}

describe('packs', () => {
  it('stores a pack (201), serves it back, and keeps the first copy on re-upload', async () => {
    const { vault, token } = await setupVault(relay.url);
    const data = new Uint8Array(randomBytes(300_000));
    const packId = randomHex(32);
    const url = `${relay.url}/v1/vaults/${vault.vaultId}/packs/${packId}`;
    const res = await putObject(url, token, data);
    expect(res.status).toBe(201);
    expect(await res.json()).toEqual({ id: packId, bytes: data.length, created: true });
    const row = await relay.vaults().prepare('SELECT r2_key, bytes, touched_at FROM packs WHERE vault_id = ?1 AND id = ?2').bind(vault.vaultId, packId).first<{ r2_key: string; bytes: number; touched_at: number }>();
    expect(row!.r2_key).toMatch(new RegExp(`^packs/${vault.vaultId}/${packId}/[0-9a-f]{32}$`));
    expect(row!.bytes).toBe(data.length);

    const got = await get(url, token);
    expect(got.status).toBe(200);
    expect(got.headers.get('content-type')).toBe('application/octet-stream');
    expect(got.headers.get('X-Casa-Sha256')).toBe(sha256Hex(data));
    expect(got.headers.get('X-Casa-Time')).toMatch(/^\d+$/);
    expect(new Uint8Array(await got.arrayBuffer())).toEqual(data);

    // Again, streamed or chunked: accepted, not stored twice, the row touched.
    await relay.vaults().prepare('UPDATE packs SET touched_at = 0 WHERE id = ?1').bind(packId).run();
    for (const again of [await putObject(url, token, data), await putChunked(url, token, data)]) {
      expect(again.status).toBe(201);
      expect(await again.json()).toEqual({ id: packId, bytes: data.length, created: false });
    }
    expect(await r2Keys(`packs/${vault.vaultId}/${packId}/`)).toEqual([row!.r2_key]);
    const touched = await relay.vaults().prepare('SELECT touched_at FROM packs WHERE id = ?1').bind(packId).first<{ touched_at: number }>();
    expect(touched!.touched_at).toBeGreaterThan(Date.now() - 60_000);
  });

  it('stores a chunked upload (no Content-Length) the same way', async () => {
    const { vault, token } = await setupVault(relay.url);
    const data = new Uint8Array(randomBytes(70_000));
    const url = `${relay.url}/v1/vaults/${vault.vaultId}/packs/${randomHex(32)}`;
    const res = await putChunked(url, token, data);
    expect(res.status).toBe(201);
    expect(new Uint8Array(await (await get(url, token)).arrayBuffer())).toEqual(data);
  });

  it('refuses a body that does not match X-Casa-Sha256 (400), storing nothing in R2 or D1', async () => {
    const { vault, token } = await setupVault(relay.url);
    const data = new Uint8Array(randomBytes(50_000));
    const wrong = sha256Hex(new Uint8Array(randomBytes(10)));
    const packId = randomHex(32);
    const url = `${relay.url}/v1/vaults/${vault.vaultId}/packs/${packId}`;
    expect(await errorOf(await putObject(url, token, data, wrong))).toEqual({ status: 400, code: 'bad_request' });
    expect(await errorOf(await putChunked(url, token, data, wrong))).toEqual({ status: 400, code: 'bad_request' });
    const sid = randomHex(16);
    const murl = `${relay.url}/v1/vaults/${vault.vaultId}/snapshots/${sid}/manifest`;
    expect(await errorOf(await putObject(murl, token, data, wrong))).toEqual({ status: 400, code: 'bad_request' });
    expect(await r2Keys(`packs/${vault.vaultId}/`)).toEqual([]);
    expect(await r2Keys(`manifests/${vault.vaultId}/`)).toEqual([]);
    expect(await relay.vaults().prepare('SELECT id FROM packs WHERE vault_id = ?1').bind(vault.vaultId).first()).toBeNull();
    expect(await relay.vaults().prepare('SELECT 1 FROM manifest_uploads WHERE vault_id = ?1').bind(vault.vaultId).first()).toBeNull();
    expect((await get(url, token)).status).toBe(404);

    // A re-upload of a stored pack is checked too, and changes nothing.
    expect((await putObject(url, token, data)).status).toBe(201);
    expect(await errorOf(await putObject(url, token, data, wrong))).toEqual({ status: 400, code: 'bad_request' });
    expect(new Uint8Array(await (await get(url, token)).arrayBuffer())).toEqual(data);

    // A missing, malformed or empty upload is 400 too.
    for (const headers of [{}, { 'X-Casa-Sha256': 'abc' }, { 'X-Casa-Sha256': 'g'.repeat(64) }] as Record<string, string>[]) {
      const res = await fetch(`${relay.url}/v1/vaults/${vault.vaultId}/packs/${randomHex(32)}`, { method: 'PUT', headers: { ...bearer(token), ...headers }, body: data });
      expect(await errorOf(res)).toEqual({ status: 400, code: 'bad_request' });
    }
    const empty = await putObject(`${relay.url}/v1/vaults/${vault.vaultId}/packs/${randomHex(32)}`, token, new Uint8Array(0));
    expect(await errorOf(empty)).toEqual({ status: 400, code: 'bad_request' });
  });

  it('refuses a body over 16 MiB with 413, declared or counted, and stores nothing', async () => {
    const { vault, token } = await setupVault(relay.url);
    const big = new Uint8Array(16 * MiB + 1);
    const url = `${relay.url}/v1/vaults/${vault.vaultId}/packs/${randomHex(32)}`;
    const headers = { ...bearer(token), 'X-Casa-Sha256': sha256Hex(big) };
    expect(await refusedEarly(url, { method: 'PUT', headers, body: big, declared: true })).toEqual({ status: 413, code: 'too_large' });
    expect(await refusedEarly(url, { method: 'PUT', headers, body: big, declared: false })).toEqual({ status: 413, code: 'too_large' });
    expect(await r2Keys(`packs/${vault.vaultId}/`)).toEqual([]);
    // Exactly 16 MiB is fine.
    expect((await putObject(url, token, big.subarray(0, 16 * MiB))).status).toBe(201);
  });

  it('answers 400 for malformed pack and snapshot ids', async () => {
    const { vault, token } = await setupVault(relay.url);
    const base = `${relay.url}/v1/vaults/${vault.vaultId}`;
    const data = new Uint8Array([1, 2, 3]);
    for (const id of ['A'.repeat(64), 'a'.repeat(63), 'a'.repeat(65), 'check', '..%2F' + 'a'.repeat(60)]) {
      expect(await errorOf(await get(`${base}/packs/${id}`, token))).toEqual({ status: 400, code: 'bad_request' });
      expect(await errorOf(await putObject(`${base}/packs/${id}`, token, data))).toEqual({ status: 400, code: 'bad_request' });
    }
    for (const id of ['A'.repeat(32), 'a'.repeat(31), 'a'.repeat(64)]) {
      expect(await errorOf(await get(`${base}/snapshots/${id}/manifest`, token))).toEqual({ status: 400, code: 'bad_request' });
      expect(await errorOf(await putObject(`${base}/snapshots/${id}/manifest`, token, data))).toEqual({ status: 400, code: 'bad_request' });
    }
    for (const body of [{}, { ids: 'x' }, { ids: ['A'.repeat(64)] }, { ids: [42] }, { ids: Array(10_001).fill('a'.repeat(64)) }]) {
      expect(await errorOf(await post(`${base}/packs/check`, body, bearer(token)))).toEqual({ status: 400, code: 'bad_request' });
    }
  });

  it('check reports the missing ids in order and touches the ones that exist', async () => {
    const { vault, token } = await setupVault(relay.url);
    const a = await uploadPack(relay.url, vault.vaultId, token);
    const b = await uploadPack(relay.url, vault.vaultId, token);
    await relay.vaults().prepare('UPDATE packs SET touched_at = 0 WHERE vault_id = ?1').bind(vault.vaultId).run();
    const x = randomHex(32);
    const y = randomHex(32);
    const res = await post(`${relay.url}/v1/vaults/${vault.vaultId}/packs/check`, { ids: [y, a, x, a, y] }, bearer(token));
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ missing: [y, x] });
    const { results } = await relay.vaults().prepare('SELECT id, touched_at FROM packs WHERE vault_id = ?1').bind(vault.vaultId).all<{ id: string; touched_at: number }>();
    const touched = Object.fromEntries(results.map((r) => [r.id, r.touched_at]));
    expect(touched[a]).toBeGreaterThan(Date.now() - 60_000);
    expect(touched[b]).toBe(0);
  });

  it('check takes 10,000 ids (a body over 64 KiB) and refuses a body over 1 MiB with 413', async () => {
    const { vault, token } = await setupVault(relay.url);
    const ids = Array.from({ length: 10_000 }, () => randomHex(32));
    const res = await post(`${relay.url}/v1/vaults/${vault.vaultId}/packs/check`, { ids }, bearer(token));
    expect(res.status).toBe(200);
    expect(((await res.json()) as { missing: string[] }).missing).toEqual(ids);
    const huge = await refusedEarly(`${relay.url}/v1/vaults/${vault.vaultId}/packs/check`, {
      method: 'POST',
      headers: { ...bearer(token), 'content-type': 'application/json' },
      body: JSON.stringify({ ids, pad: 'x'.repeat(MiB) }),
      declared: true,
    });
    expect(huge).toEqual({ status: 413, code: 'too_large' });
  });
});

describe('commit', () => {
  it('commits over uploaded packs and manifest (201), records references and an audit row', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const packs = [await uploadPack(relay.url, v, token), await uploadPack(relay.url, v, token)];
    const snapshotId = randomHex(16);
    const manifest = new Uint8Array(randomBytes(500));
    await uploadManifest(relay.url, v, token, snapshotId, manifest);
    const before = Date.now();
    const res = await commit(relay.url, v, token, { ...commitBody(snapshotId, 1, [...packs, packs[0]!]), dbBytes: 8192, storedBytes: 2000, newBytes: 2000 });
    expect(res.status).toBe(201);
    const body = (await res.json()) as { snapshotId: string; seq: number; time: number };
    expect(body).toEqual({ snapshotId, seq: 1, time: expect.any(Number) });
    expect(body.time).toBeGreaterThanOrEqual(before - 1000);

    const row = await relay.vaults().prepare('SELECT seq, device_id, time, db_bytes, stored_bytes, new_bytes, pack_count, manifest_key FROM snapshots WHERE vault_id = ?1 AND id = ?2').bind(v, snapshotId).first();
    expect(row).toEqual({ seq: 1, device_id: device.deviceId, time: body.time, db_bytes: 8192, stored_bytes: 2000, new_bytes: 2000, pack_count: 2, manifest_key: expect.stringMatching(new RegExp(`^manifests/${v}/${snapshotId}/[0-9a-f]{32}$`)) });
    const refs = await relay.vaults().prepare('SELECT pack_id FROM snapshot_packs WHERE vault_id = ?1 AND snapshot_id = ?2 ORDER BY pack_id').bind(v, snapshotId).all();
    expect(refs.results).toEqual([...packs].sort().map((pack_id) => ({ pack_id })));
    expect(await relay.vaults().prepare('SELECT 1 FROM manifest_uploads WHERE vault_id = ?1').bind(v).first()).toBeNull();
    const audit = await relay.vaults().prepare("SELECT device_id, at FROM audit_log WHERE vault_id = ?1 AND event = 'snapshot_committed'").bind(v).all();
    expect(audit.results).toEqual([{ device_id: device.deviceId, at: body.time }]);

    // The manifest is served, and can no longer be replaced.
    const murl = `${relay.url}/v1/vaults/${v}/snapshots/${snapshotId}/manifest`;
    expect(new Uint8Array(await (await get(murl, token)).arrayBuffer())).toEqual(manifest);
    expect(await errorOf(await putObject(murl, token, new Uint8Array([9])))).toEqual({ status: 409, code: 'conflict' });
    expect(new Uint8Array(await (await get(murl, token)).arrayBuffer())).toEqual(manifest);

    // A retried commit (its answer lost) gets the same answer; nothing doubles.
    const retry = await commit(relay.url, v, token, commitBody(snapshotId, 1, packs));
    expect(retry.status).toBe(201);
    expect(await retry.json()).toEqual(body);
    expect((await relay.vaults().prepare('SELECT COUNT(*) AS n FROM snapshots WHERE vault_id = ?1').bind(v).first())!.n).toBe(1);
  });

  it('replaces a pending manifest until the commit', async () => {
    const { vault, token } = await setupVault(relay.url);
    const sid = randomHex(16);
    await uploadManifest(relay.url, vault.vaultId, token, sid, new Uint8Array([1]));
    await uploadManifest(relay.url, vault.vaultId, token, sid, new Uint8Array([2, 2]));
    expect(await commit(relay.url, vault.vaultId, token, commitBody(sid, 1, []))).toHaveProperty('status', 201);
    const got = await get(`${relay.url}/v1/vaults/${vault.vaultId}/snapshots/${sid}/manifest`, token);
    expect(new Uint8Array(await got.arrayBuffer())).toEqual(new Uint8Array([2, 2]));
  });

  it('answers 409 missing_packs with the missing ids, committing nothing', async () => {
    const { vault, token } = await setupVault(relay.url);
    const have = await uploadPack(relay.url, vault.vaultId, token);
    const lost = randomHex(32);
    const sid = randomHex(16);
    await uploadManifest(relay.url, vault.vaultId, token, sid);
    const res = await commit(relay.url, vault.vaultId, token, commitBody(sid, 1, [have, lost]));
    expect(res.status).toBe(409);
    expect(await res.json()).toEqual({ error: { code: 'missing_packs', message: expect.any(String) }, missing: [lost] });
    expect(await relay.vaults().prepare('SELECT 1 FROM snapshots WHERE vault_id = ?1').bind(vault.vaultId).first()).toBeNull();
    expect(await relay.vaults().prepare('SELECT 1 FROM snapshot_packs WHERE vault_id = ?1').bind(vault.vaultId).first()).toBeNull();
    // Upload it and the same commit goes through.
    await fetch(`${relay.url}/v1/vaults/${vault.vaultId}/packs/${lost}`, { method: 'PUT', headers: { ...bearer(token), 'X-Casa-Sha256': sha256Hex(new Uint8Array([7])) }, body: new Uint8Array([7]) });
    expect((await commit(relay.url, vault.vaultId, token, commitBody(sid, 1, [have, lost]))).status).toBe(201);
  });

  it('answers 409 missing_manifest when the manifest was not uploaded', async () => {
    const { vault, token } = await setupVault(relay.url);
    const pack = await uploadPack(relay.url, vault.vaultId, token);
    const res = await commit(relay.url, vault.vaultId, token, commitBody(randomHex(16), 1, [pack]));
    expect(res.status).toBe(409);
    expect(await res.json()).toEqual({ error: { code: 'missing_manifest', message: expect.any(String) } });
  });

  it('lets exactly one of two commits on the same parent win; the other gets 409 conflict with the head', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const other = await enrollDevice(relay.url, vault, 'desktop');
    const otherToken = await getToken(relay.url, v, other);
    const pack = await uploadPack(relay.url, v, token);
    for (let seq = 1; seq <= 8; seq++) {
      const [s1, s2] = [randomHex(16), randomHex(16)];
      await Promise.all([uploadManifest(relay.url, v, token, s1), uploadManifest(relay.url, v, otherToken, s2)]);
      const [r1, r2] = await Promise.all([commit(relay.url, v, token, commitBody(s1, seq, [pack])), commit(relay.url, v, otherToken, commitBody(s2, seq, [pack]))]);
      const statuses = [r1.status, r2.status].sort();
      expect(statuses).toEqual([201, 409]);
      const [won, lost] = r1.status === 201 ? [r1, r2] : [r2, r1];
      const winner = ((await won.json()) as { snapshotId: string }).snapshotId;
      const body = (await lost.json()) as { error: { code: string }; head: { id: string; seq: number; deviceName: string } };
      expect(body.error.code).toBe('conflict');
      expect(body.head).toMatchObject({ id: winner, seq });
    }
    const { results } = await relay.vaults().prepare('SELECT seq FROM snapshots WHERE vault_id = ?1 ORDER BY seq').bind(v).all<{ seq: number }>();
    expect(results.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);

    // A stale parent, or a snapshot id already used by another commit: 409 conflict too.
    const sid = randomHex(16);
    await uploadManifest(relay.url, v, token, sid);
    const stale = await commit(relay.url, v, token, commitBody(sid, 3, [pack]));
    expect(stale.status).toBe(409);
    expect(await stale.json()).toMatchObject({ error: { code: 'conflict' }, head: { seq: 8 } });
    const [first] = (await relay.vaults().prepare('SELECT id FROM snapshots WHERE vault_id = ?1 AND seq = 1').bind(v).all<{ id: string }>()).results;
    expect(await errorOf(await commit(relay.url, v, token, commitBody(first!.id, 9, [pack])))).toEqual({ status: 409, code: 'conflict' });
  });

  it('answers 400 for seq != parentSeq + 1 and ill-typed fields', async () => {
    const { vault, token } = await setupVault(relay.url);
    const sid = randomHex(16);
    await uploadManifest(relay.url, vault.vaultId, token, sid);
    const good = commitBody(sid, 1, []);
    for (const bad of [
      { ...good, seq: 2 },
      { ...good, seq: 1, parentSeq: 1 },
      { ...good, seq: 0, parentSeq: -1 },
      { ...good, snapshotId: 'A'.repeat(32) },
      { ...good, packs: ['x'] },
      { ...good, packs: Array(10_001).fill('a'.repeat(64)) },
      { ...good, dbBytes: -1 },
      { ...good, newBytes: '1' },
      { ...good, storedBytes: undefined },
    ]) {
      expect(await errorOf(await commit(relay.url, vault.vaultId, token, bad))).toEqual({ status: 400, code: 'bad_request' });
    }
    expect(await relay.vaults().prepare('SELECT 1 FROM snapshots WHERE vault_id = ?1').bind(vault.vaultId).first()).toBeNull();
  });
});

describe('access', () => {
  it("answers another vault's packs, manifests and snapshots exactly like nonexistent ones (404)", async () => {
    const a = await setupVault(relay.url);
    const b = await setupVault(relay.url);
    const pack = await uploadPack(relay.url, b.vault.vaultId, b.token);
    const sid = await commitSnapshot(relay.url, b.vault.vaultId, b.token, 1, [pack]);
    const data = new Uint8Array([1]);
    const requests = (vaultId: string, packId: string, snapshotId: string): (() => Promise<Response>)[] => {
      const base = `${relay.url}/v1/vaults/${vaultId}`;
      return [
        () => get(`${base}/packs/${packId}`, a.token),
        () => putObject(`${base}/packs/${packId}`, a.token, data),
        () => post(`${base}/packs/check`, { ids: [packId] }, bearer(a.token)),
        () => get(`${base}/snapshots/${snapshotId}/manifest`, a.token),
        () => putObject(`${base}/snapshots/${snapshotId}/manifest`, a.token, data),
        () => commit(relay.url, vaultId, a.token, commitBody(snapshotId, 2, [packId])),
        () => get(`${base}/snapshots`, a.token),
        () => get(`${base}/snapshots/head`, a.token),
      ];
    };
    const theirs = requests(b.vault.vaultId, pack, sid);
    const nobody = requests(randomHex(16), randomHex(32), randomHex(16));
    const expected = '{"error":{"code":"not_found","message":"not found"}}';
    for (let i = 0; i < theirs.length; i++) {
      const [r1, r2] = [await theirs[i]!(), await nobody[i]!()];
      expect([r1.status, await r1.text()]).toEqual([404, expected]);
      expect([r2.status, await r2.text()]).toEqual([404, expected]);
    }
    // In one's own vault, an unknown pack or manifest is the same 404.
    for (const url of [`/packs/${randomHex(32)}`, `/snapshots/${randomHex(16)}/manifest`]) {
      const res = await get(`${relay.url}/v1/vaults/${a.vault.vaultId}${url}`, a.token);
      expect([res.status, await res.text()]).toEqual([404, expected]);
    }
    // B's objects are untouched.
    const still = await get(`${relay.url}/v1/vaults/${b.vault.vaultId}/snapshots/head`, b.token);
    expect(((await still.json()) as { head: { id: string } }).head.id).toBe(sid);
  });

  it('refuses a revoked device with 403 on every snapshot route', async () => {
    const { vault, token } = await setupVault(relay.url);
    const other = await enrollDevice(relay.url, vault, 'old phone');
    const otherToken = await getToken(relay.url, vault.vaultId, other);
    const pack = await uploadPack(relay.url, vault.vaultId, otherToken);
    const revoke = await post(`${relay.url}/v1/vaults/${vault.vaultId}/devices/${other.deviceId}/revoke`, revokeBody(vault, other.deviceId), bearer(token));
    expect(revoke.status).toBe(200);
    const base = `${relay.url}/v1/vaults/${vault.vaultId}`;
    for (const res of [
      await get(`${base}/packs/${pack}`, otherToken),
      await putObject(`${base}/packs/${randomHex(32)}`, otherToken, new Uint8Array([1])),
      await post(`${base}/packs/check`, { ids: [pack] }, bearer(otherToken)),
      await putObject(`${base}/snapshots/${randomHex(16)}/manifest`, otherToken, new Uint8Array([1])),
      await commit(relay.url, vault.vaultId, otherToken, commitBody(randomHex(16), 1, [pack])),
      await get(`${base}/snapshots`, otherToken),
      await get(`${base}/snapshots/head`, otherToken),
    ]) {
      expect(await errorOf(res)).toEqual({ status: 403, code: 'device_revoked' });
    }
  });
});

describe('list and head', () => {
  it('lists snapshots newest first with device names; head is the highest seq', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const base = `${relay.url}/v1/vaults/${v}`;
    expect(await (await get(`${base}/snapshots`, token)).json()).toEqual({ head: null, snapshots: [] });
    expect(await (await get(`${base}/snapshots/head`, token)).json()).toEqual({ head: null });

    const desktop = await enrollDevice(relay.url, vault, 'desktop ✓');
    const desktopToken = await getToken(relay.url, v, desktop);
    const p1 = await uploadPack(relay.url, v, token);
    const p2 = await uploadPack(relay.url, v, desktopToken);
    const s1 = await commitSnapshot(relay.url, v, token, 1, [p1]);
    const s2 = await commitSnapshot(relay.url, v, desktopToken, 2, [p1, p2]);
    const list = (await (await get(`${base}/snapshots`, token)).json()) as { head: unknown; snapshots: Record<string, unknown>[] };
    expect(list.snapshots).toEqual([
      { id: s2, seq: 2, deviceId: desktop.deviceId, deviceName: 'desktop ✓', time: expect.any(Number), dbBytes: 8192, storedBytes: 2000, newBytes: 1000, packCount: 2, changesetWatermark: 0 },
      { id: s1, seq: 1, deviceId: device.deviceId, deviceName: 'test device', time: expect.any(Number), dbBytes: 4096, storedBytes: 1000, newBytes: 1000, packCount: 1, changesetWatermark: 0 },
    ]);
    expect(list.head).toEqual(list.snapshots[0]);
    expect(await (await get(`${base}/snapshots/head`, token)).json()).toEqual({ head: list.snapshots[0] });
  });
});
