/**
 * A real, throwaway systemd user manager for the service tests: the
 * `systemd --user` binary of the machine, started in its own PID and mount
 * namespace (`unshare`, so it needs root: CI and this container run as
 * root), with its XDG_RUNTIME_DIR, XDG_CONFIG_HOME and HOME in a temp dir.
 * casa then talks to it with plain `systemctl --user` over the manager's
 * private socket in that XDG_RUNTIME_DIR — the user's own manager, if any,
 * is never touched. casa and systemctl run inside the namespace (`nsenter`),
 * as in a user's session: the manager closes its private socket to a peer
 * whose process it cannot see (another PID namespace).
 *
 * In the namespace /run/systemd is a fresh tmpfs holding `system/`: systemd
 * runs as a user instance only where the machine "was booted with systemd"
 * (sd_booted), which a container is not. Stopping kills the namespace's
 * first process; every process in it (the manager, the units it started)
 * dies with it, so nothing outlives the test.
 *
 * When the machine cannot provide this (no systemd, not root, no unshare,
 * namespaces refused) startUserManager returns the reason, for the test to
 * print and skip on.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { baseEnv } from './cli.js';

export interface UserManager {
  /** For casa and systemctl: where the manager's socket is and where units go. */
  env: { XDG_RUNTIME_DIR: string; XDG_CONFIG_HOME: string; HOME: string };
  dir: string;
  /** `systemctl --user ARGS` against this manager. */
  systemctl(...args: string[]): { code: number | null; stdout: string; stderr: string };
  /** What to put before a command to run it in the manager's namespaces (RunOptions.wrap). */
  wrap: string[];
  stop(): Promise<void>;
}

const SYSTEMD = ['/usr/lib/systemd/systemd', '/lib/systemd/systemd'];

function onPath(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

export async function startUserManager(): Promise<UserManager | { unavailable: string }> {
  const systemd = SYSTEMD.find((p) => existsSync(p));
  if (!systemd) return { unavailable: 'systemd is not installed (no /usr/lib/systemd/systemd)' };
  if (!onPath('systemctl')) return { unavailable: 'systemctl is not installed' };
  if (!onPath('unshare') || !onPath('nsenter')) return { unavailable: 'unshare and nsenter (util-linux) are not installed' };
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return { unavailable: 'a private mount namespace needs root' };

  const dir = mkdtempSync(join(tmpdir(), 'casa-systemd-'));
  const env = { XDG_RUNTIME_DIR: join(dir, 'run'), XDG_CONFIG_HOME: join(dir, 'config'), HOME: join(dir, 'home') };
  mkdirSync(env.XDG_RUNTIME_DIR, { mode: 0o700 });
  mkdirSync(env.HOME);
  const script = [
    'set -e',
    'if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; else mount -t tmpfs tmpfs /run; fi',
    'mkdir -p /run/systemd/system',
    // Not exec'd: systemd as PID 1 would take itself for the system manager.
    `${systemd} --user &`,
    'wait',
  ].join('\n');
  const child: ChildProcess = spawn('unshare', ['--fork', '--pid', '--mount-proc', '--mount', '--kill-child', 'sh', '-c', script], {
    env: baseEnv({ ...env, SYSTEMD_LOG_TARGET: 'console', DBUS_SESSION_BUS_ADDRESS: undefined }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stdout!.on('data', (d) => (log += d));
  child.stderr!.on('data', (d) => (log += d));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));

  const wrap: string[] = [];
  const systemctl = (...args: string[]) => {
    const r = spawnSync(wrap[0] ?? 'false', [...wrap.slice(1), 'systemctl', '--user', ...args], {
      env: baseEnv({ ...env, DBUS_SESSION_BUS_ADDRESS: undefined }),
      encoding: 'utf8',
      timeout: 20_000,
    });
    return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  };
  const stop = async () => {
    child.kill('SIGKILL');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) break;
    if (wrap.length === 0) {
      // The namespace's first process (unshare's child), to enter it.
      const inner = readChildren(child.pid!)[0];
      if (inner !== undefined) wrap.push('nsenter', `--target=${inner}`, '--pid', '--mount', '--');
    }
    if (wrap.length > 0 && existsSync(join(env.XDG_RUNTIME_DIR, 'systemd', 'private')) && systemctl('show', '--property=Version').code === 0) {
      return { env, dir, systemctl, wrap, stop };
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await stop();
  const last = log.trim().split('\n').slice(-3).join(' / ');
  return { unavailable: `systemd --user did not start in a private namespace here${last ? `: ${last}` : ''}` };
}

function readChildren(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}
