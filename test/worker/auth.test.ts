// Challenge → token, the JWT allow-list and claim checks, the device list and
// revocation (docs/RELAY-API.md), against the real worker in workerd.
import { createHmac } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ed25519 } from '@noble/curves/ed25519.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  b64u,
  createVault,
  enrollBody,
  enrollDevice,
  errorOf,
  getChallenge,
  getToken,
  newVault,
  post,
  revokeBody,
  setupVault,
  startTestRelay,
  tokenBody,
  type TestRelay,
} from '../helpers/relay.js';

let relay: TestRelay;
let secret: string;
beforeAll(async () => {
  relay = await startTestRelay();
  secret = (await readFile(join(relay.dataDir, 'jwt-secret'), 'utf8')).trim();
});
afterAll(async () => {
  await relay?.stop();
});

const bearer = (token: string) => ({ headers: { Authorization: `Bearer ${token}` } });
const json = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
const nowS = () => Math.floor(Date.now() / 1000);

/** A JWT with any header and claims, MACed with the relay's real secret. */
function forge(header: Record<string, unknown>, claims: Record<string, unknown>, key = secret, hash = 'sha256'): string {
  const input = `${json(header)}.${json(claims)}`;
  return `${input}.${createHmac(hash, key).update(input).digest('base64url')}`;
}

