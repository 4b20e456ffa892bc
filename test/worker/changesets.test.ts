// Changeset routes (docs/RELAY-API.md "Changesets") against the real worker
// in workerd: the seq and cursor rules, pulls and their pages, the caps, the
// 404/403 rules, the live announcement, snapshot watermarks and pruning; and
// the client (src/relay/changesets.ts) against it and against a relay that
// lies.
import { randomBytes } from 'node:crypto';
import { WebSocket } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { vaultKeysFromRoot } from '../../src/crypto/kdf.js';
import { IntegrityError } from '../../src/errors.js';
import { ChangesetApi, SeqConflictError } from '../../src/relay/changesets.js';
import { checkChains, openBatch, sealBatch } from '../../src/changesets/batch.js';
import { DeviceSession, RelayClient } from '../../src/relay/client.js';
import {
  b64u,
  bearer,
  commit,
  commitBody,
  enrollDevice,
  errorOf,
  fromB64u,
  getToken,
  post,
  randomHex,
  setupVault,
  sha256Hex,
  startTestRelay,
  uploadManifest,
  type TestDevice,
  chunked,
  refusedEarly,
  revokeBody,
  type TestRelay,
  lyingRelay,
} from '../helpers/relay.js';

const GRACE_MS = 1500;
const DAY = 24 * 60 * 60 * 1000;
const MiB = 1024 * 1024;

