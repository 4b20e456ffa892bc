/**
 * Change capture (src/changesets/capture.ts, change-log.ts, pk-text.ts,
 * change-codec.ts) and the sync schema (src/changesets/rules.ts)
 * on the bench's realistic schema: the triggers capture writes made by other
 * programs (a plain better-sqlite3 connection, the sqlite3 shell) while no
 * casa code runs; applied changes do not echo; integer-rowid tables are
 * refused by name; a schema change regenerates the triggers; the change
 * encoding round-trips every SQLite type and refuses malformed bodies.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
// @ts-expect-error -- plain JS module of the bench
import { SCHEMA } from '../../bench/lib/make-db.mjs';
import { hasCapture, installCapture } from '../../src/changesets/capture.js';
import { type Change, ChangeFormatError, type SqlValue } from '../../src/changesets/change.js';
import { decodeChanges, encodeChanges } from '../../src/changesets/change-codec.js';
import { clearLocalLog, dropLocalChanges, pendingCount, readLog, takeLocalChanges } from '../../src/changesets/change-log.js';
import { decodePk, encodePk } from '../../src/changesets/pk-text.js';
import { parseHlc, ZERO_HLC } from '../../src/changesets/hlc.js';
import { applyRemote } from '../../src/changesets/merge.js';
import { deriveSyncSchema, SyncSchemaError } from '../../src/changesets/rules.js';

const SQLITE3 = '/usr/bin/sqlite3';
const DEV = '00000000000000a1';
const RUNS = process.env.SLOW === '1' ? 2000 : 100;
const SEED = process.env.CASA_SEED === undefined ? undefined : Number(process.env.CASA_SEED);

let dir: string;
let path: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'casa-capture-'));
  path = join(dir, 'app.db');
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.exec(SCHEMA);
  db.prepare("INSERT INTO accounts VALUES ('acc-1', 'Girokonto', 'checking', 'EUR', 0, NULL, 0, 'c', 'u')").run();
  db.close();
});

afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** casa's connection: derive the schema and install capture, as `casa sync` does. */
function install(decl = {}) {
  const db = new Database(path);
  const schema = deriveSyncSchema(db, decl);
  installCapture(db, schema);
  return { db, schema };
}

/** Another program's connection (the app): no casa code. */
function app(fn: (db: Database.Database) => void): void {
  const db = new Database(path);
  try {
    fn(db);
  } finally {
    db.close();
  }
}

function shell(sql: string): void {
  const r = spawnSync(SQLITE3, [path], { input: sql, encoding: 'utf8' });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
}

const logOf = (db: Database.Database) =>
  readLog(db, 0, 10_000).map((r) => [r.tbl, r.pk, r.col, r.op, r.val] as const);

/** The log as the changes a push would carry (an insert's packed row expanded per column). */
const changesOf = (db: Database.Database) =>
  takeLocalChanges(db, { deviceId: DEV, state: { wall: 0, counter: 0 }, limit: 10_000 }).changes.map(
    (c) => [c.tbl, c.pk, c.col, c.op, c.val] as const,
  );

describe('sync schema', () => {
  it('defaults: text-keyed tables are LWW per column, the link table is a set', () => {
    const db = new Database(path);
    const s = deriveSyncSchema(db, {});
    db.close();
    expect(s.tables.map((t) => [t.name, t.kind])).toEqual([
      ['accounts', 'lww'],
      ['categories', 'lww'],
      ['payees', 'lww'],
      ['rules', 'lww'],
      ['transaction_tags', 'set'],
      ['transactions', 'lww'],
    ]);
    const tags = s.tables.find((t) => t.name === 'transaction_tags')!;
    expect(tags.pk).toEqual(['transaction_id', 'tag']);
    expect(tags.columns).toEqual([]);
    const tx = s.tables.find((t) => t.name === 'transactions')!;
    expect(tx.pk).toEqual(['id']);
    expect(tx.columns).toContain('memo');
    expect(tx.columns).not.toContain('id');
    expect(s.fingerprint).toMatch(/^[0-9a-f]{16}$/);
  });

  it('refuses integer-rowid tables, naming every one and the command that declares them, or (lenient) leaves them out', () => {
    app((db) => db.exec('CREATE TABLE budgets (id INTEGER PRIMARY KEY, month TEXT, amount INTEGER)'));
    const db = new Database(path);
    let err: unknown;
    try {
      deriveSyncSchema(db, {});
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SyncSchemaError);
    expect((err as SyncSchemaError).table).toBe('budgets');
    expect((err as Error).message).toContain('budgets');
    expect((err as Error).message).toContain('casa tables set budgets snapshot-only');
    // No declared key at all: the rowid again. Both named in one error.
    db.exec('CREATE TABLE notes (body TEXT)');
    expect(() => deriveSyncSchema(db, {})).toThrow(/2 tables need a decision: budgets .*; notes .*casa tables set budgets snapshot-only && casa tables set notes snapshot-only/);
    try {
      deriveSyncSchema(db, {});
    } catch (e) {
      expect((e as SyncSchemaError).undecided).toEqual(['budgets', 'notes']);
    }
    expect(() => deriveSyncSchema(db, { tables: { budgets: 'snapshot-only' } })).toThrow(/notes/);
    const lenient = deriveSyncSchema(db, {}, { lenient: true });
    expect(lenient.undecided.map((u) => u.name)).toEqual(['budgets', 'notes']);
    expect(lenient.tables.map((t) => t.name)).not.toContain('budgets');
    // A declaration cannot make it sync.
    expect(() => deriveSyncSchema(db, { tables: { budgets: 'lww', notes: 'snapshot-only' } })).toThrow(/budgets/);
    db.close();
  });

  it('accepts an integer-rowid table declared snapshot-only, and installs no trigger on it', () => {
    app((db) => db.exec('CREATE TABLE budgets (id INTEGER PRIMARY KEY, month TEXT); CREATE TABLE log (line TEXT)'));
    const { db, schema } = install({ tables: { budgets: 'snapshot-only', log: { kind: 'snapshot-only' } } });
    expect(schema.snapshotOnly).toEqual(['budgets', 'log']);
    expect(schema.tables.map((t) => t.name)).not.toContain('budgets');
    db.prepare("INSERT INTO budgets (month) VALUES ('2026-01')").run();
    expect(pendingCount(db)).toBe(0);
    db.close();
  });

  it('accepts a WITHOUT ROWID integer key, skips virtual tables, keeps a declaration for a table not here yet, refuses impossible ones', () => {
    app((db) => db.exec('CREATE TABLE fx (day INTEGER PRIMARY KEY, rate REAL) WITHOUT ROWID; CREATE VIRTUAL TABLE memo_fts USING fts5(memo)'));
    const db = new Database(path);
    const s = deriveSyncSchema(db, {});
    expect(s.tables.find((t) => t.name === 'fx')).toMatchObject({ kind: 'lww', pk: ['day'], columns: ['rate'] });
    expect(s.snapshotOnly).toContain('memo_fts');
    expect(s.snapshotOnly).toContain('memo_fts_data');
    // The settings travel: a table another device's app created, not yet here, is not an error.
    expect(deriveSyncSchema(db, { tables: { nope: 'lww' } }).fingerprint).toBe(s.fingerprint);
    expect(() => deriveSyncSchema(db, { tables: { accounts: 'set' } })).toThrow(/cannot be a set/);
    expect(() => deriveSyncSchema(db, { tables: { transaction_tags: 'lww' } })).toThrow(/declare it "set"/);
    expect(() => deriveSyncSchema(db, { tables: { accounts: { kind: 'lww', columns: { nope: 'lww' } } } })).toThrow(/accounts\.nope/);
    expect(() => deriveSyncSchema(db, { tables: { accounts: 'maybe' as never } })).toThrow(SyncSchemaError);
    expect(deriveSyncSchema(db, { tables: { accounts: { kind: 'lww', columns: { name: 'lww' } } } }).fingerprint).toBe(s.fingerprint);
    db.close();
  });
});

