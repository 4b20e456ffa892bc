// Pairing by code (docs/RELAY-API.md "Pairing by code", worker/routes/pairing.ts)
// against the real worker in workerd: the mailbox's eight routes, long polls
// waking when the other side acts, single use, burn-after-failure, cancel,
// expiry (moved in D1: the worker has no clock backdoor), vault scoping, the
// join token, input checks, rate limits, the retention step, and the SQL of
// worker/pairing-db.ts run directly on the relay's D1.
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPairing, deleteOldPairings, getPairing } from '../../worker/pairing-db.js';
import { JSON_BODY_LIMIT } from '../../worker/http.js';
import { MAX_FINAL_MESSAGE } from '../../worker/routes/pairing.js';
import { PAIR_MAX_FINAL_BYTES } from '../../src/crypto/pairing.js';
import {
  b64u,
  bearer,
  enrollDevice,
  errorOf,
  fromB64u,
  getToken,
  joinPairing,
  openPairing,
  pairingBody,
  pakeMessage,
  post,
  randomHex,
  revokeBody,
  setupVault,
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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sha256Hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

// ---- speaking the pairing routes ---------------------------------------------

function offerUrl(vaultId: string, nameplate: string, query = ''): string {
  return `${relay.url}/v1/vaults/${vaultId}/pairings/${nameplate}${query}`;
}

const offerGet = (vaultId: string, token: string, nameplate: string, query = '') =>
  fetch(offerUrl(vaultId, nameplate, query), { headers: bearer(token) });
const finish = (vaultId: string, token: string, nameplate: string, body: unknown) =>
  post(offerUrl(vaultId, nameplate, '/finish'), body, bearer(token));
const cancel = (vaultId: string, token: string, nameplate: string) =>
  fetch(offerUrl(vaultId, nameplate), { method: 'DELETE', headers: bearer(token) });
const open = (vaultId: string, token: string, body: unknown) => post(`${relay.url}/v1/vaults/${vaultId}/pairings`, body, bearer(token));

const joinGet = (nameplate: string, headers: Record<string, string> = {}) => fetch(`${relay.url}/v1/pairings/${nameplate}`, { headers });
const join = (nameplate: string, body: unknown, headers: Record<string, string> = {}) =>
  post(`${relay.url}/v1/pairings/${nameplate}/join`, body, headers);
const result = (nameplate: string, token: string | null, query = '') =>
  fetch(`${relay.url}/v1/pairings/${nameplate}/result${query}`, { headers: token === null ? {} : bearer(token) });
const done = (nameplate: string, token: string | null, deviceId: string) =>
  post(`${relay.url}/v1/pairings/${nameplate}/done`, { deviceId }, token === null ? {} : bearer(token));

async function json(res: Response, status = 200): Promise<Record<string, unknown>> {
  const text = await res.text();
  expect(res.status, text).toBe(status);
  return JSON.parse(text) as Record<string, unknown>;
}

async function expectError(res: Response, status: number, code: string): Promise<void> {
  expect(await errorOf(res)).toEqual({ status, code });
}

async function row(nameplate: string): Promise<Record<string, unknown> | null> {
  return relay.vaults().prepare('SELECT * FROM pairing_sessions WHERE nameplate = ?1').bind(nameplate).first();
}

async function setExpiry(nameplate: string, expiresAt: number): Promise<void> {
  await relay.vaults().prepare('UPDATE pairing_sessions SET expires_at = ?2 WHERE nameplate = ?1').bind(nameplate, expiresAt).run();
}

/** A vault with its offering device, one session in it, joined. */
async function joined(): Promise<{ v: string; token: string; nameplate: string; joinToken: string; msgB: string }> {
  const { vault, token } = await setupVault(relay.url);
  const { nameplate } = await openPairing(relay.url, vault.vaultId, token);
  const msgB = pakeMessage();
  return { v: vault.vaultId, token, nameplate, joinToken: await joinPairing(relay.url, nameplate, msgB), msgB };
}

/** b64u of `n` bytes whose last character carries stray low bits: not canonical. */
function nonCanonical(n: number): string {
  const text = b64u(randomBytes(n));
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const last = alphabet.indexOf(text[text.length - 1]!);
  return text.slice(0, -1) + alphabet[last | 1];
}

// ---- the happy path --------------------------------------------------------------

describe('pairing by code', () => {
  it('runs a session through all eight routes, each long poll waking when the other side acts', async () => {
    const { vault, device, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const body = pairingBody();
    const before = Date.now();
    const opened = await json(await open(v, token, body), 201);
    expect(Object.keys(opened).sort()).toEqual(['expiresAt', 'nameplate']);
    const nameplate = opened.nameplate as string;
    expect(nameplate).toMatch(/^[1-9][0-9]*$/);
    expect(opened.expiresAt).toBeGreaterThanOrEqual(before + 600_000);
    expect(opened.expiresAt).toBeLessThanOrEqual(Date.now() + 600_000);

    // 5. The join side reads the offer.
    expect(await json(await joinGet(nameplate))).toEqual({ sid: body.sid, msgA: body.msgA, expiresAt: opened.expiresAt });
    expect(await json(await offerGet(v, token, nameplate))).toEqual({ state: 'open', expiresAt: opened.expiresAt });

    // 2 + 6. The offer side waits; the join wakes it.
    let t0 = Date.now();
    const offerWait = offerGet(v, token, nameplate, '?wait=10000');
    await sleep(400);
    const msgB = pakeMessage(100);
    const joinedBody = await json(await join(nameplate, { msgB }), 201);
    expect(Object.keys(joinedBody).sort()).toEqual(['expiresAt', 'token']);
    expect(joinedBody.expiresAt).toBe(opened.expiresAt);
    const joinToken = joinedBody.token as string;
    expect(fromB64u(joinToken)).toHaveLength(32);
    expect(await json(await offerWait)).toEqual({ state: 'joined', expiresAt: opened.expiresAt, msgB });
    expect(Date.now() - t0).toBeLessThan(5000);

    // 7 + 3. The join side waits; the final message wakes it.
    t0 = Date.now();
    const joinWait = result(nameplate, joinToken, '?wait=10000');
    await sleep(400);
    const msgFinal = pakeMessage(3000);
    expect(await json(await finish(v, token, nameplate, { ok: true, msgFinal }))).toEqual({ state: 'confirmed' });
    expect(await json(await joinWait)).toEqual({ state: 'confirmed', msgFinal });
    expect(Date.now() - t0).toBeLessThan(5000);

    // 2 (since=confirmed) + 8. The joiner enrolls (with the vault secret from msgFinal) and says which device it is.
    t0 = Date.now();
    const offerWait2 = offerGet(v, token, nameplate, '?since=confirmed&wait=10000');
    await sleep(400);
    const newDevice = await enrollDevice(relay.url, vault, 'joined by code');
    expect(await json(await done(nameplate, joinToken, newDevice.deviceId))).toEqual({ state: 'done' });
    expect(await json(await offerWait2)).toEqual({ state: 'done', expiresAt: opened.expiresAt, msgB, deviceId: newDevice.deviceId });
    expect(Date.now() - t0).toBeLessThan(5000);

    // After: the join side still sees the result; a retried done gets the same answer; the offer is gone.
    expect(await json(await result(nameplate, joinToken))).toEqual({ state: 'done', msgFinal });
    expect(await json(await done(nameplate, joinToken, newDevice.deviceId))).toEqual({ state: 'done' });
    await expectError(await joinGet(nameplate), 404, 'not_found');
    // 4. Cancelling an ended session changes nothing.
    expect(await json(await cancel(v, token, nameplate))).toEqual({ state: 'done' });

    // The relay holds exactly the opaque messages it was given, the token only as a hash.
    const stored = await row(nameplate);
    expect(stored).toEqual({
      nameplate,
      vault_id: v,
      offer_device_id: device.deviceId,
      sid: body.sid,
      msg_a: body.msgA,
      msg_b: msgB,
      msg_final: msgFinal,
      join_token_hash: sha256Hex(fromB64u(joinToken)),
      joined_device_id: newDevice.deviceId,
      state: 'done',
      created_at: expect.any(Number),
      expires_at: opened.expiresAt,
      updated_at: expect.any(Number),
    });
    expect(stored!.updated_at as number).toBeGreaterThan(stored!.created_at as number);
  });

  it('answers a long poll when its wait ends, with the state unchanged', async () => {
    const { vault, token } = await setupVault(relay.url);
    const { nameplate, expiresAt } = await openPairing(relay.url, vault.vaultId, token);
    const t0 = Date.now();
    expect(await json(await offerGet(vault.vaultId, token, nameplate, '?wait=600'))).toEqual({ state: 'open', expiresAt });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
    const joinToken = await joinPairing(relay.url, nameplate);
    const t1 = Date.now();
    expect(await json(await result(nameplate, joinToken, '?wait=600'))).toEqual({ state: 'joined' });
    expect(Date.now() - t1).toBeGreaterThanOrEqual(500);
    // since= another state than the current one: answered at once.
    const t2 = Date.now();
    expect((await json(await offerGet(vault.vaultId, token, nameplate, '?since=open&wait=10000'))).state).toBe('joined');
    expect(Date.now() - t2).toBeLessThan(2000);
  });

  it('is single use: a second join, even with another message, is 404 and changes nothing', async () => {
    const { nameplate, msgB, v, token } = await joined();
    await expectError(await join(nameplate, { msgB: pakeMessage() }), 404, 'not_found');
    await expectError(await join(nameplate, { msgB }), 404, 'not_found');
    await expectError(await joinGet(nameplate), 404, 'not_found');
    expect(await json(await offerGet(v, token, nameplate))).toMatchObject({ state: 'joined', msgB });
    expect((await row(nameplate))!.msg_b).toBe(msgB);
  });

  it('burns the session when the offer side reports a failed confirmation', async () => {
    const { nameplate, v, token, joinToken } = await joined();
    const joinWait = result(nameplate, joinToken, '?wait=10000');
    await sleep(300);
    expect(await json(await finish(v, token, nameplate, { ok: false, msgFinal: pakeMessage() }))).toEqual({ state: 'failed' });
    expect(await json(await joinWait)).toEqual({ state: 'failed' });
    await expectError(await joinGet(nameplate), 404, 'not_found');
    await expectError(await join(nameplate, { msgB: pakeMessage() }), 404, 'not_found');
    expect((await json(await offerGet(v, token, nameplate))).state).toBe('failed');
    // A retry of the same report is answered the same; anything else is too late.
    expect(await json(await finish(v, token, nameplate, { ok: false }))).toEqual({ state: 'failed' });
    await expectError(await finish(v, token, nameplate, { ok: true, msgFinal: pakeMessage() }), 409, 'conflict');
    await expectError(await done(nameplate, joinToken, randomHex(8)), 409, 'conflict');
    expect((await row(nameplate))!.msg_final).toBeNull();
  });

  it('cancels any live session, idempotently, and wakes the waiting side', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const a = await openPairing(relay.url, v, token);
    expect(await json(await cancel(v, token, a.nameplate))).toEqual({ state: 'cancelled' });
    expect(await json(await cancel(v, token, a.nameplate))).toEqual({ state: 'cancelled' });
    await expectError(await joinGet(a.nameplate), 404, 'not_found');
    await expectError(await join(a.nameplate, { msgB: pakeMessage() }), 404, 'not_found');
    expect(await json(await offerGet(v, token, a.nameplate))).toEqual({ state: 'cancelled', expiresAt: a.expiresAt });

    // Joined, with the joiner waiting for the result.
    const b = await openPairing(relay.url, v, token);
    const joinToken = await joinPairing(relay.url, b.nameplate);
    const joinWait = result(b.nameplate, joinToken, '?wait=10000');
    await sleep(300);
    expect(await json(await cancel(v, token, b.nameplate))).toEqual({ state: 'cancelled' });
    expect(await json(await joinWait)).toEqual({ state: 'cancelled' });
    await expectError(await finish(v, token, b.nameplate, { ok: true, msgFinal: pakeMessage() }), 409, 'conflict');

    // Confirmed: cancelled, and msgFinal is no longer handed out.
    const c = await openPairing(relay.url, v, token);
    const cToken = await joinPairing(relay.url, c.nameplate);
    await json(await finish(v, token, c.nameplate, { ok: true, msgFinal: pakeMessage() }));
    expect(await json(await cancel(v, token, c.nameplate))).toEqual({ state: 'cancelled' });
    expect(await json(await result(c.nameplate, cToken))).toEqual({ state: 'cancelled' });

    await expectError(await cancel(v, token, '9999999'), 404, 'not_found');
  });

  it('expires: the offer side sees "expired", the join side 404, and no move is allowed', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const before = Date.now();
    const a = await openPairing(relay.url, v, token, pairingBody({ ttlSeconds: 60 }));
    expect(a.expiresAt).toBeGreaterThanOrEqual(before + 60_000);
    expect(a.expiresAt).toBeLessThanOrEqual(Date.now() + 60_000);

    // A long poll wakes when the session expires under it.
    await setExpiry(a.nameplate, Date.now() + 800);
    const t0 = Date.now();
    expect((await json(await offerGet(v, token, a.nameplate, '?wait=10000'))).state).toBe('expired');
    expect(Date.now() - t0).toBeLessThan(5000);
    await expectError(await joinGet(a.nameplate), 404, 'not_found');
    await expectError(await join(a.nameplate, { msgB: pakeMessage() }), 404, 'not_found');

    // Joined, then expired: the joiner's result says so; finishing is a conflict.
    const b = await openPairing(relay.url, v, token);
    const bToken = await joinPairing(relay.url, b.nameplate);
    await setExpiry(b.nameplate, Date.now() - 1);
    expect(await json(await result(b.nameplate, bToken))).toEqual({ state: 'expired' });
    expect((await json(await offerGet(v, token, b.nameplate))).state).toBe('expired');
    const res = await finish(v, token, b.nameplate, { ok: true, msgFinal: pakeMessage() });
    expect(await json(res, 409)).toEqual({ error: { code: 'conflict', message: 'the pairing session expired' } });
    expect((await row(b.nameplate))!.state).toBe('joined');

    // Confirmed, then expired: msgFinal is no longer handed out and done is refused.
    const c = await openPairing(relay.url, v, token);
    const cToken = await joinPairing(relay.url, c.nameplate);
    await json(await finish(v, token, c.nameplate, { ok: true, msgFinal: pakeMessage() }));
    await setExpiry(c.nameplate, Date.now() - 1);
    expect(await json(await result(c.nameplate, cToken))).toEqual({ state: 'expired' });
    const d = await enrollDevice(relay.url, vault);
    await expectError(await done(c.nameplate, cToken, d.deviceId), 409, 'conflict');
    // Cancelling an expired session still works.
    expect(await json(await cancel(v, token, c.nameplate))).toEqual({ state: 'cancelled' });
  });
});

