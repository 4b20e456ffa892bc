// Membership and key epochs on the relay (docs/RELAY-API.md "Membership and
// epochs", docs/FORMAT.md §9, docs/SECURITY.md §3), against the real worker
// in workerd: enrollment by certificate (the paper's or a member's), the
// version-1 device certifying itself, signed revocations, epoch records and
// their guards (epoch, key id, heads, recipients, wraps), stale uploads, the
// paper replacement and the recovery-id lookup, and the audit log.
//
// Records are real: signed with src/crypto/sign.ts over the field lists of
// src/protocol/membership.ts, by the paper's key (src/crypto/kdf.ts) or a
// device's. Wraps are random bytes: the relay only hashes them.
import { randomBytes } from 'node:crypto';
import { WebSocket } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { vaultKeysFromRoot } from '../../src/crypto/kdf.js';
import { recoveryKeys } from '../../src/crypto/keyring.js';
import { publicKeyFromSeed, signPurpose } from '../../src/crypto/sign.js';
import {
  certFields,
  deviceIdOf,
  epochFields,
  formatRecipients,
  RECOVERY,
  recoveryFields,
  revocationFields,
  type DeviceCert,
  type EpochRecord,
  type RecoveryRecord,
  type Revocation,
} from '../../src/protocol/membership.js';
import {
  b64u,
  bearer,
  chunked,
  commit,
  commitBody,
  createVault,
  errorOf,
  getToken,
  newDevice,
  openPairing,
  post,
  putObject,
  randomHex,
  sha256Hex,
  startTestRelay,
  uploadPack,
  type TestDevice,
  type TestRelay,
  type TestVault,
} from '../helpers/relay.js';

let relay: TestRelay;
beforeAll(async () => {
  relay = await startTestRelay();
});
afterAll(async () => {
  await relay?.stop();
});

// ---- records -----------------------------------------------------------------

interface Paper {
  authSeed: Uint8Array;
  authKey: string;
  exchangeKey: string;
  recoveryId: string;
}

/** A paper from a random root: its auth key is the vault auth key of FORMAT.md §2, its id the vault id it makes. */
function newPaper(): Paper {
  const root = new Uint8Array(randomBytes(32));
  const keys = vaultKeysFromRoot(root);
  const r = recoveryKeys(root);
  expect(r.recoveryId).toBe(keys.vaultId);
  return { authSeed: keys.authSeed!, authKey: b64u(keys.authPublicKey!), exchangeKey: b64u(r.exchange.publicKey), recoveryId: r.recoveryId };
}

const sig = (seed: Uint8Array, purpose: Parameters<typeof signPurpose>[1], fields: (string | number)[]) => b64u(signPurpose(seed, purpose, fields));

function cert(vaultId: string, d: TestDevice, issuer: string, signer: Uint8Array, over: Partial<DeviceCert> = {}): DeviceCert {
  const unsigned = {
    vaultId,
    deviceId: d.deviceId,
    signingKey: d.publicKey,
    exchangeKey: d.exchangeKey!,
    name: 'device',
    issuedAt: Date.now(),
    issuer,
    ...over,
  };
  return { ...unsigned, signature: sig(signer, 'device-cert', certFields(unsigned)) };
}

function revocation(vaultId: string, deviceId: string, issuer: string, signer: Uint8Array): Revocation {
  const unsigned = { vaultId, deviceId, revokedAt: Date.now(), issuer };
  return { ...unsigned, signature: sig(signer, 'revoke', revocationFields(unsigned)) };
}

interface EpochOpts {
  epoch: number;
  keyId: string;
  prevKeyId: string;
  recoveryKey: string;
  issuer: string;
  signer: Uint8Array;
  /** Recipient ids; each gets a wrap of random bytes unless `wraps` says otherwise. */
  to: string[];
  markCursor?: number;
  markSeq?: number;
  wraps?: Record<string, Uint8Array>;
}

function epochRecord(vaultId: string, o: EpochOpts): EpochRecord & { wraps: Record<string, string> } {
  const wraps = o.wraps ?? Object.fromEntries(o.to.map((id) => [id, new Uint8Array(randomBytes(150))]));
  const recipients = formatRecipients(new Map(Object.entries(wraps).map(([id, w]) => [id, sha256Hex(w)])));
  const unsigned = {
    vaultId,
    epoch: o.epoch,
    keyId: o.keyId,
    prevKeyId: o.prevKeyId,
    recoveryKey: o.recoveryKey,
    markCursor: o.markCursor ?? 0,
    markSeq: o.markSeq ?? 0,
    createdAt: Date.now(),
    issuer: o.issuer,
    recipients,
  };
  return {
    ...unsigned,
    signature: sig(o.signer, 'epoch', epochFields(unsigned)),
    wraps: Object.fromEntries(Object.entries(wraps).map(([id, w]) => [id, b64u(w)])),
  };
}

/** Bytes that look like an object sealed under `keyId` to the relay: its header's bytes 8..16. */
function sealedUnder(keyId: string, size = 96): Uint8Array {
  const b = new Uint8Array(randomBytes(size));
  b.set(new TextEncoder().encode('CASA'), 0);
  b.set(Buffer.from(keyId, 'hex'), 8);
  return b;
}

// ---- talking to the relay ----------------------------------------------------

