/**
 * The service managers `casa service` drives: systemd's user manager
 * (`systemctl --user`) and launchd (`launchctl`, the gui/UID domain). Each
 * call is a child process with casa's environment (XDG_RUNTIME_DIR and
 * DBUS_SESSION_BUS_ADDRESS find the user's manager), bounded in time; its
 * failure is data, the command decides what it means.
 */
import { spawnSync } from 'node:child_process';
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface Ran {
  ok: boolean;
  code: number | null;
  stdout: string;
  stderr: string;
  /** The program is not installed (not on PATH). */
  missing: boolean;
}

type Env = Record<string, string | undefined>;

const TIMEOUT_MS = 20_000;

export function runTool(cmd: string, args: string[], env: Env): Ran {
  const r = spawnSync(cmd, args, { env: env as NodeJS.ProcessEnv, encoding: 'utf8', timeout: TIMEOUT_MS, stdio: ['ignore', 'pipe', 'pipe'] });
  const missing = (r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
  return {
    ok: !r.error && r.status === 0,
    code: r.status,
    stdout: r.stdout ?? '',
    stderr: r.error && !missing ? String(r.error.message) : (r.stderr ?? ''),
    missing,
  };
}

/** The first non-empty line of a tool's complaint, for an error message. */
export function complaint(r: Ran): string {
  if (r.missing) return 'not installed';
  return (r.stderr.split('\n').find((l) => l.trim() !== '') ?? `exit ${r.code}`).trim();
}

// ---------------------------------------------------------------- systemd

export function systemdUnitDir(env: Env): string {
  return join(env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config'), 'systemd', 'user');
}

export function systemctl(env: Env, ...args: string[]): Ran {
  return runTool('systemctl', ['--user', ...args], env);
}

/** Whether a user manager answers: null if so, else why not. */
export function systemdReachable(env: Env): string | null {
  const r = systemctl(env, 'show', '--property=Version');
  if (r.ok && /^Version=/m.test(r.stdout)) return null;
  return r.missing ? '`systemctl` is not installed' : `\`systemctl --user\` failed (${complaint(r)})`;
}

/** `systemctl --user show UNIT -p ...` as a map. */
export function systemdShow(env: Env, unit: string, props: string[]): Record<string, string> {
  const r = systemctl(env, 'show', unit, ...props.map((p) => `--property=${p}`));
  const out: Record<string, string> = {};
  if (!r.ok) return out;
  for (const line of r.stdout.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

/** `is-enabled` / `is-active`'s one word (printed on failure too), or null if systemctl said nothing. */
export function systemdWord(env: Env, verb: 'is-enabled' | 'is-active', unit: string): string | null {
  const r = systemctl(env, verb, unit);
  return r.stdout.trim().split('\n')[0] || null;
}

// ---------------------------------------------------------------- launchd

export function launchAgentsDir(env: Env): string {
  return join(env.HOME || homedir(), 'Library', 'LaunchAgents');
}

export function launchDomain(): string {
  return `gui/${typeof process.getuid === 'function' ? process.getuid() : 0}`;
}

export function launchctl(env: Env, ...args: string[]): Ran {
  return runTool('launchctl', args, env);
}

export function launchdReachable(env: Env): string | null {
  const r = launchctl(env, 'print', launchDomain());
  if (r.ok) return null;
  return r.missing ? '`launchctl` is not available' : `\`launchctl print ${launchDomain()}\` failed (${complaint(r)}): no GUI session`;
}

/** From `launchctl print gui/UID/LABEL`: its state and last exit code (the output is not a stable format; best effort). */
export function launchdPrint(env: Env, label: string): { loaded: boolean; state: string | null; lastExit: number | null } {
  const r = launchctl(env, 'print', `${launchDomain()}/${label}`);
  if (!r.ok) return { loaded: false, state: null, lastExit: null };
  const state = /^\s*state = (.+)$/m.exec(r.stdout)?.[1]?.trim() ?? null;
  const exit = /^\s*last exit code = (-?\d+)/m.exec(r.stdout)?.[1];
  return { loaded: true, state, lastExit: exit === undefined ? null : Number(exit) };
}
