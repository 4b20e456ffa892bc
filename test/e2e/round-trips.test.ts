/**
 * One round trip per command when nothing changed (docs/RELAY-API.md
 * "Authentication", "Status"): a device keeps its token between commands
 * (CASA_HOME/token.json, 0600), so `casa sync`, `casa snapshot`, `casa pull`
 * and `casa status` with nothing to do each make one request and a sync with
 * a change two — counted by a proxy in front of a real relay in workerd.
 * A kept token never outlives what it stands for: a relay at another key
 * epoch refuses its first request before doing anything (the command starts
 * again with a new token and picks the epoch up), a refused token is
 * dropped and replaced, and a revoked device's kept token is removed.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, machine, useRelay, type RunResult } from '../helpers/cli.js';
import { startTestRelay } from '../helpers/relay.js';
import { stripJsonc } from '../../src/local-relay/launcher.js';
import { startCountingProxy } from '../../bench/lib/proxy.mjs';

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;
let proxy: Awaited<ReturnType<typeof startCountingProxy>>;
beforeAll(async () => {
  proxy = await startCountingProxy(relay.url);
});
afterAll(async () => {
  await proxy.close();
});

async function ok(m: Machine, args: string[]): Promise<RunResult> {
  const r = await m.run(args);
  expect(r.code, `casa ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r;
}

/** The requests one command makes, as "METHOD /route" with ids replaced. */
async function requestsOf(m: Machine, args: string[]): Promise<string[]> {
  proxy.reset();
  await ok(m, args);
  return proxy.seen.map((r) => r.replace(/\/[0-9a-f]{32,64}/g, '/ID'));
}

function write(m: Machine, sql: string): void {
  const db = new Database(m.env.CASA_DB!);
  db.exec(sql);
  db.close();
}

async function twoDevices(name: string): Promise<{ a: Machine; b: Machine; phrase: string }> {
  const a = relay.machine(`${name}-a`, proxy.url);
  const phrase = join(a.home, 'phrase.txt');
  await ok(a, ['pair', '--new', '--phrase-out', phrase, '--device-name', `${name}-a`]);
  write(a, "CREATE TABLE tx (id TEXT PRIMARY KEY, amount INTEGER, memo TEXT); INSERT INTO tx VALUES ('t1', -1250, 'REWE');");
  await ok(a, ['sync']);
  await ok(a, ['snapshot', '--quiet']);
  const b = relay.machine(`${name}-b`, proxy.url);
  await ok(b, ['restore', '--yes', '--phrase-file', phrase, '--device-name', `${name}-b`]);
  return { a, b, phrase };
}