interface Vault {
  vault: TestVault;
  paper: Paper;
  v: string;
  /** Enrolled by the paper, with a token. */
  a: TestDevice;
  tokenA: string;
}

async function newVault(): Promise<Vault> {
  const paper = newPaper();
  const vault: TestVault = { vaultId: paper.recoveryId, authSecret: paper.authSeed, authPublicKey: paper.authKey, canary: b64u(randomBytes(60)) };
  await createVault(relay.url, vault);
  const a = newDevice();
  expect((await enroll(vault.vaultId, cert(vault.vaultId, a, RECOVERY, paper.authSeed))).status).toBe(201);
  return { vault, paper, v: vault.vaultId, a, tokenA: await getToken(relay.url, vault.vaultId, a) };
}

const url = (v: string, path: string) => `${relay.url}/v1/vaults/${v}${path}`;
const enroll = (v: string, c: unknown) => post(url(v, '/devices'), { cert: c });

/** Enrolls a new device by the paper and gets it a token. */
async function member(x: Vault, name = 'device'): Promise<{ d: TestDevice; token: string }> {
  const d = newDevice();
  expect((await enroll(x.v, cert(x.v, d, RECOVERY, x.paper.authSeed, { name }))).status).toBe(201);
  return { d, token: await getToken(relay.url, x.v, d) };
}

const revoke = (x: Vault, token: string, r: Revocation) => post(url(x.v, `/devices/${r.deviceId}/revoke`), { revocation: r }, bearer(token));
const postEpoch = (x: Vault, token: string, e: unknown) => post(url(x.v, '/epochs'), e, bearer(token));

async function json<T = Record<string, unknown>>(res: Response, status = 200): Promise<T> {
  const text = await res.text();
  expect(res.status, text).toBe(status);
  return JSON.parse(text) as T;
}

async function heads(x: Vault): Promise<{ markCursor: number; markSeq: number }> {
  const cs = await json<{ head: number }>(await fetch(url(x.v, '/changesets/heads'), { headers: bearer(x.tokenA) }));
  const snap = await json<{ head: { seq: number } | null }>(await fetch(url(x.v, '/snapshots/head'), { headers: bearer(x.tokenA) }));
  return { markCursor: cs.head, markSeq: snap.head?.seq ?? 0 };
}

function pushChangeset(x: Vault, token: string, seq: number, body: Uint8Array, opts: { chunked?: boolean } = {}): Promise<Response> {
  return fetch(url(x.v, '/changesets'), {
    method: 'POST',
    headers: { ...bearer(token), 'content-type': 'application/octet-stream', 'X-Casa-Sha256': sha256Hex(body), 'X-Casa-Seq': String(seq) },
    body: opts.chunked ? chunked(body) : (body as Uint8Array<ArrayBuffer>),
    duplex: 'half',
  } as RequestInit);
}

/** Epoch 1 signed by the paper, sealed to A and the paper, at the current heads. */
async function epochOne(x: Vault): Promise<EpochRecord & { wraps: Record<string, string> }> {
  const e = epochRecord(x.v, {
    epoch: 1,
    keyId: randomHex(8),
    prevKeyId: '',
    recoveryKey: x.paper.exchangeKey,
    issuer: RECOVERY,
    signer: x.paper.authSeed,
    to: [x.a.deviceId, RECOVERY],
    ...(await heads(x)),
  });
  expect(await json(await postEpoch(x, x.tokenA, e), 201)).toEqual({ epoch: 1, keyId: e.keyId });
  return e;
}

async function log(x: Vault, query = ''): Promise<{ at: number; event: string; deviceId: string | null; actorId: string | null }[]> {
  return (await json<{ events: { at: number; event: string; deviceId: string | null; actorId: string | null }[] }>(await fetch(url(x.v, `/log${query}`), { headers: bearer(x.tokenA) }))).events;
}

// ---- enrollment and certificates ---------------------------------------------

