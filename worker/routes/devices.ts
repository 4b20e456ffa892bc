/**
 * Authenticated vault routes (Bearer token, docs/RELAY-API.md "Authenticated
 * routes"): the device list, revocation; and the live WebSocket, which
 * authenticates with its first message instead.
 */
import { Hono } from 'hono';
import { isDeviceId } from '../../src/protocol/ids.js';
import { TIME_HEADER } from '../../src/protocol/messages.js';
import { requireDevice } from '../auth.js';
import { listDevices, revokeDevice } from '../db.js';
import type { AppEnv } from '../env.js';
import { badRequest, notFound, vaultIdParam } from '../http.js';
import { limitByIp } from '../limits.js';
import { connectHub, disconnectDevice } from '../hub.js';

export const deviceRoutes = new Hono<AppEnv>();

deviceRoutes.get('/:vaultId/devices', requireDevice(), async (c) => {
  const rows = await listDevices(c.env.DB, c.var.vaultId);
  return c.json({
    devices: rows.map((d) => ({
      id: d.id,
      name: d.name,
      publicKey: d.public_key,
      createdAt: d.created_at,
      lastSeenAt: d.last_seen_at,
      revokedAt: d.revoked_at,
    })),
  });
});

deviceRoutes.post('/:vaultId/devices/:deviceId/revoke', requireDevice(), async (c) => {
  const deviceId = c.req.param('deviceId');
  if (!isDeviceId(deviceId)) throw notFound();
  const row = await revokeDevice(c.env.DB, c.var.vaultId, deviceId, c.var.deviceId, Date.now());
  if (row === null) throw notFound();
  // Best effort: the device's next request is refused anyway (the row is read every time).
  c.executionCtx.waitUntil(disconnectDevice(c.env, c.var.vaultId, deviceId).catch(() => undefined));
  return c.json({ id: row.id, revokedAt: row.revoked_at });
});

/**
 * The live socket: upgraded without credentials (a token is never in a URL),
 * it authenticates with its first message in the vault's hub (worker/hub.ts).
 * Rate limited by client IP; a token in the query is refused (400) rather
 * than ignored, so a client that still sends one learns it at once.
 */
deviceRoutes.get('/:vaultId/live', limitByIp('API_LIMITER'), async (c) => {
  const vaultId = vaultIdParam(c);
  if (c.req.query('token') !== undefined) throw badRequest('a token is never sent in a URL: send {"type":"auth","token"} as the first message');
  if (c.req.header('Upgrade')?.toLowerCase() !== 'websocket') throw badRequest('expected a WebSocket upgrade');
  const res = await connectHub(c.env, vaultId, c.req.raw);
  if (res.status !== 101 || res.webSocket === null) throw new Error(`hub answered ${res.status}`);
  return new Response(null, { status: 101, webSocket: res.webSocket, headers: { [TIME_HEADER]: String(Date.now()) } });
});
