/**
 * Convergence (docs/MERGE.md §5: the same changes in any order, any number
 * of times, give identical tables on every device), as a fast-check property.
 *
 * 3 or 4 devices, each an in-memory copy of one baseline database (the
 * bench's schema, capture installed), make random edits through plain SQL —
 * inserts (keys drawn from a small pool, so two devices insert the same
 * key), field updates, deletes, key changes, tag adds and removes — at random
 * per-device wall clocks (skewed, jumping back). Pushed batches reach the
 * other devices in random order, duplicated, delayed, or not at all while a
 * link is partitioned; at the end the partitions heal and every device gets
 * everything (again, in another order). Then every device must hold
 * byte-identical synced tables and the same merge state: the same row
 * markers, the same winning HLC for every field of a present row, and so the
 * same winner for every field any device's audit decided.
 *
 * Conflicts that are conflicts (docs/MERGE.md §5a): the model tracks what
 * each write's device had seen when it wrote (directly or through the
 * writes it saw), and checks that no decision is ever recorded between two
 * writes one of which had seen the other, and that every field update
 * meeting a different value written without seeing it (or that value
 * written without seeing the update) is recorded, exactly as that pair.
 *
 * 200 cases by default, 10,000 under SLOW=1 (CASA_RUNS overrides); fast-check
 * prints the seed and path of a failure: CASA_SEED=<seed> CASA_PATH=<path> replays it.
 */
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error -- plain JS module of the bench
import { SCHEMA } from '../../bench/lib/make-db.mjs';
import { detachCapture, detachedSince, installCapture } from '../../src/changesets/capture.js';
import type { Change } from '../../src/changesets/change.js';
import { decodeChanges, encodeChanges } from '../../src/changesets/change-codec.js';
import { dropLocalChanges, stampLocal, takeLocalChanges } from '../../src/changesets/change-log.js';
import { decodePk } from '../../src/changesets/pk-text.js';
import { applyRemote, listConflicts, pendingRemoteCount } from '../../src/changesets/merge.js';
import { refreshCapture } from '../../src/changesets/refresh.js';
import { deriveSyncSchema, type SyncSchema } from '../../src/changesets/rules.js';

const RUNS = process.env.SLOW === '1' ? Number(process.env.CASA_RUNS ?? 10_000) : 200;
const SEED = process.env.CASA_SEED === undefined ? undefined : Number(process.env.CASA_SEED);
const PATH = process.env.CASA_PATH;
const T0 = 1_795_000_000_000;
const SKEW = 10 * 60_000;
const SYNCED = ['accounts', 'budgets', 'transactions', 'transaction_tags'];
const DECL = { tables: { categories: 'snapshot-only', payees: 'snapshot-only', rules: 'snapshot-only' } } as const;
/** The app's migrations, applied in order on each device at its own moment. */
const MIGRATIONS = [
  'ALTER TABLE transactions ADD COLUMN category TEXT',
  "ALTER TABLE accounts ADD COLUMN color TEXT NOT NULL DEFAULT 'blue'",
  'CREATE TABLE budgets (id TEXT PRIMARY KEY, amount INTEGER, note TEXT)',
  // A drop SQLite refuses while a trigger reads the column: run detached (`casa sync --detach`), as Actual Budget's own update needs.
  'ALTER TABLE transactions DROP COLUMN category; ALTER TABLE transactions ADD COLUMN category TEXT',
];
/** Migrations the device runs with capture detached; any refresh attaches again. */
const DETACHED = new Set([3]);
const IDS = ['00000000000000a1', '00000000000000b2', '00000000000000c3', '00000000000000d4'];

/** Where detaches keep their copies (each removed by the attach that reads it). */
const COPIES = mkdtempSync(join(tmpdir(), 'casa-convergence-'));
afterAll(() => rmSync(COPIES, { recursive: true, force: true }));

let BASE: Buffer;
let SCHEMA_OF: SyncSchema;

beforeAll(() => {
  const db = new Database(':memory:');
  db.exec(SCHEMA);
  db.exec(`
    INSERT INTO accounts VALUES ('a1', 'Giro', 'checking', 'EUR', 0, NULL, 0, 'c', 'u');
    INSERT INTO transactions (id, account_id, date, amount, memo, created_at, updated_at)
      VALUES ('t1', 'a1', '2026-01-02', -1250, 'REWE', 'c', 'u');
    INSERT INTO transaction_tags VALUES ('t1', 'x');`);
  // Only the subset syncs; the other bench tables stay local.
  SCHEMA_OF = deriveSyncSchema(db, DECL);
  installCapture(db, SCHEMA_OF);
  BASE = db.serialize();
  db.close();
});

