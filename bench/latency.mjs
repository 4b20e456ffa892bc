#!/usr/bin/env node
// Commands on a real network's latency (the relay-at-scale issue: "one round
// trip per command"), measured in one run, before and after, never as a
// timed unit test:
//
//   A local relay behind a proxy on 127.0.0.1 that holds every request and
//   every answer --delay-ms (25) ms, so each round trip costs 2 × 25 = 50 ms,
//   as on a network. Device A holds a --mb (100) MiB database; B restored it.
//   Timed as whole commands (median of --reps, 5), with the requests each
//   made counted by the proxy:
//
//     sync, no change          A: `casa sync` with nothing to do
//     sync, one change         A: one field written by a plain SQLite
//                              connection, then `casa sync`
//     snapshot, up to date     A: `casa snapshot` right after a snapshot
//     snapshot, a day's edits  A: bench/lib/mutate.mjs --update-pct 0.1 (the
//                              snapshot bench's "day"), then `casa snapshot`
//     pull, nothing new        B: `casa pull`
//     status                   A: `casa status`
//
//   "before": the token file (CASA_HOME/token.json) removed before each
//   command, so every command first spends a challenge and a token, as
//   every command did before tokens were kept; "after": kept, as casa runs.
//
// Everything runs on 127.0.0.1 in a temp directory, removed at the end;
// every command has a timeout and every process is killed on exit.
//
//   node bench/latency.mjs [--mb 100] [--delay-ms 25] [--reps 5] [--json]

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { mutateDb } from './lib/mutate.mjs';
import { startCountingProxy } from './lib/proxy.mjs';
import { startRelay } from './sync.mjs';
import { casa, median, twoDevices } from './lib/two-devices.mjs';

export function parseLatencyArgs(argv) {
  const o = { mb: 100, delayMs: 25, reps: 5, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--mb') o.mb = Number(argv[++i]);
    else if (a === '--delay-ms') o.delayMs = Number(argv[++i]);
    else if (a === '--reps') o.reps = Number(argv[++i]);
    else if (a === '--json') o.json = true;
    else throw new Error(`latency bench: unknown option ${a}`);
  }
  if (!(Number.isInteger(o.mb) && o.mb >= 1 && o.mb <= 2048)) throw new Error('--mb takes 1..2048');
  if (!(Number.isInteger(o.delayMs) && o.delayMs >= 0 && o.delayMs <= 500)) throw new Error('--delay-ms takes 0..500');
  if (!(Number.isInteger(o.reps) && o.reps >= 1 && o.reps <= 50)) throw new Error('--reps takes 1..50');
  return o;
}



export async function runLatency(o) {
  const w = mkdtempSync(path.join(os.tmpdir(), 'casa-bench-latency-'));
  const relay = await startRelay(w);
  const proxy = await startCountingProxy(relay.url, { delayMs: o.delayMs });
  try {
    const { A, B } = await twoDevices(w, proxy.url, { mb: o.mb, seed: 11 });

    let edit = 0;
    const oneChange = () => {
      const db = new Database(A.CASA_DB);
      db.prepare('UPDATE transactions SET memo = ? WHERE rowid = (SELECT min(rowid) FROM transactions)').run(`latency bench ${++edit}`);
      db.close();
    };
    let seed = 100;
    const dayEdits = () => mutateDb({ db: A.CASA_DB, updatePct: 0.1, seed: ++seed });
    const steps = [
      { name: 'sync, no change', env: A, args: ['sync', '--quiet'] },
      { name: 'sync, one change', env: A, args: ['sync', '--quiet'], before: oneChange },
      { name: 'snapshot, up to date', env: A, args: ['snapshot', '--quiet'] },
      { name: "snapshot, a day's edits", env: A, args: ['snapshot', '--quiet'], before: dayEdits, after: () => casa(A, ['sync', '--quiet']), reps: Math.min(o.reps, 3) },
      { name: 'pull, nothing new', env: B, args: ['pull', '--yes', '--quiet'], setup: () => casa(B, ['sync', '--quiet']) },
      { name: 'status', env: A, args: ['status'] },
    ];
    const rows = [];
    for (const s of steps) {
      const row = { name: s.name };
      for (const mode of ['before', 'after']) {
        const times = [];
        const requests = [];
        if (s.setup) await s.setup();
        // One untimed run first: the token is then kept (after) and caches are warm for both modes.
        await casa(s.env, s.args);
        for (let i = 0; i < (s.reps ?? o.reps); i++) {
          if (s.before) s.before();
          if (mode === 'before') rmSync(path.join(s.env.CASA_HOME, 'token.json'), { force: true });
          proxy.reset();
          times.push((await casa(s.env, s.args)).ms);
          requests.push(proxy.seen.length);
          if (s.after) await s.after();
        }
        row[mode] = { ms: median(times), requests: median(requests) };
      }
      rows.push(row);
    }
    return { mb: o.mb, rttMs: 2 * o.delayMs, reps: o.reps, rows };
  } finally {
    await proxy.close();
    await relay.stop();
    rmSync(w, { recursive: true, force: true });
  }
}

/**
 * Rows as the other suites print them. The target of each row is the issue's:
 * one request with nothing to do, two for a sync with a change; the wall time
 * "after" is reported as a ratio to "before" (its baseline in the same run).
 */
export function latencyResults(r) {
  const want = { 'sync, one change': 2, "snapshot, a day's edits": null };
  return r.rows.flatMap((x) => {
    const target = x.name in want ? want[x.name] : 1;
    const out = [{ name: `latency: ${x.name}: after / before (${r.rttMs} ms RTT)`, measured: x.after.ms / x.before.ms, unit: '×', target: 1, detail: `${x.after.ms.toFixed(0)} ms vs ${x.before.ms.toFixed(0)} ms` }];
    if (target !== null) out.push({ name: `latency: ${x.name}: requests`, measured: x.after.requests, unit: '', target, detail: `${x.before.requests} before` });
    return out;
  }).map((x) => ({ ...x, ratio: x.measured / x.target, ok: x.measured <= x.target }));
}

export function formatLatency(r) {
  const s = (ms) => `${(ms / 1000).toFixed(3)} s`;
  const lines = [`commands with ${r.rttMs} ms of round-trip delay on a ${r.mb} MiB database (median of ${r.reps}; a day's edits: of ${Math.min(r.reps, 3)})`,
    `  ${'command'.padEnd(26)} ${'before'.padStart(9)} ${'req'.padStart(4)}   ${'after'.padStart(9)} ${'req'.padStart(4)}   after/before`];
  for (const x of r.rows) {
    lines.push(`  ${x.name.padEnd(26)} ${s(x.before.ms).padStart(9)} ${String(x.before.requests).padStart(4)}   ${s(x.after.ms).padStart(9)} ${String(x.after.requests).padStart(4)}   ${(x.after.ms / x.before.ms).toFixed(2)}×`);
  }
  return lines.join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const o = parseLatencyArgs(process.argv.slice(2));
  const r = await runLatency(o);
  process.stdout.write(o.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatLatency(r)}\n`);
  process.exit(0);
}
