#!/usr/bin/env node
// npm run pack:smoke — proves the tarball `npm pack` makes works as a user
// gets it: packed from this checkout, installed with `npm install -g` into a
// clean prefix (only runtime dependencies, native addons built or fetched),
// then driven from outside the checkout: `casa --version`, a local relay run
// from the installed package, a vault created on device A with a database
// snapshotted, restored on a fresh device B (the two databases' dumps equal),
// `casa status --json` on B, `man casa` / `man casa-sync` found under the
// prefix, and `casa completion bash` completing `casa sn` in bash. Everything lives in a temp directory removed at the end; the
// recovery phrase goes to a 0600 file there and is never printed. The whole
// run is bounded (PACK_SMOKE_TIMEOUT, seconds, default 540); on timeout every
// child's process group is killed. Exit 0 = every check passed, 1 = one failed.
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = realpathSync(join(dirname(fileURLToPath(import.meta.url)), '..'));
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const budgetMs = Number(process.env.PACK_SMOKE_TIMEOUT ?? 540) * 1000;
const started = Date.now();
const work = realpathSync(mkdtempSync(join(tmpdir(), 'casa-pack-smoke-')));
const prefix = join(work, 'prefix');
const phraseFile = join(work, 'phrase');

/** Every child still running, by pid: each is its own process group (detached), killed whole on timeout. */
const children = new Map();
const results = [];
let timedOut = false;
let relay;

const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
const mib = (n) => `${(n / 1024 / 1024).toFixed(1)} MiB`;

function ok(check, detail = '') {
  results.push(check);
  console.log(`ok   ${check}${detail ? `: ${detail}` : ''}`);
}

class SmokeError extends Error {}
const fail = (msg) => {
  throw new SmokeError(msg);
};

/** Never show the phrase, even in the output of a command that failed. */
function redact(text) {
  let out = String(text);
  try {
    const phrase = readFileSync(phraseFile, 'utf8').trim();
    if (phrase) {
      out = out.split(phrase).join('[phrase redacted]');
      const words = phrase.split(/\s+/);
      // A line with most of the phrase's words in it is the phrase however it is laid out.
      out = out
        .split('\n')
        .map((l) => (words.filter((w) => new RegExp(`\\b${w}\\b`).test(l)).length >= 6 ? '[line redacted: looks like the phrase]' : l))
        .join('\n');
    }
  } catch {
    // no phrase yet
  }
  return out;
}

function killGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      // already gone
    }
  }
}

/** Runs a command to completion (its own process group), output captured; bounded by timeoutMs and the overall budget. */
function run(cmd, args, { env = process.env, cwd = work, timeoutMs = 120_000, input } = {}) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(cmd, args, { env, cwd, detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
    children.set(child.pid, child);
    let stdout = '';
    let stderr = '';
    let stepTimedOut = false;
    // Decoded as a stream: a character split across two chunks stays whole.
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    child.stdin.on('error', () => {});
    child.stdin.end(input);
    const limit = Math.max(1000, Math.min(timeoutMs, started + budgetMs - Date.now()));
    const timer = setTimeout(() => {
      stepTimedOut = true;
      killGroup(child, 'SIGTERM');
      setTimeout(() => killGroup(child, 'SIGKILL'), 5000).unref();
    }, limit);
    const done = (code, signal, error) => {
      clearTimeout(timer);
      children.delete(child.pid);
      resolve({ code, signal, stdout, stderr, error, timedOut: stepTimedOut, ms: Date.now() - t0, limit });
    };
    child.on('error', (error) => done(null, null, error));
    child.on('close', (code, signal) => done(code, signal));
  });
}

/** The result of `run`, or a SmokeError naming the command with its (redacted) output. */
function must(r, what) {
  if (r.code === 0 && !r.error) return r;
  const why = r.error
    ? `could not start (${r.error.code ?? r.error.message})`
    : r.timedOut || timedOut
      ? `timed out after ${secs(r.ms)}`
      : r.signal
        ? `was killed by ${r.signal}`
        : `exited ${r.code}`;
  const tail = (text) => {
    const lines = text.trimEnd().split('\n');
    return (lines.length > 200 ? [`[${lines.length - 200} earlier lines not shown]`, ...lines.slice(-200)] : lines).join('\n');
  };
  const output = [r.stdout && `--- stdout\n${tail(r.stdout)}`, r.stderr && `--- stderr\n${tail(r.stderr)}`].filter(Boolean).join('\n');
  fail(`${what} ${why}${output ? `\n${redact(output)}` : ''}`);
}