// ---------------------------------------------------------------- the model

const dev = fc.nat(3);
const txKey = fc.constantFrom('t1', 't2', 't3');
const accKey = fc.constantFrom('a1', 'a2');
const tag = fc.constantFrom('x', 'y');
const memo = fc.constantFrom<unknown>('a', 'b', 'ü', null, 1.5, Buffer.from([0, 255]));
const amount = fc.constantFrom<unknown>(0n, -5n, 2n ** 62n, 9223372036854775807n, 1.5);

const edit = fc.oneof(
  fc.record({ k: fc.constant('insTx' as const), d: dev, key: txKey, acc: accKey, amount, memo }),
  fc.record({ k: fc.constant('insAcc' as const), d: dev, key: accKey, name: fc.constantFrom('A', 'B') }),
  { arbitrary: fc.record({ k: fc.constant('updTx' as const), d: dev, key: txKey, col: fc.constantFrom('memo', 'amount', 'cleared'), v: fc.oneof(memo, amount) }), weight: 3 },
  fc.record({ k: fc.constant('updAcc' as const), d: dev, key: accKey, name: fc.constantFrom('C', 'D') }),
  fc.record({ k: fc.constant('delTx' as const), d: dev, key: txKey }),
  fc.record({ k: fc.constant('delAcc' as const), d: dev, key: accKey }),
  fc.record({ k: fc.constant('rekey' as const), d: dev, from: txKey, to: txKey }),
  { arbitrary: fc.record({ k: fc.constant('tagAdd' as const), d: dev, key: txKey, tag }), weight: 2 },
  { arbitrary: fc.record({ k: fc.constant('tagDel' as const), d: dev, key: txKey, tag }), weight: 2 },
  { arbitrary: fc.record({ k: fc.constant('migrate' as const), d: dev }), weight: 2 },
  // The user detaches capture and the app writes on before the next casa command attaches it.
  fc.record({ k: fc.constant('detach' as const), d: dev }),
  // Writes to what the migrations add (skipped on a device that has not migrated that far).
  { arbitrary: fc.record({ k: fc.constant('updCat' as const), d: dev, key: txKey, v: fc.constantFrom<unknown>('food', 'rent', null, 7n) }), weight: 2 },
  fc.record({ k: fc.constant('updColor' as const), d: dev, key: accKey, v: fc.constantFrom('red', 'blue') }),
  { arbitrary: fc.record({ k: fc.constant('putBudget' as const), d: dev, key: fc.constantFrom('b1', 'b2'), v: fc.constantFrom(100n, 200n) }), weight: 2 },
);
const net = fc.oneof(
  { arbitrary: fc.record({ k: fc.constant('push' as const), d: dev }), weight: 3 },
  { arbitrary: fc.record({ k: fc.constant('sync' as const), d: dev }), weight: 2 },
  { arbitrary: fc.record({ k: fc.constant('deliver' as const), from: dev, to: dev, pick: fc.nat(), all: fc.boolean() }), weight: 4 },
  fc.record({ k: fc.constant('partition' as const), a: dev, b: dev }),
  fc.record({ k: fc.constant('heal' as const) }),
);
const step = fc.record({ dt: fc.nat(3000), jitter: fc.integer({ min: -2000, max: 2000 }), op: fc.oneof({ arbitrary: edit, weight: 3 }, { arbitrary: net, weight: 2 }) });
const scenario = fc.record({
  n: fc.integer({ min: 3, max: 4 }),
  offsets: fc.array(fc.integer({ min: -90_000, max: 90_000 }), { minLength: 4, maxLength: 4 }),
  steps: fc.array(step, { minLength: 4, maxLength: 24 }).filter((s) => s.filter((x) => !['push', 'sync', 'deliver', 'partition', 'heal'].includes(x.op.k)).length <= 14),
  finalOrder: fc.array(fc.nat(), { minLength: 8, maxLength: 8 }),
});

type Scenario = typeof scenario extends fc.Arbitrary<infer S> ? S : never;

interface Node {
  db: Database.Database;
  id: string;
  outbox: Change[][];
  state: { wall: number; counter: number };
  /** The synced schema as of the device's last refresh. */
  schema: SyncSchema;
  /** How many of MIGRATIONS the app ran here. */
  migrated: number;
  /** Every write this device has seen (its own, received, and what those had seen): HLCs. */
  known: Set<string>;
}