describe('capture triggers', () => {
  it('capture INSERT, UPDATE, DELETE and a key change made through another connection', () => {
    const { db } = install();
    db.close(); // no casa code runs from here
    app((a) => {
      a.prepare("INSERT INTO transactions (id, account_id, date, amount, memo, created_at, updated_at) VALUES ('t1', 'acc-1', '2026-01-02', -1250, 'REWE', 'c', 'u')").run();
      a.prepare("UPDATE transactions SET memo = 'REWE Berlin', amount = -1250 WHERE id = 't1'").run();
      a.prepare("UPDATE transactions SET id = 't2' WHERE id = 't1'").run();
      a.prepare("INSERT INTO transaction_tags VALUES ('t2', 'food')").run();
      a.prepare("INSERT INTO accounts VALUES ('acc-2', 'Cash', 'cash', 'EUR', 0, NULL, 0, 'c', 'u')").run();
      a.prepare("DELETE FROM accounts WHERE id = 'acc-2'").run();
    });
    const c = new Database(path);
    // An insert is one log row carrying the new row.
    expect(logOf(c)[0]!.slice(0, 4)).toEqual(['transactions', '["t1"]', null, 'i']);
    const log = changesOf(c);
    const ins = log.filter((r) => r[1] === '["t1"]' && r[3] === 'i');
    expect(ins.map((r) => r[2])).toEqual(['account_id', 'date', 'amount', 'payee_id', 'category_id', 'memo', 'cleared', 'transfer_id', 'imported_id', 'created_at', 'updated_at']);
    expect(ins.find((r) => r[2] === 'amount')![4]).toBe(-1250n);
    expect(ins.find((r) => r[2] === 'payee_id')![4]).toBeNull();
    // Only the field that changed.
    expect(log.filter((r) => r[3] === 'u')).toEqual([['transactions', '["t1"]', 'memo', 'u', 'REWE Berlin']]);
    expect(log).toContainEqual(['transaction_tags', '["t2","food"]', null, 'i', null]);
    // The key change: delete of the old key, insert of the new one with every field.
    expect(log).toContainEqual(['transactions', '["t1"]', null, 'd', null]);
    expect(log.filter((r) => r[1] === '["t2"]' && r[3] === 'i').length).toBe(11);
    expect(log.at(-1)).toEqual(['accounts', '["acc-2"]', null, 'd', null]);
    c.close();
  });

  it('capture writes made by the sqlite3 shell', () => {
    install().db.close();
    shell(`
      INSERT INTO payees (id, name, created_at) VALUES ('p1', 'Bäckerei Kamps', '2026');
      UPDATE payees SET notes = 'croissants' WHERE id = 'p1';
      UPDATE accounts SET iban = X'DE01', closed = 1.5 WHERE id = 'acc-1';
      INSERT INTO transaction_tags VALUES ('t9', 'x');
      DELETE FROM transaction_tags WHERE tag = 'x';
      DELETE FROM payees WHERE id = 'p1';`);
    const c = new Database(path);
    const rows = readLog(c, 0, 100);
    const log = changesOf(c);
    expect(log).toContainEqual(['payees', '["p1"]', 'name', 'i', 'Bäckerei Kamps']);
    expect(log).toContainEqual(['payees', '["p1"]', 'notes', 'u', 'croissants']);
    const iban = log.find((r) => r[2] === 'iban')!;
    expect(iban[4]).toEqual(new Uint8Array([0xde, 0x01]));
    expect(log.find((r) => r[2] === 'closed')![4]).toBe(1.5);
    expect(log).toContainEqual(['transaction_tags', '["t9","x"]', null, 'i', null]);
    expect(log).toContainEqual(['transaction_tags', '["t9","x"]', null, 'd', null]);
    expect(log.at(-1)).toEqual(['payees', '["p1"]', null, 'd', null]);
    // Wall time from SQLite's own clock; the floor read from casa_meta.
    for (const r of rows) {
      expect(Math.abs(r.wall - Date.now())).toBeLessThan(60_000);
      expect(r.floor).toBe(ZERO_HLC);
      expect(r.hlc).toBeNull();
    }
    c.close();
  });

  it('captures a case-only change and a type change, and keeps blob, real and big integer keys exact', () => {
    const { db } = install();
    db.exec('CREATE TABLE odd (k PRIMARY KEY, v TEXT COLLATE NOCASE, n)');
    const s2 = deriveSyncSchema(db, {});
    installCapture(db, s2);
    db.close();
    app((a) => {
      a.prepare("INSERT INTO odd VALUES (X'00FF', 'abc', 1)").run();
      a.prepare("INSERT INTO odd VALUES (2.5, 'x', 1)").run();
      a.prepare("INSERT INTO odd VALUES (9007199254740993, 'x', 1)").run();
      // A value straight from a JSON function is still text, not JSON structure.
      a.prepare("INSERT INTO odd VALUES (json('[1]'), json('{\"a\":1}'), 2.25)").run();
      a.prepare("UPDATE odd SET v = 'ABC', n = '1' WHERE k = X'00FF'").run();
    });
    const c = new Database(path);
    // An update is one log row carrying the changed fields.
    const upd = readLog(c, 0, 100).filter((r) => r.tbl === 'odd' && r.op === 'u');
    expect(upd.map((r) => [r.pk, r.fields])).toEqual([['[{"x":"00ff"}]', [['v', 'ABC'], ['n', '1']]]]);
    const log = changesOf(c).filter((r) => r[0] === 'odd');
    expect(log.filter((r) => r[3] === 'u').map((r) => [r[2], r[4]])).toEqual([
      ['v', 'ABC'],
      ['n', '1'],
    ]);
    const took = takeLocalChanges(c, { deviceId: DEV, state: { wall: 0, counter: 0 }, limit: 1000 });
    const pks = [...new Set(took.changes.filter((x) => x.tbl === 'odd').map((x) => x.pk))];
    expect(pks).toEqual(['[{"x":"00ff"}]', '[{"r":"2.5"}]', '[9007199254740993]', '["[1]"]']);
    expect(took.changes.filter((x) => x.pk === '["[1]"]').map((x) => x.val)).toEqual(['{"a":1}', 2.25]);
    expect(decodePk(pks[0]!)).toEqual([new Uint8Array([0, 255])]);
    expect(decodePk(pks[2]!)).toEqual([9007199254740993n]);
    c.close();
  });

  it('does not echo changes casa applies', () => {
    const { db, schema } = install();
    const hlc = '0000000000010000' + '00000000000000b2';
    const r = applyRemote(
      db,
      schema,
      [
        { tbl: 'accounts', pk: '["acc-1"]', col: 'name', op: 'u', val: 'Giro', hlc },
        { tbl: 'transaction_tags', pk: '["t1","kids"]', col: null, op: 'i', val: null, hlc },
      ],
      { now: Date.now(), localDeviceId: DEV },
    );
    expect(r).toEqual({ applied: 2, ignored: 0, conflicts: 0, pending: 0 });
    expect(db.prepare("SELECT name FROM accounts WHERE id = 'acc-1'").pluck().get()).toBe('Giro');
    expect(pendingCount(db)).toBe(0);
    // The flag is back to 0 after commit: the app's next write is captured, above the raised floor.
    db.close();
    app((a) => a.prepare("UPDATE accounts SET name = 'Giro 2' WHERE id = 'acc-1'").run());
    const c = new Database(path);
    const rows = readLog(c, 0, 10);
    expect(rows.map((x) => x.fields)).toEqual([[['name', 'Giro 2']]]);
    expect(rows[0]!.floor).toBe(hlc);
    const took = takeLocalChanges(c, { deviceId: DEV, state: { wall: 0, counter: 0 }, limit: 10 });
    expect(took.changes[0]!.hlc > hlc).toBe(true);
    c.close();
  });

  it('regenerates the triggers when the schema changes, and is idempotent otherwise', () => {
    const { db, schema } = install();
    const triggers = () => db.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name").all();
    const before = triggers();
    expect(before.length).toBe(23);
    installCapture(db, schema);
    expect(triggers()).toEqual(before);
    expect(hasCapture(db)).toBe(true);

    db.exec("ALTER TABLE accounts ADD COLUMN color TEXT DEFAULT 'blue'");
    const s2 = deriveSyncSchema(db, {});
    expect(s2.fingerprint).not.toBe(schema.fingerprint);
    installCapture(db, s2);
    expect(db.prepare("SELECT value FROM casa_meta WHERE key = 'fingerprint'").pluck().get()).toBe(s2.fingerprint);
    expect(triggers()).not.toEqual(before);
    db.close();
    shell("UPDATE accounts SET color = 'red' WHERE id = 'acc-1';");
    const c = new Database(path);
    expect(readLog(c, 0, 10).map((r) => [r.tbl, r.pk, r.op, r.fields])).toEqual([['accounts', '["acc-1"]', 'u', [['color', 'red']]]]);
    expect(changesOf(c)).toEqual([['accounts', '["acc-1"]', 'color', 'u', 'red']]);
    c.close();
  });

  it('hasCapture is false on a plain database; pendingCount is 0 there', () => {
    const db = new Database(path, { readonly: true });
    expect(hasCapture(db)).toBe(false);
    expect(pendingCount(db)).toBe(0);
    db.close();
  });
});

