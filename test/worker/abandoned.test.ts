// Abandoned vaults (worker/abandoned.ts, docs/RELAY-API.md "Abandoned
// vaults") against the real worker in workerd: a vault none of whose devices
// was seen for ABANDONED_AFTER_MS (400 days) is listed in the index at its
// retention run and taken off when a device comes back; with
// ABANDONED_POLICY "expire" it is deleted 30 days after it was listed —
// unknown to every request at once, then its blobs in R2, its index rows and
// its object's storage — while a vault in use beside it is untouched. Time
// is moved by backdating what the relay recorded (the vault's and devices'
// times, when it was listed), as a relay running for a year would hold it.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { bearer, commitSnapshot, errorOf, getChallenge, getToken, setupVault, startTestRelay, uploadPack, type TestRelay } from '../helpers/relay.js';

const relays: TestRelay[] = [];
afterAll(async () => {
  for (const r of relays) await r.stop();
});

async function relayWith(policy: string, vars: Record<string, string> = {}): Promise<TestRelay> {
  const r = await startTestRelay({ vars: { ABANDONED_POLICY: policy, ...vars } });
  relays.push(r);
  return r;
}

const DAY = 24 * 60 * 60 * 1000;

/** Moves the vault's last activity `days` back, as if nobody had used it since (the relay's own record of it). */
async function idleFor(relay: TestRelay, vaultId: string, days: number): Promise<void> {
  const t = Date.now() - days * DAY;
  const v = relay.vault(vaultId);
  await v.prepare('UPDATE vaults SET created_at = ?1').bind(t).run();
  await v.prepare('UPDATE devices SET created_at = ?1, last_seen_at = ?1').bind(t).run();
}

async function listed(relay: TestRelay): Promise<{ vault_id: string; last_seen_at: number; expired_at: number | null }[]> {
  return (await relay.d1().prepare('SELECT vault_id, last_seen_at, expired_at FROM abandoned_vaults ORDER BY vault_id').all<{ vault_id: string; last_seen_at: number; expired_at: number | null }>()).results;
}

async function blobKeys(relay: TestRelay, vaultId: string): Promise<string[]> {
  const keys: string[] = [];
  for (const prefix of ['packs', 'manifests', 'changesets', 'v']) {
    keys.push(...(await relay.r2().list({ prefix: `${prefix}/${vaultId}/` })).objects.map((o) => o.key));
  }
  return keys;
}

/** The tables in the vault's object's SQLite file on disk (none once its storage is deleted). */
async function objectTables(relay: TestRelay, vaultId: string): Promise<string[]> {
  const ns = await relay.mf.getDurableObjectNamespace('VAULT');
  const id = ns.idFromName(vaultId).toString();
  const root = join(relay.dataDir, 'v3', 'do');
  const file = readdirSync(root).map((d) => join(root, d, `${id}.sqlite`)).find((f) => existsSync(f));
  if (file === undefined) return [];
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'").all() as { name: string }[]).map((r) => r.name);
  } finally {
    db.close();
  }
}

describe('abandoned vaults', () => {
  it('"report": listed once no device was seen for the time, off the list when one comes back, nothing deleted', async () => {
    const relay = await relayWith('report');
    const { vault, device, token } = await setupVault(relay.url);
    await commitSnapshot(relay.url, vault.vaultId, token, 1, [await uploadPack(relay.url, vault.vaultId, token)]);
    await idleFor(relay, vault.vaultId, 399);
    await relay.runCron();
    expect(await listed(relay)).toEqual([]);
    await idleFor(relay, vault.vaultId, 401);
    await relay.runCron();
    await relay.runCron(); // listed once, not again
    const rows = await listed(relay);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ vault_id: vault.vaultId, expired_at: null });
    expect(rows[0]!.last_seen_at).toBeLessThan(Date.now() - 400 * DAY);
    expect((await blobKeys(relay, vault.vaultId)).length).toBeGreaterThan(0);
    // The device comes back: the vault works as before and leaves the list at the next run.
    const again = await getToken(relay.url, vault.vaultId, device);
    expect((await fetch(`${relay.url}/v1/vaults/${vault.vaultId}/snapshots`, { headers: bearer(again) })).status).toBe(200);
    await relay.runCron();
    expect(await listed(relay)).toEqual([]);
  });

  it('"expire": listed first; 30 days later the abandoned vault is deleted, rows, blobs and index; the vault in use beside it is untouched', async () => {
    const relay = await relayWith('expire');
    const old = await setupVault(relay.url);
    await commitSnapshot(relay.url, old.vault.vaultId, old.token, 1, [await uploadPack(relay.url, old.vault.vaultId, old.token)]);
    await idleFor(relay, old.vault.vaultId, 401);
    const used = await setupVault(relay.url);
    await commitSnapshot(relay.url, used.vault.vaultId, used.token, 1, [await uploadPack(relay.url, used.vault.vaultId, used.token)]);
    const usedBlobs = await blobKeys(relay, used.vault.vaultId);
    expect((await blobKeys(relay, old.vault.vaultId)).length).toBeGreaterThan(0);

    // The first run lists it only; nothing goes until it has been listed for 30 days.
    await relay.runCron();
    expect(await listed(relay)).toEqual([expect.objectContaining({ vault_id: old.vault.vaultId, expired_at: null })]);
    expect((await blobKeys(relay, old.vault.vaultId)).length).toBeGreaterThan(0);
    await relay.vault(old.vault.vaultId).prepare("UPDATE cron_state SET value = ?1 WHERE name = 'abandoned:listed'").bind(String(Date.now() - 31 * DAY)).run();
    await relay.runCron();
    // The abandoned vault is unknown now: its device is refused as for a vault never created.
    const refused = await fetch(`${relay.url}/v1/vaults/${old.vault.vaultId}/auth/challenge`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ deviceId: old.device.deviceId }),
    });
    expect((await errorOf(refused)).status).toBe(404);
    expect(await blobKeys(relay, old.vault.vaultId)).toEqual([]);
    const rows = await listed(relay);
    expect(rows).toHaveLength(1);
    expect(rows[0]!.vault_id).toBe(old.vault.vaultId);
    expect(rows[0]!.expired_at).toEqual(expect.any(Number));
    expect(await objectTables(relay, old.vault.vaultId)).toEqual([]);
    expect(await objectTables(relay, used.vault.vaultId)).toContain('vaults');

    // The other vault: same blobs, its device still works.
    expect(await blobKeys(relay, used.vault.vaultId)).toEqual(usedBlobs);
    await getChallenge(relay.url, used.vault.vaultId, used.device.deviceId);
    const t = await getToken(relay.url, used.vault.vaultId, used.device);
    expect((await fetch(`${relay.url}/v1/vaults/${used.vault.vaultId}/snapshots`, { headers: bearer(t) })).status).toBe(200);
  });

  it('a malformed or too short ABANDONED_AFTER_MS, or an unknown ABANDONED_POLICY, falls back to the defaults (400 days, report), never to expiry', async () => {
    for (const vars of [{ ABANDONED_AFTER_MS: '1s', ABANDONED_POLICY: 'delete' }, { ABANDONED_AFTER_MS: '400', ABANDONED_POLICY: 'expire' }]) {
      const relay = await startTestRelay({ vars });
      relays.push(relay);
      const { vault } = await setupVault(relay.url);
      await idleFor(relay, vault.vaultId, 200);
      await relay.runCron();
      expect(await listed(relay)).toEqual([]);
      expect((await relay.vault(vault.vaultId).prepare('SELECT id FROM vaults').all()).results).toHaveLength(1);
    }
  });
});