describe('challenge and token', () => {
  it('issues a single-use challenge and an HS256 token with the documented claims', async () => {
    const v = await createVault(relay.url);
    const d = await enrollDevice(relay.url, v);
    const res = await post(`${relay.url}/v1/vaults/${v.vaultId}/auth/challenge`, { deviceId: d.deviceId });
    expect(res.status).toBe(200);
    const { challenge, expiresAt } = (await res.json()) as { challenge: string; expiresAt: number };
    expect(Buffer.from(challenge, 'base64url')).toHaveLength(32);
    expect(expiresAt - Date.now()).toBeGreaterThan(100_000);
    expect(expiresAt - Date.now()).toBeLessThanOrEqual(120_000);

    const tokRes = await post(`${relay.url}/v1/vaults/${v.vaultId}/auth/token`, tokenBody(v.vaultId, d, challenge));
    expect(tokRes.status).toBe(200);
    const { token, expiresAt: tokenExp } = (await tokRes.json()) as { token: string; expiresAt: number };
    const [h, p] = token.split('.');
    expect(JSON.parse(Buffer.from(h!, 'base64url').toString())).toEqual({ alg: 'HS256', typ: 'JWT' });
    const claims = JSON.parse(Buffer.from(p!, 'base64url').toString());
    expect(claims).toMatchObject({ iss: 'casa-relay', aud: 'casa-vault', sub: d.deviceId, vid: v.vaultId });
    expect(claims.exp - claims.iat).toBe(300);
    expect(tokenExp).toBe(claims.exp * 1000);
    expect(typeof claims.jti).toBe('string');

    // Consumed: replaying it fails, and the row is gone.
    const replay = await post(`${relay.url}/v1/vaults/${v.vaultId}/auth/token`, tokenBody(v.vaultId, d, challenge));
    expect(await errorOf(replay)).toEqual({ status: 401, code: 'unauthorized' });
    expect(await relay.vaults().prepare('SELECT 1 FROM challenges WHERE challenge = ?1').bind(challenge).first()).toBeNull();

    const audit = await relay.vaults().prepare("SELECT device_id FROM audit_log WHERE vault_id = ?1 AND event = 'token_issued'").bind(v.vaultId).all();
    expect(audit.results).toEqual([{ device_id: d.deviceId }]);
    const dev = await relay.vaults().prepare('SELECT last_seen_at FROM devices WHERE id = ?1').bind(d.deviceId).first<{ last_seen_at: number }>();
    expect(dev?.last_seen_at).toBeGreaterThan(0);
  });

  it('refuses a signature by another key (401) and still consumes the challenge', async () => {
    const v = await createVault(relay.url);
    const d = await enrollDevice(relay.url, v);
    const challenge = await getChallenge(relay.url, v.vaultId, d.deviceId);
    const bad = await post(
      `${relay.url}/v1/vaults/${v.vaultId}/auth/token`,
      tokenBody(v.vaultId, d, challenge, ed25519.utils.randomSecretKey()),
    );
    expect(await errorOf(bad)).toEqual({ status: 401, code: 'unauthorized' });
    const retry = await post(`${relay.url}/v1/vaults/${v.vaultId}/auth/token`, tokenBody(v.vaultId, d, challenge));
    expect(await errorOf(retry)).toEqual({ status: 401, code: 'unauthorized' });
  });

  it("refuses another device's challenge and an unknown challenge (401)", async () => {
    const v = await createVault(relay.url);
    const d1 = await enrollDevice(relay.url, v, 'one');
    const d2 = await enrollDevice(relay.url, v, 'two');
    const c1 = await getChallenge(relay.url, v.vaultId, d1.deviceId);
    const res = await post(`${relay.url}/v1/vaults/${v.vaultId}/auth/token`, tokenBody(v.vaultId, d2, c1));
    expect(await errorOf(res)).toEqual({ status: 401, code: 'unauthorized' });
    const unknown = await post(`${relay.url}/v1/vaults/${v.vaultId}/auth/token`, tokenBody(v.vaultId, d1, b64u(new Uint8Array(32))));
    expect(await errorOf(unknown)).toEqual({ status: 401, code: 'unauthorized' });
  });

  it('refuses an expired challenge (401)', async () => {
    const v = await createVault(relay.url);
    const d = await enrollDevice(relay.url, v);
    const challenge = await getChallenge(relay.url, v.vaultId, d.deviceId);
    await relay.vaults().prepare('UPDATE challenges SET expires_at = ?2 WHERE challenge = ?1').bind(challenge, Date.now() - 1).run();
    const res = await post(`${relay.url}/v1/vaults/${v.vaultId}/auth/token`, tokenBody(v.vaultId, d, challenge));
    expect(await errorOf(res)).toEqual({ status: 401, code: 'unauthorized' });
  });

  it('answers 404 for a challenge of an unknown device or vault, 400 for a malformed device id', async () => {
    const v = await createVault(relay.url);
    const d = await enrollDevice(relay.url, v);
    const other = newVault();
    expect(await errorOf(await post(`${relay.url}/v1/vaults/${v.vaultId}/auth/challenge`, { deviceId: '0123456789abcdef' }))).toEqual({
      status: 404,
      code: 'not_found',
    });
    expect(await errorOf(await post(`${relay.url}/v1/vaults/${other.vaultId}/auth/challenge`, { deviceId: d.deviceId }))).toEqual({
      status: 404,
      code: 'not_found',
    });
    expect(await errorOf(await post(`${relay.url}/v1/vaults/${v.vaultId}/auth/challenge`, { deviceId: 'xyz' }))).toEqual({
      status: 400,
      code: 'bad_request',
    });
  });
});

