// The live WebSocket: GET /v1/vaults/:vaultId/live upgrades without
// credentials and hands the socket to the vault's VaultHub Durable Object
// (hibernatable sockets); the socket authenticates with its first message
// ({"type":"auth","token"}: a token is never in a URL), then gets hello and
// the announcements. A bad token, another first message, or none within
// 10 s closes it with 4001; a revoked device with 4003.
import { request } from 'node:http';
import { WebSocket } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LIVE_AUTH_TIMEOUT_MS } from '../../src/protocol/messages.js';
import { enrollDevice, getToken, post, revokeBody, setupVault, startTestRelay, type TestRelay } from '../helpers/relay.js';

let relay: TestRelay;
beforeAll(async () => {
  relay = await startTestRelay();
});
afterAll(async () => {
  await relay?.stop();
});

/** Opens a socket, sends `first` (if any) as its first message, and collects its messages; waits reject after `waitMs`. */
function openLive(url: string, first?: string, waitMs = 5000) {
  const ws = new WebSocket(url);
  if (first !== undefined) ws.addEventListener('open', () => ws.send(first));
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
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), waitMs);
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

/** Upgrades with a raw request, sends nothing, and returns the first frame the relay sends (its opcode; a close frame's code and reason). */
function firstFrame(url: string, timeoutMs: number): Promise<{ opcode: number; code?: number; reason?: string }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no frame')), timeoutMs);
    const req = request(url, {
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==' },
    });
    req.on('upgrade', (_res, socket) => {
      let buf = Buffer.alloc(0);
      socket.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length < 2 || buf.length < 2 + (buf[1]! & 0x7f)) return;
        clearTimeout(timer);
        const opcode = buf[0]! & 0x0f;
        const payload = buf.subarray(2, 2 + (buf[1]! & 0x7f));
        socket.destroy();
        resolve(opcode === 0x8 ? { opcode, code: payload.readUInt16BE(0), reason: payload.subarray(2).toString('utf8') } : { opcode });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

async function announce(vaultId: string, message: Record<string, unknown>): Promise<{ delivered: number }> {
  const ns = await relay.mf.getDurableObjectNamespace('VAULT');
  const res = await ns.get(ns.idFromName(vaultId)).fetch('http://vault.internal/_relay/announce', {
    method: 'POST',
    body: JSON.stringify(message),
  });
  return (await res.json()) as { delivered: number };
}

const auth = (token: string) => JSON.stringify({ type: 'auth', token });
const liveUrl = (vaultId: string) => `${relay.url.replace('http', 'ws')}/v1/vaults/${vaultId}/live`;

describe('live', () => {
  it('authenticates with its first message, then gets hello and every announcement (sockets still waiting get none)', async () => {
    const { vault, token } = await setupVault(relay.url);
    const a = openLive(liveUrl(vault.vaultId), auth(token));
    const b = openLive(liveUrl(vault.vaultId), auth(token));
    const waiting = openLive(liveUrl(vault.vaultId));
    await a.waitMessages(1);
    await b.waitMessages(1);
    expect(a.messages[0]).toEqual({ type: 'hello', time: expect.any(Number) });
    expect(b.messages[0]).toMatchObject({ type: 'hello' });

    expect(await announce(vault.vaultId, { type: 'announce', kind: 'changeset', seq: 7 })).toEqual({ delivered: 2 });
    await a.waitMessages(2);
    await b.waitMessages(2);
    expect(a.messages[1]).toEqual({ type: 'announce', kind: 'changeset', seq: 7 });
    expect(b.messages[1]).toEqual({ type: 'announce', kind: 'changeset', seq: 7 });
    expect(waiting.messages).toEqual([]);

    // Another vault's hub does not reach these sockets.
    const other = await setupVault(relay.url);
    expect(await announce(other.vault.vaultId, { type: 'announce', seq: 1 })).toEqual({ delivered: 0 });
    a.ws.close();
    b.ws.close();
    waiting.ws.close();
  });

  it('never takes a token in the URL (400), nor a plain GET, nor a malformed vault id', async () => {
    const { vault, token } = await setupVault(relay.url);
    const live = (id: string) => `${relay.url}/v1/vaults/${id}/live`;
    expect(await upgradeStatus(`${live(vault.vaultId)}?token=${token}`)).toBe(400);
    expect(await upgradeStatus(`${live(vault.vaultId)}?token=nope`)).toBe(400);
    expect(await upgradeStatus(live('not-a-vault'))).toBe(400);
    expect(await upgradeStatus(live(vault.vaultId))).toBe(101);
    expect(await upgradeStatus(live(vault.vaultId), { Authorization: `Bearer ${token}` })).toBe(101); // the header is not how it authenticates
    const plain = await fetch(live(vault.vaultId));
    expect(plain.status).toBe(400);
  });

  it('closes with 4001 on a bad token, another vault\'s token, or another first message; no message before', async () => {
    const { vault, token } = await setupVault(relay.url);
    const other = await setupVault(relay.url);
    for (const first of [auth('bogus'), auth(other.token), '{"type":"hello"}', 'not json', JSON.stringify({ type: 'auth' })]) {
      const s = openLive(liveUrl(vault.vaultId), first);
      await s.waitClose();
      expect(s.closed(), first).toEqual({ code: 4001, reason: 'unauthorized' });
      expect(s.messages, first).toEqual([]);
    }
    // A token for the vault whose hub it is, and only that one.
    const ok = openLive(liveUrl(vault.vaultId), auth(token));
    await ok.waitMessages(1);
    expect(ok.messages[0]).toMatchObject({ type: 'hello' });
    ok.ws.close();
  });

  it(`closes a socket that does not authenticate within ${LIVE_AUTH_TIMEOUT_MS / 1000} s with 4001`, async () => {
    // Read off the raw connection: the close frame is what the relay sends at the deadline (workerd
    // ends the TCP connection of a socket that never spoke some seconds later, when undici's close event fires).
    const { vault } = await setupVault(relay.url);
    const started = Date.now();
    const frame = await firstFrame(`${relay.url}/v1/vaults/${vault.vaultId}/live`, LIVE_AUTH_TIMEOUT_MS + 10_000);
    const elapsed = Date.now() - started;
    expect(frame).toEqual({ opcode: 0x8, code: 4001, reason: 'unauthorized' });
    expect(elapsed).toBeGreaterThanOrEqual(LIVE_AUTH_TIMEOUT_MS - 500);
    expect(elapsed).toBeLessThan(LIVE_AUTH_TIMEOUT_MS + 5_000);
  }, 30_000);

  it('answers a ping without waking the hub, and closes a revoked device’s socket (and refuses its token) with 4003', async () => {
    const { vault, token } = await setupVault(relay.url);
    const phone = await enrollDevice(relay.url, vault, 'phone');
    const phoneToken = await getToken(relay.url, vault.vaultId, phone);
    const s = openLive(liveUrl(vault.vaultId), auth(phoneToken));
    await s.waitMessages(1);
    s.ws.send('{"type":"ping"}');
    await s.waitMessages(2);
    expect(s.messages[1]).toEqual({ type: 'pong' });

    const res = await post(`${relay.url}/v1/vaults/${vault.vaultId}/devices/${phone.deviceId}/revoke`, revokeBody(vault, phone.deviceId), { Authorization: `Bearer ${token}` });
    expect(res.status).toBe(200);
    await s.waitClose();
    expect(s.closed()).toEqual({ code: 4003, reason: 'device_revoked' });

    const again = openLive(liveUrl(vault.vaultId), auth(phoneToken));
    await again.waitClose();
    expect(again.closed()).toEqual({ code: 4003, reason: 'device_revoked' });
    expect(again.messages).toEqual([]);
  });
});
