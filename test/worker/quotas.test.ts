// Per-vault quotas (docs/RELAY-API.md "Quotas", worker/quotas.ts) against the
// real worker in workerd, with a relay launched with small quotas: each one
// answers 507 quota_exceeded naming it, with nothing stored; a retry of what
// was stored before is answered as before; the status route reports usage
// beside the quotas; the retention job keeps the newest audit rows and every
// membership event.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bearer,
  commit,
  commitBody,
  commitSnapshot,
  enrollDevice,
  getToken,
  putObject,
  randomHex,
  setupVault,
  sha256Hex,
  startTestRelay,
  uploadManifest,
  uploadPack,
  type TestRelay,
} from '../helpers/relay.js';

const QUOTAS = {
  QUOTA_STORED_BYTES: '10000',
  QUOTA_DEVICES: '2',
  QUOTA_COMMITS_PER_DAY: '2',
  QUOTA_PUSHES_PER_DAY: '3',
  QUOTA_AUDIT_ROWS: '6',
};
let relay: TestRelay;
beforeAll(async () => {
  relay = await startTestRelay({ vars: QUOTAS });
});
afterAll(async () => {
  await relay?.stop();
});

async function refusal(res: Response): Promise<Record<string, unknown>> {
  expect(res.status).toBe(507);
  const body = (await res.json()) as Record<string, unknown>;
  expect((body.error as { code: string }).code).toBe('quota_exceeded');
  return body;
}

function push(vaultId: string, token: string, seq: number, body: Uint8Array, base = relay.url): Promise<Response> {
  return fetch(`${base}/v1/vaults/${vaultId}/changesets`, {
    method: 'POST',
    headers: { ...bearer(token), 'content-type': 'application/octet-stream', 'X-Casa-Sha256': sha256Hex(body), 'X-Casa-Seq': String(seq) },
    body,
  });
}

async function status(vaultId: string, token: string): Promise<{ usage: Record<string, number>; quotas: Record<string, number> }> {
  const res = await fetch(`${relay.url}/v1/vaults/${vaultId}/status`, { headers: bearer(token) });
  expect(res.status).toBe(200);
  return (await res.json()) as { usage: Record<string, number>; quotas: Record<string, number> };
}