describe('tokens on authenticated routes', () => {
  it('accepts a valid token', async () => {
    const { vault, token } = await setupVault(relay.url);
    const res = await fetch(`${relay.url}/v1/vaults/${vault.vaultId}/devices`, bearer(token));
    expect(res.status).toBe(200);
    expect(res.headers.get('X-Casa-Time')).toMatch(/^\d+$/);
  });

  it('refuses a missing or malformed Authorization header (401)', async () => {
    const { vault, token } = await setupVault(relay.url);
    const url = `${relay.url}/v1/vaults/${vault.vaultId}/devices`;
    for (const init of [{}, { headers: { Authorization: token } }, { headers: { Authorization: `Basic ${token}` } }]) {
      expect(await errorOf(await fetch(url, init))).toEqual({ status: 401, code: 'unauthorized' });
    }
    // A token in the URL is never accepted.
    expect(await errorOf(await fetch(`${url}?token=${token}`))).toEqual({ status: 401, code: 'unauthorized' });
  });

  it('refuses alg none, HS512, EdDSA and other algorithms even with a valid MAC (401)', async () => {
    const { vault, device } = await setupVault(relay.url);
    const url = `${relay.url}/v1/vaults/${vault.vaultId}/devices`;
    const claims = { iss: 'casa-relay', aud: 'casa-vault', sub: device.deviceId, vid: vault.vaultId, iat: nowS(), exp: nowS() + 300, jti: 'x' };
    // Sanity: the forger makes tokens the relay accepts.
    expect((await fetch(url, bearer(forge({ alg: 'HS256', typ: 'JWT' }, claims)))).status).toBe(200);
    const none = `${json({ alg: 'none', typ: 'JWT' })}.${json(claims)}.`;
    const tokens = [
      none,
      `${json({ alg: 'none' })}.${json(claims)}`,
      forge({ alg: 'HS512', typ: 'JWT' }, claims, secret, 'sha512'),
      forge({ alg: 'HS512', typ: 'JWT' }, claims),
      forge({ alg: 'hs256', typ: 'JWT' }, claims),
      forge({ alg: 'EdDSA', typ: 'JWT' }, claims),
      forge({ alg: 'RS256', typ: 'JWT' }, claims),
      forge({ typ: 'JWT' }, claims),
      forge({ alg: 'HS256', crit: ['exp'] }, claims),
    ];
    const ed = ed25519.utils.randomSecretKey();
    const edInput = `${json({ alg: 'EdDSA', typ: 'JWT' })}.${json(claims)}`;
    tokens.push(`${edInput}.${b64u(ed25519.sign(new TextEncoder().encode(edInput), ed))}`);
    for (const t of tokens) {
      expect(await errorOf(await fetch(url, bearer(t))), t).toEqual({ status: 401, code: 'unauthorized' });
    }
  });

  it('refuses wrong iss or aud, expired tokens, a wrong key and tampering (401)', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const url = `${relay.url}/v1/vaults/${vault.vaultId}/devices`;
    const base = { iss: 'casa-relay', aud: 'casa-vault', sub: device.deviceId, vid: vault.vaultId, iat: nowS(), exp: nowS() + 300, jti: 'x' };
    const hdr = { alg: 'HS256', typ: 'JWT' };
    const [h, p, s] = token.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
    const flipped = s.slice(0, -2) + (s.at(-2) === 'A' ? 'B' : 'A') + s.at(-1);
    const bad = [
      forge(hdr, { ...base, iss: 'someone-else' }),
      forge(hdr, { ...base, aud: 'casa-other' }),
      forge(hdr, { ...base, aud: undefined }),
      forge(hdr, { ...base, exp: nowS() - 1 }),
      forge(hdr, { ...base, exp: undefined }),
      forge(hdr, { ...base, iat: nowS() + 3600 }),
      forge(hdr, base, 'a-different-secret-of-sufficient-length!!'),
      `${h}.${json({ ...claims, sub: '0123456789abcdef' })}.${s}`,
      `${h}.${p}.${flipped}`,
      `${h}.${p}`,
      `${h}.${p}.${s}.${s}`,
    ];
    for (const t of bad) {
      expect(await errorOf(await fetch(url, bearer(t))), t).toEqual({ status: 401, code: 'unauthorized' });
    }
  });

  it("answers a token of vault A on vault B's routes exactly like a nonexistent vault (404)", async () => {
    const a = await setupVault(relay.url);
    const b = await setupVault(relay.url);
    const ghost = newVault();
    const onB = await fetch(`${relay.url}/v1/vaults/${b.vault.vaultId}/devices`, bearer(a.token));
    const onGhost = await fetch(`${relay.url}/v1/vaults/${ghost.vaultId}/devices`, bearer(a.token));
    expect(onB.status).toBe(404);
    expect(onGhost.status).toBe(404);
    const bodyB = await onB.text();
    expect(bodyB).toBe(await onGhost.text());
    expect(JSON.parse(bodyB)).toEqual({ error: { code: 'not_found', message: 'not found' } });
    const revokeB = await post(
      `${relay.url}/v1/vaults/${b.vault.vaultId}/devices/${b.device.deviceId}/revoke`,
      revokeBody(b.vault, b.device.deviceId),
      bearer(a.token).headers,
    );
    expect(revokeB.status).toBe(404);
    expect(await revokeB.text()).toBe(bodyB);
    expect(await relay.vaults().prepare('SELECT revoked_at FROM devices WHERE id = ?1').bind(b.device.deviceId).first()).toEqual({ revoked_at: null });
  });
});

