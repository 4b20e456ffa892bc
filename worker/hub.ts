/**
 * The routes' side of the vault's live sockets, which live in the vault's
 * object (worker/vault.ts: accept, authenticate by the first message,
 * announce, cut off a revoked device). The routes run in that object, so
 * these are direct calls (env.LIVE), not requests.
 */
import type { RouteEnv } from './env.js';

function live(env: RouteEnv): NonNullable<RouteEnv['LIVE']> {
  if (env.LIVE === undefined) throw new Error('live sockets are only reachable inside the vault object');
  return env.LIVE;
}

/** Accepts a WebSocket upgrade in the vault's object, where the socket authenticates with its first message. */
export function connectHub(env: RouteEnv, vaultId: string, _request: Request): Promise<Response> {
  return live(env).connectLive(vaultId);
}

/** Sends `{"type":"announce", ...message}` to every live socket of the vault. */
export function announce(env: RouteEnv, _vaultId: string, message: Record<string, unknown>): Promise<number> {
  return live(env).announce(message);
}

/** Closes a revoked device's live sockets. */
export async function disconnectDevice(env: RouteEnv, _vaultId: string, deviceId: string): Promise<void> {
  await live(env).disconnect(deviceId);
}