describe('enrollment by certificate', () => {
  it('enrolls by the paper: the id is the device id of the key; the list shows the certificate', async () => {
    const x = await newVault();
    const d = newDevice();
    expect(d.deviceId).toBe(deviceIdOf(publicKeyFromSeed(d.secret)));
    const c = cert(x.v, d, RECOVERY, x.paper.authSeed, { name: 'laptop' });
    const body = await json<Record<string, unknown>>(await enroll(x.v, c), 201);
    expect(body).toMatchObject({ deviceId: d.deviceId, epoch: 0, canary: x.vault.canary });
    const { devices } = await json<{ devices: { id: string; name: string; cert: DeviceCert | null; revocation: unknown }[] }>(
      await fetch(url(x.v, '/devices'), { headers: bearer(x.tokenA) }),
    );
    expect(devices.find((r) => r.id === d.deviceId)).toMatchObject({ name: 'laptop', cert: c, revocation: null });
    expect((await log(x)).find((e) => e.event === 'device_enrolled' && e.deviceId === d.deviceId)).toMatchObject({ actorId: null });
  });

  it('enrolls a device vouched for by a member; not by itself, an unknown device, or a forged signature (401)', async () => {
    const x = await newVault();
    const b = newDevice();
    // B vouching for itself, or a device that is not enrolled: not a member's word.
    const stranger = newDevice();
    for (const c of [cert(x.v, b, b.deviceId, b.secret), cert(x.v, b, stranger.deviceId, stranger.secret)]) {
      expect(await errorOf(await enroll(x.v, c))).toEqual({ status: 401, code: 'unauthorized' });
    }
    // Forged: issuer A or the paper, signed by someone else.
    const forger = new Uint8Array(randomBytes(32));
    for (const c of [cert(x.v, b, x.a.deviceId, forger), cert(x.v, b, RECOVERY, forger)]) {
      expect(await errorOf(await enroll(x.v, c))).toEqual({ status: 401, code: 'unauthorized' });
    }
    expect(await relay.vaults().prepare('SELECT id FROM devices WHERE id = ?1').bind(b.deviceId).first()).toBeNull();

    const vouched = cert(x.v, b, x.a.deviceId, x.a.secret, { name: 'phone' });
    expect(await json(await enroll(x.v, vouched), 201)).toMatchObject({ deviceId: b.deviceId });
    expect((await log(x)).find((e) => e.event === 'device_enrolled' && e.deviceId === b.deviceId)).toMatchObject({ actorId: x.a.deviceId });
    // B is a member now: it may vouch in turn.
    const c3 = newDevice();
    expect((await enroll(x.v, cert(x.v, c3, b.deviceId, b.secret))).status).toBe(201);
  });

  it('refuses a vouch by a revoked device with 401 unauthorized (it no longer counts as a member)', async () => {
    const x = await newVault();
    const { d: b } = await member(x, 'old phone');
    expect((await revoke(x, x.tokenA, revocation(x.v, b.deviceId, RECOVERY, x.paper.authSeed))).status).toBe(200);
    const c = newDevice();
    expect(await errorOf(await enroll(x.v, cert(x.v, c, b.deviceId, b.secret)))).toEqual({ status: 401, code: 'unauthorized' });
    // And the revoked key itself cannot come back.
    expect(await errorOf(await enroll(x.v, cert(x.v, b, RECOVERY, x.paper.authSeed)))).toEqual({ status: 403, code: 'device_revoked' });
  });

  it("answers 400 when deviceId is not the key's device id", async () => {
    const x = await newVault();
    const d = newDevice();
    const res = await enroll(x.v, cert(x.v, d, RECOVERY, x.paper.authSeed, { deviceId: randomHex(8) }));
    expect(await errorOf(res)).toEqual({ status: 400, code: 'bad_request' });
  });

  it('lets a version-1 device (relay-chosen id, no certificate) certify itself with the paper; until then it vouches for nobody', async () => {
    const x = await newVault();
    const old = newDevice();
    const oldId = randomHex(8); // a version-1 id, chosen by the relay then
    await relay
      .vaults()
      .prepare('INSERT INTO devices (id, vault_id, public_key, name, created_at) VALUES (?1, ?2, ?3, ?4, ?5)')
      .bind(oldId, x.v, old.publicKey, 'v1 desktop', Date.now())
      .run();
    const v1 = { ...old, deviceId: oldId };
    const token = await getToken(relay.url, x.v, v1);
    const c = newDevice();
    expect(await errorOf(await enroll(x.v, cert(x.v, c, oldId, old.secret)))).toEqual({ status: 401, code: 'unauthorized' });

    const put = (body: unknown, id = oldId) => fetch(url(x.v, `/devices/${id}/cert`), { method: 'PUT', headers: { ...bearer(token), 'content-type': 'application/json' }, body: JSON.stringify(body) });
    // Another key, another device's id, a forged signature.
    expect(await errorOf(await put({ cert: cert(x.v, { ...v1, publicKey: c.publicKey }, RECOVERY, x.paper.authSeed) }))).toEqual({ status: 400, code: 'bad_request' });
    expect(await errorOf(await put({ cert: cert(x.v, v1, RECOVERY, x.paper.authSeed) }, x.a.deviceId))).toEqual({ status: 400, code: 'bad_request' });
    expect(await errorOf(await put({ cert: cert(x.v, v1, RECOVERY, c.secret) }))).toEqual({ status: 401, code: 'unauthorized' });
    const nobody = randomHex(8);
    expect(await errorOf(await put({ cert: cert(x.v, { ...v1, deviceId: nobody }, RECOVERY, x.paper.authSeed) }, nobody))).toEqual({ status: 404, code: 'not_found' });

    const own = cert(x.v, v1, RECOVERY, x.paper.authSeed, { name: 'desktop' });
    expect(await json(await put({ cert: own }))).toEqual({ deviceId: oldId });
    expect(await relay.vaults().prepare('SELECT name, cert FROM devices WHERE id = ?1').bind(oldId).first()).toEqual({ name: 'desktop', cert: JSON.stringify(own) });
    expect((await log(x))[0]).toMatchObject({ event: 'device_certified', deviceId: oldId, actorId: null });
    // Certified, it vouches.
    expect((await enroll(x.v, cert(x.v, c, oldId, old.secret))).status).toBe(201);
  });
});

// ---- revocation --------------------------------------------------------------

