#!/usr/bin/env node
// bench/lib/mutate.mjs — a day's or a week's edits on a database from make-db.mjs.
//
//   node bench/lib/mutate.mjs --db FILE --update-pct P [--seed S] [--insert-ratio 0.25]
//
// - updates P % of the transactions, chosen uniformly over the whole table
//   (the pessimistic case for page-level dedup: edits land everywhere): new
//   amount and memo, updated_at bumped; 10% of them also get the tag 'review';
// - inserts round(updated × insert-ratio) new transactions dated in the week
//   after the newest one, with tags, as make-db does;
// - runs in WAL mode as the app would, then checkpoints (TRUNCATE) and closes,
//   so the main file holds every change and no -wal is left.
// "A day" = --update-pct 0.1, "a week" = --update-pct 1. Deterministic for a
// given input file and seed. Prints one JSON line. Uses the project's better-sqlite3.

import { pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { DAY_MS, insertStatements, isoStamp, makeMemo, makeRandom, makeTransaction, parseArgs, readReference, spendCents } from './make-db.mjs';

export function mutateDb({ db: file, updatePct, seed = 2, insertRatio = 0.25 }) {
  if (!file) throw new Error('--db FILE is required');
  if (!(updatePct >= 0 && updatePct <= 100)) throw new Error(`--update-pct must be in [0, 100], not ${updatePct}`);
  if (!(insertRatio >= 0)) throw new Error(`--insert-ratio must be ≥ 0, not ${insertRatio}`);
  const t0 = Date.now();
  const r = makeRandom(seed * 7919 + 17);
  const db = new Database(file, { fileMustExist: true });
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('cache_size = -262144');
    const ref = readReference(db);
    const payeeName = new Map(ref.payees.map((p) => [p.id, p.name]));
    const { n, maxRowid, maxDate } = db
      .prepare('SELECT count(*) AS n, max(rowid) AS maxRowid, max(date) AS maxDate FROM transactions')
      .get();
    const nUpdate = Math.min(Math.round((n * updatePct) / 100), maxRowid ?? 0);
    const nInsert = Math.round(nUpdate * insertRatio);
    const chosen = new Set();
    while (chosen.size < nUpdate) chosen.add(1 + r.int(maxRowid));

    const get = db.prepare('SELECT id, payee_id FROM transactions WHERE rowid = ?');
    const upd = db.prepare('UPDATE transactions SET amount = ?, memo = ?, updated_at = ? WHERE rowid = ?');
    const ins = insertStatements(db);
    const nowMs = Date.parse(`${maxDate}T12:00:00Z`) + DAY_MS;
    let updated = 0;
    let tagged = 0;
    db.transaction(() => {
      for (const rowid of chosen) {
        const row = get.get(rowid);
        if (!row) continue;
        upd.run(spendCents(r), makeMemo(r, payeeName.get(row.payee_id)), isoStamp(nowMs + r.int(7 * DAY_MS)), rowid);
        updated++;
        if (r.next() < 0.1) {
          ins.tag.run(row.id, 'review');
          tagged++;
        }
      }
      for (let k = 0; k < nInsert; k++) {
        const { tx, tags } = makeTransaction(r, ref, nowMs + Math.floor((k / Math.max(1, nInsert)) * 7) * DAY_MS);
        ins.tx.run(tx);
        for (const t of tags) ins.tag.run(tx.id, t);
      }
    })();
    db.pragma('wal_checkpoint(TRUNCATE)');
    const pages = db.prepare('PRAGMA page_count').pluck().get();
    db.close();
    return { db: file, seed, rows: n, update_pct: updatePct, updated, tagged, inserted: nInsert, pages, seconds: (Date.now() - t0) / 1000 };
  } catch (err) {
    if (db.open) db.close();
    throw err;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    const a = parseArgs(process.argv.slice(2));
    const stats = mutateDb({
      db: a.db,
      updatePct: Number(a['update-pct'] ?? 1),
      seed: Number(a.seed ?? 2),
      insertRatio: Number(a['insert-ratio'] ?? 0.25),
    });
    process.stdout.write(`${JSON.stringify(stats)}\n`);
  } catch (err) {
    process.stderr.write(`mutate: ${err.message}\n`);
    process.exitCode = 1;
  }
}
