/**
 * Pairing by code (docs/RELAY-API.md "Pairing by code", docs/RELAY-API.md): the relay
 * is a mailbox. A paired device (the offer side, authenticated) opens a
 * session under a short number, the nameplate, with the first PAKE message;
 * a new device (the join side, no credentials) reads it, answers once, and
 * gets a bearer token for the session; the offer side posts the final
 * message, or burns the session when the key confirmation failed. The relay
 * stores the three messages as opaque base64url and never sees the code's
 * password words; what it enforces is single use, expiry and burn-after-failure.
 *
 * - The join side's read and join answer one 404 for every session that is
 *   not open (unknown, expired, joined, failed, cancelled): a prober learns
 *   nothing, and each guess costs a PAIR_JOIN_LIMITER hit (as does a failed
 *   result poll, whose 404/401 would otherwise be a cheaper probe).
 * - The status routes are long polls: held until the state moves (D1 read
 *   every POLL_INTERVAL_MS) or `?wait` ms pass.
 */
import { Hono, type Context, type MiddlewareHandler } from 'hono';
import { isPairingSessionId } from '../../src/protocol/ids.js';
import { requireDevice } from '../auth.js';
import type { AppEnv } from '../env.js';
import { claimNameplate, endNameplate, releaseNameplate } from '../index-db.js';
import {
  ApiError,
  b64uDecode,
  b64uEncode,
  b64uField,
  badRequest,
  deviceIdField,
  hex,
  jsonBodyLimit,
  notFound,
  randomBytes,
  readJson,
  sha256,
  str,
  unauthorized,
} from '../http.js';
import { quotaExceeded, quotasOf } from '../quotas.js';
import { RETRY_AFTER_SECONDS, clientIp, clientNetwork, limit, limitByIp } from '../limits.js';
import {
  cancelPairing,
  completePairing,
  createPairing,
  finishPairing,
  getPairing,
  getVaultPairing,
  joinPairing,
  type PairingRow,
  type PairingState,
} from '../pairing-db.js';

/** Mounted at /v1/vaults: the offer side (device token). */
export const pairingVaultRoutes = new Hono<AppEnv>();
/** Mounted at /v1/pairings: the join side (no credentials; then the join token). */
export const pairingRoutes = new Hono<AppEnv>();

export const DEFAULT_TTL_SECONDS = 600;
export const MIN_TTL_SECONDS = 60;
export const MAX_TTL_SECONDS = 1800;
/** Decoded size of msgA and msgB (a PAKE share is at least a 32-byte point plus framing). */
export const MIN_PAKE_MESSAGE = 33;
export const MAX_PAKE_MESSAGE = 1024;
/**
 * Decoded size of msgFinal (key confirmation + the encrypted pairing payload:
 * the vault's keyring, compressed, and a device certificate; ~29 KB for 150
 * key epochs). Its base64url, 64,000 characters, leaves room for the rest of
 * `{"ok":true,"msgFinal":"…"}` under the 64 KiB JSON body cap
 * (JSON_BODY_LIMIT). The CLI's PAIR_MAX_FINAL_BYTES (src/crypto/pairing.ts)
 * is the same number.
 */
export const MAX_FINAL_MESSAGE = 48_000;
export const MAX_WAIT_MS = 25_000;
export const POLL_INTERVAL_MS = 200;
/** Nameplates are drawn from [1, 10,000) first, then from [10,000, 1,000,000) once several collided. */
const SHORT_TRIES = 4;
const NAMEPLATE_TRIES = 8;

type ViewState = PairingState | 'expired';
const VIEW_STATES: readonly ViewState[] = ['open', 'joined', 'confirmed', 'failed', 'done', 'cancelled', 'expired'];
const LIVE_STATES: readonly PairingState[] = ['open', 'joined', 'confirmed'];
const NAMEPLATE = /^[1-9][0-9]{0,8}$/;

/** The state as the API shows it: a live session past its expiry is "expired". */
function viewState(row: PairingRow, now: number): ViewState {
  return LIVE_STATES.includes(row.state) && row.expires_at <= now ? 'expired' : row.state;
}

