#!/usr/bin/env node
// `npm test`: the one test command everywhere (README: `npm ci && npm test`;
// CI runs exactly that). Builds, then runs `vitest run` with the arguments
// passed through (`npm test -- test/unit/x.test.ts`), and exits with
// vitest's exit code.
//
// The keychain tests (test/e2e/keychain.test.ts) need a real Secret Service.
// They only ever run against a throwaway one, never the user's own keyring:
//
// - Linux with dbus-run-session and gnome-keyring-daemon installed: the whole
//   vitest run happens inside `dbus-run-session` with gnome-keyring started
//   and unlocked (a non-empty password, so the `login` collection exists),
//   with HOME, XDG_DATA_HOME, XDG_RUNTIME_DIR and XDG_CACHE_HOME pointing into
//   a temp dir that is removed afterwards. This is done even when the user
//   has a desktop session (DBUS_SESSION_BUS_ADDRESS set): its keyring is left
//   alone. CASA_TEST_SECRET_SERVICE=1 tells the tests the keyring is up.
// - CASA_TEST_SECRET_SERVICE=1 already set by the caller: "I have a keychain
//   the tests may use" (e.g. macOS); vitest runs directly, keychain included.
// - Otherwise, outside CI: one line says the keychain tests are excluded and
//   why, and the rest runs. In CI (CI set) nothing is excluded, so a missing
//   Secret Service fails the run instead of hiding.
//
// SIGINT/SIGTERM/SIGHUP are forwarded to the tests; the exit status is then
// 128 + the signal number.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const KEYCHAIN_TEST = 'test/e2e/keychain.test.ts';
const KEYRING_PASSWORD = 'casa-test'; // a throwaway keyring; must be non-empty
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'];

const self = fileURLToPath(import.meta.url);
const root = path.resolve(path.dirname(self), '..');
const args = process.argv.slice(2);
const inCI = Boolean(process.env.CI) && process.env.CI !== 'false' && process.env.CI !== '0';

function say(line) {
  process.stderr.write(`casa test: ${line}\n`);
}

function onPath(cmd) {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter(Boolean);
  return dirs.some((dir) => existsSync(path.join(dir, cmd)));
}

function exitStatus(code, signal) {
  if (signal) return 128 + (constants.signals[signal] ?? 1);
  return code ?? 1;
}

function build() {
  // Under `npm test`, npm_execpath is npm's own CLI script: reuse it rather than
  // guessing npm's name (npm.cmd on Windows).
  const npmCli = process.env.npm_execpath;
  const r =
    npmCli && /\.[cm]?js$/.test(npmCli)
      ? spawnSync(process.execPath, [npmCli, 'run', 'build'], { cwd: root, stdio: 'inherit' })
      : spawnSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' });
  if (r.error) {
    say(`cannot run npm run build: ${r.error.message}`);
    process.exit(1);
  }
  if (r.status !== 0) process.exit(exitStatus(r.status, r.signal));
}

function vitestBin() {
  const require = createRequire(path.join(root, 'package.json'));
  const pkgPath = require.resolve('vitest/package.json');
  const pkg = JSON.parse(readFileSync(pkgPath, 'utf8'));
  const bin = typeof pkg.bin === 'string' ? pkg.bin : pkg.bin.vitest;
  return path.join(path.dirname(pkgPath), bin);
}

/**
 * Runs a child to completion. `forward`: 'child' passes our signals to it,
 * 'group' starts it in its own process group and signals the whole group,
 * 'none' leaves signals alone (they already reach the child).
 */
function run(cmd, cmdArgs, opts, forwardTo = 'child') {
  const group = forwardTo === 'group';
  return new Promise((resolve) => {
    const child = spawn(cmd, cmdArgs, { cwd: root, ...opts, detached: group });
    let received;
    const forward = (sig) => {
      received ??= sig;
      try {
        if (group) process.kill(-child.pid, sig);
        else child.kill(sig);
      } catch {
        // already gone
      }
    };
    // 'none' still listens, so a signal does not kill us before the child is done.
    const handler = forwardTo === 'none' ? (sig) => void (received ??= sig) : forward;
    for (const sig of SIGNALS) process.on(sig, handler);
    child.on('error', (err) => {
      say(`cannot start ${cmd}: ${err.message}`);
      resolve(1);
    });
    child.on('exit', (code, signal) => {
      for (const sig of SIGNALS) process.off(sig, handler);
      resolve(received ? exitStatus(null, received) : exitStatus(code, signal));
    });
  });
}

