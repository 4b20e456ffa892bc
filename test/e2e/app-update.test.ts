/**
 * A real app's own update while casa syncs (docs/MERGE.md §8): Actual
 * Budget's database and its migrations as its npm package ships them
 * (test/fixtures/actual-budget/README.md). Two devices run the installed
 * app's schema and sync; the app's update (8 migrations: added columns with
 * and without defaults, a dropped table, a created table, a column dropped
 * and added again) reaches A first and B later, with `casa sync --watch`
 * running on B. The column drop is refused while capture is attached
 * (SQLite's rule), so each device updates with capture detached; every write
 * the app made meanwhile reaches the other device, and `casa verify --sync`
 * finds both devices' synced tables equal. Spawned CLIs, a real relay in workerd.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { baseEnv, CASA, sqlOn, useRelay, type RunResult } from '../helpers/cli.js';

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;

const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'actual-budget');
const MIGRATIONS = readdirSync(join(FIXTURE, 'migrations')).sort();
/** The installed app: its schema after the first 14 migrations; the rest are its update. */
const INSTALLED = MIGRATIONS.filter((f) => f <= '1618975177358_schedules.sql');
const UPDATE = MIGRATIONS.filter((f) => !INSTALLED.includes(f));
/** Actual's own bookkeeping: which migrations ran (each device runs its own), and its CRDT log keyed by rowids. */
const DECLARATIONS = { tables: { __migrations__: 'snapshot-only', messages_crdt: 'snapshot-only', messages_clock: 'snapshot-only' } };

