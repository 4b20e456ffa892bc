/**
 * Unauthenticated vault routes (docs/RELAY-API.md): create a vault and the
 * challenge → token exchange (signed by the device key). Enrollment, by a
 * signed device certificate, is in keys.ts.
 */
import { Hono } from 'hono';
import { isVaultId } from '../../src/protocol/ids.js';
import { CHALLENGE_TTL_MS, checkPublicKey, checkSignedTime, signToken, verifySigned } from '../auth.js';
import {
  consumeChallenge,
  getDevice,
  insertChallenge,
  recordTokenIssued,
} from '../db.js';
import { vaultStub, type AppEnv } from '../env.js';
import {
  ApiError,
  b64uDecode,
  b64uEncode,
  b64uField,
  badRequest,
  deviceIdField,
  hex,
  int,
  jsonBodyLimit,
  notFound,
  randomBytes,
  readJson,
  revoked,
  sha256,
  str,
  unauthorized,
  vaultIdParam,
} from '../http.js';
import { clientIp, clientNetwork, limit, limitByIp } from '../limits.js';

export const vaultRoutes = new Hono<AppEnv>();

/** A public key as stored (validated when it was registered). */
function storedKey(text: string): Uint8Array {
  const key = b64uDecode(text);
  if (key === null || key.length !== 32) throw new Error('stored public key is malformed');
  return key;
}

vaultRoutes.post(
  '/',
  limitByIp('CREATE_LIMITER'),
  jsonBodyLimit,
  async (c) => {
    const now = Date.now();
    const body = await readJson(c);
    const vaultId = str(body, 'vaultId');
    if (!isVaultId(vaultId)) throw badRequest('vaultId must be 32 lowercase hex characters');
    const authPublicKey = b64uField(body, 'authPublicKey', 32);
    const canary = b64uField(body, 'canary');
    if (canary.length === 0) throw badRequest('canary must not be empty');
    const time = int(body, 'time');
    const signature = b64uField(body, 'signature', 64);
    checkSignedTime(time, now);
    const authKeyText = str(body, 'authPublicKey');
    const fields = [vaultId, authKeyText, hex(await sha256(canary)), time];
    if (!verifySigned('create-vault', fields, signature, authPublicKey)) throw unauthorized('bad signature');
    checkPublicKey('authPublicKey', authPublicKey);
    // Runs in the Worker (the vault id is in the body); the vault is created in its own object.
    const created = await vaultStub(c.env, vaultId).createVault({
      id: vaultId,
      auth_public_key: authKeyText,
      canary: str(body, 'canary'),
      created_at: now,
    });
    if (!created) throw new ApiError(409, 'conflict', 'the vault already exists');
    return c.json({ vaultId, time: now }, 201);
  },
);

vaultRoutes.post('/:vaultId/auth/challenge', jsonBodyLimit, async (c) => {
  const now = Date.now();
  const vaultId = vaultIdParam(c);
  const body = await readJson(c);
  const deviceId = deviceIdField(body);
  await limit(c.env.AUTH_LIMITER, `ip:${clientNetwork(clientIp(c))}|device:${deviceId}`);
  const device = await getDevice(c.env.DB, vaultId, deviceId);
  if (device === null) throw notFound();
  if (device.revoked_at !== null) throw revoked();
  const challenge = b64uEncode(randomBytes(32));
  const expiresAt = now + CHALLENGE_TTL_MS;
  await insertChallenge(c.env.DB, { challenge, vaultId, deviceId, createdAt: now, expiresAt });
  return c.json({ challenge, expiresAt });
});

vaultRoutes.post('/:vaultId/auth/token', jsonBodyLimit, async (c) => {
  const now = Date.now();
  const vaultId = vaultIdParam(c);
  const body = await readJson(c);
  const deviceId = deviceIdField(body);
  const challenge = str(body, 'challenge');
  const signature = b64uField(body, 'signature', 64);
  await limit(c.env.AUTH_LIMITER, `ip:${clientNetwork(clientIp(c))}|device:${deviceId}`);
  // Consumed before anything else is checked: one signature attempt per challenge.
  const expiresAt = await consumeChallenge(c.env.DB, vaultId, deviceId, challenge);
  if (expiresAt === null || expiresAt <= now) throw unauthorized('unknown, used or expired challenge');
  const device = await getDevice(c.env.DB, vaultId, deviceId);
  if (device === null) throw unauthorized('unknown, used or expired challenge');
  if (device.revoked_at !== null) throw revoked();
  const deviceKey = storedKey(device.public_key);
  if (!verifySigned('token', [vaultId, deviceId, challenge], signature, deviceKey)) throw unauthorized('bad signature');
  const token = await signToken(c.env.JWT_SECRET, vaultId, deviceId, now);
  // The vault's current epoch rides along, so a device learns of a new one with no extra request.
  const { epoch, keyId } = await recordTokenIssued(c.env.DB, vaultId, deviceId, now);
  return c.json({ ...token, epoch, keyId });
});
