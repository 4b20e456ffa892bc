// Rate limits (429 + Retry-After) through the `ratelimits` bindings, with a
// relay launched with small limits. Miniflare's limiter counts in fixed
// windows aligned to the period, so each test sends 2 × limit + 1 requests
// (some window then sees more than the limit) and expects at least one
// refusal rather than naming the exact request that fails.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBody, enrollDevice, newVault, post, setupVault, startTestRelay, type TestRelay } from '../helpers/relay.js';

const LIMIT = 3;
let relay: TestRelay;
beforeAll(async () => {
  relay = await startTestRelay({
    rateLimits: {
      CREATE_LIMITER: { limit: LIMIT, period: 60 },
      ENROLL_LIMITER: { limit: LIMIT, period: 60 },
      AUTH_LIMITER: { limit: LIMIT, period: 60 },
      API_LIMITER: { limit: LIMIT, period: 60 },
    },
  });
});
afterAll(async () => {
  await relay?.stop();
});

async function expectLimited(responses: Response[]): Promise<void> {
  const limited = responses.filter((r) => r.status === 429);
  expect(limited.length).toBeGreaterThan(0);
  for (const r of limited) {
    expect(Number(r.headers.get('Retry-After'))).toBeGreaterThan(0);
    expect(r.headers.get('X-Casa-Time')).toMatch(/^\d+$/);
    expect(await r.json()).toEqual({ error: { code: 'rate_limited', message: expect.any(String) } });
  }
}

describe('rate limits', () => {
  it('limits vault creation per client IP, and other IPs are not affected', async () => {
    const ip = { 'CF-Connecting-IP': '192.0.2.10' };
    const res: Response[] = [];
    for (let i = 0; i < 2 * LIMIT + 1; i++) res.push(await post(`${relay.url}/v1/vaults`, createBody(newVault()), ip));
    await expectLimited(res);
    const other = await post(`${relay.url}/v1/vaults`, createBody(newVault()), { 'CF-Connecting-IP': '192.0.2.11' });
    expect(other.status).toBe(201);
  });

  it('counts every address of an IPv6 /64 as one client', async () => {
    const res: Response[] = [];
    for (let i = 0; i < 2 * LIMIT + 1; i++) {
      res.push(await post(`${relay.url}/v1/vaults`, createBody(newVault()), { 'CF-Connecting-IP': `2001:db8:aa:bb::${(i + 1).toString(16)}` }));
    }
    await expectLimited(res);
    const other = await post(`${relay.url}/v1/vaults`, createBody(newVault()), { 'CF-Connecting-IP': '2001:db8:aa:bc::1' });
    expect(other.status).toBe(201);
  });

  it('limits enrollment per client IP', async () => {
    const ip = { 'CF-Connecting-IP': '192.0.2.20' };
    const v = newVault();
    expect((await post(`${relay.url}/v1/vaults`, createBody(v), { 'CF-Connecting-IP': '192.0.2.21' })).status).toBe(201);
    const res: Response[] = [];
    for (let i = 0; i < 2 * LIMIT + 1; i++) {
      res.push(await post(`${relay.url}/v1/vaults/${v.vaultId}/devices`, { not: 'checked before the limit' }, ip));
    }
    await expectLimited(res);
  });

  it('limits challenges per IP + device, and API calls per device', async () => {
    // Set-up from its own IP so its requests do not count against the test's.
    const setupIp = { 'CF-Connecting-IP': '192.0.2.30' };
    const v = newVault();
    expect((await post(`${relay.url}/v1/vaults`, createBody(v), setupIp)).status).toBe(201);
    const d = await enrollDevice(relay.url, v); // from 127.0.0.1: one enrollment
    const res: Response[] = [];
    for (let i = 0; i < 2 * LIMIT + 1; i++) {
      res.push(await post(`${relay.url}/v1/vaults/${v.vaultId}/auth/challenge`, { deviceId: d.deviceId }, { 'CF-Connecting-IP': '192.0.2.31' }));
    }
    await expectLimited(res);
    // Another IP for the same device has its own budget.
    const fresh = await post(`${relay.url}/v1/vaults/${v.vaultId}/auth/challenge`, { deviceId: d.deviceId }, { 'CF-Connecting-IP': '192.0.2.32' });
    expect(fresh.status).toBe(200);
  });

  it('limits authenticated calls per device', async () => {
    // Set-up from 127.0.0.1: its one creation and second enrollment stay under the limit.
    const { vault: v, token } = await setupVault(relay.url);
    const vault = v.vaultId;
    const res: Response[] = [];
    for (let i = 0; i < 2 * LIMIT + 1; i++) {
      res.push(await fetch(`${relay.url}/v1/vaults/${vault}/devices`, { headers: { Authorization: `Bearer ${token}` } }));
    }
    await expectLimited(res);
  });
});
