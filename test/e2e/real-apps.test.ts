/**
 * casa on two real open-source finance apps' databases, the whole way a new
 * user goes (docs/MERGE.md §2, §4, §9): Actual Budget's schema and
 * migrations as its npm package ships them (test/fixtures/actual-budget)
 * and a book saved by GnuCash 4.13's own SQLite backend
 * (test/fixtures/gnucash). For each: pair two devices; the first `casa sync`
 * names every table that needs a decision at once with the one command that
 * decides them; edits in the sqlite3 shell on both; an edit of the other
 * device's write is no conflict and writes made without seeing each other
 * are exactly one; `history` and `log` show the real sequence; `restore --at`
 * gives back a state saved at that moment, table for table; a third machine
 * restored after a disaster catches up with no file copied; bad input is
 * exit 2. Spawned CLIs, the sqlite3 shell, a real relay in workerd.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { okOn as ok, useRelay } from '../helpers/cli.js';

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;

const FIXTURES = join(import.meta.dirname, '..', 'fixtures');

/** A statement run by the sqlite3 shell, as a user would. */
function shell(m: Machine, statement: string): void {
  const r = spawnSync('sqlite3', [m.env.CASA_DB!, statement], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
}

function query<T>(file: string, sql: string, ...params: unknown[]): T[] {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return db.prepare(sql).all(...params) as T[];
  } finally {
    db.close();
  }
}

