/**
 * Snapshots on a real terminal (pseudo-terminal via util-linux `script`):
 * progress (bytes, rate, ETA) is drawn on stderr only there, and `casa
 * restore` asks before replacing a database — yes replaces it and keeps a
 * backup, no (or Ctrl-C) leaves it alone.
 */
import { describe, expect, it } from 'vitest';
import { randomBytes, randomUUID } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import Database from 'better-sqlite3';
import { useRelay } from '../helpers/cli.js';
import { KEY, Pty } from '../helpers/pty.js';

const relay = useRelay();

/** A few MiB of text-keyed rows plus incompressible blobs, in WAL mode. */
function makeDb(path: string): void {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.exec('CREATE TABLE t (id TEXT PRIMARY KEY, memo TEXT, data BLOB)');
  const ins = db.prepare('INSERT INTO t VALUES (?, ?, ?)');
  db.transaction(() => {
    for (let i = 0; i < 400; i++) ins.run(randomUUID(), `memo ${i}`, randomBytes(16 * 1024));
  })();
  db.close();
}

describe('snapshots on a terminal', () => {
  it('draws progress on the terminal, and restore asks before replacing a database', async () => {
    const a = relay.machine('pty-snap');
    const phrase = join(a.home, 'phrase.txt');
    expect((await a.run(['pair', '--new', '--phrase-out', phrase])).code).toBe(0);
    makeDb(a.env.CASA_DB);

    const snap = new Pty(['snapshot'], a.env);
    await snap.expect(/snapshot 1 committed/);
    expect((await snap.done).code).toBe(0);
    expect(snap.screen).toMatch(/casa: (copying|uploading) \[[= ]+\]\s+\d+%\s+[\d.]+\/[\d.]+ MiB\s+[\d.]+ MiB\/s\s+ETA \d+s/);
    // without a terminal, no progress at all
    const quiet = await a.run(['snapshot', '--force']);
    expect(quiet.stderr).toBe('');

    const b = relay.machine('pty-restore');
    writeFileSync(b.env.CASA_DB, 'not the snapshot');
    const no = new Pty(['restore', '--phrase-file', phrase], b.env);
    await no.expect(/Replace .* with snapshot [0-9a-f]{12}/);
    no.write('n' + KEY.enter);
    expect((await no.done).code).toBe(130);
    expect(readFileSync(b.env.CASA_DB, 'utf8')).toBe('not the snapshot');

    const yes = new Pty(['restore'], b.env);
    await yes.expect(/Replace .* with snapshot/);
    yes.write('y' + KEY.enter);
    await yes.expect(/restored snapshot [0-9a-f]{12}/);
    expect((await yes.done).code).toBe(0);
    const db = new Database(b.env.CASA_DB, { readonly: true });
    expect((db.prepare('SELECT count(*) AS n FROM t').get() as { n: number }).n).toBe(400);
    db.close();
    const backups = readdirSync(dirname(b.env.CASA_DB)).filter((f) => f.startsWith(`${basename(b.env.CASA_DB)}.casa-backup-`));
    expect(backups).toHaveLength(1);
    expect(readFileSync(join(dirname(b.env.CASA_DB), backups[0]!), 'utf8')).toBe('not the snapshot');
  });
});