describe('revocation by a signed record', () => {
  it('takes the paper or the calling device as issuer; not another device, not a forgery', async () => {
    const x = await newVault();
    const { d: b, token: tokenB } = await member(x, 'b');
    const { d: c } = await member(x, 'c');
    // B signing, A calling: only the caller may sign as a device.
    expect(await errorOf(await revoke(x, x.tokenA, revocation(x.v, c.deviceId, b.deviceId, b.secret)))).toEqual({ status: 401, code: 'unauthorized' });
    expect(await errorOf(await revoke(x, x.tokenA, revocation(x.v, c.deviceId, RECOVERY, b.secret)))).toEqual({ status: 401, code: 'unauthorized' });
    // Naming another device than the path's, or another vault.
    const wrong = revocation(x.v, b.deviceId, RECOVERY, x.paper.authSeed);
    expect(await errorOf(await post(url(x.v, `/devices/${c.deviceId}/revoke`), { revocation: wrong }, bearer(x.tokenA)))).toEqual({ status: 400, code: 'bad_request' });
    expect(await errorOf(await post(url(x.v, `/devices/${c.deviceId}/revoke`), {}, bearer(x.tokenA)))).toEqual({ status: 400, code: 'bad_request' });

    const byB = revocation(x.v, c.deviceId, b.deviceId, b.secret);
    const out = await json<{ id: string; revokedAt: number }>(await revoke(x, tokenB, byB));
    expect(out.id).toBe(c.deviceId);
    const row = await relay.vaults().prepare('SELECT revoked_at, revocation FROM devices WHERE id = ?1').bind(c.deviceId).first();
    expect(row).toEqual({ revoked_at: out.revokedAt, revocation: JSON.stringify(byB) });
    expect((await log(x))[0]).toMatchObject({ event: 'device_revoked', deviceId: c.deviceId, actorId: b.deviceId });

    const byPaper = revocation(x.v, b.deviceId, RECOVERY, x.paper.authSeed);
    expect((await json(await revoke(x, x.tokenA, byPaper))).id).toBe(b.deviceId);
    expect((await log(x))[0]).toMatchObject({ event: 'device_revoked', deviceId: b.deviceId, actorId: null });
  });
});

// ---- epochs ------------------------------------------------------------------