// ---- who may do what -------------------------------------------------------------

describe('pairing: vaults and tokens', () => {
  it("gives another vault's device the same 404 for a session whether it exists or not", async () => {
    const a = await setupVault(relay.url);
    const b = await setupVault(relay.url);
    const { nameplate } = await openPairing(relay.url, a.vault.vaultId, a.token);
    const unknown = '999999';
    const vb = b.vault.vaultId;
    const pairs: [Response, Response][] = [
      [await offerGet(vb, b.token, nameplate), await offerGet(vb, b.token, unknown)],
      [await offerGet(vb, b.token, nameplate, '?wait=500'), await offerGet(vb, b.token, unknown, '?wait=500')],
      [await finish(vb, b.token, nameplate, { ok: false }), await finish(vb, b.token, unknown, { ok: false })],
      [await cancel(vb, b.token, nameplate), await cancel(vb, b.token, unknown)],
      // B's token on A's vault path: requireDevice's 404.
      [await offerGet(a.vault.vaultId, b.token, nameplate), await offerGet(a.vault.vaultId, b.token, unknown)],
      [await cancel(a.vault.vaultId, b.token, nameplate), await cancel(a.vault.vaultId, b.token, unknown)],
    ];
    for (const [exists, missing] of pairs) {
      expect(exists.status).toBe(404);
      expect(await exists.json()).toEqual(await missing.json());
      expect(missing.status).toBe(404);
    }
    expect(await json(await offerGet(a.vault.vaultId, a.token, nameplate))).toMatchObject({ state: 'open' });
    // A malformed nameplate is not a session either.
    await expectError(await offerGet(a.vault.vaultId, a.token, '0123'), 404, 'not_found');
    await expectError(await offerGet(a.vault.vaultId, a.token, 'abc'), 404, 'not_found');
  });

  it('requires a device token on the offer routes', async () => {
    const { vault } = await setupVault(relay.url);
    await expectError(await post(`${relay.url}/v1/vaults/${vault.vaultId}/pairings`, pairingBody()), 401, 'unauthorized');
    await expectError(await fetch(`${relay.url}/v1/vaults/${vault.vaultId}/pairings/123`), 401, 'unauthorized');
  });

  it('answers the join side 404 alike for unknown, malformed, used and ended sessions', async () => {
    const bodies = new Set<string>();
    const { nameplate: used } = await joined();
    for (const n of ['999998', '0', '012', 'x1', '1234567890', used]) {
      const res = await joinGet(n);
      expect(res.status).toBe(404);
      bodies.add(await res.text());
      const j = await join(n, { msgB: pakeMessage() });
      expect(j.status).toBe(404);
      bodies.add(await j.text());
    }
    expect(bodies.size).toBe(1);
  });

  it('requires the join token on result and done: wrong or missing → 401, unknown session → 404', async () => {
    const s = await joined();
    const other = await joined();
    const random = b64u(randomBytes(32));
    await expectError(await result(s.nameplate, null), 401, 'unauthorized');
    await expectError(await result(s.nameplate, random), 401, 'unauthorized');
    await expectError(await result(s.nameplate, other.joinToken), 401, 'unauthorized');
    await expectError(await result(s.nameplate, 'not a token'), 401, 'unauthorized');
    await expectError(await result(s.nameplate, b64u(randomBytes(31))), 401, 'unauthorized');
    await expectError(await result('999997', s.joinToken), 404, 'not_found');
    await expectError(await done(s.nameplate, null, randomHex(8)), 401, 'unauthorized');
    await expectError(await done(s.nameplate, other.joinToken, randomHex(8)), 401, 'unauthorized');
    await expectError(await done('999997', s.joinToken, randomHex(8)), 404, 'not_found');
    // An open session has no token yet: any token is wrong.
    const { vault, token } = await setupVault(relay.url);
    const { nameplate } = await openPairing(relay.url, vault.vaultId, token);
    await expectError(await result(nameplate, random), 401, 'unauthorized');
    expect(await json(await result(s.nameplate, s.joinToken))).toEqual({ state: 'joined' });
  });

  it('finishes only with an enrolled, unrevoked device of the vault; done only once confirmed', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const { nameplate } = await openPairing(relay.url, v, token);
    const joinToken = await joinPairing(relay.url, nameplate);
    const mine = await enrollDevice(relay.url, vault, 'new');
    // Joined, not confirmed yet.
    await expectError(await done(nameplate, joinToken, mine.deviceId), 409, 'conflict');
    await json(await finish(v, token, nameplate, { ok: true, msgFinal: pakeMessage() }));

    const foreign = await setupVault(relay.url);
    const revoked = await enrollDevice(relay.url, vault, 'revoked');
    await json(await post(`${relay.url}/v1/vaults/${v}/devices/${revoked.deviceId}/revoke`, revokeBody(vault, revoked.deviceId), bearer(token)));
    for (const id of [foreign.device.deviceId, revoked.deviceId, randomHex(8)]) {
      const res = await done(nameplate, joinToken, id);
      expect(await json(res, 409)).toEqual({
        error: { code: 'conflict', message: 'the device is not an enrolled, unrevoked device of this vault' },
      });
    }
    await expectError(await done(nameplate, joinToken, 'ABC'), 400, 'bad_request');
    expect((await row(nameplate))!.state).toBe('confirmed');
    expect(await json(await done(nameplate, joinToken, mine.deviceId))).toEqual({ state: 'done' });
    // Done is final: another device cannot be named after it.
    await expectError(await done(nameplate, joinToken, (await enrollDevice(relay.url, vault)).deviceId), 409, 'conflict');
    // The offer side cannot burn a finished session.
    await expectError(await finish(v, token, nameplate, { ok: false }), 409, 'conflict');
  });

  it('lets a vault have at most 3 live sessions; ended and expired ones do not count', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const s = [];
    for (let i = 0; i < 3; i++) s.push(await openPairing(relay.url, v, token));
    const refused = await open(v, token, pairingBody());
    // The live-session quota (QUOTA_PAIRINGS, default 3): 507 quota_exceeded, naming it.
    expect(await json(refused, 507)).toEqual({
      error: { code: 'quota_exceeded', message: 'this vault has reached its quota of live pairing sessions (3 of 3)' },
      quota: 'pairings',
      limit: 3,
      used: 3,
    });
    // Another device of the vault: the limit is the vault's.
    const d2 = await enrollDevice(relay.url, vault);
    const t2 = await getToken(relay.url, v, d2);
    await expectError(await open(v, t2, pairingBody()), 507, 'quota_exceeded');
    // Another vault is not affected.
    const other = await setupVault(relay.url);
    await openPairing(relay.url, other.vault.vaultId, other.token);

    await json(await cancel(v, token, s[0]!.nameplate));
    s.push(await openPairing(relay.url, v, token));
    await expectError(await open(v, token, pairingBody()), 507, 'quota_exceeded');
    await setExpiry(s[1]!.nameplate, Date.now() - 1);
    s.push(await openPairing(relay.url, v, token));
    // Joined and confirmed sessions are live too.
    const joinToken = await joinPairing(relay.url, s[2]!.nameplate);
    await json(await finish(v, token, s[2]!.nameplate, { ok: true, msgFinal: pakeMessage() }));
    expect(joinToken).toBeTruthy();
    await expectError(await open(v, token, pairingBody()), 507, 'quota_exceeded');
  });

  it('draws short decimal nameplates without leading zeros', async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 10; i++) {
      const { vault, token } = await setupVault(relay.url);
      for (let j = 0; j < 3; j++) {
        const { nameplate } = await openPairing(relay.url, vault.vaultId, token);
        expect(nameplate).toMatch(/^[1-9][0-9]{0,5}$/);
        seen.add(nameplate);
      }
    }
    expect(seen.size).toBe(30);
    // With a few dozen live sessions among 9,999 numbers, all stay below 10,000.
    expect([...seen].filter((n) => Number(n) >= 10_000)).toEqual([]);
  });
});