describe('devices', () => {
  it('lists the vault devices', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const second = await enrollDevice(relay.url, vault, 'desktop');
    const res = await fetch(`${relay.url}/v1/vaults/${vault.vaultId}/devices`, bearer(token));
    const { devices } = (await res.json()) as { devices: Record<string, unknown>[] };
    expect(devices).toHaveLength(2);
    expect(devices.map((d) => d.id).sort()).toEqual([device.deviceId, second.deviceId].sort());
    const me = devices.find((d) => d.id === device.deviceId)!;
    expect(me).toMatchObject({ name: 'test device', publicKey: device.publicKey, revokedAt: null, revocation: null });
    expect(me.cert).toMatchObject({ vaultId: vault.vaultId, deviceId: device.deviceId, signingKey: device.publicKey, issuer: 'recovery' });
    expect(me.createdAt).toEqual(expect.any(Number));
    expect(me.lastSeenAt).toEqual(expect.any(Number));
    expect(devices.find((d) => d.id === second.deviceId)!.lastSeenAt).toBeNull();
  });

  it('revokes a device: its token gets 403 at once, its challenge 403, re-enrolling its key 403; idempotent', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const other = await enrollDevice(relay.url, vault, 'lost phone');
    const otherToken = await getToken(relay.url, vault.vaultId, other);
    const pending = await getChallenge(relay.url, vault.vaultId, other.deviceId);

    // Signed by the calling device (certified by the paper at enrollment).
    const revocation = revokeBody(vault, other.deviceId, device.deviceId, device.secret);
    const res = await post(`${relay.url}/v1/vaults/${vault.vaultId}/devices/${other.deviceId}/revoke`, revocation, bearer(token).headers);
    expect(res.status).toBe(200);
    const body = (await res.json()) as { id: string; revokedAt: number };
    expect(body.id).toBe(other.deviceId);
    expect(body.revokedAt).toBeGreaterThan(0);

    // The still-unexpired token is refused immediately.
    expect(await errorOf(await fetch(`${relay.url}/v1/vaults/${vault.vaultId}/devices`, bearer(otherToken)))).toEqual({
      status: 403,
      code: 'device_revoked',
    });
    expect(await errorOf(await post(`${relay.url}/v1/vaults/${vault.vaultId}/auth/challenge`, { deviceId: other.deviceId }))).toEqual({
      status: 403,
      code: 'device_revoked',
    });
    // A challenge issued before the revocation no longer buys a token.
    const late = await post(`${relay.url}/v1/vaults/${vault.vaultId}/auth/token`, tokenBody(vault.vaultId, other, pending));
    expect(await errorOf(late)).toEqual({ status: 401, code: 'unauthorized' });
    const reenroll = await post(`${relay.url}/v1/vaults/${vault.vaultId}/devices`, enrollBody(vault, other, 'again'));
    expect(await errorOf(reenroll)).toEqual({ status: 403, code: 'device_revoked' });

    // Idempotent: the same answer, the first time kept, one audit row.
    const again = await post(`${relay.url}/v1/vaults/${vault.vaultId}/devices/${other.deviceId}/revoke`, revokeBody(vault, other.deviceId), bearer(token).headers);
    expect(again.status).toBe(200);
    expect(((await again.json()) as { revokedAt: number }).revokedAt).toBe(body.revokedAt);
    const audit = await relay.vaults().prepare("SELECT device_id, actor_id FROM audit_log WHERE vault_id = ?1 AND event = 'device_revoked'").bind(vault.vaultId).all();
    expect(audit.results).toEqual([{ device_id: other.deviceId, actor_id: device.deviceId }]);
    // The first revocation is the one kept.
    const listed = (await (await fetch(`${relay.url}/v1/vaults/${vault.vaultId}/devices`, bearer(token))).json()) as { devices: { id: string; revocation: unknown }[] };
    expect(listed.devices.find((d) => d.id === other.deviceId)!.revocation).toEqual(revocation.revocation);

    // The revoker is unaffected.
    expect((await fetch(`${relay.url}/v1/vaults/${vault.vaultId}/devices`, bearer(token))).status).toBe(200);
  });

  it('answers 404 when revoking an unknown device', async () => {
    const { vault, token } = await setupVault(relay.url);
    for (const id of ['0123456789abcdef', 'nothex']) {
      const res = await post(`${relay.url}/v1/vaults/${vault.vaultId}/devices/${id}/revoke`, revokeBody(vault, id), bearer(token).headers);
      expect(await errorOf(res)).toEqual({ status: 404, code: 'not_found' });
    }
  });
});

