/**
 * The files and commands of `casa service install`, generated without
 * touching anything (pure: paths and values in, text out), so tests check
 * them with the real tools (systemd-analyze verify, a property-list parser)
 * and `--dry-run` prints exactly what install would write.
 *
 * Two jobs: `casa snapshot --quiet` every N (a systemd timer, launchd's
 * StartInterval, Task Scheduler's repetition, cron's step) and
 * `casa sync --watch` kept running (Restart=on-failure, KeepAlive,
 * restart-on-failure, @reboot). Each carries absolute paths — the node
 * binary and casa's bin/casa — and the CASA_HOME, database, relay and
 * keystore in use when it was installed, so the job runs the casa the user
 * ran, on the same vault, whatever the service manager's environment.
 *
 * Quoting is each format's own: systemd's C-style quoting with `%` and
 * (in ExecStart) `$` doubled (systemd.syntax(7), systemd.service(5)
 * "Command lines"); XML escaping in property lists; POSIX single quotes and
 * `\%` in crontab lines (crontab(5): an unescaped % ends the command);
 * Windows argv quoting (CommandLineToArgvW) inside PowerShell single quotes.
 * A value with a control character (a newline in a path) cannot be carried
 * safely by these formats and is refused.
 */
import { join } from 'node:path';
import { FailureError, UsageError } from '../errors.js';
import { parseDuration, UNIT_MS } from '../ui/format.js';

export interface ServiceSpec {
  /** The node binary (absolute: process.execPath). */
  node: string;
  /** casa's entry point, bin/casa (absolute). */
  entry: string;
  /** What the jobs run with: CASA_HOME, CASA_DB, and CASA_SERVER, CASA_KEYSTORE, CASA_TMPDIR, CASA_INSECURE_HTTP when in use. */
  env: [string, string][];
  snapshotEveryMs: number;
  sync: 'watch' | 'off';
}

export interface ServiceFile {
  path: string;
  content: string;
}

export const DEFAULT_SNAPSHOT_EVERY = '15m';
const MIN_EVERY_MS = UNIT_MS.m;
const MAX_EVERY_MS = UNIT_MS.d;

/** --snapshot-every: a duration from 1m to 24h (exit 2 otherwise). */
export function parseSnapshotEvery(v: string | undefined): number {
  const text = v ?? DEFAULT_SNAPSHOT_EVERY;
  const ms = parseDuration(text);
  if (ms === null || ms < MIN_EVERY_MS || ms > MAX_EVERY_MS) {
    throw new UsageError(`--snapshot-every takes a duration from 1m to 24h, not ${JSON.stringify(text)}`, {
      hints: ['a whole number with s, m or h, e.g. --snapshot-every 15m, 90s or 1h'],
    });
  }
  return ms;
}

/** A duration for people and systemd: "15min", "90s", "1h". */
export function everyText(ms: number): string {
  if (ms % UNIT_MS.h === 0) return `${ms / UNIT_MS.h}h`;
  if (ms % UNIT_MS.m === 0) return `${ms / UNIT_MS.m}min`;
  return `${Math.round(ms / 1000)}s`;
}

function refuseControl(v: string, what: string): void {
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(v)) {
    throw new FailureError(`${what} contains a control character and cannot be written into a service definition: ${JSON.stringify(v)}`, {
      hints: ['use a path without newlines or control characters (move CASA_HOME or the database, or install casa elsewhere)'],
    });
  }
}

function allValues(spec: ServiceSpec): void {
  refuseControl(spec.node, 'the node path');
  refuseControl(spec.entry, "casa's path");
  for (const [k, v] of spec.env) refuseControl(v, k);
}

// ---------------------------------------------------------------- systemd

export const SYSTEMD_SNAPSHOT_SERVICE = 'casa-snapshot.service';
export const SYSTEMD_SNAPSHOT_TIMER = 'casa-snapshot.timer';
export const SYSTEMD_SYNC_SERVICE = 'casa-sync.service';

/** The first snapshot after the timer starts (install, or login): soon, so a broken setup shows at once. */
const FIRST_RUN = '5s';

