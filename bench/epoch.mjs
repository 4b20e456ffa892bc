#!/usr/bin/env node
// A new key epoch (docs/SECURITY.md §2), measured in one run beside its
// baseline (never as a timed unit test):
//
//   initial   `casa snapshot` of a fresh --mb (100) MiB database: wall time and
//             bytes uploaded (the baseline: everything sealed and sent once).
//   epoch     with 3 devices paired: `casa devices revoke` of the third (a
//             signed revocation and a new epoch sealed to the two others and
//             the paper), then the next `casa snapshot` on A (every page again,
//             under the new keys: nothing sealed by the old keys is reused)
//             and B's next `casa sync` (picks up the epoch). Wall time and
//             bytes uploaded, each as a ratio to the initial snapshot.
//
// Everything runs on 127.0.0.1 in a temp directory, removed at the end; every
// step has a timeout and every process is killed on exit.
//
//   node bench/epoch.mjs [--mb 100] [--json]

import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { makeDb } from './lib/make-db.mjs';
import { casaSync, startRelay } from './sync.mjs';

export function parseEpochArgs(argv) {
  const o = { mb: 100, json: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--mb') o.mb = Number(argv[++i]);
    else if (argv[i] === '--json') o.json = true;
  }
  if (!(Number.isInteger(o.mb) && o.mb >= 1 && o.mb <= 2048)) throw new Error('--mb takes 1..2048');
  return o;
}

/** A casa command, timed; 10 minutes at most (a 100 MiB snapshot). */
const casa = (env, args) => casaSync(env, args, 600_000);

export async function runEpoch(o) {
  const w = mkdtempSync(path.join(os.tmpdir(), 'casa-bench-epoch-'));
  const relay = await startRelay(w);
  try {
    const base = { ...process.env, CASA_KEYSTORE: 'file', CASA_SERVER: relay.url };
    for (const k of ['CASA_HOME', 'CASA_DB', 'CASA_TMPDIR']) delete base[k];
    const dev = (n) => {
      const home = path.join(w, n);
      mkdirSync(home, { recursive: true, mode: 0o700 });
      return { ...base, CASA_HOME: home, CASA_DB: path.join(home, 'casa.db') };
    };
    const [A, B, C] = ['a', 'b', 'c'].map(dev);
    const phrase = path.join(w, 'phrase.txt');
    casa(A, ['pair', '--new', '--phrase-out', phrase, '--device-name', 'bench-a']);
    makeDb({ out: A.CASA_DB, sizeMb: o.mb, seed: 7 });
    const initial = casa(A, ['snapshot', '--json']);
    const init = JSON.parse(initial.stdout);
    casa(B, ['restore', '--yes', '--quiet', '--phrase-file', phrase, '--device-name', 'bench-b']);
    casa(C, ['pair', '--join', '--phrase-file', phrase, '--device-name', 'bench-c']);
    rmSync(phrase);
    for (const e of [A, B]) casa(e, ['sync', '--quiet']);
    const cId = JSON.parse(readFileSync(path.join(C.CASA_HOME, 'state.json'), 'utf8')).vault.deviceId;

    const revoke = casa(A, ['devices', 'revoke', cId, '--yes', '--json']);
    const epoch = JSON.parse(revoke.stdout).epoch;
    const after = casa(A, ['snapshot', '--json']);
    const snap = JSON.parse(after.stdout);
    const pick = casa(B, ['sync', '--json']);
    return {
      mb: o.mb,
      dbBytes: init.db_bytes,
      initial: { ms: initial.ms, uploadedBytes: init.uploaded_bytes },
      revoke: { ms: revoke.ms, epoch },
      snapshotAfter: { ms: after.ms, uploadedBytes: snap.uploaded_bytes, reusedPacks: snap.reused_packs },
      pickUp: { ms: pick.ms },
    };
  } finally {
    await relay.stop();
    rmSync(w, { recursive: true, force: true });
  }
}

/**
 * Rows as the other suites print them: measured, unit, target, ratio. The issue
 * names no target for an epoch; the baseline is the initial snapshot of the same
 * database in the same run, so the target of each row is "no more than it" (1×).
 */
export function epochResults(r) {
  const i = r.initial;
  const rows = [
    { name: 'epoch: revoke + new epoch / initial snapshot', measured: r.revoke.ms / i.ms, unit: '×', target: 1, detail: `${r.revoke.ms.toFixed(0)} ms vs ${i.ms.toFixed(0)} ms (${r.mb} MiB, 3 devices)` },
    { name: 'epoch: next snapshot / initial snapshot (time)', measured: r.snapshotAfter.ms / i.ms, unit: '×', target: 1, detail: `${r.snapshotAfter.ms.toFixed(0)} ms vs ${i.ms.toFixed(0)} ms` },
    { name: 'epoch: next snapshot / initial snapshot (bytes)', measured: r.snapshotAfter.uploadedBytes / i.uploadedBytes, unit: '×', target: 1, detail: `${r.snapshotAfter.uploadedBytes} B vs ${i.uploadedBytes} B uploaded` },
    { name: 'epoch: picked up by another device (sync) / initial snapshot', measured: r.pickUp.ms / i.ms, unit: '×', target: 1, detail: `${r.pickUp.ms.toFixed(0)} ms` },
  ];
  return rows.map((x) => ({ ...x, ratio: x.measured / x.target, ok: x.measured <= x.target }));
}

export function formatEpoch(r) {
  const mb = (b) => `${(b / 1048576).toFixed(1)} MiB`;
  const s = (ms) => `${(ms / 1000).toFixed(2)} s`;
  return [
    `new key epoch on a ${r.mb} MiB database (${mb(r.dbBytes)}), 3 devices`,
    `  initial snapshot            ${s(r.initial.ms).padStart(9)}  ${mb(r.initial.uploadedBytes).padStart(10)} uploaded   (baseline)`,
    `  revoke + epoch ${String(r.revoke.epoch).padEnd(12)} ${s(r.revoke.ms).padStart(9)}                          ${(r.revoke.ms / r.initial.ms).toFixed(2)}×`,
    `  next snapshot, new keys     ${s(r.snapshotAfter.ms).padStart(9)}  ${mb(r.snapshotAfter.uploadedBytes).padStart(10)} uploaded   ${(r.snapshotAfter.ms / r.initial.ms).toFixed(2)}× time, ${(r.snapshotAfter.uploadedBytes / r.initial.uploadedBytes).toFixed(2)}× bytes`,
    `  B picks the epoch up (sync) ${s(r.pickUp.ms).padStart(9)}`,
  ].join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const o = parseEpochArgs(process.argv.slice(2));
  const r = await runEpoch(o);
  process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : formatEpoch(r) + '\n');
  process.exit(0);
}