function runVitest(extra = [], forwardTo = 'child') {
  return run(process.execPath, [vitestBin(), 'run', ...args, ...extra], { stdio: 'inherit' }, forwardTo);
}

const excludeKeychain = ['--exclude', KEYCHAIN_TEST];

/** Outside the session: build, then pick how to run. */
async function outer() {
  build();

  if (process.env.CASA_TEST_SECRET_SERVICE === '1') {
    return runVitest();
  }
  if (process.platform === 'linux' && onPath('dbus-run-session') && onPath('gnome-keyring-daemon')) {
    return inSession();
  }
  if (inCI) {
    say(`no dbus-run-session/gnome-keyring-daemon: ${KEYCHAIN_TEST} runs anyway (CI) and fails without a Secret Service`);
    return runVitest();
  }
  say(
    `${KEYCHAIN_TEST} excluded: it runs only against a throwaway gnome-keyring ` +
      '(install dbus and gnome-keyring) or, with CASA_TEST_SECRET_SERVICE=1, against your own keychain',
  );
  return runVitest(excludeKeychain);
}

/** Re-runs this script inside a private D-Bus session with a temp home for the keyring. */
async function inSession() {
  const tmp = mkdtempSync(path.join(tmpdir(), 'casa-test-keyring-'));
  const dirs = { share: path.join(tmp, 'share'), run: path.join(tmp, 'run'), cache: path.join(tmp, 'cache') };
  for (const dir of Object.values(dirs)) mkdirSync(dir, { mode: 0o700 });
  const env = {
    ...process.env,
    // Everything gnome-keyring (or a service D-Bus activates) could touch lives in tmp:
    // XDG_RUNTIME_DIR matters most, or it would find a desktop's running daemon.
    HOME: tmp,
    XDG_DATA_HOME: dirs.share,
    XDG_RUNTIME_DIR: dirs.run,
    XDG_CACHE_HOME: dirs.cache,
    CASA_TEST_IN_SESSION: '1',
  };
  delete env.GNOME_KEYRING_CONTROL;
  delete env.DBUS_SESSION_BUS_ADDRESS;
  // Own process group, so a forwarded signal reaches vitest too: dbus-run-session
  // does not pass SIGTERM on to its child. stdin is not needed by `vitest run`.
  const status = await run(
    'dbus-run-session',
    ['--', process.execPath, self, ...args],
    { env, stdio: ['ignore', 'inherit', 'inherit'] },
    'group',
  );
  rmSync(tmp, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  return status;
}

/**
 * Inside dbus-run-session: start and unlock gnome-keyring, then run vitest.
 * The outer runner signals our whole process group, so vitest gets signals
 * directly and we only wait for it.
 */
async function inner() {
  const r = spawnSync('gnome-keyring-daemon', ['--unlock', '--components=secrets'], {
    input: KEYRING_PASSWORD,
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.status === 0) {
    for (const line of r.stdout.split('\n')) {
      const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
      if (m) process.env[m[1]] = m[2];
    }
    process.env.CASA_TEST_SECRET_SERVICE = '1';
    return runVitest([], 'none');
  }
  const why = (r.error?.message ?? r.stderr.trim().split('\n').pop()) || `exit status ${r.status}`;
  if (inCI) {
    say(`gnome-keyring-daemon did not start (${why}); ${KEYCHAIN_TEST} will fail`);
    return runVitest([], 'none');
  }
  say(`${KEYCHAIN_TEST} excluded: gnome-keyring-daemon did not start (${why})`);
  return runVitest(excludeKeychain, 'none');
}

const status = process.env.CASA_TEST_IN_SESSION === '1' ? await inner() : await outer();
process.exit(status);