describe('round trips per command', () => {
  it('with nothing to do: sync, snapshot, pull and status make one request each; a sync with a change two', async () => {
    const { a, b } = await twoDevices('rt');
    expect(await requestsOf(a, ['sync'])).toEqual(['GET /v1/vaults/ID/changesets']);
    expect(await requestsOf(a, ['snapshot', '--quiet'])).toEqual(['GET /v1/vaults/ID/snapshots']);
    expect(await requestsOf(a, ['pull', '--yes'])).toEqual(['GET /v1/vaults/ID/snapshots']);
    expect(await requestsOf(a, ['status'])).toEqual(['GET /v1/vaults/ID/status']);
    write(a, "INSERT INTO tx VALUES ('t2', -80000, 'Miete')");
    expect(await requestsOf(a, ['sync'])).toEqual(['GET /v1/vaults/ID/changesets', 'POST /v1/vaults/ID/changesets']);
    expect(await requestsOf(b, ['sync'])).toEqual(['GET /v1/vaults/ID/changesets']);
    expect(new Database(b.env.CASA_DB!, { readonly: true }).prepare("SELECT memo FROM tx WHERE id = 't2'").get()).toEqual({ memo: 'Miete' });
    // The kept token: the user's own, 0600, never in the output.
    const kept = join(a.home, 'token.json');
    expect(statSync(kept).mode & 0o777).toBe(0o600);
    const token = (JSON.parse(readFileSync(kept, 'utf8')) as { token: string }).token;
    const st = await ok(a, ['status', '--json']);
    expect(st.stdout + st.stderr).not.toContain(token);
    expect(JSON.parse(st.stdout)).toMatchObject({ device_status: 'active', relay: { reachable: true } });
  }, 120_000);

  it('a relay at another key epoch refuses the kept token before doing anything: the command starts again and picks the epoch up', async () => {
    const { a, b } = await twoDevices('rt-epoch');
    await ok(b, ['sync']);
    await ok(a, ['rotate']);
    write(b, "INSERT INTO tx VALUES ('t3', -5, 'Bäcker')");
    proxy.reset();
    const r = await ok(b, ['sync']);
    const seen = proxy.seen.map((x) => x.replace(/\/[0-9a-f]{32,64}/g, '/ID'));
    // The refused first request, then a new token, the new epoch, and the sync itself.
    expect(seen[0]).toBe('GET /v1/vaults/ID/changesets');
    expect(seen[1]).toBe('POST /v1/vaults/ID/auth/challenge');
    expect(seen.filter((x) => x === 'POST /v1/vaults/ID/changesets')).toHaveLength(1);
    expect(r.stderr).toContain('picked up the vault');
    await ok(a, ['sync']);
    expect(new Database(a.env.CASA_DB!, { readonly: true }).prepare("SELECT memo FROM tx WHERE id = 't3'").get()).toEqual({ memo: 'Bäcker' });
    // The next command is one request again.
    expect(await requestsOf(b, ['sync'])).toEqual(['GET /v1/vaults/ID/changesets']);
  }, 120_000);

  it('a kept token the relay refuses is dropped and replaced; a revoked device keeps none', async () => {
    const { a, b } = await twoDevices('rt-refused');
    const kept = join(b.home, 'token.json');
    await ok(b, ['sync']);
    const t = JSON.parse(readFileSync(kept, 'utf8')) as { token: string };
    // Still well-formed, but not the relay's MAC.
    t.token = t.token.slice(0, -4) + (t.token.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    writeFileSync(kept, JSON.stringify(t), { mode: 0o600 });
    proxy.reset();
    await ok(b, ['sync']);
    expect(proxy.seen.length).toBe(4); // refused, challenge, token, the sync's pull
    expect((JSON.parse(readFileSync(kept, 'utf8')) as { token: string }).token).not.toBe(t.token);

    const bId = (JSON.parse((await ok(b, ['status', '--json'])).stdout) as { device_id: string }).device_id;
    await ok(a, ['devices', 'revoke', bId, '--yes']);
    const r = await b.run(['sync']);
    expect(r.code).toBe(4);
    expect(existsSync(kept)).toBe(false);
  }, 120_000);
});

describe("the relay's default rate limits (wrangler.jsonc)", () => {
  it('let a household behind one address pair four devices, and one device run casa sync 20 times in 30 s', async () => {
    const cfg = JSON.parse(stripJsonc(readFileSync(join(ROOT, 'wrangler.jsonc'), 'utf8'))) as { ratelimits: { name: string; simple: { limit: number; period: number } }[] };
    const limits = Object.fromEntries(cfg.ratelimits.map((r) => [r.name, r.simple]));
    const home = await startTestRelay({ rateLimits: limits });
    const ms: Machine[] = [];
    try {
      const a = machine(home.url, 'hh-a');
      ms.push(a);
      const phrase = join(a.home, 'phrase.txt');
      await ok(a, ['pair', '--new', '--phrase-out', phrase, '--device-name', 'hh-a']);
      write(a, "CREATE TABLE tx (id TEXT PRIMARY KEY, amount INTEGER, memo TEXT); INSERT INTO tx VALUES ('t1', -1250, 'REWE');");
      await ok(a, ['sync']);
      await ok(a, ['snapshot', '--quiet']);
      for (const n of ['b', 'c', 'd']) {
        const m = machine(home.url, `hh-${n}`);
        ms.push(m);
        await ok(m, ['restore', '--yes', '--phrase-file', phrase, '--device-name', `hh-${n}`]);
      }
      for (let i = 0; i < 20; i++) {
        write(a, `UPDATE tx SET amount = ${-1250 - i} WHERE id = 't1'`);
        await ok(a, ['sync']);
      }
      await ok(ms[3]!, ['sync']);
      expect(new Database(ms[3]!.env.CASA_DB!, { readonly: true }).prepare("SELECT amount FROM tx WHERE id = 't1'").get()).toEqual({ amount: -1269 });
    } finally {
      for (const m of ms) m.cleanup();
      await home.stop();
    }
  }, 120_000);
});

describe("the relay's quotas, as a user meets them", () => {
  it('a snapshot past the stored-bytes quota exits 1 naming it, nothing is committed, and casa status shows the usage', async () => {
    const small = await startTestRelay({ vars: { QUOTA_STORED_BYTES: '20000' } });
    const ms: Machine[] = [];
    try {
      const a = machine(small.url, 'quota-a');
      ms.push(a);
      await ok(a, ['pair', '--new', '--phrase-out', join(a.home, 'phrase.txt'), '--device-name', 'quota-a']);
      const db = new Database(a.env.CASA_DB!);
      db.exec('CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)');
      const ins = db.prepare('INSERT INTO notes VALUES (?, ?)');
      for (let i = 0; i < 200; i++) ins.run(`n${i}`, randomBytes(600).toString('base64')); // incompressible: well past 20,000 bytes sealed
      db.close();
      const r = await a.run(['snapshot', '--json']);
      expect(r.code).toBe(1);
      const err = JSON.parse(r.stderr.trim().split('\n').pop()!) as { reason: string; message: string; hints: string[] };
      expect(err.reason).toBe('quota_exceeded');
      expect(err.message).toMatch(/quota of stored bytes is reached \(.* of 20 KiB\); nothing was stored/);
      expect(err.hints.join(' ')).toContain('casa status');
      const human = await a.run(['snapshot']);
      expect(human.code).toBe(1);
      expect(human.stderr).toMatch(/^casa: error: the relay refused: this vault's quota of stored bytes is reached/m);
      const st = JSON.parse((await ok(a, ['status', '--json'])).stdout) as { usage: Record<string, number>; relay_head: unknown };
      expect(st.relay_head).toBeNull();
      expect(st.usage).toMatchObject({ stored_bytes_quota: 20000, devices: 1, devices_quota: 20, commits_today: 0 });
      expect((await ok(a, ['status'])).stdout).toMatch(/usage: .* of 20 KiB stored, 1 of 20 devices/);
    } finally {
      for (const m of ms) m.cleanup();
      await small.stop();
    }
  }, 120_000);
});
