// Retention (docs/RELAY-API.md "Retention", worker/cron.ts) against the real
// worker in workerd, with wrangler.jsonc's window (30 days) and a short grace
// period: what is kept, what goes and when, idempotence, the cron racing
// commits; retention by age (docs/SECURITY.md §4.7): nothing one device
// commits pushes out what is inside the window, the thinning beyond it, the
// head, and changesets inside the window whatever the watermarks claim.
//
// The worker runs the scheduled handler at its own Date.now(), so time is
// moved by backdating what the relay recorded (snapshots.time,
// changesets.created_at, packs.touched_at) in D1, as a relay that has been
// running for months would hold it.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bearer,
  commit,
  commitBody,
  commitSnapshot,
  enrollDevice,
  getToken,
  post,
  randomHex,
  setupVault,
  sha256Hex,
  startTestRelay,
  uploadManifest,
  uploadPack,
  type TestRelay,
} from '../helpers/relay.js';

// Long enough that the set-up before the first cron run stays inside it on a slow machine.
const GRACE_MS = 4000;

let relay: TestRelay;
beforeAll(async () => {
  relay = await startTestRelay({ vars: { PACK_GRACE_MS: String(GRACE_MS) } });
});
afterAll(async () => {
  await relay?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const HOUR = 60 * 60 * 1000;
const DAY = 24 * HOUR;
/** Midnight UTC of the day of `t`. */
const dayStart = (t: number): number => Math.floor(t / DAY) * DAY;

/** Sets the relay's commit time of snapshot `seq`, as if it had been committed then. */
async function setTime(vaultId: string, seq: number, time: number): Promise<void> {
  const res = await relay.vaults().prepare('UPDATE snapshots SET time = ?3 WHERE vault_id = ?1 AND seq = ?2').bind(vaultId, seq, time).run();
  expect(res.meta.changes).toBe(1);
}

async function packRows(vaultId: string): Promise<Map<string, string>> {
  const { results } = await relay.vaults().prepare('SELECT id, r2_key FROM packs WHERE vault_id = ?1').bind(vaultId).all<{ id: string; r2_key: string }>();
  return new Map(results.map((r) => [r.id, r.r2_key]));
}

async function r2Has(key: string): Promise<boolean> {
  return (await relay.r2().head(key)) !== null;
}

async function seqs(vaultId: string): Promise<number[]> {
  const { results } = await relay.vaults().prepare('SELECT seq FROM snapshots WHERE vault_id = ?1 ORDER BY seq').bind(vaultId).all<{ seq: number }>();
  return results.map((r) => r.seq);
}

/** Everything D1 and R2 hold for the vault, for comparing runs. */
async function state(vaultId: string): Promise<unknown> {
  const d1 = relay.vaults();
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
    .vaults()
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
  it('keeps the newest snapshot of an old day and its packs; deletes the rest only after the grace period; idempotent', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const shared = await uploadPack(relay.url, v, token);
    const own: string[] = [];
    const manifestKeys: string[] = [];
    for (let seq = 1; seq <= 5; seq++) {
      own.push(await uploadPack(relay.url, v, token));
      const sid = await commitSnapshot(relay.url, v, token, seq, [shared, own[seq - 1]!]);
      manifestKeys.push((await relay.vaults().prepare('SELECT manifest_key FROM snapshots WHERE id = ?1').bind(sid).first<{ manifest_key: string }>())!.manifest_key);
    }
    const uncommitted = await uploadPack(relay.url, v, token);
    const pendingSid = randomHex(16);
    await uploadManifest(relay.url, v, token, pendingSid);
    // Orphans of interrupted uploads: blobs no row names.
    const orphans = [`packs/${v}/${randomHex(32)}/${randomHex(16)}`, `manifests/${v}/${randomHex(16)}/${randomHex(16)}`];
    for (const key of orphans) await relay.r2().put(key, new Uint8Array([1, 2, 3]));
    const keysOf = await packRows(v);

    // Snapshots 1 to 3 were committed on one day 40 days ago (beyond the window): 3, the newest of that day, stays.
    const old = dayStart(Date.now() - 40 * DAY);
    for (const seq of [1, 2, 3]) await setTime(v, seq, old + seq * HOUR);

    // Within the grace period: old snapshots go, but no pack and no blob.
    await relay.runCron();
    expect(await seqs(v)).toEqual([3, 4, 5]);
    for (const key of manifestKeys.slice(0, 2)) expect(await r2Has(key)).toBe(false);
    for (const key of manifestKeys.slice(2)) expect(await r2Has(key)).toBe(true);
    expect((await relay.vaults().prepare('SELECT COUNT(*) AS n FROM snapshot_packs WHERE vault_id = ?1').bind(v).first())!.n).toBe(6);
    expect([...(await packRows(v)).keys()].sort()).toEqual([shared, ...own, uncommitted].sort());
    for (const key of orphans) expect(await r2Has(key)).toBe(true);
    expect(await relay.vaults().prepare('SELECT 1 FROM manifest_uploads WHERE snapshot_id = ?1').bind(pendingSid).first()).not.toBeNull();

    // After it: the dropped snapshots' own packs, the uncommitted pack, the pending manifest and the orphans go.
    await sleep(GRACE_MS + 200);
    await relay.runCron();
    const kept = [shared, ...own.slice(2)];
    expect([...(await packRows(v)).keys()].sort()).toEqual([...kept].sort());
    for (const id of kept) expect(await r2Has(keysOf.get(id)!)).toBe(true);
    for (const id of [...own.slice(0, 2), uncommitted]) expect(await r2Has(keysOf.get(id)!)).toBe(false);
    for (const key of orphans) expect(await r2Has(key)).toBe(false);
    expect(await relay.vaults().prepare('SELECT 1 FROM manifest_uploads WHERE snapshot_id = ?1').bind(pendingSid).first()).toBeNull();
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
    expect(await seqs(v)).toEqual([3, 4, 5, 6]); // 6 is inside the window: nothing moved
    await setTime(v, 4, old + 4 * HOUR); // 4 joins 1 to 3's day, and is its newest now
    await relay.runCron();
    expect(await seqs(v)).toEqual([4, 5, 6]);
    await expectReferencesIntact(v);
  });

  it('never lets a committed snapshot reference a missing pack, nor drops the head, while the cron races uploads and commits', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const old = dayStart(Date.now() - 40 * DAY);
    let head = 0;
    const outcomes = { committed: 0, missingPacks: 0 };
    for (let i = 0; i < 36; i++) {
      // An old pack nothing references (past its grace period), and a fresh one.
      const old = await uploadPack(relay.url, v, token);
      await relay.vaults().prepare('UPDATE packs SET touched_at = 0 WHERE vault_id = ?1 AND id = ?2').bind(v, old).run();
      const fresh = await uploadPack(relay.url, v, token, new Uint8Array(randomBytes(2000)));
      const sid = randomHex(16);
      await uploadManifest(relay.url, v, token, sid);
      // Every snapshot so far was committed on one day beyond the window: the cron thins them to the head as we commit.
      await relay.vaults().prepare('UPDATE snapshots SET time = ?2 + seq WHERE vault_id = ?1').bind(v, old).run();
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
      if (head > 0) expect((await seqs(v)).at(-1)).toBe(head);
    }
    expect(outcomes.committed).toBeGreaterThan(0);
    expect(outcomes.committed + outcomes.missingPacks).toBe(36);
    // Once more with nothing racing: still intact, the head alone left of that day.
    await relay.vaults().prepare('UPDATE snapshots SET time = ?2 + seq WHERE vault_id = ?1').bind(v, old).run();
    await relay.runCron();
    await expectReferencesIntact(v);
    expect(await seqs(v)).toEqual([head]);
  });

  it('leaves a re-uploaded pack alone when an older upload of it is deleted', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const data = new Uint8Array([4, 5, 6]);
    const packId = await uploadPack(relay.url, v, token, data);
    const firstKey = (await packRows(v)).get(packId)!;
    await relay.vaults().prepare('UPDATE packs SET touched_at = 0 WHERE vault_id = ?1').bind(v).run();
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

describe('retention by age (docs/SECURITY.md §4.7)', () => {
  const opaque = (n = 300): Uint8Array => new Uint8Array(randomBytes(n));

  async function pushChangeset(vaultId: string, token: string, seq: number): Promise<number> {
    const body = opaque();
    const res = await fetch(`${relay.url}/v1/vaults/${vaultId}/changesets`, {
      method: 'POST',
      headers: { ...bearer(token), 'content-type': 'application/octet-stream', 'X-Casa-Sha256': sha256Hex(body), 'X-Casa-Seq': String(seq) },
      body,
    });
    if (res.status !== 201) throw new Error(`push: ${res.status} ${await res.text()}`);
    return ((await res.json()) as { cursor: number }).cursor;
  }

  /** Commits snapshot `seq` over `packs` claiming `changesetWatermark`; returns its id. */
  async function commitWith(vaultId: string, token: string, seq: number, packs: string[], changesetWatermark: number): Promise<string> {
    const sid = randomHex(16);
    await uploadManifest(relay.url, vaultId, token, sid);
    const res = await commit(relay.url, vaultId, token, { ...commitBody(sid, seq, packs), changesetWatermark });
    if (res.status !== 201) throw new Error(`commit: ${res.status} ${await res.text()}`);
    return sid;
  }

  async function cursors(vaultId: string): Promise<number[]> {
    const { results } = await relay.vaults().prepare('SELECT cursor FROM changesets WHERE vault_id = ?1 ORDER BY cursor').bind(vaultId).all<{ cursor: number }>();
    return results.map((r) => r.cursor);
  }

  async function prunedThrough(vaultId: string, token: string): Promise<number> {
    const res = await fetch(`${relay.url}/v1/vaults/${vaultId}/changesets/heads`, { headers: bearer(token) });
    return ((await res.json()) as { prunedThrough: number }).prunedThrough;
  }

  const received = (vaultId: string, time: number, upTo = Number.MAX_SAFE_INTEGER) =>
    relay.vaults().prepare('UPDATE changesets SET created_at = ?2 WHERE vault_id = ?1 AND cursor <= ?3').bind(vaultId, time, upTo).run();

  it('keeps what another device committed inside the window, and its packs, after 40 commits from one device', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const thief = await enrollDevice(relay.url, vault, 'stolen laptop');
    const thiefToken = await getToken(relay.url, v, thief);

    // The real device: 5 changesets, then a snapshot that includes the first 2, over two packs of its own.
    for (let seq = 1; seq <= 5; seq++) await pushChangeset(v, token, seq);
    const realPacks = [await uploadPack(relay.url, v, token), await uploadPack(relay.url, v, token)];
    const realSid = await commitWith(v, token, 1, realPacks, 2);
    await setTime(v, 1, Date.now() - 10 * DAY); // ten days ago: older than everything else, inside the window

    // The compromised device: 40 junk snapshots, each over a pack of its own, each claiming every changeset.
    for (let seq = 2; seq <= 41; seq++) await commitWith(v, thiefToken, seq, [await uploadPack(relay.url, v, thiefToken)], 5);
    // No pack is protected by its grace period any more: only references keep them.
    await relay.vaults().prepare('UPDATE packs SET touched_at = 0 WHERE vault_id = ?1').bind(v).run();
    const keysOf = await packRows(v);

    await relay.runCron();
    expect(await seqs(v)).toEqual(Array.from({ length: 41 }, (_, i) => i + 1));
    const real = await relay.vaults().prepare('SELECT device_id, manifest_key FROM snapshots WHERE vault_id = ?1 AND id = ?2').bind(v, realSid).first<{ device_id: string; manifest_key: string }>();
    expect(real?.device_id).toBe(device.deviceId);
    expect(await r2Has(real!.manifest_key)).toBe(true);
    for (const id of realPacks) {
      expect(await r2Has(keysOf.get(id)!), `pack ${id}`).toBe(true);
      expect((await fetch(`${relay.url}/v1/vaults/${v}/packs/${id}`, { headers: bearer(token) })).status).toBe(200);
    }
    expect((await fetch(`${relay.url}/v1/vaults/${v}/snapshots/${realSid}/manifest`, { headers: bearer(token) })).status).toBe(200);
    await expectReferencesIntact(v);
    // Every changeset arrived inside the window: none goes, although 40 of 41 snapshots claim all of them.
    expect(await cursors(v)).toEqual([1, 2, 3, 4, 5]);
    expect(await prunedThrough(v, token)).toBe(0);

    // Forty days later, as the relay saw it: the real snapshot alone on its day, the junk on another.
    const realDay = dayStart(Date.now() - 45 * DAY);
    const junkDay = dayStart(Date.now() - 40 * DAY);
    await setTime(v, 1, realDay + 12 * HOUR);
    for (let seq = 2; seq <= 41; seq++) await setTime(v, seq, junkDay + seq * 60_000);
    await received(v, realDay);
    await relay.runCron();
    // The junk is thinned to its day's newest (also the head); the real snapshot stays, with its packs.
    expect(await seqs(v)).toEqual([1, 41]);
    for (const id of realPacks) expect(await r2Has(keysOf.get(id)!)).toBe(true);
    await expectReferencesIntact(v);
    // Old changesets go only as far as every retained snapshot covers them: the real one claims 2.
    expect(await cursors(v)).toEqual([3, 4, 5]);
    expect(await prunedThrough(v, token)).toBe(2);
  });

  it('never prunes a changeset received inside the window, whatever every snapshot claims', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    for (let seq = 1; seq <= 5; seq++) await pushChangeset(v, token, seq);
    // Every snapshot claims the head, and is itself old: only the window protects the batches.
    for (let seq = 1; seq <= 3; seq++) await commitWith(v, token, seq, [], 5);
    const old = dayStart(Date.now() - 200 * DAY);
    for (let seq = 1; seq <= 3; seq++) await setTime(v, seq, old + seq * HOUR);
    const keys = new Map((await relay.vaults().prepare('SELECT cursor, r2_key FROM changesets WHERE vault_id = ?1').bind(v).all<{ cursor: number; r2_key: string }>()).results.map((r) => [r.cursor, r.r2_key]));

    await relay.runCron();
    expect(await seqs(v)).toEqual([3]); // thinned to the head
    expect(await cursors(v)).toEqual([1, 2, 3, 4, 5]);
    for (const key of keys.values()) expect(await r2Has(key)).toBe(true);
    expect(await prunedThrough(v, token)).toBe(0);

    // Batches 1 to 3 arrived 31 days ago (4 and 5 just now): those go, with their blobs.
    await received(v, Date.now() - 31 * DAY, 3);
    await relay.runCron();
    expect(await cursors(v)).toEqual([4, 5]);
    for (const c of [1, 2, 3]) expect(await r2Has(keys.get(c)!)).toBe(false);
    for (const c of [4, 5]) expect(await r2Has(keys.get(c)!)).toBe(true);
    expect(await prunedThrough(v, token)).toBe(3);

    // Batch 5 old, batch 4 not: nothing after a protected batch goes either (the rest is always everything after prunedThrough).
    await relay.vaults().prepare('UPDATE changesets SET created_at = 0 WHERE vault_id = ?1 AND cursor = 5').bind(v).run();
    await relay.runCron();
    expect(await cursors(v)).toEqual([4, 5]);
    expect(await prunedThrough(v, token)).toBe(3);
  });

  it('thins beyond the window to one per day, then per ISO week, then per month; idempotent', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const now = Date.now();
    const month = new Date(now - 500 * DAY);
    const [y, m] = [month.getUTCFullYear(), month.getUTCMonth()];
    const day = Math.floor((now - 150 * DAY) / DAY);
    const monday = (day - ((day + 3) % 7)) * DAY; // day 0, 1 January 1970, was a Thursday
    const d40 = dayStart(now - 40 * DAY);
    // In commit (seq) order, oldest first; `false`: thinned out.
    const plan: [string, number, boolean][] = [
      ['the month before', Date.UTC(y, m - 1, 5, 12), true],
      ['a month, early', Date.UTC(y, m, 3, 12), false],
      ['the same month, later', Date.UTC(y, m, 20, 12), true],
      ['the Saturday before a week', monday - 2 * DAY + 12 * HOUR, true],
      ["that week's Tuesday", monday + 1 * DAY + 12 * HOUR, false],
      ["that week's Friday", monday + 4 * DAY + 12 * HOUR, true],
      ['a day, 02:00', d40 + 2 * HOUR, false],
      ['the same day, 20:00', d40 + 20 * HOUR, true],
      ['20 days ago', now - 20 * DAY, true],
      ['a day ago, 1', now - DAY, true],
      ['a day ago, 2', now - DAY + 60_000, true],
    ];
    const packs: string[] = [];
    for (const [i, [, time]] of plan.entries()) {
      packs.push(await uploadPack(relay.url, v, token));
      await commitWith(v, token, i + 1, [packs[i]!], 0);
      await setTime(v, i + 1, time);
    }
    const head = plan.length + 1;
    await commitSnapshot(relay.url, v, token, head, []); // now
    const kept = [...plan.flatMap(([, , keep], i) => (keep ? [i + 1] : [])), head];

    await relay.runCron();
    expect(await seqs(v)).toEqual(kept);
    await expectReferencesIntact(v);
    const before = await state(v);
    await relay.runCron();
    expect(await state(v)).toEqual(before);

    // The thinned snapshots' packs go after the grace period; the kept ones' stay.
    const keysOf = await packRows(v);
    await relay.vaults().prepare('UPDATE packs SET touched_at = 0 WHERE vault_id = ?1').bind(v).run();
    await relay.runCron();
    const left = await packRows(v);
    for (const [i, [what, , keep]] of plan.entries()) {
      expect(left.has(packs[i]!), what).toBe(keep);
      expect(await r2Has(keysOf.get(packs[i]!)!), what).toBe(keep);
    }
  });

  it('always keeps the head, however old, even committed at an earlier relay time than a snapshot before it', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const t = Date.now();
    // A client's claim of time is not taken: the relay's clock at the commit is.
    const sid = randomHex(16);
    await uploadManifest(relay.url, v, token, sid);
    const res = await commit(relay.url, v, token, { ...commitBody(sid, 1, []), time: 1 });
    expect(res.status).toBe(201);
    const stored = (await relay.vaults().prepare('SELECT time FROM snapshots WHERE id = ?1').bind(sid).first<{ time: number }>())!.time;
    expect(stored).toBeGreaterThanOrEqual(t);
    await relay.runCron();
    expect(await seqs(v)).toEqual([1]);

    for (let seq = 2; seq <= 3; seq++) await commitSnapshot(relay.url, v, token, seq, []);
    // Two years without a commit; the head's relay time is even a little before seq 2's.
    const old = Date.UTC(new Date(t).getUTCFullYear() - 2, 5, 10, 12);
    await setTime(v, 1, old);
    await setTime(v, 2, old + 2 * HOUR);
    await setTime(v, 3, old + HOUR);
    await relay.runCron();
    expect(await seqs(v)).toEqual([3]);
    const headRes = await fetch(`${relay.url}/v1/vaults/${v}/snapshots/head`, { headers: bearer(token) });
    expect(((await headRes.json()) as { head: { seq: number } }).head.seq).toBe(3);
    // The vault goes on from it.
    await commitSnapshot(relay.url, v, token, 4, []);
    await relay.runCron();
    expect(await seqs(v)).toEqual([3, 4]);
  });

  it('what a run costs: an idle vault lists nothing in R2 and reads few rows; an upload brings one sweep once past the grace period', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const packs = [];
    for (let i = 0; i < 20; i++) packs.push(await uploadPack(relay.url, v, token, randomBytes(200)));
    for (let seq = 1; seq <= 10; seq++) await commitSnapshot(relay.url, v, token, seq, packs.slice(0, seq * 2));
    // The uploads are inside the grace period: nothing to sweep yet.
    const fresh = (await relay.retention(v))!;
    expect(fresh.r2Lists).toBe(0);
    await sleep(GRACE_MS + 200);
    const swept = (await relay.retention(v))!;
    expect(swept.r2Lists).toBeGreaterThan(0);
    // Idle from here on: no R2 list, and the rows read stay a small constant (the vault holds 10 snapshots, 20 packs).
    const idle = [(await relay.retention(v))!, (await relay.retention(v))!];
    for (const r of idle) {
      expect(r.r2Lists).toBe(0);
      expect(r.rowsRead as number).toBeLessThan(150);
    }
    expect(idle[1]!.rowsRead).toBe(idle[0]!.rowsRead);
    // A new upload: swept again once it is past the grace period, then idle again.
    await uploadPack(relay.url, v, token, randomBytes(200));
    expect((await relay.retention(v))!.r2Lists).toBe(0);
    await sleep(GRACE_MS + 200);
    expect((await relay.retention(v))!.r2Lists).toBeGreaterThan(0);
    expect((await relay.retention(v))!.r2Lists).toBe(0);
  });
});