/** A malformed nameplate names no session: the same 404 as an unknown one. */
function nameplateParam(c: Context<AppEnv>): string {
  const n = c.req.param('nameplate');
  if (n === undefined || !NAMEPLATE.test(n)) throw notFound();
  return n;
}

/** `?wait=<ms>`: 0..MAX_WAIT_MS, default 0 (answer at once). */
function waitParam(c: Context<AppEnv>): number {
  const w = c.req.query('wait');
  if (w === undefined) return 0;
  if (!/^\d{1,5}$/.test(w) || Number(w) > MAX_WAIT_MS) throw badRequest(`wait must be 0..${MAX_WAIT_MS} milliseconds`);
  return Number(w);
}

/** `?since=<state>`: the state the caller last saw; default open. */
function sinceParam(c: Context<AppEnv>): ViewState {
  const s = c.req.query('since');
  if (s === undefined) return 'open';
  if (!VIEW_STATES.includes(s as ViewState)) throw badRequest(`since must be one of ${VIEW_STATES.join(', ')}`);
  return s as ViewState;
}

/** A b64u message of min..max decoded bytes; the text as sent (it is canonical, so the bytes are implied). */
function message(body: Record<string, unknown>, field: string, min: number, max: number): string {
  const bytes = b64uField(body, field);
  if (bytes.length < min || bytes.length > max) throw badRequest(`${field} must encode ${min}..${max} bytes`);
  return str(body, field);
}

