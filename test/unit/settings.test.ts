// The vault's sync settings (src/changesets/settings.ts, docs/MERGE.md §2):
// rows of casa_tables, read as declarations; the file an earlier casa read
// imported once; a rule this casa cannot use leaves only its table out.
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { deriveSyncSchema, SETTINGS_TABLE } from '../../src/changesets/rules.js';
import { clearRule, importDeclarationsFile, readSettings, setRule } from '../../src/changesets/settings.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function db(): Database.Database {
  const d = new Database(':memory:');
  d.exec(`CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT);
          CREATE TABLE budgets (id INTEGER PRIMARY KEY, month TEXT);
          CREATE TABLE tags (tx TEXT, tag TEXT, PRIMARY KEY (tx, tag));`);
  return d;
}

describe('sync settings', () => {
  it('are rows of casa_tables, read back as declarations; set replaces, clear takes back', () => {
    const d = db();
    expect(readSettings(d)).toEqual({ tables: {} });
    setRule(d, 'budgets', 'snapshot-only');
    setRule(d, 'accounts', { kind: 'lww', columns: { name: 'lww' } });
    expect(readSettings(d)).toEqual({ tables: { accounts: { kind: 'lww', columns: { name: 'lww' } }, budgets: 'snapshot-only' } });
    setRule(d, 'budgets', 'snapshot-only');
    expect(d.prepare(`SELECT count(*) AS n FROM ${SETTINGS_TABLE}`).get()).toEqual({ n: 2 });
    expect(clearRule(d, 'accounts')).toBe(true);
    expect(clearRule(d, 'accounts')).toBe(false);
    expect(readSettings(d)).toEqual({ tables: { budgets: 'snapshot-only' } });
  });

  it('casa_tables itself syncs, last writer wins per table', () => {
    const d = db();
    setRule(d, 'budgets', 'snapshot-only');
    const s = deriveSyncSchema(d, readSettings(d));
    expect(s.tables.find((t) => t.name === SETTINGS_TABLE)).toEqual({ name: SETTINGS_TABLE, kind: 'lww', pk: ['tbl'], columns: ['rule'] });
    expect(s.snapshotOnly).toEqual(['budgets']);
  });

  it('imports the file an earlier casa read once, keeping what the vault decided, and renames it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'casa-settings-'));
    dirs.push(dir);
    const file = join(dir, 'sync-tables.json');
    writeFileSync(file, JSON.stringify({ tables: { budgets: 'snapshot-only', tags: 'set', accounts: 'lww' } }));
    const d = db();
    setRule(d, 'accounts', { kind: 'lww', columns: { name: 'lww' } });
    expect(importDeclarationsFile(d, file)).toEqual(['budgets', 'tags']);
    expect(existsSync(file)).toBe(false);
    expect(JSON.parse(readFileSync(`${file}.imported`, 'utf8')).tables.budgets).toBe('snapshot-only');
    expect(readSettings(d).tables).toEqual({ accounts: { kind: 'lww', columns: { name: 'lww' } }, budgets: 'snapshot-only', tags: 'set' });
    expect(importDeclarationsFile(d, file)).toEqual([]);
    writeFileSync(file, '{not json');
    expect(() => importDeclarationsFile(d, file)).toThrow(/cannot read .*sync-tables\.json/);
  });

  it('a rule this casa cannot use, or cannot apply to this schema, leaves only that table out (lenient), or is named (strict)', () => {
    const d = db();
    setRule(d, 'budgets', 'snapshot-only');
    d.prepare(`INSERT INTO ${SETTINGS_TABLE} (tbl, rule) VALUES ('accounts', 'someday')`).run();
    setRule(d, 'tags', 'lww');
    const s = deriveSyncSchema(d, readSettings(d), { lenient: true });
    expect(s.undecided.map((u) => u.name)).toEqual(['accounts', 'tags']);
    expect(s.undecided[0]!.reason).toMatch(/declared rule this casa cannot use/);
    expect(s.tables.map((t) => t.name)).toEqual([SETTINGS_TABLE]);
    expect(() => deriveSyncSchema(d, readSettings(d))).toThrow(/accounts/);
  });
});
