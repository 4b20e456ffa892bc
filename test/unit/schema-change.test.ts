/**
 * App updates lose nothing (docs/MERGE.md §8): the app migrates its database
 * while casa's triggers predate the migration, writes to the new parts, and
 * only then does casa refresh capture (src/changesets/refresh.ts). What the old
 * triggers missed is caught up — values of added columns that differ from
 * the column's default, rows of a table new to sync — and a device whose
 * schema is behind keeps the changes pending and applies them once it
 * migrates, whichever device migrates first. Two in-memory devices, real
 * SQLite, the capture and merge code as `casa sync` runs it.
 */
import Database from 'better-sqlite3';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { detachCapture, detachedSince } from '../../src/changesets/capture.js';
import type { Change } from '../../src/changesets/change.js';
import { decodeChanges, encodeChanges } from '../../src/changesets/change-codec.js';
import { clearLocalLog, dropLocalChanges, pendingCount, takeLocalChanges } from '../../src/changesets/change-log.js';
import { parseHlc } from '../../src/changesets/hlc.js';
import { applyRemote, pendingRemoteCount } from '../../src/changesets/merge.js';
import { refreshCapture } from '../../src/changesets/refresh.js';
import type { SyncSchema } from '../../src/changesets/rules.js';

const T0 = 1_795_000_000_000;

interface Dev {
  db: Database.Database;
  id: string;
  schema: SyncSchema;
  state: { wall: number; counter: number };
  now: number;
}

function device(id: string, setup: string): Dev {
  const db = new Database(':memory:');
  db.exec(setup);
  const dev: Dev = { db, id, schema: undefined as unknown as SyncSchema, state: { wall: 0, counter: 0 }, now: T0 };
  refresh(dev);
  return dev;
}

/** What every casa command does first. */
function refresh(d: Dev) {
  const r = refreshCapture(d.db, {}, { now: d.now, deviceId: d.id });
  d.schema = r.schema;
  return r;
}

/** The app's write at the device's wall time (the triggers' own clock is SQLite's). */
function appWrite(d: Dev, sql: string, ...params: unknown[]): void {
  const before = d.db.prepare('SELECT ifnull(max(seq), 0) FROM casa_changes').pluck().get() as number;
  d.db.prepare(sql).run(...params);
  d.db.prepare('UPDATE casa_changes SET wall = ? WHERE hlc IS NULL AND seq > ?').run(d.now, before);
}

/** `casa sync`'s push: refresh, then take the log. */
function push(d: Dev): Change[] {
  refresh(d);
  const t = takeLocalChanges(d.db, { deviceId: d.id, state: d.state, limit: 10_000 });
  dropLocalChanges(d.db, t.uptoSeq);
  d.state = t.state;
  return decodeChanges(encodeChanges(t.changes));
}

function pull(d: Dev, changes: Change[]): void {
  refresh(d);
  if (changes.length) applyRemote(d.db, d.schema, changes, { now: d.now, localDeviceId: d.id });
}

const TX = `CREATE TABLE tx (id TEXT PRIMARY KEY, amount INTEGER, memo TEXT);
  INSERT INTO tx VALUES ('t1', -1250, 'REWE'), ('t2', -80000, 'rent');`;

const rows = (d: Dev, table: string) => d.db.prepare(`SELECT * FROM ${table} ORDER BY 1`).all();

function twoDevices() {
  const a = device('00000000000000a1', TX);
  const b = device('00000000000000b2', TX);
  return { a, b };
}

