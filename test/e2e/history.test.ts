/**
 * `casa history`, `casa log` and `casa restore --at` as a user meets them:
 * two devices on a real relay edit a row in turn (insert on A, update on B,
 * update on A, delete on B, insert again on A) with syncs between; history
 * and log show that sequence with the devices' names and old → new values;
 * `restore --at` of two moments the test recorded (one before the newest
 * snapshot, one after it) gives the tables the test dumped at those moments,
 * byte for byte, in a new file, the current database untouched. Bad input
 * is refused with exit 2 and nothing written; a tampered batch is exit 6; a
 * window the relay pruned is named with its bounds.
 */
import { existsSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { beforeAll, describe, expect, it } from 'vitest';
import { okOn as ok, pairedDevices, sqlOn as sql, useRelay } from '../helpers/cli.js';
import { replaceChangeset } from '../helpers/relay.js';

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;

const json = async <T = Record<string, unknown>>(m: Machine, args: string[]): Promise<T> => JSON.parse((await ok(m, [...args, '--json'])).stdout) as T;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every user table of a database file, each row as SQLite stores it, in key order: what restore --at must reproduce. */
function dumpFile(path: string): string {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    db.defaultSafeIntegers(true);
    const tables = (db.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'casa_%' ORDER BY name").all() as { name: bigint | string }[]).map((r) => String(r.name));
    const text = (v: unknown) => (typeof v === 'bigint' ? `i${v}` : Buffer.isBuffer(v) ? `x${v.toString('hex')}` : JSON.stringify(v));
    return tables
      .map((t) => {
        const rows = db.prepare(`SELECT * FROM "${t}" ORDER BY 1, 2`).raw().all() as unknown[][];
        return `${t}\n${rows.map((r) => r.map(text).join('|')).join('\n')}`;
      })
      .join('\n');
  } finally {
    db.close();
  }
}

const vault = (name: string) => pairedDevices(relay, name);

const PAYEE = 'payee-history-1';

describe('history, log and restore --at on two devices', () => {
  let a: Machine;
  let b: Machine;
  let ids: { a: string; b: string };
  let t1: number;
  let t2: number;
  let dump1: string;
  let dump2: string;
  let memoTx: string;

  beforeAll(async () => {
    ({ a, b, ids } = await vault('seq'));
    sql(a, "INSERT INTO payees (id, name, notes, created_at) VALUES (?, 'Corner shop', 'first', '2026-12-01')", PAYEE);
    await ok(a, ['sync']);
    await ok(b, ['sync']);
    sql(b, "UPDATE payees SET name = 'Corner Shop Ltd' WHERE id = ?", PAYEE);
    await ok(b, ['sync']);
    await ok(a, ['sync']);
    await sleep(30);
    dump1 = dumpFile(a.env.CASA_DB);
    t1 = Date.now();
    await sleep(30);
    sql(a, "UPDATE payees SET notes = 'second' WHERE id = ?", PAYEE);
    await ok(a, ['sync']);
    await ok(b, ['sync']);
    sql(b, 'DELETE FROM payees WHERE id = ?', PAYEE);
    await ok(b, ['sync']);
    await ok(a, ['sync']);
    await ok(a, ['snapshot', '--quiet']);
    await sleep(30);
    sql(a, "INSERT INTO payees (id, name, created_at) VALUES (?, 'Reborn', '2026-12-02')", PAYEE);
    memoTx = (sql<{ id: string }>(a, 'SELECT id FROM transactions ORDER BY id LIMIT 1')[0]!).id;
    sql(a, "UPDATE transactions SET memo = 'at t2' WHERE id = ?", memoTx);
    await ok(a, ['sync']);
    await ok(b, ['sync']);
    await sleep(30);
    dump2 = dumpFile(a.env.CASA_DB);
    t2 = Date.now();
    await sleep(30);
    sql(b, "UPDATE transactions SET memo = 'after t2' WHERE id = ?", memoTx);
    await ok(b, ['sync']);
    await ok(a, ['sync']);
  }, 120_000);

  it('history shows every change of the row, oldest first, with the device that wrote it', async () => {
    type H = { table: string; key: string; changes: { op: string; column: string | null; value: unknown; device_id: string; device_name: string; time: number }[] };
    const h = await json<H>(a, ['history', 'payees', PAYEE]);
    expect(h.key).toBe(JSON.stringify([PAYEE]));
    const seq = h.changes.map((c) => [c.device_name, c.op, c.column, c.value]);
    expect(seq).toEqual([
      ['seq-a', 'insert', 'name', 'Corner shop'],
      ['seq-a', 'insert', 'default_category_id', null],
      ['seq-a', 'insert', 'notes', 'first'],
      ['seq-a', 'insert', 'created_at', '2026-12-01'],
      ['seq-b', 'update', 'name', 'Corner Shop Ltd'],
      ['seq-a', 'update', 'notes', 'second'],
      ['seq-b', 'delete', null, null],
      ['seq-a', 'insert', 'name', 'Reborn'],
      ['seq-a', 'insert', 'default_category_id', null],
      ['seq-a', 'insert', 'notes', null],
      ['seq-a', 'insert', 'created_at', '2026-12-02'],
    ]);
    expect(h.changes.map((c) => c.device_id)).toEqual(h.changes.map((c) => (c.device_name === 'seq-a' ? ids.a : ids.b)));
    const times = h.changes.map((c) => c.time);
    expect([...times].sort((x, y) => x - y)).toEqual(times);
    expect(times.filter((t) => t <= t1)).toHaveLength(5);

    // The same on the other device, for one field, as people read it.
    const r = await ok(b, ['history', 'payees', PAYEE, 'name']);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toBe(`payees ["${PAYEE}"] name: 4 changes, oldest first`);
    expect(lines.slice(1).map((l) => l.replace(/^\S+\s+/, '').replace(/\s+/g, ' '))).toEqual([
      'seq-a insert name = "Corner shop"',
      'seq-b update name = "Corner Shop Ltd"',
      'seq-b delete',
      'seq-a insert name = "Reborn"',
    ]);
    expect(r.stderr).toBe('');
  });

  it('log shows old → new per field, newest first, filtered by --since, --device and --table', async () => {
    type L = { changes: { op: string; table: string; key: string; column: string | null; old_state: string; old: unknown; new: unknown; device_name: string; time: number }[] };
    const all = await json<L>(a, ['log']);
    const times = all.changes.map((c) => c.time);
    expect([...times].sort((x, y) => y - x)).toEqual(times);
    expect(all.changes[0]).toMatchObject({ table: 'transactions', column: 'memo', old_state: 'value', old: 'at t2', new: 'after t2', device_name: 'seq-b' });

    const payees = await json<L>(a, ['log', '--table', 'payees']);
    const field = (col: string) => payees.changes.filter((c) => c.column === col).map((c) => [c.op, c.old_state, c.old, c.new]);
    expect(field('name')).toEqual([
      ['insert', 'absent', null, 'Reborn'],
      ['update', 'value', 'Corner shop', 'Corner Shop Ltd'],
      ['insert', 'absent', null, 'Corner shop'],
    ]);
    expect(field('notes')).toEqual([
      ['insert', 'absent', null, null],
      ['update', 'value', 'first', 'second'],
      ['insert', 'absent', null, 'first'],
    ]);

    const since = await json<L>(a, ['log', '--since', new Date(t1).toISOString()]);
    expect(since.changes.every((c) => c.time >= t1)).toBe(true);
    expect(since.changes.map((c) => `${c.op} ${c.column ?? ''}`)).toEqual([
      'update memo',
      'update memo',
      'insert name',
      'insert default_category_id',
      'insert notes',
      'insert created_at',
      'delete ',
      'update notes',
    ]);
    const onB = await json<L>(a, ['log', '--device', 'seq-b']);
    expect(onB.changes.map((c) => `${c.op} ${c.column ?? ''}`)).toEqual(['update memo', 'delete ', 'update name']);
    expect(new Set(onB.changes.map((c) => c.device_name))).toEqual(new Set(['seq-b']));

    // People get every field JSON gets, one line each, newest first.
    const all2 = (await ok(a, ['log'])).stdout.split('\n').filter((l) => l.startsWith('    '));
    expect(all2).toHaveLength(all.changes.filter((c) => c.op !== 'delete').length);
    expect(all2[0]).toBe('    memo: "at t2" → "after t2"');
    const text = (await ok(a, ['log', '--table', 'payees', '--since', '1h'])).stdout;
    expect(text).toContain(`seq-b  update  payees ["${PAYEE}"]\n    name: "Corner shop" → "Corner Shop Ltd"`);
    expect(text).toContain(`seq-b  delete  payees ["${PAYEE}"]`);
  });

  it('restore --at writes the database as it was, byte for byte in every table, and touches nothing else', async () => {
    const before = readFileSync(a.env.CASA_DB);
    const f1 = join(a.home, 'at-t1.db');
    const r1 = await json<{ seq: number; changes: number; to: string }>(a, ['restore', '--at', new Date(t1).toISOString(), '--to', f1]);
    expect(r1.to).toBe(f1);
    expect(r1.seq).toBe(1); // the snapshot after t1 is not taken: the first one and the changes after it
    expect(dumpFile(f1)).toBe(dump1);
    expect(statSync(f1).mode & 0o777).toBe(0o600);
    expect(readdirSync(a.home).filter((n) => n.includes('casa-restore'))).toEqual([]);
    expect(statSync(join(a.home, 'history.db')).mode & 0o777).toBe(0o600);

    const f2 = join(b.home, 'at-t2.db');
    const r2 = await json<{ seq: number }>(b, ['restore', '--at', new Date(t2).toISOString(), '--to', f2, '--thorough']);
    expect(r2.seq).toBe(2);
    expect(dumpFile(f2)).toBe(dump2);
    expect(dumpFile(f2)).not.toBe(dumpFile(b.env.CASA_DB));
    expect(readFileSync(a.env.CASA_DB).equals(before)).toBe(true);
    const check = new Database(f2, { readonly: true });
    expect(check.pragma('integrity_check', { simple: true })).toBe('ok');
    check.close();
  });

  it('refuses bad input with exit 2, naming what is wrong, and writes nothing', async () => {
    const t = await a.run(['history', 'nosuch', 'x']);
    expect(t.code).toBe(2);
    expect(t.stderr).toMatch(/^casa: error: no table "nosuch" in the database or its history$/m);
    expect(t.stderr).toMatch(/^casa: hint: tables with history: payees, transactions$/m);
    const c = await a.run(['history', 'payees', PAYEE, 'nosuch']);
    expect(c.code).toBe(2);
    expect(c.stderr).toMatch(/no column "nosuch"/);
    const k = await a.run(['history', 'transaction_tags', 'just-one']);
    expect(k.code).toBe(2);
    expect(k.stderr).toMatch(/key has 2 columns \(transaction_id, tag\)/);
    const row = await a.run(['history', 'payees', 'no-such-payee']);
    expect(row.code).toBe(2);
    expect(row.stderr).toMatch(/^casa: error: no row "no-such-payee" in payees: neither the database nor the history window \(.+ to .+\) has it$/m);
    // A row that exists but did not change in the window: its values came before it.
    const untouched = sql<{ id: string }>(a, "SELECT id FROM payees WHERE id <> ? ORDER BY id LIMIT 1", PAYEE)[0]!.id;
    const quiet = await ok(a, ['history', 'payees', untouched]);
    expect(quiet.stdout).toMatch(/^no change of payees \[".+"\] in the history window \(.+\): its values came before it$/m);
    await ok(a, ['tables', 'set', 'rules', 'snapshot-only']);
    const snap = await a.run(['history', 'rules', 'x']);
    expect(snap.code).toBe(2);
    expect(snap.stderr).toMatch(/table rules syncs by snapshot only/);
    await ok(a, ['tables', 'set', 'rules', 'default']);
    const l = await a.run(['log', '--table', 'nosuch']);
    expect(l.code).toBe(2);
    const d = await a.run(['log', '--device', 'nobody']);
    expect(d.code).toBe(2);
    expect(d.stderr).toMatch(/"seq-a", "seq-b"/);

    const existing = join(a.home, 'exists.db');
    writeFileSync(existing, 'keep me');
    const e = await a.run(['restore', '--at', new Date(t1).toISOString(), '--to', existing]);
    expect(e.code).toBe(2);
    expect(e.stderr).toMatch(/already exists/);
    expect(readFileSync(existing, 'utf8')).toBe('keep me');
    // A symlink that points nowhere is a path that exists too: refused, nothing written through it.
    const dangling = join(a.home, 'dangling.db');
    symlinkSync(join(a.home, 'nowhere', 'target.db'), dangling);
    const s = await a.run(['restore', '--at', new Date(t1).toISOString(), '--to', dangling]);
    expect(s.code).toBe(2);
    expect(s.stderr).toMatch(/already exists/);
    expect(existsSync(join(a.home, 'nowhere'))).toBe(false);

    const early = await a.run(['restore', '--at', '2020-01-01', '--to', join(a.home, 'early.db')]);
    expect(early.code).toBe(2);
    expect(early.stderr).toMatch(/--at 2020-01-01T00:00:00.000Z is before the window restore --at reaches: \d{4}-\d\d-\d\dT[\d:.]+Z to \d{4}-\d\d-\d\dT[\d:.]+Z/);
    expect(existsSync(join(a.home, 'early.db'))).toBe(false);
    const future = await a.run(['restore', '--at', '2999-01-01', '--to', join(a.home, 'future.db')]);
    expect(future.code).toBe(2);
    expect(future.stderr).toMatch(/in the future; restore --at reaches .+ to /);
    const garbage = await a.run(['log', '--since', 'last tuesday']);
    expect(garbage.code).toBe(2);
    const alone = await a.run(['restore', '--at', '1h']);
    expect(alone.code).toBe(2);
    expect(alone.stderr).toMatch(/--at and --to go together/);

    // A table the app keys by INTEGER PRIMARY KEY (the rowid) has no field history: named as such.
    sql(a, 'CREATE TABLE app_notes (id INTEGER PRIMARY KEY, body TEXT)');
    sql(a, "INSERT INTO app_notes (body) VALUES ('n')");
    const rowid = await a.run(['history', 'app_notes', '1']);
    expect(rowid.code).toBe(2);
    expect(rowid.stderr).toMatch(/^casa: error: table app_notes is keyed by the rowid and does not sync/m);
  });
});

describe('history against a relay that tampers or prunes', () => {
  it('an altered batch is exit 6, and nothing of it is indexed', async () => {
    const { a, b, vaultId } = await vault('alter');
    sql(a, "INSERT INTO payees (id, name, created_at) VALUES ('p-alter', 'x', '2026-12-01')");
    await ok(a, ['sync']);
    const rows = (await relay.relay.vaults().prepare('SELECT r2_key FROM changesets WHERE vault_id = ? ORDER BY cursor').bind(vaultId).all()).results as { r2_key: string }[];
    await replaceChangeset(relay.relay, rows[rows.length - 1]!.r2_key);
    const r = await b.run(['history', 'payees', 'p-alter']);
    expect(r.code, r.stderr).toBe(6);
    expect(r.stderr).toMatch(/^casa: error: .*changeset/m);
    const ix = new Database(join(b.home, 'history.db'), { readonly: true });
    expect(ix.prepare("SELECT count(*) AS n FROM changes WHERE pk = '[\"p-alter\"]'").get()).toEqual({ n: 0 });
    ix.close();
  });

  it('after the relay pruned, a --since before the window is refused with its bounds', async () => {
    const { a, vaultId } = await vault('pruned');
    sql(a, "INSERT INTO payees (id, name, created_at) VALUES ('p-old', 'old', '2026-12-01')");
    await ok(a, ['sync']);
    await ok(a, ['log']); // indexes the batch that is then pruned
    await ok(a, ['snapshot', '--quiet', '--force']);
    await relay.relay.vaults().prepare('DELETE FROM snapshots WHERE vault_id = ? AND changeset_watermark = 0').bind(vaultId).run();
    await relay.relay.vaults().prepare('UPDATE changesets SET created_at = 0 WHERE vault_id = ?').bind(vaultId).run();
    await relay.relay.runCron();
    await sleep(20);
    sql(a, "UPDATE payees SET name = 'new' WHERE id = 'p-old'");
    await ok(a, ['sync']);
    const log = await json<{ window: { start: number; pruned_through: number }; changes: { column: string; old_state: string }[] }>(a, ['log']);
    expect(log.window.pruned_through).toBeGreaterThan(0);
    // The insert was pruned from the relay, so from the index: the old name predates the window.
    expect(log.changes).toEqual([expect.objectContaining({ column: 'name', old_state: 'unknown' })]);
    expect((await ok(a, ['log'])).stdout).toContain('name: ? → "new"');
    const r = await a.run(['log', '--since', '2020-01-01']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`before the history window, ${new Date(log.window.start).toISOString()} to `);
  });
});
