/**
 * Settings that travel (docs/MERGE.md §2): which tables sync and how is the
 * vault's configuration, kept in the synced database (casa_tables), so
 * every device — a fresh machine restored after a disaster too — uses the
 * same declarations without a file to copy. The first `casa sync` names
 * every table that needs a decision at once (exit 2 and the command without
 * a terminal; one question on a terminal); `casa tables` shows each table's
 * rule and why; bad input gets exit 2 with a hint.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { useRelay, type RunResult } from '../helpers/cli.js';
import { KEY, Pty } from '../helpers/pty.js';

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;

async function ok(m: Machine, args: string[]): Promise<RunResult> {
  const r = await m.run(args);
  expect(r.code, `casa ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r;
}

function sql(m: Machine, text: string): void {
  const db = new Database(m.env.CASA_DB);
  db.exec(text);
  db.close();
}

function rows(m: Machine, query: string): unknown[] {
  const db = new Database(m.env.CASA_DB, { readonly: true });
  try {
    return db.prepare(query).all();
  } finally {
    db.close();
  }
}

/** An app's schema with two tables keyed by the integer rowid beside a synced one. */
const APP = `CREATE TABLE tx (id TEXT PRIMARY KEY, amount INTEGER, memo TEXT);
  CREATE TABLE budgets (id INTEGER PRIMARY KEY, month TEXT, amount INTEGER);
  CREATE TABLE messages_clock (id INTEGER PRIMARY KEY, clock TEXT);`;

const tablesOf = async (m: Machine) =>
  (JSON.parse((await ok(m, ['tables', '--json'])).stdout) as { tables: { table: string; rule: string; declared: boolean; why: string }[] }).tables;

