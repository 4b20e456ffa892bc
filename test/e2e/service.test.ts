/**
 * `casa service` against a real systemd user manager (test/helpers/systemd.ts:
 * the machine's own `systemd --user` in a private namespace): install with a
 * one-minute interval on a paired device whose CASA_HOME and database paths
 * hold a space, `%`, `$`, a backslash and a quote; the timer fires a real
 * `casa snapshot` (its first run comes 5 s after install), the watch runs;
 * `casa service status --json` and `casa status --json` report both; then
 * uninstall leaves the unit directory as it was. Also: no service manager
 * reachable → exit 1 with the crontab lines, and the last-run record of a
 * failed and a successful snapshot run by hand.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { baseEnv, CASA, okOn, useRelay } from '../helpers/cli.js';
import { startUserManager, type UserManager } from '../helpers/systemd.js';

const relay = useRelay();
let sd: UserManager | undefined;
let unavailable = '';

beforeAll(async () => {
  const r = await startUserManager();
  if ('unavailable' in r) {
    unavailable = r.unavailable;
    process.stderr.write(`casa test: service e2e with a real systemd user manager skipped: ${r.unavailable}\n`);
  } else {
    sd = r;
  }
});
afterAll(async () => {
  await sd?.stop();
});

/** The user manager; where this machine cannot run one, the reason printed and the test skipped (ctx.skip throws). */
function managerOrSkip(ctx: { skip: (note?: string) => never }): UserManager {
  if (sd) return sd;
  process.stderr.write(`casa test: skipped: ${unavailable}\n`);
  return ctx.skip(unavailable);
}

/** Every file and directory under `dir` with its content (links as their target), to compare before and after. */
function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    if (!existsSync(d)) return;
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        out[p] = 'dir';
        walk(p);
      } else out[p] = e.isSymbolicLink() ? 'link' : readFileSync(p, 'utf8');
    }
  };
  walk(dir);
  return out;
}

async function pairedMachine(name: string) {
  const { makeDb } = await import('../../bench/lib/make-db.mjs');
  const m = relay.machine(name);
  await okOn(m, ['pair', '--new', '--phrase-out', join(m.home, 'phrase.txt'), '--device-name', 'svc']);
  makeDb({ out: m.env.CASA_DB, sizeMb: 1, seed: 3 });
  return m;
}

interface JobStatus {
  job: string;
  unit: string;
  installed: boolean;
  enabled: string | null;
  active: string | null;
  manager_exit_status: number | null;
  last_run: { exit: number | null; health: string; summary: string; command: string } | null;
}

