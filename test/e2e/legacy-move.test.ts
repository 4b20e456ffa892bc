/**
 * Upgrading a relay whose vaults live in D1 (before each vault had its own
 * Durable Object) loses nothing and stops nobody (worker/legacy.ts): a
 * vault's rows move into its object on the first request that names it,
 * page by page (a vault bigger than one page included), the cron moves the
 * vaults nobody asked about and then drops the old tables, and devices
 * carry on with the same tokens, snapshots and changesets.
 *
 * The old relay's D1 is rebuilt from a real vault: two devices pair, sync
 * and snapshot on today's relay; every row of each vault is read out of its
 * object; the objects are deleted and the rows written into the old tables
 * (migrations/0001..0007 applied to D1, as an older relay had them), in the
 * same data directory, so R2, the JWT secret and every device's CASA_HOME
 * are what they were.
 */
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { machine, ROOT, tempDir, type RunResult } from '../helpers/cli.js';
import { startTestRelay, type TestRelay } from '../helpers/relay.js';
import { splitSql } from '../../src/protocol/sql-split.js';
import { LEGACY_TABLES } from '../../worker/legacy.js';

type Machine = ReturnType<typeof machine>;
const cleanups: (() => void)[] = [];
afterAll(() => {
  for (const c of cleanups) c();
});

