#!/usr/bin/env node
// The foundation's two performance promises, measured in one run and printed
// as ratios to their targets (never as timed unit tests, which flake):
//
//   kdf   deriveVaultKeys(phrase) — PBKDF2-HMAC-SHA256 600k + the HKDF
//         subkeys — median of KDF_RUNS calls after one warm-up; target ≤ 200 ms.
//   start `node bin/casa --help` wall time, median of START_RUNS spawns,
//         divided by the median of `node -e 0` measured interleaved with it
//         (so machine noise hits both alike); target ≤ 1.5×.
//
// Needs a build (`npm run build`; `npm ci` does it). `node bench/foundation.mjs
// [--json]`, or through `npm run bench`.

import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const KDF_RUNS = 7;
const START_RUNS = 21;
// BIP-39's all-zero-entropy 24-word phrase: a valid, well-known, non-secret input.
const PHRASE = `${'abandon '.repeat(23)}art`;

const ms = (ns) => Number(ns) / 1e6;

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

async function benchKdf() {
  const kdfPath = path.join(root, 'dist/crypto/kdf.js');
  const base = { name: 'kdf', what: 'deriveVaultKeys(phrase)', unit: 'ms', target: 200, runs: KDF_RUNS };
  if (!existsSync(kdfPath)) return { ...base, error: 'dist/crypto/kdf.js is missing: run `npm run build`' };
  const { deriveVaultKeys } = await import(pathToFileURL(kdfPath).href);
  if (typeof deriveVaultKeys !== 'function') return { ...base, error: 'dist/crypto/kdf.js exports no deriveVaultKeys' };
  await deriveVaultKeys(PHRASE); // warm-up: first-call costs are not the steady state
  const times = [];
  for (let i = 0; i < KDF_RUNS; i++) {
    const t0 = process.hrtime.bigint();
    await deriveVaultKeys(PHRASE);
    times.push(ms(process.hrtime.bigint() - t0));
  }
  const value = median(times);
  return { ...base, value, ratio: value / base.target, samples: times };
}

function timeSpawn(args) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  const elapsed = ms(process.hrtime.bigint() - t0);
  if (r.status !== 0) {
    const why = r.error?.message ?? (r.stderr.trim().split('\n')[0] || `exit status ${r.status}`);
    throw new Error(`node ${args.join(' ')} failed: ${why}`);
  }
  return elapsed;
}

function benchStart() {
  const base = { name: 'start', what: 'node bin/casa --help vs node -e 0', unit: '×', target: 1.5, runs: START_RUNS };
  const casaArgs = [path.join(root, 'bin/casa'), '--help'];
  const nodeArgs = ['-e', '0'];
  try {
    timeSpawn(casaArgs); // warm the file cache for both
    timeSpawn(nodeArgs);
    const casa = [];
    const node = [];
    for (let i = 0; i < START_RUNS; i++) {
      casa.push(timeSpawn(casaArgs));
      node.push(timeSpawn(nodeArgs));
    }
    const casaMs = median(casa);
    const nodeMs = median(node);
    const value = casaMs / nodeMs;
    return { ...base, value, ratio: value / base.target, casaMs, nodeMs };
  } catch (err) {
    return { ...base, error: err.message };
  }
}

/** Runs the foundation benches; returns one result per bench. */
export async function runFoundation() {
  return [await benchKdf(), benchStart()];
}

const fmt = (n, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : '-');

/** One line per result: the number, its target and the ratio (≤ 1.00 meets the target). */
export function formatTable(results) {
  const rows = [['bench', 'measured', 'target', 'ratio', 'verdict', 'detail']];
  for (const r of results) {
    if (r.error) {
      rows.push([r.name, '-', `≤ ${r.target} ${r.unit}`, '-', 'error', r.error]);
      continue;
    }
    const measured = r.unit === 'ms' ? `${fmt(r.value)} ms` : `${fmt(r.value, 2)}×`;
    const detail =
      r.name === 'kdf'
        ? `median of ${r.runs}`
        : `casa ${fmt(r.casaMs)} ms / node ${fmt(r.nodeMs)} ms, medians of ${r.runs}`;
    rows.push([r.name, measured, `≤ ${r.target}${r.unit === 'ms' ? ' ms' : '×'}`, fmt(r.ratio, 2), r.ratio <= 1 ? 'ok' : 'over', detail]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  return rows.map((row) => row.map((cell, i) => cell.padEnd(widths[i])).join('  ').trimEnd()).join('\n');
}

/** The summary lines the issue asks for, e.g. `kdf: 131.2 ms (target ≤ 200 ms) ratio 0.66`. */
export function formatSummary(results) {
  return results
    .filter((r) => !r.error)
    .map((r) =>
      r.name === 'kdf'
        ? `kdf: ${fmt(r.value)} ms (target ≤ ${r.target} ms) ratio ${fmt(r.value)}/${r.target} = ${fmt(r.ratio, 2)}`
        : `start: casa --help ${fmt(r.casaMs)} ms vs node -e 0 ${fmt(r.nodeMs)} ms = ${fmt(r.value, 2)}× (target ≤ ${r.target}×) ratio ${fmt(r.ratio, 2)}`,
    )
    .join('\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const results = await runFoundation();
  if (process.argv.includes('--json')) {
    process.stdout.write(`${JSON.stringify({ node: process.version, platform: `${process.platform}-${process.arch}`, results }, null, 2)}\n`);
  } else {
    process.stdout.write(`${formatTable(results)}\n\n${formatSummary(results)}\n`);
  }
  if (results.some((r) => r.error)) process.exitCode = 1;
}
