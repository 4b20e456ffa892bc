#!/usr/bin/env node
// What the divergence detector costs (`casa verify --sync`, the app-updates
// issue), measured in one run beside its baseline, never as a timed unit test:
//
//   Device A holds a --mb (100) MiB database (bench/lib/make-db.mjs); B
//   restored it; both synced and published once, so they sit at the same
//   cursor. Then, --reps (5) times: A's `casa sync` with nothing to do (the
//   baseline), and A's `casa verify --sync` (hash every synced row, publish
//   the sealed record when it changed, read every other device's record and
//   compare). A counting proxy on 127.0.0.1 in front of the relay
//   (bench/lib/proxy.mjs) gives the requests and the body bytes each way.
//   Printed: median wall times, the ratio to the baseline, requests and bytes
//   of a run that published (the first) and of one that did not.
//
// Everything runs on 127.0.0.1 in a temp directory, removed at the end; every
// command has a timeout and every process is killed on exit.
//
//   node bench/detector.mjs [--mb 100] [--reps 5] [--json]

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { startCountingProxy } from './lib/proxy.mjs';
import { startRelay } from './sync.mjs';
import { casa, median, twoDevices } from './lib/two-devices.mjs';

export function parseDetectorArgs(argv) {
  const o = { mb: 100, reps: 5, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--mb') o.mb = Number(argv[++i]);
    else if (a === '--reps') o.reps = Number(argv[++i]);
    else if (a === '--json') o.json = true;
    else throw new Error(`detector bench: unknown option ${a}`);
  }
  if (!(Number.isInteger(o.mb) && o.mb >= 1 && o.mb <= 2048)) throw new Error('--mb takes 1..2048');
  if (!(Number.isInteger(o.reps) && o.reps >= 1 && o.reps <= 50)) throw new Error('--reps takes 1..50');
  return o;
}



export async function runDetector(o) {
  const w = mkdtempSync(path.join(os.tmpdir(), 'casa-bench-detector-'));
  const relay = await startRelay(w);
  const proxy = await startCountingProxy(relay.url);
  try {
    const { A, B } = await twoDevices(w, proxy.url, { mb: o.mb, seed: 3 });
    for (const e of [A, B]) await casa(e, ['sync', '--quiet']);
    await casa(B, ['verify', '--sync', '--quiet']);

    const sync = [];
    const verify = [];
    const runs = [];
    let report = null;
    for (let i = 0; i < o.reps; i++) {
      sync.push((await casa(A, ['sync', '--quiet'])).ms);
      proxy.reset();
      const r = await casa(A, ['verify', '--sync', '--json']);
      verify.push(r.ms);
      report = JSON.parse(r.stdout);
      runs.push({ published: report.published, requests: proxy.seen.length, up: proxy.bytes.up, down: proxy.bytes.down });
    }
    const same = (report?.devices ?? []).every((d) => d.status === 'same');
    return {
      mb: o.mb,
      reps: o.reps,
      syncMs: median(sync),
      verifyMs: median(verify),
      tables: Object.keys(report?.tables ?? {}).length,
      same,
      publishing: runs.find((x) => x.published) ?? null,
      steady: runs.find((x) => !x.published) ?? null,
    };
  } finally {
    await proxy.close();
    await relay.stop();
    rmSync(w, { recursive: true, force: true });
  }
}

/** No target was set; the baseline is `casa sync` with nothing to do, in the same run. */
export function detectorResults(r) {
  return [
    { name: 'detector: verify --sync / sync (time)', measured: r.verifyMs / r.syncMs, unit: '×', target: null, detail: `${r.verifyMs.toFixed(0)} ms vs ${r.syncMs.toFixed(0)} ms on ${r.mb} MiB` },
    { name: 'detector: bytes up when publishing', measured: r.publishing?.up ?? 0, unit: 'B', target: null, detail: `${r.publishing?.requests ?? 0} requests` },
    { name: 'detector: bytes down per run', measured: r.steady?.down ?? r.publishing?.down ?? 0, unit: 'B', target: null, detail: `${r.steady?.requests ?? 0} requests when nothing is published` },
  ].map((x) => ({ ...x, ratio: null, ok: true, na: true }));
}

export function formatDetector(r) {
  const b = (x) => (x === null ? 'n/a' : `${x.requests} requests, ${x.up} B up, ${x.down} B down`);
  return [
    `casa verify --sync on a ${r.mb} MiB database, 2 devices at the same cursor (median of ${r.reps}); ${r.tables} synced tables, devices ${r.same ? 'the same' : 'DIFFER'}`,
    `  casa sync, nothing to do (baseline) ${(r.syncMs / 1000).toFixed(3)} s`,
    `  casa verify --sync                  ${(r.verifyMs / 1000).toFixed(3)} s   ${(r.verifyMs / r.syncMs).toFixed(2)}× (+${((r.verifyMs - r.syncMs) / 1000).toFixed(2)} s)`,
    `  a run that published its record:   ${b(r.publishing)}`,
    `  a run with nothing new to publish:  ${b(r.steady)}`,
  ].join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const o = parseDetectorArgs(process.argv.slice(2));
  const r = await runDetector(o);
  process.stdout.write(o.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatDetector(r)}\n`);
  process.exit(0);
}
