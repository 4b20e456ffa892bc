/**
 * Authenticated vault routes (Bearer token, docs/RELAY-API.md "Authenticated
 * routes"): the live WebSocket, which authenticates with its first message
 * instead. The device list and revocation, which carry signed membership
 * records, are in keys.ts.
 */
import { Hono } from 'hono';
import { TIME_HEADER } from '../../src/protocol/messages.js';
import type { AppEnv } from '../env.js';
import { badRequest, vaultIdParam } from '../http.js';
import { limitByIp } from '../limits.js';
import { connectHub } from '../hub.js';

export const deviceRoutes = new Hono<AppEnv>();

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