describe('settings that travel with the vault', () => {
  it('names every undecided table at once; the declaration syncs to the other device and to a fresh restore, with no file', async () => {
    const a = relay.machine('set-a');
    const phrase = join(a.home, 'phrase.txt');
    await ok(a, ['pair', '--new', '--phrase-out', phrase, '--device-name', 'set-a']);
    sql(a, `${APP} INSERT INTO tx VALUES ('t1', -1250, 'REWE'); INSERT INTO budgets (month, amount) VALUES ('2026-12', 50000);`);

    // Without a terminal: exit 2, both tables named, and the one command that decides them.
    const first = await a.run(['sync']);
    expect(first.code, first.stderr).toBe(2);
    expect(first.stderr).toMatch(/^casa: error: 2 tables need a decision: budgets \(is keyed by the integer rowid[^)]*\); messages_clock/m);
    expect(first.stderr).toContain('casa tables set budgets snapshot-only && casa tables set messages_clock snapshot-only');
    // What could sync has synced meanwhile: t1 is on the relay.
    const before = await tablesOf(a);
    expect(before.find((t) => t.table === 'budgets')).toMatchObject({ rule: 'undecided', declared: false });
    expect(before.find((t) => t.table === 'tx')).toMatchObject({ rule: 'lww', declared: false, why: 'default: keyed by id' });
    // The snapshot a disaster restores from is taken now, before anything is declared.
    await ok(a, ['snapshot', '--quiet']);

    await ok(a, ['tables', 'set', 'budgets', 'snapshot-only']);
    await ok(a, ['tables', 'set', 'messages_clock', 'snapshot-only']);
    await ok(a, ['sync']);
    const after = await tablesOf(a);
    expect(after.find((t) => t.table === 'budgets')).toMatchObject({ rule: 'snapshot-only', declared: true, why: 'declared for the vault' });

    // A fresh machine after a disaster: the snapshot predates the declaration, which comes with the changesets.
    const c = relay.machine('set-c');
    const restored = await c.run(['restore', '--yes', '--phrase-file', phrase, '--device-name', 'set-c']);
    expect(restored.code, restored.stderr).toBe(0);
    expect(existsSync(join(c.home, 'sync-tables.json'))).toBe(false);
    expect((await tablesOf(c)).find((t) => t.table === 'messages_clock')).toMatchObject({ rule: 'snapshot-only', declared: true });
    await ok(c, ['sync']);
    sql(c, "UPDATE tx SET memo = 'REWE Markt' WHERE id = 't1'");
    await ok(c, ['sync']);
    await ok(a, ['sync']);
    expect(rows(a, "SELECT memo FROM tx WHERE id = 't1'")).toEqual([{ memo: 'REWE Markt' }]);

    // A declaration made on the restored device reaches the first one; taking it back too.
    await ok(c, ['tables', 'set', 'tx', 'lww']);
    await ok(c, ['sync']);
    await ok(a, ['sync']);
    expect((await tablesOf(a)).find((t) => t.table === 'tx')).toMatchObject({ rule: 'lww', declared: true });
    await ok(a, ['tables', 'set', 'tx', 'default']);
    await ok(a, ['sync']);
    await ok(c, ['sync']);
    expect((await tablesOf(c)).find((t) => t.table === 'tx')).toMatchObject({ rule: 'lww', declared: false });
    // Back to the default is refused where the default cannot sync.
    const back = await a.run(['tables', 'set', 'budgets', 'default']);
    expect(back.code).toBe(2);
    expect(back.stderr).toMatch(/it can only be snapshot-only/);
  }, 120_000);

  it('on a terminal, one question declares every undecided table snapshot-only', async () => {
    const a = relay.machine('set-tty');
    await ok(a, ['pair', '--new', '--phrase-out', join(a.home, 'phrase.txt'), '--device-name', 'set-tty']);
    sql(a, APP);
    const p = new Pty(['sync'], a.env);
    await p.expect(/Leave budgets, messages_clock to snapshots, for the whole vault\?/);
    p.write('y' + KEY.enter);
    const done = await p.done;
    expect(done.code, p.screen).toBe(0);
    expect((await tablesOf(a)).filter((t) => t.declared).map((t) => t.table)).toEqual(['budgets', 'messages_clock']);
  }, 60_000);

  it('imports the file an earlier casa read, once, and refuses bad input with exit 2 and a hint', async () => {
    const a = relay.machine('set-bad');
    await ok(a, ['pair', '--new', '--phrase-out', join(a.home, 'phrase.txt'), '--device-name', 'set-bad']);
    sql(a, APP);
    writeFileSync(join(a.home, 'sync-tables.json'), JSON.stringify({ tables: { budgets: 'snapshot-only', messages_clock: 'snapshot-only' } }));
    const r = await ok(a, ['sync']);
    expect(r.stderr).toMatch(/now the vault's settings \(budgets, messages_clock\)/);
    expect(existsSync(join(a.home, 'sync-tables.json'))).toBe(false);
    expect(existsSync(join(a.home, 'sync-tables.json.imported'))).toBe(true);

    const unknownTable = await a.run(['tables', 'set', 'nope', 'lww']);
    expect(unknownTable.code).toBe(2);
    expect(unknownTable.stderr).toMatch(/^casa: error: no table "nope" in /m);
    expect(unknownTable.stderr).toMatch(/^casa: hint: its tables: budgets, messages_clock, tx/m);
    const unknownRule = await a.run(['tables', 'set', 'tx', 'maybe']);
    expect(unknownRule.code).toBe(2);
    expect(unknownRule.stderr).toMatch(/unknown rule "maybe": one of lww, set, snapshot-only, default/);
    const impossible = await a.run(['tables', 'set', 'budgets', 'lww']);
    expect(impossible.code).toBe(2);
    expect(impossible.stderr).toMatch(/table budgets is keyed by the integer rowid.*: it can only be snapshot-only/);
    const notASet = await a.run(['tables', 'set', 'tx', 'set']);
    expect(notASet.code).toBe(2);
    expect(notASet.stderr).toMatch(/cannot be a set/);
    // Nothing was declared by the refusals.
    expect((await tablesOf(a)).filter((t) => t.declared).map((t) => t.table)).toEqual(['budgets', 'messages_clock']);
  }, 60_000);
});
