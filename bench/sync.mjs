#!/usr/bin/env node
// Changeset sync (issue: "Changeset sync"), measured in one run and printed as
// ratios to the targets (never as timed unit tests):
//
//   latency   a field changed on device A is in device B's database: both run
//             `casa sync --watch` on a local relay; the bench writes one field
//             on A (a plain SQLite write, as the app would) and polls B's file
//             until the value is there. p50 and p95 over --edits (200) edits.
//             Target p50 < 300 ms.
//   apply     B applies 100,000 remote field changes: A updates 100,000
//             fields and pushes them; B's `casa sync` (one pull round: download,
//             check, decrypt, merge in one transaction) is timed. Target < 2 s.
//   triggers  the app's writes with capture installed / the same writes
//             without (a copy of the same database): single-row UPDATEs in
//             autocommit and 20,000 UPDATEs in one transaction, 2,000 INSERTs in
//             autocommit and 10,000 in one transaction.
//             Target ≤ 2.5× (cr-sqlite's published bound).
//   detach    an app update that drops a column: `casa sync --detach` (copy
//             the synced tables) and `casa sync --attach` after 1% of the
//             transactions were edited (compare with the copy, log the
//             writes), each as a whole command, on a --detach-mb (100) MiB
//             database, against `sqlite3 DB "VACUUM INTO ..."` (a full copy
//             by SQLite's own shell) timed in the same run. Target ≤ 2× each.
//
// The database is the bench's own generator (bench/lib/make-db.mjs), ~8 MiB.
// Everything runs on 127.0.0.1 in a temp directory, removed at the end;
// every step has a timeout and every process is killed on exit.
//
//   node bench/sync.mjs [--edits 200] [--changes 100000] [--detach-mb 100] [--only latency,apply,triggers,detach] [--json]

import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { makeDb } from './lib/make-db.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const CASA = path.join(root, 'bin/casa');

export function parseSyncArgs(argv) {
  const o = { edits: 200, changes: 100_000, detachMb: 100, only: ['latency', 'apply', 'triggers', 'detach'], json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--edits') o.edits = Number(argv[++i]);
    else if (a === '--detach-mb') o.detachMb = Number(argv[++i]);
    else if (a === '--only') o.only = String(argv[++i]).split(',');
    else if (a === '--changes') o.changes = Number(argv[++i]);
    else if (a === '--json') o.json = true;
  }
  if (!(Number.isInteger(o.edits) && o.edits >= 10 && o.edits <= 5000)) throw new Error('--edits takes 10..5000');
  if (!(Number.isInteger(o.changes) && o.changes >= 1000 && o.changes <= 1_000_000)) throw new Error('--changes takes 1000..1000000');
  if (!(Number.isInteger(o.detachMb) && o.detachMb >= 1 && o.detachMb <= 2048)) throw new Error('--detach-mb takes 1..2048');
  for (const b of o.only) if (!['latency', 'apply', 'triggers', 'detach'].includes(b)) throw new Error(`--only: no bench ${b}`);
  return o;
}

