/**
 * Merge scenarios (src/changesets/merge.ts, docs/MERGE.md §4), each named after the
 * situation it covers. Devices are in-memory copies of one baseline database
 * (the bench's schema, capture installed, as after a restore); the app's
 * writes go through plain SQL so the triggers capture them, and each write's
 * logged wall time is set to the device's simulated clock. Batches travel
 * encoded (encodeChanges → decodeChanges), as they would through the relay.
 */
import Database from 'better-sqlite3';
import { beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error -- plain JS module of the bench
import { SCHEMA } from '../../bench/lib/make-db.mjs';
import { installCapture } from '../../src/changesets/capture.js';
import type { Change } from '../../src/changesets/change.js';
import { decodeChanges, encodeChanges } from '../../src/changesets/change-codec.js';
import { dropLocalChanges, takeLocalChanges } from '../../src/changesets/change-log.js';
import { ClockSkewError, MAX_SKEW_MS, maxState, parseHlc, type HlcState } from '../../src/changesets/hlc.js';
import { applyPending, applyRemote, listConflicts, type ApplyResult } from '../../src/changesets/merge.js';
import { deriveSyncSchema, type SyncSchema } from '../../src/changesets/rules.js';

const T = 1_795_000_000_000;
const MIN = 60_000;
let BASE: Buffer;

beforeAll(() => {
  const db = new Database(':memory:');
  db.exec(SCHEMA);
  db.exec(`
    INSERT INTO accounts VALUES ('acc-1', 'Girokonto', 'checking', 'EUR', 0, NULL, 0, 'c', 'u');
    INSERT INTO transactions (id, account_id, date, amount, memo, created_at, updated_at)
      VALUES ('t1', 'acc-1', '2026-01-02', -1250, 'REWE', 'c', 'u'),
             ('t2', 'acc-1', '2026-01-03', -990, 'Lidl', 'c', 'u');
    INSERT INTO transaction_tags VALUES ('t1', 'kids');`);
  installCapture(db, deriveSyncSchema(db, {}));
  BASE = db.serialize();
  db.close();
});

class Device {
  readonly db: Database.Database;
  schema: SyncSchema;
  state: HlcState = { wall: 0, counter: 0 };
  now = T;

  constructor(readonly id: string) {
    this.db = new Database(BASE);
    this.db.pragma('foreign_keys = ON'); // like the app
    this.schema = deriveSyncSchema(this.db, {});
    installCapture(this.db, this.schema);
  }

  /** An app write at this device's wall time `at` (ms). */
  write(at: number, sql: string, ...params: unknown[]): void {
    const before = this.db.prepare('SELECT ifnull(max(seq), 0) FROM casa_changes').pluck().get() as number;
    this.db.prepare(sql).run(...params);
    this.db.prepare('UPDATE casa_changes SET wall = ? WHERE hlc IS NULL AND seq > ?').run(at, before);
    this.now = Math.max(this.now, at);
  }

  /** Takes the local log as a batch (as it would go to the relay). */
  push(): Change[] {
    const t = takeLocalChanges(this.db, { deviceId: this.id, state: this.state, limit: 100_000 });
    dropLocalChanges(this.db, t.uptoSeq);
    this.state = t.state;
    return decodeChanges(encodeChanges(t.changes));
  }

  /** Applies a batch; the device clock moves past what it received, as sync-run does. */
  pull(changes: Change[], now = this.now): ApplyResult {
    const r = applyRemote(this.db, this.schema, changes, { now, localDeviceId: this.id });
    for (const c of changes) {
      const h = parseHlc(c.hlc);
      this.state = maxState(this.state, { wall: h.wall, counter: h.counter });
    }
    return r;
  }

  get(sql: string, ...params: unknown[]): unknown {
    return this.db.prepare(sql).pluck().get(...params);
  }

  /** Every synced table, every value with its type (quote()), in key order. */
  dump(): string {
    const out: string[] = [];
    for (const t of this.schema.tables) {
      const cols = [...t.pk, ...t.columns].map((c) => `quote("${c}")`).join(" || ',' || ");
      const rows = this.db.prepare(`SELECT ${cols} FROM "${t.name}" ORDER BY ${t.pk.map((c) => `"${c}"`).join(', ')}`).pluck().all();
      out.push(`${t.name}: ${rows.join(' / ')}`);
    }
    return out.join('\n');
  }

  conflicts() {
    return listConflicts(this.db, { limit: 1000 });
  }

  /** The winning HLC of a field ('+'/'-' for the row markers). */
  clock(tbl: string, pk: string, col: string): string | undefined {
    return this.get('SELECT hlc FROM casa_clock WHERE tbl = ? AND pk = ? AND col = ?', tbl, pk, col) as string | undefined;
  }
}

const A_ID = '00000000000000a1';
const B_ID = '00000000000000b2';
const C_ID = '00000000000000c3';

/** Every device gets every batch (each device's own batches excluded), in the order given. */
function deliver(to: Device[], batches: [Device, Change[]][]): void {
  for (const d of to) for (const [from, b] of batches) if (from !== d) d.pull(b);
}

function expectConverged(...devices: Device[]): void {
  const first = devices[0]!.dump();
  for (const d of devices.slice(1)) expect(d.dump()).toBe(first);
}

describe('merge scenarios', () => {
  it('same field on two devices: the later HLC wins everywhere, the decision is audited', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    a.write(T + 1000, "UPDATE transactions SET memo = 'from A' WHERE id = 't1'");
    b.write(T + 2000, "UPDATE transactions SET memo = 'from B' WHERE id = 't1'");
    const ba = a.push();
    const bb = b.push();
    expect(a.pull(bb)).toEqual({ applied: 1, ignored: 0, conflicts: 1, pending: 0 });
    expect(b.pull(ba)).toEqual({ applied: 0, ignored: 1, conflicts: 1, pending: 0 });
    expectConverged(a, b);
    expect(a.get("SELECT memo FROM transactions WHERE id = 't1'")).toBe('from B');
    const [ca] = a.conflicts();
    const [cb] = b.conflicts();
    expect(ca).toMatchObject({ tbl: 'transactions', pk: '["t1"]', col: 'memo', local_val: 'from A', remote_val: 'from B', winner: 'remote', rule: 'lww' });
    expect(cb).toMatchObject({ local_val: 'from B', remote_val: 'from A', winner: 'local', rule: 'lww' });
    expect(ca!.remote_hlc).toBe(cb!.local_hlc);
    expect(a.clock('transactions', '["t1"]', 'memo')).toBe(b.clock('transactions', '["t1"]', 'memo'));
  });

  it('different fields of one row: both edits survive, no conflict', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    a.write(T + 1000, "UPDATE transactions SET memo = 'groceries' WHERE id = 't1'");
    b.write(T + 2000, "UPDATE transactions SET amount = -1300, cleared = 1 WHERE id = 't1'");
    deliver([a, b], [[a, a.push()], [b, b.push()]]);
    expectConverged(a, b);
    expect(a.db.prepare("SELECT memo, amount, cleared FROM transactions WHERE id = 't1'").get()).toEqual({ memo: 'groceries', amount: -1300, cleared: 1 });
    expect(a.conflicts()).toEqual([]);
    expect(b.conflicts()).toEqual([]);
  });

  it('delete vs update, delete first: the delete wins over the later update', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    a.write(T + 1000, "DELETE FROM transactions WHERE id = 't1'"); // cascades to its tag
    b.write(T + 2000, "UPDATE transactions SET memo = 'edited later' WHERE id = 't1'");
    const ba = a.push();
    const bb = b.push();
    a.pull(bb);
    b.pull(ba);
    expectConverged(a, b);
    expect(b.get("SELECT count(*) FROM transactions WHERE id = 't1'")).toBe(0);
    expect(b.get("SELECT count(*) FROM transaction_tags WHERE transaction_id = 't1'")).toBe(0);
    expect(a.conflicts()).toEqual([expect.objectContaining({ col: 'memo', remote_val: 'edited later', winner: 'local', rule: 'delete-wins' })]);
    expect(b.conflicts()).toEqual([expect.objectContaining({ col: 'memo', local_val: 'edited later', winner: 'remote', rule: 'delete-wins' })]);
  });

  it('delete vs update, update first: the delete wins, in either delivery order', () => {
    for (const order of ['a-first', 'b-first']) {
      const a = new Device(A_ID);
      const b = new Device(B_ID);
      const c = new Device(C_ID);
      b.write(T + 1000, "UPDATE transactions SET memo = 'edited first' WHERE id = 't1'");
      a.write(T + 2000, "DELETE FROM transactions WHERE id = 't1'");
      const batches: [Device, Change[]][] = [[a, a.push()], [b, b.push()]];
      if (order === 'b-first') batches.reverse();
      deliver([a, b, c], batches);
      expectConverged(a, b, c);
      expect(c.get("SELECT count(*) FROM transactions WHERE id = 't1'")).toBe(0);
    }
  });

  it('a re-insert newer than the delete brings the row back, keeping updates newer than it', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    const c = new Device(C_ID);
    a.write(T + 1000, "DELETE FROM transactions WHERE id = 't1'");
    const del = a.push();
    c.pull(del);
    // C saw the delete and puts the row back; B, unaware, edits the memo later still.
    c.write(T + 2000, "INSERT INTO transactions (id, account_id, date, amount, memo, created_at, updated_at) VALUES ('t1', 'acc-1', '2026-01-02', -1250, 'restored', 'c', 'u')");
    b.write(T + 3000, "UPDATE transactions SET memo = 'B memo', amount = -1 WHERE id = 't1'");
    const ins = c.push();
    const upd = b.push();
    // Different orders on each device.
    a.pull(upd);
    a.pull(ins);
    b.pull(del);
    b.pull(ins);
    c.pull(upd);
    expectConverged(a, b, c);
    expect(a.db.prepare("SELECT memo, amount FROM transactions WHERE id = 't1'").get()).toEqual({ memo: 'B memo', amount: -1 });
    // C had seen the delete: its re-insert is no conflict (docs/MERGE.md §5a); B's update, made without seeing it, is.
    expect(a.conflicts().map((x) => x.rule)).not.toContain('reinsert');
    expect(b.conflicts().map((x) => x.rule)).toContain('delete-wins');
    for (const col of ['memo', 'amount', 'date']) {
      expect(a.clock('transactions', '["t1"]', col)).toBe(b.clock('transactions', '["t1"]', col));
      expect(b.clock('transactions', '["t1"]', col)).toBe(c.clock('transactions', '["t1"]', col));
    }
  });

  it('a re-insert made without seeing the other device\'s delete is recorded as one', () => {
    const a = new Device(A_ID);
    const c = new Device(C_ID);
    a.write(T + 1000, "INSERT INTO transactions (id, account_id, date, amount, memo, created_at, updated_at) VALUES ('t9', 'acc-1', '2026-01-02', -5, 'A', 'c', 'u')");
    a.write(T + 1500, "DELETE FROM transactions WHERE id = 't9'");
    // C, which never saw A's row, makes one with the same key.
    c.write(T + 2500, "INSERT INTO transactions (id, account_id, date, amount, memo, created_at, updated_at) VALUES ('t9', 'acc-1', '2026-01-02', -1, 'C', 'c', 'u')");
    deliver([a, c], [[a, a.push()], [c, c.push()]]);
    expectConverged(a, c);
    expect(a.conflicts().map((x) => x.rule)).toEqual(['reinsert']);
  });

  it('insert of the same key on two devices: merged field by field', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    a.write(T + 1000, "INSERT INTO accounts VALUES ('acc-x', 'A name', 'cash', 'EUR', 0, NULL, 0, 'c', 'u')");
    b.write(T + 2000, "INSERT INTO accounts VALUES ('acc-x', 'B name', 'credit', 'USD', 100, 'DE99', 0, 'c', 'u')");
    a.write(T + 3000, "UPDATE accounts SET name = 'A renamed' WHERE id = 'acc-x'");
    deliver([a, b], [[a, a.push()], [b, b.push()]]);
    expectConverged(a, b);
    expect(b.db.prepare("SELECT name, type, currency, iban FROM accounts WHERE id = 'acc-x'").get()).toEqual({
      name: 'A renamed',
      type: 'credit',
      currency: 'USD',
      iban: 'DE99',
    });
    expect(a.conflicts().every((x) => x.rule === 'lww')).toBe(true);
    expect(a.conflicts().length).toBeGreaterThan(0);
  });

  it('tag add vs remove: the newest of add and remove decides (LWW element set)', () => {
    for (const [removeAt, present] of [
      [T + 1500, 1],
      [T + 2500, 0],
    ] as const) {
      const a = new Device(A_ID);
      const b = new Device(B_ID);
      a.write(T + 1000, "INSERT INTO transaction_tags VALUES ('t2', 'trip')");
      b.write(T + 2000, "INSERT INTO transaction_tags VALUES ('t2', 'trip')");
      a.write(removeAt, "DELETE FROM transaction_tags WHERE transaction_id = 't2' AND tag = 'trip'");
      deliver([a, b], [[b, b.push()], [a, a.push()]]);
      expectConverged(a, b);
      expect(a.get("SELECT count(*) FROM transaction_tags WHERE transaction_id = 't2' AND tag = 'trip'")).toBe(present);
      expect([...a.conflicts(), ...b.conflicts()].every((x) => x.rule === 'set-lww')).toBe(true);
      expect(a.conflicts().length + b.conflicts().length).toBeGreaterThan(0);
    }
  });

  it('an offline device catching up: its week-old edit does not beat a newer edit pushed earlier', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    const c = new Device(C_ID);
    c.write(T + 1000, "UPDATE transactions SET memo = 'offline edit' WHERE id = 't1'");
    a.write(T + 5000, "UPDATE transactions SET memo = 'newer edit' WHERE id = 't1'");
    const fromA = a.push();
    b.pull(fromA);
    // A week later C is back: it pulls first (its clock moves past A's change), then pushes.
    const weekLater = T + 7 * 86_400_000;
    c.pull(fromA, weekLater);
    const fromC = c.push();
    expect(parseHlc(fromC[0]!.hlc).wall).toBe(T + 1000);
    a.pull(fromC, weekLater);
    b.pull(fromC, weekLater);
    expectConverged(a, b, c);
    expect(c.get("SELECT memo FROM transactions WHERE id = 't1'")).toBe('newer edit');
    expect(c.conflicts()).toEqual([expect.objectContaining({ local_val: 'offline edit', winner: 'remote' })]);
  });

  it('three-way: three devices editing the same row converge whatever the delivery order', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    const c = new Device(C_ID);
    a.write(T + 1000, "UPDATE transactions SET memo = 'A', amount = 1 WHERE id = 't1'");
    b.write(T + 2000, "UPDATE transactions SET memo = 'B' WHERE id = 't1'");
    c.write(T + 1500, "UPDATE transactions SET amount = 3, cleared = 1 WHERE id = 't1'");
    c.write(T + 1600, "INSERT INTO transaction_tags VALUES ('t1', 'three')");
    b.write(T + 2100, "DELETE FROM transaction_tags WHERE transaction_id = 't1' AND tag = 'kids'");
    const pa = a.push();
    const pb = b.push();
    const pc = c.push();
    a.pull(pc);
    a.pull(pb);
    b.pull(pa);
    b.pull(pc);
    c.pull(pb);
    c.pull(pa);
    expectConverged(a, b, c);
    expect(a.db.prepare("SELECT memo, amount, cleared FROM transactions WHERE id = 't1'").get()).toEqual({ memo: 'B', amount: 3, cleared: 1 });
    expect(a.db.prepare("SELECT tag FROM transaction_tags WHERE transaction_id = 't1'").pluck().all()).toEqual(['three']);
  });

  it('clock skew: a change too far ahead is refused and nothing is applied', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    a.write(T + 1000, "UPDATE transactions SET memo = 'fine' WHERE id = 't1'");
    a.write(T + 6 * MIN + 1, "UPDATE transactions SET memo = 'from the future' WHERE id = 't2'");
    const batch = a.push();
    const before = b.dump();
    const meta = () => b.db.prepare('SELECT * FROM casa_meta ORDER BY key').all();
    const m0 = meta();
    let err: unknown;
    try {
      b.pull(batch, T);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ClockSkewError);
    expect((err as ClockSkewError).skewMs).toBe(6 * MIN + 1);
    expect(b.dump()).toBe(before);
    expect(meta()).toEqual(m0);
    expect(b.get('SELECT count(*) FROM casa_clock')).toBe(0);
    // Within the allowed skew it applies.
    expect(b.pull(batch, T + 6 * MIN + 1 - MAX_SKEW_MS).applied).toBe(2);
  });

  it('pending column from a newer schema: kept, then applied after ALTER TABLE ADD COLUMN', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    a.db.exec('ALTER TABLE transactions ADD COLUMN note TEXT');
    a.schema = deriveSyncSchema(a.db, {});
    installCapture(a.db, a.schema);
    a.write(T + 1000, "UPDATE transactions SET note = 'receipt in drawer', memo = 'REWE 2' WHERE id = 't1'");
    a.write(T + 2000, "INSERT INTO transactions (id, account_id, date, amount, note, created_at, updated_at) VALUES ('t3', 'acc-1', '2026-02-01', 5, 'new row note', 'c', 'u')");
    const batch = a.push();
    expect(b.pull(batch)).toMatchObject({ pending: 2 });
    expect(b.get("SELECT memo FROM transactions WHERE id = 't1'")).toBe('REWE 2');
    expect(b.get("SELECT amount FROM transactions WHERE id = 't3'")).toBe(5);
    expect(b.get('SELECT count(*) FROM casa_pending')).toBe(2);
    // Delivered again: still two kept, not duplicated.
    b.pull(batch);
    expect(b.get('SELECT count(*) FROM casa_pending')).toBe(2);
    b.db.exec('ALTER TABLE transactions ADD COLUMN note TEXT');
    b.schema = deriveSyncSchema(b.db, {});
    installCapture(b.db, b.schema);
    expect(applyPending(b.db, b.schema, { now: T + 3000, localDeviceId: B_ID })).toMatchObject({ applied: 2, pending: 0 });
    expect(b.get('SELECT count(*) FROM casa_pending')).toBe(0);
    expectConverged(a, b);
    expect(b.get("SELECT note FROM transactions WHERE id = 't3'")).toBe('new row note');
  });

  it('duplicate delivery is idempotent: same tables, nothing applied twice, no new audit rows', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    b.write(T + 500, "UPDATE transactions SET memo = 'B' WHERE id = 't2'");
    a.write(T + 1000, "UPDATE transactions SET memo = 'A' WHERE id = 't2'");
    a.write(T + 1100, "DELETE FROM transactions WHERE id = 't1'");
    const first = a.push();
    a.write(T + 1200, "INSERT INTO transaction_tags VALUES ('t2', 'dup')");
    const second = a.push();
    b.pull(second);
    b.pull(first);
    const once = b.dump();
    const audits = b.conflicts().length;
    for (const batch of [first, second, first, [...second, ...first]]) {
      expect(b.pull(batch)).toMatchObject({ applied: 0, conflicts: 0, pending: 0 });
    }
    expect(b.dump()).toBe(once);
    expect(b.conflicts().length).toBe(audits);
    b.pull(b.push());
    a.pull(b.push());
    expectConverged(a, b);
  });

  it('applies with foreign keys off and restores the setting; applied changes do not echo', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    a.write(T + 1000, "DELETE FROM transactions WHERE id = 't1'");
    b.write(T + 900, "INSERT INTO transaction_tags VALUES ('t1', 'late')");
    b.pull(a.push());
    expect(b.db.pragma('foreign_keys', { simple: true })).toBe(1);
    // B's tag add was concurrent with the delete: it stays (set rule), pointing at a deleted row, on both.
    a.pull(b.push());
    expectConverged(a, b);
    expect(a.get("SELECT count(*) FROM transaction_tags WHERE transaction_id = 't1'")).toBe(1);
    expect(b.push()).toEqual([]);
  });
});

