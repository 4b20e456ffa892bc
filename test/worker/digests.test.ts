// Digest routes (docs/RELAY-API.md "Digests") against the real worker in
// workerd: one slot per device, stored, replaced and listed byte for byte;
// the 16 KiB cap; the 404/403/401 rules; nothing but ciphertext stored. Then
// the client (src/changesets/digest-exchange.ts) against it with real SQLite databases:
// same, differs, not comparable, revoked devices left out; key views (with a
// record of casa before them); and a relay that alters, moves, replays or
// garbles a slot (IntegrityError, exit 6).
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { vaultKeysFromRoot, type VaultKeys } from '../../src/crypto/kdf.js';
import { IntegrityError } from '../../src/errors.js';
import { installCapture } from '../../src/changesets/capture.js';
import { ChangesetApi } from '../../src/relay/changesets.js';
import { openRecord, sealRecord, type DigestRecord } from '../../src/changesets/digest.js';
import { DigestApi, exchangeDigests, readDigestMemory } from '../../src/changesets/digest-exchange.js';
import { DeviceSession, RelayClient } from '../../src/relay/client.js';
import { deriveSyncSchema } from '../../src/changesets/rules.js';
import type { SyncEnv } from '../../src/changesets/sync-run.js';
import { storageText } from '../helpers/cli.js';
import {
  b64u,
  bearer,
  chunked,
  enrollDevice,
  errorOf,
  fromB64u,
  getToken,
  post,
  randomHex,
  refusedEarly,
  setupVault,
  sha256Hex,
  startTestRelay,
  type TestDevice,
  revokeBody,
  type TestRelay,
  type TestVault,
  lyingRelay,
} from '../helpers/relay.js';

const KiB = 1024;

let relay: TestRelay;
beforeAll(async () => {
  relay = await startTestRelay();
});
afterAll(async () => {
  await relay?.stop();
});

const opaque = (n = 1000): Uint8Array => new Uint8Array(randomBytes(n));

function put(vaultId: string, token: string, body: Uint8Array, sha = sha256Hex(body)): Promise<Response> {
  return fetch(`${relay.url}/v1/vaults/${vaultId}/digest`, {
    method: 'PUT',
    headers: { ...bearer(token), 'content-type': 'application/octet-stream', 'X-Casa-Sha256': sha },
    body: body as Uint8Array<ArrayBuffer>,
  });
}

const list = (vaultId: string, token: string): Promise<Response> => fetch(`${relay.url}/v1/vaults/${vaultId}/digests`, { headers: bearer(token) });

