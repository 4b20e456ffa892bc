/**
 * App updates lose nothing (docs/MERGE.md §8), as users meet it: spawned CLIs
 * on two CASA_HOMEs against a real relay in workerd. The app migrates its
 * database on one device (`ALTER TABLE tx ADD COLUMN category TEXT`) and
 * writes the new column (and an old one) before casa runs again; the other
 * device migrates before or after. Without --watch (the next `casa sync`
 * catches up) and with `casa sync --watch` running on both (the watcher sees
 * PRAGMA schema_version move). Every device ends with the same rows.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { baseEnv, CASA, useRelay, type RunResult, sqlOn } from '../helpers/cli.js';

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;

const sql = sqlOn;

async function ok(m: Machine, args: string[]): Promise<RunResult> {
  const r = await m.run(args);
  expect(r.code, `casa ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r;
}

const syncJson = async (m: Machine) => JSON.parse((await ok(m, ['sync', '--json'])).stdout) as Record<string, unknown>;
const rows = (m: Machine) => sql(m, 'SELECT * FROM tx ORDER BY id');
const MIGRATION = 'ALTER TABLE tx ADD COLUMN category TEXT';

async function twoDevices(name: string): Promise<[Machine, Machine]> {
  const a = relay.machine(`${name}-a`);
  const phrase = join(a.home, 'phrase.txt');
  await ok(a, ['pair', '--new', '--phrase-out', phrase, '--device-name', `${name}-a`]);
  const db = new Database(a.env.CASA_DB);
  db.exec(`CREATE TABLE tx (id TEXT PRIMARY KEY, amount INTEGER, memo TEXT);
    INSERT INTO tx VALUES ('t1', -1250, 'REWE'), ('t2', -80000, 'Miete');`);
  db.close();
  await ok(a, ['sync']);
  await ok(a, ['snapshot', '--quiet']);
  const b = relay.machine(`${name}-b`);
  await ok(b, ['restore', '--yes', '--phrase-file', phrase, '--device-name', `${name}-b`]);
  return [a, b];
}

/** The app's update on a device: its migration, then its writes, while casa does not run. */
function appUpdate(m: Machine): void {
  sql(m, MIGRATION);
  sql(m, "UPDATE tx SET category = 'food', memo = 'REWE Markt' WHERE id = 't1'");
  sql(m, "UPDATE tx SET category = 'rent' WHERE id = 't2'");
}

const WANT = [
  { id: 't1', amount: -1250, memo: 'REWE Markt', category: 'food' },
  { id: 't2', amount: -80000, memo: 'Miete', category: 'rent' },
];

async function until(what: () => boolean, ms = 15_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (what()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return what();
}

describe('a schema change while casa syncs', () => {
  for (const order of ['A migrates first', 'B migrates first'] as const) {
    it(`without --watch, ${order}: the next casa sync catches up the new column, B applies it once it migrates`, async () => {
      const [a, b] = await twoDevices(order.startsWith('A') ? 'mig-a' : 'mig-b');
      if (order.startsWith('B')) sql(b, MIGRATION);
      appUpdate(a);
      const pushed = await syncJson(a);
      expect(pushed.schema).toMatchObject({ changed: true, caught_up: [{ table: 'tx', rows: 2, what: 'columns' }] });
      const pulled = await syncJson(b);
      if (order.startsWith('A')) {
        expect(pulled.pending_columns).toBe(2);
        sql(b, MIGRATION); // the app update reaches B
        const after = await syncJson(b);
        expect((after.schema as Record<string, unknown>).applied_pending).toBe(2);
      }
      expect(rows(b)).toEqual(WANT);
      expect(rows(a)).toEqual(WANT);
      expect((await syncJson(b)).pushed_changes).toBe(0);
      expect((await syncJson(a)).pulled_changes).toBe(0);
    });
  }

  it('with casa sync --watch on both: the watcher notices the migration and nothing written after it is lost', async () => {
    const [a, b] = await twoDevices('mig-watch');
    const watchers: ChildProcess[] = [];
    const errs: string[] = [];
    try {
      for (const m of [a, b]) {
        const child = spawn(process.execPath, [CASA, 'sync', '--watch'], { env: baseEnv(m.env), stdio: ['ignore', 'ignore', 'pipe'] });
        let err = '';
        child.stderr!.on('data', (d) => (err += d));
        errs.push('');
        watchers.push(child);
        child.on('close', () => (errs[watchers.indexOf(child)] = err));
      }
      await new Promise((r) => setTimeout(r, 1500));
      appUpdate(a);
      // B has not migrated: the values wait there, then arrive with B's migration.
      expect(await until(() => sql(b, "SELECT memo FROM tx WHERE id = 't1'")[0]?.memo === 'REWE Markt')).toBe(true);
      sql(b, MIGRATION);
      expect(await until(() => JSON.stringify(rows(b)) === JSON.stringify(WANT)), `b: ${JSON.stringify(rows(b))}`).toBe(true);
      // And B's own write to the new column, right after its migration, reaches A.
      sql(b, "UPDATE tx SET category = 'groceries' WHERE id = 't1'");
      expect(await until(() => sql(a, "SELECT category FROM tx WHERE id = 't1'")[0]?.category === 'groceries')).toBe(true);
    } finally {
      for (const w of watchers) w.kill('SIGINT');
      await Promise.all(watchers.map((w) => new Promise((r) => (w.exitCode !== null ? r(null) : w.on('close', r)))));
    }
    expect(watchers.map((w) => w.exitCode), errs.join('\n')).toEqual([0, 0]);
    expect(rows(a)).toEqual(rows(b));
  });
});