/** What each write's device had seen when it wrote (its stamping pass): HLC → the HLCs it knew. */
let knownAt = new Map<string, Set<string>>();
/** How many field updates the completeness check judged, concurrent and not: it must judge some of each. */
const judged = { concurrent: 0, sequential: 0 };

/** Records what the writes stamped since the last call had seen: all that this device knew before them. */
function noteStamped(n: Node): void {
  const hlcs = n.db.prepare('SELECT DISTINCT hlc FROM casa_changes WHERE hlc IS NOT NULL').pluck().all() as string[];
  const fresh = hlcs.filter((h) => !knownAt.has(h));
  if (fresh.length === 0) return;
  const before = new Set(n.known);
  for (const h of fresh) knownAt.set(h, before);
  for (const h of fresh) n.known.add(h);
}

/** True when the write `b` had seen the write `a` (transitively). */
function hadSeen(b: string, a: string): boolean {
  const k = knownAt.get(b);
  expect(k, `a write nobody stamped: ${b}`).toBeDefined();
  return k!.has(a);
}

/** What every casa command does first: capture in step with the schema, the app's missed writes caught up. */
function refresh(n: Node, now: number): void {
  const r = refreshCapture(n.db, DECL, { now, deviceId: n.id });
  noteStamped(n);
  n.schema = r.schema;
  for (const c of r.refresh.caughtUp) caughtUp[c.what] += c.rows;
}
/** Rows caught up across all runs: the property must really exercise the catch-up. */
const caughtUp = { rows: 0, columns: 0, writes: 0 };

/** `casa sync --detach`: copies taken, triggers gone until the next refresh (a no-op while detached). */
function detach(n: Node, now: number): void {
  if (detachedSince(n.db) === null) detachCapture(n.db, n.schema, { now, copyPath: join(COPIES, `${n.id}-${process.hrtime.bigint()}.db`) });
}

function migrate(n: Node, now: number): void {
  if (n.migrated >= MIGRATIONS.length) return;
  if (DETACHED.has(n.migrated)) detach(n, now);
  n.db.exec(MIGRATIONS[n.migrated++]!);
}

/** An app write at wall time `wall`; a write SQLite refuses (constraint) simply does not happen. */
function write(n: Node, wall: number, sql: string, ...params: unknown[]): void {
  const before = n.db.prepare('SELECT ifnull(max(seq), 0) FROM casa_changes').pluck().get() as number;
  try {
    n.db.prepare(sql).run(...params);
  } catch (err) {
    if (!/constraint/i.test((err as Error).message)) throw err;
  }
  n.db.prepare('UPDATE casa_changes SET wall = ? WHERE hlc IS NULL AND seq > ?').run(wall, before);
}

function push(n: Node, now: number): void {
  refresh(n, now);
  const t = takeLocalChanges(n.db, { deviceId: n.id, state: n.state, limit: 1000 });
  noteStamped(n);
  if (t.changes.length === 0) return;
  dropLocalChanges(n.db, t.uptoSeq);
  n.state = t.state;
  n.outbox.push(decodeChanges(encodeChanges(t.changes)));
}

/** A field update of the batch that the completeness check can judge alone: what the field held before it. */
interface Judged {
  c: Change;
  local: string;
  differs: boolean;
}

/**
 * The field updates of a batch that meet another device's value above the
 * row's delete, on a present row, alone in the batch for their row: what
 * they met, read before the merge.
 */
function toJudge(n: Node, batch: Change[]): Judged[] {

  const rows = new Map<string, number>();
  for (const c of batch) rows.set(`${c.tbl} ${c.pk}`, (rows.get(`${c.tbl} ${c.pk}`) ?? 0) + 1);
  const out: Judged[] = [];
  for (const c of batch) {
    if (c.op !== 'u' || rows.get(`${c.tbl} ${c.pk}`) !== 1) continue;
    const t = n.schema.tables.find((x) => x.name === c.tbl);
    if (!t || t.kind !== 'lww' || !t.columns.includes(c.col!)) continue;
    const clock = n.db.prepare('SELECT col, hlc FROM casa_clock WHERE tbl = ? AND pk = ?').all(c.tbl, c.pk) as { col: string; hlc: string }[];
    const local = clock.find((x) => x.col === c.col)?.hlc ?? '';
    const del = clock.find((x) => x.col === '-')?.hlc ?? '';
    if (local === '' || local === c.hlc || local <= del || local.slice(16) === c.hlc.slice(16)) continue;
    const where = t.pk.map((k) => `"${k}" IS ?`).join(' AND ');
    const cur = n.db.prepare(`SELECT quote("${c.col}") FROM "${t.name}" WHERE ${where}`).pluck().get(...decodePk(c.pk)) as string | undefined;
    if (cur === undefined) continue;
    const val = c.val instanceof Uint8Array ? Buffer.from(c.val) : c.val;
    out.push({ c, local, differs: cur !== (n.db.prepare('SELECT quote(?)').pluck().get(val) as string) });
  }
  return out;
}