let relay: TestRelay;
beforeAll(async () => {
  relay = await startTestRelay({ vars: { PACK_GRACE_MS: String(GRACE_MS) } });
});
afterAll(async () => {
  await relay?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const opaque = (n = 1000): Uint8Array => new Uint8Array(randomBytes(n));

function push(vaultId: string, token: string, seq: number | string | null, body: Uint8Array, sha = sha256Hex(body)): Promise<Response> {
  const headers: Record<string, string> = { ...bearer(token), 'content-type': 'application/octet-stream', 'X-Casa-Sha256': sha };
  if (seq !== null) headers['X-Casa-Seq'] = String(seq);
  return fetch(`${relay.url}/v1/vaults/${vaultId}/changesets`, { method: 'POST', headers, body: body as Uint8Array<ArrayBuffer> });
}

async function pushOk(vaultId: string, token: string, seq: number, body = opaque()): Promise<number> {
  const res = await push(vaultId, token, seq, body);
  if (res.status !== 201) throw new Error(`push: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { cursor: number }).cursor;
}

interface Page {
  changesets: { cursor: number; deviceId: string; seq: number; sha256: string; data: string }[];
  head: number;
  prunedThrough: number;
  more: boolean;
}

async function pull(vaultId: string, token: string, query = 'after=0'): Promise<Page> {
  const res = await fetch(`${relay.url}/v1/vaults/${vaultId}/changesets?${query}`, { headers: bearer(token) });
  if (res.status !== 200) throw new Error(`pull: ${res.status} ${await res.text()}`);
  return (await res.json()) as Page;
}

const get = (url: string, token: string): Promise<Response> => fetch(url, { headers: bearer(token) });

async function r2Keys(prefix: string): Promise<string[]> {
  return (await relay.r2().list({ prefix })).objects.map((o) => o.key);
}

async function rows(vaultId: string): Promise<{ cursor: number; device_id: string; seq: number }[]> {
  const { results } = await relay.vaults().prepare('SELECT cursor, device_id, seq FROM changesets WHERE vault_id = ?1 ORDER BY cursor').bind(vaultId).all<{ cursor: number; device_id: string; seq: number }>();
  return results;
}



describe('push and pull', () => {
  it('stores opaque batches under per-vault cursors and serves them back byte for byte', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const bodies = [opaque(10), opaque(300_000), opaque(5000)];
    for (const [i, body] of bodies.entries()) {
      const res = await push(v, token, i + 1, body);
      expect(res.status).toBe(201);
      expect(res.headers.get('X-Casa-Time')).toMatch(/^\d+$/);
      expect(await res.json()).toEqual({ cursor: i + 1, seq: i + 1 });
    }
    const page = await pull(v, token);
    expect(page).toMatchObject({ head: 3, prunedThrough: 0, more: false });
    expect(page.changesets.map((c) => [c.cursor, c.deviceId, c.seq, c.sha256])).toEqual(bodies.map((b, i) => [i + 1, device.deviceId, i + 1, sha256Hex(b)]));
    expect(page.changesets.map((c) => fromB64u(c.data))).toEqual(bodies);
    expect((await pull(v, token, 'after=2')).changesets.map((c) => c.cursor)).toEqual([3]);
    expect(await pull(v, token, 'after=3')).toEqual({ changesets: [], head: 3, prunedThrough: 0, more: false });
    expect(await pull(v, token, 'after=99')).toEqual({ changesets: [], head: 3, prunedThrough: 0, more: false });
    const heads = await (await get(`${relay.url}/v1/vaults/${v}/changesets/heads`, token)).json();
    expect(heads).toEqual({ head: 3, prunedThrough: 0, devices: [{ deviceId: device.deviceId, seq: 3, cursor: 3 }] });

    // D1 names each blob by a fresh per-upload key; R2 holds exactly what was sent.
    const { results } = await relay.vaults().prepare('SELECT * FROM changesets WHERE vault_id = ?1 ORDER BY cursor').bind(v).all<Record<string, unknown>>();
    expect(Object.keys(results[0]!).sort()).toEqual(['bytes', 'created_at', 'cursor', 'device_id', 'r2_key', 'seq', 'sha256', 'vault_id']);
    for (const [i, r] of results.entries()) {
      expect(r.r2_key).toMatch(new RegExp(`^changesets/${v}/${device.deviceId}/${i + 1}/[0-9a-f]{32}$`));
      expect(r).toMatchObject({ bytes: bodies[i]!.length, sha256: sha256Hex(bodies[i]!) });
      const obj = await relay.r2().get(r.r2_key as string);
      expect(new Uint8Array(await obj!.arrayBuffer())).toEqual(bodies[i]);
    }
    expect(await r2Keys(`changesets/${v}/`)).toHaveLength(3);
  });

  it('gives each vault its own cursors and interleaves devices in one sequence', async () => {
    const a = await setupVault(relay.url);
    const b = await setupVault(relay.url);
    const v = a.vault.vaultId;
    const laptop = await enrollDevice(relay.url, a.vault, 'laptop');
    const laptopToken = await getToken(relay.url, v, laptop);
    expect(await pushOk(v, a.token, 1)).toBe(1);
    expect(await pushOk(b.vault.vaultId, b.token, 1)).toBe(1);
    expect(await pushOk(v, laptopToken, 1)).toBe(2);
    expect(await pushOk(v, a.token, 2)).toBe(3);
    expect(await pushOk(v, laptopToken, 2)).toBe(4);
    expect(await pushOk(b.vault.vaultId, b.token, 2)).toBe(2);
    expect(await rows(v)).toEqual([
      { cursor: 1, device_id: a.device.deviceId, seq: 1 },
      { cursor: 2, device_id: laptop.deviceId, seq: 1 },
      { cursor: 3, device_id: a.device.deviceId, seq: 2 },
      { cursor: 4, device_id: laptop.deviceId, seq: 2 },
    ]);
    const heads = (await (await get(`${relay.url}/v1/vaults/${v}/changesets/heads`, laptopToken)).json()) as { devices: unknown[] };
    expect(heads.devices).toEqual(
      [
        { deviceId: a.device.deviceId, seq: 2, cursor: 3 },
        { deviceId: laptop.deviceId, seq: 2, cursor: 4 },
      ].sort((x, y) => x.deviceId.localeCompare(y.deviceId)),
    );

    // Racing pushes: every cursor given once, consecutive, each device's seqs in cursor order.
    const phone = await enrollDevice(relay.url, a.vault, 'phone');
    const phoneToken = await getToken(relay.url, v, phone);
    const serial = async (token: string, from: number) => {
      for (let seq = from; seq <= 12; seq++) await pushOk(v, token, seq);
    };
    await Promise.all([serial(a.token, 3), serial(laptopToken, 3), serial(phoneToken, 1)]);
    const all = await rows(v);
    expect(all).toHaveLength(36);
    expect(all.map((r) => r.cursor)).toEqual(Array.from({ length: all.length }, (_, i) => i + 1));
    for (const d of [a.device.deviceId, laptop.deviceId, phone.deviceId]) {
      const seqs = all.filter((r) => r.device_id === d).map((r) => r.seq);
      expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    }
  });

  it('enforces the seq rules: first 1, then last + 1; the same batch again is a duplicate', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const conflict = async (res: Response, expectedSeq: number) => {
      expect(res.status).toBe(409);
      expect(await res.json()).toEqual({ error: { code: 'seq_conflict', message: expect.any(String) }, expectedSeq });
    };
    await conflict(await push(v, token, 2, opaque()), 1);
    expect(await r2Keys(`changesets/${v}/`)).toEqual([]);
    expect(await rows(v)).toEqual([]);

    const first = opaque();
    expect(await pushOk(v, token, 1, first)).toBe(1);
    // A retry whose answer was lost: same seq, same bytes.
    const again = await push(v, token, 1, first);
    expect(again.status).toBe(200);
    expect(await again.json()).toEqual({ cursor: 1, seq: 1, duplicate: true });
    // The same seq with other bytes, a repeat of an older seq, a gap: 409 with the seq the relay takes.
    await conflict(await push(v, token, 1, opaque()), 2);
    await conflict(await push(v, token, 3, opaque()), 2);
    expect(await pushOk(v, token, 2)).toBe(2);
    // An older batch sent again is still recognised as what it is.
    expect(await (await push(v, token, 1, first)).json()).toEqual({ cursor: 1, seq: 1, duplicate: true });
    expect(await rows(v)).toEqual([
      { cursor: 1, device_id: device.deviceId, seq: 1 },
      { cursor: 2, device_id: device.deviceId, seq: 2 },
    ]);
    // Refused and duplicate uploads leave no blob behind.
    expect(await r2Keys(`changesets/${v}/`)).toHaveLength(2);

    // Two different batches racing for one seq: exactly one wins.
    const [r1, r2] = await Promise.all([push(v, token, 3, opaque()), push(v, token, 3, opaque())]);
    expect([r1.status, r2.status].sort()).toEqual([201, 409]);
    expect(await r2Keys(`changesets/${v}/`)).toHaveLength(3);

    for (const seq of [null, '0', '01', '-1', 'x', '1.5', '99999999999999999']) {
      expect(await errorOf(await push(v, token, seq, opaque()))).toEqual({ status: 400, code: 'bad_request' });
    }
  });

  it('pages with limit and more, and never passes ~8 MiB of data in one answer (but always sends one batch)', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    for (let seq = 1; seq <= 7; seq++) await pushOk(v, token, seq, opaque(100));
    const seen: number[] = [];
    let after = 0;
    for (;;) {
      const page = await pull(v, token, `after=${after}&limit=3`);
      expect(page.changesets.length).toBeLessThanOrEqual(3);
      seen.push(...page.changesets.map((c) => c.cursor));
      expect(page.head).toBe(7);
      if (!page.more) break;
      after = page.changesets[page.changesets.length - 1]!.cursor;
    }
    expect(seen).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect((await pull(v, token, 'limit=500')).changesets).toHaveLength(7);
    for (const q of ['after=-1', 'after=x', 'after=1.5', 'limit=0', 'limit=501', 'limit=', 'after=99999999999999999']) {
      expect(await errorOf(await get(`${relay.url}/v1/vaults/${v}/changesets?${q}`, token))).toEqual({ status: 400, code: 'bad_request' });
    }

    const big = await setupVault(relay.url);
    for (let seq = 1; seq <= 3; seq++) await pushOk(big.vault.vaultId, big.token, seq, opaque(3 * MiB));
    await pushOk(big.vault.vaultId, big.token, 4, opaque(8 * MiB));
    const p1 = await pull(big.vault.vaultId, big.token);
    expect(p1.changesets.map((c) => c.cursor)).toEqual([1, 2]); // a third would pass 8 MiB
    expect(p1.more).toBe(true);
    expect((await pull(big.vault.vaultId, big.token, 'after=2')).changesets.map((c) => c.cursor)).toEqual([3]);
    const p4 = await pull(big.vault.vaultId, big.token, 'after=3');
    expect(p4.changesets.map((c) => c.cursor)).toEqual([4]);
    expect(p4.more).toBe(false);
  });

  it('answers 503 storage_inconsistent when a row names a blob R2 lost', async () => {
    const { vault, token } = await setupVault(relay.url);
    await pushOk(vault.vaultId, token, 1);
    const { r2_key } = (await relay.vaults().prepare('SELECT r2_key FROM changesets WHERE vault_id = ?1').bind(vault.vaultId).first<{ r2_key: string }>())!;
    await relay.r2().delete(r2_key);
    expect(await errorOf(await get(`${relay.url}/v1/vaults/${vault.vaultId}/changesets?after=0`, token))).toEqual({ status: 503, code: 'storage_inconsistent' });
  });
});

describe('uploads and access', () => {
  it('refuses a body over 8 MiB with 413, declared or counted, storing nothing; exactly 8 MiB is fine', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const big = new Uint8Array(8 * MiB + 1);
    const url = `${relay.url}/v1/vaults/${v}/changesets`;
    const headers = { ...bearer(token), 'X-Casa-Sha256': sha256Hex(big), 'X-Casa-Seq': '1' };
    expect(await refusedEarly(url, { method: 'POST', headers, body: big, declared: true })).toEqual({ status: 413, code: 'too_large' });
    expect(await refusedEarly(url, { method: 'POST', headers, body: big, declared: false })).toEqual({ status: 413, code: 'too_large' });
    expect(await r2Keys(`changesets/${v}/`)).toEqual([]);
    expect(await rows(v)).toEqual([]);
    expect(await pushOk(v, token, 1, big.subarray(0, 8 * MiB))).toBe(1);
  });

  it('refuses a body that does not match X-Casa-Sha256 (400), storing nothing and keeping the seq free', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const body = opaque(20_000);
    expect(await errorOf(await push(v, token, 1, body, sha256Hex(opaque(5))))).toEqual({ status: 400, code: 'bad_request' });
    const res = await fetch(`${relay.url}/v1/vaults/${v}/changesets`, {
      method: 'POST',
      headers: { ...bearer(token), 'X-Casa-Sha256': sha256Hex(opaque(5)), 'X-Casa-Seq': '1' },
      body: chunked(body),
      duplex: 'half',
    } as RequestInit);
    expect(await errorOf(res)).toEqual({ status: 400, code: 'bad_request' });
    for (const sha of ['', 'abc', 'g'.repeat(64)]) expect(await errorOf(await push(v, token, 1, body, sha))).toEqual({ status: 400, code: 'bad_request' });
    expect(await errorOf(await push(v, token, 1, new Uint8Array(0)))).toEqual({ status: 400, code: 'bad_request' });
    expect(await r2Keys(`changesets/${v}/`)).toEqual([]);
    expect(await rows(v)).toEqual([]);
    expect(await relay.vaults().prepare('SELECT 1 FROM changeset_devices WHERE vault_id = ?1').bind(v).first()).toBeNull();
    expect(await pushOk(v, token, 1, body)).toBe(1);
  });

  it("answers another vault's changesets exactly like a nonexistent vault's (404), and a revoked device 403", async () => {
    const a = await setupVault(relay.url);
    const b = await setupVault(relay.url);
    await pushOk(b.vault.vaultId, b.token, 1);
    const expected = '{"error":{"code":"not_found","message":"not found"}}';
    for (const vaultId of [b.vault.vaultId, randomHex(16)]) {
      for (const res of [
        await push(vaultId, a.token, 2, opaque()),
        await get(`${relay.url}/v1/vaults/${vaultId}/changesets?after=0`, a.token),
        await get(`${relay.url}/v1/vaults/${vaultId}/changesets/heads`, a.token),
      ]) {
        expect([res.status, await res.text()]).toEqual([404, expected]);
      }
    }
    expect((await pull(b.vault.vaultId, b.token)).head).toBe(1); // B untouched

    const old = await enrollDevice(relay.url, a.vault, 'old phone');
    const oldToken = await getToken(relay.url, a.vault.vaultId, old);
    await pushOk(a.vault.vaultId, oldToken, 1);
    expect((await post(`${relay.url}/v1/vaults/${a.vault.vaultId}/devices/${old.deviceId}/revoke`, revokeBody(a.vault, old.deviceId), bearer(a.token))).status).toBe(200);
    for (const res of [
      await push(a.vault.vaultId, oldToken, 2, opaque()),
      await get(`${relay.url}/v1/vaults/${a.vault.vaultId}/changesets?after=0`, oldToken),
      await get(`${relay.url}/v1/vaults/${a.vault.vaultId}/changesets/heads`, oldToken),
    ]) {
      expect(await errorOf(res)).toEqual({ status: 403, code: 'device_revoked' });
    }
    expect(await rows(a.vault.vaultId)).toEqual([{ cursor: 1, device_id: old.deviceId, seq: 1 }]);
    // Its batches stay readable to the others.
    expect((await pull(a.vault.vaultId, a.token)).changesets).toHaveLength(1);
    expect(await errorOf(await fetch(`${relay.url}/v1/vaults/${a.vault.vaultId}/changesets`, { method: 'POST', body: 'x' }))).toEqual({ status: 401, code: 'unauthorized' });
  });
});

describe('live', () => {
  it('announces each new batch on the vault socket (not a duplicate or refused one)', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const ws = new WebSocket(`${relay.url.replace('http', 'ws')}/v1/vaults/${vault.vaultId}/live`);
    ws.addEventListener('open', () => ws.send(JSON.stringify({ type: 'auth', token })));
    const messages: Record<string, unknown>[] = [];
    const waiters: (() => void)[] = [];
    ws.addEventListener('message', (ev) => {
      messages.push(JSON.parse(String(ev.data)));
      waiters.splice(0).forEach((w) => w());
    });
    const waitFor = (n: number) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${n} messages`)), 5000);
        const check = () => (messages.length >= n ? (clearTimeout(timer), resolve()) : waiters.push(check));
        check();
      });
    try {
      await waitFor(1);
      expect(messages[0]).toMatchObject({ type: 'hello' });
      const body = opaque();
      await pushOk(vault.vaultId, token, 1, body);
      await waitFor(2);
      expect(messages[1]).toEqual({ type: 'announce', kind: 'changeset', cursor: 1, deviceId: device.deviceId, seq: 1 });
      expect((await push(vault.vaultId, token, 1, body)).status).toBe(200);
      expect((await push(vault.vaultId, token, 5, body)).status).toBe(409);
      await pushOk(vault.vaultId, token, 2);
      await waitFor(3);
      expect(messages[2]).toMatchObject({ kind: 'changeset', cursor: 2, seq: 2 });
      expect(messages).toHaveLength(3);
    } finally {
      ws.close();
    }
  });
});