describe('casa service with a real systemd user manager', () => {
  it('install: the timer runs a real snapshot, the watch runs, status reports both; uninstall leaves the directory as it was', async (ctx) => {
    const sd = managerOrSkip(ctx);
    // Odd characters in CASA_HOME and the database path: systemd's quoting must carry them through.
    const m = await pairedMachine('svc 50% $HOME \\ "q"');
    // casa runs in the manager's namespaces, as in the user's session (test/helpers/systemd.ts).
    const run = (args: string[]) => m.run(args, { env: sd.env, wrap: sd.wrap });
    const configBefore = tree(sd.env.XDG_CONFIG_HOME);

    const t0 = Date.now();
    const inst = await run(['service', 'install', '--snapshot-every', '1m']);
    expect(inst.code, inst.stderr).toBe(0);
    expect(inst.stdout).toContain('enabled and started: snapshot every 1min and sync --watch');
    const unitDir = join(sd.env.XDG_CONFIG_HOME, 'systemd', 'user');
    expect(readdirSync(unitDir).sort()).toEqual(['casa-snapshot.service', 'casa-snapshot.timer', 'casa-sync.service', 'default.target.wants', 'timers.target.wants']);
    expect(statSync(join(m.home, 'service.json')).mode & 0o777).toBe(0o600);
    expect(sd.systemctl('is-enabled', 'casa-snapshot.timer').stdout.trim()).toBe('enabled');

    // The timer's first run (5 s after it starts) is a real `casa snapshot --quiet`; its record in
    // m.home proves systemd handed the jobs CASA_HOME and CASA_DB exactly (space, %, $, \ and " included).
    let jobs: JobStatus[] = [];
    while (Date.now() - t0 < 25_000) {
      const st = await run(['service', 'status', '--json']);
      expect(st.code, st.stderr).toBe(0);
      jobs = (JSON.parse(st.stdout) as { jobs: JobStatus[] }).jobs;
      if (jobs[0]?.last_run?.exit === 0 && jobs[0].manager_exit_status === 0 && jobs[1]?.last_run?.health === 'running') break;
      await new Promise((r) => setTimeout(r, 500));
    }
    const [snap, sync] = jobs;
    expect(snap).toMatchObject({ job: 'snapshot', unit: 'casa-snapshot.timer', installed: true, enabled: 'enabled', active: 'active', manager_exit_status: 0 });
    expect(snap!.last_run).toMatchObject({ exit: 0, health: 'ok', command: 'snapshot' });
    expect(snap!.last_run!.summary).toMatch(/^snapshot 1 committed: /);
    expect(sync).toMatchObject({ job: 'sync', unit: 'casa-sync.service', installed: true, enabled: 'enabled', active: 'active' });
    expect(sync!.last_run).toMatchObject({ exit: null, health: 'running', command: 'sync --watch' });

    // The snapshot is on the relay, and `casa status` shows the runs too.
    const snaps = JSON.parse((await okOn(m, ['snapshots', '--json'])).stdout) as { snapshots: unknown[] };
    expect(snaps.snapshots).toHaveLength(1);
    const status = await run(['status']);
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toMatch(/^ran: +snapshot ok \d+ s ago \(exit 0, .*\): snapshot 1 committed/m);
    expect(status.stdout).toMatch(/^ran: +sync --watch running since/m);

    // Install again: updated in place (idempotent), still one set of units.
    const again = await run(['service', 'install', '--snapshot-every', '2m', '--sync', 'off']);
    expect(again.code, again.stderr).toBe(0);
    // The watch is stopped and gone, its enable link too (systemctl removed the emptied default.target.wants).
    expect(readdirSync(unitDir).sort()).toEqual(['casa-snapshot.service', 'casa-snapshot.timer', 'timers.target.wants']);
    expect(sd.systemctl('is-active', 'casa-sync.service').stdout.trim()).toBe('inactive');
    expect(readFileSync(join(unitDir, 'casa-snapshot.timer'), 'utf8')).toContain('OnUnitActiveSec=2min');

    // A unit the user edited is kept by uninstall (exit 1, named), removed with --yes.
    writeFileSync(join(unitDir, 'casa-snapshot.timer'), readFileSync(join(unitDir, 'casa-snapshot.timer'), 'utf8') + '# mine\n');
    const kept = await run(['service', 'uninstall']);
    expect(kept.code).toBe(1);
    expect(kept.stderr).toContain('casa: error: kept ');
    expect(kept.stderr).toContain('casa-snapshot.timer');
    expect(kept.stderr).toContain('casa: hint: ');
    expect(existsSync(join(unitDir, 'casa-snapshot.service'))).toBe(false);
    expect(sd.systemctl('is-active', 'casa-snapshot.timer').stdout.trim()).toBe('inactive');
    const gone = await run(['service', 'uninstall', '--yes']);
    expect(gone.code, gone.stderr).toBe(0);

    expect(tree(sd.env.XDG_CONFIG_HOME)).toEqual(configBefore);
    expect(existsSync(join(m.home, 'service.json'))).toBe(false);
    const after = JSON.parse((await run(['service', 'status', '--json'])).stdout) as { installed: boolean; jobs: JobStatus[] };
    expect(after.installed).toBe(false);
    expect(after.jobs.map((j) => j.installed)).toEqual([false, false]);
  });
});