describe('the epoch on every answer, and X-Casa-Expect-Epoch (a token kept between commands)', () => {
  it('names the vault epoch on authenticated answers, and refuses a request expecting another one (409) before the route runs', async () => {
    const { vault, token } = await setupVault(relay.url);
    const base = `${relay.url}/v1/vaults/${vault.vaultId}`;
    const first = await fetch(`${base}/changesets/heads`, bearer(token));
    expect(first.status).toBe(200);
    const epoch = first.headers.get('X-Casa-Epoch');
    expect(epoch).toMatch(/^\d+\.[0-9a-f]*$/);
    // The same epoch: answered as usual.
    const same = await fetch(`${base}/changesets/heads`, { headers: { Authorization: `Bearer ${token}`, 'X-Casa-Expect-Epoch': epoch! } });
    expect(same.status).toBe(200);
    // Another epoch: 409 epoch_moved with the current one, and nothing done (a digest PUT stores nothing).
    const moved = await fetch(`${base}/digest`, {
      method: 'PUT',
      headers: { Authorization: `Bearer ${token}`, 'X-Casa-Expect-Epoch': '7.0123456789abcdef', 'content-type': 'application/octet-stream' },
      body: new Uint8Array(64),
    });
    expect(moved.status).toBe(409);
    expect(moved.headers.get('X-Casa-Epoch')).toBe(epoch);
    const body = (await moved.json()) as { error: { code: string }; epoch: number; keyId: string };
    expect(body.error.code).toBe('epoch_moved');
    expect(`${body.epoch}.${body.keyId}`).toBe(epoch);
    const digests = (await (await fetch(`${base}/digests`, bearer(token))).json()) as { digests: unknown[] };
    expect(digests.digests).toEqual([]);
  });

  it('GET status answers what devices, log, snapshots/head and changesets/heads answer, in one', async () => {
    const { vault, token } = await setupVault(relay.url);
    const base = `${relay.url}/v1/vaults/${vault.vaultId}`;
    const get = async (p: string) => (await (await fetch(`${base}${p}`, bearer(token))).json()) as Record<string, unknown>;
    const status = await get('/status');
    expect(status.version).toEqual(expect.any(String));
    expect(status.devices).toEqual((await get('/devices')).devices);
    expect(status.events).toEqual((await get('/log?limit=20')).events);
    expect(status.head).toEqual((await get('/snapshots/head')).head);
    expect(status.changesets).toEqual(await get('/changesets/heads'));
    const anon = await fetch(`${base}/status`);
    expect(anon.status).toBe(401);
  });
});
