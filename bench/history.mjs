#!/usr/bin/env node
// History (issue: "History of every field, and the database at any moment"),
// measured in one run and printed as ratios to targets (casa's choice of
// targets: the issue names the measures, not bounds):
//
//   history   a vault with --changes (100,000) field changes in the window,
//             made by real sync rounds (A and B in turn, 25,000 fields each,
//             each round pushed by `casa sync`): on A, `casa log --since 1d`
//             the first time (fetch, check, decrypt and index every batch) and
//             again (only the index), and `casa history transactions ID` of
//             one row (index up to date); each a whole command, its output
//             read to the end. Targets: history < 1 s, log (warm) < 3 s.
//   restore   a --restore-mb (100) MiB database, a snapshot, then 10,000
//             field changes synced after it: `casa restore --at NOW --to FILE`
//             (cold index, then warm) against a plain `casa restore` of the
//             same vault into a new file (the newest snapshot and the
//             changesets after it), same run; the two files' synced tables
//             are compared (they must be equal). Target restore --at ≤ 1.5×
//             the plain restore.
//
//   node bench/history.mjs [--changes 100000] [--restore-mb 100] [--only history,restore] [--json]

import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { makeDb } from './lib/make-db.mjs';
import { casaSync, formatRows, startRelay, twoDevices } from './sync.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const CASA = path.join(path.resolve(here, '..'), 'bin/casa');

export function parseHistoryArgs(argv) {
  const o = { changes: 100_000, restoreMb: 100, only: ['history', 'restore'], json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--changes') o.changes = Number(argv[++i]);
    else if (a === '--restore-mb') o.restoreMb = Number(argv[++i]);
    else if (a === '--only') o.only = String(argv[++i]).split(',');
    else if (a === '--json') o.json = true;
  }
  if (!(Number.isInteger(o.changes) && o.changes >= 1000 && o.changes <= 1_000_000)) throw new Error('--changes takes 1000..1000000');
  if (!(Number.isInteger(o.restoreMb) && o.restoreMb >= 1 && o.restoreMb <= 2048)) throw new Error('--restore-mb takes 1..2048');
  for (const b of o.only) if (!['history', 'restore'].includes(b)) throw new Error(`--only: no bench ${b}`);
  return o;
}

/** One casa command, timed, its whole output read (a log of 100,000 changes is several MB). */
function timed(env, args) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [CASA, ...args], { env, encoding: 'utf8', timeout: 600_000, maxBuffer: 1 << 30 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`casa ${args.join(' ')} exited ${r.status}: ${r.stderr ?? r.error}`);
  return { ms, stdout: r.stdout };
}

/** `fields` field changes on `env`'s database: 4 fields of fields/4 transactions from `offset`, in one transaction. */
export function edit(env, fields, offset, tag) {
  const db = new Database(env.CASA_DB);
  const rows = db.prepare('SELECT id FROM transactions ORDER BY id LIMIT ? OFFSET ?').all(Math.ceil(fields / 4), offset);
  if (rows.length * 4 < fields) throw new Error(`the database has too few transactions for ${fields} field changes`);
  const upd = db.prepare('UPDATE transactions SET memo = ?, amount = ?, cleared = 1 - cleared, updated_at = ? WHERE id = ?');
  db.transaction(() => rows.forEach((r, i) => upd.run(`${tag} ${i}`, -1_000_000 - i, `2031-01-01T00:00:${String(i % 60).padStart(2, '0')}Z`, r.id)))();
  db.close();
  return rows[0].id;
}

async function benchHistory(w, url, changes) {
  const { A, B } = await twoDevices(path.join(w, 'history'), url, 24);
  const per = 25_000;
  let made = 0;
  let round = 0;
  let oneRow;
  while (made < changes) {
    const n = Math.min(per, changes - made);
    const dev = round % 2 === 0 ? A : B;
    const id = edit(dev, n, round * (per / 4), `round ${round}`);
    oneRow ??= id;
    casaSync(dev, ['sync', '--quiet'], 300_000);
    made += n;
    round++;
  }
  casaSync(A, ['sync', '--quiet'], 300_000);
  const cold = timed(A, ['log', '--since', '1d']);
  const warm = timed(A, ['log', '--since', '1d']);
  const lines = warm.stdout.split('\n').filter((l) => l.startsWith('    ')).length;
  const history = timed(A, ['history', 'transactions', oneRow]);
  const historyJson = JSON.parse(timed(A, ['history', 'transactions', oneRow, '--json']).stdout);
  return { changes: made, rounds: round, log_cold_ms: cold.ms, log_warm_ms: warm.ms, log_fields: lines, log_bytes: warm.stdout.length, history_ms: history.ms, history_changes: historyJson.changes.length };
}

/** SHA-256 of every user table, row by row as SQLite stores it. */
function tablesDigest(file) {
  const db = new Database(file, { readonly: true });
  db.defaultSafeIntegers(true);
  const h = createHash('sha256');
  for (const t of db.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'casa_%' ORDER BY name").pluck().all()) {
    h.update(`${t}\n`);
    for (const row of db.prepare(`SELECT * FROM "${t}" ORDER BY 1, 2`).raw().iterate()) {
      h.update(row.map((v) => (typeof v === 'bigint' ? `i${v}` : Buffer.isBuffer(v) ? `x${v.toString('hex')}` : JSON.stringify(v))).join('|') + '\n');
    }
  }
  db.close();
  return h.digest('hex');
}