const live = new Set();
process.on('exit', () => {
  for (const c of live) {
    try {
      process.kill(-c.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

function percentile(values, p) {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

/** One casa command, timed (ms); a non-zero exit throws with its stderr. Shared with bench/epoch.mjs. */
export function casaSync(env, args, timeoutMs = 120_000) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [CASA, ...args], { env, encoding: 'utf8', timeout: timeoutMs });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`casa ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return { ms, stdout: r.stdout, stderr: r.stderr };
}

function startDetached(args, env) {
  const child = spawn(process.execPath, [CASA, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  live.add(child);
  let err = '';
  child.stderr.on('data', (d) => {
    if (err.length < 65536) err += d;
  });
  return {
    child,
    stderr: () => err,
    async stop() {
      if (child.exitCode === null) {
        try {
          process.kill(-child.pid, 'SIGTERM');
        } catch {
          /* gone */
        }
        const t = setTimeout(() => {
          try {
            process.kill(-child.pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }, 10_000);
        await once(child, 'exit').catch(() => {});
        clearTimeout(t);
      }
      live.delete(child);
    },
  };
}

/** `casa relay` on 127.0.0.1 with its data in `w`: its URL and stop(); killed when the bench exits. Shared with bench/epoch.mjs. */
export async function startRelay(w) {
  const r = startDetached(['relay', '--port', '0', '--host', '127.0.0.1', '--data', path.join(w, 'relay')], {
    ...process.env,
    CASA_HOME: path.join(w, 'relay-home'),
  });
  const url = await new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new Error('relay: no URL within 60 s')), 60_000);
    r.child.stdout.on('data', (d) => {
      buf += d;
      const m = /http:\/\/[\d.]+:\d+/.exec(buf);
      if (m) {
        clearTimeout(t);
        resolve(m[0]);
      }
    });
    r.child.on('exit', (c) => reject(new Error(`relay exited ${c}: ${r.stderr()}`)));
  });
  return { url, stop: r.stop };
}

/** Two paired devices with the same database, capture set up, B restored from A's snapshot. */
export async function twoDevices(w, url, sizeMb = 8) {
  const base = { ...process.env, CASA_KEYSTORE: 'file', CASA_SERVER: url };
  for (const k of ['CASA_HOME', 'CASA_DB']) delete base[k];
  const A = { ...base, CASA_HOME: path.join(w, 'a'), CASA_DB: path.join(w, 'a', 'casa.db') };
  const B = { ...base, CASA_HOME: path.join(w, 'b'), CASA_DB: path.join(w, 'b', 'casa.db') };
  mkdirSync(A.CASA_HOME, { recursive: true });
  mkdirSync(B.CASA_HOME, { recursive: true });
  const phrase = path.join(w, 'phrase.txt');
  casaSync(A, ['pair', '--new', '--phrase-out', phrase, '--device-name', 'bench-a']);
  makeDb({ out: A.CASA_DB, sizeMb, seed: 5 });
  casaSync(A, ['sync', '--quiet']);
  casaSync(A, ['snapshot', '--quiet']);
  casaSync(B, ['restore', '--yes', '--quiet', '--phrase-file', phrase, '--device-name', 'bench-b']);
  rmSync(phrase);
  return { A, B };
}

async function benchLatency(w, url, edits) {
  const { A, B } = await twoDevices(path.join(w, 'lat'), url);
  const wa = startDetached(['sync', '--watch', '--quiet'], A);
  const wb = startDetached(['sync', '--watch', '--quiet'], B);
  try {
    await new Promise((r) => setTimeout(r, 2000));
    const dbA = new Database(A.CASA_DB);
    const dbB = new Database(B.CASA_DB, { readonly: true });
    dbA.pragma('busy_timeout = 5000');
    dbB.pragma('busy_timeout = 5000');
    const ids = dbA.prepare('SELECT id FROM transactions ORDER BY id LIMIT ?').all(edits).map((r) => r.id);
    const write = dbA.prepare('UPDATE transactions SET memo = ? WHERE id = ?');
    const read = dbB.prepare('SELECT memo FROM transactions WHERE id = ?');
    const times = [];
    for (let i = 0; i < edits; i++) {
      const value = `latency ${i} ${Date.now()}`;
      const t0 = process.hrtime.bigint();
      write.run(value, ids[i]);
      const deadline = Date.now() + 15_000;
      for (;;) {
        if (read.get(ids[i])?.memo === value) break;
        if (Date.now() > deadline) throw new Error(`edit ${i} did not reach B within 15 s: ${wb.stderr()}`);
        await new Promise((r) => setTimeout(r, 2));
      }
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    dbA.close();
    dbB.close();
    return { p50: percentile(times, 50), p95: percentile(times, 95), edits };
  } finally {
    await wa.stop();
    await wb.stop();
  }
}

async function benchApply(w, url, changes) {
  const { A, B } = await twoDevices(path.join(w, 'apply'), url, 24);
  const db = new Database(A.CASA_DB);
  // Four fields a row (memo, amount, cleared, updated_at): changes / 4 transactions.
  const rows = db.prepare('SELECT id FROM transactions ORDER BY id LIMIT ?').all(Math.ceil(changes / 4));
  if (rows.length * 4 < changes) throw new Error(`the database has ${rows.length} transactions, too few for ${changes} field changes`);
  const upd = db.prepare("UPDATE transactions SET memo = ?, amount = ?, cleared = 1 - cleared, updated_at = ? WHERE id = ?");
  db.transaction(() => {
    rows.forEach((r, i) => upd.run(`bulk edit ${i}`, -1_000_000 - i, `2031-01-01T00:00:${String(i % 60).padStart(2, '0')}Z`, r.id));
  })();
  db.close();
  const push = casaSync(A, ['sync', '--json']);
  const pushed = JSON.parse(push.stdout).pushed_changes;
  const pull = casaSync(B, ['sync', '--json']);
  const doc = JSON.parse(pull.stdout);
  return { changes: pushed, applied: doc.applied_changes, wall_ms: pull.ms, push_ms: push.ms };
}

async function benchTriggers(w) {
  const { installCapture } = await import(pathToFileURL(path.join(root, 'dist/changesets/capture.js')).href);
  const { deriveSyncSchema } = await import(pathToFileURL(path.join(root, 'dist/changesets/rules.js')).href);
  const dir = path.join(w, 'trig');
  mkdirSync(dir, { recursive: true });
  const plainPath = path.join(dir, 'plain.db');
  makeDb({ out: plainPath, sizeMb: 8, seed: 6 });
  const capPath = path.join(dir, 'captured.db');
  copyFileSync(plainPath, capPath);
  const cap = new Database(capPath);
  installCapture(cap, deriveSyncSchema(cap, {}));
  cap.close();
  // The same database with empty triggers: what any trigger costs the app's
  // statements (SQLite keeps a statement journal for them), casa's capture aside.
  const anyPath = path.join(dir, 'any-trigger.db');
  copyFileSync(plainPath, anyPath);
  const any = new Database(anyPath);
  for (const ev of ['INSERT', 'UPDATE', 'DELETE']) any.exec(`CREATE TRIGGER bench_any_${ev} AFTER ${ev} ON transactions BEGIN SELECT 1; END`);
  any.close();

  const run = (file, fn, memTemp = false) => {
    const db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    if (memTemp) db.pragma('temp_store = MEMORY');
    const ids = db.prepare('SELECT id FROM transactions ORDER BY id LIMIT 20000').all().map((r) => r.id);
    const t0 = process.hrtime.bigint();
    fn(db, ids);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    db.close();
    return ms;
  };
  const cases = {
    'update, autocommit (2,000 statements)': (db, ids) => {
      const u = db.prepare('UPDATE transactions SET memo = ?, amount = ? WHERE id = ?');
      for (let i = 0; i < 2000; i++) u.run(`m${i}`, i, ids[i]);
    },
    'update, one transaction (20,000 rows)': (db, ids) => {
      const u = db.prepare('UPDATE transactions SET memo = ?, amount = ? WHERE id = ?');
      db.transaction(() => {
        for (let i = 0; i < ids.length; i++) u.run(`t${i}`, i, ids[i]);
      })();
    },
    'insert, autocommit (2,000 statements)': (db, ids) => {
      const acct = db.prepare('SELECT id FROM accounts LIMIT 1').get().id;
      const ins = db.prepare(
        "INSERT INTO transactions (id, account_id, date, amount, memo, created_at, updated_at) VALUES (?, ?, '2026-01-01', ?, ?, 'x', 'x')",
      );
      for (let i = 0; i < 2000; i++) ins.run(`auto-${i}-${ids.length}`, acct, i, `new ${i}`);
    },
    'insert, one transaction (10,000 rows)': (db, ids) => {
      const acct = db.prepare('SELECT id FROM accounts LIMIT 1').get().id;
      const ins = db.prepare(
        "INSERT INTO transactions (id, account_id, date, amount, memo, created_at, updated_at) VALUES (?, ?, '2026-01-01', ?, ?, 'x', 'x')",
      );
      db.transaction(() => {
        for (let i = 0; i < 10_000; i++) ins.run(`bench-${i}-${ids.length}`, acct, i, `new ${i}`);
      })();
    },
  };
  const out = [];
  const med = (v) => [...v].sort((a, b) => a - b)[v.length >> 1];
  const measure = (name, fn, memTemp) => {
    // Interleaved, median of 5: machine noise hits all three alike.
    const plain = [];
    const withCap = [];
    const withAny = [];
    for (let rep = 0; rep < 5; rep++) {
      const p = path.join(dir, `p${rep}.db`);
      const c = path.join(dir, `c${rep}.db`);
      const a = path.join(dir, `a${rep}.db`);
      copyFileSync(plainPath, p);
      copyFileSync(capPath, c);
      copyFileSync(anyPath, a);
      plain.push(run(p, fn, memTemp));
      withCap.push(run(c, fn, memTemp));
      withAny.push(run(a, fn, memTemp));
    }
    out.push({ name, plain_ms: med(plain), captured_ms: med(withCap), any_trigger_ms: med(withAny), ratio: med(withCap) / med(plain) });
  };
  for (const [name, fn] of Object.entries(cases)) measure(name, fn, false);
  // A statement journal that once outgrows 64 KiB in a transaction (a page
  // split touches many pages) goes to a temp file for the rest of it, and
  // every later statement writes its pages there: with the app's temp_store =
  // MEMORY it stays in memory.
  measure('insert, one transaction (10,000 rows), app with temp_store = MEMORY', cases['insert, one transaction (10,000 rows)'], true);
  return out;
}

async function benchDetach(w, sizeMb) {
  const dir = path.join(w, 'detach');
  mkdirSync(dir, { recursive: true });
  const env = { ...process.env, CASA_HOME: path.join(dir, 'home'), CASA_DB: path.join(dir, 'casa.db'), CASA_KEYSTORE: 'file' };
  makeDb({ out: env.CASA_DB, sizeMb, seed: 7 });
  casaSync(env, ['sync', '--attach', '--quiet']); // capture set up, untimed
  const copy = path.join(dir, 'vacuum.db');
  // The baseline is a whole command too: the sqlite3 shell's own full copy.
  const v0 = process.hrtime.bigint();
  const v = spawnSync('sqlite3', [env.CASA_DB, `VACUUM INTO '${copy}'`], { encoding: 'utf8', timeout: 300_000 });
  if (v.status !== 0) throw new Error(`sqlite3 VACUUM INTO failed (${v.status}): ${v.stderr ?? v.error}`);
  const vacuumMs = Number(process.hrtime.bigint() - v0) / 1e6;
  rmSync(copy);
  const detach = casaSync(env, ['sync', '--detach', '--json']);
  const copied = JSON.parse(detach.stdout).tables.reduce((n, t) => n + t.rows, 0);
  const db = new Database(env.CASA_DB);
  const ids = db.prepare('SELECT id FROM transactions WHERE abs(random()) % 100 = 0').pluck().all();
  const upd = db.prepare('UPDATE transactions SET amount = amount + 1 WHERE id = ?');
  db.transaction(() => ids.forEach((id) => upd.run(id)))();
  db.close();
  const attach = casaSync(env, ['sync', '--attach', '--json']);
  const caught = JSON.parse(attach.stdout).schema.caught_up.reduce((n, c) => n + c.rows, 0);
  return { size_mb: sizeMb, rows: copied, edited: ids.length, caught_up: caught, detach_ms: detach.ms, attach_ms: attach.ms, vacuum_ms: vacuumMs };
}

export async function runSync(o) {
  const w = mkdtempSync(path.join(os.tmpdir(), 'casa-bench-sync-'));
  let relay;
  try {
    const r = {};
    if (o.only.includes('latency') || o.only.includes('apply')) relay = await startRelay(w);
    if (o.only.includes('latency')) {
      r.latency = await benchLatency(w, relay.url, o.edits);
      process.stderr.write(`sync bench: latency p50 ${r.latency.p50.toFixed(0)} ms, p95 ${r.latency.p95.toFixed(0)} ms\n`);
    }
    if (o.only.includes('apply')) {
      r.apply = await benchApply(w, relay.url, o.changes);
      process.stderr.write(`sync bench: applied ${r.apply.applied} of ${r.apply.changes} in ${r.apply.wall_ms.toFixed(0)} ms\n`);
    }
    if (o.only.includes('triggers')) r.triggers = await benchTriggers(w);
    if (o.only.includes('detach')) {
      r.detach = await benchDetach(w, o.detachMb);
      process.stderr.write(`sync bench: detach ${r.detach.detach_ms.toFixed(0)} ms, attach ${r.detach.attach_ms.toFixed(0)} ms, VACUUM INTO ${r.detach.vacuum_ms.toFixed(0)} ms\n`);
    }
    return r;
  } finally {
    await relay?.stop();
    rmSync(w, { recursive: true, force: true });
  }
}

export function syncResults(r) {
  const rows = [];
  if (r.latency) rows.push({ name: 'latency p50', measured: r.latency.p50, unit: 'ms', target: 300, detail: `p95 ${r.latency.p95.toFixed(0)} ms over ${r.latency.edits} edits, A → relay → B, both --watch` });
  if (r.apply) rows.push({ name: 'apply 100k changes', measured: r.apply.wall_ms, unit: 'ms', target: 2000, detail: `${r.apply.applied} of ${r.apply.changes} field changes applied by one \`casa sync\` (whole command)` });
  for (const t of r.triggers ?? []) rows.push({ name: `trigger overhead: ${t.name}`, measured: t.ratio, unit: '×', target: 2.5, detail: `${t.captured_ms.toFixed(0)} ms vs ${t.plain_ms.toFixed(0)} ms; any trigger alone ${(t.any_trigger_ms / t.plain_ms).toFixed(2)}×, casa's own share ${(t.captured_ms / t.any_trigger_ms).toFixed(2)}×` });
  if (r.detach) {
    const d = r.detach;
    const base = `VACUUM INTO ${d.vacuum_ms.toFixed(0)} ms; ${d.size_mb} MiB, ${d.rows} synced rows`;
    rows.push({ name: 'detach / VACUUM INTO', measured: d.detach_ms / d.vacuum_ms, unit: '×', target: 2, detail: `casa sync --detach ${d.detach_ms.toFixed(0)} ms; ${base}` });
    rows.push({ name: 'attach / VACUUM INTO', measured: d.attach_ms / d.vacuum_ms, unit: '×', target: 2, detail: `casa sync --attach ${d.attach_ms.toFixed(0)} ms, ${d.caught_up} writes caught up of ${d.edited} edited; ${base}` });
  }
  return rows.map((x) => ({ ...x, ratio: x.measured / x.target, ok: x.measured <= x.target }));
}

export function formatSync(r) {
  return formatRows(syncResults(r));
}

/** Result rows as the markdown table every bench prints (shared with bench/history.mjs). */
export function formatRows(rows) {
  const lines = ['| measure | measured | target | ratio | verdict | detail |', '|---|---|---|---|---|---|'];
  for (const x of rows) {
    const m = x.unit === '×' ? `${x.measured.toFixed(2)}×` : `${x.measured.toFixed(0)} ${x.unit}`;
    const t = x.unit === '×' ? `≤ ${x.target}×` : `< ${x.target} ${x.unit}`;
    lines.push(`| ${x.name} | ${m} | ${t} | ${x.ratio.toFixed(2)} | ${x.ok ? 'ok' : 'MISS'} | ${x.detail} |`);
  }
  return lines.join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const o = parseSyncArgs(process.argv.slice(2));
  const r = await runSync(o);
  process.stdout.write(o.json ? `${JSON.stringify({ ...r, results: syncResults(r) }, null, 2)}\n` : `${formatSync(r)}\n`);
}
