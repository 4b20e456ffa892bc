// The live WebSocket: GET /v1/vaults/:vaultId/live authenticates and hands the
// upgrade to the vault's VaultHub Durable Object (hibernatable sockets), which
// greets with hello and fans out announcements.
import { request } from 'node:http';
import { WebSocket } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enrollDevice, getToken, post, revokeBody, setupVault, startTestRelay, type TestRelay } from '../helpers/relay.js';

let relay: TestRelay;
beforeAll(async () => {
  relay = await startTestRelay();
});
afterAll(async () => {
  await relay?.stop();
});

/** Opens a socket and collects its messages; rejects on error or after 5 s. */
function openLive(url: string, init?: { headers: Record<string, string> }) {
  const ws = new WebSocket(url, init as never);
  const messages: Record<string, unknown>[] = [];
  const waiters: Array<() => void> = [];
  let closed: { code: number; reason: string } | undefined;
  ws.addEventListener('message', (ev) => {
    messages.push(JSON.parse(String(ev.data)));
    waiters.splice(0).forEach((w) => w());
  });
  ws.addEventListener('close', (ev) => {
    closed = { code: ev.code, reason: ev.reason };
    waiters.splice(0).forEach((w) => w());
  });
  const until = (pred: () => boolean, what: string) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), 5000);
      const check = () => {
        if (pred()) {
          clearTimeout(timer);
          resolve();
        } else waiters.push(check);
      };
      check();
    });
  return {
    ws,
    messages,
    closed: () => closed,
    waitMessages: (n: number) => until(() => messages.length >= n, `${n} messages`),
    waitClose: () => until(() => closed !== undefined, 'close'),
  };
}

/** The status a raw upgrade request gets (fetch cannot send Upgrade). */
function upgradeStatus(url: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, {
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
        ...headers,
      },
      timeout: 5000,
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

async function announce(vaultId: string, message: Record<string, unknown>): Promise<{ delivered: number }> {
  const ns = await relay.mf.getDurableObjectNamespace('HUB');
  const res = await ns.get(ns.idFromName(vaultId)).fetch('https://hub.internal/announce', {
    method: 'POST',
    body: JSON.stringify(message),
  });
  return (await res.json()) as { delivered: number };
}

describe('live', () => {
  it('sends hello on connect (token in ?token=) and relays announcements to every socket', async () => {
    const { vault, token } = await setupVault(relay.url);
    const base = relay.url.replace('http', 'ws');
    const a = openLive(`${base}/v1/vaults/${vault.vaultId}/live?token=${token}`);
    const b = openLive(`${base}/v1/vaults/${vault.vaultId}/live`, { headers: { Authorization: `Bearer ${token}` } });
    await a.waitMessages(1);
    await b.waitMessages(1);
    expect(a.messages[0]).toEqual({ type: 'hello', time: expect.any(Number) });
    expect(b.messages[0]).toMatchObject({ type: 'hello' });

    expect(await announce(vault.vaultId, { type: 'announce', kind: 'changeset', seq: 7 })).toEqual({ delivered: 2 });
    await a.waitMessages(2);
    await b.waitMessages(2);
    expect(a.messages[1]).toEqual({ type: 'announce', kind: 'changeset', seq: 7 });
    expect(b.messages[1]).toEqual({ type: 'announce', kind: 'changeset', seq: 7 });

    // Another vault's hub does not reach these sockets.
    const other = await setupVault(relay.url);
    expect(await announce(other.vault.vaultId, { type: 'announce', seq: 1 })).toEqual({ delivered: 0 });
    a.ws.close();
    b.ws.close();
  });

  it('refuses the upgrade without a valid token, and another vault with 404', async () => {
    const { vault, token } = await setupVault(relay.url);
    const other = await setupVault(relay.url);
    const live = (id: string) => `${relay.url}/v1/vaults/${id}/live`;
    expect(await upgradeStatus(live(vault.vaultId))).toBe(401);
    expect(await upgradeStatus(`${live(vault.vaultId)}?token=nope`)).toBe(401);
    expect(await upgradeStatus(`${live(other.vault.vaultId)}?token=${token}`)).toBe(404);
    expect(await upgradeStatus(`${live(vault.vaultId)}?token=${token}`)).toBe(101);
    const plain = await fetch(`${relay.url}/v1/vaults/${vault.vaultId}/live?token=${token}`);
    expect(plain.status).toBe(400);
    const s = openLive(`${relay.url.replace('http', 'ws')}/v1/vaults/${vault.vaultId}/live?token=bogus`);
    await s.waitClose();
    expect(s.messages).toEqual([]);
  });

  it('answers a ping without waking the hub, and closes a revoked device’s socket', async () => {
    const { vault, token } = await setupVault(relay.url);
    const phone = await enrollDevice(relay.url, vault, 'phone');
    const phoneToken = await getToken(relay.url, vault.vaultId, phone);
    const s = openLive(`${relay.url.replace('http', 'ws')}/v1/vaults/${vault.vaultId}/live?token=${phoneToken}`);
    await s.waitMessages(1);
    s.ws.send('{"type":"ping"}');
    await s.waitMessages(2);
    expect(s.messages[1]).toEqual({ type: 'pong' });

    const res = await post(`${relay.url}/v1/vaults/${vault.vaultId}/devices/${phone.deviceId}/revoke`, revokeBody(vault, phone.deviceId), { Authorization: `Bearer ${token}` });
    expect(res.status).toBe(200);
    await s.waitClose();
    expect(s.closed()).toEqual({ code: 4003, reason: 'device_revoked' });
  });
});