// ---- input ------------------------------------------------------------------------

describe('pairing: input checks', () => {
  it('refuses malformed sid, msgA and ttlSeconds with 400 and opens nothing', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const bad: Record<string, unknown>[] = [
      { sid: 'ABCDEF'.padEnd(32, '0') },
      { sid: randomHex(15) },
      { sid: randomHex(17) },
      { sid: 42 },
      { sid: undefined },
      { msgA: b64u(randomBytes(32)) },
      { msgA: b64u(randomBytes(1025)) },
      { msgA: nonCanonical(34) },
      { msgA: `${b64u(randomBytes(34))}==` },
      { msgA: Buffer.from(randomBytes(48)).toString('base64').replace(/[A-Za-z0-9]$/, '+') },
      { msgA: undefined },
      { ttlSeconds: 59 },
      { ttlSeconds: 1801 },
      { ttlSeconds: '600' },
      { ttlSeconds: 600.5 },
      { ttlSeconds: null },
    ];
    for (const over of bad) {
      const res = await open(v, token, pairingBody(over));
      expect(res.status, JSON.stringify(over)).toBe(400);
      expect((await res.json()).error.code).toBe('bad_request');
    }
    await expectError(await open(v, token, 'not json'), 400, 'bad_request');
    await expectError(await open(v, token, [1, 2]), 400, 'bad_request');
    const { results } = await relay.vaults().prepare('SELECT nameplate FROM pairing_sessions WHERE vault_id = ?1').bind(v).all();
    expect(results).toEqual([]);
    // The edges are accepted.
    await openPairing(relay.url, v, token, pairingBody({ msgA: b64u(randomBytes(33)), ttlSeconds: 60 }));
    await openPairing(relay.url, v, token, pairingBody({ msgA: b64u(randomBytes(1024)), ttlSeconds: 1800 }));
  });

  it('refuses malformed msgB, msgFinal, ok, wait and since with 400, leaving the session as it was', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const { nameplate } = await openPairing(relay.url, v, token);
    for (const msgB of [b64u(randomBytes(32)), b64u(randomBytes(1025)), nonCanonical(40), 7, undefined]) {
      await expectError(await join(nameplate, { msgB }), 400, 'bad_request');
    }
    await expectError(await join(nameplate, 'nope'), 400, 'bad_request');
    // Over the 64 KiB JSON cap.
    await expectError(await join(nameplate, { msgB: 'A'.repeat(70_000) }), 413, 'too_large');
    expect((await row(nameplate))!.state).toBe('open');

    const joinToken = await joinPairing(relay.url, nameplate);
    for (const body of [{}, { ok: 'yes' }, { ok: 1 }, { ok: true }, { ok: true, msgFinal: b64u(randomBytes(MAX_FINAL_MESSAGE + 1)) }, { ok: true, msgFinal: '' }, { ok: true, msgFinal: nonCanonical(50) }]) {
      await expectError(await finish(v, token, nameplate, body), 400, 'bad_request');
    }
    for (const q of ['?wait=25001', '?wait=-1', '?wait=abc', '?wait=', '?wait=1e3', '?since=bogus', '?since=']) {
      await expectError(await offerGet(v, token, nameplate, q), 400, 'bad_request');
    }
    for (const q of ['?wait=25001', '?wait=x']) await expectError(await result(nameplate, joinToken, q), 400, 'bad_request');
    expect((await row(nameplate))!.state).toBe('joined');
    // The edges are accepted.
    expect((await json(await offerGet(v, token, nameplate, '?wait=0&since=expired'))).state).toBe('joined');
    expect(await json(await finish(v, token, nameplate, { ok: true, msgFinal: b64u(randomBytes(MAX_FINAL_MESSAGE)) }))).toEqual({ state: 'confirmed' });
  });

  it('carries a msgFinal of the largest size (a keyring of ~150 epochs needs ~29 KB) whole to the joiner, within the JSON cap', async () => {
    // The CLI seals up to exactly what the relay takes, and the finish body fits the 64 KiB JSON cap.
    expect(PAIR_MAX_FINAL_BYTES).toBe(MAX_FINAL_MESSAGE);
    const msgFinal = b64u(randomBytes(MAX_FINAL_MESSAGE));
    expect(new TextEncoder().encode(JSON.stringify({ ok: true, msgFinal })).length).toBeLessThanOrEqual(JSON_BODY_LIMIT);
    const { v, token, nameplate, joinToken } = await joined();
    expect(await json(await finish(v, token, nameplate, { ok: true, msgFinal }))).toEqual({ state: 'confirmed' });
    expect(await json(await result(nameplate, joinToken))).toEqual({ state: 'confirmed', msgFinal });
    expect((await row(nameplate))!.msg_final).toBe(msgFinal);
  });
});

