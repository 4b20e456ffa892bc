/**
 * Authentication (docs/RELAY-API.md, docs/RELAY-API.md):
 * - signed requests: Ed25519 over `signedMessage(purpose, fields)` from
 *   src/protocol/messages.ts (RFC 8032 verification, strict encodings: no
 *   ZIP-215 leniency), with the signed time inside ±SIGNED_TIME_WINDOW_MS;
 * - device tokens: compact JWS (RFC 7515) JWTs (RFC 7519) MACed with
 *   HMAC-SHA256 under JWT_SECRET. Only `alg: HS256` is accepted (RFC 8725
 *   §3.1: allow-list algorithms; `none` and every other alg are refused
 *   before any key is touched); iss, aud, exp, sub and vid are checked. The
 *   MAC is checked by WebCrypto's verify, which compares in constant time.
 * - requireDevice: the middleware of every authenticated route. It reads the
 *   device row on every request, so revocation is immediate, and answers a
 *   token for another vault exactly like an unknown vault (404).
 */
import { ed25519 } from '@noble/curves/ed25519.js';
import type { Context, MiddlewareHandler } from 'hono';
import { isDeviceId, isVaultId } from '../src/protocol/ids.js';
import { EPOCH_HEADER, EXPECT_EPOCH_HEADER, SIGNED_TIME_WINDOW_MS, signedMessage, type SignedPurpose } from '../src/protocol/messages.js';
import { getDevice, getDeviceWithEpoch } from './db.js';
import type { AppEnv, Env } from './env.js';
import { ApiError, b64uDecode, b64uEncode, badRequest, notFound, randomBytes, revoked, unauthorized } from './http.js';
import { limit } from './limits.js';

export const TOKEN_TTL_MS = 5 * 60 * 1000;
export const CHALLENGE_TTL_MS = 2 * 60 * 1000;
export const JWT_ISSUER = 'casa-relay';
export const JWT_AUDIENCE = 'casa-vault';

/** 400 unless `time` is within the signed-request window of the relay's clock. */
export function checkSignedTime(time: number, now: number): void {
  if (Math.abs(time - now) > SIGNED_TIME_WINDOW_MS) throw badRequest('time is more than 10 minutes from the relay clock');
}

/** True iff `signature` is a valid Ed25519 signature by `publicKey` over the purpose's message. */
export function verifySigned(
  purpose: SignedPurpose,
  fields: ReadonlyArray<string | number>,
  signature: Uint8Array,
  publicKey: Uint8Array,
): boolean {
  try {
    return ed25519.verify(signature, signedMessage(purpose, fields), publicKey, { zip215: false });
  } catch {
    return false; // malformed point or signature encoding
  }
}

/** 400 unless the bytes are a usable Ed25519 public key (checked once, when it is registered). */
export function checkPublicKey(field: string, key: Uint8Array): void {
  let ok = false;
  try {
    ok = ed25519.utils.isValidPublicKey(key, false);
  } catch {
    ok = false;
  }
  if (!ok) throw badRequest(`${field} is not an Ed25519 public key`);
}

export interface TokenClaims {
  iss: string;
  aud: string;
  sub: string;
  vid: string;
  iat: number;
  exp: number;
  jti: string;
}

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });
const HEADER = b64uEncode(enc.encode(JSON.stringify({ alg: 'HS256', typ: 'JWT' })));

const keyCache = new Map<string, Promise<CryptoKey>>();
function hmacKey(secret: string): Promise<CryptoKey> {
  // A missing or short secret is a deployment error: fail closed (500), never sign with it.
  if (typeof secret !== 'string' || secret.length < 32) throw new Error('JWT_SECRET is missing or shorter than 32 characters');
  let key = keyCache.get(secret);
  if (!key) {
    key = crypto.subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
    keyCache.set(secret, key);
  }
  return key;
}

export async function signToken(
  secret: string,
  vaultId: string,
  deviceId: string,
  now: number,
): Promise<{ token: string; expiresAt: number }> {
  const iat = Math.floor(now / 1000);
  const exp = iat + TOKEN_TTL_MS / 1000;
  const claims: TokenClaims = {
    iss: JWT_ISSUER,
    aud: JWT_AUDIENCE,
    sub: deviceId,
    vid: vaultId,
    iat,
    exp,
    jti: b64uEncode(randomBytes(16)),
  };
  const input = `${HEADER}.${b64uEncode(enc.encode(JSON.stringify(claims)))}`;
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', await hmacKey(secret), enc.encode(input)));
  return { token: `${input}.${b64uEncode(mac)}`, expiresAt: exp * 1000 };
}