describe('snapshot watermarks and pruning', () => {
  async function commitWith(vaultId: string, token: string, seq: number, changesetWatermark: unknown): Promise<Response> {
    const sid = randomHex(16);
    await uploadManifest(relay.url, vaultId, token, sid);
    return commit(relay.url, vaultId, token, { ...commitBody(sid, seq, []), changesetWatermark });
  }

  const listed = async (vaultId: string, token: string) =>
    ((await (await get(`${relay.url}/v1/vaults/${vaultId}/snapshots`, token)).json()) as { snapshots: { seq: number; changesetWatermark: number }[] }).snapshots;

  it('takes an optional watermark up to the head and shows it', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    expect(await errorOf(await commitWith(v, token, 1, 1))).toEqual({ status: 400, code: 'bad_request' }); // no changeset yet
    for (let seq = 1; seq <= 3; seq++) await pushOk(v, token, seq);
    for (const bad of [4, -1, 1.5, '2', null]) expect(await errorOf(await commitWith(v, token, 1, bad))).toEqual({ status: 400, code: 'bad_request' });
    expect((await commitWith(v, token, 1, 3)).status).toBe(201);
    expect((await commitWith(v, token, 2, undefined)).status).toBe(201); // omitted: 0
    expect((await listed(v, token)).map((s) => [s.seq, s.changesetWatermark])).toEqual([[2, 0], [1, 3]]);
    const head = (await (await get(`${relay.url}/v1/vaults/${v}/snapshots/head`, token)).json()) as { head: { changesetWatermark: number } };
    expect(head.head.changesetWatermark).toBe(0);
  });

  it('prunes only what every retained snapshot covers, reports prunedThrough, deletes the blobs, and keeps numbering', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    for (let seq = 1; seq <= 6; seq++) await pushOk(v, token, seq);
    const keyOf = async () => new Map((await relay.vaults().prepare('SELECT cursor, r2_key FROM changesets WHERE vault_id = ?1').bind(v).all<{ cursor: number; r2_key: string }>()).results.map((r) => [r.cursor, r.r2_key]));
    const keys = await keyOf();
    // No snapshot: nothing is covered.
    await relay.runCron();
    expect((await rows(v)).length).toBe(6);

    expect((await commitWith(v, token, 1, 2)).status).toBe(201);
    expect((await commitWith(v, token, 2, 4)).status).toBe(201);
    // Covered, but received inside the retention window (30 days): nothing goes yet.
    await relay.runCron();
    expect((await rows(v)).length).toBe(6);
    // As the relay would hold them 40 days on (its own arrival times; the snapshots' commit times on one day).
    const old = Math.floor((Date.now() - 40 * DAY) / DAY) * DAY;
    await relay.vaults().prepare('UPDATE changesets SET created_at = ?2 WHERE vault_id = ?1').bind(v, old).run();
    const committedOn = (seq: number) =>
      relay.vaults().prepare('UPDATE snapshots SET time = ?3 WHERE vault_id = ?1 AND seq = ?2').bind(v, seq, old + seq * 60_000).run();
    await relay.runCron();
    expect((await rows(v)).map((r) => r.cursor)).toEqual([3, 4, 5, 6]); // min(2, 4)
    for (const c of [1, 2]) expect(await relay.r2().head(keys.get(c)!)).toBeNull();
    for (const c of [3, 4, 5, 6]) expect(await relay.r2().head(keys.get(c)!)).not.toBeNull();
    const page = await pull(v, token);
    expect(page).toMatchObject({ head: 6, prunedThrough: 2, more: false });
    expect(page.changesets.map((c) => c.cursor)).toEqual([3, 4, 5, 6]);
    expect(await (await get(`${relay.url}/v1/vaults/${v}/changesets/heads`, token)).json()).toEqual({ head: 6, prunedThrough: 2, devices: [{ deviceId: device.deviceId, seq: 6, cursor: 6 }] });

    // Idempotent.
    await relay.runCron();
    expect((await rows(v)).map((r) => r.cursor)).toEqual([3, 4, 5, 6]);

    // Snapshots 1 and 2 committed on one day beyond the window, and a third: the day keeps only 2, so min(4, 6) = 4.
    expect((await commitWith(v, token, 3, 6)).status).toBe(201);
    await committedOn(1);
    await committedOn(2);
    await relay.runCron();
    expect((await listed(v, token)).map((s) => s.seq)).toEqual([3, 2]);
    expect((await rows(v)).map((r) => r.cursor)).toEqual([5, 6]);
    expect((await pull(v, token)).prunedThrough).toBe(4);

    // Everything pruned once 2 goes too (3 joins its day): cursors and seqs go on, never start over.
    expect((await commitWith(v, token, 4, 6)).status).toBe(201);
    await committedOn(3);
    await relay.runCron();
    expect((await listed(v, token)).map((s) => s.seq)).toEqual([4, 3]);
    expect(await rows(v)).toEqual([]);
    expect(await pull(v, token)).toEqual({ changesets: [], head: 6, prunedThrough: 6, more: false });
    expect(await r2Keys(`changesets/${v}/`)).toEqual([]);
    expect(await errorOf(await push(v, token, 1, opaque()))).toEqual({ status: 409, code: 'seq_conflict' });
    expect(await pushOk(v, token, 7)).toBe(7);
    expect((await pull(v, token, 'after=6')).changesets.map((c) => [c.cursor, c.seq])).toEqual([[7, 7]]);
  });

  it('sweeps changeset blobs no row names once they are older than the grace period', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    await pushOk(v, token, 1);
    const [named] = await r2Keys(`changesets/${v}/`);
    const orphan = `changesets/${v}/${device.deviceId}/2/${randomHex(16)}`;
    await relay.r2().put(orphan, new Uint8Array([1, 2, 3]));
    await relay.runCron();
    expect(await relay.r2().head(orphan)).not.toBeNull(); // within the grace period
    await sleep(GRACE_MS + 200);
    await relay.runCron();
    expect(await relay.r2().head(orphan)).toBeNull();
    expect(await relay.r2().head(named!)).not.toBeNull();
    expect((await pull(v, token)).changesets).toHaveLength(1);
  });
});