describe('update capture: one log row per updated row', () => {
  /** The row's current values as SQLite holds them (blobs as plain Uint8Array). */
  const rowOf = (db: Database.Database, sql: string, ...args: unknown[]) =>
    Object.fromEntries(
      Object.entries(db.prepare(sql).safeIntegers(true).get(...args) as Record<string, SqlValue>).map(([k, v]) => [
        k,
        v instanceof Uint8Array ? new Uint8Array(v) : v,
      ]),
    );
  const updatesOf = (db: Database.Database, tbl: string) =>
    takeLocalChanges(db, { deviceId: DEV, state: { wall: 0, counter: 0 }, limit: 10_000 })
      .changes.filter((x) => x.tbl === tbl && x.op === 'u')
      .map((x) => [x.col, x.val instanceof Uint8Array ? new Uint8Array(x.val) : x.val] as const);

  it('every SQLite type of an updated field round-trips exactly: blobs, 64-bit integers, reals, NUL in text, JSON text', () => {
    const { db } = install();
    db.exec("CREATE TABLE vals (k TEXT PRIMARY KEY, a, b INTEGER, c, d REAL, e TEXT, f, g, h)");
    installCapture(db, deriveSyncSchema(db, {}));
    db.close();
    app((a) => {
      a.prepare("INSERT INTO vals VALUES ('r1', 1, 2, 3, 4.5, 'x', 'keep', 7, 8)").run();
      a.prepare(
        `UPDATE vals SET a = X'00FF10', b = 9223372036854775807, c = -9223372036854775808, d = 0.1 + 0.2,
           e = 'q"uo\\te' || char(0) || 'nul 🥐', f = json('{"a":[1]}'), g = NULL, h = 1e300 WHERE k = 'r1'`,
      ).run();
    });
    const c = new Database(path);
    expect(readLog(c, 0, 100).filter((r) => r.tbl === 'vals').map((r) => [r.op, r.col])).toEqual([
      ['i', null],
      ['u', null],
    ]);
    const row = rowOf(c, "SELECT a, b, c, d, e, f, g, h FROM vals WHERE k = 'r1'");
    const upd = updatesOf(c, 'vals');
    // Only the changed columns (f is text, not JSON structure), in column order, exactly as stored.
    expect(upd.map(([col]) => col)).toEqual(['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']);
    expect(Object.fromEntries(upd)).toEqual(row);
    expect(row.b).toBe(9223372036854775807n);
    expect(row.d).toBe(0.1 + 0.2);
    expect(row.e).toBe('q"uo\\te\u0000nul 🥐');
    expect(row.f).toBe('{"a":[1]}');
    c.close();
  });

  it('reals are logged exactly (quote() is not exact for every double), -0 included, in inserts and updates', () => {
    const { db } = install();
    db.exec('CREATE TABLE reals (k PRIMARY KEY, a, b)');
    installCapture(db, deriveSyncSchema(db, {}));
    const hard = 2.581488852963479e122;
    db.prepare('INSERT INTO reals VALUES (?, ?, ?)').run(0.1 + 0.2, hard, -0);
    db.prepare('UPDATE reals SET a = ?, b = ? WHERE k = ?').run(-0, 5e-324, 0.1 + 0.2);
    const t = takeLocalChanges(db, { deviceId: DEV, state: { wall: 0, counter: 0 }, limit: 100 });
    expect(t.changes.map((x) => [x.pk, x.col, x.op, x.val])).toEqual([
      ['[{"r":"0.30000000000000004"}]', 'a', 'i', hard],
      ['[{"r":"0.30000000000000004"}]', 'b', 'i', -0],
      ['[{"r":"0.30000000000000004"}]', 'a', 'u', -0],
      ['[{"r":"0.30000000000000004"}]', 'b', 'u', 5e-324],
    ]);
    expect(Object.is(t.changes[1]!.val, -0) && Object.is(t.changes[2]!.val, -0)).toBe(true);
    db.close();
  });

  it('a wide table (more columns than one mask integer holds) with a two-column key', () => {
    const { db } = install();
    const cols = Array.from({ length: 70 }, (_, i) => `c${i}`);
    db.exec(`CREATE TABLE wide (a TEXT, b INTEGER, ${cols.join(', ')}, PRIMARY KEY (a, b))`);
    installCapture(db, deriveSyncSchema(db, {}));
    db.close();
    app((a) => {
      a.prepare(`INSERT INTO wide (a, b, c0, c69) VALUES ('x', 1, 'first', 'last')`).run();
      a.prepare(`UPDATE wide SET c1 = 'one', c61 = 61, c62 = X'62', c69 = NULL WHERE a = 'x' AND b = 1`).run();
    });
    shell(`UPDATE wide SET c68 = 68 WHERE a = 'x'; UPDATE wide SET b = 2 WHERE a = 'x';`);
    const c = new Database(path);
    const log = changesOf(c).filter((r) => r[0] === 'wide');
    const ins = log.filter((r) => r[3] === 'i');
    expect(ins).toHaveLength(140);
    expect(ins.slice(0, 70).every((r) => r[1] === '["x",1]')).toBe(true);
    expect(ins.slice(70).map((r) => [r[2], r[4]]).filter(([, v]) => v !== null)).toEqual([
      ['c0', 'first'],
      ['c1', 'one'],
      ['c61', 61n],
      ['c62', new Uint8Array([0x62])],
      ['c68', 68n],
    ]);
    expect(log.filter((r) => r[3] === 'u').map((r) => [r[2], r[4]])).toEqual([
      ['c1', 'one'],
      ['c61', 61n],
      ['c62', new Uint8Array([0x62])],
      ['c69', null],
      ['c68', 68n],
    ]);
    expect(log).toContainEqual(['wide', '["x",1]', null, 'd', null]);
    c.close();
  });

  it('the sqlite3 shell: blob and 64-bit integer updates round-trip; an update that changes nothing logs nothing', () => {
    install().db.close();
    shell(`
      CREATE TABLE IF NOT EXISTS x (k TEXT PRIMARY KEY, v);
      UPDATE accounts SET iban = X'DEADBEEF00', opening_balance = -9223372036854775808 WHERE id = 'acc-1';
      UPDATE accounts SET name = name WHERE id = 'acc-1';
      UPDATE accounts SET closed = 2.5, iban = iban WHERE id = 'acc-1';`);
    const c = new Database(path);
    expect(pendingCount(c)).toBe(2);
    expect(updatesOf(c, 'accounts')).toEqual([
      ['opening_balance', -9223372036854775808n],
      ['iban', new Uint8Array([0xde, 0xad, 0xbe, 0xef, 0x00])],
      ['closed', 2.5],
    ]);
    c.close();
  });

  it('matches the per-field log of capture version 1, and still reads such rows', () => {
    const { db } = install();
    // Rows as capture version 1 logged an update: one per changed field, grouped by table, key, op, wall and floor.
    const old = db.prepare("INSERT INTO casa_changes (tbl, pk, col, op, val, wall, floor) VALUES ('accounts', '[\"acc-1\"]', ?, 'u', ?, 1000, ?)");
    old.run('name', 'Giro', ZERO_HLC);
    old.run('closed', 1n, ZERO_HLC);
    old.run('name', 'Giro 2', ZERO_HLC); // the same field again: the next write
    // An insert as capture version 1 logged it: the row as a JSON object.
    db.prepare(
      "INSERT INTO casa_changes (tbl, pk, col, op, val, wall, floor) VALUES ('payees', '[\"p1\"]', NULL, 'i', ?, 1000, ?)",
    ).run('{"name":"P","default_category_id":null,"notes":{"x":"00FF"},"created_at":{"r":"2.5"}}', ZERO_HLC);
    db.prepare("UPDATE accounts SET name = 'Giro 3', closed = 1 WHERE id = 'acc-1'").run();
    const t = takeLocalChanges(db, { deviceId: DEV, state: { wall: 0, counter: 0 }, limit: 100 });
    expect(t.changes.map((x) => [x.col, x.val])).toEqual([
      ['name', 'P'],
      ['default_category_id', null],
      ['notes', new Uint8Array([0, 255])],
      ['created_at', 2.5],
      ['name', 'Giro 3'],
      ['closed', 1n],
    ]);
    const all = readLog(db, 0, 100);
    expect(new Set(all.map((r) => r.hlc)).size).toBe(4); // two old updates, an old insert, the new update
    expect(all[0]!.hlc).toBe(all[1]!.hlc);
    // casa_clock has the fields' clocks from the packed row.
    const clock = db.prepare("SELECT col, hlc FROM casa_clock WHERE tbl = 'accounts' ORDER BY col").all();
    expect(clock).toEqual([
      { col: 'closed', hlc: all[4]!.hlc },
      { col: 'name', hlc: all[4]!.hlc },
    ]);
    db.close();
  });

  it('a row logged before a column was added is read with the columns it was logged with', () => {
    const { db } = install();
    db.prepare("UPDATE accounts SET type = 'cash' WHERE id = 'acc-1'").run();
    db.exec("ALTER TABLE accounts ADD COLUMN color TEXT DEFAULT 'blue'");
    installCapture(db, deriveSyncSchema(db, {}));
    db.prepare("UPDATE accounts SET color = 'red', name = 'after' WHERE id = 'acc-1'").run();
    db.prepare("INSERT INTO accounts (id, name, type, created_at, updated_at) VALUES ('acc-2', 'n', 't', 'c', 'u')").run();
    const layouts = () => db.prepare("SELECT count(*) FROM casa_layout WHERE tbl = 'accounts'").pluck().get();
    expect(layouts()).toBe(2);
    const t = takeLocalChanges(db, { deviceId: DEV, state: { wall: 0, counter: 0 }, limit: 100 });
    expect(t.changes.filter((x) => x.pk === '["acc-1"]').map((x) => [x.col, x.val])).toEqual([
      ['type', 'cash'],
      ['name', 'after'],
      ['color', 'red'],
    ]);
    expect(t.changes.filter((x) => x.pk === '["acc-2"]').map((x) => x.col)).toContain('color');
    dropLocalChanges(db, t.uptoSeq);
    // No row uses the old layout any more: the next install forgets it.
    db.exec('ALTER TABLE accounts ADD COLUMN note TEXT');
    installCapture(db, deriveSyncSchema(db, {}));
    expect(layouts()).toBe(1);
    db.close();
  });

  it('makes an AUTOINCREMENT log a plain one, keeping its rows', () => {
    const db = new Database(path);
    db.exec(`CREATE TABLE casa_changes (
      seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT, pk TEXT, col TEXT, op TEXT, val, wall INTEGER, floor TEXT, hlc TEXT);
      INSERT INTO casa_changes (tbl, pk, col, op, val, wall, floor) VALUES ('accounts', '["acc-1"]', 'name', 'u', 'old', 5, NULL);`);
    installCapture(db, deriveSyncSchema(db, {}));
    expect(db.prepare("SELECT sql FROM sqlite_master WHERE name = 'casa_changes'").pluck().get()).not.toMatch(/AUTOINCREMENT/i);
    expect(db.prepare("SELECT count(*) FROM sqlite_sequence WHERE name = 'casa_changes'").pluck().get()).toBe(0);
    db.prepare("UPDATE accounts SET name = 'new' WHERE id = 'acc-1'").run();
    expect(readLog(db, 0, 10).map((r) => r.fields)).toEqual([[['name', 'old']], [['name', 'new']]]);
    expect(changesOf(db).map((r) => r[4])).toEqual(['new']);
    db.close();
  });

  it('a seq that comes again once the log emptied is not forgotten by a repeated drop', () => {
    const { db, schema } = install();
    db.prepare("UPDATE accounts SET name = 'a' WHERE id = 'acc-1'").run();
    const t = takeLocalChanges(db, { deviceId: DEV, state: { wall: 0, counter: 0 }, limit: 10 });
    dropLocalChanges(db, t.uptoSeq);
    expect(pendingCount(db)).toBe(0);
    // Written after the drop: the same seq again. A pull stamps it, then a run finishes the old batch again.
    db.prepare("UPDATE accounts SET name = 'b' WHERE id = 'acc-1'").run();
    expect(readLog(db, 0, 10)[0]!.seq).toBe(t.uptoSeq);
    applyRemote(db, schema, [], { now: Date.now(), localDeviceId: DEV });
    expect(readLog(db, 0, 10)[0]!.hlc).not.toBeNull();
    dropLocalChanges(db, t.uptoSeq);
    expect(pendingCount(db)).toBe(1);
    const u = takeLocalChanges(db, { deviceId: DEV, state: t.state, limit: 10 });
    expect(u.changes.map((x) => [x.col, x.val])).toEqual([['name', 'b']]);
    expect(u.changes[0]!.hlc > t.changes[0]!.hlc).toBe(true);
    dropLocalChanges(db, u.uptoSeq);
    expect(pendingCount(db)).toBe(0);
    db.close();
  });

  it('random updates of untyped columns log exactly the changed values (property)', () => {
    const { db } = install();
    db.exec('CREATE TABLE r (k TEXT PRIMARY KEY, a, b, c, d)');
    installCapture(db, deriveSyncSchema(db, {}));
    db.prepare("INSERT INTO r VALUES ('k', NULL, NULL, NULL, NULL)").run();
    const value = fc.oneof(
      fc.constant(null),
      fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
      fc.double({ noNaN: true }),
      fc.string({ unit: 'binary' }),
      fc.uint8Array({ maxLength: 12 }),
    );
    const cols = ['a', 'b', 'c', 'd'];
    let step = 0;
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.constantFrom(...cols), value), { minLength: 1, maxLength: 4 }), (sets) => {
        const before = rowOf(db, "SELECT a, b, c, d FROM r WHERE k = 'k'");
        const assign = new Map(sets);
        db.prepare(`UPDATE r SET ${[...assign.keys()].map((col) => `${col} = ?`).join(', ')} WHERE k = 'k'`)
          .safeIntegers(true)
          .run(...[...assign.values()].map((v) => (v instanceof Uint8Array ? Buffer.from(v) : v)));
        const after = rowOf(db, "SELECT a, b, c, d FROM r WHERE k = 'k'");
        const t = takeLocalChanges(db, { deviceId: DEV, state: { wall: 0, counter: 0 }, limit: 100 });
        dropLocalChanges(db, t.uptoSeq);
        const got = t.changes.filter((x) => x.tbl === 'r' && x.op === 'u').map((x) => [x.col, x.val instanceof Uint8Array ? new Uint8Array(x.val) : x.val]);
        // SQLite's own view of "changed": IS NOT with binary collation.
        const changed = cols.filter((col) => db.prepare('SELECT ? IS NOT ?').pluck().safeIntegers(true).get(before[col], after[col]) === 1n);
        expect(got).toEqual(changed.map((col) => [col, after[col]]));
        step++;
      }),
      { numRuns: RUNS, seed: SEED },
    );
    expect(step).toBe(RUNS);
    db.close();
  });
});