/**
 * The environment casa runs in: the prefix's bin first, no entry from the
 * checkout (npm run puts node_modules/.bin first), none of npm run's package
 * variables.
 */
function userEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(npm_package_|npm_lifecycle_|CASA_)/.test(k) || k === 'INIT_CWD') continue;
    env[k] = v;
  }
  const path = (process.env.PATH ?? '').split(delimiter).filter((p) => p && !isInside(p, root));
  env.PATH = [join(prefix, 'bin'), ...path].join(delimiter);
  return { ...env, ...extra };
}

function isInside(p, dir) {
  let real = p;
  try {
    real = realpathSync(p);
  } catch {
    // a PATH entry that does not exist
  }
  const rel = relative(dir, real);
  return rel === '' || (!rel.startsWith('..') && !rel.startsWith(sep) && rel !== '..');
}

/** Total size of the files under dir (apparent size, symlinks not followed) and their count. */
function treeSize(dir) {
  let bytes = 0;
  let files = 0;
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else {
        bytes += lstatSync(p).size;
        files++;
      }
    }
  };
  walk(dir);
  return { bytes, files };
}

/** Every package installed under a node_modules tree (nested ones too): name, version, dir, what it depends on. */
function installedPackages(nodeModules) {
  const found = [];
  const visit = (nm) => {
    if (!existsSync(nm)) return;
    for (const e of readdirSync(nm, { withFileTypes: true })) {
      if (e.name.startsWith('.')) continue;
      const dirs = e.name.startsWith('@') ? readdirSync(join(nm, e.name)).map((s) => join(nm, e.name, s)) : [join(nm, e.name)];
      for (const dir of dirs) {
        let meta;
        try {
          meta = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
        } catch {
          continue;
        }
        const deps = new Set(Object.keys({ ...meta.dependencies, ...meta.optionalDependencies, ...meta.peerDependencies }));
        found.push({ name: meta.name ?? relative(nm, dir), version: meta.version, dir, deps });
        visit(join(dir, 'node_modules'));
      }
    }
  };
  visit(nodeModules);
  return found;
}

