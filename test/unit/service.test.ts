/**
 * `casa service`'s files and commands as generated (src/service/units.ts),
 * checked by the tools that read them: systemd units by
 * `systemd-analyze verify --user`, launchd plists by Python's plistlib,
 * crontab lines by sh, Windows arguments by CommandLineToArgvW's rules; with
 * paths holding a space, %, $, a backslash, quotes and an ampersand. Plus the
 * duration and option checks (exit 2), the Windows dry run, the manifest,
 * and the last-run record's health rules (src/last-run.ts).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import {
  cronLines,
  launchdFiles,
  parseSnapshotEvery,
  systemdFiles,
  systemdQuote,
  windowsArg,
  windowsCommands,
  xmlEscape,
  type ServiceSpec,
} from '../../src/service/units.js';
import { manifestPath, readManifest, writeManifest, type ServiceManifest } from '../../src/service/manifest.js';
import { recordRun, readLastRun, runHealth, lastRunPath, describeRun, runViews, oneLine, type RunRecord } from '../../src/last-run.js';
import { Context, defaultDeps, resolveGlobals } from '../../src/commands/context.js';
import { runServiceInstall } from '../../src/commands/service.js';
import { CasaError } from '../../src/errors.js';
import { runCasa } from '../helpers/cli.js';

const root = mkdtempSync(join(tmpdir(), 'casa-service-unit-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A directory whose name has everything the formats must quote. */
const ODD = join(root, `odd dir 50% $HOME \\ "q" 'a' & <x>`);
mkdirSync(ODD, { recursive: true });
// ExecStart's program must exist for systemd-analyze: node, reached through the odd directory.
const NODE = join(ODD, 'node');
symlinkSync(process.execPath, NODE);

function spec(over: Partial<ServiceSpec> = {}): ServiceSpec {
  return {
    node: NODE,
    entry: join(ODD, 'bin', 'casa'),
    env: [
      ['CASA_HOME', join(ODD, 'home')],
      ['CASA_DB', join(ODD, 'db 100%.db')],
      ['CASA_SERVER', 'https://relay.example/x?a=1&b=$2'],
      ['CASA_KEYSTORE', 'file'],
    ],
    snapshotEveryMs: 15 * 60_000,
    sync: 'watch',
    ...over,
  };
}

