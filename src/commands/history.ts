/**
 * `casa history TABLE KEY [COLUMN]`: every value a row's fields had within
 * the relay's window, when (the write's HLC wall time) and which device
 * wrote it, oldest first, deletes included (docs/MERGE.md §9,
 * casa-history(1)). The index, the table and key, and the values' spelling
 * are src/commands/indexed.ts.
 */
import type { Context } from './context.js';
import { rowHistory, hasColumn, type Entry } from '../changesets/history.js';
import { UsageError } from '../errors.js';
import { changeJson, deviceLabel, formatMoment, formatValue, jsonValue, OP_NAMES, openIndexed, resolveKey, resolveTable, windowJson, windowText, type Indexed } from './indexed.js';

export interface HistoryOptions {
  table: string;
  key: string;
  column?: string;
}

export interface HistoryReport {
  message_type: 'history';
  table: string;
  key: string;
  column: string | null;
  window: ReturnType<typeof windowJson>;
  changes: { time: number; hlc: string; device_id: string; device_name: string | null; op: 'insert' | 'update' | 'delete'; column: string | null; value: unknown }[];
}

export async function runHistory(ctx: Context, opts: HistoryOptions): Promise<HistoryReport> {
  const ix = await openIndexed(ctx);
  try {
    const shape = await resolveTable(ctx, ix, opts.table);
    const col = opts.column ?? null;
    if (col !== null && !(shape?.columns.includes(col) || shape?.pk.includes(col)) && !hasColumn(ix.db, opts.table, col)) {
      throw new UsageError(`table ${opts.table} has no column ${JSON.stringify(col)}`, {
        hints: shape ? [`its columns: ${[...shape.pk, ...shape.columns].join(', ')}`] : [],
      });
    }
    const pk = await resolveKey(ctx, ix, opts.table, shape, opts.key);
    const entries = rowHistory(ix.db, opts.table, pk, col);
    const report: HistoryReport = {
      message_type: 'history',
      table: opts.table,
      key: pk,
      column: col,
      window: windowJson(ix.window, ix.now),
      changes: entries.map((e) => ({
        ...changeJson(ix, e),
        column: e.col,
        value: e.op === 'd' ? null : jsonValue(e.val),
      })),
    };
    const what = `${opts.table} ${pk}${col === null ? '' : ` ${col}`}`;
    if (entries.length === 0) {
      ctx.out.print(`no change of ${what} in the history window (${windowText(ix.window, ix.now)}): its value${col === null ? 's' : ''} came before it`);
    } else {
      ctx.out.print([`${what}: ${entries.length} change${entries.length === 1 ? '' : 's'}, oldest first`, ...formatEntries(ix, entries)].join('\n'));
    }
    ctx.out.result({ ...report });
    return report;
  } finally {
    ix.db.close();
  }
}

/** One line per change: time, device, op, and the field's new value. */
function formatEntries(ix: Indexed, entries: Entry[]): string[] {
  const rows = entries.map((e) => [
    formatMoment(e.wall),
    deviceLabel(ix, e.device),
    OP_NAMES[e.op],
    e.op === 'd' ? (e.col === null ? '' : e.col) : e.col === null ? '(element added)' : `${e.col} = ${formatValue(e.val)}`,
  ]);
  const widths = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i < 3 ? c.padEnd(widths[i]!) : c)).join('  ').trimEnd());
}
