/**
 * VaultHub: one Durable Object per vault (named by the vault id) that holds
 * the vault's live WebSockets and fans announcements out to them.
 *
 * Hibernatable WebSockets (ctx.acceptWebSocket): the object may be evicted
 * from memory while sockets stay open, so it keeps no state in fields; each
 * socket carries its state as its attachment: the vault id and, until it
 * authenticates, a deadline; once authenticated, its device id (so a revoked
 * device can be cut off).
 *
 * A socket authenticates with its first message (docs/RELAY-API.md `/live`;
 * tokens are never in a URL): `{"type":"auth","token"}`, a device token of
 * this vault (worker/auth.ts deviceOfToken). Then the hub answers
 * `{"type":"hello","time"}` and sends it announcements. Anything else first,
 * a bad token, or nothing within LIVE_AUTH_TIMEOUT_MS (an alarm) closes the
 * socket with 4001; a revoked device's token with 4003. An unauthenticated
 * socket gets no announcement.
 *
 * Internal routes (reached only through the HUB binding, never the public
 * URL):
 *   GET  /connect      (Upgrade: websocket, X-Casa-Vault) → 101; the socket waits for its auth message
 *   POST /announce     JSON object → sent to every authenticated socket; 200 {"delivered": n}
 *   POST /disconnect   {"deviceId"} → closes that device's sockets
 */
import { DurableObject } from 'cloudflare:workers';
import {
  LIVE_AUTH_TIMEOUT_MS,
  WS_CLOSE_DEVICE_REVOKED,
  WS_CLOSE_DEVICE_REVOKED_REASON,
  WS_CLOSE_UNAUTHORIZED,
  WS_CLOSE_UNAUTHORIZED_REASON,
} from '../src/protocol/messages.js';
import { deviceOfToken } from './auth.js';
import type { Env } from './env.js';

const HUB_ORIGIN = 'https://hub.internal';

/** A socket's state, kept as its attachment (it survives hibernation). */
type Attachment =
  /** Waiting for its auth message until `deadline` (ms). */
  | { vaultId: string; deadline: number }
  /** Authenticated as `deviceId`. */
  | { vaultId: string; deviceId: string };

function attachmentOf(ws: WebSocket): Attachment | null {
  try {
    const a = ws.deserializeAttachment() as Attachment | null;
    return a && typeof a === 'object' && typeof a.vaultId === 'string' ? a : null;
  } catch {
    return null;
  }
}

const deviceOf = (ws: WebSocket): string | null => {
  const a = attachmentOf(ws);
  return a !== null && 'deviceId' in a ? a.deviceId : null;
};

/** The token of a first message `{"type":"auth","token":"..."}`, or null. */
function authToken(message: string | ArrayBuffer): string | null {
  if (typeof message !== 'string' || message.length > 4096) return null;
  try {
    const m = JSON.parse(message) as Record<string, unknown>;
    return m !== null && typeof m === 'object' && m.type === 'auth' && typeof m.token === 'string' ? m.token : null;
  } catch {
    return null;
  }
}

function close(ws: WebSocket, code: number, reason: string): void {
  try {
    ws.close(code, reason);
  } catch {
    // already closing
  }
}

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
      const vaultId = request.headers.get('X-Casa-Vault') ?? '';
      const pair = new WebSocketPair();
      const server = pair[1];
      this.ctx.acceptWebSocket(server);
      const deadline = Date.now() + LIVE_AUTH_TIMEOUT_MS;
      server.serializeAttachment({ vaultId, deadline } satisfies Attachment);
      await this.armAlarm(deadline);
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
        if (deviceOf(ws) === null) continue;
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
      for (const ws of this.ctx.getWebSockets()) {
        if (deviceOf(ws) !== deviceId) continue;
        close(ws, WS_CLOSE_DEVICE_REVOKED, WS_CLOSE_DEVICE_REVOKED_REASON);
        closed++;
      }
      return Response.json({ closed });
    }
    return new Response('not found', { status: 404 });
  }

  /** The first message authenticates the socket; after that, clients only listen (the ping is auto-answered). */
  override async webSocketMessage(ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
    const a = attachmentOf(ws);
    if (a === null) return close(ws, WS_CLOSE_UNAUTHORIZED, WS_CLOSE_UNAUTHORIZED_REASON);
    if ('deviceId' in a) return;
    const token = authToken(message);
    const who = token === null ? 'unauthorized' : await deviceOfToken(this.env, a.vaultId, token, Date.now());
    if (who === 'revoked') return close(ws, WS_CLOSE_DEVICE_REVOKED, WS_CLOSE_DEVICE_REVOKED_REASON);
    if (who === 'unauthorized') return close(ws, WS_CLOSE_UNAUTHORIZED, WS_CLOSE_UNAUTHORIZED_REASON);
    // A second auth message sent before the first was answered: one hello.
    const now = attachmentOf(ws);
    if (now === null || 'deviceId' in now) return;
    ws.serializeAttachment({ vaultId: a.vaultId, deviceId: who.deviceId } satisfies Attachment);
    ws.send(JSON.stringify({ type: 'hello', time: Date.now() }));
  }

  /** Closes every socket whose auth deadline passed; sets the alarm again for the next one. */
  override async alarm(): Promise<void> {
    const now = Date.now();
    let next = Infinity;
    for (const ws of this.ctx.getWebSockets()) {
      const a = attachmentOf(ws);
      if (a === null || 'deviceId' in a) continue;
      if (a.deadline <= now) { try { ws.close(WS_CLOSE_UNAUTHORIZED, WS_CLOSE_UNAUTHORIZED_REASON); ws.send(JSON.stringify({type:'after-close'})) } catch (e) { ws.send(JSON.stringify({ type: 'err', e: String(e) })); } }
      else next = Math.min(next, a.deadline);
    }
    if (next !== Infinity) await this.ctx.storage.setAlarm(next);
  }

  /** The alarm at `deadline`, unless one is already set as early. */
  private async armAlarm(deadline: number): Promise<void> {
    const current = await this.ctx.storage.getAlarm();
    if (current === null || current > deadline) await this.ctx.storage.setAlarm(deadline);
  }

  override async webSocketClose(ws: WebSocket, code: number, reason: string): Promise<void> {
    close(ws, code === 1005 || code === 1006 ? 1000 : code, reason);
  }

  override async webSocketError(ws: WebSocket): Promise<void> {
    close(ws, 1011, 'error');
  }
}

function hubStub(env: Env, vaultId: string): DurableObjectStub {
  return env.HUB.get(env.HUB.idFromName(vaultId));
}

/** Forwards a WebSocket upgrade to the vault's hub, where the socket authenticates with its first message. */
export function connectHub(env: Env, vaultId: string, request: Request): Promise<Response> {
  const headers = new Headers(request.headers);
  headers.set('X-Casa-Vault', vaultId);
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
