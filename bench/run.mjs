#!/usr/bin/env node
// `npm run bench`: every bench, one run, printed as ratios to their targets.
// `--json` prints one JSON document instead. See bench/README.md.
// A bench that cannot run (e.g. not built) is reported and makes the exit
// status 1; a number over its target does not — benches inform, tests decide.

import { formatSummary, formatTable, runFoundation } from './foundation.mjs';

const json = process.argv.includes('--json');

// Later benches append their entries here: [name, () => Promise<results[]>].
const suites = [['foundation', runFoundation]];

const report = { node: process.version, platform: `${process.platform}-${process.arch}`, suites: {} };
for (const [name, run] of suites) {
  const results = await run();
  report.suites[name] = results;
  if (!json) process.stdout.write(`## ${name}\n\n${formatTable(results)}\n\n${formatSummary(results)}\n\n`);
}
if (json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
if (Object.values(report.suites).some((results) => results.some((r) => r.error))) process.exitCode = 1;