// ---- rate limits --------------------------------------------------------------------

describe('pairing: rate limits', () => {
  // Its own relay with small pairing limits (the others stay generous); as in
  // limits.test.ts, 2 × limit + 1 requests so some fixed window sees too many.
  const LIMIT = 3;
  let small: TestRelay;
  beforeAll(async () => {
    small = await startTestRelay({
      rateLimits: { PAIR_LIMITER: { limit: LIMIT, period: 60 }, PAIR_JOIN_LIMITER: { limit: LIMIT, period: 60 } },
    });
  });
  afterAll(async () => {
    await small?.stop();
  });

  async function expectLimited(responses: Response[]): Promise<void> {
    const limited = responses.filter((r) => r.status === 429);
    expect(limited.length).toBeGreaterThan(0);
    for (const r of limited) {
      expect(Number(r.headers.get('Retry-After'))).toBeGreaterThan(0);
      expect(await r.json()).toEqual({ error: { code: 'rate_limited', message: expect.any(String) } });
    }
  }

  it('limits opening sessions per device (PAIR_LIMITER), before the body is read', async () => {
    const { vault, token } = await setupVault(small.url);
    const res: Response[] = [];
    for (let i = 0; i < 2 * LIMIT + 1; i++) {
      res.push(await post(`${small.url}/v1/vaults/${vault.vaultId}/pairings`, { not: 'checked before the limit' }, bearer(token)));
    }
    await expectLimited(res);
    // Another device has its own budget.
    const d2 = await enrollDevice(small.url, vault);
    const t2 = await getToken(small.url, vault.vaultId, d2);
    expect((await post(`${small.url}/v1/vaults/${vault.vaultId}/pairings`, pairingBody(), bearer(t2))).status).toBe(201);
  });

  it('limits the join side per client IP (PAIR_JOIN_LIMITER); other IPs and the result poll are not affected', async () => {
    const { vault, token } = await setupVault(small.url);
    const { nameplate } = await openPairing(small.url, vault.vaultId, token);
    const ip = { 'CF-Connecting-IP': '198.51.100.7' };
    const reads: Response[] = [];
    for (let i = 0; i < 2 * LIMIT + 1; i++) reads.push(await fetch(`${small.url}/v1/pairings/${100_000 + i}`, { headers: ip }));
    await expectLimited(reads);
    const joins: Response[] = [];
    for (let i = 0; i < 2 * LIMIT + 1; i++) joins.push(await post(`${small.url}/v1/pairings/${nameplate}/join`, {}, { 'CF-Connecting-IP': '198.51.100.8' }));
    await expectLimited(joins);
    const dones: Response[] = [];
    for (let i = 0; i < 2 * LIMIT + 1; i++) dones.push(await post(`${small.url}/v1/pairings/${nameplate}/done`, {}, { 'CF-Connecting-IP': '198.51.100.9' }));
    await expectLimited(dones);
    expect((await fetch(`${small.url}/v1/pairings/${nameplate}`, { headers: { 'CF-Connecting-IP': '198.51.100.10' } })).status).toBe(200);
    // The joiner's poll answers many times over the join limit (API_LIMITER by IP, generous here).
    const joinRes = await post(`${small.url}/v1/pairings/${nameplate}/join`, { msgB: pakeMessage() }, { 'CF-Connecting-IP': '198.51.100.11' });
    const joinToken = ((await json(joinRes, 201)) as { token: string }).token;
    for (let i = 0; i < 2 * LIMIT + 1; i++) {
      const r = await fetch(`${small.url}/v1/pairings/${nameplate}/result`, { headers: { ...bearer(joinToken), 'CF-Connecting-IP': '198.51.100.11' } });
      expect(r.status).toBe(200);
    }
    // But a failed poll (unknown nameplate, wrong token) costs a join-limit hit: no cheaper probe.
    const probes: Response[] = [];
    for (let i = 0; i < 2 * LIMIT + 1; i++) {
      const n = i % 2 === 0 ? nameplate : String(200_000 + i);
      probes.push(await fetch(`${small.url}/v1/pairings/${n}/result`, { headers: { ...bearer(b64u(randomBytes(32))), 'CF-Connecting-IP': '198.51.100.12' } }));
    }
    await expectLimited(probes);
  });
});

