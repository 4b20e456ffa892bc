// Relay routes without a token: health, vault creation, device enrollment
// (docs/RELAY-API.md), against the real worker in workerd.
import { ed25519 } from '@noble/curves/ed25519.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  b64u,
  createBody,
  createVault,
  deviceCert,
  enrollBody,
  errorOf,
  newDevice,
  newVault,
  post,
  startTestRelay,
  type TestRelay,
} from '../helpers/relay.js';

let relay: TestRelay;
beforeAll(async () => {
  relay = await startTestRelay();
});
afterAll(async () => {
  await relay?.stop();
});

describe('health', () => {
  it('answers 200 with the service name, version and time, and X-Casa-Time', async () => {
    const before = Date.now();
    const res = await fetch(`${relay.url}/v1/health`);
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ ok: true, service: 'casa-relay', version: '0.1.0' });
    expect(body.time).toBeGreaterThanOrEqual(before - 1000);
    expect(Number(res.headers.get('X-Casa-Time'))).toBeGreaterThanOrEqual(before - 1000);
  });

  it('answers unknown routes 404 not_found, with X-Casa-Time', async () => {
    const res = await fetch(`${relay.url}/v2/anything`);
    expect(res.headers.get('X-Casa-Time')).toMatch(/^\d+$/);
    expect(await errorOf(res)).toEqual({ status: 404, code: 'not_found' });
  });
});

describe('POST /v1/vaults', () => {
  it('creates a vault (201) and records it with an audit row', async () => {
    const v = newVault();
    const res = await post(`${relay.url}/v1/vaults`, createBody(v));
    expect(res.status).toBe(201);
    expect(res.headers.get('X-Casa-Time')).toMatch(/^\d+$/);
    const body = (await res.json()) as { vaultId: string; time: number };
    expect(body.vaultId).toBe(v.vaultId);
    const row = await relay.vaults().prepare('SELECT auth_public_key, canary FROM vaults WHERE id = ?1').bind(v.vaultId).first();
    expect(row).toEqual({ auth_public_key: v.authPublicKey, canary: v.canary });
    const audit = await relay.vaults().prepare('SELECT event FROM audit_log WHERE vault_id = ?1').bind(v.vaultId).all();
    expect(audit.results).toEqual([{ event: 'vault_created' }]);
  });

  it('refuses a signature by another key (401) and stores nothing', async () => {
    const v = newVault();
    const res = await post(`${relay.url}/v1/vaults`, createBody(v, Date.now(), ed25519.utils.randomSecretKey()));
    expect(await errorOf(res)).toEqual({ status: 401, code: 'unauthorized' });
    expect(await relay.vaults().prepare('SELECT id FROM vaults WHERE id = ?1').bind(v.vaultId).first()).toBeNull();
  });

  it('refuses a signature over other fields (canary swapped) with 401', async () => {
    const v = newVault();
    const body = createBody(v);
    body.canary = b64u(new Uint8Array(60));
    expect(await errorOf(await post(`${relay.url}/v1/vaults`, body))).toEqual({ status: 401, code: 'unauthorized' });
  });

  it('refuses a time outside ±10 minutes (400), even when correctly signed', async () => {
    for (const skew of [-11 * 60_000, 11 * 60_000]) {
      const res = await post(`${relay.url}/v1/vaults`, createBody(newVault(), Date.now() + skew));
      expect(await errorOf(res)).toEqual({ status: 400, code: 'bad_request' });
    }
  });

  it('answers 409 conflict for an existing vault', async () => {
    const v = await createVault(relay.url);
    const res = await post(`${relay.url}/v1/vaults`, createBody(v));
    expect(await errorOf(res)).toEqual({ status: 409, code: 'conflict' });
  });

  it('refuses a malformed vault id or fields with 400', async () => {
    for (const vaultId of ['ABCDEF0123456789ABCDEF0123456789', 'abc', '0'.repeat(33)]) {
      const v = { ...newVault(), vaultId };
      expect(await errorOf(await post(`${relay.url}/v1/vaults`, createBody(v)))).toEqual({ status: 400, code: 'bad_request' });
    }
    const good = createBody(newVault());
    for (const bad of [
      { ...good, authPublicKey: 'not base64url!' },
      { ...good, authPublicKey: b64u(new Uint8Array(31)) },
      { ...good, signature: b64u(new Uint8Array(63)) },
      { ...good, time: '123' },
      { ...good, time: 1.5 },
      { ...good, canary: undefined },
    ]) {
      expect(await errorOf(await post(`${relay.url}/v1/vaults`, bad))).toEqual({ status: 400, code: 'bad_request' });
    }
    expect(await errorOf(await post(`${relay.url}/v1/vaults`, '{"vaultId":'))).toEqual({ status: 400, code: 'bad_request' });
    expect(await errorOf(await post(`${relay.url}/v1/vaults`, '[1,2]'))).toEqual({ status: 400, code: 'bad_request' });
  });

  it('refuses a body over 64 KiB with 413, with or without Content-Length', async () => {
    const v = newVault();
    v.canary = b64u(new Uint8Array(64 * 1024));
    const res = await post(`${relay.url}/v1/vaults`, createBody(v));
    expect(await errorOf(res)).toEqual({ status: 413, code: 'too_large' });
    // Chunked (no Content-Length): the cap is enforced while reading.
    const big = JSON.stringify(createBody(v));
    const stream = new ReadableStream({
      start(ctl) {
        ctl.enqueue(new TextEncoder().encode(big));
        ctl.close();
      },
    });
    const chunked = await fetch(`${relay.url}/v1/vaults`, {
      method: 'POST',
      body: stream,
      headers: { 'content-type': 'application/json' },
      duplex: 'half',
    } as RequestInit);
    expect(await errorOf(chunked)).toEqual({ status: 413, code: 'too_large' });
  });
});

