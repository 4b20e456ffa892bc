#!/usr/bin/env node
// `npm run bench`: every bench, one run, printed as ratios to their targets.
//
//   npm run bench                          # every suite (foundation, snapshot at 100 MiB, sync)
//   npm run bench -- foundation            # one suite
//   npm run bench -- snapshot --sizes 100,1024 --reps 3
//   npm run bench -- --json                # one JSON document instead
//
// Suite names select suites; other flags go to the suites that take them
// (snapshot: see bench/snapshot.mjs). See bench/README.md.
// A bench that cannot run (e.g. not built) is reported and makes the exit
// status 1; a number over its target does not — benches inform, tests decide.

import { formatSummary, formatTable, runFoundation } from './foundation.mjs';
import { formatSnapshot, parseSnapshotArgs, runSnapshot, snapshotResults } from './snapshot.mjs';
import { formatSync, parseSyncArgs, runSync, syncResults } from './sync.mjs';
import { epochResults, formatEpoch, runEpoch } from './epoch.mjs';
import { formatLatency, latencyResults, runLatency } from './latency.mjs';
import { formatLoad, loadResults, runLoad } from './load.mjs';
import { detectorResults, formatDetector, runDetector } from './detector.mjs';
import { formatHistory, historyResults, parseHistoryArgs, runHistoryBench } from './history.mjs';

const suites = {
  foundation: async () => {
    const results = await runFoundation();
    return { results, text: `${formatTable(results)}\n\n${formatSummary(results)}` };
  },
  snapshot: async (args) => {
    const report = await runSnapshot(parseSnapshotArgs(args));
    return { results: snapshotResults(report), text: formatSnapshot(report), detail: report };
  },
  sync: async () => {
    const report = await runSync(parseSyncArgs([]));
    return { results: syncResults(report), text: formatSync(report), detail: report };
  },
  history: async () => {
    const report = await runHistoryBench(parseHistoryArgs([]));
    return { results: historyResults(report), text: formatHistory(report), detail: report };
  },
  epoch: async () => {
    const report = await runEpoch({ mb: 100 });
    return { results: epochResults(report), text: formatEpoch(report), detail: report };
  },
  latency: async () => {
    const report = await runLatency({ mb: 100, delayMs: 25, reps: 5 });
    return { results: latencyResults(report), text: formatLatency(report), detail: report };
  },
  detector: async () => {
    const report = await runDetector({ mb: 100, reps: 5 });
    return { results: detectorResults(report), text: formatDetector(report), detail: report };
  },
  load: async () => {
    const report = await runLoad({ devices: 200, vaults: 50, seconds: 60 });
    return { results: loadResults(report), text: formatLoad(report), detail: report };
  },
};

const argv = process.argv.slice(2);
const json = argv.includes('--json');
const chosen = argv.filter((a) => Object.hasOwn(suites, a));
const rest = argv.filter((a) => !Object.hasOwn(suites, a) && a !== '--json');
const names = chosen.length ? chosen : Object.keys(suites);
if (rest.length && !names.includes('snapshot')) {
  process.stderr.write(`bench: ${rest.join(' ')}: only the snapshot suite takes options\n`);
  process.exit(2);
}

const report = { node: process.version, platform: `${process.platform}-${process.arch}`, suites: {} };
for (const name of names) {
  let out;
  try {
    out = await suites[name](rest);
  } catch (err) {
    out = { results: [{ name, error: err.message }], text: `error: ${err.message}` };
  }
  report.suites[name] = out.detail ? { results: out.results, report: out.detail } : out.results;
  if (!json) process.stdout.write(`## ${name}\n\n${out.text}\n\n`);
}
if (json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
const resultsOf = (s) => (Array.isArray(s) ? s : s.results);
if (Object.values(report.suites).some((s) => resultsOf(s).some((r) => r.error))) process.exitCode = 1;
