/**
 * A real relay (dist/worker/index.js in workerd via src/local-relay/launcher.ts) on
 * 127.0.0.1 and a free port, with a fresh temporary data directory removed
 * on stop. For beforeAll/afterAll in worker and e2e tests.
 *
 * Also: small signing helpers that speak docs/RELAY-API.md with
 * @noble/curves and src/protocol/messages.ts directly (tests must not depend
 * on the client's crypto module).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { afterAll, beforeAll } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ed25519, x25519 } from '@noble/curves/ed25519.js';
import type { Miniflare } from 'miniflare';
import { certMessage, deviceIdOf, RECOVERY, revocationMessage, type DeviceCert, type Revocation } from '../../src/protocol/membership.js';
import { signedMessage } from '../../src/protocol/messages.js';
import { startRelay, type StartRelayOptions } from '../../src/local-relay/launcher.js';

type D1Database = Awaited<ReturnType<Miniflare['getD1Database']>>;
type R2Bucket = Awaited<ReturnType<Miniflare['getR2Bucket']>>;
type DurableObjectId = ReturnType<Awaited<ReturnType<Miniflare['getDurableObjectNamespace']>>['idFromName']>;

export interface TestRelay {
  url: string;
  dataDir: string;
  stop(): Promise<void>;
  mf: Miniflare;
  /** The global index (D1: nameplates and recovery ids only). */
  d1(): D1Database;
  r2(): R2Bucket;
  /** Runs the cron and every vault's retention job, now. */
  runCron(): Promise<void>;
  /** The ids (hex) of the vault objects on disk. */
  vaultObjectIds(): Promise<string[]>;
  /** Runs one vault's retention job now; its report (worker/vault.ts runRetention), null for no vault. */
  retention(vaultId: string): Promise<Record<string, unknown> | null>;
  /** SQL in one vault's object (worker/vault.ts test hook), D1-shaped. */
  vault(vaultId: string): VaultSql;
  /** SQL in every vault's object at once: rows of all, changes summed (for tests that query by another key than the vault). */
  vaults(): VaultSql;
}

interface SqlAnswer {
  results: Record<string, unknown>[];
  changes: number;
}

/** The D1 subset tests use (prepare, bind, first, all, run), over the vault objects' test hook. */
export interface VaultSql {
  prepare(sql: string): VaultStatement;
  /** One transaction in one vault's object (vault() only). */
  batch(statements: VaultStatement[]): Promise<{ results: Record<string, unknown>[]; meta: { changes: number } }[]>;
}
export interface VaultStatement {
  readonly sql: string;
  readonly params: unknown[];
  bind(...params: unknown[]): VaultStatement;
  first<T = Record<string, unknown>>(): Promise<T | null>;
  all<T = Record<string, unknown>>(): Promise<{ results: T[] }>;
  run(): Promise<{ results: Record<string, unknown>[]; meta: { changes: number } }>;
}

/**
 * The hook is POST /_relay/sql on the object itself, reached through
 * Miniflare only (never the relay's URL), and answered only because the
 * test relay sets CASA_TEST_HOOKS=1.
 */
function vaultSql(
  run: (sql: string, params: unknown[]) => Promise<SqlAnswer>,
  batch?: (statements: { sql: string; params: unknown[] }[]) => Promise<SqlAnswer[]>,
): VaultSql {
  const statement = (sql: string, params: unknown[]): VaultStatement => ({
    sql,
    params,
    bind: (...p: unknown[]) => statement(sql, p),
    first: async <T>() => ((await run(sql, params)).results[0] as T | undefined) ?? null,
    all: async <T>() => ({ results: (await run(sql, params)).results as T[] }),
    run: async () => {
      const r = await run(sql, params);
      return { results: r.results, meta: { changes: r.changes } };
    },
  });
  return {
    prepare: (sql: string) => statement(sql, []),
    batch: async (statements) => {
      if (batch === undefined) throw new Error('batch runs in one vault: use vault(vaultId)');
      const rs = await batch(statements.map((s) => ({ sql: s.sql, params: s.params })));
      return rs.map((r) => ({ results: r.results, meta: { changes: r.changes } }));
    },
  };
}

/** Generous limits unless a test asks for small ones: many tests share 127.0.0.1. */
const TEST_LIMITS = {
  CREATE_LIMITER: { limit: 10_000, period: 60 },
  ENROLL_LIMITER: { limit: 10_000, period: 60 },
  AUTH_LIMITER: { limit: 10_000, period: 60 },
  API_LIMITER: { limit: 10_000, period: 60 },
  PAIR_LIMITER: { limit: 10_000, period: 60 },
  PAIR_JOIN_LIMITER: { limit: 10_000, period: 60 },
} as const;