function parsePart(part: string): Record<string, unknown> | null {
  const bytes = b64uDecode(part);
  if (bytes === null) return null;
  try {
    const v: unknown = JSON.parse(dec.decode(bytes));
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** The token's claims, or null for any defect (all map to the same 401, no oracle). */
async function verifyToken(secret: string, token: string, now: number): Promise<TokenClaims | null> {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  const [h, p, s] = parts as [string, string, string];
  const header = parsePart(h);
  // The allow-list: exactly HS256, decided by us, before the key is used.
  if (header === null || header.alg !== 'HS256') return null;
  if (header.typ !== undefined && header.typ !== 'JWT') return null;
  if (header.crit !== undefined) return null; // RFC 7515 §4.1.11: we understand no extensions
  const mac = b64uDecode(s);
  if (mac === null || mac.length !== 32) return null;
  const ok = await crypto.subtle.verify('HMAC', await hmacKey(secret), mac, enc.encode(`${h}.${p}`));
  if (!ok) return null;
  const c = parsePart(p);
  if (c === null) return null;
  const nowS = Math.floor(now / 1000);
  if (c.iss !== JWT_ISSUER) return null;
  if (!(c.aud === JWT_AUDIENCE || (Array.isArray(c.aud) && c.aud.includes(JWT_AUDIENCE)))) return null;
  if (typeof c.exp !== 'number' || !Number.isFinite(c.exp) || c.exp <= nowS) return null;
  if (c.nbf !== undefined && (typeof c.nbf !== 'number' || c.nbf > nowS + 60)) return null;
  if (typeof c.iat !== 'number' || c.iat > nowS + 60) return null;
  if (!isDeviceId(c.sub) || !isVaultId(c.vid) || typeof c.jti !== 'string') return null;
  return { iss: c.iss, aud: JWT_AUDIENCE, sub: c.sub, vid: c.vid, iat: c.iat, exp: c.exp, jti: c.jti };
}

/** `Authorization: Bearer <token>`; never a token in the URL (docs/SECURITY.md §5). */
function bearer(c: Context): string | null {
  const h = c.req.header('Authorization');
  if (h === undefined) return null;
  const m = /^Bearer ([A-Za-z0-9_.-]+)$/.exec(h.trim());
  return m ? m[1]! : null;
}

/**
 * Authenticated routes: token → vault match (else 404) → device row (missing
 * 401, revoked 403) → the expected epoch, if the request names one (else 409
 * epoch_moved, before the route runs) → API_LIMITER by device. Sets
 * c.var.vaultId/deviceId, and the vault's epoch on the answer (EPOCH_HEADER).
 */
export function requireDevice(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const now = Date.now();
    const token = bearer(c);
    if (token === null) throw unauthorized('missing bearer token');
    const claims = await verifyToken(c.env.JWT_SECRET, token, now);
    if (claims === null) throw unauthorized('invalid or expired token');
    const vaultId = c.req.param('vaultId');
    // Another vault, existing or not, malformed id or not: the same 404.
    if (vaultId !== claims.vid) throw notFound();
    const device = await getDeviceWithEpoch(c.env.DB, claims.vid, claims.sub);
    if (device === null) throw unauthorized('invalid or expired token');
    if (device.revoked_at !== null) throw revoked();
    const epoch = `${device.epoch}.${device.epoch_key_id}`;
    const expected = c.req.header(EXPECT_EPOCH_HEADER);
    if (expected !== undefined && expected !== epoch) {
      throw new ApiError(409, 'epoch_moved', 'the vault has moved to another key epoch', { [EPOCH_HEADER]: epoch }, { epoch: device.epoch, keyId: device.epoch_key_id });
    }
    await limit(c.env.API_LIMITER, `device:${claims.sub}`);
    c.set('vaultId', claims.vid);
    c.set('deviceId', claims.sub);
    await next();
    // After the route (its answer or its error), the epoch as the request found it, or as the route moved it; a 101 carries its own, immutable headers.
    if (c.res.status !== 101) c.res.headers.set(EPOCH_HEADER, c.get('epochNow') ?? epoch);
  };
}

/**
 * The device a token authenticates on `vaultId`, as requireDevice decides
 * it, for the live socket's first message (worker/hub.ts): `unauthorized`
 * for any defect, a token of another vault or an unknown device (one answer,
 * no oracle), `revoked` for a revoked device.
 */
export async function deviceOfToken(env: Env, vaultId: string, token: string, now: number): Promise<{ deviceId: string } | 'unauthorized' | 'revoked'> {
  const claims = await verifyToken(env.JWT_SECRET, token, now);
  if (claims === null || claims.vid !== vaultId) return 'unauthorized';
  const device = await getDevice(env.DB, claims.vid, claims.sub);
  if (device === null) return 'unauthorized';
  if (device.revoked_at !== null) return 'revoked';
  return { deviceId: claims.sub };
}