describe('epochs', () => {
  it('takes epoch 1 by the paper and 2 by a member, announces them, and tells the token answer', async () => {
    const x = await newVault();
    const { d: b, token: tokenB } = await member(x, 'b');
    expect(await json(await fetch(url(x.v, '/epochs'), { headers: bearer(x.tokenA) }))).toEqual({ epoch: 0, keyId: '', records: [] });
    const e1 = await epochOne(x);

    const ws = new WebSocket(`${relay.url.replace('http', 'ws')}/v1/vaults/${x.v}/live`);
    // The live socket authenticates with its first message (docs/RELAY-API.md).
    ws.addEventListener('open', () => ws.send(JSON.stringify({ type: 'auth', token: tokenB })));
    const messages: Record<string, unknown>[] = [];
    ws.addEventListener('message', (ev) => messages.push(JSON.parse(String(ev.data))));
    await waitFor(() => messages.length >= 1);

    const e2 = epochRecord(x.v, {
      epoch: 2,
      keyId: randomHex(8),
      prevKeyId: e1.keyId,
      recoveryKey: x.paper.exchangeKey,
      issuer: b.deviceId,
      signer: b.secret,
      to: [x.a.deviceId, b.deviceId, RECOVERY],
      ...(await heads(x)),
    });
    expect(await json(await postEpoch(x, tokenB, e2), 201)).toEqual({ epoch: 2, keyId: e2.keyId });
    await waitFor(() => messages.some((m) => m.kind === 'epoch'));
    expect(messages.find((m) => m.kind === 'epoch')).toEqual({ type: 'announce', kind: 'epoch', epoch: 2 });
    ws.close();
    // A retry of the same record (its answer lost) gets the same answer.
    expect(await json(await postEpoch(x, tokenB, e2), 201)).toEqual({ epoch: 2, keyId: e2.keyId });

    const { wraps: _w1, ...r1 } = e1;
    const { wraps: w2, ...r2 } = e2;
    const all = await json(await fetch(url(x.v, '/epochs'), { headers: bearer(tokenB) }));
    expect(all).toEqual({ epoch: 2, keyId: e2.keyId, records: [{ ...r1, wraps: {} }, { ...r2, wraps: {} }] });
    const mine = await json(await fetch(url(x.v, `/epochs?after=1&for=${b.deviceId},${RECOVERY}`), { headers: bearer(tokenB) }));
    expect(mine).toEqual({ epoch: 2, keyId: e2.keyId, records: [{ ...r2, wraps: { [b.deviceId]: w2[b.deviceId], [RECOVERY]: w2[RECOVERY] } }] });
    const forA = await json<{ records: EpochRecord[] }>(await fetch(url(x.v, `/epochs?for=${x.a.deviceId}`), { headers: bearer(x.tokenA) }));
    expect(forA.records.map((r) => r.wraps)).toEqual([{ [x.a.deviceId]: e1.wraps[x.a.deviceId] }, { [x.a.deviceId]: w2[x.a.deviceId] }]);
    // Another device's wraps are not asked for.
    expect(await errorOf(await fetch(url(x.v, `/epochs?for=${x.a.deviceId}`), { headers: bearer(tokenB) }))).toEqual({ status: 400, code: 'bad_request' });

    const challenge = await json<{ challenge: string }>(await post(url(x.v, '/auth/challenge'), { deviceId: b.deviceId }));
    const token = await json(await post(url(x.v, '/auth/token'), { deviceId: b.deviceId, challenge: challenge.challenge, signature: sig(b.secret, 'token', [x.v, b.deviceId, challenge.challenge]) }));
    expect(token).toMatchObject({ epoch: 2, keyId: e2.keyId });
    expect((await log(x)).filter((e) => e.event === 'epoch_created')).toEqual([
      expect.objectContaining({ deviceId: b.deviceId, actorId: b.deviceId }),
      expect.objectContaining({ deviceId: x.a.deviceId, actorId: null }),
    ]);
  });

  it('refuses a wrong epoch number or previous key id with 409 conflict and the heads', async () => {
    const x = await newVault();
    const e1 = await epochOne(x);
    const base = { keyId: randomHex(8), recoveryKey: x.paper.exchangeKey, issuer: RECOVERY, signer: x.paper.authSeed, to: [x.a.deviceId, RECOVERY], ...(await heads(x)) };
    for (const e of [
      epochRecord(x.v, { ...base, epoch: 1, prevKeyId: '' }),
      epochRecord(x.v, { ...base, epoch: 3, prevKeyId: e1.keyId }),
      epochRecord(x.v, { ...base, epoch: 2, prevKeyId: randomHex(8) }),
    ]) {
      const res = await postEpoch(x, x.tokenA, e);
      expect(res.status).toBe(409);
      expect(await res.json()).toEqual({ error: { code: 'conflict', message: expect.any(String) }, head: 0, seq: 0, epoch: 1 });
    }
  });

  it('lets exactly one of two epochs racing for the same number win', async () => {
    const x = await newVault();
    const { d: b, token: tokenB } = await member(x, 'b');
    const mark = await heads(x);
    const one = epochRecord(x.v, { epoch: 1, keyId: randomHex(8), prevKeyId: '', recoveryKey: x.paper.exchangeKey, issuer: RECOVERY, signer: x.paper.authSeed, to: [x.a.deviceId, RECOVERY], ...mark });
    const two = epochRecord(x.v, { epoch: 1, keyId: randomHex(8), prevKeyId: '', recoveryKey: x.paper.exchangeKey, issuer: b.deviceId, signer: b.secret, to: [b.deviceId, RECOVERY], ...mark });
    const [r1, r2] = await Promise.all([postEpoch(x, x.tokenA, one), postEpoch(x, tokenB, two)]);
    expect([r1.status, r2.status].sort()).toEqual([201, 409]);
    const winner = r1.status === 201 ? one : two;
    expect(await json(await fetch(url(x.v, '/epochs'), { headers: bearer(x.tokenA) }))).toMatchObject({ epoch: 1, keyId: winner.keyId });
    expect(await relay.vaults().prepare('SELECT COUNT(*) AS n FROM epoch_wraps WHERE vault_id = ?1').bind(x.v).first()).toEqual({ n: 2 });
    expect((await log(x)).filter((e) => e.event === 'epoch_created')).toHaveLength(1);
  });

  it('refuses an epoch whose mark is behind the heads (a changeset pushed in between) with 409 and the heads', async () => {
    const x = await newVault();
    const mark = await heads(x);
    const e = epochRecord(x.v, { epoch: 1, keyId: randomHex(8), prevKeyId: '', recoveryKey: x.paper.exchangeKey, issuer: RECOVERY, signer: x.paper.authSeed, to: [x.a.deviceId], ...mark });
    expect((await pushChangeset(x, x.tokenA, 1, sealedUnder(randomHex(8)))).status).toBe(201);
    const res = await postEpoch(x, x.tokenA, e);
    expect(res.status).toBe(409);
    expect(await res.json()).toMatchObject({ error: { code: 'conflict' }, head: 1, seq: 0, epoch: 0 });
    // The same with a snapshot committed in between.
    const pack = await uploadPack(relay.url, x.v, x.tokenA);
    const snap = randomHex(16);
    expect((await putObject(url(x.v, `/snapshots/${snap}/manifest`), x.tokenA, sealedUnder(randomHex(8)))).status).toBe(201);
    const e2 = epochRecord(x.v, { epoch: 1, keyId: randomHex(8), prevKeyId: '', recoveryKey: x.paper.exchangeKey, issuer: RECOVERY, signer: x.paper.authSeed, to: [x.a.deviceId], ...(await heads(x)) });
    expect((await commit(relay.url, x.v, x.tokenA, commitBody(snap, 1, [pack]))).status).toBe(201);
    expect(await (await postEpoch(x, x.tokenA, e2)).json()).toMatchObject({ error: { code: 'conflict' }, head: 1, seq: 1, epoch: 0 });
    // Re-sealed at the heads, it goes in.
    const e3 = epochRecord(x.v, { epoch: 1, keyId: randomHex(8), prevKeyId: '', recoveryKey: x.paper.exchangeKey, issuer: RECOVERY, signer: x.paper.authSeed, to: [x.a.deviceId], ...(await heads(x)) });
    expect(e3).toMatchObject({ markCursor: 1, markSeq: 1 });
    expect((await postEpoch(x, x.tokenA, e3)).status).toBe(201);
    expect(await relay.vaults().prepare('SELECT COUNT(*) AS n FROM epochs WHERE vault_id = ?1').bind(x.v).first()).toEqual({ n: 1 });
  });

  it('refuses wraps that do not match the recipients, and a revoked recipient (400); a signer other than the paper or the caller (401)', async () => {
    const x = await newVault();
    const { d: b, token: tokenB } = await member(x, 'b');
    const base = { epoch: 1, keyId: randomHex(8), prevKeyId: '', recoveryKey: x.paper.exchangeKey, issuer: RECOVERY, signer: x.paper.authSeed, ...(await heads(x)) };
    const good = epochRecord(x.v, { ...base, to: [x.a.deviceId, b.deviceId, RECOVERY] });
    const { [b.deviceId]: _dropped, ...fewer } = good.wraps;
    const swapped = { ...good.wraps, [b.deviceId]: b64u(randomBytes(150)) };
    const extra = { ...good.wraps, [randomHex(8)]: b64u(randomBytes(150)) };
    for (const body of [
      { ...good, wraps: fewer },
      { ...good, wraps: swapped },
      { ...good, wraps: extra },
      { ...good, wraps: undefined },
      { ...good, recipients: good.recipients.split(',').reverse().join(',') },
      epochRecord(x.v, { ...base, to: [x.a.deviceId, randomHex(8)] }), // not a device of the vault
    ]) {
      expect(await errorOf(await postEpoch(x, x.tokenA, body))).toEqual({ status: 400, code: 'bad_request' });
    }
    // Signed by B but posted by A; by a forger as the paper.
    expect(await errorOf(await postEpoch(x, x.tokenA, epochRecord(x.v, { ...base, issuer: b.deviceId, signer: b.secret, to: [x.a.deviceId] })))).toEqual({ status: 401, code: 'unauthorized' });
    expect(await errorOf(await postEpoch(x, x.tokenA, epochRecord(x.v, { ...base, signer: b.secret, to: [x.a.deviceId] })))).toEqual({ status: 401, code: 'unauthorized' });

    // B revoked: sealing to it is refused; so is its own signature (its token is refused first).
    expect((await revoke(x, x.tokenA, revocation(x.v, b.deviceId, RECOVERY, x.paper.authSeed))).status).toBe(200);
    const toRevoked = epochRecord(x.v, { ...base, to: [x.a.deviceId, b.deviceId, RECOVERY] });
    expect(await errorOf(await postEpoch(x, x.tokenA, toRevoked))).toEqual({ status: 400, code: 'bad_request' });
    expect(await errorOf(await postEpoch(x, tokenB, epochRecord(x.v, { ...base, issuer: b.deviceId, signer: b.secret, to: [x.a.deviceId] })))).toEqual({ status: 403, code: 'device_revoked' });
    expect(await relay.vaults().prepare('SELECT epoch FROM vaults WHERE id = ?1').bind(x.v).first()).toEqual({ epoch: 0 });
  });
});