describe('a column the app adds', () => {
  it('the issue\'s scenario: A migrates and writes the new column before casa notices; B gets it, whichever migrates first', () => {
    for (const bFirst of [false, true]) {
      const { a, b } = twoDevices();
      if (bFirst) b.db.exec('ALTER TABLE tx ADD COLUMN category TEXT');
      a.now += 1000;
      a.db.exec('ALTER TABLE tx ADD COLUMN category TEXT');
      appWrite(a, "UPDATE tx SET category = 'food', memo = 'REWE Markt' WHERE id = 't1'");
      appWrite(a, "UPDATE tx SET category = 'rent' WHERE id = 't2'");
      const fromA = push(a);
      // The memo went out with the old triggers; the categories with the catch-up.
      expect(fromA.filter((c) => c.col === 'category').map((c) => [c.pk, c.val])).toEqual([
        ['["t1"]', 'food'],
        ['["t2"]', 'rent'],
      ]);
      b.now += 2000;
      pull(b, fromA);
      if (!bFirst) {
        expect(pendingRemoteCount(b.db)).toBe(2);
        b.db.exec('ALTER TABLE tx ADD COLUMN category TEXT');
        pull(b, []); // the next command's refresh applies what waited
      }
      expect(pendingRemoteCount(b.db)).toBe(0);
      expect(rows(b, 'tx')).toEqual(rows(a, 'tx'));
      expect(rows(b, 'tx')).toEqual([
        { id: 't1', amount: -1250, memo: 'REWE Markt', category: 'food' },
        { id: 't2', amount: -80000, memo: 'rent', category: 'rent' },
      ]);
      expect(push(b)).toEqual([]); // nothing echoes
    }
  });

  it('logs only the values that differ from the column\'s default', () => {
    const { a, b } = twoDevices();
    for (const d of [a, b]) d.db.exec("ALTER TABLE tx ADD COLUMN kind TEXT NOT NULL DEFAULT 'card'");
    appWrite(a, "INSERT INTO tx (id, amount, memo) VALUES ('t3', 5, 'x')"); // old triggers: kind not logged, and it is the default
    appWrite(a, "UPDATE tx SET kind = 'cash' WHERE id = 't1'");
    const r = refresh(a);
    expect(r.refresh.caughtUp).toEqual([{ tbl: 'tx', rows: 1, what: 'columns' }]);
    const out = push(a);
    expect(out.filter((c) => c.col === 'kind').map((c) => [c.pk, c.val])).toEqual([['["t1"]', 'cash']]);
    pull(b, out);
    expect(rows(b, 'tx')).toEqual(rows(a, 'tx'));
  });

  it('both devices write the new column concurrently: one winner, the same on both', () => {
    const { a, b } = twoDevices();
    for (const d of [a, b]) d.db.exec('ALTER TABLE tx ADD COLUMN category TEXT');
    appWrite(a, "UPDATE tx SET category = 'food' WHERE id = 't1'");
    b.now += 5;
    appWrite(b, "UPDATE tx SET category = 'groceries' WHERE id = 't1'");
    const fromA = push(a);
    const fromB = push(b);
    pull(a, fromB);
    pull(b, fromA);
    expect(rows(a, 'tx')).toEqual(rows(b, 'tx'));
  });

  it('the catch-up carries the refresh\'s own time, above what the device has seen', () => {
    const { a } = twoDevices();
    a.db.exec('ALTER TABLE tx ADD COLUMN category TEXT');
    a.db.prepare("UPDATE tx SET category = 'food' WHERE id = 't1'").run();
    a.now = T0 + 60_000;
    const out = push(a);
    const c = out.find((x) => x.col === 'category')!;
    expect(parseHlc(c.hlc).wall).toBe(T0 + 60_000);
    expect(c.hlc.endsWith(a.id)).toBe(true);
  });

  it('a refresh with nothing new is a no-op: no log rows, the same triggers', () => {
    const { a } = twoDevices();
    a.db.exec('ALTER TABLE tx ADD COLUMN category TEXT');
    a.db.prepare("UPDATE tx SET category = 'food' WHERE id = 't1'").run();
    expect(refresh(a).refresh.caughtUp).toEqual([{ tbl: 'tx', rows: 1, what: 'columns' }]);
    const again = refresh(a);
    expect(again.refresh.changed).toBe(false);
    expect(pendingCount(a.db)).toBe(1);
  });
});

