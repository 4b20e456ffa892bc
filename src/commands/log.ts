/**
 * `casa log [--since TIME] [--device NAME] [--table T]`: what changed within
 * the relay's window, newest first, as old → new per field, grouped by row
 * write (docs/MERGE.md §9, casa-log(1)). The old value is the field's
 * previous change in the history index; `?` when that predates the window
 * (no earlier change of the field is kept), `(none)` when the row did not
 * exist (inserted, or written while deleted).
 */
import { UsageError } from '../errors.js';
import { logEntries, logStream, type Before, type LogEntry } from '../changesets/history.js';
import { parseMoment } from '../ui/format.js';
import type { Context } from './context.js';
import { changeJson, deviceLabel, formatMoment, formatValue, jsonValue, OP_NAMES, openIndexed, resolveTable, windowJson, windowText, type Indexed } from './indexed.js';

export interface LogOptions {
  since?: string;
  device?: string;
  table?: string;
  limit?: string;
}

/** The --json document (built only with --json: people get the changes printed as they stream). */
export interface LogReport {
  message_type: 'log';
  since: number | null;
  window: ReturnType<typeof windowJson>;
  changes: {
    time: number;
    hlc: string;
    device_id: string;
    device_name: string | null;
    op: 'insert' | 'update' | 'delete';
    table: string;
    key: string;
    column: string | null;
    /** null for a delete (of a row, or of a set's element). */
    old_state: Before['kind'] | null;
    old: unknown;
    new: unknown;
  }[];
}

/** --since as a time (a duration is taken back from `now`); exit 2 when it is neither. */
function parseSinceText(text: string, now: number): number {
  const at = parseMoment(text, now);
  if (at === null) {
    throw new UsageError(`--since takes a time, not ${JSON.stringify(text)}`, {
      hints: ['ISO 8601 (2026-12-01, 2026-12-01T10:04:05Z) or a duration ago (30m, 3h, 1d)'],
    });
  }
  return at;
}

/** --since: a moment within the window (named with its bounds when not). */
export function checkSince(at: number, ix: Pick<Indexed, 'window' | 'now'>): number {
  if (at > ix.now) throw new UsageError(`--since ${formatMoment(at)} is in the future; the history window is ${windowText(ix.window, ix.now)}`);
  if (ix.window.start !== null && at < ix.window.start) {
    throw new UsageError(`--since ${formatMoment(at)} is before the history window, ${windowText(ix.window, ix.now)}: the relay pruned older changes`, {
      hints: ['`casa restore --at` reaches further back where an older snapshot is kept'],
    });
  }
  return at;
}

/** --device: a name (every device so named), an id, or a unique id prefix of 4+ characters. */
function resolveDevices(ix: Indexed, q: string): string[] {
  const byName = [...ix.names].filter(([, n]) => n === q).map(([id]) => id);
  if (byName.length > 0) return byName;
  const lower = q.toLowerCase();
  if (/^[0-9a-f]{4,16}$/.test(lower)) {
    const ids = new Set([...ix.names.keys()]);
    const hits = [...ids].filter((id) => id.startsWith(lower));
    if (hits.length === 1) return hits;
    if (hits.length > 1) throw new UsageError(`${q} matches ${hits.length} devices`, { hints: ['give more characters of the id'] });
  }
  throw new UsageError(`no device ${JSON.stringify(q)} in this vault`, {
    hints: [`devices: ${[...ix.names.values()].map((n) => JSON.stringify(n)).join(', ')} (\`casa devices\` lists them with their ids)`],
  });
}

const oldText = (b: Before): string => (b.kind === 'unknown' ? '?' : b.kind === 'absent' ? '(none)' : formatValue(b.value));

export async function runLog(ctx: Context, opts: LogOptions): Promise<LogReport> {
  let limit: number | undefined;
  if (opts.limit !== undefined) {
    limit = Number(opts.limit);
    if (!/^\d{1,9}$/.test(opts.limit) || limit < 1) throw new UsageError(`--limit takes a positive whole number, not ${JSON.stringify(opts.limit)}`);
  }
  // Malformed input is refused before anything is fetched.
  const asked = opts.since === undefined ? undefined : parseSinceText(opts.since, ctx.deps.now());
  const ix = await openIndexed(ctx);
  try {
    const since = asked === undefined ? undefined : checkSince(asked, ix);
    if (opts.table !== undefined) await resolveTable(ctx, ix, opts.table);
    const devices = opts.device === undefined ? undefined : resolveDevices(ix, opts.device);
    const filter = { since, devices, table: opts.table, limit };
    // People get the changes as they stream out of the index (none of them kept); --json gets one document.
    const entries = ctx.globals.json ? logEntries(ix.db, filter) : [];
    const report: LogReport = {
      message_type: 'log',
      since: since ?? null,
      window: windowJson(ix.window, ix.now),
      changes: entries.map((e) => ({
        ...changeJson(ix, e),
        table: e.tbl,
        key: e.pk,
        column: e.col,
        old_state: e.op === 'd' ? null : e.before.kind,
        old: e.op !== 'd' && e.before.kind === 'value' ? jsonValue(e.before.value) : null,
        new: e.op === 'd' ? null : jsonValue(e.val),
      })),
    };
    if (!ctx.globals.json && !ctx.globals.quiet) {
      const printed = writeLog(ctx, ix, logStream(ix.db, filter));
      if (printed === 0) ctx.out.print(`no changes${since === undefined ? '' : ` since ${formatMoment(since)}`} in the history window (${windowText(ix.window, ix.now)})`);
    }
    ctx.out.result({ ...report });
    return report;
  } finally {
    ix.db.close();
  }
}

/** Row writes newest first: a heading line, then one indented `column: old → new` per field. How many changes it printed. */
function writeLog(ctx: Context, ix: Indexed, entries: Iterable<LogEntry>): number {
  let lines: string[] = [];
  let head = '';
  let n = 0;
  for (const e of entries) {
    n++;
    const h = `${formatMoment(e.wall)}  ${deviceLabel(ix, e.device)}  ${OP_NAMES[e.op]}  ${e.tbl} ${e.pk}`;
    if (h !== head) {
      lines.push(h);
      head = h;
    }
    if (e.op !== 'd' && e.col !== null) lines.push(`    ${e.col}: ${oldText(e.before)} → ${formatValue(e.val)}`);
    // In pieces: 100,000 changes would make one string of several MB.
    if (lines.length >= 5000) {
      ctx.out.print(lines.join('\n'));
      lines = [];
    }
  }
  if (lines.length > 0) ctx.out.print(lines.join('\n'));
  return n;
}
