/**
 * `casa tables` and `casa tables set TABLE RULE`: the vault's sync settings
 * (src/changesets/settings.ts, docs/MERGE.md §2). Local: the declaration
 * is a write to the synced database, which the next `casa sync` carries to
 * every device.
 */
import { UsageError } from '../errors.js';
import { deriveSyncSchema, SyncSchemaError, type SyncSchema } from '../changesets/rules.js';
import { appTableNames, clearRule, readSettings, RULE_NAMES, setRule, type RuleName } from '../changesets/settings.js';
import { readState } from '../state.js';
import type { Context } from './context.js';
import { openSynced } from './synced.js';

interface TableLine {
  table: string;
  rule: 'lww' | 'set' | 'snapshot-only' | 'undecided';
  declared: boolean;
  why: string;
}

function linesOf(schema: SyncSchema, declared: Set<string>): TableLine[] {
  const out: TableLine[] = [];
  for (const t of schema.tables) {
    if (t.name === 'casa_tables') continue;
    const why = declared.has(t.name)
      ? 'declared for the vault'
      : t.kind === 'set'
        ? 'default: every column is in the primary key (a link table)'
        : `default: keyed by ${t.pk.join(', ')}`;
    out.push({ table: t.name, rule: t.kind, declared: declared.has(t.name), why });
  }
  for (const name of schema.snapshotOnly) {
    out.push({ table: name, rule: 'snapshot-only', declared: declared.has(name), why: declared.has(name) ? 'declared for the vault' : 'default: a virtual table or its shadow' });
  }
  for (const u of schema.undecided) out.push({ table: u.name, rule: 'undecided', declared: false, why: `needs a decision: ${u.reason}` });
  return out.sort((a, b) => (a.table < b.table ? -1 : a.table > b.table ? 1 : 0));
}

const localDeviceId = (ctx: Context): string | null => readState(ctx.globals.home)?.vault?.deviceId ?? null;

export async function runTables(ctx: Context): Promise<void> {
  const { db, schema } = openSynced(ctx, localDeviceId(ctx), { lenient: true });
  try {
    const declared = new Set(Object.keys(readSettings(db).tables ?? {}));
    const lines = linesOf(schema, declared);
    const width = Math.max(5, ...lines.map((l) => l.table.length));
    for (const l of lines) ctx.out.print(`${l.table.padEnd(width)}  ${l.rule.padEnd(13)}  ${l.why}`);
    const elsewhere = [...declared].filter((n) => !lines.some((l) => l.table === n)).sort();
    for (const n of elsewhere) ctx.out.note(`declared for a table this database does not have (yet): ${n}`);
    if (schema.undecided.length > 0) ctx.out.note('decide with `casa tables set TABLE snapshot-only`');
    ctx.out.result({ message_type: 'tables', tables: lines, declared_elsewhere: elsewhere });
  } finally {
    db.close();
  }
}

export async function runTablesSet(ctx: Context, table: string, rule: string): Promise<void> {
  const choices = [...RULE_NAMES, 'default'];
  if (!choices.includes(rule)) throw new UsageError(`unknown rule ${JSON.stringify(rule)}: one of ${choices.join(', ')}`);
  const { db } = openSynced(ctx, localDeviceId(ctx), { lenient: true });
  try {
    const names = appTableNames(db);
    if (!names.includes(table)) {
      throw new UsageError(`no table ${JSON.stringify(table)} in ${ctx.globals.db}`, { hints: [`its tables: ${names.join(', ') || '(none)'}`] });
    }
    const decl = readSettings(db);
    const tables = { ...(decl.tables ?? {}) };
    if (rule === 'default') delete tables[table];
    else tables[table] = rule as RuleName;
    let schema: SyncSchema;
    try {
      schema = deriveSyncSchema(db, { tables }, { lenient: true });
    } catch (err) {
      if (err instanceof SyncSchemaError) throw new UsageError(err.message);
      throw err;
    }
    const still = schema.undecided.find((u) => u.name === table);
    if (still !== undefined) {
      throw new UsageError(`table ${table} ${still.reason}: it can only be snapshot-only`, { hints: [`casa tables set ${table} snapshot-only`] });
    }
    if (rule === 'default') clearRule(db, table);
    else setRule(db, table, rule as RuleName);
    ctx.out.print(
      rule === 'default'
        ? `table ${table}: the default applies again for the vault; the next \`casa sync\` carries it to every device`
        : `table ${table}: ${rule} for the whole vault; the next \`casa sync\` carries it to every device`,
    );
    ctx.out.result({ message_type: 'tables_set', table, rule });
  } finally {
    db.close();
  }
}