describe('takeLocalChanges', () => {
  it('stamps one HLC per row write, keeps log order, keeps only the last update of a field', () => {
    const { db } = install();
    db.close();
    app((a) => {
      a.prepare("INSERT INTO transactions (id, account_id, date, amount, created_at, updated_at) VALUES ('t1', 'acc-1', 'd', 1, 'c', 'u')").run();
      for (let i = 2; i <= 4; i++) a.prepare("UPDATE transactions SET amount = ? WHERE id = 't1'").run(i);
      a.prepare("UPDATE accounts SET name = 'n' WHERE id = 'acc-1'").run();
    });
    const c = new Database(path);
    expect(pendingCount(c)).toBe(5);
    const t = takeLocalChanges(c, { deviceId: DEV, state: { wall: 0, counter: 0 }, limit: 1000 });
    const ins = t.changes.filter((x) => x.op === 'i');
    expect(ins).toHaveLength(11);
    expect(new Set(ins.map((x) => x.hlc)).size).toBe(1);
    const amounts = t.changes.filter((x) => x.op === 'u' && x.col === 'amount');
    expect(amounts).toEqual([expect.objectContaining({ val: 4n })]);
    const hlcs = t.changes.map((x) => x.hlc);
    expect([...hlcs].sort()).toEqual(hlcs);
    expect(hlcs.every((h) => parseHlc(h).deviceId === DEV)).toBe(true);
    expect(t.uptoSeq).toBe(5);
    expect(t.state).toEqual({ wall: parseHlc(hlcs.at(-1)!).wall, counter: parseHlc(hlcs.at(-1)!).counter });
    // The same rows give the same changes until dropped.
    expect(takeLocalChanges(c, { deviceId: DEV, state: t.state, limit: 1000 })).toEqual(t);
    dropLocalChanges(c, t.uptoSeq);
    expect(pendingCount(c)).toBe(0);
    expect(takeLocalChanges(c, { deviceId: DEV, state: t.state, limit: 1000 }).changes).toEqual([]);
    c.close();
  });

  it('never splits a row write across batches; limits otherwise', () => {
    const { db } = install();
    db.prepare("UPDATE accounts SET name = 'n', type = 'cash', closed = 1 WHERE id = 'acc-1'").run();
    db.prepare("INSERT INTO transactions (id, account_id, date, amount, created_at, updated_at) VALUES ('t1', 'acc-1', 'd', 1, 'c', 'u')").run();
    const t = takeLocalChanges(db, { deviceId: DEV, state: { wall: 0, counter: 0 }, limit: 1 });
    expect(t.changes.map((x) => x.col)).toEqual(['name', 'type', 'closed']);
    expect(new Set(t.changes.map((x) => x.hlc)).size).toBe(1);
    expect(t.uptoSeq).toBe(1); // the update is one log row
    dropLocalChanges(db, t.uptoSeq);
    const u = takeLocalChanges(db, { deviceId: DEV, state: t.state, limit: 1 });
    expect(u.changes).toHaveLength(11);
    expect(u.changes[0]!.hlc > t.changes[0]!.hlc).toBe(true);
    db.close();
  });

  it('an offline edit keeps its own old wall time; the floor recorded at write time bounds it from below', () => {
    const { db } = install();
    const weekAgo = Date.now() - 7 * 86_400_000;
    db.prepare("UPDATE accounts SET name = 'offline' WHERE id = 'acc-1'").run();
    db.prepare('UPDATE casa_changes SET wall = ?').run(weekAgo);
    // The device's clock state has since moved on (it received newer changes): it must not matter.
    const t = takeLocalChanges(db, { deviceId: DEV, state: { wall: Date.now(), counter: 0 }, limit: 10 });
    expect(parseHlc(t.changes[0]!.hlc).wall).toBe(weekAgo);
    dropLocalChanges(db, t.uptoSeq);
    // A floor above the wall (a remote change seen before the write) wins over the wall.
    const floor = `${(weekAgo + 5000).toString(16).padStart(12, '0')}0007${'00000000000000b2'}`;
    db.prepare("UPDATE casa_meta SET value = ? WHERE key = 'hlc_floor'").run(floor);
    db.prepare("UPDATE accounts SET name = 'later' WHERE id = 'acc-1'").run();
    db.prepare('UPDATE casa_changes SET wall = ?').run(weekAgo + 1);
    const u = takeLocalChanges(db, { deviceId: DEV, state: t.state, limit: 10 });
    expect(parseHlc(u.changes[0]!.hlc)).toEqual({ wall: weekAgo + 5000, counter: 8, deviceId: DEV });
    db.close();
  });

  it('clearLocalLog empties the log', () => {
    const { db } = install();
    db.prepare("UPDATE accounts SET name = 'x' WHERE id = 'acc-1'").run();
    clearLocalLog(db);
    expect(pendingCount(db)).toBe(0);
    db.close();
  });
});

