/**
 * The last-run record (CASA_HOME/last-run-JOB.json): how each unattended job
 * — `casa snapshot`, `casa sync` (one round or `--watch`) — last ended: when,
 * how long it took, its exit status and a one-line summary, and when it last
 * succeeded. `casa status` and `casa service status` read it, so a timer
 * that stopped working a week ago shows as such at a glance.
 *
 * One file per job, not one for all: the snapshot timer and a running
 * `sync --watch` write at the same time, and each rewrites only its own file
 * (atomically: temp file, rename; 0600), so neither loses the other's
 * record. The summary is casa's own result line or error message (they never
 * hold a secret: src/errors.ts), made printable and cut to one line.
 *
 * A `--watch` records itself while it runs (exit null, its pid), refreshed
 * after a round at most once a minute, and its exit when it ends; a record
 * that still says "running" long after its last refresh belongs to a watch
 * that was killed or hangs.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from './state.js';
import { sanitize } from './ui/format.js';

export const JOBS = ['snapshot', 'sync'] as const;
export type Job = (typeof JOBS)[number];

export interface RunRecord {
  version: 1;
  job: Job;
  /** The command as run: `snapshot`, `sync` or `sync --watch`. */
  command: string;
  started_at: number;
  /** When it ended; for a watch still running, its last refresh. */
  at: number;
  duration_ms: number;
  /** The exit status; null while a watch is still running. */
  exit: number | null;
  summary: string;
  /** When this job last succeeded (exit 0, or a watch's successful round), or null if it never did. */
  last_success_at: number | null;
  /** A running watch's process id (to tell one that died without a word from one still at work). */
  pid: number | null;
  /** When the runs started failing (the first failure since the last success), or null while they succeed. */
  failing_since: number | null;
}

const SUMMARY_MAX = 200;

export function lastRunPath(home: string, job: Job): string {
  return join(home, `last-run-${job}.json`);
}

/** The job's record, or null if it never ran here (or the file is unreadable: a record is a convenience, never a failure). */
export function readLastRun(home: string, job: Job): RunRecord | null {
  try {
    const d = JSON.parse(readFileSync(lastRunPath(home, job), 'utf8')) as Partial<RunRecord>;
    if (d.version !== 1 || d.job !== job || typeof d.at !== 'number' || typeof d.started_at !== 'number') return null;
    return {
      version: 1,
      job,
      command: typeof d.command === 'string' ? d.command : job,
      started_at: d.started_at,
      at: d.at,
      duration_ms: typeof d.duration_ms === 'number' ? d.duration_ms : d.at - d.started_at,
      exit: typeof d.exit === 'number' ? d.exit : null,
      summary: typeof d.summary === 'string' ? d.summary : '',
      last_success_at: typeof d.last_success_at === 'number' ? d.last_success_at : null,
      pid: typeof d.pid === 'number' ? d.pid : null,
      failing_since: typeof d.failing_since === 'number' ? d.failing_since : null,
    };
  } catch {
    return null;
  }
}

export interface RunOutcome {
  job: Job;
  command: string;
  startedAt: number;
  at: number;
  /** null: a watch, still running. */
  exit: number | null;
  /** Whether this outcome is a success (exit 0, or a watch's round that went through). */
  ok: boolean;
  summary: string;
}

/** Writes the job's record (keeping the last success time from the previous one). */
export function recordRun(home: string, o: RunOutcome): RunRecord {
  const before = readLastRun(home, o.job);
  const rec: RunRecord = {
    version: 1,
    job: o.job,
    command: o.command,
    started_at: o.startedAt,
    at: o.at,
    duration_ms: Math.max(0, o.at - o.startedAt),
    exit: o.exit,
    summary: oneLine(o.summary),
    last_success_at: o.ok ? o.at : (before?.last_success_at ?? null),
    pid: o.exit === null ? process.pid : null,
    // A running watch's trouble starts now, not when the watch did.
    failing_since: o.ok ? null : (before?.failing_since ?? (o.exit === null ? o.at : o.startedAt)),
  };
  writeFileAtomic(lastRunPath(home, o.job), JSON.stringify(rec, null, 2) + '\n', 0o600);
  return rec;
}

/** The first line, printable, at most SUMMARY_MAX characters. */
export function oneLine(text: string): string {
  const first = sanitize(text.split('\n').find((l) => l.trim() !== '') ?? '').trim();
  return first.length > SUMMARY_MAX ? `${first.slice(0, SUMMARY_MAX - 1)}…` : first;
}

/** Which job a command line is: `snapshot`, or `sync` without --conflicts/--detach/--attach (those change nothing on the relay). */
export function jobOf(path: string, opts: Record<string, unknown>): { job: Job; command: string } | null {
  if (path === 'casa snapshot') return { job: 'snapshot', command: 'snapshot' };
  if (path === 'casa sync' && !opts.conflicts && !opts.detach && !opts.attach) {
    return { job: 'sync', command: opts.watch ? 'sync --watch' : 'sync' };
  }
  return null;
}