/** The rows of the named tables, in key order, as text: what must be equal. */
function dumpTables(file: string, tables: string[]): string {
  const text = (v: unknown) => (typeof v === 'bigint' ? `i${v}` : Buffer.isBuffer(v) ? `x${v.toString('hex')}` : JSON.stringify(v));
  const db = new Database(file, { readonly: true, fileMustExist: true });
  db.defaultSafeIntegers(true);
  try {
    return tables
      .map((t) => `${t}\n${(db.prepare(`SELECT * FROM "${t}" ORDER BY 1`).raw().all() as unknown[][]).map((r) => r.map(text).join('|')).join('\n')}`)
      .join('\n');
  } finally {
    db.close();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const json = async <T>(m: Machine, args: string[]): Promise<T> => JSON.parse((await ok(m, [...args, '--json'])).stdout) as T;

interface App {
  name: string;
  /** Makes the app's database at `file`, as the app leaves it after a first session. */
  build(file: string): void;
  /** Tables casa must ask about on the first sync (keyed by the integer rowid, or no key). */
  undecided: string[];
  /** The row and the two fields edited: one in turn (sequential), one at once (concurrent). */
  table: string;
  key: string;
  keyColumn: string;
  sequential: { column: string; values: [string, string] };
  concurrent: { column: string };
}

const actualMigrations = readdirSync(join(FIXTURES, 'actual-budget', 'migrations')).sort();

const APPS: App[] = [
  {
    name: 'actual-budget',
    build(file) {
      const db = new Database(file);
      try {
        db.exec(readFileSync(join(FIXTURES, 'actual-budget', 'default-db.sql'), 'utf8'));
        for (const f of actualMigrations) {
          db.exec(readFileSync(join(FIXTURES, 'actual-budget', 'migrations', f), 'utf8'));
          db.prepare('INSERT INTO __migrations__ (id) VALUES (?)').run(Number(f.split('_')[0]));
        }
        db.exec(`INSERT INTO accounts (id, name, offbudget, closed, sort_order) VALUES ('acct-giro', 'Giro', 0, 0, 1);
          INSERT INTO payees (id, name) VALUES ('payee-rewe', 'REWE');
          INSERT INTO transactions (id, acct, amount, description, notes, date) VALUES
            ('tx-1', 'acct-giro', -1250, 'payee-rewe', 'weekly shop', 20261201),
            ('tx-2', 'acct-giro', -80000, NULL, 'rent', 20261201);
          INSERT INTO messages_clock (id, clock) VALUES (1, '{}');`);
      } finally {
        db.close();
      }
    },
    undecided: ['messages_clock', 'messages_crdt'],
    table: 'transactions',
    key: 'tx-1',
    keyColumn: 'id',
    sequential: { column: 'amount', values: ['-1300', '-1350'] },
    concurrent: { column: 'notes' },
  },
  {
    name: 'gnucash',
    build(file) {
      const db = new Database(file);
      try {
        db.exec(readFileSync(join(FIXTURES, 'gnucash', 'book.sql'), 'utf8'));
      } finally {
        db.close();
      }
    },
    undecided: ['budget_amounts', 'gnclock', 'recurrences', 'slots', 'taxtable_entries'],
    table: 'transactions',
    key: 'cc4cc67277ee4e57b75b7555551b9a09', // "REWE", 2026-12-02
    keyColumn: 'guid',
    sequential: { column: 'num', values: ['1001', '1002'] },
    concurrent: { column: 'description' },
  },
];

describe.each(APPS)("a real app's database: $name", (app) => {
  it('pairs, declares in one step, merges edits as edits, keeps the history and restores a moment; a fresh machine needs no file', async () => {
    const a = relay.machine(`${app.name}-a`);
    const phrase = join(a.home, 'phrase.txt');
    await ok(a, ['pair', '--new', '--phrase-out', phrase, '--device-name', `${app.name}-a`]);
    app.build(a.env.CASA_DB!);

    // ---- The first sync names every table that needs a decision at once, and the one command.
    const first = await a.run(['sync']);
    expect(first.code, first.stderr).toBe(2);
    const named = /^casa: error: (\d+) tables? needs? a decision: (.*)$/m.exec(first.stderr);
    expect(named, first.stderr).not.toBeNull();
    expect(Number(named![1])).toBe(app.undecided.length);
    for (const t of app.undecided) expect(named![2]).toContain(t);
    const command = /casa tables set \S+ snapshot-only(?: && casa tables set \S+ snapshot-only)*/.exec(first.stderr);
    expect(command, first.stderr).not.toBeNull();
    const sets = command![0].split(' && ').map((c) => c.split(' ').slice(1));
    expect(sets.map((s) => s[2]).sort()).toEqual([...app.undecided].sort());
    for (const s of sets) await ok(a, s);
    await ok(a, ['sync']);
    const tables = (await json<{ tables: { table: string; rule: string }[] }>(a, ['tables'])).tables;
    for (const t of app.undecided) expect(tables.find((x) => x.table === t)?.rule).toBe('snapshot-only');
    const synced = tables.filter((t) => t.rule !== 'snapshot-only').map((t) => t.table).sort();
    expect(synced).toContain(app.table);
    await ok(a, ['snapshot', '--quiet']);

    const b = relay.machine(`${app.name}-b`);
    await ok(b, ['restore', '--yes', '--phrase-file', phrase, '--device-name', `${app.name}-b`]);
    expect(dumpTables(b.env.CASA_DB!, synced)).toBe(dumpTables(a.env.CASA_DB!, synced));

    // ---- Sequential: A writes, B sees it and writes over it, A merges: no conflict anywhere.
    const where = `WHERE ${app.keyColumn} = '${app.key}'`;
    const col = app.sequential.column;
    const [v1, v2] = app.sequential.values;
    const v0 = query<{ v: unknown }>(a.env.CASA_DB!, `SELECT "${col}" AS v FROM ${app.table} ${where}`)[0]!.v;
    expect(String(v0)).not.toBe(v1);
    shell(a, `UPDATE ${app.table} SET "${col}" = '${v1}' ${where}`);
    await ok(a, ['sync']);
    await ok(b, ['sync']);
    shell(b, `UPDATE ${app.table} SET "${col}" = '${v2}' ${where}`);
    await ok(b, ['sync']);
    const merged = await json<{ conflicts: number }>(a, ['sync']);
    expect(merged.conflicts).toBe(0);
    const conflictsOf = async (m: Machine) =>
      (await json<{ conflicts: { tbl: string; pk: string; col: string; rule: string }[] }>(m, ['sync', '--conflicts'])).conflicts.filter(
        (c) => c.tbl === app.table && c.pk === JSON.stringify([app.key]),
      );
    expect(await conflictsOf(a)).toEqual([]);
    expect(await conflictsOf(b)).toEqual([]);
    const read = (m: Machine, c: string) => query<{ v: unknown }>(m.env.CASA_DB!, `SELECT "${c}" AS v FROM ${app.table} ${where}`)[0]!.v;
    expect(String(read(a, col))).toBe(v2);

    // The moment restore --at must give back, table for table.
    await sleep(40);
    const saved = dumpTables(a.env.CASA_DB!, synced);
    const t1 = Date.now();
    await sleep(40);

    // ---- Concurrent: both write the same field before either syncs: exactly one decision on each.
    const cc = app.concurrent.column;
    shell(a, `UPDATE ${app.table} SET "${cc}" = 'from a' ${where}`);
    await sleep(20);
    shell(b, `UPDATE ${app.table} SET "${cc}" = 'from b' ${where}`);
    await ok(a, ['sync']);
    await ok(b, ['sync']);
    await ok(a, ['sync']);
    for (const m of [a, b]) {
      const got = await conflictsOf(m);
      expect(got).toHaveLength(1);
      expect(got[0]).toMatchObject({ col: cc, rule: 'lww' });
    }
    expect(read(a, cc)).toBe('from b');
    expect(dumpTables(a.env.CASA_DB!, synced)).toBe(dumpTables(b.env.CASA_DB!, synced));

    // ---- History of the field and the log, as they happened.
    type H = { changes: { op: string; column: string | null; value: unknown; device_name: string }[] };
    const h = await json<H>(b, ['history', app.table, app.key, col]);
    expect(h.changes.map((c) => [c.device_name, c.op, c.value === null ? null : String(c.value)])).toEqual([
      ...(h.changes.length === 3 ? [[`${app.name}-a`, 'insert', v0 === null ? null : String(v0)]] : []),
      [`${app.name}-a`, 'update', v1],
      [`${app.name}-b`, 'update', v2],
    ]);
    type L = { changes: { op: string; table: string; key: string; column: string | null; old_state: string; old: unknown; new: unknown; device_name: string }[] };
    const log = (await json<L>(a, ['log', '--table', app.table])).changes.filter((c) => c.key === JSON.stringify([app.key]));
    // Newest first; A's edit replaced a value the app wrote before casa was paired (in the first snapshot, not a change): no old value to show.
    expect(log.filter((c) => c.column === col).map((c) => [c.device_name, c.old_state, c.old === null ? null : String(c.old), String(c.new)]).slice(0, 2)).toEqual([
      [`${app.name}-b`, 'value', v1, v2],
      [`${app.name}-a`, expect.not.stringMatching(/^value$/), null, v1],
    ]);
    const onB = await json<L>(a, ['log', '--device', `${app.name}-b`]);
    expect(onB.changes.map((c) => c.column)).toEqual([cc, col]);

    // ---- restore --at: the database as it was at t1, a new file, the current one untouched.
    const before = readFileSync(a.env.CASA_DB!);
    const at = join(a.home, 'at-t1.db');
    await ok(a, ['restore', '--at', new Date(t1).toISOString(), '--to', at]);
    expect(dumpTables(at, synced)).toBe(saved);
    expect(readFileSync(a.env.CASA_DB!).equals(before)).toBe(true);

    // ---- A disaster: a fresh machine, the phrase, nothing copied; it catches up and syncs.
    const c = relay.machine(`${app.name}-c`);
    const restored = await c.run(['restore', '--yes', '--phrase-file', phrase, '--device-name', `${app.name}-c`]);
    expect(restored.code, restored.stderr).toBe(0);
    await ok(c, ['sync']);
    expect(dumpTables(c.env.CASA_DB!, synced)).toBe(dumpTables(a.env.CASA_DB!, synced));
    expect((await json<{ tables: { table: string; rule: string }[] }>(c, ['tables'])).tables.filter((t) => t.rule === 'snapshot-only').map((t) => t.table)).toEqual(
      expect.arrayContaining(app.undecided),
    );

    // ---- Bad input: exit 2, named, nothing written.
    const unknownTable = await a.run(['tables', 'set', 'no_such_table', 'lww']);
    expect(unknownTable.code).toBe(2);
    expect(unknownTable.stderr).toMatch(/^casa: error: .*no_such_table/m);
    const unknownRule = await a.run(['tables', 'set', app.table, 'newest-wins']);
    expect(unknownRule.code).toBe(2);
    expect(unknownRule.stderr).toMatch(/^casa: error: .*newest-wins/m);
    const early = await a.run(['restore', '--at', '2020-01-01', '--to', join(a.home, 'early.db')]);
    expect(early.code).toBe(2);
    expect(early.stderr).toMatch(/before the window restore --at reaches: \d{4}-\d\d-\d\dT[\d:.]+Z to \d{4}-\d\d-\d\dT[\d:.]+Z/);
    const existing = join(a.home, 'exists.db');
    writeFileSync(existing, 'keep me');
    const taken = await a.run(['restore', '--at', new Date(t1).toISOString(), '--to', existing]);
    expect(taken.code).toBe(2);
    expect(taken.stderr).toMatch(/already exists/);
    expect(readFileSync(existing, 'utf8')).toBe('keep me');
  }, 120_000);
});