describe('change encoding', () => {
  const H1 = `${'0189abcdef01'}0002${'00000000000000a1'}`;
  const H2 = `${'0189abcdef02'}0000${'00000000000000b2'}`;
  const every: Change[] = [
    { tbl: 'transactions', pk: '["t1"]', col: 'memo', op: 'i', val: 'Bäckerei 🥐', hlc: H1 },
    { tbl: 'transactions', pk: '["t1"]', col: 'amount', op: 'i', val: 9223372036854775807n, hlc: H1 },
    { tbl: 'transactions', pk: '["t1"]', col: 'payee_id', op: 'i', val: null, hlc: H1 },
    { tbl: 'transactions', pk: '["t1"]', col: 'cleared', op: 'i', val: -9223372036854775808n, hlc: H1 },
    { tbl: 'transactions', pk: '["t1"]', col: 'x', op: 'i', val: 0n, hlc: H1 },
    { tbl: 'odd', pk: '[{"x":"00ff"},-1,{"r":"2.5"},null,"k"]', col: 'r', op: 'u', val: 1.5, hlc: H2 },
    { tbl: 'odd', pk: '[{"x":"00ff"},-1,{"r":"2.5"},null,"k"]', col: 'r', op: 'u', val: -0, hlc: H2 },
    { tbl: 'odd', pk: '[{"x":""}]', col: 'inf', op: 'u', val: -Infinity, hlc: H2 },
    { tbl: 'odd', pk: '[{"x":""}]', col: 'blob', op: 'u', val: new Uint8Array([0, 1, 255]), hlc: H1 },
    { tbl: 'odd', pk: '[{"x":""}]', col: 'empty', op: 'u', val: new Uint8Array(0), hlc: H1 },
    { tbl: 'odd', pk: '[{"x":""}]', col: 'text', op: 'u', val: '', hlc: H1 },
    { tbl: 'transaction_tags', pk: '["t1","kids"]', col: null, op: 'i', val: null, hlc: H2 },
    { tbl: 'transactions', pk: '["t1"]', col: null, op: 'd', val: null, hlc: H2 },
  ];

  it('round-trips every SQLite type, 64-bit integers and blobs included, deterministically', () => {
    const bytes = encodeChanges(every);
    expect(decodeChanges(bytes)).toEqual(every);
    expect(encodeChanges(decodeChanges(bytes))).toEqual(bytes);
    expect(Object.is((decodeChanges(bytes)[6]!.val as number), -0)).toBe(true);
    expect(decodeChanges(encodeChanges([]))).toEqual([]);
  });

  it('round-trips random change lists (property)', () => {
    const hlc = fc.constantFrom(H1, H2, `${'000000000001'}0000${'ffffffffffffffff'}`);
    const val = fc.oneof(
      fc.constant(null),
      fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
      fc.double({ noNaN: true }),
      fc.string({ unit: 'grapheme' }),
      fc.uint8Array({ maxLength: 40 }),
    );
    const pkVal = fc.oneof(fc.constant(null), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), fc.double({ noNaN: true }), fc.string(), fc.uint8Array({ maxLength: 8 }));
    const change = fc.record({
      tbl: fc.constantFrom('accounts', 'transactions', 'täbel'),
      pk: fc.array(pkVal, { minLength: 1, maxLength: 3 }).map((v) => encodePk(v as SqlValue[])),
      col: fc.constantFrom('memo', 'amount', 'ç'),
      op: fc.constant('u' as const),
      val,
      hlc,
    });
    fc.assert(
      fc.property(fc.array(change, { maxLength: 20 }), (changes) => {
        const bytes = encodeChanges(changes);
        const back = decodeChanges(bytes);
        expect(back).toEqual(changes.map((c) => ({ ...c, val: c.val instanceof Uint8Array ? new Uint8Array(c.val) : c.val })));
        expect(encodeChanges(back)).toEqual(bytes);
      }),
      { numRuns: RUNS, seed: SEED },
    );
  });

  it('refuses malformed bodies with ChangeFormatError', () => {
    const good = encodeChanges(every.slice(0, 3));
    const cases: [string, Uint8Array][] = [
      ['empty', new Uint8Array(0)],
      ['version', Uint8Array.from([3, ...good.slice(1)])],
      ['format 2 without its vectors', Uint8Array.from([2, ...good.slice(1)])],
      ['truncated', good.slice(0, good.length - 1)],
      ['trailing', Uint8Array.from([...good, 0])],
      ['non-minimal varint', Uint8Array.from([1, 0x80, 0x00, 0])],
      ['string index', Uint8Array.from([1, 0, 1, 5, 5, 0, 0])],
      ['bad utf-8', Uint8Array.from([1, 1, 1, 0xff, 0])],
    ];
    for (const [name, bytes] of cases) expect(() => decodeChanges(bytes), name).toThrow(ChangeFormatError);
    // A non-canonical pk, an update without a column, a reserved flag bit.
    const pk = encodeChanges([{ ...every[0]!, pk: '["t1"]' }]);
    const spaced = Buffer.from(pk).toString('latin1').replace('["t1"]', '[ "t1"]');
    expect(() => decodeChanges(Buffer.from(spaced, 'latin1'))).toThrow(ChangeFormatError);
    expect(() => encodeChanges([{ ...every[0]!, op: 'u', col: null }])).toThrow(ChangeFormatError);
    expect(() => encodeChanges([{ ...every[0]!, val: 2n ** 63n }])).toThrow(ChangeFormatError);
    expect(() => encodeChanges([{ ...every[0]!, val: NaN }])).toThrow(ChangeFormatError);
    expect(() => encodeChanges([{ ...every[0]!, hlc: H1.toUpperCase() }])).toThrow(ChangeFormatError);
    // Every single-byte flip either decodes to a valid list or fails with ChangeFormatError.
    for (let i = 0; i < good.length; i++) {
      const b = good.slice();
      b[i] ^= 0x41;
      try {
        decodeChanges(b);
      } catch (err) {
        expect(err, `byte ${i}`).toBeInstanceOf(ChangeFormatError);
      }
    }
  });

  it('random bytes: ChangeFormatError, or a list that encodes back to exactly those bytes (property)', () => {
    const valid = encodeChanges(every);
    const mutated = fc
      .tuple(fc.nat(valid.length - 1), fc.integer({ min: 1, max: 255 }), fc.nat(valid.length))
      .map(([i, x, cut]) => {
        const b = valid.slice(0, Math.max(cut, i + 1));
        b[i] ^= x;
        return b;
      });
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 200 }).map((b) => Uint8Array.from([1, ...b])), mutated), (bytes) => {
        let changes: Change[];
        try {
          changes = decodeChanges(bytes);
        } catch (err) {
          expect(err).toBeInstanceOf(ChangeFormatError);
          return;
        }
        expect(encodeChanges(changes)).toEqual(bytes);
      }),
      { numRuns: RUNS, seed: SEED },
    );
  });

  it('what each write had seen travels with it (format 2), deterministic and strict', () => {
    const HA = `${'0189abcdef00'}0000${'00000000000000a1'}`;
    const HC = `${'0189abcdef00'}0007${'00000000000000c3'}`;
    const v1 = [HA];
    const v2 = [HA, HC];
    const seen: Change[] = [
      { ...every[0]!, hlc: H2, seen: v1 },
      { ...every[1]!, hlc: H2, seen: v1 },
      { ...every[5]!, hlc: H1 },
      { ...every[11]!, hlc: `${'0189abcdef03'}0000${'00000000000000b2'}`, seen: v2 },
      { ...every[12]!, hlc: `${'0189abcdef04'}0000${'00000000000000b2'}`, seen: v1 },
    ];
    const bytes = encodeChanges(seen);
    expect(bytes[0]).toBe(2);
    expect(decodeChanges(bytes)).toEqual(seen);
    expect(encodeChanges(decodeChanges(bytes))).toEqual(bytes);
    // One vector object per distinct vector: the changes of a pass share it.
    const back = decodeChanges(bytes);
    expect(back[0]!.seen).toBe(back[4]!.seen);
    // Without any vector the bytes are format 1, as before vectors existed.
    expect(encodeChanges(every)[0]).toBe(1);
    // Refused: a vector out of device order, a device twice, an empty vector, two vectors for one hlc.
    expect(() => encodeChanges([{ ...every[0]!, seen: [HC, HA] }])).toThrow(ChangeFormatError);
    expect(() => encodeChanges([{ ...every[0]!, seen: [HA, HA] }])).toThrow(ChangeFormatError);
    expect(() => encodeChanges([{ ...every[0]!, seen: [] }])).toThrow(ChangeFormatError);
    expect(() => encodeChanges([{ ...every[0]!, seen: v1 }, { ...every[1]!, seen: v2 }])).toThrow(ChangeFormatError);
    // Bytes not exactly as encodeChanges makes them: vectors swapped in the table, one unused, a listed twice.
    const two = encodeChanges([
      { ...every[5]!, hlc: H1, seen: v1 },
      { ...every[7]!, hlc: H2, seen: v2 },
    ]);
    const hex = Buffer.from(two).toString('hex');
    const [a1, c3] = [HA, HC];
    const t1 = `01${a1}02${a1}${c3}`;
    expect(hex).toContain(t1);
    expect(hex).toContain(`${H1}01`);
    const swapped = hex.replace(`${H1}01`, `${H1}02`).replace(`${H2}02`, `${H2}01`);
    expect(() => decodeChanges(Buffer.from(swapped, 'hex'))).toThrow(/vectors out of order/);
    const unsorted = hex.replace(`02${a1}${c3}`, `02${c3}${a1}`);
    expect(() => decodeChanges(Buffer.from(unsorted, 'hex'))).toThrow(/sorted by device/);
    const twice = hex.replace(`02${a1}${c3}`, `01${a1}`).replace(/..$/, '');
    expect(() => decodeChanges(Buffer.from(twice, 'hex'))).toThrow(ChangeFormatError);
    for (let i = 0; i < two.length; i++) {
      const b = two.slice();
      b[i] ^= 0x41;
      try {
        expect(encodeChanges(decodeChanges(b))).toEqual(b);
      } catch (err) {
        if (!(err instanceof ChangeFormatError)) throw err;
      }
    }
  });

  it('pk text: canonical only', () => {
    expect(encodePk(['a', 1n, null, 2.5, new Uint8Array([1])])).toBe('["a",1,null,{"r":"2.5"},{"x":"01"}]');
    for (const bad of ['[]', '["a" ]', '[01]', '[{"x":"0A"}]', '[{"r":"2.50"}]', '["\\u0061"]', 'a', '[1,]', '[9223372036854775808]']) {
      expect(() => decodePk(bad), bad).toThrow(ChangeFormatError);
    }
  });
});