// ---- stale uploads -----------------------------------------------------------

describe('uploads sealed under an old epoch', () => {
  it('are taken at epoch 0 whatever their key id', async () => {
    const x = await newVault();
    expect((await pushChangeset(x, x.tokenA, 1, sealedUnder(randomHex(8)))).status).toBe(201);
    expect((await pushChangeset(x, x.tokenA, 2, new Uint8Array([1, 2, 3]))).status).toBe(201);
    expect((await putObject(url(x.v, `/snapshots/${randomHex(16)}/manifest`), x.tokenA, sealedUnder(randomHex(8)))).status).toBe(201);
  });

  it('refuses a changeset push and a manifest upload whose key id is not the current one (409 stale_epoch), storing nothing', async () => {
    const x = await newVault();
    const e1 = await epochOne(x);
    const { token: tokenB, d: b } = await member(x, 'b');
    const e2 = epochRecord(x.v, { epoch: 2, keyId: randomHex(8), prevKeyId: e1.keyId, recoveryKey: x.paper.exchangeKey, issuer: RECOVERY, signer: x.paper.authSeed, to: [x.a.deviceId, b.deviceId, RECOVERY], ...(await heads(x)) });
    expect((await postEpoch(x, x.tokenA, e2)).status).toBe(201);

    for (const opts of [{}, { chunked: true }]) {
      expect(await errorOf(await pushChangeset(x, x.tokenA, 1, sealedUnder(e1.keyId), opts))).toEqual({ status: 409, code: 'stale_epoch' });
      expect(await errorOf(await pushChangeset(x, x.tokenA, 1, new Uint8Array(10), opts))).toEqual({ status: 409, code: 'stale_epoch' });
    }
    expect(await relay.vaults().prepare('SELECT COUNT(*) AS n FROM changesets WHERE vault_id = ?1').bind(x.v).first()).toEqual({ n: 0 });
    expect((await relay.r2().list({ prefix: `changesets/${x.v}/` })).objects).toEqual([]);
    const ok = sealedUnder(e2.keyId, 70_000);
    expect(await json(await pushChangeset(x, tokenB, 1, ok), 201)).toEqual({ cursor: 1, seq: 1 });
    const pulled = await json<{ changesets: { data: string }[] }>(await fetch(url(x.v, '/changesets'), { headers: bearer(x.tokenA) }));
    expect(pulled.changesets[0]!.data).toBe(b64u(ok));
    // A stale batch is a stale batch even under a seq that would conflict.
    expect(await errorOf(await pushChangeset(x, tokenB, 5, sealedUnder(e1.keyId)))).toEqual({ status: 409, code: 'stale_epoch' });

    const snap = randomHex(16);
    const manifest = (body: Uint8Array, chunk = false) =>
      fetch(url(x.v, `/snapshots/${snap}/manifest`), {
        method: 'PUT',
        headers: { ...bearer(x.tokenA), 'content-type': 'application/octet-stream', 'X-Casa-Sha256': sha256Hex(body) },
        body: chunk ? chunked(body) : (body as Uint8Array<ArrayBuffer>),
        duplex: 'half',
      } as RequestInit);
    expect(await errorOf(await manifest(sealedUnder(e1.keyId)))).toEqual({ status: 409, code: 'stale_epoch' });
    expect(await errorOf(await manifest(sealedUnder(e1.keyId), true))).toEqual({ status: 409, code: 'stale_epoch' });
    expect(await relay.vaults().prepare('SELECT COUNT(*) AS n FROM manifest_uploads WHERE vault_id = ?1').bind(x.v).first()).toEqual({ n: 0 });
    expect((await relay.r2().list({ prefix: `manifests/${x.v}/` })).objects).toEqual([]);
    const fresh = sealedUnder(e2.keyId, 200_000);
    expect((await manifest(fresh)).status).toBe(201);
    expect(await relay.vaults().prepare('SELECT key_id, bytes FROM manifest_uploads WHERE vault_id = ?1').bind(x.v).first()).toEqual({ key_id: e2.keyId, bytes: fresh.length });
    const back = await fetch(url(x.v, `/snapshots/${snap}/manifest`), { headers: bearer(x.tokenA) });
    expect(new Uint8Array(await back.arrayBuffer())).toEqual(fresh);
  });

  it('refuses a commit whose manifest was uploaded before the epoch moved (409 stale_epoch); a new upload commits', async () => {
    const x = await newVault();
    const e1 = await epochOne(x);
    const pack = await uploadPack(relay.url, x.v, x.tokenA);
    const snap = randomHex(16);
    expect((await putObject(url(x.v, `/snapshots/${snap}/manifest`), x.tokenA, sealedUnder(e1.keyId))).status).toBe(201);
    const e2 = epochRecord(x.v, { epoch: 2, keyId: randomHex(8), prevKeyId: e1.keyId, recoveryKey: x.paper.exchangeKey, issuer: RECOVERY, signer: x.paper.authSeed, to: [x.a.deviceId, RECOVERY], ...(await heads(x)) });
    expect((await postEpoch(x, x.tokenA, e2)).status).toBe(201);
    expect(await errorOf(await commit(relay.url, x.v, x.tokenA, commitBody(snap, 1, [pack])))).toEqual({ status: 409, code: 'stale_epoch' });
    expect(await relay.vaults().prepare('SELECT COUNT(*) AS n FROM snapshots WHERE vault_id = ?1').bind(x.v).first()).toEqual({ n: 0 });
    expect((await putObject(url(x.v, `/snapshots/${snap}/manifest`), x.tokenA, sealedUnder(e2.keyId))).status).toBe(201);
    expect((await commit(relay.url, x.v, x.tokenA, commitBody(snap, 1, [pack]))).status).toBe(201);
  });
});