async function ok(m: Machine, args: string[]): Promise<RunResult> {
  const r = await m.run(args);
  expect(r.code, `casa ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r;
}

function write(m: Machine, sql: string): void {
  const db = new Database(m.env.CASA_DB);
  db.exec(sql);
  db.close();
}

function rows(m: Machine): unknown[] {
  const db = new Database(m.env.CASA_DB, { readonly: true });
  try {
    return db.prepare('SELECT * FROM tx ORDER BY id').all();
  } finally {
    db.close();
  }
}

/** Every row of every vault, table by table, as the objects hold them. */
async function dumpVaults(relay: TestRelay): Promise<Map<string, Record<string, unknown>[]>> {
  const out = new Map<string, Record<string, unknown>[]>();
  for (const table of ['vaults', ...LEGACY_TABLES]) {
    out.set(table, (await relay.vaults().prepare(`SELECT * FROM ${table}`).all()).results);
  }
  return out;
}

/** D1 as an older relay left it: the per-vault tables of migrations/0001..0007, holding `dump`. */
async function writeOldD1(relay: TestRelay, dump: Map<string, Record<string, unknown>[]>): Promise<void> {
  const d1 = relay.d1();
  // The index's recovery_ids is the old table kept (migrations/d1/0008_index.sql creates it only if missing).
  await d1.prepare('DROP TABLE recovery_ids').run();
  // What an older relay applied to D1: the vault schema up to 0007 (0008 on is the object's own).
  const files = readdirSync(join(ROOT, 'migrations')).filter((f) => f.endsWith('.sql') && f < '0008').sort();
  for (const f of files) {
    for (const stmt of splitSql(readFileSync(join(ROOT, 'migrations', f), 'utf8'))) await d1.prepare(stmt).run();
  }
  for (const [table, list] of dump) {
    for (const row of list) {
      // audit_log ids are per object now; in the old D1 they were one sequence for every vault.
      const cols = Object.keys(row).filter((c) => !(table === 'audit_log' && c === 'id'));
      await d1
        .prepare(`INSERT INTO ${table} (${cols.join(', ')}) VALUES (${cols.map((_, i) => `?${i + 1}`).join(', ')})`)
        .bind(...cols.map((c) => row[c]))
        .run();
    }
  }
}

async function d1Count(relay: TestRelay, table: string, vaultId?: string): Promise<number> {
  const where = vaultId === undefined ? '' : table === 'vaults' ? ' WHERE id = ?1' : ' WHERE vault_id = ?1';
  const stmt = relay.d1().prepare(`SELECT count(*) AS n FROM ${table}${where}`);
  const row = await (vaultId === undefined ? stmt : stmt.bind(vaultId)).first<{ n: number }>();
  return row!.n;
}

describe('a relay upgraded from vaults in D1', () => {
  it('moves each vault into its object on first use, and the rest by cron; devices carry on with nothing lost', async () => {
    const data = tempDir('casa-relay-legacy-');
    cleanups.push(data.cleanup);
    let relay = await startTestRelay({ dataDir: data.dir });
    try {
      // Vault 1: two devices, a snapshot, changesets both ways. Vault 2: one device and a snapshot.
      const a = machine(relay.url, 'legacy-a');
      const b = machine(relay.url, 'legacy-b');
      const c = machine(relay.url, 'legacy-c');
      cleanups.push(a.cleanup, b.cleanup, c.cleanup);
      const phrase = join(a.home, 'phrase.txt');
      await ok(a, ['pair', '--new', '--phrase-out', phrase, '--device-name', 'legacy-a']);
      write(a, "CREATE TABLE tx (id TEXT PRIMARY KEY, amount INTEGER, memo TEXT); INSERT INTO tx VALUES ('t1', -1250, 'REWE');");
      await ok(a, ['sync']);
      await ok(a, ['snapshot', '--quiet']);
      await ok(b, ['restore', '--yes', '--phrase-file', phrase, '--device-name', 'legacy-b']);
      write(b, "UPDATE tx SET amount = -1300 WHERE id = 't1'; INSERT INTO tx VALUES ('t2', -80000, 'Miete');");
      await ok(b, ['sync']);
      await ok(a, ['sync']);
      await ok(c, ['pair', '--new', '--phrase-out', join(c.home, 'phrase.txt'), '--device-name', 'legacy-c']);
      write(c, "CREATE TABLE tx (id TEXT PRIMARY KEY, amount INTEGER, memo TEXT); INSERT INTO tx VALUES ('c1', 5, 'x');");
      await ok(c, ['snapshot', '--quiet']);
      const before = rows(a);
      expect(rows(b)).toEqual(before);

      const dump = await dumpVaults(relay);
      const vaultIds = dump.get('vaults')!.map((v) => v.id as string);
      expect(vaultIds).toHaveLength(2);
      const [vaultA] = (await relay.vaults().prepare("SELECT vault_id FROM devices WHERE name = 'legacy-a'").all<{ vault_id: string }>()).results.map((r) => r.vault_id);
      const vaultC = vaultIds.find((v) => v !== vaultA)!;

      // The old relay: no objects, every vault's rows in D1.
      await relay.stop();
      rmSync(join(data.dir, 'v3', 'do'), { recursive: true, force: true });
      relay = await startTestRelay({ dataDir: data.dir, port: Number(new URL(a.env.CASA_SERVER).port) });
      await writeOldD1(relay, dump);
      // Enough rows that the move goes page by page (worker/legacy.ts MOVE_PAGE): 2,500 more audit rows for vault 1.
      const auditBefore = dump.get('audit_log')!.filter((r) => r.vault_id === vaultA).length;
      const d1 = relay.d1();
      for (let i = 0; i < 2500; i += 100) {
        await d1.batch(
          Array.from({ length: 100 }, (_, j) =>
            d1.prepare("INSERT INTO audit_log (vault_id, device_id, actor_id, event, at) VALUES (?1, NULL, NULL, 'token_issued', ?2)").bind(vaultA, Date.now() - 1e6 + i + j),
          ),
        );
      }
      expect(await relay.vaultObjectIds()).toEqual([]);
      expect(await d1Count(relay, 'vaults')).toBe(2);

      // Vault 1 moves on its first request: a kept token still works, nothing is lost, both devices go on.
      write(a, "INSERT INTO tx VALUES ('t3', -4200, 'Strom')");
      await ok(a, ['sync']);
      expect(await d1Count(relay, 'vaults', vaultA)).toBe(0);
      for (const t of LEGACY_TABLES.filter((t) => t !== 'recovery_ids')) expect(await d1Count(relay, t, vaultA), t).toBe(0);
      await ok(b, ['sync']);
      expect(rows(b)).toEqual(rows(a));
      expect(rows(a)).toHaveLength(before.length + 1);
      await ok(a, ['verify']);
      const audit = await relay.vault(vaultA).prepare('SELECT count(*) AS n FROM audit_log').first<{ n: number }>();
      expect(audit!.n).toBeGreaterThanOrEqual(auditBefore + 2500);
      const moved = await dumpVaults(relay);
      for (const t of ['vaults', 'devices', 'snapshots', 'packs', 'changesets', 'changeset_state', 'epochs', 'epoch_wraps']) {
        const was = dump.get(t)!.filter((r) => (t === 'vaults' ? r.id : r.vault_id) === vaultA);
        const now = moved.get(t)!.filter((r) => (t === 'vaults' ? r.id : r.vault_id) === vaultA);
        expect(now.length, t).toBeGreaterThanOrEqual(was.length);
        if (t === 'snapshots' || t === 'epochs' || t === 'packs') expect(now, t).toEqual(expect.arrayContaining(was));
      }

      // Vault 2 nobody asked about: the cron moves it; its device then snapshots and verifies as before.
      expect(await d1Count(relay, 'vaults', vaultC)).toBe(1);
      await relay.runCron();
      expect(await d1Count(relay, 'vaults')).toBe(0);
      expect(await d1Count(relay, 'devices')).toBe(0);
      // Nothing left to move: the next cron drops the old tables; the index keeps its recovery_ids.
      await relay.runCron();
      const tables = (await relay.d1().prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all<{ name: string }>()).results.map((r) => r.name);
      for (const t of ['vaults', 'devices', 'changesets', 'snapshots', 'pairing_sessions']) expect(tables).not.toContain(t);
      expect(tables).toEqual(expect.arrayContaining(['recovery_ids', 'pairing_nameplates', 'abandoned_vaults']));
      write(c, "INSERT INTO tx VALUES ('c2', 6, 'y')");
      await ok(c, ['snapshot', '--quiet']);
      await ok(c, ['verify']);
      const st = JSON.parse((await ok(c, ['status', '--json'])).stdout) as { device_status: string };
      expect(st.device_status).toBe('active');

      // A vault id that was never anywhere is still unknown, and its object is left with no tables.
      const res = await fetch(`${relay.url}/v1/vaults/${'0'.repeat(32)}/auth/challenge`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
      expect(res.status).toBeGreaterThanOrEqual(400);
      let holding = 0;
      for (const id of await relay.vaultObjectIds()) {
        const file = readdirSync(join(data.dir, 'v3', 'do')).map((d) => join(data.dir, 'v3', 'do', d, `${id}.sqlite`))[0]!;
        const db = new Database(file, { readonly: true });
        const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'").all() as { name: string }[]).map((r) => r.name);
        db.close();
        if (tables.length > 0) holding++;
      }
      expect(holding).toBe(2);
    } finally {
      await relay.stop();
    }
  });
});