function pull(n: Node, batch: Change[], now: number): void {
  refresh(n, now);
  // The merge stamps this device's unstamped writes first and meets their clocks, not the ones they replace
  // (an app write after the last stamp, e.g. a late write to a new column): judge against the same.
  n.db.transaction(() => stampLocal(n.db, n.id))();
  noteStamped(n);
  const judge = toJudge(n, batch);
  applyRemote(n.db, n.schema, batch, { now, localDeviceId: n.id, maxSkewMs: SKEW });
  noteStamped(n);
  for (const c of batch) {
    n.known.add(c.hlc);
    for (const h of knownAt.get(c.hlc) ?? []) n.known.add(h);
  }
  const recorded = n.db.prepare('SELECT 1 FROM casa_conflicts WHERE tbl = ? AND pk = ? AND col = ? AND local_hlc = ? AND remote_hlc = ?').pluck();
  for (const { c, local, differs } of judge) {
    const concurrent = !hadSeen(c.hlc, local) && !hadSeen(local, c.hlc);
    if (differs) judged[concurrent ? 'concurrent' : 'sequential']++;
    const got = recorded.get(c.tbl, c.pk, c.col, local, c.hlc) !== undefined;
    expect(got, `${c.tbl} ${c.pk} ${c.col}: ${local} met ${c.hlc} on ${n.id}, concurrent: ${concurrent}`).toBe(differs && concurrent);
  }
}

function dump(db: Database.Database, schema: SyncSchema): string {
  return SYNCED.map((name) => {
    const t = schema.tables.find((x) => x.name === name)!;
    const cols = [...t.pk, ...t.columns].map((c) => `quote("${c}")`).join(" || ',' || ");
    return `${name}: ${db.prepare(`SELECT ${cols} FROM "${name}" ORDER BY ${t.pk.map((c) => `"${c}"`).join(', ')}`).pluck().all().join(' / ')}`;
  }).join('\n');
}

/** The merge state that must agree: markers of every key; winning HLCs of present rows' fields above the delete marker, held values of absent ones. */
function mergeState(db: Database.Database): Map<string, string> {
  const rows = db.prepare('SELECT tbl, pk, col, hlc, quote(val) AS v FROM casa_clock ORDER BY tbl, pk, col').all() as {
    tbl: string;
    pk: string;
    col: string;
    hlc: string;
    v: string;
  }[];
  const byRow = new Map<string, typeof rows>();
  for (const r of rows) {
    const k = `${r.tbl} ${r.pk}`;
    byRow.set(k, [...(byRow.get(k) ?? []), r]);
  }
  const out = new Map<string, string>();
  for (const [k, rs] of byRow) {
    const ins = rs.find((r) => r.col === '+')?.hlc ?? '';
    const del = rs.find((r) => r.col === '-')?.hlc ?? '';
    out.set(`${k} +`, ins);
    out.set(`${k} -`, del);
    const present = ins === '' && del === '' ? null : ins > del;
    for (const r of rs) {
      if (r.col === '+' || r.col === '-') continue;
      if (present === false) {
        if (r.hlc > del) out.set(`${k} ${r.col}`, `${r.hlc} ${r.v}`);
      } else if (r.hlc > del) out.set(`${k} ${r.col}`, r.hlc);
      // A present row's field clocked at or below its delete marker merges exactly as one
      // without a clock (a write must beat the marker anyway): a re-insert made with an older
      // schema leaves the columns it did not know unclocked on its own device, at the
      // delete's HLC on the others.
    }
  }
  return out;
}