describe('--snapshot-every', () => {
  it('takes 1m to 24h', () => {
    expect(parseSnapshotEvery(undefined)).toBe(900_000);
    expect(parseSnapshotEvery('1m')).toBe(60_000);
    expect(parseSnapshotEvery('90s')).toBe(90_000);
    expect(parseSnapshotEvery('24h')).toBe(86_400_000);
  });
  for (const bad of ['59s', '25h', '2d', '15', 'm', '-5m', '1.5h', '', 'soon']) {
    it(`refuses ${JSON.stringify(bad)} (exit 2, with a hint)`, () => {
      let err: unknown;
      try {
        parseSnapshotEvery(bad);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(CasaError);
      expect((err as CasaError).exitCode).toBe(2);
      expect((err as CasaError).hints[0]).toContain('--snapshot-every 15m');
    });
  }
});

describe('systemd units', () => {
  const unitDir = join(root, 'units');
  const files = systemdFiles(spec({ snapshotEveryMs: 90_000 }), unitDir);
  mkdirSync(unitDir, { recursive: true });
  for (const f of files) writeFileSync(f.path, f.content);

  it('pass systemd-analyze verify --user', () => {
    const runtime = mkdtempSync(join(root, 'runtime-'));
    chmodSync(runtime, 0o700);
    const r = spawnSync('systemd-analyze', ['verify', '--user', '--man=no', ...files.map((f) => f.path)], {
      env: { ...process.env, XDG_RUNTIME_DIR: runtime, XDG_CONFIG_HOME: join(root, 'verify-config') },
      encoding: 'utf8',
    });
    expect(r.error, 'systemd-analyze is installed (apt-get install systemd)').toBeUndefined();
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('verify fails on a broken unit (the check has teeth)', () => {
    const bad = join(root, 'casa-broken.timer');
    writeFileSync(bad, files[1]!.content.replace(/^OnUnitActiveSec=.*$/m, 'OnUnitActiveSec=banana').replace(/^OnActiveSec=.*$/m, ''));
    const runtime = mkdtempSync(join(root, 'runtime-'));
    chmodSync(runtime, 0o700);
    const r = spawnSync('systemd-analyze', ['verify', '--user', '--man=no', bad], { env: { ...process.env, XDG_RUNTIME_DIR: runtime }, encoding: 'utf8' });
    expect(r.status).not.toBe(0);
  });

  it('carry the absolute paths and the settings, quoted for systemd', () => {
    const [svc, timer, sync] = files.map((f) => f.content);
    const q = (v: string) => `"${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/%/g, '%%')}"`;
    expect(svc).toContain(`Environment=${q(`CASA_HOME=${join(ODD, 'home')}`)}\n`);
    expect(svc).toContain('Environment="CASA_DB=');
    expect(svc).toContain('db 100%%.db"');
    // In ExecStart's arguments, $ is doubled too (a variable otherwise); in Environment= it is not. A program
    // path with a backslash or quote cannot be ExecStart's first word: env(1) runs it.
    expect(svc).toContain(`ExecStart=/usr/bin/env ${q(NODE).replace(/\$/g, '$$$$')} ${q(join(ODD, 'bin', 'casa')).replace(/\$/g, '$$$$')} snapshot --quiet\n`);
    const plain = systemdFiles(spec({ node: '/opt/node 22%/$v/bin/node' }), unitDir)[0]!.content;
    expect(plain).toContain('ExecStart="/opt/node 22%%/$v/bin/node" ');
    expect(svc).toContain('$HOME');
    expect(svc).toMatch(/^Type=oneshot$/m);
    expect(timer).toMatch(/^OnUnitActiveSec=90s$/m);
    expect(timer).toMatch(/^AccuracySec=9s$/m);
    expect(timer).toMatch(/^WantedBy=timers.target$/m);
    expect(sync).toMatch(/^ExecStart=.* sync --watch$/m);
    expect(sync).toMatch(/^Restart=on-failure$/m);
    expect(sync).toMatch(/^WantedBy=default.target$/m);
  });

  it('without --sync: no sync unit', () => {
    expect(systemdFiles(spec({ sync: 'off' }), unitDir).map((f) => f.path.split('/').pop())).toEqual(['casa-snapshot.service', 'casa-snapshot.timer']);
  });

  it('quoting: %, $, backslash and quote', () => {
    expect(systemdQuote('a%b$c\\d"e', { dollar: true })).toBe('"a%%b$$c\\\\d\\"e"');
    expect(systemdQuote('a%b$c', { dollar: false })).toBe('"a%%b$c"');
  });

  it('a path with a newline is refused, not written', () => {
    expect(() => systemdFiles(spec({ env: [['CASA_HOME', '/tmp/a\nExecStartPre=/bin/evil']] }), unitDir)).toThrow(/control character/);
  });
});

describe('launchd agents', () => {
  const files = launchdFiles(spec({ snapshotEveryMs: 20 * 60_000 }), join(root, 'LaunchAgents'), join(ODD, 'home'));
  const parse = (content: string) => {
    const f = join(root, `p-${Math.random().toString(36).slice(2)}.plist`);
    writeFileSync(f, content);
    const r = spawnSync('python3', ['-c', 'import json,plistlib,sys; print(json.dumps(plistlib.load(open(sys.argv[1],"rb"))))', f], { encoding: 'utf8' });
    expect(r.error, 'python3 is installed').toBeUndefined();
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout) as Record<string, unknown>;
  };

  it('parse as property lists, with every value back exactly', () => {
    expect(files.map((f) => f.path.split('/').pop())).toEqual(['org.casa.snapshot.plist', 'org.casa.sync.plist']);
    const snap = parse(files[0]!.content);
    expect(snap).toEqual({
      Label: 'org.casa.snapshot',
      ProgramArguments: [NODE, join(ODD, 'bin', 'casa'), 'snapshot', '--quiet'],
      EnvironmentVariables: Object.fromEntries(spec().env),
      StartInterval: 1200,
      RunAtLoad: true,
      ProcessType: 'Background',
      StandardErrorPath: join(ODD, 'home', 'service-snapshot.log'),
    });
    const sync = parse(files[1]!.content);
    expect(sync).toMatchObject({
      Label: 'org.casa.sync',
      ProgramArguments: [NODE, join(ODD, 'bin', 'casa'), 'sync', '--watch'],
      KeepAlive: { SuccessfulExit: false },
      RunAtLoad: true,
      ThrottleInterval: 30,
    });
  });

  it('XML escaping', () => {
    expect(xmlEscape(`a&b<c>d"e'f`)).toBe('a&amp;b&lt;c&gt;d&quot;e&apos;f');
  });
});

describe('crontab lines', () => {
  it('run in sh (after cron unescapes %) with the settings intact', () => {
    // The "casa" here prints what it received.
    const echo = join(ODD, 'echo.cjs');
    writeFileSync(echo, 'console.log(JSON.stringify({ args: process.argv.slice(2), home: process.env.CASA_HOME, db: process.env.CASA_DB, server: process.env.CASA_SERVER }))\n');
    const c = cronLines(spec({ node: process.execPath, entry: echo, snapshotEveryMs: 20 * 60_000 }));
    expect(c.snapshot.startsWith('*/20 * * * * ')).toBe(true);
    expect(c.watchAtBoot!.startsWith('@reboot ')).toBe(true);
    for (const [line, fields, args] of [
      [c.snapshot, 5, ['snapshot', '--quiet']],
      [c.watchAtBoot!, 1, ['sync', '--watch', '--quiet']],
    ] as const) {
      // An unescaped % would end cron's command: every one is \%.
      expect(line).not.toMatch(/[^\\]%/);
      const command = line.split(' ').slice(fields).join(' ').replace(/\\%/g, '%');
      const r = spawnSync('sh', ['-c', command], { encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(JSON.parse(r.stdout)).toEqual({ args, home: join(ODD, 'home'), db: join(ODD, 'db 100%.db'), server: 'https://relay.example/x?a=1&b=$2' });
    }
    expect(cronLines(spec({ snapshotEveryMs: 2 * 3_600_000 })).snapshot.startsWith('0 */2 * * * ')).toBe(true);
    expect(cronLines(spec({ sync: 'off' })).watchAtBoot).toBeNull();
  });
});

/** CommandLineToArgvW's rules (the MSVC runtime's), to read windowsArg back. */
function parseWindowsArgs(line: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < line.length) {
    while (line[i] === ' ' || line[i] === '\t') i++;
    if (i >= line.length) break;
    let arg = '';
    let quoted = false;
    for (; i < line.length; i++) {
      const ch = line[i]!;
      if (ch === '\\') {
        let n = 0;
        while (line[i] === '\\') {
          n++;
          i++;
        }
        if (line[i] === '"') {
          arg += '\\'.repeat(Math.floor(n / 2));
          if (n % 2 === 1) arg += '"';
          else quoted = !quoted;
        } else {
          arg += '\\'.repeat(n);
          i--;
        }
      } else if (ch === '"') quoted = !quoted;
      else if ((ch === ' ' || ch === '\t') && !quoted) break;
      else arg += ch;
    }
    out.push(arg);
  }
  return out;
}

describe('Windows', () => {
  it('arguments read back as written', () => {
    const args = ['C:\\Program Files\\casa\\bin\\casa', 'plain', '', 'a "quoted" word', 'trailing\\', 'C:\\dir with space\\', 'back\\\\"slash'];
    expect(parseWindowsArgs(args.map(windowsArg).join(' '))).toEqual(args);
  });

  it('the PowerShell commands carry the settings as flags', () => {
    const s = windowsCommands(spec({ node: 'C:\\Program Files\\nodejs\\node.exe', entry: "C:\\Users\\o'brien\\casa\\bin\\casa" }));
    expect(s).toContain("-Execute 'C:\\Program Files\\nodejs\\node.exe'");
    // PowerShell single quotes double a quote inside.
    expect(s).toContain("o''brien");
    expect(s).toContain("Register-ScheduledTask -TaskName 'casa-snapshot'");
    expect(s).toContain('-RepetitionInterval (New-TimeSpan -Seconds 900)');
    expect(s).toContain("Register-ScheduledTask -TaskName 'casa-sync'");
    const argument = /-Argument '((?:[^']|'')*)'/.exec(s)![1]!.replace(/''/g, "'");
    expect(parseWindowsArgs(argument)).toEqual([
      "C:\\Users\\o'brien\\casa\\bin\\casa",
      '--home',
      join(ODD, 'home'),
      '--db',
      join(ODD, 'db 100%.db'),
      '--server',
      'https://relay.example/x?a=1&b=$2',
      '--keystore',
      'file',
      'snapshot',
      '--quiet',
    ]);
  });

  function ctxFor(argv: { json?: boolean } = {}) {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let out = '';
    stdout.on('data', (d) => (out += d));
    const term = { stdin: new PassThrough(), stdout, stderr, env: { HOME: root } };
    const ctx = new Context(resolveGlobals({ home: join(root, 'win-home'), db: join(root, 'w.db'), json: argv.json }, term.env), defaultDeps(term, new AbortController().signal));
    return { ctx, out: () => out };
  }

  it('install --dry-run prints them; without --dry-run: exit 1, untested, use the printed commands', async () => {
    const a = ctxFor();
    await runServiceInstall(a.ctx, { dryRun: true, snapshotEvery: '30m' }, 'win32');
    expect(a.out()).toContain('untested');
    expect(a.out()).toContain('New-TimeSpan -Seconds 1800');
    expect(a.out()).toContain('Unregister-ScheduledTask');
    const b = ctxFor();
    const err = await runServiceInstall(b.ctx, { snapshotEvery: '30m' }, 'win32').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CasaError);
    expect((err as CasaError).exitCode).toBe(1);
    expect((err as CasaError).message).toContain('not tested on Windows');
    expect((err as CasaError).hints[0]).toContain('--dry-run');
    expect(b.out()).toBe('');
  });
});