describe('conflicts that are conflicts (docs/MERGE.md §5a)', () => {
  const amount = (d: Device) => d.get("SELECT amount FROM transactions WHERE id = 't3'");
  const insertT3 = "INSERT INTO transactions (id, account_id, date, amount, memo, created_at, updated_at) VALUES ('t3', 'acc-1', '2026-02-01', -1250, 'Bahn', 'c', 'u')";

  it('an edit of a value the writer had seen merges silently, on every device', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    a.write(T + 1000, insertT3);
    b.pull(a.push());
    b.write(T + 2000, "UPDATE transactions SET amount = -1300 WHERE id = 't3'");
    const fromB = b.push();
    expect(fromB[0]!.seen).toBeDefined();
    expect(a.pull(fromB)).toEqual({ applied: 1, ignored: 0, conflicts: 0, pending: 0 });
    expect(amount(a)).toBe(-1300);
    // And back: A edits B's value after seeing it, B merges silently too.
    a.write(T + 3000, "UPDATE transactions SET amount = -1400 WHERE id = 't3'");
    expect(b.pull(a.push()).conflicts).toBe(0);
    expectConverged(a, b);
    expect(a.conflicts()).toEqual([]);
    expect(b.conflicts()).toEqual([]);
  });

  it('edits made without seeing each other are exactly one conflict on each device, whoever wins', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    a.write(T + 1000, insertT3);
    b.pull(a.push());
    a.write(T + 2000, "UPDATE transactions SET amount = -1 WHERE id = 't3'");
    b.write(T + 3000, "UPDATE transactions SET amount = -2 WHERE id = 't3'");
    const fa = a.push();
    const fb = b.push();
    expect(a.pull(fb).conflicts).toBe(1);
    expect(b.pull(fa).conflicts).toBe(1);
    expectConverged(a, b);
    expect(a.conflicts()).toMatchObject([{ col: 'amount', winner: 'remote', rule: 'lww' }]);
    expect(b.conflicts()).toMatchObject([{ col: 'amount', winner: 'local', rule: 'lww' }]);
  });

  it('what was seen is transitive: an edit built on an edit of A\'s value is no conflict for A, whatever the delivery order', () => {
    for (const order of ['in order', 'C first'] as const) {
      const a = new Device(A_ID);
      const b = new Device(B_ID);
      const c = new Device(C_ID);
      a.write(T + 1000, "UPDATE transactions SET memo = 'A' WHERE id = 't1'");
      const fa = a.push();
      b.pull(fa);
      b.write(T + 2000, "UPDATE transactions SET memo = 'B' WHERE id = 't1'");
      const fb = b.push();
      c.pull(fb); // C never gets A's batch before writing
      c.write(T + 3000, "UPDATE transactions SET memo = 'C' WHERE id = 't1'");
      const fc_ = c.push();
      if (order === 'in order') {
        a.pull(fb);
        a.pull(fc_);
      } else {
        a.pull(fc_);
        a.pull(fb);
      }
      c.pull(fa);
      b.pull(fc_);
      expectConverged(a, b, c);
      expect(a.get("SELECT memo FROM transactions WHERE id = 't1'")).toBe('C');
      for (const d of [a, b, c]) expect(d.conflicts(), `${order} ${d.id}`).toEqual([]);
    }
  });

  it('a batch delivered again after an edit built on it records nothing', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    b.write(T + 1000, "UPDATE transactions SET memo = 'B' WHERE id = 't1'");
    const fb = b.push();
    a.pull(fb);
    a.write(T + 2000, "UPDATE transactions SET memo = 'A after B' WHERE id = 't1'");
    a.push();
    expect(a.pull(fb)).toMatchObject({ applied: 0, conflicts: 0 });
    expect(a.conflicts()).toEqual([]);
  });

  it('a tag removed and added again after seeing the removal is no set conflict; concurrently, one', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    a.write(T + 1000, "DELETE FROM transaction_tags WHERE transaction_id = 't1' AND tag = 'kids'");
    b.pull(a.push());
    b.write(T + 2000, "INSERT INTO transaction_tags VALUES ('t1', 'kids')");
    expect(a.pull(b.push()).conflicts).toBe(0);
    // Concurrently: A adds a tag and removes it; B, not knowing, adds the same tag.
    a.write(T + 3000, "INSERT INTO transaction_tags VALUES ('t1', 'new')");
    a.write(T + 3500, "DELETE FROM transaction_tags WHERE transaction_id = 't1' AND tag = 'new'");
    b.write(T + 4000, "INSERT INTO transaction_tags VALUES ('t1', 'new')");
    const fa = a.push();
    const fb = b.push();
    a.pull(fb);
    b.pull(fa);
    expectConverged(a, b);
    expect(a.get("SELECT count(*) FROM transaction_tags WHERE transaction_id = 't1' AND tag = 'new'")).toBe(1);
    expect(b.conflicts().map((x) => x.rule)).toEqual(['set-lww']);
    expect(a.conflicts().map((x) => x.rule)).toEqual(['set-lww']);
  });

  it('a batch from before vectors keeps the old rule: any two devices\' different values are recorded', () => {
    const a = new Device(A_ID);
    const b = new Device(B_ID);
    a.write(T + 1000, insertT3);
    b.pull(a.push());
    b.write(T + 2000, "UPDATE transactions SET amount = -1300 WHERE id = 't3'");
    const old = b.push().map(({ seen: _, ...c }) => c);
    expect(encodeChanges(old)[0]).toBe(1);
    expect(a.pull(decodeChanges(encodeChanges(old))).conflicts).toBe(1);
    expect(amount(a)).toBe(-1300);
  });
});