describe('a table the app creates', () => {
  const BUDGETS = 'CREATE TABLE budgets (id TEXT PRIMARY KEY, month TEXT, amount INTEGER)';

  it('rows written before casa notices are caught up as inserts; a device without the table keeps them pending', () => {
    const { a, b } = twoDevices();
    a.db.exec(BUDGETS);
    appWrite(a, "INSERT INTO budgets VALUES ('b1', '2026-12', 40000)");
    appWrite(a, "INSERT INTO budgets VALUES ('b2', '2026-12', 9000)");
    const r = refresh(a);
    expect(r.refresh.caughtUp).toEqual([{ tbl: 'budgets', rows: 2, what: 'rows' }]);
    const out = push(a);
    expect(out.filter((c) => c.tbl === 'budgets' && c.op === 'i').length).toBe(4); // month and amount of each
    pull(b, out);
    expect(pendingRemoteCount(b.db)).toBe(4);
    b.db.exec(BUDGETS);
    pull(b, []);
    expect(rows(b, 'budgets')).toEqual(rows(a, 'budgets'));
    expect(push(b)).toEqual([]);
  });

  it('both devices create it and write the same key: merged field by field', () => {
    const { a, b } = twoDevices();
    for (const d of [a, b]) d.db.exec(BUDGETS);
    appWrite(a, "INSERT INTO budgets VALUES ('b1', '2026-12', 40000)");
    b.now += 10;
    appWrite(b, "INSERT INTO budgets VALUES ('b1', '2026-12', 45000)");
    const fromA = push(a);
    const fromB = push(b);
    pull(a, fromB);
    pull(b, fromA);
    expect(rows(a, 'budgets')).toEqual(rows(b, 'budgets'));
    expect(rows(a, 'budgets')).toEqual([{ id: 'b1', month: '2026-12', amount: 45000 }]);
  });
});

describe('columns and tables that go away or change', () => {
  it('a renamed column is followed as a new column: its values travel again, and both converge', () => {
    const { a, b } = twoDevices();
    appWrite(b, "UPDATE tx SET memo = 'Miete' WHERE id = 't2'");
    const fromB = push(b);
    a.db.exec('ALTER TABLE tx RENAME COLUMN memo TO note');
    appWrite(a, "UPDATE tx SET note = 'REWE Markt' WHERE id = 't1'");
    const fromA = push(a);
    pull(a, fromB); // b's memo: a has no memo any more: kept pending
    pull(b, fromA); // a's note: b has no note yet: kept pending
    b.db.exec('ALTER TABLE tx RENAME COLUMN memo TO note');
    const fromB2 = push(b);
    pull(a, fromB2);
    pull(b, []);
    expect(rows(a, 'tx')).toEqual(rows(b, 'tx'));
    expect(rows(a, 'tx').map((r) => (r as { note: string }).note)).toEqual(['REWE Markt', 'Miete']);
  });

  it('a table the app rebuilt (12-step ALTER) is reported; its added column is caught up', () => {
    const { a } = twoDevices();
    a.db.exec(`
      CREATE TABLE tx_new (id TEXT PRIMARY KEY, amount INTEGER, memo TEXT, cleared INTEGER NOT NULL DEFAULT 0);
      INSERT INTO tx_new (id, amount, memo) SELECT id, amount, memo FROM tx;
      DROP TABLE tx;
      ALTER TABLE tx_new RENAME TO tx;`);
    a.db.prepare("UPDATE tx SET cleared = 1 WHERE id = 't1'").run();
    const r = refresh(a);
    expect(r.refresh.rebuilt).toEqual(['tx']);
    expect(r.refresh.caughtUp).toEqual([{ tbl: 'tx', rows: 1, what: 'columns' }]);
  });

  it('a dropped table is reported; changes to it from others wait in casa_pending', () => {
    const { a, b } = twoDevices();
    appWrite(b, "UPDATE tx SET memo = 'x' WHERE id = 't1'");
    const fromB = push(b);
    a.db.exec('DROP TABLE tx; CREATE TABLE other (id TEXT PRIMARY KEY, v TEXT)');
    const r = refresh(a);
    expect(r.refresh.dropped).toEqual(['tx']);
    pull(a, fromB);
    expect(pendingRemoteCount(a.db)).toBe(1);
  });
});