describe('other systems', () => {
  function ctxFor() {
    const stdout = new PassThrough();
    let out = '';
    stdout.on('data', (d) => (out += d));
    const term = { stdin: new PassThrough(), stdout, stderr: new PassThrough(), env: { HOME: join(root, 'mac-home') } };
    const ctx = new Context(resolveGlobals({ home: join(root, 'mac-casa'), db: join(root, 'm.db') }, term.env), defaultDeps(term, new AbortController().signal));
    return { ctx, out: () => out };
  }

  it('macOS --dry-run: the agents in ~/Library/LaunchAgents and the launchctl commands', async () => {
    const a = ctxFor();
    await runServiceInstall(a.ctx, { dryRun: true }, 'darwin');
    const agents = join(root, 'mac-home', 'Library', 'LaunchAgents');
    expect(a.out()).toContain(`# ${join(agents, 'org.casa.snapshot.plist')}\n<?xml`);
    expect(a.out()).toContain('<integer>900</integer>');
    expect(a.out()).toMatch(new RegExp(`^launchctl bootstrap gui/\\d+ ${join(agents, 'org.casa.sync.plist')}$`, 'm'));
    expect(() => statSync(agents)).toThrow();
  });

  it('a system without a service manager casa knows: exit 1 with the crontab lines', async () => {
    const err = await runServiceInstall(ctxFor().ctx, {}, 'freebsd').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CasaError);
    expect((err as CasaError).exitCode).toBe(1);
    expect((err as CasaError).hints.join('\n')).toMatch(/^ {2}\*\/15 \* \* \* \* CASA_HOME=.* snapshot --quiet$/m);
  });
});