/** A word of a systemd unit, double-quoted: `\` and `"` escaped, `%` doubled (a specifier otherwise), and `$` doubled where the line expands variables. */
export function systemdQuote(v: string, opts: { dollar: boolean }): string {
  let s = v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/%/g, '%%');
  if (opts.dollar) s = s.replace(/\$/g, '$$$$');
  return `"${s}"`;
}

/**
 * The program of an ExecStart= line is taken as written after specifiers (no
 * `$` expansion) and must not contain a backslash or a quote; a node path
 * that does is run through env(1) instead, where it is an argument like any
 * other.
 */
function execStart(spec: ServiceSpec, args: string[]): string {
  const program = /["'\\]/.test(spec.node)
    ? `/usr/bin/env ${systemdQuote(spec.node, { dollar: true })}`
    : systemdQuote(spec.node, { dollar: false });
  return `ExecStart=${program} ${systemdQuote(spec.entry, { dollar: true })} ${args.join(' ')}`;
}

function environment(spec: ServiceSpec): string[] {
  // Environment= expands specifiers but not variables: only % is doubled.
  return spec.env.map(([k, v]) => `Environment=${systemdQuote(`${k}=${v}`, { dollar: false })}`);
}

const HEADER = '# Written by `casa service install`; `casa service uninstall` removes it (casa-service(1)).';

/** The units, in `unitDir` ($XDG_CONFIG_HOME/systemd/user). */
export function systemdFiles(spec: ServiceSpec, unitDir: string): ServiceFile[] {
  allValues(spec);
  const every = everyText(spec.snapshotEveryMs);
  // Timers fire within AccuracySec of their time (default 1 min, batched to save power): a tenth of the interval, 1 s to 1 min.
  const accuracy = `${Math.min(60, Math.max(1, Math.round(spec.snapshotEveryMs / 10_000)))}s`;
  const files: ServiceFile[] = [
    {
      path: join(unitDir, SYSTEMD_SNAPSHOT_SERVICE),
      content: [
        HEADER,
        '[Unit]',
        'Description=casa: snapshot the Casaconomy database to the vault',
        'Documentation=man:casa-service(1) man:casa-snapshot(1)',
        '',
        '[Service]',
        'Type=oneshot',
        ...environment(spec),
        execStart(spec, ['snapshot', '--quiet']),
        '',
      ].join('\n'),
    },
    {
      path: join(unitDir, SYSTEMD_SNAPSHOT_TIMER),
      content: [
        HEADER,
        '[Unit]',
        `Description=casa: snapshot every ${every}`,
        'Documentation=man:casa-service(1)',
        '',
        '[Timer]',
        // Monotonic: FIRST_RUN after the timer starts (at install, at every login), then every interval after the last run started.
        `OnActiveSec=${FIRST_RUN}`,
        `OnUnitActiveSec=${every}`,
        `AccuracySec=${accuracy}`,
        '',
        '[Install]',
        'WantedBy=timers.target',
        '',
      ].join('\n'),
    },
  ];
  if (spec.sync === 'watch') {
    files.push({
      path: join(unitDir, SYSTEMD_SYNC_SERVICE),
      content: [
        HEADER,
        '[Unit]',
        "Description=casa: keep the Casaconomy database in sync with the vault's other devices",
        'Documentation=man:casa-service(1) man:casa-sync(1)',
        // Never give up restarting (the relay may be away for hours); RestartSec paces it.
        'StartLimitIntervalSec=0',
        '',
        '[Service]',
        'Type=simple',
        ...environment(spec),
        execStart(spec, ['sync', '--watch']),
        'Restart=on-failure',
        'RestartSec=30s',
        // Usage (2), a revoked device or wrong key (4), not paired (7): a restart cannot fix them; `casa service status` shows them.
        'RestartPreventExitStatus=2 4 7',
        '',
        '[Install]',
        'WantedBy=default.target',
        '',
      ].join('\n'),
    });
  }
  return files;
}

/** The units `enable --now` starts: the timer (not its service) and the watch. */
export function systemdEnabled(spec: ServiceSpec): string[] {
  return spec.sync === 'watch' ? [SYSTEMD_SNAPSHOT_TIMER, SYSTEMD_SYNC_SERVICE] : [SYSTEMD_SNAPSHOT_TIMER];
}

// ---------------------------------------------------------------- launchd

export const LAUNCHD_SNAPSHOT = 'org.casa.snapshot';
export const LAUNCHD_SYNC = 'org.casa.sync';

export function xmlEscape(v: string): string {
  return v.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

function plist(label: string, spec: ServiceSpec, args: string[], extra: string[], logFile: string): string {
  const str = (v: string) => `<string>${xmlEscape(v)}</string>`;
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">',
    '<!-- Written by `casa service install`; `casa service uninstall` removes it (casa-service(1)). -->',
    '<plist version="1.0">',
    '<dict>',
    `\t<key>Label</key>\n\t${str(label)}`,
    '\t<key>ProgramArguments</key>',
    '\t<array>',
    ...[spec.node, spec.entry, ...args].map((a) => `\t\t${str(a)}`),
    '\t</array>',
    '\t<key>EnvironmentVariables</key>',
    '\t<dict>',
    ...spec.env.map(([k, v]) => `\t\t<key>${xmlEscape(k)}</key>\n\t\t${str(v)}`),
    '\t</dict>',
    ...extra.map((l) => `\t${l}`),
    '\t<key>ProcessType</key>',
    `\t${str('Background')}`,
    '\t<key>StandardErrorPath</key>',
    `\t${str(logFile)}`,
    '</dict>',
    '</plist>',
    '',
  ].join('\n');
}

/** The agents, in `agentsDir` (~/Library/LaunchAgents); their stderr goes to `logDir` (CASA_HOME). */
export function launchdFiles(spec: ServiceSpec, agentsDir: string, logDir: string): ServiceFile[] {
  allValues(spec);
  const files: ServiceFile[] = [
    {
      path: join(agentsDir, `${LAUNCHD_SNAPSHOT}.plist`),
      content: plist(
        LAUNCHD_SNAPSHOT,
        spec,
        ['snapshot', '--quiet'],
        ['<key>StartInterval</key>', `<integer>${Math.round(spec.snapshotEveryMs / 1000)}</integer>`, '<key>RunAtLoad</key>', '<true/>'],
        join(logDir, 'service-snapshot.log'),
      ),
    },
  ];
  if (spec.sync === 'watch') {
    files.push({
      path: join(agentsDir, `${LAUNCHD_SYNC}.plist`),
      content: plist(
        LAUNCHD_SYNC,
        spec,
        ['sync', '--watch'],
        // Restarted when it fails (not after a clean stop), at most every 30 s.
        ['<key>RunAtLoad</key>', '<true/>', '<key>KeepAlive</key>', '<dict>', '\t<key>SuccessfulExit</key>', '\t<false/>', '</dict>', '<key>ThrottleInterval</key>', '<integer>30</integer>'],
        join(logDir, 'service-sync.log'),
      ),
    });
  }
  return files;
}

export function launchdLabels(spec: Pick<ServiceSpec, 'sync'>): string[] {
  return spec.sync === 'watch' ? [LAUNCHD_SNAPSHOT, LAUNCHD_SYNC] : [LAUNCHD_SNAPSHOT];
}

// ---------------------------------------------------------------- cron

/** A word for sh, single-quoted (and `%` escaped for crontab). */
function cronWord(v: string): string {
  return `'${v.replace(/'/g, `'\\''`).replace(/%/g, '\\%')}'`;
}

/**
 * The crontab lines for the same jobs, for where no service manager runs:
 * snapshot every N (cron's step: minutes under an hour, else hours, rounded),
 * and the watch started at boot, or a plain `casa sync` every 5 minutes.
 */
export function cronLines(spec: ServiceSpec): { snapshot: string; watchAtBoot: string | null; syncEvery: string | null } {
  allValues(spec);
  const prefix = [...spec.env.map(([k, v]) => `${k}=${cronWord(v)}`), cronWord(spec.node), cronWord(spec.entry)].join(' ');
  const min = Math.max(1, Math.round(spec.snapshotEveryMs / UNIT_MS.m));
  const when = min < 60 ? `*/${min} * * * *` : `0 */${Math.min(24, Math.round(min / 60))} * * *`;
  return {
    snapshot: `${when} ${prefix} snapshot --quiet`,
    watchAtBoot: spec.sync === 'watch' ? `@reboot ${prefix} sync --watch --quiet` : null,
    syncEvery: spec.sync === 'watch' ? `*/5 * * * * ${prefix} sync --quiet` : null,
  };
}

// ---------------------------------------------------------------- Windows

/** One argument as CommandLineToArgvW reads it back: quoted, `"` escaped, backslashes before a quote doubled. */
export function windowsArg(v: string): string {
  if (v !== '' && !/[\s"]/.test(v)) return v;
  return `"${v.replace(/(\\*)"/g, '$1$1\\"').replace(/(\\+)$/, '$1$1')}"`;
}

function psQuote(v: string): string {
  return `'${v.replace(/'/g, "''")}'`;
}

const WINDOWS_FLAGS: Record<string, string> = { CASA_HOME: '--home', CASA_DB: '--db', CASA_SERVER: '--server', CASA_KEYSTORE: '--keystore' };

/**
 * The Task Scheduler commands for PowerShell (Register-ScheduledTask), and
 * how to remove them. Task Scheduler sets no environment: the settings
 * become casa's flags (CASA_TMPDIR, which has none, is left out).
 */
export function windowsCommands(spec: ServiceSpec): string {
  allValues(spec);
  const flags: string[] = [];
  for (const [k, v] of spec.env) {
    if (WINDOWS_FLAGS[k]) flags.push(WINDOWS_FLAGS[k]!, v);
    if (k === 'CASA_INSECURE_HTTP') flags.push('--insecure-http');
  }
  const argument = (args: string[]) => psQuote([spec.entry, ...flags, ...args].map(windowsArg).join(' '));
  const action = (args: string[]) => `(New-ScheduledTaskAction -Execute ${psQuote(spec.node)} -Argument ${argument(args)})`;
  const secs = Math.round(spec.snapshotEveryMs / 1000);
  const lines = [
    '# casa service install on Windows: untested. Run these in PowerShell, as yourself (not as administrator):',
    `Register-ScheduledTask -TaskName 'casa-snapshot' -Description 'casa: snapshot every ${everyText(spec.snapshotEveryMs)}' -Force \``,
    `  -Action ${action(['snapshot', '--quiet'])} \``,
    `  -Trigger (New-ScheduledTaskTrigger -Once -At (Get-Date).AddSeconds(5) -RepetitionInterval (New-TimeSpan -Seconds ${secs})) \``,
    '  -Settings (New-ScheduledTaskSettingsSet -StartWhenAvailable -MultipleInstances IgnoreNew)',
  ];
  if (spec.sync === 'watch') {
    lines.push(
      `Register-ScheduledTask -TaskName 'casa-sync' -Description 'casa: sync --watch' -Force \``,
      `  -Action ${action(['sync', '--watch'])} \``,
      '  -Trigger (New-ScheduledTaskTrigger -AtLogOn -User $env:USERNAME) `',
      '  -Settings (New-ScheduledTaskSettingsSet -StartWhenAvailable -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) -ExecutionTimeLimit ([TimeSpan]::Zero))',
      "Start-ScheduledTask -TaskName 'casa-sync'",
    );
  }
  const names = spec.sync === 'watch' ? ['casa-snapshot', 'casa-sync'] : ['casa-snapshot'];
  lines.push(
    '# their state: schtasks /Query /V /FO LIST /TN casa-snapshot',
    `# to remove them: ${names.map((n) => `Unregister-ScheduledTask -TaskName '${n}' -Confirm:$false`).join('; ')}`,
    '',
  );
  return lines.join('\n');
}