describe('quotas', () => {
  it('stored bytes: an upload past the quota is refused before anything is stored', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    await uploadPack(relay.url, v, token, randomBytes(6000));
    const packId = randomHex(32);
    const body = await refusal(await putObject(`${relay.url}/v1/vaults/${v}/packs/${packId}`, token, randomBytes(5000)));
    expect(body).toMatchObject({ quota: 'stored_bytes', limit: 10000, used: 6000 });
    expect((await fetch(`${relay.url}/v1/vaults/${v}/packs/${packId}`, { headers: bearer(token) })).status).toBe(404);
    expect((await relay.r2().list({ prefix: `packs/${v}/${packId}` })).objects).toEqual([]);
    // A changeset counts too, and what still fits goes in.
    await refusal(await push(v, token, 1, randomBytes(4500)));
    expect((await push(v, token, 1, randomBytes(3000))).status).toBe(201);
    const s = await status(v, token);
    expect(s.usage.storedBytes).toBe(9000);
    expect(s.quotas).toMatchObject({ storedBytes: 10000, devices: 2, pairings: 3, commitsPerDay: 2, pushesPerDay: 3, auditRows: 6 });
  });

  it('changeset pushes per day: the one past the quota is refused, the vault head unmoved; a retry of a stored one is answered as before', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const first = randomBytes(10);
    for (let seq = 1; seq <= 3; seq++) expect((await push(v, token, seq, seq === 1 ? first : randomBytes(10))).status).toBe(201);
    expect(await refusal(await push(v, token, 4, randomBytes(10)))).toMatchObject({ quota: 'pushes_per_day', limit: 3, used: 3 });
    const heads = (await (await fetch(`${relay.url}/v1/vaults/${v}/changesets/heads`, { headers: bearer(token) })).json()) as { head: number };
    expect(heads.head).toBe(3);
    expect((await status(v, token)).usage.pushesToday).toBe(3);
  });

  it('snapshot commits per day: the one past the quota is refused; a retry of a committed snapshot still gets its 201', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const pack = await uploadPack(relay.url, v, token, randomBytes(100));
    const s1 = await commitSnapshot(relay.url, v, token, 1, [pack]);
    await commitSnapshot(relay.url, v, token, 2, [pack]);
    const s3 = randomHex(16);
    await uploadManifest(relay.url, v, token, s3, randomBytes(50));
    expect(await refusal(await commit(relay.url, v, token, commitBody(s3, 3, [pack])))).toMatchObject({ quota: 'commits_per_day', limit: 2, used: 2 });
    const retry = await commit(relay.url, v, token, commitBody(s1, 1, [pack]));
    expect(retry.status).toBe(201);
    const head = (await (await fetch(`${relay.url}/v1/vaults/${v}/snapshots/head`, { headers: bearer(token) })).json()) as { head: { seq: number } };
    expect(head.head.seq).toBe(2);
  });

  it('devices: enrolment past the quota is refused; a revocation makes room', async () => {
    const { vault, token } = await setupVault(relay.url);
    await enrollDevice(relay.url, vault);
    await expect(enrollDevice(relay.url, vault)).rejects.toThrow(/enroll: 507 .*quota_exceeded/);
    const s = await status(vault.vaultId, token);
    expect(s.usage.devices).toBe(2);
  });

  it('audit rows: the retention job keeps the newest and every membership event', async () => {
    const { vault, device } = await setupVault(relay.url);
    for (let i = 0; i < 8; i++) await getToken(relay.url, vault.vaultId, device);
    const before = (await relay.vault(vault.vaultId).prepare('SELECT count(*) AS n FROM audit_log WHERE vault_id = ?1').bind(vault.vaultId).first<{ n: number }>())!.n;
    expect(before).toBeGreaterThan(6);
    await relay.runCron();
    const rows = (await relay.vault(vault.vaultId).prepare('SELECT event FROM audit_log WHERE vault_id = ?1 ORDER BY id').bind(vault.vaultId).all<{ event: string }>()).results.map((r) => r.event);
    expect(rows).toContain('vault_created');
    expect(rows).toContain('device_enrolled');
    expect(rows.filter((e) => e === 'token_issued').length).toBeLessThanOrEqual(6);
    expect(rows.length).toBeLessThan(before);
  });

  it('stored bytes is a counter in the vault object that stays the sum of what is stored, through uploads, re-uploads, commits and retention', async () => {
    const r = await startTestRelay({ vars: { RETENTION_WINDOW: '0', PACK_GRACE_MS: '0' } });
    try {
      const { vault, token } = await setupVault(r.url);
      const v = vault.vaultId;
      const sum = async () =>
        (await r.vault(v).prepare(
          `SELECT (SELECT coalesce(sum(bytes), 0) FROM packs) + (SELECT coalesce(sum(bytes), 0) FROM changesets)
                  + (SELECT coalesce(sum(bytes), 0) FROM manifest_uploads) AS n, (SELECT value FROM usage WHERE name = 'stored_bytes') AS kept`,
        ).first<{ n: number; kept: number }>())!;
      const used = async () => {
        const res = await fetch(`${r.url}/v1/vaults/${v}/status`, { headers: bearer(token) });
        return ((await res.json()) as { usage: { storedBytes: number } }).usage.storedBytes;
      };
      const packA = await uploadPack(r.url, v, token, randomBytes(700));
      const packB = await uploadPack(r.url, v, token, randomBytes(300));
      await putObject(`${r.url}/v1/vaults/${v}/packs/${packA}`, token, randomBytes(700)); // a re-upload keeps the first copy
      await push(v, token, 1, randomBytes(50), r.url).then((res) => expect(res.status).toBe(201));
      const pending = randomHex(16);
      await uploadManifest(r.url, v, token, pending, randomBytes(40));
      await uploadManifest(r.url, v, token, pending, randomBytes(90)); // replaced before its commit
      let now = await sum();
      expect(now.kept).toBe(now.n);
      expect(now.n).toBe(700 + 300 + 50 + 90);
      expect(await used()).toBe(now.n);
      await commitSnapshot(r.url, v, token, 1, [packA]);
      await new Promise((res) => setTimeout(res, 1100)); // the grace period's floor (1 s)
      await r.runCron(); // packB: unreferenced past its grace, deleted
      now = await sum();
      expect(now.kept).toBe(now.n);
      expect(await used()).toBe(now.n);
      expect((await r.vault(v).prepare('SELECT count(*) AS n FROM packs WHERE id = ?1').bind(packB).first<{ n: number }>())!.n).toBe(0);
    } finally {
      await r.stop();
    }
  });
});