async function benchRestore(w, url, sizeMb) {
  const dir = path.join(w, 'restore');
  mkdirSync(dir, { recursive: true });
  const base = { ...process.env, CASA_KEYSTORE: 'file', CASA_SERVER: url };
  for (const k of ['CASA_HOME', 'CASA_DB']) delete base[k];
  const A = { ...base, CASA_HOME: path.join(dir, 'a'), CASA_DB: path.join(dir, 'a', 'casa.db') };
  mkdirSync(A.CASA_HOME, { recursive: true });
  casaSync(A, ['pair', '--new', '--phrase-out', path.join(dir, 'phrase.txt'), '--device-name', 'bench-a']);
  makeDb({ out: A.CASA_DB, sizeMb, seed: 9 });
  casaSync(A, ['sync', '--quiet'], 300_000);
  casaSync(A, ['snapshot', '--quiet'], 300_000);
  edit(A, 10_000, 0, 'after the snapshot');
  casaSync(A, ['sync', '--quiet'], 300_000);
  await new Promise((r) => setTimeout(r, 20));
  const at = new Date().toISOString();
  const plainDb = path.join(dir, 'plain.db');
  const plain = timed({ ...A, CASA_DB: plainDb }, ['restore', '--yes', '--json']);
  const cold = timed(A, ['restore', '--at', at, '--to', path.join(dir, 'at-cold.db'), '--json']);
  const warm = timed(A, ['restore', '--at', at, '--to', path.join(dir, 'at-warm.db'), '--json']);
  const doc = JSON.parse(warm.stdout);
  const equal = tablesDigest(plainDb) === tablesDigest(path.join(dir, 'at-warm.db')) && tablesDigest(plainDb) === tablesDigest(A.CASA_DB);
  return { size_mb: sizeMb, db_bytes: doc.db_bytes, changes: doc.changes, plain_ms: plain.ms, at_cold_ms: cold.ms, at_warm_ms: warm.ms, equal };
}

export async function runHistoryBench(o) {
  const w = mkdtempSync(path.join(os.tmpdir(), 'casa-bench-history-'));
  const relay = await startRelay(w);
  try {
    const r = {};
    if (o.only.includes('history')) {
      r.history = await benchHistory(w, relay.url, o.changes);
      process.stderr.write(`history bench: log cold ${r.history.log_cold_ms.toFixed(0)} ms, warm ${r.history.log_warm_ms.toFixed(0)} ms, history ${r.history.history_ms.toFixed(0)} ms\n`);
    }
    if (o.only.includes('restore')) {
      r.restore = await benchRestore(w, relay.url, o.restoreMb);
      process.stderr.write(`history bench: restore ${r.restore.plain_ms.toFixed(0)} ms, restore --at ${r.restore.at_cold_ms.toFixed(0)} / ${r.restore.at_warm_ms.toFixed(0)} ms\n`);
    }
    return r;
  } finally {
    await relay.stop();
    rmSync(w, { recursive: true, force: true });
  }
}

export function historyResults(r) {
  const rows = [];
  if (r.history) {
    const h = r.history;
    rows.push({ name: 'history of one row', measured: h.history_ms, unit: 'ms', target: 1000, detail: `\`casa history transactions ID\` (${h.history_changes} changes), index up to date; ${h.changes} field changes in the window` });
    rows.push({ name: 'log --since 1d', measured: h.log_warm_ms, unit: 'ms', target: 3000, detail: `${h.log_fields} fields old → new (${(h.log_bytes / 1048576).toFixed(1)} MiB printed); the first call, fetching and indexing ${h.rounds} rounds' batches: ${h.log_cold_ms.toFixed(0)} ms` });
  }
  if (r.restore) {
    const x = r.restore;
    rows.push({
      name: 'restore --at / restore',
      measured: x.at_cold_ms / x.plain_ms,
      unit: '×',
      target: 1.5,
      detail: `restore --at ${x.at_cold_ms.toFixed(0)} ms (index cold; ${x.at_warm_ms.toFixed(0)} ms warm) vs restore ${x.plain_ms.toFixed(0)} ms; ${x.size_mb} MiB, ${x.changes} changes after the snapshot; tables ${x.equal ? 'equal' : 'DIFFER'}`,
    });
  }
  return rows.map((x) => ({ ...x, ratio: x.measured / x.target, ok: x.measured <= x.target && (x.name !== 'restore --at / restore' || r.restore.equal) }));
}

export function formatHistory(r) {
  return formatRows(historyResults(r));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const o = parseHistoryArgs(process.argv.slice(2));
  const r = await runHistoryBench(o);
  process.stdout.write(o.json ? `${JSON.stringify({ ...r, results: historyResults(r) }, null, 2)}\n` : `${formatHistory(r)}\n`);
}