// ---- the paper ---------------------------------------------------------------

describe('paper replacement and the recovery id', () => {
  function replacement(x: Vault, next: Paper, over: Partial<RecoveryRecord> = {}, signers = { old: x.paper.authSeed, new: next.authSeed }): RecoveryRecord {
    const unsigned = {
      vaultId: x.v,
      n: 1,
      recoveryId: next.recoveryId,
      authKey: next.authKey,
      exchangeKey: next.exchangeKey,
      members: [x.a.deviceId].sort().join(','),
      time: Date.now(),
      ...over,
    };
    const fields = recoveryFields(unsigned);
    return { ...unsigned, signatureOld: sig(signers.old, 'recovery', fields), signatureNew: sig(signers.new, 'recovery', fields) };
  }

  it('finds a vault by its own id until its paper is replaced, then only by the new paper', async () => {
    const x = await newVault();
    expect(await json(await fetch(`${relay.url}/v1/recovery/${x.v}`))).toEqual({ vaultId: x.v });
    expect(await errorOf(await fetch(`${relay.url}/v1/recovery/${randomHex(16)}`))).toEqual({ status: 404, code: 'not_found' });
    expect(await errorOf(await fetch(`${relay.url}/v1/recovery/NOTHEX`))).toEqual({ status: 400, code: 'bad_request' });

    const e1 = await epochOne(x);
    const { d: b } = await member(x, 'b');
    const next = newPaper();
    const mark = await heads(x);
    const e2 = epochRecord(x.v, { epoch: 2, keyId: randomHex(8), prevKeyId: e1.keyId, recoveryKey: next.exchangeKey, issuer: RECOVERY, signer: next.authSeed, to: [x.a.deviceId, b.deviceId, RECOVERY], ...mark });
    const r = replacement(x, next, { members: [x.a.deviceId, b.deviceId].sort().join(',') });
    const postRecovery = (body: unknown) => post(url(x.v, '/recovery'), body, bearer(x.tokenA));

    // Refused: another n, a bad old signature, an epoch not sealed to the new paper, the vault's own id as recovery id.
    expect(await errorOf(await postRecovery({ recovery: replacement(x, next, { n: 2 }), epoch: e2 }))).toEqual({ status: 409, code: 'conflict' });
    expect(await errorOf(await postRecovery({ recovery: replacement(x, next, {}, { old: next.authSeed, new: next.authSeed }), epoch: e2 }))).toEqual({ status: 401, code: 'unauthorized' });
    const toOldPaper = epochRecord(x.v, { epoch: 2, keyId: randomHex(8), prevKeyId: e1.keyId, recoveryKey: x.paper.exchangeKey, issuer: RECOVERY, signer: next.authSeed, to: [x.a.deviceId, RECOVERY], ...mark });
    expect(await errorOf(await postRecovery({ recovery: r, epoch: toOldPaper }))).toEqual({ status: 400, code: 'bad_request' });
    expect(await errorOf(await postRecovery({ recovery: replacement(x, next, { recoveryId: x.v }), epoch: e2 }))).toEqual({ status: 409, code: 'conflict' });

    expect(await json(await postRecovery({ recovery: r, epoch: e2 }), 201)).toEqual({ epoch: 2, keyId: e2.keyId });
    // A retry gets the same answer.
    expect(await json(await postRecovery({ recovery: r, epoch: e2 }), 201)).toEqual({ epoch: 2, keyId: e2.keyId });

    expect(await json(await fetch(`${relay.url}/v1/recovery/${next.recoveryId}`))).toEqual({ vaultId: x.v });
    expect(await errorOf(await fetch(`${relay.url}/v1/recovery/${x.v}`))).toEqual({ status: 404, code: 'not_found' });
    expect(await json(await fetch(url(x.v, '/recovery'), { headers: bearer(x.tokenA) }))).toEqual({ records: [r] });
    // Only the new epoch still has a wrap for the paper.
    const forPaper = await json<{ epoch: number; records: EpochRecord[] }>(await fetch(url(x.v, `/epochs?for=${RECOVERY}`), { headers: bearer(x.tokenA) }));
    expect(forPaper.epoch).toBe(2);
    expect(forPaper.records.map((e) => e.wraps)).toEqual([{}, { [RECOVERY]: e2.wraps[RECOVERY] }]);
    // The old paper no longer enrolls; the new one does.
    expect(await errorOf(await enroll(x.v, cert(x.v, newDevice(), RECOVERY, x.paper.authSeed)))).toEqual({ status: 401, code: 'unauthorized' });
    expect((await enroll(x.v, cert(x.v, newDevice(), RECOVERY, next.authSeed))).status).toBe(201);
    expect((await log(x)).map((e) => e.event).slice(0, 3)).toEqual(['device_enrolled', 'paper_replaced', 'epoch_created']);

    // A second replacement: the first replacement's id stops finding the vault.
    const third = newPaper();
    const e3 = epochRecord(x.v, { epoch: 3, keyId: randomHex(8), prevKeyId: e2.keyId, recoveryKey: third.exchangeKey, issuer: x.a.deviceId, signer: x.a.secret, to: [x.a.deviceId, RECOVERY], ...(await heads(x)) });
    const r2 = replacement({ ...x, paper: next }, third, { n: 2 });
    expect(await json(await postRecovery({ recovery: r2, epoch: e3 }), 201)).toEqual({ epoch: 3, keyId: e3.keyId });
    expect(await errorOf(await fetch(`${relay.url}/v1/recovery/${next.recoveryId}`))).toEqual({ status: 404, code: 'not_found' });
    expect(await json(await fetch(`${relay.url}/v1/recovery/${third.recoveryId}`))).toEqual({ vaultId: x.v });
  });
});

