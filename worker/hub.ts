/**
 * VaultHub: one Durable Object per vault (named by the vault id) that holds
 * the vault's live WebSockets and fans announcements out to them.
 *
 * Hibernatable WebSockets (ctx.acceptWebSocket): the object may be evicted
 * from memory while sockets stay open, so it keeps no state in fields; each
 * socket is tagged with its device id so a revoked device can be cut off.
 *
 * Internal routes (reached only through the HUB binding, never the public
 * URL; the worker authenticates first):
 *   GET  /connect      (Upgrade: websocket, X-Casa-Device) → 101, then {"type":"hello","time"}
 *   POST /announce     JSON object → sent to every socket; 200 {"delivered": n}
 *   POST /disconnect   {"deviceId"} → closes that device's sockets
 */
import { DurableObject } from 'cloudflare:workers';
import { WS_CLOSE_DEVICE_REVOKED, WS_CLOSE_DEVICE_REVOKED_REASON } from '../src/protocol/messages.js';
import type { Env } from './env.js';

const HUB_ORIGIN = 'https://hub.internal';

export class VaultHub extends DurableObject<Env> {
  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    // Answered by the runtime without waking the object.
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair('{"type":"ping"}', '{"type":"pong"}'));
  }

  override async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    if (url.pathname === '/connect' && request.method === 'GET') {
      if (request.headers.get('Upgrade')?.toLowerCase() !== 'websocket') return new Response('expected websocket', { status: 426 });
      const deviceId = request.headers.get('X-Casa-Device') ?? '';
      const pair = new WebSocketPair();
      const server = pair[1];
      this.ctx.acceptWebSocket(server, deviceId ? [deviceId] : []);
      server.send(JSON.stringify({ type: 'hello', time: Date.now() }));
      return new Response(null, { status: 101, webSocket: pair[0] });
    }
    if (url.pathname === '/announce' && request.method === 'POST') {
      const text = await request.text();
      let msg: unknown;
      try {
        msg = JSON.parse(text);
      } catch {
        return new Response('bad json', { status: 400 });
      }
      if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) return new Response('bad json', { status: 400 });
      let delivered = 0;
      for (const ws of this.ctx.getWebSockets()) {
        try {
          ws.send(text);
          delivered++;
        } catch {
          // a socket closing under us: it will get webSocketClose
        }
      }
      return Response.json({ delivered });
    }
    if (url.pathname === '/disconnect' && request.method === 'POST') {
      const { deviceId } = await request.json<{ deviceId: string }>();
      let closed = 0;
      for (const ws of this.ctx.getWebSockets(deviceId)) {
        try {
          ws.close(WS_CLOSE_DEVICE_REVOKED, WS_CLOSE_DEVICE_REVOKED_REASON);
          closed++;
        } catch {
          // already closing
        }
      }
      return Response.json({ closed });
    }
    return new Response('not found', { status: 404 });
  }

  override async webSocketMessage(): Promise<void> {
    // Clients only listen; anything but the auto-answered ping is ignored.
  }

  override async webSocketClose(ws: WebSocket, code: number, reason: string): Promise<void> {
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason);
    } catch {
      // already closed
    }
  }

  override async webSocketError(ws: WebSocket): Promise<void> {
    try {
      ws.close(1011, 'error');
    } catch {
      // already closed
    }
  }
}

function hubStub(env: Env, vaultId: string): DurableObjectStub {
  return env.HUB.get(env.HUB.idFromName(vaultId));
}

/** Forwards an authenticated WebSocket upgrade to the vault's hub. */
export function connectHub(env: Env, vaultId: string, deviceId: string, request: Request): Promise<Response> {
  const headers = new Headers(request.headers);
  headers.set('X-Casa-Device', deviceId);
  return hubStub(env, vaultId).fetch(`${HUB_ORIGIN}/connect`, { method: 'GET', headers });
}

/** Sends `{"type":"announce", ...message}` to every live socket of the vault. */
export async function announce(env: Env, vaultId: string, message: Record<string, unknown>): Promise<number> {
  const { type: _ignored, ...fields } = message;
  const res = await hubStub(env, vaultId).fetch(`${HUB_ORIGIN}/announce`, {
    method: 'POST',
    body: JSON.stringify({ type: 'announce', ...fields }),
  });
  const { delivered } = await res.json<{ delivered: number }>();
  return delivered;
}

/** Closes a revoked device's live sockets. */
export async function disconnectDevice(env: Env, vaultId: string, deviceId: string): Promise<void> {
  await hubStub(env, vaultId).fetch(`${HUB_ORIGIN}/disconnect`, {
    method: 'POST',
    body: JSON.stringify({ deviceId }),
  });
}