describe('the CLI: bad input is exit 2 with a hint, --dry-run writes nothing', () => {
  const env = { CASA_HOME: join(root, 'cli-home'), XDG_CONFIG_HOME: join(root, 'cli-config'), HOME: root };
  for (const [args, what] of [
    [['--snapshot-every', '30s'], '--snapshot-every takes a duration from 1m to 24h'],
    [['--snapshot-every', 'often'], '--snapshot-every takes'],
    [['--sync', 'sometimes'], "argument 'sometimes' is invalid"],
    [['--every', '5m'], "unknown option '--every'"],
  ] as const) {
    it(args.join(' '), async () => {
      const r = await runCasa(['service', 'install', ...args], { env });
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^casa: error: /);
      expect(r.stderr).toContain(what);
      expect(r.stderr).toMatch(/^casa: hint: /m);
    });
  }

  it('--dry-run --json: the files, their digests and the commands; nothing written', async () => {
    const r = await runCasa(['service', 'install', '--dry-run', '--json', '--snapshot-every', '1h', '--sync', 'off'], { env });
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as { manager: string; dry_run: boolean; files: { path: string; content: string }[]; commands: string[][] };
    expect(doc).toMatchObject({ message_type: 'service_install', manager: 'systemd', dry_run: true });
    expect(doc.files.map((f) => f.path)).toEqual([join(root, 'cli-config', 'systemd', 'user', 'casa-snapshot.service'), join(root, 'cli-config', 'systemd', 'user', 'casa-snapshot.timer')]);
    expect(doc.files[1]!.content).toContain('OnUnitActiveSec=1h');
    expect(doc.commands.at(-1)).toEqual(['systemctl', '--user', 'restart', 'casa-snapshot.timer']);
    expect(() => statSync(join(root, 'cli-config'))).toThrow();
    expect(() => statSync(manifestPath(join(root, 'cli-home')))).toThrow();
  });
});