// ---- the audit log -----------------------------------------------------------

describe('GET /v1/vaults/:vaultId/log', () => {
  it('lists the events newest first, without token_issued, at most limit', async () => {
    const x = await newVault();
    const { d: b } = await member(x, 'b');
    await epochOne(x);
    await openPairing(relay.url, x.v, x.tokenA);
    expect((await revoke(x, x.tokenA, revocation(x.v, b.deviceId, x.a.deviceId, x.a.secret))).status).toBe(200);
    const events = await log(x);
    expect(events.map((e) => e.event)).toEqual(['device_revoked', 'pairing_opened', 'epoch_created', 'device_enrolled', 'device_enrolled', 'vault_created']);
    expect(events[1]).toMatchObject({ deviceId: x.a.deviceId, actorId: null });
    expect(events[0]).toEqual({ at: expect.any(Number), event: 'device_revoked', deviceId: b.deviceId, actorId: x.a.deviceId });
    expect(events[5]).toEqual({ at: expect.any(Number), event: 'vault_created', deviceId: null, actorId: null });
    for (let i = 1; i < events.length; i++) expect(events[i - 1]!.at).toBeGreaterThanOrEqual(events[i]!.at);
    expect((await log(x, '?limit=2')).map((e) => e.event)).toEqual(['device_revoked', 'pairing_opened']);
    for (const q of ['?limit=0', '?limit=501', '?limit=x']) {
      expect(await errorOf(await fetch(url(x.v, `/log${q}`), { headers: bearer(x.tokenA) }))).toEqual({ status: 400, code: 'bad_request' });
    }
  });
});

async function waitFor(pred: () => boolean, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > until) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}