/** `opts.vars` overrides wrangler.jsonc's vars (e.g. `{ RETENTION_WINDOW: '0', PACK_GRACE_MS: '1500' }`). */
export async function startTestRelay(
  opts: Partial<Omit<StartRelayOptions, 'host'>> = {},
): Promise<TestRelay> {
  const ownDir = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), 'casa-relay-test-')));
  const relay = await startRelay({
    ...opts,
    host: '127.0.0.1',
    port: opts.port ?? 0,
    dataDir,
    cronIntervalMs: opts.cronIntervalMs ?? 0,
    rateLimits: { ...TEST_LIMITS, ...opts.rateLimits },
    vars: { CASA_TEST_HOOKS: '1', ...opts.vars },
  });
  try {
    const d1 = await relay.mf.getD1Database('DB');
    const r2 = await relay.mf.getR2Bucket('BLOBS');
    const ns = await relay.mf.getDurableObjectNamespace('VAULT');
    const inObject = async (id: DurableObjectId, sql: string, params: unknown[]): Promise<SqlAnswer> => {
      const res = await ns.get(id).fetch('http://vault.internal/_relay/sql', { method: 'POST', body: JSON.stringify({ sql, params }) });
      const body = (await res.json()) as SqlAnswer & { error?: string };
      if (res.status !== 200) throw new Error(`vault SQL: ${body.error ?? res.status}`);
      return body;
    };
    return {
      url: relay.url,
      dataDir,
      mf: relay.mf,
      runCron: relay.runCron,
      vaultObjectIds: relay.vaultObjectIds,
      retention: async (vaultId: string) => {
        const res = await ns.get(ns.idFromName(vaultId)).fetch('http://vault.internal/_relay/retention', { method: 'POST' });
        if (res.status !== 200) throw new Error(`retention: ${res.status} ${await res.text()}`);
        return (await res.json()) as Record<string, unknown> | null;
      },
      d1: () => d1,
      r2: () => r2,
      vault: (vaultId: string) =>
        vaultSql(
          (sql, params) => inObject(ns.idFromName(vaultId), sql, params),
          async (statements) => {
            const res = await ns.get(ns.idFromName(vaultId)).fetch('http://vault.internal/_relay/sql', { method: 'POST', body: JSON.stringify({ batch: statements }) });
            const body = (await res.json()) as { batch: SqlAnswer[]; error?: string };
            if (res.status !== 200) throw new Error(`vault SQL: ${body.error ?? res.status}`);
            return body.batch;
          },
        ),
      vaults: () =>
        vaultSql(async (sql, params) => {
          const all: SqlAnswer = { results: [], changes: 0 };
          // A statement that names a vault (a parameter that is a vault's id) runs in that vault only,
          // so an aggregate over it (COUNT(*) ... WHERE vault_id = ?1) is that vault's alone.
          const ids = await relay.vaultObjectIds();
          const named = params
            .filter((p): p is string => typeof p === 'string' && /^[0-9a-f]{32}$/.test(p))
            .map((p) => ns.idFromName(p).toString())
            .filter((id) => ids.includes(id));
          for (const id of named.length > 0 ? [...new Set(named)] : ids) {
            const r = await inObject(ns.idFromString(id), sql, params);
            all.results.push(...r.results);
            all.changes += r.changes;
          }
          return all;
        }),
      async stop() {
        await relay.stop();
        if (ownDir) await rm(dataDir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await relay.stop();
    throw err;
  }
}

// ---- speaking the API ------------------------------------------------------

export const b64u = (b: Uint8Array): string => Buffer.from(b).toString('base64url');
export const fromB64u = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64url'));

export interface TestVault {
  vaultId: string;
  authSecret: Uint8Array;
  authPublicKey: string;
  canary: string;
}

export interface TestDevice {
  deviceId: string;
  secret: Uint8Array;
  publicKey: string;
  /** The X25519 public key its certificate names (b64u); the relay only checks its length. */
  exchangeKey?: string;
}

export function newVault(): TestVault {
  const authSecret = ed25519.utils.randomSecretKey();
  return {
    vaultId: randomBytes(16).toString('hex'),
    authSecret,
    authPublicKey: b64u(ed25519.getPublicKey(authSecret)),
    canary: b64u(randomBytes(60)),
  };
}

export function createBody(v: TestVault, time = Date.now(), signer = v.authSecret): Record<string, unknown> {
  const canaryHash = createHash('sha256').update(fromB64u(v.canary)).digest('hex');
  const msg = signedMessage('create-vault', [v.vaultId, v.authPublicKey, canaryHash, time]);
  return { vaultId: v.vaultId, authPublicKey: v.authPublicKey, canary: v.canary, time, signature: b64u(ed25519.sign(msg, signer)) };
}

/** A new device key (not enrolled): its id is the device id of its signing key (docs/FORMAT.md §9). */
export function newDevice(): TestDevice {
  const secret = ed25519.utils.randomSecretKey();
  const pub = ed25519.getPublicKey(secret);
  return { deviceId: deviceIdOf(pub), secret, publicKey: b64u(pub), exchangeKey: b64u(x25519.getPublicKey(x25519.utils.randomSecretKey())) };
}

/**
 * A device certificate for `d` in vault `v` (docs/FORMAT.md §9), signed by
 * the paper (`v.authSecret`, issuer `recovery`) unless `over.issuer` names a
 * device and `signer` is its secret. `over` replaces fields before signing.
 */
export function deviceCert(
  v: TestVault,
  d: TestDevice,
  over: Partial<Omit<DeviceCert, 'signature'>> = {},
  signer: Uint8Array = v.authSecret,
): DeviceCert {
  const unsigned: Omit<DeviceCert, 'signature'> = {
    vaultId: v.vaultId,
    deviceId: d.deviceId,
    signingKey: d.publicKey,
    exchangeKey: d.exchangeKey ?? b64u(x25519.getPublicKey(x25519.utils.randomSecretKey())),
    name: 'test device',
    issuedAt: Date.now(),
    issuer: RECOVERY,
    ...over,
  };
  return { ...unsigned, signature: b64u(ed25519.sign(certMessage(unsigned), signer)) };
}

/** The enrollment body: `{"cert": DeviceCert}` (docs/RELAY-API.md "Membership and epochs"). */
export function enrollBody(v: TestVault, d: TestDevice, name = 'test device', signer?: Uint8Array, issuer?: string): Record<string, unknown> {
  return { cert: deviceCert(v, d, { name, ...(issuer === undefined ? {} : { issuer }) }, signer) };
}

/** A revocation of `deviceId`, signed by the paper unless `issuer` (a device) and its `signer` are given. */
export function revokeBody(v: TestVault, deviceId: string, issuer = RECOVERY, signer = v.authSecret): { revocation: Revocation } {
  const unsigned = { vaultId: v.vaultId, deviceId, revokedAt: Date.now(), issuer };
  return { revocation: { ...unsigned, signature: b64u(ed25519.sign(revocationMessage(unsigned), signer)) } };
}

export function tokenBody(vaultId: string, d: TestDevice, challenge: string, signer = d.secret): Record<string, unknown> {
  const msg = signedMessage('token', [vaultId, d.deviceId, challenge]);
  return { deviceId: d.deviceId, challenge, signature: b64u(ed25519.sign(msg, signer)) };
}

export async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

export async function createVault(base: string, v = newVault()): Promise<TestVault> {
  const res = await post(`${base}/v1/vaults`, createBody(v));
  if (res.status !== 201) throw new Error(`create vault: ${res.status} ${await res.text()}`);
  return v;
}

/** Enrolls a new device with a certificate signed by the paper; throws unless 201. */
export async function enrollDevice(base: string, v: TestVault, name = 'test device'): Promise<TestDevice> {
  const d = newDevice();
  const res = await post(`${base}/v1/vaults/${v.vaultId}/devices`, enrollBody(v, d, name));
  if (res.status !== 201) throw new Error(`enroll: ${res.status} ${await res.text()}`);
  const { deviceId } = (await res.json()) as { deviceId: string };
  if (deviceId !== d.deviceId) throw new Error('enroll: the relay answered another device id');
  return d;
}

/** Revokes `deviceId` with a paper-signed revocation, as the device holding `token`. */
export async function revokeDevice(base: string, v: TestVault, token: string, deviceId: string): Promise<Response> {
  return post(`${base}/v1/vaults/${v.vaultId}/devices/${deviceId}/revoke`, revokeBody(v, deviceId), { Authorization: `Bearer ${token}` });
}

export async function getChallenge(base: string, vaultId: string, deviceId: string): Promise<string> {
  const res = await post(`${base}/v1/vaults/${vaultId}/auth/challenge`, { deviceId });
  if (res.status !== 200) throw new Error(`challenge: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { challenge: string }).challenge;
}

export async function getToken(base: string, vaultId: string, d: TestDevice): Promise<string> {
  const challenge = await getChallenge(base, vaultId, d.deviceId);
  const res = await post(`${base}/v1/vaults/${vaultId}/auth/token`, tokenBody(vaultId, d, challenge));
  if (res.status !== 200) throw new Error(`token: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { token: string }).token;
}

/** A vault with one enrolled device and a token for it. */
export async function setupVault(base: string): Promise<{ vault: TestVault; device: TestDevice; token: string }> {
  const vault = await createVault(base);
  const device = await enrollDevice(base, vault);
  const token = await getToken(base, vault.vaultId, device);
  return { vault, device, token };
}

/** The status and error code of an error answer. */
export async function errorOf(res: Response): Promise<{ status: number; code: string }> {
  const body = (await res.json()) as { error: { code: string } };
  return { status: res.status, code: body.error.code };
}

// ---- snapshots (docs/RELAY-API.md "Snapshots") -------------------------------

export const randomHex = (bytes: number): string => randomBytes(bytes).toString('hex');
export const sha256Hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
export const bearer = (token: string): Record<string, string> => ({ Authorization: `Bearer ${token}` });

/** PUT a binary object (pack or manifest) with its X-Casa-Sha256. */
export async function putObject(url: string, token: string, body: Uint8Array, sha = sha256Hex(body)): Promise<Response> {
  return fetch(url, {
    method: 'PUT',
    headers: { ...bearer(token), 'content-type': 'application/octet-stream', 'X-Casa-Sha256': sha },
    body: body as Uint8Array<ArrayBuffer>,
  });
}

/** Uploads a pack of random bytes (or `body`) under a random id; returns the id. */
export async function uploadPack(base: string, vaultId: string, token: string, body: Uint8Array = randomBytes(1000)): Promise<string> {
  const packId = randomHex(32);
  const res = await putObject(`${base}/v1/vaults/${vaultId}/packs/${packId}`, token, body);
  if (res.status !== 201) throw new Error(`upload pack: ${res.status} ${await res.text()}`);
  return packId;
}

export async function uploadManifest(
  base: string,
  vaultId: string,
  token: string,
  snapshotId: string,
  body: Uint8Array = randomBytes(200),
): Promise<void> {
  const res = await putObject(`${base}/v1/vaults/${vaultId}/snapshots/${snapshotId}/manifest`, token, body);
  if (res.status !== 201) throw new Error(`upload manifest: ${res.status} ${await res.text()}`);
}

export function commitBody(snapshotId: string, seq: number, packs: string[], parentSeq = seq - 1): Record<string, unknown> {
  return { snapshotId, seq, parentSeq, packs, dbBytes: 4096 * packs.length, storedBytes: 1000 * packs.length, newBytes: 1000 };
}

export async function commit(base: string, vaultId: string, token: string, body: Record<string, unknown>): Promise<Response> {
  return post(`${base}/v1/vaults/${vaultId}/snapshots`, body, bearer(token));
}

/** Uploads a manifest and commits snapshot `seq` over `packs`; returns the snapshot id. */
export async function commitSnapshot(base: string, vaultId: string, token: string, seq: number, packs: string[]): Promise<string> {
  const snapshotId = randomHex(16);
  await uploadManifest(base, vaultId, token, snapshotId);
  const res = await commit(base, vaultId, token, commitBody(snapshotId, seq, packs));
  if (res.status !== 201) throw new Error(`commit: ${res.status} ${await res.text()}`);
  return snapshotId;
}

// ---- pairing (docs/RELAY-API.md "Pairing by code") ---------------------------

/** Random bytes standing in for a PAKE message: the relay never looks inside. */
export const pakeMessage = (bytes = 64): string => b64u(randomBytes(bytes));

/** A body for POST /v1/vaults/{vaultId}/pairings: a random sid and msgA, plus `over`. */
export function pairingBody(over: Record<string, unknown> = {}): Record<string, unknown> {
  return { sid: randomHex(16), msgA: pakeMessage(), ...over };
}

export interface TestPairing {
  nameplate: string;
  expiresAt: number;
  sid: string;
  msgA: string;
}

/** Opens a pairing session as the offer side; throws unless 201. */
export async function openPairing(base: string, vaultId: string, token: string, body = pairingBody()): Promise<TestPairing> {
  const res = await post(`${base}/v1/vaults/${vaultId}/pairings`, body, bearer(token));
  if (res.status !== 201) throw new Error(`open pairing: ${res.status} ${await res.text()}`);
  const { nameplate, expiresAt } = (await res.json()) as { nameplate: string; expiresAt: number };
  return { nameplate, expiresAt, sid: body.sid as string, msgA: body.msgA as string };
}

/** Joins a session as the join side; returns the bearer token; throws unless 201. */
export async function joinPairing(base: string, nameplate: string, msgB = pakeMessage()): Promise<string> {
  const res = await post(`${base}/v1/pairings/${nameplate}/join`, { msgB });
  if (res.status !== 201) throw new Error(`join pairing: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { token: string }).token;
}

/**
 * A request the relay must refuse before it has read the whole body, sent so
 * that the answer is read before anything more is written: workerd answers
 * early and then resets the socket (unread data), and a client still writing
 * then fails with ECONNRESET instead of seeing the answer — on any Node, as
 * often as not. With `declared` the headers say the body's length and no
 * byte of it is sent: the relay must answer from Content-Length alone. Without,
 * the body goes chunked, one piece after the other, until the answer comes;
 * make it the cap plus one byte, so that the relay has read everything sent.
 */
export function refusedEarly(
  url: string,
  req: { method: string; headers: Record<string, string>; body: Uint8Array | string; declared: boolean },
): Promise<{ status: number; code: string }> {
  const body = typeof req.body === 'string' ? Buffer.from(req.body) : req.body;
  const headers = req.declared ? { ...req.headers, 'content-length': String(body.length) } : req.headers;
  return new Promise((resolve, reject) => {
    let answered = false;
    const timer = setTimeout(() => fail(new Error('no answer before the body was sent')), 20_000);
    const out = httpRequest(url, { method: req.method, headers, agent: false });
    const fail = (err: Error) => {
      clearTimeout(timer);
      out.destroy();
      reject(err);
    };
    out.on('error', (err) => {
      if (!answered) fail(err);
    });
    out.on('response', (res) => {
      answered = true;
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('error', fail);
      res.on('end', () => {
        clearTimeout(timer);
        out.destroy();
        try {
          const parsed = JSON.parse(Buffer.concat(parts).toString('utf8')) as { error: { code: string } };
          resolve({ status: res.statusCode ?? 0, code: parsed.error.code });
        } catch (err) {
          reject(err as Error);
        }
      });
    });
    out.flushHeaders();
    if (req.declared) return;
    const step = 256 * 1024;
    const next = (at: number) => {
      if (answered || at >= body.length) return; // never end(): the relay must answer past its cap
      out.write(body.subarray(at, at + step), () => next(at + step));
    };
    next(0);
  });
}

/** A body sent without Content-Length (chunked). */
export function chunked(bytes: Uint8Array, pieces = 4): ReadableStream<Uint8Array> {
  const step = Math.ceil(bytes.length / pieces);
  let at = 0;
  return new ReadableStream({
    pull(ctl) {
      if (at >= bytes.length) return ctl.close();
      ctl.enqueue(bytes.subarray(at, at + step));
      at += step;
    },
  });
}


/**
 * A relay that lies, for client tests: on 127.0.0.1, it hands out a token to
 * anyone and answers every other request with `answer` (set it per test).
 * Started in beforeAll, closed in afterAll of the calling describe block.
 */
export function lyingRelay(): { url: () => string; answer: Record<string, unknown> } {
  const liar = { url: () => base, answer: {} as Record<string, unknown> };
  let server: Server;
  let base = '';
  beforeAll(async () => {
    server = createServer((req, res) => {
      res.setHeader('content-type', 'application/json');
      if (req.url?.endsWith('/auth/challenge')) return res.end(JSON.stringify({ challenge: randomBytes(32).toString('base64url'), expiresAt: Date.now() + 60_000 }));
      if (req.url?.endsWith('/auth/token')) return res.end(JSON.stringify({ token: 'a.b.c', expiresAt: Date.now() + 300_000 }));
      res.end(JSON.stringify(liar.answer));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));
  return liar;
}

/**
 * A relay that serves changeset `r2Key` with other bytes, consistently (its
 * row's SHA-256 made to match): `bytes` in place of it, or, by default, its
 * own bytes with one bit flipped near the end (the AEAD tag's chunk).
 */
export async function replaceChangeset(relay: TestRelay, r2Key: string, bytes?: Uint8Array): Promise<void> {
  let body = bytes;
  if (body === undefined) {
    const obj = await relay.r2().get(r2Key);
    body = new Uint8Array(await obj!.arrayBuffer());
    body[body.length - 5]! ^= 1;
  }
  await relay.r2().put(r2Key, body);
  await relay.vaults().prepare('UPDATE changesets SET sha256 = ? WHERE r2_key = ?').bind(sha256Hex(body), r2Key).run();
}