function run(s: Scenario): void {
  const nodes: Node[] = IDS.slice(0, s.n).map((id) => {
    const db = new Database(BASE);
    db.pragma('foreign_keys = ON');
    return { db, id, outbox: [], state: { wall: 0, counter: 0 }, schema: SCHEMA_OF, migrated: 0, known: new Set<string>() };
  });
  knownAt = new Map();
  const blocked = new Set<string>();
  let t = T0;
  const clock = (d: number, jitter: number) => Math.max(0, t + s.offsets[d]! + jitter);
  try {
    for (const { dt, jitter, op } of s.steps) {
      t += dt;
      if (op.k === 'push') push(nodes[op.d % s.n]!, clock(op.d % s.n, jitter));
      else if (op.k === 'sync') {
        // What `casa sync` does: pull everything reachable, then push.
        const d = op.d % s.n;
        nodes.forEach((from, i) => {
          if (i !== d && !blocked.has(`${i}>${d}`)) for (const b of from.outbox) pull(nodes[d]!, b, clock(d, jitter));
        });
        push(nodes[d]!, clock(d, jitter));
      }
      else if (op.k === 'deliver') {
        const from = nodes[op.from % s.n]!;
        const to = op.to % s.n;
        if (from === nodes[to] || from.outbox.length === 0 || blocked.has(`${op.from % s.n}>${to}`)) continue;
        const batches = op.all ? from.outbox : [from.outbox[op.pick % from.outbox.length]!];
        for (const b of batches) pull(nodes[to]!, b, clock(to, jitter));
      } else if (op.k === 'partition') {
        blocked.add(`${op.a % s.n}>${op.b % s.n}`);
        blocked.add(`${op.b % s.n}>${op.a % s.n}`);
      } else if (op.k === 'heal') blocked.clear();
      else {
        const d = op.d % s.n;
        const n = nodes[d]!;
        const w = clock(d, jitter);
        if (op.k === 'insTx') {
          write(n, w, "INSERT INTO transactions (id, account_id, date, amount, memo, created_at, updated_at) VALUES (?, ?, '2026', ?, ?, 'c', 'u')", op.key, op.acc, op.amount, op.memo);
        } else if (op.k === 'insAcc') write(n, w, "INSERT INTO accounts (id, name, type, currency, opening_balance, iban, closed, created_at, updated_at) VALUES (?, ?, 'cash', 'EUR', 0, NULL, 0, 'c', 'u')", op.key, op.name);
        else if (op.k === 'updTx') write(n, w, `UPDATE transactions SET ${op.col} = ? WHERE id = ?`, op.v, op.key);
        else if (op.k === 'updAcc') write(n, w, 'UPDATE accounts SET name = ? WHERE id = ?', op.name, op.key);
        else if (op.k === 'delTx') write(n, w, 'DELETE FROM transactions WHERE id = ?', op.key);
        else if (op.k === 'delAcc') write(n, w, 'DELETE FROM accounts WHERE id = ?', op.key);
        else if (op.k === 'rekey') write(n, w, 'UPDATE transactions SET id = ? WHERE id = ?', op.to, op.from);
        else if (op.k === 'tagAdd') write(n, w, 'INSERT OR IGNORE INTO transaction_tags VALUES (?, ?)', op.key, op.tag);
        else if (op.k === 'tagDel') write(n, w, 'DELETE FROM transaction_tags WHERE transaction_id = ? AND tag = ?', op.key, op.tag);
        else if (op.k === 'migrate') migrate(n, w);
        else if (op.k === 'detach') detach(n, w);
        else if (op.k === 'updCat' && n.migrated >= 1) write(n, w, 'UPDATE transactions SET category = ? WHERE id = ?', op.v, op.key);
        else if (op.k === 'updColor' && n.migrated >= 2) write(n, w, 'UPDATE accounts SET color = ? WHERE id = ?', op.v, op.key);
        else if (op.k === 'putBudget' && n.migrated >= 3) {
          write(n, w, 'INSERT INTO budgets (id, amount) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET amount = excluded.amount', op.key, op.v);
        }
      }
    }
    // Heal: each device in turn pulls what is out there (in a rotated order) and then pushes
    // what it has left, as `casa sync` does; then every device gets every batch again, reversed.
    t += 1000;
    // The app update reaches every device (its writes to the new parts right after, before casa notices).
    for (const [d, n] of nodes.entries()) {
      // The added columns, written right after (their catch-up); then the new table and the detached migration.
      while (n.migrated < 2) migrate(n, clock(d, 0));
      write(n, clock(d, 0), 'UPDATE accounts SET color = ? WHERE id = ?', `late-${d}`, 'a1');
      refresh(n, clock(d, 0));
      while (n.migrated < MIGRATIONS.length) migrate(n, clock(d, 0));
      write(n, clock(d, 0), 'UPDATE transactions SET category = ? WHERE id = ?', `late-${d}`, 't2');
      write(n, clock(d, 0), 'INSERT INTO budgets (id, amount) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET amount = excluded.amount', 'b2', BigInt(300 + d));
    }
    const others = (d: number) => nodes.flatMap((n, i) => (i === d ? [] : n.outbox));
    nodes.forEach((n, d) => {
      const theirs = others(d);
      const k = s.finalOrder[d]! % (theirs.length + 1);
      for (const b of [...theirs.slice(k), ...theirs.slice(0, k)]) pull(n, b, clock(d, 0));
      push(n, clock(d, 0));
    });
    // The last device to sync has seen every late write: its edit of them is sequential everywhere.
    const last = nodes[nodes.length - 1]!;
    write(last, clock(nodes.length - 1, 0) + 1, 'UPDATE accounts SET color = ? WHERE id = ?', 'seen-all', 'a1');
    push(last, clock(nodes.length - 1, 0) + 1);
    nodes.forEach((n, d) => {
      for (const b of others(d).reverse()) pull(n, b, clock(d, 0));
    });
    for (const n of nodes) {
      expect(takeLocalChanges(n.db, { deviceId: n.id, state: n.state, limit: 10 }).changes).toEqual([]);
      expect(pendingRemoteCount(n.db)).toBe(0);
    }

    const tables = nodes.map((n) => dump(n.db, n.schema));
    for (const d of tables.slice(1)) expect(d).toBe(tables[0]);
    const states = nodes.map((n) => mergeState(n.db));
    for (const st of states.slice(1)) expect(Object.fromEntries(st)).toEqual(Object.fromEntries(states[0]!));
    // Every field any audit decided has the same winner everywhere; no decision is between a write and one it had seen.
    for (const n of nodes) {
      for (const c of listConflicts(n.db, { limit: 10_000 })) {
        if (c.local_hlc !== null) {
          const sequential = hadSeen(c.remote_hlc, c.local_hlc) || hadSeen(c.local_hlc, c.remote_hlc);
          expect(sequential, `${c.rule} ${c.tbl} ${c.pk} ${c.col}: ${c.local_hlc} / ${c.remote_hlc} on ${n.id}`).toBe(false);
        }
        const key = `${c.tbl} ${c.pk} ${c.col ?? '+'}`;
        const winners = states.map((st) => st.get(key));
        expect(new Set(winners).size, key).toBe(1);
      }
    }
  } finally {
    for (const n of nodes) n.db.close();
  }
}