// ---- retention and the SQL --------------------------------------------------------------

describe('pairing: retention and pairing-db.ts', () => {
  it('the cron deletes sessions an hour past their expiry, whatever their state, and keeps the rest', async () => {
    const { vault, token } = await setupVault(relay.url);
    const v = vault.vaultId;
    const old = await openPairing(relay.url, v, token);
    const oldJoined = await joined();
    const recent = await openPairing(relay.url, v, token);
    const live = await openPairing(relay.url, v, token);
    const now = Date.now();
    await setExpiry(old.nameplate, now - 2 * 3600_000);
    await setExpiry(oldJoined.nameplate, now - 3600_000 - 5000);
    await setExpiry(recent.nameplate, now - 30 * 60_000);
    await relay.runCron();
    expect(await row(old.nameplate)).toBeNull();
    expect(await row(oldJoined.nameplate)).toBeNull();
    expect((await row(recent.nameplate))!.state).toBe('open');
    expect((await row(live.nameplate))!.state).toBe('open');
    // Idempotent.
    await relay.runCron();
    expect((await row(recent.nameplate))!.state).toBe('open');
  });

  // The SQL in a vault's own object (nameplates of 9 digits, which the relay never draws; vault ids of sessions are free-form there).
  let scratch = '';
  beforeAll(async () => {
    scratch = (await setupVault(relay.url)).vault.vaultId;
  });
  const db = () => relay.vault(scratch) as unknown as D1Database;
  const session = (nameplate: string, vaultId: string, now = Date.now()) => ({
    nameplate,
    vaultId,
    offerDeviceId: randomHex(8),
    sid: randomHex(16),
    msgA: pakeMessage(),
    now,
    expiresAt: now + 600_000,
  });

  it('createPairing takes a nameplate over only from an expired session or one that ended over a minute ago', async () => {
    const va = randomHex(16);
    const vb = randomHex(16);
    const n = '900000001';
    expect(await createPairing(db(), session(n, va), 3)).toBe('created');
    // Live: taken, row untouched.
    expect(await createPairing(db(), session(n, vb), 3)).toBe('taken');
    expect((await getPairing(db(), n))!.vault_id).toBe(va);
    // Ended just now: still taken (both sides may still be reading how it ended).
    await relay.vaults().prepare("UPDATE pairing_sessions SET state = 'failed', msg_b = 'x', join_token_hash = 'h', updated_at = ?2 WHERE nameplate = ?1").bind(n, Date.now()).run();
    expect(await createPairing(db(), session(n, vb), 3)).toBe('taken');
    // Ended over a minute ago: replaced, every column reset.
    await relay.vaults().prepare('UPDATE pairing_sessions SET updated_at = ?2 WHERE nameplate = ?1').bind(n, Date.now() - 61_000).run();
    const fresh = session(n, vb);
    expect(await createPairing(db(), fresh, 3)).toBe('created');
    expect(await getPairing(db(), n)).toEqual({
      nameplate: n,
      vault_id: vb,
      offer_device_id: fresh.offerDeviceId,
      sid: fresh.sid,
      msg_a: fresh.msgA,
      msg_b: null,
      msg_final: null,
      join_token_hash: null,
      joined_device_id: null,
      state: 'open',
      created_at: fresh.now,
      expires_at: fresh.expiresAt,
      updated_at: fresh.now,
    });
    // Expired (still open): replaced at once.
    await setExpiry(n, Date.now() - 1);
    expect(await createPairing(db(), session(n, va), 3)).toBe('created');
    expect((await getPairing(db(), n))!.vault_id).toBe(va);
  });

  it('createPairing counts the live sessions of the vault in the same statement', async () => {
    const v = randomHex(16);
    for (const n of ['900000011', '900000012']) expect(await createPairing(db(), session(n, v), 2)).toBe('created');
    expect(await createPairing(db(), session('900000013', v), 2)).toBe('full');
    expect(await getPairing(db(), '900000013')).toBeNull();
    // Concurrent creations cannot overshoot: each INSERT counts as it inserts.
    const w = randomHex(16);
    const outcomes = await Promise.all(['900000021', '900000022', '900000023', '900000024', '900000025'].map((n) => createPairing(db(), session(n, w), 3)));
    expect(outcomes.filter((o) => o === 'created')).toHaveLength(3);
    expect(outcomes.filter((o) => o === 'full')).toHaveLength(2);
  });

  it('deleteOldPairings deletes in bounded batches', async () => {
    const v = randomHex(16);
    const long = Date.now() - 10 * 3600_000;
    const names = ['900000031', '900000032', '900000033'];
    for (const n of names) expect(await createPairing(db(), session(n, v), 3)).toBe('created');
    for (const n of names) await setExpiry(n, long);
    const cutoff = long + 1;
    expect(await deleteOldPairings(db(), cutoff, 2)).toBe(2);
    expect(await deleteOldPairings(db(), cutoff, 2)).toBe(1);
    expect(await deleteOldPairings(db(), cutoff, 2)).toBe(0);
  });
});