describe('the manifest', () => {
  const home = join(root, 'manifest-home');
  const m: ServiceManifest = {
    version: 1,
    manager: 'systemd',
    installed_at: 1,
    snapshot_every_ms: 900_000,
    sync: 'watch',
    files: [{ path: '/x/casa-snapshot.service', sha256: 'ab'.repeat(32) }],
    created_dirs: ['/x'],
    enabled: ['casa-snapshot.timer'],
  };
  it('round trip, 0600; none is null; a damaged one is exit 1', () => {
    expect(readManifest(home)).toBeNull();
    writeManifest(home, m);
    expect(readManifest(home)).toEqual(m);
    expect(statSync(manifestPath(home)).mode & 0o777).toBe(0o600);
    writeFileSync(manifestPath(home), '{"version":1,"manager":"upstart"}');
    expect(() => readManifest(home)).toThrow(/not a casa service manifest/);
  });
});

describe('the last-run record', () => {
  const H = 3_600_000;
  const rec = (over: Partial<RunRecord>): RunRecord => ({
    version: 1,
    job: 'snapshot',
    command: 'snapshot',
    started_at: 0,
    at: 0,
    duration_ms: 0,
    exit: 0,
    summary: '',
    last_success_at: 0,
    pid: null,
    failing_since: null,
    ...over,
  });
  const alive = () => true;

  it('health: ok, failed, late (old success, or failing that long with none), running, stopped', () => {
    const now = 100 * H;
    expect(runHealth(rec({ at: now - H, last_success_at: now - H }), now, 24 * H, alive)).toBe('ok');
    expect(runHealth(rec({ at: now - 30 * H, last_success_at: now - 30 * H }), now, 24 * H, alive)).toBe('late');
    expect(runHealth(rec({ at: now - H, exit: 5, last_success_at: now - 2 * H, failing_since: now - H }), now, 24 * H, alive)).toBe('failed');
    expect(runHealth(rec({ at: now - H, exit: 5, last_success_at: now - 8 * 24 * H }), now, 24 * H, alive)).toBe('late');
    expect(runHealth(rec({ at: now - H, exit: 5, last_success_at: null, failing_since: now - 2 * H }), now, 24 * H, alive)).toBe('failed');
    expect(runHealth(rec({ at: now - H, exit: 5, last_success_at: null, failing_since: now - 25 * H }), now, 24 * H, alive)).toBe('late');
    const watch = { command: 'sync --watch', exit: null, pid: 42, started_at: now - 5 * H };
    expect(runHealth(rec({ ...watch, at: now - 30_000, last_success_at: now - 30_000 }), now, 24 * H, alive)).toBe('running');
    expect(runHealth(rec({ ...watch, at: now - 30_000, last_success_at: now - 30_000 }), now, 24 * H, () => false)).toBe('stopped');
    expect(runHealth(rec({ ...watch, at: now - 3 * H, last_success_at: now - 3 * H }), now, 24 * H, alive)).toBe('stopped');
  });

  it('recorded 0600, keeps the last success across failures, one line, no control characters', () => {
    const home = join(root, 'runs-home');
    recordRun(home, { job: 'snapshot', command: 'snapshot', startedAt: 1000, at: 3000, exit: 0, ok: true, summary: 'snapshot 1 committed' });
    recordRun(home, { job: 'snapshot', command: 'snapshot', startedAt: 5000, at: 6000, exit: 5, ok: false, summary: 'relay \x1b[31munreachable\nsecond line' });
    recordRun(home, { job: 'snapshot', command: 'snapshot', startedAt: 7000, at: 8000, exit: 5, ok: false, summary: 'again' });
    const r = readLastRun(home, 'snapshot')!;
    expect(r).toMatchObject({ exit: 5, at: 8000, duration_ms: 1000, last_success_at: 3000, failing_since: 5000, summary: 'again', pid: null });
    expect(statSync(lastRunPath(home, 'snapshot')).mode & 0o777).toBe(0o600);
    expect(oneLine('relay \x1b[31munreachable\nsecond line')).not.toMatch(/[\x00-\x1f]/);
    expect(oneLine('relay \x1b[31munreachable\nsecond line')).not.toContain('second line');
    expect(oneLine('x'.repeat(500))).toHaveLength(200);
    expect(readLastRun(home, 'sync')).toBeNull();
    writeFileSync(lastRunPath(home, 'sync'), 'not json');
    expect(readLastRun(home, 'sync')).toBeNull();
    const v = runViews(home, 8000 + 8 * 24 * H, 15 * 60_000).snapshot!;
    expect(v.health).toBe('late');
    expect(v.late_after_ms).toBe(45 * 60_000);
    expect(describeRun(v, 8000 + 8 * 24 * H)).toMatch(/^snapshot LATE: last success 8 days ago — FAILED 8 days ago \(exit 5\): again$/);
    expect(readFileSync(lastRunPath(home, 'snapshot'), 'utf8')).not.toMatch(/phrase|token/);
  });
});