async function main() {
  console.log(`casa ${pkg.version}: pack, install into a clean prefix, drive it (work dir ${work}, budget ${secs(budgetMs)})`);

  // 1. Pack, as `npm pack` in a checkout does: prepack removes dist, prepare rebuilds it.
  const packed = must(await run('npm', ['pack', '--json', '--pack-destination', work], { cwd: root, timeoutMs: 180_000 }), 'npm pack');
  let info;
  try {
    const at = packed.stdout.search(/^\[\s*$/m);
    info = JSON.parse(packed.stdout.slice(at >= 0 ? at : 0))[0];
  } catch {
    const last = packed.stdout.trim().split('\n').pop()?.trim();
    info = { filename: last };
  }
  const tarball = join(work, info.filename ?? '');
  if (!info.filename || !existsSync(tarball)) fail(`npm pack made no tarball in ${work} (stdout ended: ${packed.stdout.trim().split('\n').pop()})`);
  const tarBytes = lstatSync(tarball).size;
  const fileCount = info.entryCount ?? info.files?.length;
  ok('npm pack', `${info.filename}, ${kib(tarBytes)}; unpacked ${info.unpackedSize ? kib(info.unpackedSize) : '?'} in ${fileCount ?? '?'} files (${secs(packed.ms)})`);
  const paths = (info.files ?? []).map((f) => f.path);
  if (paths.length) {
    const maps = paths.filter((p) => p.endsWith('.map'));
    if (maps.length) fail(`the tarball ships source maps: ${maps.slice(0, 5).join(', ')}`);
    const need = ['bin/casa', 'dist/worker/index.js', 'wrangler.jsonc', 'man/casa.1', ...(pkg.man ?? [])];
    const missing = need.filter((p) => !paths.includes(p));
    if (!paths.some((p) => p.startsWith('migrations/d1/'))) missing.push('migrations/d1/*');
    if (missing.length) fail(`the tarball lacks ${missing.join(', ')}`);
  }

  // 2. Install it globally into a clean prefix, as a user would.
  mkdirSync(prefix);
  const installEnv = userEnv();
  const install = must(
    await run('npm', ['install', '-g', '--prefix', prefix, '--no-audit', '--no-fund', '--prefer-offline', tarball], {
      env: installEnv,
      timeoutMs: 420_000,
    }),
    'npm install -g',
  );
  const installMs = install.ms;
  const pkgDir = join(prefix, 'lib', 'node_modules', 'casa');
  if (!existsSync(join(pkgDir, 'package.json'))) fail(`npm install -g put no casa in ${pkgDir}`);
  ok('npm install -g --prefix', `${secs(installMs)}`);

  // 3. Only what runs is installed: none of our dev-only dependencies, unless a runtime dependency needs it.
  const nm = join(pkgDir, 'node_modules');
  const installed = installedPackages(nm);
  const devOnly = new Set(Object.keys(pkg.devDependencies ?? {}));
  const isDevOnly = (name) => devOnly.has(name) || name.startsWith('@types/');
  const flagged = [];
  const allowed = [];
  for (const p of installed.filter((p) => isDevOnly(p.name))) {
    const by = installed.filter((q) => q !== p && q.deps.has(p.name)).map((q) => q.name);
    if (by.length) allowed.push(`${p.name}@${p.version} (needed by ${[...new Set(by)].slice(0, 3).join(', ')})`);
    else flagged.push(`${p.name}@${p.version} at ${relative(prefix, p.dir)}`);
  }
  if (flagged.length) fail(`dev-only packages were installed:\n  ${flagged.join('\n  ')}`);
  for (const name of Object.keys(pkg.dependencies ?? {})) {
    if (!installed.some((p) => p.name === name)) fail(`runtime dependency ${name} is not installed`);
  }
  const size = treeSize(nm);
  ok(
    'only runtime dependencies',
    `${installed.length} packages, node_modules ${mib(size.bytes)} in ${size.files} files` +
      (allowed.length ? `; a dev dependency of ours that a runtime one needs: ${allowed.join(', ')}` : ''),
  );

  // 4. Drive the installed casa from outside the checkout.
  const cwd = join(work, 'cwd');
  mkdirSync(cwd);
  const bin = join(prefix, 'bin', 'casa');
  if (!existsSync(bin)) fail(`no ${bin}`);
  if (!isInside(bin, pkgDir)) fail(`${bin} does not lead into ${pkgDir}`);
  const casa = async (env, args, what, timeoutMs = 120_000) =>
    must(await run('casa', args, { cwd, env: userEnv(env), timeoutMs }), what ?? `casa ${args.join(' ')}`);

  const which = must(await run('sh', ['-c', 'command -v casa'], { cwd, env: userEnv() }), 'command -v casa');
  if (which.stdout.trim() !== bin) fail(`casa on PATH is ${which.stdout.trim()}, not ${bin}`);
  const version = (await casa({}, ['--version'])).stdout.trim();
  if (version !== pkg.version) fail(`casa --version printed ${JSON.stringify(version)}, package.json says ${pkg.version}`);
  ok('casa --version', version);

  // The relay, run from the installed package: worker bundle, wrangler config and migrations from the prefix.
  relay = spawn('casa', ['relay', '--port', '0', '--data', join(work, 'relay')], {
    cwd,
    env: userEnv({ CASA_HOME: join(work, 'relay-home') }),
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.set(relay.pid, relay);
  let relayErr = '';
  relay.stderr.setEncoding('utf8').on('data', (d) => (relayErr += d));
  relay.on('close', () => children.delete(relay.pid));
  const server = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new SmokeError(`casa relay printed no URL within 90 s\n${relayErr}`)), 90_000);
    relay.stdout.setEncoding('utf8').on('data', (d) => {
      out += d;
      const m = out.match(/casa relay listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    relay.on('error', (e) => reject(new SmokeError(`casa relay could not start: ${e.message}`)));
    relay.on('exit', (c, s) => {
      clearTimeout(timer);
      reject(new SmokeError(`casa relay exited ${c ?? s} before it listened\n${out}${relayErr}`));
    });
  });
  ok('casa relay', server);

  const device = (name) => ({
    CASA_HOME: join(work, name),
    CASA_KEYSTORE: 'file',
    CASA_SERVER: server,
    CASA_DB: join(work, name, 'finance.db'),
  });
  const A = device('a');
  const B = device('b');
  mkdirSync(A.CASA_HOME);

  // Device A's database: a few tables keyed by TEXT, a few hundred rows, made by another program than casa.
  const schema = `
    PRAGMA journal_mode = WAL;
    CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT NOT NULL, currency TEXT NOT NULL DEFAULT 'EUR');
    CREATE TABLE categories (id TEXT PRIMARY KEY, name TEXT NOT NULL, parent TEXT REFERENCES categories(id));
    CREATE TABLE transactions (id TEXT PRIMARY KEY, account TEXT NOT NULL REFERENCES accounts(id),
      category TEXT REFERENCES categories(id), amount INTEGER NOT NULL, memo TEXT, date TEXT NOT NULL);
    CREATE INDEX transactions_by_date ON transactions(date);
    INSERT INTO accounts VALUES ('acc-checking', 'Checking', 'EUR'), ('acc-savings', 'Savings', 'EUR'), ('acc-card', 'Card', 'USD');
    INSERT INTO categories VALUES ('cat-food', 'Food', NULL), ('cat-rent', 'Rent', NULL), ('cat-cafe', 'Cafés', 'cat-food');
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
    INSERT INTO transactions
      SELECT printf('tx-%05d', i), CASE i % 3 WHEN 0 THEN 'acc-checking' WHEN 1 THEN 'acc-savings' ELSE 'acc-card' END,
             CASE i % 4 WHEN 0 THEN NULL WHEN 1 THEN 'cat-food' WHEN 2 THEN 'cat-rent' ELSE 'cat-cafe' END,
             (i * 7919) % 100000 - 50000, printf('memo %d: ünïcode ✓', i), date('2026-01-01', printf('+%d days', i % 300))
      FROM n;
  `;
  must(await run('sqlite3', [A.CASA_DB], { input: schema, timeoutMs: 30_000 }), 'sqlite3 (creating device A\'s database)');

  await casa(A, ['pair', '--new', '--phrase-out', phraseFile, '--device-name', 'a'], 'casa pair --new (device a)');
  if (!existsSync(phraseFile) || (lstatSync(phraseFile).mode & 0o077) !== 0) fail('casa pair --new wrote no 0600 phrase file');
  ok('casa pair --new', 'vault created, phrase in a 0600 file (not shown)');
  await casa(A, ['snapshot'], 'casa snapshot (device a)', 180_000);
  ok('casa snapshot', 'device a');

  mkdirSync(B.CASA_HOME);
  await casa(B, ['restore', '--yes', '--phrase-file', phraseFile, '--device-name', 'b'], 'casa restore (device b)', 180_000);
  if (!existsSync(B.CASA_DB)) fail(`casa restore wrote no ${B.CASA_DB}`);
  const dump = async (db) => must(await run('sqlite3', [db, '.dump'], { timeoutMs: 30_000 }), `sqlite3 ${db} .dump`).stdout;
  const [dumpA, dumpB] = [await dump(A.CASA_DB), await dump(B.CASA_DB)];
  const digest = (s) => createHash('sha256').update(s).digest('hex').slice(0, 16);
  if (!/INSERT INTO transactions/.test(dumpA)) fail('device a\'s dump has no transactions (the database was not made)');
  if (dumpA !== dumpB) {
    const la = dumpA.split('\n');
    const lb = dumpB.split('\n');
    const i = la.findIndex((l, k) => l !== lb[k]);
    fail(`the restored database differs from device a's: dumps ${digest(dumpA)} vs ${digest(dumpB)}, ${la.length} vs ${lb.length} lines, first difference at line ${i + 1} (not shown: it is the database's content)`);
  }
  ok('casa restore', `device b's database equals device a's (dump sha256 ${digest(dumpA)}, ${dumpA.split('\n').length} lines)`);

  const statusOut = (await casa(B, ['status', '--json'], 'casa status --json (device b)')).stdout;
  let status;
  try {
    status = JSON.parse(statusOut);
  } catch (e) {
    fail(`casa status --json on device b printed no JSON document (${e.message})`);
  }
  if (status?.paired !== true || status.device_name !== 'b') {
    fail(`casa status --json on device b does not say it is paired as b (paired: ${status?.paired}, device_name: ${status?.device_name})`);
  }
  ok('casa status --json', `device b paired (${Object.keys(status).length} fields)`);

  // The man pages npm linked from package.json "man" into the prefix.
  const manWhere = must(await run('sh', ['-c', 'command -v man'], { cwd, env: userEnv() }), 'command -v man').stdout.trim();
  if (!manWhere) fail('man is not installed: the man page check needs it (man-db)');
  const manRoot = join(prefix, 'share', 'man');
  for (const page of ['casa', 'casa-sync']) {
    const r = must(await run('man', ['-w', page], { cwd, env: userEnv({ MANPATH: manRoot }), timeoutMs: 30_000 }), `man -w ${page}`);
    const at = r.stdout.trim().split('\n')[0];
    // man-db names the page's real file: npm links share/man/man1/PAGE.1 to the package's man/PAGE.1.
    const link = join(manRoot, 'man1', `${page}.1`);
    if (!existsSync(link)) fail(`npm install -g linked no ${link}`);
    if (!at || !isInside(at, pkgDir) || realpathSync(at) !== realpathSync(link)) {
      fail(`man -w ${page} with MANPATH=${manRoot} found ${at || 'nothing'}, not ${link} (the installed package's page)`);
    }
    ok(`man -w ${page}`, `${relative(prefix, link)} -> ${relative(prefix, at)}`);
  }

  // Shell completion from the installed package: the bash script loaded into bash, `casa sn` completed by the prefix's casa.
  const completeSn = [
    'source <(casa completion bash)',
    'COMP_LINE="casa sn"; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(casa sn); COMP_CWORD=1',
    '__casa_complete 2>/dev/null',
    'printf "%s\\n" "${COMPREPLY[@]}"',
  ].join('\n');
  const comp = must(await run('bash', ['--norc', '--noprofile', '-c', completeSn], { cwd, env: userEnv(), timeoutMs: 30_000 }), 'casa completion bash');
  const words = comp.stdout.split('\n').filter(Boolean).sort();
  if (words.join(' ') !== 'snapshot snapshots') fail(`bash completion of \`casa sn\` gave ${JSON.stringify(words)}, not snapshot and snapshots`);
  ok('casa completion bash', '`casa sn` completes to snapshot, snapshots');

  return { tarball: info.filename, tarBytes, fileCount, unpacked: info.unpackedSize, installMs, nmBytes: size.bytes };
}

async function stopRelay() {
  if (!relay || relay.exitCode !== null || relay.signalCode !== null) return;
  const exited = new Promise((r) => relay.once('close', r));
  killGroup(relay, 'SIGTERM');
  const t = setTimeout(() => killGroup(relay, 'SIGKILL'), 10_000);
  await exited;
  clearTimeout(t);
  // Nothing of its group (workerd) outlives it.
  killGroup(relay, 'SIGKILL');
}

function cleanup() {
  for (const child of children.values()) killGroup(child, 'SIGKILL');
  rmSync(work, { recursive: true, force: true });
}

const overall = setTimeout(() => {
  timedOut = true;
  console.error(`pack-smoke: error: the whole run exceeded ${secs(budgetMs)}; stopping every child`);
  for (const child of children.values()) {
    killGroup(child, 'SIGTERM');
    setTimeout(() => killGroup(child, 'SIGKILL'), 5000).unref();
  }
  // If the step in flight does not notice, leave anyway.
  setTimeout(() => {
    cleanup();
    process.exit(1);
  }, 20_000).unref();
}, budgetMs);

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    console.error(`pack-smoke: ${sig}: stopping`);
    cleanup();
    process.exit(130);
  });
}

try {
  const s = await main();
  await stopRelay();
  ok('relay stopped');
  console.log(
    `\npack-smoke ok in ${secs(Date.now() - started)}: ${s.tarball} ${kib(s.tarBytes)} (${s.fileCount} files, ${kib(s.unpacked)} unpacked); ` +
      `install ${secs(s.installMs)}, node_modules ${mib(s.nmBytes)}; ${results.length} checks ok: ${results.join(', ')}`,
  );
} catch (err) {
  console.error(`\npack-smoke: error: ${err instanceof SmokeError ? err.message : redact(err?.stack ?? err)}`);
  console.error(`(${results.length} checks passed before it: ${results.join(', ') || 'none'})`);
  process.exitCode = 1;
} finally {
  clearTimeout(overall);
  await stopRelay().catch(() => {});
  cleanup();
}