/** A uniform integer in [lo, hi) from crypto.getRandomValues (rejection sampling: no modulo bias). */
function randomInt(lo: number, hi: number): number {
  const span = hi - lo;
  const bound = Math.floor(0x1_0000_0000 / span) * span;
  for (;;) {
    const x = crypto.getRandomValues(new Uint32Array(1))[0]!;
    if (x < bound) return lo + (x % span);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Long poll: reads until `settled` or `waitMs` has passed (or the client went
 * away, where the runtime says so), then answers the last read.
 */
async function poll<T>(c: Context<AppEnv>, waitMs: number, read: () => Promise<T>, settled: (v: T) => boolean): Promise<T> {
  const deadline = Date.now() + waitMs;
  let v = await read();
  while (!settled(v)) {
    const left = deadline - Date.now();
    if (left <= 0 || c.req.raw.signal?.aborted === true) break;
    await sleep(Math.min(POLL_INTERVAL_MS, left));
    v = await read();
  }
  return v;
}

/** The session ended (failed, done, cancelled) at `at`: its nameplate is free in the index ENDED_HOLD_MS later. */
function ended(c: Context<AppEnv>, nameplate: string, at: number): void {
  const vaultId = c.var.vaultId ?? null;
  const done = (async () => {
    const row = vaultId === null ? await getPairing(c.env.DB, nameplate) : { vault_id: vaultId };
    if (row !== null) await endNameplate(c.env.INDEX, nameplate, row.vault_id, at);
  })();
  c.executionCtx.waitUntil(done.catch(() => undefined));
}

const conflict = (message: string): ApiError => new ApiError(409, 'conflict', message);

/** 409 for a move the session's state does not allow. */
function wrongState(row: PairingRow, now: number, expected: PairingState): ApiError {
  const state = viewState(row, now);
  return conflict(state === 'expired' ? 'the pairing session expired' : `the pairing session is ${state}, not ${expected}`);
}

// ---- the offer side (authenticated, vault-scoped) ------------------------------

function offerView(row: PairingRow, now: number): Record<string, unknown> {
  const out: Record<string, unknown> = { state: viewState(row, now), expiresAt: row.expires_at };
  if (row.msg_b !== null) out.msgB = row.msg_b;
  if (row.state === 'done' && row.joined_device_id !== null) out.deviceId = row.joined_device_id;
  return out;
}

const limitPairByDevice: MiddlewareHandler<AppEnv> = async (c, next) => {
  await limit(c.env.PAIR_LIMITER, `dev:${c.var.deviceId}`);
  await next();
};

pairingVaultRoutes.post('/:vaultId/pairings', requireDevice(), limitPairByDevice, jsonBodyLimit, async (c) => {
  const body = await readJson(c);
  const sid = str(body, 'sid');
  if (!isPairingSessionId(sid)) throw badRequest('sid must be 32 lowercase hex characters');
  const msgA = message(body, 'msgA', MIN_PAKE_MESSAGE, MAX_PAKE_MESSAGE);
  let ttl = DEFAULT_TTL_SECONDS;
  if (body.ttlSeconds !== undefined) {
    ttl = body.ttlSeconds as number;
    if (!Number.isSafeInteger(ttl) || ttl < MIN_TTL_SECONDS || ttl > MAX_TTL_SECONDS) {
      throw badRequest(`ttlSeconds must be an integer in ${MIN_TTL_SECONDS}..${MAX_TTL_SECONDS}`);
    }
  }
  const now = Date.now();
  const quotas = quotasOf(c.env);
  const expiresAt = now + ttl * 1000;
  for (let attempt = 0; attempt < NAMEPLATE_TRIES; attempt++) {
    const nameplate = String(attempt < SHORT_TRIES ? randomInt(1, 10_000) : randomInt(10_000, 1_000_000));
    // Nameplates are global (the join side knows no vault): claimed in the index first, then the session is opened here.
    if (!(await claimNameplate(c.env.INDEX, nameplate, c.var.vaultId, expiresAt, now))) continue;
    const outcome = await createPairing(
      c.env.DB,
      { nameplate, vaultId: c.var.vaultId, offerDeviceId: c.var.deviceId, sid, msgA, now, expiresAt },
      quotas.pairings,
    );
    if (outcome === 'created') return c.json({ nameplate, expiresAt }, 201);
    await releaseNameplate(c.env.INDEX, nameplate, c.var.vaultId, expiresAt);
    if (outcome === 'full') {
      throw quotaExceeded('pairings', quotas.pairings, quotas.pairings);
    }
  }
  // Only when the number space is crowded (many sessions at once): a later try will find room.
  throw new ApiError(429, 'rate_limited', 'no free pairing session number: try again later', {
    'Retry-After': String(RETRY_AFTER_SECONDS),
  });
});

pairingVaultRoutes.get('/:vaultId/pairings/:nameplate', requireDevice(), async (c) => {
  const nameplate = nameplateParam(c);
  const wait = waitParam(c);
  const since = sinceParam(c);
  const row = await poll(
    c,
    wait,
    () => getVaultPairing(c.env.DB, c.var.vaultId, nameplate),
    (r) => r === null || viewState(r, Date.now()) !== since,
  );
  if (row === null) throw notFound();
  return c.json(offerView(row, Date.now()));
});

pairingVaultRoutes.post('/:vaultId/pairings/:nameplate/finish', requireDevice(), jsonBodyLimit, async (c) => {
  const nameplate = nameplateParam(c);
  const body = await readJson(c);
  const ok = body.ok;
  if (typeof ok !== 'boolean') throw badRequest('ok must be true or false');
  // With ok false any msgFinal is ignored: the session is burned, nothing is forwarded.
  const msgFinal = ok ? message(body, 'msgFinal', 1, MAX_FINAL_MESSAGE) : null;
  const now = Date.now();
  const vaultId = c.var.vaultId;
  const state = ok ? 'confirmed' : 'failed';
  if (await finishPairing(c.env.DB, vaultId, nameplate, msgFinal, now)) {
    if (!ok) ended(c, nameplate, now);
    return c.json({ state });
  }
  const row = await getVaultPairing(c.env.DB, vaultId, nameplate);
  if (row === null) throw notFound();
  // A retry whose answer was lost: the same answer again.
  if (row.state === state && row.msg_final === msgFinal) return c.json({ state });
  throw wrongState(row, now, 'joined');
});

pairingVaultRoutes.delete('/:vaultId/pairings/:nameplate', requireDevice(), async (c) => {
  const nameplate = nameplateParam(c);
  const now = Date.now();
  const row = await cancelPairing(c.env.DB, c.var.vaultId, nameplate, now);
  if (row === null) throw notFound();
  if (row.state === 'cancelled' && row.updated_at === now) ended(c, nameplate, now);
  return c.json({ state: viewState(row, now) });
});

// ---- the join side (no credentials, then the join token) ------------------------

/** The SHA-256 hex of the join token in `Authorization: Bearer`; 401 if missing or not a token. */
async function joinTokenHash(c: Context<AppEnv>): Promise<string> {
  const m = /^Bearer ([A-Za-z0-9_-]+)$/.exec(c.req.header('Authorization')?.trim() ?? '');
  const token = m ? b64uDecode(m[1]!) : null;
  if (token === null || token.length !== 32) throw unauthorized('missing or malformed pairing token');
  return hex(await sha256(token));
}

/** Equal hex strings, compared without an early exit. */
function sameHex(a: string, b: string | null): boolean {
  if (b === null || a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/** The session the token was issued for: 404 if there is none by that nameplate, 401 if the token is not its. */
function tokenSession(row: PairingRow | null, tokenHash: string): PairingRow {
  if (row === null) throw notFound();
  if (!sameHex(tokenHash, row.join_token_hash)) throw unauthorized('wrong pairing token');
  return row;
}

pairingRoutes.get('/:nameplate', limitByIp('PAIR_JOIN_LIMITER'), async (c) => {
  const row = await getPairing(c.env.DB, nameplateParam(c));
  // Unknown, expired, joined, failed, done, cancelled: one answer.
  if (row === null || row.state !== 'open' || row.expires_at <= Date.now()) throw notFound();
  return c.json({ sid: row.sid, msgA: row.msg_a, expiresAt: row.expires_at });
});

pairingRoutes.post('/:nameplate/join', limitByIp('PAIR_JOIN_LIMITER'), jsonBodyLimit, async (c) => {
  const nameplate = nameplateParam(c);
  const msgB = message(await readJson(c), 'msgB', MIN_PAKE_MESSAGE, MAX_PAKE_MESSAGE);
  const token = randomBytes(32);
  const expiresAt = await joinPairing(c.env.DB, nameplate, msgB, hex(await sha256(token)), Date.now());
  // Not open any more (or never was): single use, and the same 404 as the read.
  if (expiresAt === null) throw notFound();
  return c.json({ token: b64uEncode(token), expiresAt }, 201);
});

pairingRoutes.get('/:nameplate/result', limitByIp('API_LIMITER'), async (c) => {
  const nameplate = nameplateParam(c);
  const wait = waitParam(c);
  const tokenHash = await joinTokenHash(c);
  const first = await getPairing(c.env.DB, nameplate);
  if (first === null || !sameHex(tokenHash, first.join_token_hash)) {
    // 404 and 401 tell which nameplates are in use: a failed try costs what a read does.
    await limit(c.env.PAIR_JOIN_LIMITER, `ip:${clientNetwork(clientIp(c))}`);
  }
  tokenSession(first, tokenHash);
  const found = await poll(
    c,
    wait,
    () => getPairing(c.env.DB, nameplate),
    (r) => r === null || !sameHex(tokenHash, r.join_token_hash) || viewState(r, Date.now()) !== 'joined',
  );
  const row = tokenSession(found, tokenHash);
  const state = viewState(row, Date.now());
  const final = (state === 'confirmed' || state === 'done') && row.msg_final !== null;
  return c.json(final ? { state, msgFinal: row.msg_final } : { state });
});

pairingRoutes.post('/:nameplate/done', limitByIp('PAIR_JOIN_LIMITER'), jsonBodyLimit, async (c) => {
  const nameplate = nameplateParam(c);
  const tokenHash = await joinTokenHash(c);
  const deviceId = deviceIdField(await readJson(c));
  const now = Date.now();
  if (await completePairing(c.env.DB, nameplate, tokenHash, deviceId, now)) {
    ended(c, nameplate, now);
    return c.json({ state: 'done' });
  }
  const row = tokenSession(await getPairing(c.env.DB, nameplate), tokenHash);
  // A retry whose answer was lost: the same answer again.
  if (row.state === 'done' && row.joined_device_id === deviceId) return c.json({ state: 'done' });
  if (row.state !== 'confirmed' || viewState(row, now) === 'expired') throw wrongState(row, now, 'confirmed');
  throw conflict('the device is not an enrolled, unrevoked device of this vault');
});