async function slots(vaultId: string, token: string): Promise<{ deviceId: string; data: string; updatedAt: number }[]> {
  const res = await list(vaultId, token);
  if (res.status !== 200) throw new Error(`list: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { digests: { deviceId: string; data: string; updatedAt: number }[] }).digests;
}

async function rows(vaultId: string): Promise<Record<string, unknown>[]> {
  return (await relay.vaults().prepare('SELECT * FROM digests WHERE vault_id = ?1 ORDER BY device_id').bind(vaultId).all<Record<string, unknown>>()).results;
}

const r2Count = async (): Promise<number> => (await relay.r2().list()).objects.length;

describe('routes', () => {
  it("stores each device's slot in D1 only, replaces it on the next upload, and lists every slot byte for byte", async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const laptop = await enrollDevice(relay.url, vault, 'laptop');
    const laptopToken = await getToken(relay.url, v, laptop);
    const blobs = await r2Count();
    expect(await slots(v, token)).toEqual([]);

    const first = opaque(1088);
    const res = await put(v, token, first);
    expect(res.status).toBe(200);
    expect(res.headers.get('X-Casa-Time')).toMatch(/^\d+$/);
    const answer = (await res.json()) as { deviceId: string; bytes: number; updatedAt: number };
    expect(answer).toEqual({ deviceId: device.deviceId, bytes: 1088, updatedAt: expect.any(Number) });

    const second = opaque(2112);
    const third = opaque(64);
    expect((await put(v, token, second)).status).toBe(200);
    expect((await put(v, laptopToken, third)).status).toBe(200);
    const listed = await slots(v, laptopToken);
    const expected = [
      { deviceId: device.deviceId, bytes: second },
      { deviceId: laptop.deviceId, bytes: third },
    ].sort((a, b) => a.deviceId.localeCompare(b.deviceId));
    expect(listed.map((s) => s.deviceId)).toEqual(expected.map((e) => e.deviceId));
    expect(listed.map((s) => fromB64u(s.data))).toEqual(expected.map((e) => e.bytes));
    for (const s of listed) expect(s.updatedAt).toBeGreaterThanOrEqual(answer.updatedAt);

    // One row per device: exactly the bytes sent (as b64u), their size and time. No blob in R2.
    const stored = await rows(v);
    expect(stored).toHaveLength(2);
    expect(Object.keys(stored[0]!).sort()).toEqual(['bytes', 'data', 'device_id', 'updated_at', 'vault_id']);
    expect(stored.map((r) => [r.device_id, r.data, r.bytes])).toEqual(expected.map((e) => [e.deviceId, b64u(e.bytes), e.bytes.length]));
    expect(await r2Count()).toBe(blobs);
  });

  it('refuses a body over 16 KiB with 413 (declared or counted), storing nothing; exactly 16 KiB is fine', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const big = opaque(16 * KiB + 1);
    const url = `${relay.url}/v1/vaults/${v}/digest`;
    const headers = { ...bearer(token), 'X-Casa-Sha256': sha256Hex(big) };
    expect(await refusedEarly(url, { method: 'PUT', headers, body: big, declared: true })).toEqual({ status: 413, code: 'too_large' });
    expect(await refusedEarly(url, { method: 'PUT', headers, body: big, declared: false })).toEqual({ status: 413, code: 'too_large' });
    expect(await rows(v)).toEqual([]);
    const exact = big.subarray(0, 16 * KiB);
    expect((await put(v, token, exact)).status).toBe(200);
    expect(fromB64u((await slots(v, token))[0]!.data)).toEqual(exact);
  });

  it('refuses a body that does not match X-Casa-Sha256, a missing header and an empty body (400), keeping the slot', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const kept = opaque(500);
    expect((await put(v, token, kept)).status).toBe(200);
    const body = opaque(900);
    expect(await errorOf(await put(v, token, body, sha256Hex(opaque(5))))).toEqual({ status: 400, code: 'bad_request' });
    const res = await fetch(`${relay.url}/v1/vaults/${v}/digest`, {
      method: 'PUT',
      headers: { ...bearer(token), 'X-Casa-Sha256': sha256Hex(opaque(5)) },
      body: chunked(body),
      duplex: 'half',
    } as RequestInit);
    expect(await errorOf(res)).toEqual({ status: 400, code: 'bad_request' });
    for (const sha of ['', 'abc', 'g'.repeat(64)]) expect(await errorOf(await put(v, token, body, sha))).toEqual({ status: 400, code: 'bad_request' });
    expect(await errorOf(await put(v, token, new Uint8Array(0)))).toEqual({ status: 400, code: 'bad_request' });
    expect((await slots(v, token)).map((s) => fromB64u(s.data))).toEqual([kept]);
  });

  it("answers another vault's digests like an unknown vault's (404), a revoked device 403, no token 401", async () => {
    const a = await setupVault(relay.url);
    const b = await setupVault(relay.url);
    const bSlot = opaque(300);
    expect((await put(b.vault.vaultId, b.token, bSlot)).status).toBe(200);
    const expected = '{"error":{"code":"not_found","message":"not found"}}';
    for (const vaultId of [b.vault.vaultId, randomHex(16)]) {
      for (const res of [await put(vaultId, a.token, opaque()), await list(vaultId, a.token)]) {
        expect([res.status, await res.text()]).toEqual([404, expected]);
      }
    }
    expect((await slots(b.vault.vaultId, b.token)).map((s) => fromB64u(s.data))).toEqual([bSlot]); // B untouched
    expect(await rows(a.vault.vaultId)).toEqual([]);

    const old = await enrollDevice(relay.url, a.vault, 'old phone');
    const oldToken = await getToken(relay.url, a.vault.vaultId, old);
    expect((await put(a.vault.vaultId, oldToken, opaque(200))).status).toBe(200);
    expect((await post(`${relay.url}/v1/vaults/${a.vault.vaultId}/devices/${old.deviceId}/revoke`, revokeBody(a.vault, old.deviceId), bearer(a.token))).status).toBe(200);
    for (const res of [await put(a.vault.vaultId, oldToken, opaque(200)), await list(a.vault.vaultId, oldToken)]) {
      expect(await errorOf(res)).toEqual({ status: 403, code: 'device_revoked' });
    }
    // Its last slot stays listed (the client leaves revoked devices out).
    expect((await slots(a.vault.vaultId, a.token)).map((s) => s.deviceId)).toEqual([old.deviceId]);
    expect(await errorOf(await fetch(`${relay.url}/v1/vaults/${a.vault.vaultId}/digest`, { method: 'PUT', body: 'x' }))).toEqual({ status: 401, code: 'unauthorized' });
    expect(await errorOf(await fetch(`${relay.url}/v1/vaults/${a.vault.vaultId}/digests`))).toEqual({ status: 401, code: 'unauthorized' });
  });

  it('stores nothing but ciphertext: no table name, no digest, and equal records never look equal', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const keys = { ...vaultKeysFromRoot(new Uint8Array(32).fill(7)), vaultId: vault.vaultId };
    const marker = `MARKER_TABLE_${randomHex(6)}`;
    const digest = randomHex(16);
    const record: DigestRecord = { deviceId: device.deviceId, seq: 1, cursor: 42, fingerprint: 'a1b2c3d4e5f60718', tables: { [marker]: digest, accounts: randomHex(16) }, at: Date.now() };
    const random = (n: number) => new Uint8Array(randomBytes(n));
    const one = sealRecord(keys, record, random);
    const two = sealRecord(keys, record, random);
    expect(Buffer.from(one).equals(Buffer.from(two))).toBe(false); // a fresh salt per seal
    expect(one.length).toBe(two.length);
    expect(one.length % KiB).toBe(64); // padded plaintext: 48-byte header + 1 KiB steps + one tag
    expect((await put(vault.vaultId, token, one)).status).toBe(200);
    const stored = fromB64u((await slots(vault.vaultId, token))[0]!.data);
    expect(openRecord(keys, device.deviceId, stored)).toEqual(record);
    expect((await put(vault.vaultId, token, two)).status).toBe(200);
    expect(fromB64u((await slots(vault.vaultId, token))[0]!.data)).not.toEqual(stored);
    const text = storageText(relay.dataDir);
    for (const needle of [marker, digest, 'a1b2c3d4e5f60718']) expect(text).not.toContain(needle);
  });
});

// ---------------------------------------------------------------- the client

interface Dev {
  env: SyncEnv;
  db: Database.Database;
  home: string;
  device: TestDevice;
}

describe('the client (src/changesets/digest-exchange.ts)', () => {
  const dirs: string[] = [];
  afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

  const SCHEMA = `
    CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT NOT NULL, balance INTEGER, rate REAL, icon BLOB);
    CREATE TABLE tags (tx TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (tx, tag)) WITHOUT ROWID;`;

  function newDev(vault: TestVault, keys: VaultKeys, device: TestDevice): Dev {
    const home = mkdtempSync(join(tmpdir(), 'casa-digest-'));
    dirs.push(home);
    const dbPath = join(home, 'casaconomy.db');
    const db = new Database(dbPath);
    db.exec(SCHEMA);
    const ins = db.prepare('INSERT INTO accounts VALUES (?, ?, ?, ?, ?)');
    ins.run('a1', 'Giro', 1200, 0.5, Buffer.from([1, 2]));
    ins.run('a2', 'Savings', 90_000, null, null);
    db.prepare("INSERT INTO tags VALUES ('t1', 'food'), ('t1', 'rent')").run();
    const session = new DeviceSession(new RelayClient(relay.url), vault.vaultId, device.deviceId, device.secret);
    const env: SyncEnv = {
      home,
      dbPath,
      keys,
      deviceId: device.deviceId,
      api: new ChangesetApi(session),
      token: () => session.getToken(),
      clockOffsetMs: () => 0,
      now: Date.now,
      random: (n) => new Uint8Array(randomBytes(n)),
      signal: new AbortController().signal,
      server: relay.url,
    };
    return { env, db, home, device };
  }

  async function twoDevices(): Promise<{ vault: TestVault; keys: VaultKeys; a: Dev; b: Dev; token: string }> {
    const { vault, device, token } = await setupVault(relay.url);
    const keys = { ...vaultKeysFromRoot(new Uint8Array(randomBytes(32))), vaultId: vault.vaultId };
    const other = await enrollDevice(relay.url, vault, 'nas');
    return { vault, keys, a: newDev(vault, keys, device), b: newDev(vault, keys, other), token };
  }

  const exchange = (d: Dev) => exchangeDigests(d.env, d.db, deriveSyncSchema(d.db), { publish: true });

  it('same tables: same; one changed field: differs, naming the table; memory has no digest', async () => {
    const { a, b } = await twoDevices();
    const first = await exchange(a);
    expect(first).toMatchObject({ cursor: 0, why: null, published: true, rows: 4 });
    expect(first.devices).toEqual([expect.objectContaining({ deviceId: b.device.deviceId, name: 'nas', status: 'not_comparable', why: 'it has not published a digest yet' })]);
    const fromB = await exchange(b);
    expect(fromB.devices).toEqual([expect.objectContaining({ deviceId: a.device.deviceId, status: 'same', tablesDiffer: [], why: null })]);
    expect(fromB.tables).toEqual(first.tables);
    // Nothing changed: nothing published again.
    expect((await exchange(a)).published).toBe(false);

    b.db.prepare("UPDATE accounts SET name = 'Giro!' WHERE id = 'a1'").run();
    const changed = await exchange(b);
    expect(changed.published).toBe(true);
    expect(changed.devices[0]).toMatchObject({ status: 'differs', tablesDiffer: ['accounts'] });
    expect((await exchange(a)).devices[0]).toMatchObject({ status: 'differs', tablesDiffer: ['accounts'] });

    const memory = readDigestMemory(a.home, a.env.keys, a.env.dbPath)!;
    expect(memory.last).toMatchObject({ cursor: 0, comparable: true, devices: [{ deviceId: b.device.deviceId, status: 'differs', tablesDiffer: ['accounts'] }] });
    const raw = JSON.stringify(memory);
    for (const hex of Object.values(first.tables!)) expect(raw).not.toContain(hex);
  });

  it('another cursor or schema is not comparable; a revoked device is left out', async () => {
    const { vault, a, b, token } = await twoDevices();
    await exchange(b);
    // a is further on: its sync state says so.
    const { writeSyncState, emptySyncState } = await import('../../src/changesets/sync-state.js');
    writeSyncState(a.home, a.env.keys, a.env.dbPath, { ...emptySyncState(0), cursor: 7 });
    expect((await exchange(a)).devices[0]).toMatchObject({ status: 'not_comparable', why: 'it is at changeset 0, this device at 7' });
    writeSyncState(a.home, a.env.keys, a.env.dbPath, emptySyncState(0));
    b.db.exec('ALTER TABLE accounts ADD COLUMN note TEXT');
    await exchange(b);
    expect((await exchange(a)).devices[0]).toMatchObject({ status: 'not_comparable', why: 'it syncs another schema (another app version?)' });
    expect((await post(`${relay.url}/v1/vaults/${vault.vaultId}/devices/${b.device.deviceId}/revoke`, revokeBody(vault, b.device.deviceId), bearer(token))).status).toBe(200);
    expect((await exchange(a)).devices).toEqual([]);
  });

  it('this device with changes left to push is not comparable and publishes nothing; casa_* tables never count', async () => {
    const { a, b } = await twoDevices();
    installCapture(a.db, deriveSyncSchema(a.db));
    expect(a.db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name LIKE 'casa_%'").get()).not.toEqual({ n: 0 });
    await exchange(b);
    // Capture installed, nothing written: its casa_* tables are not in the digest, so still the same.
    expect((await exchange(a)).devices[0]).toMatchObject({ status: 'same' });
    a.db.prepare("UPDATE accounts SET balance = 1 WHERE id = 'a2'").run();
    const r = await exchange(a);
    expect(r).toMatchObject({ tables: null, published: false, rows: 0, why: '1 local change not pushed yet (written while verifying)' });
    expect(r.devices[0]).toMatchObject({ status: 'not_comparable', why: expect.stringMatching(/^this device is not in a comparable state/) });
  });

  it('refuses a slot the relay altered, moved to another device or rolled back (IntegrityError, exit 6)', async () => {
    const { vault, a, b } = await twoDevices();
    await exchange(a);
    await exchange(b);
    const rowOf = async (deviceId: string) =>
      (await relay.vaults().prepare('SELECT data FROM digests WHERE vault_id = ?1 AND device_id = ?2').bind(vault.vaultId, deviceId).first<{ data: string }>())!.data;
    const setRow = (deviceId: string, data: string) =>
      relay.vaults().prepare('UPDATE digests SET data = ?3, bytes = ?4 WHERE vault_id = ?1 AND device_id = ?2').bind(vault.vaultId, deviceId, data, fromB64u(data).length).run();
    const refused = async (d: Dev) => {
      const err = await exchange(d).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(IntegrityError);
      expect((err as IntegrityError).exitCode).toBe(6);
      return err as IntegrityError;
    };
    const good = await rowOf(b.device.deviceId);

    const flipped = fromB64u(good);
    flipped[flipped.length - 3]! ^= 1;
    await setRow(b.device.deviceId, b64u(flipped));
    expect((await refused(a)).message).toMatch(/nas .*integrity check/);

    await setRow(b.device.deviceId, await rowOf(a.device.deviceId)); // a's record served as b's
    await refused(a);

    // b publishes a newer record (seq 2); a sees it; then the relay serves b's first record again.
    await setRow(b.device.deviceId, good);
    b.db.prepare("UPDATE accounts SET rate = 0.25 WHERE id = 'a1'").run();
    expect((await exchange(b)).published).toBe(true);
    expect((await exchange(a)).devices[0]!.status).toBe('differs');
    await setRow(b.device.deviceId, good);
    expect((await refused(a)).message).toMatch(/older/);
  });

  it('key views: a record of casa before them compares as before; a newer epoch is picked up first, a revocation read again, before either is reported', async () => {
    const { a, b } = await twoDevices();
    const C = 'c0c0c0c0c0c0c0c0';
    // b is casa before key views (format 1 record); a carries its view.
    await exchange(b);
    let reads = 0;
    const view = (revoked: string[], members: string[]) => ({ membership: async () => (reads++, { revoked, members }) });
    const first = await exchangeDigests(a.env, a.db, deriveSyncSchema(a.db), { publish: true, keyView: view([], [a.device.deviceId, b.device.deviceId, C]) });
    expect(first.keys).toMatchObject({ epoch: 1, revoked: [] });
    expect(first.devices).toEqual([expect.objectContaining({ status: 'same', keys: { status: 'unknown', epoch: null, hiddenRevocations: [], missingRevocations: [] } })]);
    expect(reads).toBe(1);
    // What a published opens with its view; b (no view source) still compares its tables, and reports no key verdict.
    expect((await exchange(b)).devices[0]).toMatchObject({ status: 'same', keys: null });

    // b now says epoch 2 (its record still opens here: same keys) and that it verified C's revocation.
    let refreshed = 0;
    b.env.keys = { ...b.env.keys, epoch: 2 };
    await exchangeDigests(b.env, b.db, deriveSyncSchema(b.db), { publish: true, keyView: view([C], [a.device.deviceId, b.device.deviceId]) });
    a.env.refreshKeys = async () => (refreshed++, a.env.keys);
    reads = 0;
    const second = await exchangeDigests(a.env, a.db, deriveSyncSchema(a.db), { publish: true, keyView: view([], [a.device.deviceId, b.device.deviceId, C]) });
    expect(refreshed).toBe(1);
    expect(reads).toBe(2);
    expect(second.devices[0]).toMatchObject({ status: 'same', keys: { status: 'ahead', epoch: 2, hiddenRevocations: [C], missingRevocations: [] } });
    // Once the relay serves both here, they are the same again (and nothing is refreshed).
    a.env.keys = { ...a.env.keys, epoch: 2 };
    refreshed = 0;
    reads = 0;
    const third = await exchangeDigests(a.env, a.db, deriveSyncSchema(a.db), { publish: true, keyView: view([C], [a.device.deviceId, b.device.deviceId]) });
    expect(third.devices[0]!.keys).toEqual({ status: 'same', epoch: 2, hiddenRevocations: [], missingRevocations: [] });
    expect([refreshed, reads]).toEqual([0, 1]);
    expect(third.published).toBe(true); // the view changed: published again
  });

  describe('against a relay that lies', () => {
    const liar = lyingRelay();

    const api = () => new DigestApi(new DeviceSession(new RelayClient(liar.url()), randomHex(16), randomHex(8), new Uint8Array(32).fill(1)));
    const slot = (data = opaque(1088)) => ({ deviceId: randomHex(8), data: b64u(data), updatedAt: Date.now() });

    it('accepts well-formed answers and refuses malformed ones', async () => {
      liar.answer = { digests: [slot(), slot()] };
      expect(await api().list()).toHaveLength(2);
      const s = slot();
      for (const bad of [
        { digests: {} },
        { digests: [s, s] }, // one device twice
        { digests: [{ ...slot(), deviceId: 'X' }] },
        { digests: [{ ...slot(), data: slot().data + '=' }] },
        { digests: [{ ...slot(), data: '' }] },
        { digests: [slot(opaque(16 * KiB + 1))] },
        { digests: [{ ...slot(), updatedAt: -1 }] },
      ]) {
        liar.answer = bad;
        expect(await api().list().catch((e: unknown) => e), JSON.stringify(bad).slice(0, 120)).toBeInstanceOf(IntegrityError);
      }
      liar.answer = { devices: [{ id: 'nope', name: 'x', revokedAt: null }] };
      expect(await api().devices().catch((e: unknown) => e)).toBeInstanceOf(IntegrityError);
      liar.answer = { deviceId: randomHex(8), bytes: 10, updatedAt: 1 }; // another device's slot acknowledged
      expect(await api().put(opaque(10)).catch((e: unknown) => e)).toBeInstanceOf(IntegrityError);
    });
  });
});