describe('detached capture: an app update that drops a synced column (casa sync --detach)', () => {
  const copies = mkdtempSync(join(tmpdir(), 'casa-detached-'));
  afterAll(() => rmSync(copies, { recursive: true, force: true }));
  const copyOf = (d: Dev) => join(copies, `${d.id}.db`);
  const detach = (d: Dev) => detachCapture(d.db, refresh(d).schema, { now: d.now, copyPath: copyOf(d) });

  it('SQLite refuses the drop while capture is attached, naming casa\'s trigger', () => {
    const { a } = twoDevices();
    expect(() => a.db.exec('ALTER TABLE tx DROP COLUMN memo')).toThrow(/error in trigger casa_\w+_tx after drop column/);
  });

  it('every write made while detached is caught up at the attach: updates, inserts, deletes; the other device converges', () => {
    const { a, b } = twoDevices();
    appWrite(a, "INSERT INTO tx VALUES ('t9', 5, 'gone soon')");
    pull(b, push(a));
    const d = detach(a);
    expect(d.tables).toEqual([{ tbl: 'tx', rows: 3 }]);
    expect(existsSync(copyOf(a))).toBe(true);
    expect(detachedSince(a.db)?.at).toBe(a.now);
    expect(a.db.prepare("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").pluck().get()).toBe(0);
    // The app's update, and its writes before casa runs again.
    a.db.exec(`ALTER TABLE tx DROP COLUMN memo;
      ALTER TABLE tx ADD COLUMN category TEXT;
      UPDATE tx SET amount = -1300, category = 'food' WHERE id = 't1';
      UPDATE tx SET amount = amount WHERE id = 't2';
      INSERT INTO tx (id, amount, category) VALUES ('t3', -42, 'fun');
      DELETE FROM tx WHERE id = 't9';`);
    a.now += 1000;
    const r = refresh(a);
    expect(r.refresh.attached).toBe(true);
    expect(r.refresh.rebuilt).toEqual([]);
    expect(r.refresh.caughtUp).toEqual([{ tbl: 'tx', rows: 3, what: 'writes' }]);
    expect(detachedSince(a.db)).toBeNull();
    // The copy lived in its own file (the database never held it), and is gone once it served.
    expect(a.db.prepare("SELECT count(*) FROM sqlite_master WHERE name LIKE 'casa_was_%'").pluck().get()).toBe(0);
    expect(existsSync(copyOf(a))).toBe(false);
    const fromA = push(a);
    // t1: amount and category (no memo: the column is gone here), t3 whole, t9 deleted; t2 untouched.
    expect(fromA.filter((c) => c.pk.includes('t2'))).toEqual([]);
    expect(fromA.filter((c) => c.pk.includes('t1')).map((c) => [c.op, c.col, c.val])).toEqual([
      ['u', 'amount', -1300n],
      ['u', 'category', 'food'],
    ]);
    expect(fromA.filter((c) => c.pk.includes('t9')).map((c) => c.op)).toEqual(['d']);
    expect(Math.min(...fromA.map((c) => parseHlc(c.hlc).wall))).toBe(a.now);
    pull(b, fromA);
    // B has not updated yet: category waits; the rest applies.
    expect(pendingRemoteCount(b.db)).toBeGreaterThan(0);
    // B's update: detach, the same migration, attach.
    detach(b);
    b.db.exec('ALTER TABLE tx DROP COLUMN memo; ALTER TABLE tx ADD COLUMN category TEXT;');
    pull(b, []);
    pull(a, push(b));
    expect(rows(b, 'tx')).toEqual(rows(a, 'tx'));
    expect(rows(a, 'tx')).toEqual([
      { id: 't1', amount: -1300, category: 'food' },
      { id: 't2', amount: -80000, category: null },
      { id: 't3', amount: -42, category: 'fun' },
    ]);
    expect(pendingCount(a.db) + pendingCount(b.db)).toBe(0);
  });

  it('a column dropped and added again (as Actual Budget\'s migrations do) travels as the values the app left', () => {
    const { a, b } = twoDevices();
    detach(a);
    a.db.exec('ALTER TABLE tx DROP COLUMN memo; ALTER TABLE tx ADD COLUMN memo TEXT');
    a.now += 1000;
    pull(b, push(a));
    expect(rows(b, 'tx')).toEqual(rows(a, 'tx'));
    expect(rows(b, 'tx').map((r) => (r as { memo: unknown }).memo)).toEqual([null, null]);
  });

  it('a detach while detached attaches first: nothing written in between is lost', () => {
    const { a, b } = twoDevices();
    detach(a);
    a.db.exec("UPDATE tx SET memo = 'one' WHERE id = 't1'");
    detach(a);
    a.db.exec("UPDATE tx SET memo = 'two' WHERE id = 't2'");
    pull(b, push(a));
    expect(rows(b, 'tx').map((r) => (r as { memo: unknown }).memo)).toEqual(['one', 'two']);
  });

  it('a write undone while detached sends nothing; a concurrent remote write made after the attach wins', () => {
    const { a, b } = twoDevices();
    detach(a);
    a.db.exec("UPDATE tx SET memo = 'x' WHERE id = 't1'; UPDATE tx SET memo = 'REWE' WHERE id = 't1'; UPDATE tx SET amount = 1 WHERE id = 't2'");
    a.now += 1000;
    const fromA = push(a);
    expect(fromA.map((c) => [c.pk, c.col])).toEqual([[expect.stringContaining('t2'), 'amount']]);
    b.now = a.now + 5000;
    appWrite(b, "UPDATE tx SET amount = 2 WHERE id = 't2'");
    const fromB = push(b);
    pull(a, fromB);
    pull(b, fromA);
    expect(rows(a, 'tx')).toEqual(rows(b, 'tx'));
    expect((rows(a, 'tx')[1] as { amount: number }).amount).toBe(2);
  });

  it('a copy that is gone, or is not the detach\'s, is never guessed from: the tables are reported, the warning names the path', () => {
    for (const how of ['gone', 'another'] as const) {
      const { a } = twoDevices();
      detach(a);
      a.db.exec("UPDATE tx SET memo = 'x' WHERE id = 't1'");
      if (how === 'gone') rmSync(copyOf(a));
      else {
        rmSync(copyOf(a));
        const other = new Database(copyOf(a));
        other.exec("CREATE TABLE casa_copy (token TEXT); INSERT INTO casa_copy VALUES ('not-the-token')");
        other.close();
      }
      const r = refresh(a);
      expect(r.refresh).toMatchObject({ attached: true, lostCopy: copyOf(a), rebuilt: ['tx'], caughtUp: [] });
      expect(detachedSince(a.db)).toBeNull();
      // A file that is not the detach's is left alone.
      expect(existsSync(copyOf(a))).toBe(how === 'another');
      rmSync(copyOf(a), { force: true });
    }
  });

  it('a restored database drops the copies another device took: the restored rows are the vault\'s', () => {
    const { a } = twoDevices();
    detach(a);
    a.db.exec("UPDATE tx SET memo = 'x' WHERE id = 't1'");
    clearLocalLog(a.db);
    const r = refresh(a);
    expect(r.refresh.caughtUp).toEqual([]);
    expect(r.refresh.rebuilt).toEqual([]);
    expect(pendingCount(a.db)).toBe(0);
    expect(a.db.prepare("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").pluck().get()).toBeGreaterThan(0);
  });
});