async function ok(m: Machine, args: string[]): Promise<RunResult> {
  const r = await m.run(args);
  expect(r.code, `casa ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r;
}

/** Runs the app's migrations as Actual does: each file in its own transaction, recorded in __migrations__. */
function migrate(m: Machine, files: string[]): void {
  const db = new Database(m.env.CASA_DB!);
  try {
    db.pragma('busy_timeout = 5000');
    for (const f of files) {
      db.exec(readFileSync(join(FIXTURE, 'migrations', f), 'utf8'));
      db.prepare('INSERT INTO __migrations__ (id) VALUES (?)').run(Number(f.split('_')[0]));
    }
  } finally {
    if (db.inTransaction) db.exec('ROLLBACK');
    db.close();
  }
}

/** Every table that syncs, as rows in key order: what must be equal on both devices. */
function syncedTables(m: Machine): Record<string, unknown[]> {
  const names = sqlOn<{ name: string }>(
    m,
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'casa\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
  ).map((r) => r.name);
  const out: Record<string, unknown[]> = {};
  for (const n of names.filter((n) => !(n in DECLARATIONS.tables))) out[n] = sqlOn(m, `SELECT * FROM "${n}" ORDER BY 1`);
  return out;
}

async function until(what: () => boolean, ms = 20_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (what()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return what();
}

/** `casa sync` on `m` until `what` holds: what another device's watcher pushes arrives. */
async function pulledBy(m: Machine, what: () => boolean, tries = 40): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    await ok(m, ['sync']);
    if (what()) return true;
    await new Promise((r) => setTimeout(r, 250));
  }
  return false;
}

describe("a real app's update (Actual Budget's migrations) while casa syncs", () => {
  it('each device updates with capture detached at its own moment: every write reaches the other, and the tables compare equal', async () => {
    // ---- The installed app on A, with a budget in it; B restores it.
    const a = relay.machine('actual-a');
    const b = relay.machine('actual-b');
    for (const m of [a, b]) writeFileSync(join(m.home, 'sync-tables.json'), JSON.stringify(DECLARATIONS));
    const phrase = join(a.home, 'phrase.txt');
    await ok(a, ['pair', '--new', '--phrase-out', phrase, '--device-name', 'actual-a']);
    const db = new Database(a.env.CASA_DB);
    db.exec(readFileSync(join(FIXTURE, 'default-db.sql'), 'utf8'));
    db.close();
    migrate(a, INSTALLED);
    sqlOn(a, "INSERT INTO accounts (id, name, type, offbudget, closed, sort_order) VALUES ('acct-giro', 'Giro', 'checking', 0, 0, 1), ('acct-card', 'Visa', 'credit', 0, 0, 2)");
    sqlOn(a, "INSERT INTO payees (id, name) VALUES ('payee-rewe', 'REWE')");
    sqlOn(a, "INSERT INTO payee_rules (id, payee_id, type, value) VALUES ('pr1', 'payee-rewe', 'equals', 'REWE')");
    sqlOn(
      a,
      "INSERT INTO transactions (id, acct, amount, description, notes, date) VALUES ('tx-1', 'acct-giro', -1250, 'payee-rewe', 'weekly shop', 20261201), ('tx-2', 'acct-card', -80000, NULL, 'rent', 20261201)",
    );
    await ok(a, ['sync']);
    await ok(a, ['snapshot', '--quiet']);
    await ok(b, ['restore', '--yes', '--phrase-file', phrase, '--device-name', 'actual-b']);
    expect(syncedTables(b)).toEqual(syncedTables(a));

    // ---- The update reaches A. With capture attached, Actual's DROP COLUMN fails (its migration rolls back).
    expect(() => migrate(a, UPDATE)).toThrow(/error in trigger casa_\w+_accounts after drop column: no such column/);
    const done = sqlOn<{ id: number }>(a, 'SELECT id FROM __migrations__').map((r) => r.id);
    const left = UPDATE.filter((f) => !done.includes(Number(f.split('_')[0])));
    expect(left[0]).toBe('1686139660866_remove_account_type.sql');
    // The way out: detach, let the app update, write; then casa catches up.
    const detached = JSON.parse((await ok(a, ['sync', '--detach', '--json'])).stdout) as {
      message_type: string;
      tables: { table: string; rows: number }[];
      schema: { dropped: string[] };
    };
    expect(detached.message_type).toBe('sync_detach');
    // The migrations before the drop did run: the refresh at the detach followed them (payee_rules is gone).
    expect(detached.schema.dropped).toEqual(['payee_rules']);
    expect(detached.tables.find((t) => t.table === 'accounts')?.rows).toBe(2);
    expect((await ok(a, ['status'])).stdout).toMatch(/capture: +DETACHED since \d{4}-/);
    migrate(a, left);
    sqlOn(a, "UPDATE accounts SET type = 'credit' WHERE id = 'acct-card'"); // the re-added column, set again
    sqlOn(a, "UPDATE categories SET hidden = 1 WHERE name = 'General'");
    sqlOn(a, "INSERT INTO transaction_filters (id, name, conditions) VALUES ('f1', 'Groceries', '[]')");
    sqlOn(a, "UPDATE transactions SET amount = -1300 WHERE id = 'tx-1'");
    const pushed = JSON.parse((await ok(a, ['sync', '--json'])).stdout) as { schema: Record<string, unknown>; pushed_changes: number };
    expect(pushed.schema).toMatchObject({ changed: true, attached: true });
    expect((pushed.schema.caught_up as { what: string }[]).every((c) => c.what === 'writes' || c.what === 'rows')).toBe(true);
    expect(pushed.pushed_changes).toBeGreaterThan(0);

    // ---- B, not updated yet, syncs and writes on; its watcher runs through its own update.
    await ok(b, ['sync']);
    expect(sqlOn(b, "SELECT amount FROM transactions WHERE id = 'tx-1'")).toEqual([{ amount: -1300 }]);
    sqlOn(b, "UPDATE transactions SET notes = 'rent, December' WHERE id = 'tx-2'");
    const watcher: ChildProcess = spawn(process.execPath, [CASA, 'sync', '--watch'], { env: baseEnv(b.env), stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    watcher.stderr!.on('data', (d) => (err += d));
    try {
      expect(await pulledBy(a, () => sqlOn(a, "SELECT notes FROM transactions WHERE id = 'tx-2'")[0]?.notes === 'rent, December'), err).toBe(true);
      await ok(b, ['sync', '--detach']);
      expect(await until(() => err.includes('capture is detached'))).toBe(true);
      migrate(b, UPDATE);
      sqlOn(b, "UPDATE accounts SET type = 'checking' WHERE id = 'acct-giro'");
      sqlOn(b, "INSERT INTO transactions (id, acct, amount, notes, date) VALUES ('tx-3', 'acct-giro', -999, 'written while detached', 20261203)");
      const attached = JSON.parse((await ok(b, ['sync', '--attach', '--json'])).stdout) as { message_type: string; schema: Record<string, unknown> };
      expect(attached).toMatchObject({ message_type: 'sync_attach', schema: { attached: true } });
      // The watcher resumes and sends what the attach caught up.
      expect(await pulledBy(a, () => sqlOn(a, "SELECT notes FROM transactions WHERE id = 'tx-3'").length === 1), err).toBe(true);
      expect(await until(() => sqlOn(b, "SELECT id FROM transaction_filters").length === 1), err).toBe(true);
    } finally {
      watcher.kill('SIGINT');
      await new Promise((r) => (watcher.exitCode !== null ? r(null) : watcher.on('close', r)));
    }
    expect(watcher.exitCode, err).toBe(0);
    await ok(a, ['sync']);
    await ok(b, ['sync']);
    await ok(a, ['sync']);

    // The update drops accounts.type and adds it again: on each device that is a reset of every value, caught up
    // as that device's write at its attach (docs/MERGE.md §8). So B's later update reset what A wrote after its own,
    // as B's app did locally; written again now that both have updated, it stays.
    expect(sqlOn(a, "SELECT type FROM accounts WHERE id = 'acct-card'")).toEqual([{ type: null }]);
    sqlOn(a, "UPDATE accounts SET type = 'credit' WHERE id = 'acct-card'");
    await ok(a, ['sync']);
    await ok(b, ['sync']);
    const tables = syncedTables(a);
    expect(syncedTables(b)).toEqual(tables);
    expect(tables.accounts!.map((r) => (r as { type: unknown }).type)).toEqual(['credit', 'checking']);
    expect(tables.transaction_filters).toHaveLength(1);
    // The detector agrees: nothing differs.
    const va = JSON.parse((await ok(a, ['verify', '--sync', '--json'])).stdout) as Record<string, unknown>;
    await ok(b, ['verify', '--sync']);
    const vb = JSON.parse((await ok(a, ['verify', '--sync', '--json'])).stdout) as { devices: { status: string }[] };
    expect(va).toBeTruthy();
    expect(vb.devices.map((d) => d.status)).toEqual(['same']);
  });
});

describe('casa sync --detach / --attach: bad input', () => {
  it('two modes at once is a usage error; no database is exit 1 naming it; neither needs pairing', async () => {
    const m = relay.machine('detach-bad');
    const both = await m.run(['sync', '--detach', '--attach']);
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/^casa: error: --detach and --attach cannot be used together/m);
    const watch = await m.run(['sync', '--watch', '--detach']);
    expect(watch.code).toBe(2);
    const none = await m.run(['sync', '--detach']);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/^casa: error: no database at .*casaconomy\.db/m);
    // An unpaired device's database: detach and attach work locally.
    sqlOn(m, "CREATE TABLE tx (id TEXT PRIMARY KEY, amount INTEGER)");
    sqlOn(m, "INSERT INTO tx VALUES ('t1', 5)");
    const d = JSON.parse((await ok(m, ['sync', '--detach', '--json'])).stdout) as { tables: unknown };
    expect(d.tables.filter((t) => t.table !== 'casa_tables')).toEqual([{ table: 'tx', rows: 1 }]);
    sqlOn(m, "UPDATE tx SET amount = 6");
    const at = await ok(m, ['sync', '--attach']);
    expect(at.stdout).toMatch(/capture attached: caught up 1 row write/);
    expect((await ok(m, ['sync', '--attach'])).stdout).toMatch(/^capture is attached$/m);
    expect(sqlOn(m, 'SELECT count(*) AS n FROM casa_changes')).toEqual([{ n: 1 }]);
  });
});
