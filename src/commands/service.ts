/**
 * `casa service install | status | uninstall`: casa's two unattended jobs —
 * `casa snapshot --quiet` every N, and `casa sync --watch` kept running —
 * as the user's own background service: systemd user units on Linux,
 * launchd agents on macOS; on Windows `--dry-run` prints the Task Scheduler
 * commands (untested there, so install does not run them). The files come
 * from src/service/units.ts; what was written is kept in
 * CASA_HOME/service.json (src/service/manifest.ts) so uninstall removes
 * exactly that.
 *
 * Install again updates in place: the files are rewritten, the manager
 * reloaded and the jobs restarted with the new settings; a job no longer
 * wanted (`--sync off` after `--sync watch`) is stopped and its file
 * removed. A file of the same name that this CASA_HOME's install did not
 * write (another CASA_HOME's, or edited by the user) is not overwritten
 * without --yes; uninstall keeps a file the user changed since install
 * (exit 1, naming it) unless --yes.
 *
 * No service manager reachable (no `systemctl`, no user session: a
 * container, a server without lingering) is exit 1 with the crontab lines
 * that do the same.
 */
import { existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, renameSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { FailureError, NotPairedError, UsageError } from '../errors.js';
import { readState } from '../state.js';
import { runViews, describeRun, type Job, type RunView } from '../last-run.js';
import { readManifest, removeManifest, sha256, writeManifest, type Manager, type ServiceManifest } from '../service/manifest.js';
import {
  cronLines,
  everyText,
  launchdFiles,
  launchdLabels,
  LAUNCHD_SNAPSHOT,
  LAUNCHD_SYNC,
  parseSnapshotEvery,
  systemdEnabled,
  systemdFiles,
  SYSTEMD_SNAPSHOT_SERVICE,
  SYSTEMD_SNAPSHOT_TIMER,
  SYSTEMD_SYNC_SERVICE,
  windowsCommands,
  type ServiceFile,
  type ServiceSpec,
} from '../service/units.js';
import {
  complaint,
  launchAgentsDir,
  launchctl,
  launchDomain,
  launchdPrint,
  launchdReachable,
  systemctl,
  systemdReachable,
  systemdShow,
  systemdUnitDir,
  systemdWord,
} from '../service/managers.js';
import type { Context } from './context.js';

export interface ServiceInstallOptions {
  snapshotEvery?: string;
  sync?: string;
  dryRun?: boolean;
  /** commander's --no-enable: false when given. */
  enable?: boolean;
}

type Platform = NodeJS.Platform;

/** casa's own entry point, absolute (dist/commands/service.js → bin/casa). */
export function casaEntry(): string {
  return fileURLToPath(new URL('../../bin/casa', import.meta.url));
}

/** What the jobs run: this node, this casa, and the settings in use now (flags and environment, resolved). */
export function serviceSpec(ctx: Context, everyMs: number, sync: 'watch' | 'off'): ServiceSpec {
  const g = ctx.globals;
  const env: [string, string][] = [
    ['CASA_HOME', g.home],
    ['CASA_DB', g.db],
  ];
  if (g.serverOverride !== undefined) env.push(['CASA_SERVER', g.serverOverride]);
  if (g.keystore !== undefined) env.push(['CASA_KEYSTORE', g.keystore]);
  if (g.tmpDir !== undefined) env.push(['CASA_TMPDIR', g.tmpDir]);
  if (g.insecureHttp) env.push(['CASA_INSECURE_HTTP', '1']);
  return { node: process.execPath, entry: casaEntry(), env, snapshotEveryMs: everyMs, sync };
}

function managerOf(platform: Platform): Manager | 'windows' | null {
  if (platform === 'linux') return 'systemd';
  if (platform === 'darwin') return 'launchd';
  if (platform === 'win32') return 'windows';
  return null;
}

interface Plan {
  manager: Manager;
  dir: string;
  files: ServiceFile[];
  /** Units (systemd) or labels (launchd) to enable and start. */
  enabled: string[];
  commands: string[][];
}

function plan(ctx: Context, manager: Manager, spec: ServiceSpec): Plan {
  const env = ctx.deps.term.env;
  if (manager === 'systemd') {
    const dir = systemdUnitDir(env);
    const enabled = systemdEnabled(spec);
    return {
      manager,
      dir,
      files: systemdFiles(spec, dir),
      enabled,
      commands: [
        ['systemctl', '--user', 'daemon-reload'],
        ['systemctl', '--user', 'enable', ...enabled],
        ['systemctl', '--user', 'restart', ...enabled],
      ],
    };
  }
  const dir = launchAgentsDir(env);
  const files = launchdFiles(spec, dir, ctx.globals.home);
  return {
    manager,
    dir,
    files,
    enabled: launchdLabels(spec),
    commands: files.map((f) => ['launchctl', 'bootstrap', launchDomain(), f.path]),
  };
}

/** Why no manager answers, or null when one does. */
function unreachable(ctx: Context, manager: Manager): string | null {
  const env = ctx.deps.term.env;
  return manager === 'systemd' ? systemdReachable(env) : launchdReachable(env);
}

function cronError(why: string, spec: ServiceSpec): FailureError {
  const c = cronLines(spec);
  const hints = [
    'without a user service manager (a container, a server without a login session: see `loginctl enable-linger`), use cron; `crontab -e` and add:',
    `  ${c.snapshot}`,
  ];
  if (c.watchAtBoot) hints.push('and, to sync, either the watch from boot:', `  ${c.watchAtBoot}`, 'or a sync every 5 minutes:', `  ${c.syncEvery}`);
  return new FailureError(`no service manager reachable: ${why}`, { hints });
}

export async function runServiceInstall(ctx: Context, opts: ServiceInstallOptions, platform: Platform = process.platform): Promise<void> {
  const everyMs = parseSnapshotEvery(opts.snapshotEvery);
  const sync = opts.sync ?? 'watch';
  if (sync !== 'watch' && sync !== 'off') throw new UsageError(`--sync takes watch or off, not ${JSON.stringify(sync)}`);
  const spec = serviceSpec(ctx, everyMs, sync);
  const manager = managerOf(platform);

  if (manager === 'windows') {
    const script = windowsCommands(spec);
    if (!opts.dryRun) {
      throw new FailureError('casa service install is not tested on Windows and does not run there', {
        hints: ['`casa service install --dry-run` prints the Task Scheduler commands (PowerShell) to run yourself'],
      });
    }
    ctx.out.print(script);
    ctx.out.result({ message_type: 'service_install', manager: 'taskscheduler', dry_run: true, script });
    return;
  }
  if (manager === null) {
    throw cronError(`casa knows systemd (Linux) and launchd (macOS), not ${platform}'s`, spec);
  }

  const p = plan(ctx, manager, spec);
  if (opts.dryRun) {
    for (const f of p.files) ctx.out.print(`# ${f.path}\n${f.content}`);
    ctx.out.print(`# then:\n${p.commands.map((c) => c.join(' ')).join('\n')}`);
    ctx.out.result({
      message_type: 'service_install',
      manager,
      dry_run: true,
      files: p.files.map((f) => ({ path: f.path, sha256: sha256(f.content), content: f.content })),
      enabled: p.enabled,
      commands: p.commands,
    });
    return;
  }

  if (!readState(ctx.globals.home)?.vault) {
    throw new NotPairedError(`this device is not paired (no vault in ${ctx.globals.home}): the jobs would only fail`);
  }
  const why = unreachable(ctx, manager);
  if (why !== null) throw cronError(why, spec);
  if (!existsSync(ctx.globals.db)) ctx.out.warn(`no database at ${ctx.globals.db} yet: the jobs fail until there is one`);

  const before = readManifest(ctx.globals.home);
  if (before && before.manager !== manager) {
    throw new FailureError(`CASA_HOME holds a ${before.manager} installation`, { hints: ['run `casa service uninstall` first'] });
  }
  refuseForeign(ctx, p.files, before);

  // A job dropped since the last install (--sync off): stop it and remove its file first.
  const wanted = new Set(p.files.map((f) => f.path));
  const dropped = before ? before.files.filter((f) => !wanted.has(f.path)) : [];
  if (dropped.length > 0) {
    stopJobs(ctx, manager, p.dir, jobNames(manager, dropped));
    for (const f of dropped) removeIfOurs(f, true);
  }

  const created = new Set(before?.created_dirs ?? []);
  for (const d of missingDirs(p.dir)) created.add(d);
  mkdirSync(p.dir, { recursive: true, mode: 0o755 });
  for (const f of p.files) writeUnitFile(f);

  // `enable` creates these if missing: ours to remove again.
  if (manager === 'systemd' && opts.enable !== false) {
    for (const w of ['timers.target.wants', 'default.target.wants']) if (!existsSync(join(p.dir, w))) created.add(join(p.dir, w));
  }
  const manifest: ServiceManifest = {
    version: 1,
    manager,
    installed_at: ctx.deps.now(),
    snapshot_every_ms: everyMs,
    sync,
    files: p.files.map((f) => ({ path: f.path, sha256: sha256(f.content) })),
    created_dirs: [...created],
    enabled: opts.enable === false ? [] : p.enabled,
  };
  // Written before the manager is asked anything: whatever happens next, uninstall knows what is there.
  writeManifest(ctx.globals.home, manifest);

  if (manager === 'systemd') {
    must(systemctl(ctx.deps.term.env, 'daemon-reload'), 'systemctl --user daemon-reload');
    if (opts.enable !== false) {
      must(systemctl(ctx.deps.term.env, 'enable', ...p.enabled), `systemctl --user enable ${p.enabled.join(' ')}`);
      // restart, not start: an update in place takes effect now (a running watch picks up the new settings).
      must(systemctl(ctx.deps.term.env, 'restart', ...p.enabled), `systemctl --user restart ${p.enabled.join(' ')}`);
    }
  } else if (opts.enable !== false) {
    for (const f of p.files) {
      const label = f.path.endsWith(`${LAUNCHD_SYNC}.plist`) ? LAUNCHD_SYNC : LAUNCHD_SNAPSHOT;
      launchctl(ctx.deps.term.env, 'bootout', `${launchDomain()}/${label}`); // not loaded yet: fine
      must(launchctl(ctx.deps.term.env, 'bootstrap', launchDomain(), f.path), `launchctl bootstrap ${launchDomain()} ${f.path}`);
    }
  }

  for (const f of p.files) ctx.out.print(`wrote ${f.path}`);
  const jobs = `snapshot every ${everyText(everyMs)}${sync === 'watch' ? ' and sync --watch' : ''}`;
  if (opts.enable === false) {
    ctx.out.print(`not enabled (--no-enable): ${manager === 'systemd' ? `systemctl --user enable --now ${p.enabled.join(' ')}` : p.commands.map((c) => c.join(' ')).join('; ')} starts them`);
  } else {
    ctx.out.print(`enabled and started: ${jobs}`);
  }
  ctx.out.note('`casa service status` shows how the jobs do; `casa service uninstall` removes them');
  ctx.out.result({
    message_type: 'service_install',
    manager,
    dry_run: false,
    files: manifest.files,
    enabled: manifest.enabled,
    snapshot_every_ms: everyMs,
    sync,
  });
}

function must(r: ReturnType<typeof systemctl>, what: string): void {
  if (!r.ok) throw new FailureError(`\`${what}\` failed: ${complaint(r)}`, { hints: ['`casa service status` shows what is installed; `casa service uninstall` removes it'] });
}

/** An existing file of the same name that this install did not write, unchanged since: not replaced without --yes. */
function refuseForeign(ctx: Context, files: ServiceFile[], before: ServiceManifest | null): void {
  const ours = new Map((before?.files ?? []).map((f) => [f.path, f.sha256]));
  const foreign = files.filter((f) => {
    let current: Buffer;
    try {
      current = readFileSync(f.path);
    } catch {
      return false;
    }
    const digest = sha256(current);
    return digest !== sha256(f.content) && digest !== ours.get(f.path);
  });
  if (foreign.length === 0 || ctx.globals.yes) return;
  throw new FailureError(`${foreign.map((f) => f.path).join(', ')} ${foreign.length === 1 ? 'exists and was' : 'exist and were'} not written by this CASA_HOME's install (or changed since)`, {
    hints: ['another CASA_HOME installed these jobs, or you edited them: `casa service install --yes` replaces them'],
  });
}

/** The directories `mkdir -p dir` would create, outermost first. */
function missingDirs(dir: string): string[] {
  const out: string[] = [];
  for (let d = dir; !existsSync(d); d = dirname(d)) {
    out.unshift(d);
    if (dirname(d) === d) break;
  }
  return out;
}

/** Replaces a unit file atomically (temp file in the same directory, rename), 0644 like any unit. */
function writeUnitFile(f: ServiceFile): void {
  const tmp = join(dirname(f.path), `.casa-${randomBytes(4).toString('hex')}.tmp`);
  try {
    writeFileSync(tmp, f.content, { mode: 0o644, flag: 'wx' });
    renameSync(tmp, f.path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new FailureError(`cannot write ${f.path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** Removes a file install wrote if it is as written (or `force`); true if it is gone. */
function removeIfOurs(f: { path: string; sha256: string }, force: boolean): boolean {
  let current: Buffer;
  try {
    current = readFileSync(f.path);
  } catch {
    return true; // already gone
  }
  if (!force && sha256(current) !== f.sha256) return false;
  rmSync(f.path, { force: true });
  return true;
}

/** The units (systemd) or labels (launchd) of files install wrote: every one is stopped on uninstall, enabled or not (a later `--no-enable` install leaves earlier ones enabled). */
function jobNames(manager: Manager, files: { path: string }[]): string[] {
  return files.map((f) => (manager === 'systemd' ? basename(f.path) : basename(f.path, '.plist')));
}

/** Stops and disables units (systemd) or boots out agents (launchd); then removes any enable link left behind (the manager may be gone). */
function stopJobs(ctx: Context, manager: Manager, dir: string, names: string[]): void {
  if (names.length === 0) return;
  const env = ctx.deps.term.env;
  if (manager === 'systemd') {
    systemctl(env, 'disable', '--now', ...names);
    for (const wants of ['timers.target.wants', 'default.target.wants']) {
      for (const n of names) {
        const link = join(dir, wants, n);
        try {
          if (lstatSync(link).isSymbolicLink() && readlinkSync(link).endsWith(n)) rmSync(link);
        } catch {
          // not there
        }
      }
    }
  } else {
    for (const label of names) launchctl(env, 'bootout', `${launchDomain()}/${label}`);
  }
}

export async function runServiceUninstall(ctx: Context): Promise<void> {
  const m = readManifest(ctx.globals.home);
  if (!m) {
    ctx.out.print(`nothing to uninstall: no service installed from ${ctx.globals.home}`);
    ctx.out.result({ message_type: 'service_uninstall', removed: [], kept: [] });
    return;
  }
  const dir = m.files[0] ? dirname(m.files[0].path) : '';
  const why = unreachable(ctx, m.manager);
  if (why !== null) ctx.out.warn(`${why}: jobs already running keep running until the session ends; their files are removed`);
  stopJobs(ctx, m.manager, dir, jobNames(m.manager, m.files));
  const removed: string[] = [];
  const kept: string[] = [];
  for (const f of m.files) {
    if (removeIfOurs(f, ctx.globals.yes)) removed.push(f.path);
    else kept.push(f.path);
  }
  if (m.manager === 'systemd' && why === null) {
    systemctl(ctx.deps.term.env, 'daemon-reload');
    // Forget the failures of units that are gone (they would linger in `systemctl --user --failed`).
    systemctl(ctx.deps.term.env, 'reset-failed', SYSTEMD_SNAPSHOT_SERVICE, SYSTEMD_SNAPSHOT_TIMER, SYSTEMD_SYNC_SERVICE);
  }
  // Deepest first; one that is not empty (something else lives there) stays.
  for (const d of [...m.created_dirs].sort((a, b) => b.length - a.length)) {
    try {
      rmdirSync(d);
    } catch {
      // not empty, or gone
    }
  }
  for (const f of removed) ctx.out.print(`removed ${f}`);
  ctx.out.result({ message_type: 'service_uninstall', removed, kept });
  if (kept.length > 0) {
    writeManifest(ctx.globals.home, { ...m, files: m.files.filter((f) => kept.includes(f.path)), enabled: [] });
    throw new FailureError(`kept ${kept.join(', ')}: changed since \`casa service install\` wrote ${kept.length === 1 ? 'it' : 'them'} (the jobs are stopped)`, {
      hints: ['remove it yourself, or run `casa service uninstall --yes` to remove it anyway'],
    });
  }
  removeManifest(ctx.globals.home);
}

// ---------------------------------------------------------------- status

export interface ServiceJobStatus {
  job: Job;
  /** The systemd unit or launchd label that runs it. */
  unit: string;
  installed: boolean;
  /** From the service manager: systemd's is-enabled / is-active words, launchd's "loaded" and state. */
  enabled: string | null;
  active: string | null;
  /** The exit status of the job's last run, as the service manager saw it. */
  manager_exit_status: number | null;
  /** When the job last started (systemd's ActiveEnterTimestamp / ExecMainStartTimestamp), as the manager says it. */
  manager_since: string | null;
  last_run: RunView | null;
}

export async function runServiceStatus(ctx: Context, platform: Platform = process.platform): Promise<void> {
  const m = readManifest(ctx.globals.home);
  const manager = m?.manager ?? managerOf(platform);
  const env = ctx.deps.term.env;
  const now = ctx.deps.now();
  const runs = runViews(ctx.globals.home, now, m?.snapshot_every_ms ?? null);
  const why = manager === 'systemd' || manager === 'launchd' ? unreachable(ctx, manager) : 'no service manager casa knows on this system';
  const present = (suffix: string) => Boolean(m?.files.some((f) => f.path.endsWith(suffix) && existsSync(f.path)));
  const jobs: ServiceJobStatus[] = [];
  const job = (j: Job, unit: string, file: string): ServiceJobStatus => ({
    job: j,
    unit,
    installed: present(file),
    enabled: null,
    active: null,
    manager_exit_status: null,
    manager_since: null,
    last_run: runs[j],
  });
  if (manager === 'launchd') {
    jobs.push(job('snapshot', LAUNCHD_SNAPSHOT, `${LAUNCHD_SNAPSHOT}.plist`), job('sync', LAUNCHD_SYNC, `${LAUNCHD_SYNC}.plist`));
    if (why === null) {
      for (const s of jobs) {
        const pr = launchdPrint(env, s.unit);
        s.enabled = pr.loaded ? 'loaded' : 'not loaded';
        s.active = pr.state;
        s.manager_exit_status = pr.lastExit;
      }
    }
  } else {
    jobs.push(job('snapshot', SYSTEMD_SNAPSHOT_TIMER, SYSTEMD_SNAPSHOT_TIMER), job('sync', SYSTEMD_SYNC_SERVICE, SYSTEMD_SYNC_SERVICE));
    if (why === null && manager === 'systemd') {
      for (const s of jobs) {
        s.enabled = systemdWord(env, 'is-enabled', s.unit);
        s.active = systemdWord(env, 'is-active', s.unit);
        const svc = s.job === 'snapshot' ? SYSTEMD_SNAPSHOT_SERVICE : SYSTEMD_SYNC_SERVICE;
        const sh = systemdShow(env, svc, ['ExecMainStatus', 'ExecMainStartTimestamp', 'ExecMainExitTimestamp']);
        const started = sh.ExecMainStartTimestamp;
        if (started && started !== 'n/a') {
          s.manager_since = started;
          const exited = sh.ExecMainExitTimestamp;
          // A running watch has no exit status yet.
          if (exited && exited !== 'n/a' && sh.ExecMainStatus !== undefined) s.manager_exit_status = Number(sh.ExecMainStatus);
        }
      }
    }
  }

  const lines: string[] = [];
  lines.push(`${'manager:'.padEnd(10)} ${manager ?? platform}${why === null ? '' : ` (unreachable: ${why})`}`);
  lines.push(`${'installed:'.padEnd(10)} ${m ? `from ${ctx.globals.home}: snapshot every ${everyText(m.snapshot_every_ms)}, sync ${m.sync}` : `nothing from ${ctx.globals.home} (\`casa service install\`)`}`);
  for (const s of jobs) {
    const state = !s.installed
      ? 'not installed'
      : why !== null
        ? 'installed'
        : `installed, ${s.enabled ?? '?'}, ${s.active ?? '?'}${s.manager_exit_status === null ? '' : `, last exit ${s.manager_exit_status}`}${s.manager_since ? ` (started ${s.manager_since})` : ''}`;
    lines.push(`${(s.job + ':').padEnd(10)} ${s.unit}: ${state}`);
    if (s.last_run) lines.push(`${''.padEnd(10)} ${describeRun(s.last_run, now)}`);
  }
  ctx.out.print(lines.join('\n'));
  ctx.out.result({
    message_type: 'service_status',
    manager: manager ?? null,
    reachable: why === null,
    manager_error: why,
    installed: m !== null,
    snapshot_every_ms: m?.snapshot_every_ms ?? null,
    sync: m?.sync ?? null,
    files: (m?.files ?? []).map((f) => {
      let changed: boolean | null = null;
      try {
        changed = sha256(readFileSync(f.path)) !== f.sha256;
      } catch {
        // missing
      }
      return { path: f.path, present: changed !== null, changed };
    }),
    jobs,
  });
}