describe('the client (src/relay/changesets.ts)', () => {
  const keys = vaultKeysFromRoot(new Uint8Array(32).fill(9));
  const random = (n: number) => new Uint8Array(randomBytes(n));

  function session(vaultId: string, d: TestDevice): DeviceSession {
    return new DeviceSession(new RelayClient(relay.url), vaultId, d.deviceId, d.secret);
  }

  it('pushes sealed batches and pulls them back; the relay holds no plaintext', async () => {
    const { vault, device } = await setupVault(relay.url);
    const v = vault.vaultId;
    // The batches are sealed under a vault key the relay never sees (its vault id only names the AD here).
    const k = { ...keys, vaultId: v };
    const api = new ChangesetApi(session(v, device));
    const marker = 'SECRET-LEDGER-LINE rent -950.00 EUR';
    const batches: { seq: number; bytes: Uint8Array; hash: string }[] = [];
    let prev = '';
    for (let seq = 1; seq <= 3; seq++) {
      const sealed = sealBatch(k, { deviceId: device.deviceId, seq, prev, schema: 'fp1', count: 1, time: Date.now() }, new TextEncoder().encode(`${marker} #${seq}\n`.repeat(50)), random);
      batches.push({ seq, ...sealed });
      prev = sealed.hash;
      expect(await api.push(seq, sealed.bytes)).toEqual({ cursor: seq, duplicate: false });
    }
    expect(await api.push(3, batches[2]!.bytes)).toEqual({ cursor: 3, duplicate: true });
    const err = await api.push(5, batches[2]!.bytes).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SeqConflictError);
    expect(err).toMatchObject({ seq: 5, expectedSeq: 4, exitCode: 3 });

    const page = await api.pull(0, { limit: 2 });
    expect(page).toMatchObject({ head: 3, prunedThrough: 0, more: true });
    const rest = await api.pull(2);
    expect(rest.more).toBe(false);
    const all = [...page.changesets, ...rest.changesets];
    expect(all.map((c) => c.bytes)).toEqual(batches.map((b) => b.bytes));
    const opened = all.map((c) => openBatch(k, { deviceId: c.deviceId, seq: c.seq }, c.bytes, null));
    expect(opened.map((o) => new TextDecoder().decode(o.body).split('\n')[0])).toEqual([1, 2, 3].map((i) => `${marker} #${i}`));
    expect(checkChains(new Map(), all.map((c, i) => ({ deviceId: c.deviceId, seq: c.seq, prev: opened[i]!.header.prev, hash: opened[i]!.hash }))).steps).toEqual(['next', 'next', 'next']);
    expect(await api.heads()).toEqual({ head: 3, prunedThrough: 0, devices: [{ deviceId: device.deviceId, seq: 3, cursor: 3 }] });

    // Nothing the relay stores shows the plaintext.
    const needle = Buffer.from('SECRET-LEDGER');
    for (const o of (await relay.r2().list({ prefix: `changesets/${v}/` })).objects) {
      expect(Buffer.from(await (await relay.r2().get(o.key))!.arrayBuffer()).includes(needle)).toBe(false);
    }
    const dump = JSON.stringify((await relay.vaults().prepare('SELECT * FROM changesets WHERE vault_id = ?1').bind(v).all()).results);
    expect(dump).not.toContain('SECRET');
  });

  describe('against a relay that lies', () => {
    const liar = lyingRelay();

    const api = () => new ChangesetApi(new DeviceSession(new RelayClient(liar.url()), randomHex(16), randomHex(8), new Uint8Array(32).fill(1)));
    const item = (cursor: number, data = opaque(40)) => ({ cursor, deviceId: randomHex(8), seq: 1, sha256: sha256Hex(data), data: b64u(data) });

    it('accepts a well-formed answer', async () => {
      liar.answer = { changesets: [item(3), item(4)], head: 5, prunedThrough: 0, more: true };
      expect((await api().pull(2)).changesets.map((c) => c.cursor)).toEqual([3, 4]);
      liar.answer = { changesets: [item(5)], head: 5, prunedThrough: 4, more: false };
      expect((await api().pull(2)).prunedThrough).toBe(4); // starts after what was pruned
    });

    it('refuses holes, repeats, sha mismatches, bad encodings and inconsistent totals', async () => {
      const data = opaque(40);
      for (const bad of [
        { changesets: [item(3), item(5)], head: 5, prunedThrough: 0, more: false }, // a batch withheld
        { changesets: [item(2), item(3)], head: 3, prunedThrough: 0, more: false }, // not after `after`
        { changesets: [item(3), item(3)], head: 3, prunedThrough: 0, more: false },
        { changesets: [item(3)], head: 2, prunedThrough: 0, more: false }, // past the head
        { changesets: [item(3)], head: 4, prunedThrough: 0, more: false }, // more left but says none
        { changesets: [item(3)], head: 3, prunedThrough: 0, more: true },
        { changesets: [], head: 4, prunedThrough: 0, more: false }, // everything withheld
        { changesets: [{ ...item(3), sha256: sha256Hex(opaque(3)) }], head: 3, prunedThrough: 0, more: false },
        { changesets: [{ ...item(3, data), data: b64u(data) + '=' }], head: 3, prunedThrough: 0, more: false },
        { changesets: [{ ...item(3), deviceId: 'X' }], head: 3, prunedThrough: 0, more: false },
        { changesets: [{ ...item(3), seq: 0 }], head: 3, prunedThrough: 0, more: false },
        { changesets: [], head: 2, prunedThrough: 3, more: false },
        { changesets: [], head: '2', prunedThrough: 0, more: false },
        { changesets: {}, head: 2, prunedThrough: 0, more: false },
      ]) {
        liar.answer = bad;
        const err = await api().pull(2).catch((e: unknown) => e);
        expect(err, JSON.stringify(bad).slice(0, 200)).toBeInstanceOf(IntegrityError);
      }
      liar.answer = { head: 3, prunedThrough: 0, devices: [{ deviceId: randomHex(8), seq: 1, cursor: 4 }] };
      expect(await api().heads().catch((e: unknown) => e)).toBeInstanceOf(IntegrityError);
      liar.answer = { cursor: 0, seq: 1 };
      expect(await api().push(1, opaque()).catch((e: unknown) => e)).toBeInstanceOf(IntegrityError);
    });
  });
});
