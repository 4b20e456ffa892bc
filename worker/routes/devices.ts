/**
 * Authenticated vault routes (Bearer token, docs/RELAY-API.md "Authenticated
 * routes"): the live WebSocket. The device list and revocation, which carry
 * signed membership records, are in keys.ts.
 */
import { Hono } from 'hono';
import { TIME_HEADER } from '../../src/protocol/messages.js';
import { requireDevice } from '../auth.js';
import type { AppEnv } from '../env.js';
import { badRequest } from '../http.js';
import { connectHub } from '../hub.js';

export const deviceRoutes = new Hono<AppEnv>();

deviceRoutes.get('/:vaultId/live', requireDevice({ allowQueryToken: true }), async (c) => {
  if (c.req.header('Upgrade')?.toLowerCase() !== 'websocket') throw badRequest('expected a WebSocket upgrade');
  const res = await connectHub(c.env, c.var.vaultId, c.var.deviceId, c.req.raw);
  if (res.status !== 101 || res.webSocket === null) throw new Error(`hub answered ${res.status}`);
  return new Response(null, { status: 101, webSocket: res.webSocket, headers: { [TIME_HEADER]: String(Date.now()) } });
});