describe('casa service: whose files', () => {
  it("--no-enable writes without enabling; another CASA_HOME's install does not take over the units without --yes", async (ctx) => {
    const sd = managerOrSkip(ctx);
    const a = await pairedMachine('own-a');
    const b = await pairedMachine('own-b');
    const runOn = (m: typeof a, args: string[]) => m.run(args, { env: sd.env, wrap: sd.wrap });
    const configBefore = tree(sd.env.XDG_CONFIG_HOME);
    const unitDir = join(sd.env.XDG_CONFIG_HOME, 'systemd', 'user');

    const r = await runOn(a, ['service', 'install', '--no-enable', '--sync', 'off']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('not enabled (--no-enable): systemctl --user enable --now casa-snapshot.timer starts them');
    expect(sd.systemctl('is-enabled', 'casa-snapshot.timer').stdout.trim()).toBe('disabled');
    expect(sd.systemctl('is-active', 'casa-snapshot.timer').stdout.trim()).toBe('inactive');

    // B's install would replace A's units (another CASA_HOME in them): refused, nothing changed.
    const mine = readFileSync(join(unitDir, 'casa-snapshot.service'), 'utf8');
    const refused = await runOn(b, ['service', 'install', '--sync', 'off']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^casa: error: .*casa-snapshot\.service.* not written by this CASA_HOME's install/m);
    expect(refused.stderr).toContain('casa: hint: ');
    expect(readFileSync(join(unitDir, 'casa-snapshot.service'), 'utf8')).toBe(mine);
    expect(existsSync(join(b.home, 'service.json'))).toBe(false);

    // A's own install again: in place, no refusal.
    expect((await runOn(a, ['service', 'install', '--no-enable', '--sync', 'off', '--snapshot-every', '5m'])).code).toBe(0);
    expect((await runOn(a, ['service', 'uninstall'])).code).toBe(0);
    expect(tree(sd.env.XDG_CONFIG_HOME)).toEqual(configBefore);
  });
});

describe('no service manager reachable', () => {
  it('exit 1 with the crontab lines to use instead (no systemctl on PATH; a user bus that is not there)', async () => {
    const m = await pairedMachine('nosd');
    const emptyPath = mkdtempSync(join(tmpdir(), 'casa-nopath-'));
    for (const env of [
      { PATH: emptyPath },
      { XDG_RUNTIME_DIR: mkdtempSync(join(tmpdir(), 'casa-noruntime-')), DBUS_SESSION_BUS_ADDRESS: 'unix:path=/nonexistent/bus' },
    ]) {
      const r = await m.run(['service', 'install', '--snapshot-every', '20m'], { env: { ...env, XDG_CONFIG_HOME: join(m.home, 'config') } });
      expect(r.code, r.stderr).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^casa: error: no service manager reachable: /);
      const hints = r.stderr.split('\n').filter((l) => l.startsWith('casa: hint: '));
      expect(hints.some((l) => /^casa: hint: {3}\*\/20 \* \* \* \* CASA_HOME='.*' CASA_DB='.*' CASA_SERVER='.*' CASA_KEYSTORE='file' .* snapshot --quiet$/.test(l))).toBe(true);
      expect(hints.some((l) => /^casa: hint: {3}@reboot .* sync --watch --quiet$/.test(l))).toBe(true);
      // Nothing was written.
      expect(existsSync(join(m.home, 'config'))).toBe(false);
      expect(existsSync(join(m.home, 'service.json'))).toBe(false);
    }
  });
});

describe('the last-run record', () => {
  it('a failed snapshot shows as FAILED in casa status, a later success as ok, a killed watch as STOPPED; --json carries them', async () => {
    const m = await pairedMachine('lastrun');
    const failed = await m.run(['snapshot', '--quiet'], { env: { CASA_SERVER: 'http://127.0.0.1:9' } });
    expect(failed.code).toBe(5);
    let st = JSON.parse((await okOn(m, ['status', '--json'])).stdout) as { runs: Record<string, { exit: number; health: string; summary: string; last_success_at: number | null } | null> };
    expect(st.runs.snapshot).toMatchObject({ exit: 5, health: 'failed', last_success_at: null });
    expect(st.runs.snapshot!.summary).toContain('127.0.0.1:9');
    expect(st.runs.sync).toBeNull();
    expect((await okOn(m, ['status'])).stdout).toMatch(/^ran: +snapshot FAILED \d+ s ago \(exit 5, .*\): .*; never succeeded$/m);

    await okOn(m, ['snapshot', '--quiet']);
    await okOn(m, ['sync', '--quiet']);
    st = JSON.parse((await okOn(m, ['status', '--json'])).stdout);
    expect(st.runs.snapshot).toMatchObject({ exit: 0, health: 'ok' });
    expect(st.runs.snapshot!.summary).toMatch(/^snapshot 1 committed/);
    expect(st.runs.sync).toMatchObject({ exit: 0, health: 'ok' });
    expect(statSync(join(m.home, 'last-run-snapshot.json')).mode & 0o777).toBe(0o600);

    // A watch records itself while it runs; killed without a word (SIGKILL), it shows as STOPPED.
    const watch = spawn(process.execPath, [CASA, 'sync', '--watch'], { env: baseEnv(m.env), stdio: 'ignore' });
    try {
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline) {
        st = JSON.parse((await okOn(m, ['status', '--json'])).stdout);
        if ((st.runs.sync as { health?: string } | null)?.health === 'running') break;
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(st.runs.sync).toMatchObject({ exit: null, health: 'running', pid: watch.pid });
    } finally {
      watch.kill('SIGKILL');
      await new Promise((r) => watch.once('exit', r));
    }
    st = JSON.parse((await okOn(m, ['status', '--json'])).stdout);
    expect(st.runs.sync).toMatchObject({ exit: null, health: 'stopped' });
    expect((await okOn(m, ['status'])).stdout).toMatch(/^ran: +sync --watch STOPPED: last heard of \d+ s ago \(pid \d+, no exit recorded: killed, or hung\)/m);
  });
});