// ---------------------------------------------------------------- health

export type RunHealth = 'ok' | 'failed' | 'late' | 'running' | 'stopped';

/** A watch refreshes its record at least every WATCH_REFRESH_MS while healthy (a safety round runs every 30 s). */
export const WATCH_REFRESH_MS = 60_000;
/** A "running" watch record older than this: the watch died or hangs. */
export const WATCH_STALE_MS = 10 * 60_000;
/** Without a service's interval to go by: a job not successful for a day is late. */
export const DEFAULT_LATE_MS = 24 * 3_600_000;

/**
 * How the job is doing, read from its record: `failed` (the last run
 * failed), `late` (the last success is older than `lateAfterMs`: three
 * intervals of the installed timer, or a day), `running` (a watch at work),
 * `stopped` (a watch whose record went stale: killed, or hung), else `ok`.
 * A job that never succeeded is late once it has been failing that long.
 * A failed run whose last success is also too old is `late`: that is the
 * news; so is a success too long ago (the job stopped being run).
 */
export function runHealth(r: RunRecord, now: number, lateAfterMs: number, alive: (pid: number) => boolean = pidAlive): RunHealth {
  if (r.exit === null) {
    if (now - r.at > WATCH_STALE_MS || (r.pid !== null && !alive(r.pid))) return 'stopped';
    const since = r.last_success_at ?? r.failing_since ?? r.started_at;
    if (now - since > Math.max(lateAfterMs, WATCH_STALE_MS)) return 'late';
    return 'running';
  }
  if (r.last_success_at !== null ? now - r.last_success_at > lateAfterMs : r.failing_since !== null && now - r.failing_since > lateAfterMs) return 'late';
  return r.exit === 0 ? 'ok' : 'failed';
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// ---------------------------------------------------------------- reporting

/** A job's record as `casa status` and `casa service status` report it (--json). */
export type RunView = Omit<RunRecord, 'version' | 'job'> & {
  health: RunHealth;
  /** The age of the last success past which the job counts as late. */
  late_after_ms: number;
};

/**
 * Each job's record with its health. `snapshotEveryMs`: the installed
 * service's interval (CASA_HOME/service.json), if any: a snapshot is late
 * after three of them (at least 15 minutes); otherwise after a day.
 */
export function runViews(home: string, now: number, snapshotEveryMs: number | null): Record<Job, RunView | null> {
  const late: Record<Job, number> = {
    snapshot: snapshotEveryMs === null ? DEFAULT_LATE_MS : Math.max(3 * snapshotEveryMs, 15 * 60_000),
    sync: DEFAULT_LATE_MS,
  };
  const view = (job: Job): RunView | null => {
    const r = readLastRun(home, job);
    if (!r) return null;
    const { version: _v, job: _j, ...rest } = r;
    return { ...rest, health: runHealth(r, now, late[job]), late_after_ms: late[job] };
  };
  return { snapshot: view('snapshot'), sync: view('sync') };
}

/** One line for people: "snapshot ok 12 min ago (exit 0, 1.4 s): …", "sync --watch FAILED …; last success 8 days ago — LATE". */
export function describeRun(v: RunView, now: number): string {
  const ago = (t: number) => agoText(now - t);
  const took = v.duration_ms < 1000 ? `${v.duration_ms} ms` : v.duration_ms < 120_000 ? `${(v.duration_ms / 1000).toFixed(1)} s` : `${Math.round(v.duration_ms / 60_000)} min`;
  const success = v.last_success_at === null ? 'never succeeded' : `last success ${ago(v.last_success_at)}`;
  switch (v.health) {
    case 'running':
      return `${v.command} running since ${ago(v.started_at)} (pid ${v.pid}): ${v.summary}`;
    case 'stopped':
      return `${v.command} STOPPED: last heard of ${ago(v.at)} (pid ${v.pid}, no exit recorded: killed, or hung): ${v.summary}; ${success}`;
    case 'ok':
      return `${v.command} ok ${ago(v.at)} (exit 0, ${took}): ${v.summary}`;
    case 'failed':
      return `${v.command} FAILED ${ago(v.at)} (exit ${v.exit}, ${took}): ${v.summary}; ${success}`;
    case 'late': {
      const last = v.exit === null ? `running since ${ago(v.started_at)}: ${v.summary}` : v.exit === 0 ? `ok ${ago(v.at)}` : `FAILED ${ago(v.at)} (exit ${v.exit}): ${v.summary}`;
      return `${v.command} LATE: ${success} — ${last}`;
    }
  }
}

/** "45 s ago", "12 min ago", "3 h ago", "8 days ago". */
export function agoText(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return `${s} s ago`;
  const m = Math.round(s / 60);
  if (m < 90) return `${m} min ago`;
  const h = Math.round(m / 60);
  return h < 48 ? `${h} h ago` : `${Math.round(h / 24)} days ago`;
}