describe('convergence', () => {
  it(`3-4 devices, random edits, clocks and delivery: identical tables and decisions (${RUNS} runs)`, () => {
    fc.assert(
      fc.property(scenario, (s) => run(s)),
      { numRuns: RUNS, seed: SEED, path: PATH, endOnFailure: true },
    );
    if (PATH === undefined) {
      expect(caughtUp.rows).toBeGreaterThan(0);
      expect(caughtUp.columns).toBeGreaterThan(0);
      expect(caughtUp.writes).toBeGreaterThan(0);
      expect(judged.concurrent).toBeGreaterThan(0);
      expect(judged.sequential).toBeGreaterThan(0);
    }
  }, 600_000);

  it('a concurrent edit, delete and re-insert of one row, in every delivery order', () => {
    // The delete-vs-update-vs-reinsert corner, exhaustively: all 6 orders on a fourth device.
    const steps = [
      { dt: 10, jitter: 0, op: { k: 'delTx' as const, d: 0, key: 't1' as const } },
      { dt: 10, jitter: 0, op: { k: 'push' as const, d: 0 } },
      { dt: 10, jitter: 0, op: { k: 'deliver' as const, from: 0, to: 2, pick: 0, all: true } },
      { dt: 10, jitter: 0, op: { k: 'insTx' as const, d: 2, key: 't1' as const, acc: 'a1' as const, amount: 7n, memo: 'back' } },
      { dt: 10, jitter: 0, op: { k: 'updTx' as const, d: 1, key: 't1' as const, col: 'memo' as const, v: 'edit' } },
    ];
    for (let k = 0; k < 8; k++) run({ n: 4, offsets: [0, 500, -500, 0], steps, finalOrder: [k, k + 1, k + 2, k + 3, 0, 0, 0, 0] });
  });
});