describe('POST /v1/vaults/:vaultId/devices (enroll)', () => {
  it('enrolls a device by a certificate the paper signed and returns its id, the epoch and the vault canary (201)', async () => {
    const v = await createVault(relay.url);
    const d = newDevice();
    const body = enrollBody(v, d, 'laptop ✓');
    const res = await post(`${relay.url}/v1/vaults/${v.vaultId}/devices`, body);
    expect(res.status).toBe(201);
    const answer = (await res.json()) as { deviceId: string; epoch: number; canary: string; time: number };
    expect(answer.deviceId).toBe(d.deviceId);
    expect(answer.epoch).toBe(0);
    expect(answer.canary).toBe(v.canary);
    const row = await relay.vaults().prepare('SELECT vault_id, public_key, name, revoked_at, cert FROM devices WHERE id = ?1').bind(d.deviceId).first();
    expect(row).toEqual({ vault_id: v.vaultId, public_key: d.publicKey, name: 'laptop ✓', revoked_at: null, cert: JSON.stringify(body.cert) });
    const audit = await relay.vaults().prepare("SELECT device_id, actor_id FROM audit_log WHERE vault_id = ?1 AND event = 'device_enrolled'").bind(v.vaultId).all();
    expect(audit.results).toEqual([{ device_id: d.deviceId, actor_id: null }]);

    // The same key again (a retry) gets the same device, not a second one.
    const again = await post(`${relay.url}/v1/vaults/${v.vaultId}/devices`, body);
    expect(again.status).toBe(201);
    expect(((await again.json()) as { deviceId: string }).deviceId).toBe(d.deviceId);
    expect((await relay.vaults().prepare('SELECT COUNT(*) AS n FROM devices WHERE vault_id = ?1').bind(v.vaultId).first())).toEqual({ n: 1 });
  });

  it('answers 404 for an unknown vault', async () => {
    const v = newVault();
    const res = await post(`${relay.url}/v1/vaults/${v.vaultId}/devices`, enrollBody(v, newDevice()));
    expect(await errorOf(res)).toEqual({ status: 404, code: 'not_found' });
  });

  it('answers 401 when signed by a key other than the paper (wrong phrase)', async () => {
    const v = await createVault(relay.url);
    const res = await post(`${relay.url}/v1/vaults/${v.vaultId}/devices`, enrollBody(v, newDevice(), 'x', ed25519.utils.randomSecretKey()));
    expect(await errorOf(res)).toEqual({ status: 401, code: 'unauthorized' });
    expect(await relay.vaults().prepare('SELECT id FROM devices WHERE vault_id = ?1').bind(v.vaultId).first()).toBeNull();
  });

  it('refuses a bad name, key, device id, vault or the old body form with 400', async () => {
    const v = await createVault(relay.url);
    const d = newDevice();
    const other = newDevice();
    for (const body of [
      enrollBody(v, d, ''),
      enrollBody(v, d, 'x'.repeat(65)),
      enrollBody(v, d, 'tab\there'),
      { cert: deviceCert(v, d, { signingKey: b64u(new Uint8Array(16)) }) },
      { cert: deviceCert(v, d, { exchangeKey: b64u(new Uint8Array(31)) }) },
      { cert: deviceCert(v, d, { deviceId: other.deviceId }) },
      { cert: deviceCert(v, d, { vaultId: newVault().vaultId }) },
      { cert: deviceCert(v, d, { issuer: 'someone' }) },
      // The version-1 form (devicePublicKey, name, time, signature) is gone.
      { devicePublicKey: d.publicKey, name: 'old', time: Date.now(), signature: b64u(new Uint8Array(64)) },
    ]) {
      expect(await errorOf(await post(`${relay.url}/v1/vaults/${v.vaultId}/devices`, body))).toEqual({
        status: 400,
        code: 'bad_request',
      });
    }
    expect(await relay.vaults().prepare('SELECT id FROM devices WHERE vault_id = ?1').bind(v.vaultId).first()).toBeNull();
  });
});
