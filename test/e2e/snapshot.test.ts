/**
 * `casa snapshot` as cron and users meet it: the spawned CLI against a real
 * relay (workerd: D1, R2), real SQLite databases in WAL mode (text-UUID keyed
 * transactions and a tags link table), and every snapshot it claims checked
 * by fetching its manifest and packs and rebuilding the database
 * (SHA-256 + `PRAGMA integrity_check`). Also: consistency while another
 * process writes, a kill mid-upload, two devices at once, rollback,
 * revocation, the lock, and the errors a cron job would meet.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { baseEnv, CASA, ROOT, useRelay, type RunResult } from '../helpers/cli.js';
import { consistentCopy } from '../helpers/sqlite.js';
import { Context, defaultDeps, deviceSession, loadPaired, resolveGlobals, vaultKeys } from '../../src/commands/context.js';
import { processTerminal } from '../../src/ui/terminal.js';
import { SnapshotApi } from '../../src/relay/snapshots.js';
import { openManifest, openPack, type Manifest } from '../../src/snapshots/manifest.js';
import { digestFile } from '../../src/snapshots/db-copy.js';
import { lockPath } from '../../src/lock.js';
import { WorkerPool } from '../../src/snapshots/pool.js';
import { takeSnapshot } from '../../src/snapshots/snapshot.js';
import type { CommitRequest } from '../../src/relay/snapshots.js';
import type { SnapshotReport } from '../../src/commands/snapshot.js';

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;

// ---- databases ---------------------------------------------------------------

const SCHEMA = `
CREATE TABLE transactions (
  id TEXT PRIMARY KEY, account_id TEXT NOT NULL, date TEXT NOT NULL,
  amount INTEGER NOT NULL, payee TEXT, memo TEXT, updated_at TEXT NOT NULL);
CREATE INDEX transactions_date ON transactions (date);
CREATE TABLE transaction_tags (
  transaction_id TEXT NOT NULL REFERENCES transactions (id), tag TEXT NOT NULL,
  PRIMARY KEY (transaction_id, tag));
CREATE TABLE attachments (id TEXT PRIMARY KEY, data BLOB NOT NULL);`;

const PAYEES = ['Grocer', 'Rent', 'Café Central', 'Utilities', 'Pharmacy', 'Bookshop', 'Rail', 'Salary'];
const TAGS = ['food', 'home', 'travel', 'health', 'work', 'review'];

function insertTransactions(db: Database.Database, n: number): void {
  const tx = db.prepare('INSERT INTO transactions VALUES (?, ?, ?, ?, ?, ?, ?)');
  const tag = db.prepare('INSERT OR IGNORE INTO transaction_tags VALUES (?, ?)');
  db.transaction(() => {
    for (let i = 0; i < n; i++) {
      const id = randomUUID();
      const day = new Date(Date.UTC(2015, 0, 1) + i * 3_600_000).toISOString();
      tx.run(id, `acct-${i % 5}`, day.slice(0, 10), (i * 7919) % 200_000 - 50_000, PAYEES[i % PAYEES.length], `memo ${i} ${randomBytes(6).toString('hex')}`, day);
      if (i % 3 !== 0) tag.run(id, TAGS[i % TAGS.length]);
    }
  })();
}

/** A finance-like database in WAL mode: `rows` transactions (~4 MB for 20,000), optionally `blobMiB` of incompressible attachments. */
function makeDb(path: string, rows: number, blobMiB = 0): void {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.exec(SCHEMA);
  insertTransactions(db, rows);
  const att = db.prepare('INSERT INTO attachments VALUES (?, ?)');
  db.transaction(() => {
    for (let i = 0; i < blobMiB * 16; i++) att.run(randomUUID(), randomBytes(64 * 1024));
  })();
  db.close();
}

/** Updates `pct` % of the transactions, chosen at random, as the app would (WAL, one transaction). */
function updateRows(path: string, pct: number): void {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  const ids = db.prepare('SELECT id FROM transactions').pluck().all() as string[];
  const upd = db.prepare('UPDATE transactions SET amount = amount + 1, memo = ?, updated_at = ? WHERE id = ?');
  const n = Math.max(1, Math.round((ids.length * pct) / 100));
  db.transaction(() => {
    for (let i = 0; i < n; i++) upd.run(`edited ${i}`, new Date().toISOString(), ids[Math.floor(Math.random() * ids.length)]);
  })();
  db.close();
}

// ---- machines ----------------------------------------------------------------

type SnapshotDoc = SnapshotReport;

async function pairNew(m: Machine, name: string): Promise<string> {
  const phraseFile = join(m.home, 'phrase.txt');
  const r = await m.run(['pair', '--new', '--phrase-out', phraseFile, '--device-name', name]);
  expect(r.code, r.stderr).toBe(0);
  return phraseFile;
}

async function joinWith(m: Machine, phraseFile: string, name: string): Promise<void> {
  const r = await m.run(['pair', '--join', '--phrase-file', phraseFile, '--device-name', name]);
  expect(r.code, r.stderr).toBe(0);
}

async function snapshot(m: Machine, args: string[] = [], env: Record<string, string> = {}): Promise<SnapshotDoc> {
  const r = await m.run(['snapshot', '--json', ...args], { env, timeoutMs: 60_000 });
  expect(r.code, r.stderr).toBe(0);
  expect(r.stderr).toBe('');
  return JSON.parse(r.stdout) as SnapshotDoc;
}

/** Two machines in one vault (A created it, B joined with the phrase), each with its own small database. */
async function twoDevices(name: string): Promise<[Machine, Machine]> {
  const a = relay.machine(`${name}-a`);
  const b = relay.machine(`${name}-b`);
  await joinWith(b, await pairNew(a, 'desk'), 'laptop');
  makeDb(a.env.CASA_DB, 3_000);
  makeDb(b.env.CASA_DB, 3_000);
  return [a, b];
}

/** What the working-copy directory holds (a WAL database is read in place: usually nothing, often no directory). */
function tmpFiles(m: Machine): string[] {
  return existsSync(join(m.home, 'tmp')) ? readdirSync(join(m.home, 'tmp')) : [];
}

function vaultOf(m: Machine): { vaultId: string; deviceId: string; highestSeq?: number } {
  return JSON.parse(readFileSync(join(m.home, 'state.json'), 'utf8')).vault;
}

/** The machine's vault as the CLI opens it: keys from its keystore, an authenticated session. */
async function openAs(m: Machine) {
  const ctx = new Context(resolveGlobals({}, { ...m.env, CASA_SERVER: relay.url }), defaultDeps(processTerminal(), new AbortController().signal));
  const p = loadPaired(ctx);
  return { ctx, p, api: new SnapshotApi(await deviceSession(p)), keys: await vaultKeys(p) };
}

/**
 * Rebuilds a committed snapshot from the relay into `out` — manifest and every
 * pack authenticated — and checks it: SHA-256 as the manifest says, and
 * SQLite's full integrity_check.
 */
async function rebuild(m: Machine, snapshotId: string, seq: number, out: string): Promise<Manifest> {
  const { api, keys } = await openAs(m);
  const manifest = openManifest(keys, await api.getManifest(snapshotId), { vaultId: keys.vaultId, snapshotId, seq });
  const fd = openSync(out, 'w');
  try {
    for (let pi = 0; pi < manifest.packs.length; pi++) {
      const pack = manifest.packs[pi]!;
      const plain = openPack(keys, pack.id, await api.getPack(pack.id), pack.bytes, manifest.pageSize);
      for (let i = 0; i < manifest.runs.length; i += 4) {
        if (manifest.runs[i + 2] !== pi) continue;
        const [first, count, , off] = manifest.runs.slice(i, i + 4) as [number, number, number, number];
        writeSync(fd, plain, off, count * manifest.pageSize, first * manifest.pageSize);
      }
    }
  } finally {
    closeSync(fd);
  }
  expect(digestFile(out, manifest.pageSize)).toBe(manifest.pagesSha256);
  const db = new Database(out, { readonly: true });
  try {
    expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
  } finally {
    db.close();
  }
  return manifest;
}

async function snapshotRows(vaultId: string): Promise<{ id: string; seq: number }[]> {
  const r = await relay.relay.vaults().prepare('SELECT id, seq FROM snapshots WHERE vault_id = ?1 ORDER BY seq').bind(vaultId).all<{ id: string; seq: number }>();
  return r.results;
}

// ---- tests -------------------------------------------------------------------

describe('casa snapshot, one device', () => {
  let m: Machine;
  let first: SnapshotDoc;

  beforeAll(async () => {
    m = relay.machine('snap-a');
    await pairNew(m, 'laptop');
    makeDb(m.env.CASA_DB, 20_000);
  });

  it('takes the first snapshot: seq 1, every page uploaded, restorable', async () => {
    first = await snapshot(m);
    const size = readFileSync(m.env.CASA_DB).length;
    expect(first).toMatchObject({ message_type: 'snapshot', status: 'committed', seq: 1, db_bytes: size, reused_packs: 0 });
    expect(Object.keys(first).sort()).toEqual(
      ['message_type', 'status', 'snapshot_id', 'seq', 'db_bytes', 'changed_pages', 'total_pages', 'uploaded_bytes', 'uploaded_objects', 'reused_packs', 'stored_bytes', 'duration_ms'].sort(),
    );
    expect(first.snapshot_id).toMatch(/^[0-9a-f]{32}$/);
    expect(first.total_pages).toBe(size / 4096);
    expect(first.changed_pages).toBe(first.total_pages);
    expect(first.uploaded_objects).toBeGreaterThanOrEqual(1);
    expect(first.uploaded_bytes).toBeGreaterThan(0);
    expect(first.uploaded_bytes).toBeLessThan(size); // compressed
    expect(first.stored_bytes).toBe(first.uploaded_bytes);
    expect(first.duration_ms).toBeGreaterThan(0);
    expect(vaultOf(m).highestSeq).toBe(1);
    await rebuild(m, first.snapshot_id, 1, join(m.home, 'rebuilt-1.db'));
    expect(tmpFiles(m)).toEqual([]); // read in place: no copy was made
  });

  it('again: up to date, nothing uploaded; the human line says so; --quiet prints nothing', async () => {
    const again = await snapshot(m);
    expect(again).toMatchObject({ status: 'up_to_date', seq: 1, snapshot_id: first.snapshot_id, uploaded_bytes: 0, uploaded_objects: 0, changed_pages: 0 });
    expect(again.stored_bytes).toBe(first.stored_bytes);
    const human = await m.run(['snapshot']);
    expect(human.code).toBe(0);
    expect(human.stdout).toBe('up to date: snapshot 1 already holds this database\n');
    expect(human.stderr).toBe('');
    const quiet = await m.run(['snapshot', '--quiet']);
    expect(quiet).toMatchObject({ code: 0, stdout: '', stderr: '' });
    expect((await snapshotRows(vaultOf(m).vaultId)).length).toBe(1);
  });

  it('--force commits a new seq without uploading pages again', async () => {
    const forced = await snapshot(m, ['--force']);
    expect(forced).toMatchObject({ status: 'committed', seq: 2, changed_pages: 0, uploaded_objects: 0 });
    expect(forced.reused_packs).toBe(first.uploaded_objects);
    expect(forced.snapshot_id).not.toBe(first.snapshot_id);
  });

  it('after 1% of rows changed: only the changed pages are uploaded', async () => {
    updateRows(m.env.CASA_DB, 1);
    const human = await m.run(['snapshot']);
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(/^snapshot 3 committed: [\d,]+ of [\d,]+ pages changed, [\d.]+ (KiB|MiB) uploaded in \d+ packs?\n$/);
    updateRows(m.env.CASA_DB, 1);
    const inc = await snapshot(m);
    expect(inc).toMatchObject({ status: 'committed', seq: 4 });
    expect(inc.changed_pages).toBeGreaterThan(0);
    expect(inc.changed_pages).toBeLessThan(inc.total_pages / 2);
    expect(inc.uploaded_bytes).toBeLessThan(first.uploaded_bytes / 2);
    expect(inc.reused_packs).toBeGreaterThan(0);
    await rebuild(m, inc.snapshot_id, 4, join(m.home, 'rebuilt-4.db'));
  });

  /**
   * A writer process inserts transactions with their tags, one transaction
   * each, `pauseMs` apart (0: as fast as it can), while casa snapshots twice.
   * Returns what the trace said about how each snapshot read the database.
   */
  async function snapshotsDuringWrites(pauseMs: number): Promise<string[]> {
    const account = `acct-w${pauseMs}`;
    const script = `
      const Database = require(${JSON.stringify(join(ROOT, 'node_modules', 'better-sqlite3'))});
      const { randomUUID } = require('node:crypto');
      const db = new Database(process.argv[1]);
      db.pragma('journal_mode = WAL');
      db.pragma('busy_timeout = 5000');
      const ins = db.prepare("INSERT INTO transactions VALUES (?, ?, '2026-01-01', ?, 'Writer', ?, '2026-01-01')");
      const tag = db.prepare("INSERT INTO transaction_tags VALUES (?, 'writer')");
      const both = db.transaction((i) => { const id = randomUUID(); ins.run(id, process.argv[4], i, 'w'.repeat(40 + (i % 50))); tag.run(id); });
      const end = Date.now() + Number(process.argv[2]);
      const pause = Number(process.argv[3]);
      const nap = new Int32Array(new SharedArrayBuffer(4));
      let i = 0;
      console.log('ready');
      while (Date.now() < end) { both(i++); if (pause > 0) Atomics.wait(nap, 0, 0, pause); }
      console.log(i);
      db.close();`;
    const writer = spawn(process.execPath, ['-e', script, m.env.CASA_DB, '6000', String(pauseMs), account], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    writer.stdout.on('data', (d) => (out += d));
    await new Promise<void>((resolve) => writer.stdout.on('data', () => out.includes('ready') && resolve()));
    const docs: SnapshotDoc[] = [];
    const how: string[] = [];
    for (let k = 0; k < 2; k++) {
      const r = await m.run(['snapshot', '--json'], { env: { CASA_TRACE: '1' }, timeoutMs: 60_000 });
      expect(r.code, r.stderr).toBe(0);
      docs.push(JSON.parse(r.stdout) as SnapshotDoc);
      how.push(/reading the live database/.test(r.stderr) ? 'live' : /copied/.test(r.stderr) ? 'copy' : '?');
    }
    await new Promise((r) => writer.on('close', r));
    const inserted = Number(out.trim().split('\n').pop());
    expect(inserted).toBeGreaterThan(0);
    const written: number[] = [];
    for (const d of docs) {
      expect(d.status).toBe('committed');
      const copy = join(m.home, `rebuilt-${d.seq}.db`);
      await rebuild(m, d.snapshot_id, d.seq, copy);
      // Every transaction the writer inserted has its tag: no half-applied write.
      const db = new Database(copy, { readonly: true });
      const orphans = db.prepare("SELECT count(*) FROM transactions t LEFT JOIN transaction_tags g ON g.transaction_id = t.id AND g.tag = 'writer' WHERE t.account_id = ? AND g.tag IS NULL").pluck().get(account);
      written.push(db.prepare('SELECT count(*) FROM transactions WHERE account_id = ?').pluck().get(account) as number);
      db.close();
      expect(orphans).toBe(0);
    }
    // Both snapshots caught the writer mid-stream, at different points.
    expect(written[0]).toBeGreaterThan(0);
    expect(written[1]).toBeGreaterThan(written[0]!);
    expect(written[1]).toBeLessThan(inserted);
    return how;
  }

  it('while another process writes as fast as it can in WAL mode, the snapshot is one consistent state', async () => {
    const how = await snapshotsDuringWrites(0);
    for (const h of how) expect(['live', 'copy']).toContain(h);
  });

  it('while the app saves now and then, the snapshot reads the live file under a read transaction, one consistent state', async () => {
    const how = await snapshotsDuringWrites(15);
    expect(how).toContain('live');
  });

  it('a reader holding an old state keeps the WAL from folding: the snapshot copies through the backup API instead', async () => {
    const other = relay.machine('snap-old-reader');
    await pairNew(other, 'reader');
    makeDb(other.env.CASA_DB, 500);
    const reader = new Database(other.env.CASA_DB, { readonly: true });
    const writer = new Database(other.env.CASA_DB);
    try {
      reader.exec('BEGIN');
      reader.prepare('SELECT count(*) FROM transactions').get(); // holds this state's WAL frames
      insertTransactions(writer, 50);
      const r = await other.run(['snapshot', '--json'], { env: { CASA_TRACE: '1' } });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/copied/);
      expect(r.stderr).not.toMatch(/reading the live database/);
      const doc = JSON.parse(r.stdout) as SnapshotDoc;
      await rebuild(other, doc.snapshot_id, doc.seq, join(other.home, 'rebuilt.db'));
      const db = new Database(join(other.home, 'rebuilt.db'), { readonly: true });
      expect(db.prepare('SELECT count(*) FROM transactions').pluck().get()).toBe(550); // the newest committed state
      db.close();
    } finally {
      reader.exec('COMMIT');
      reader.close();
      writer.close();
    }
    expect(tmpFiles(other)).toEqual([]); // the copy is removed
  });

  it('a rollback-journal database is copied through the backup API (its lock would block the app for the whole snapshot)', async () => {
    const other = relay.machine('snap-journal');
    await pairNew(other, 'journal');
    makeDb(other.env.CASA_DB, 500);
    const db = new Database(other.env.CASA_DB);
    db.pragma('journal_mode = DELETE');
    db.close();
    const r = await other.run(['snapshot', '--json'], { env: { CASA_TRACE: '1' } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/copied/);
    const doc = JSON.parse(r.stdout) as SnapshotDoc;
    await rebuild(other, doc.snapshot_id, doc.seq, join(other.home, 'rebuilt.db'));
    expect(readFileSync(join(other.home, 'rebuilt.db')).equals(await consistentCopy(other.env.CASA_DB))).toBe(true);
    expect(tmpFiles(other)).toEqual([]);
  });
});

describe('casa snapshot, errors a cron job meets', () => {
  it('not paired: exit 7 with a hint', async () => {
    const m = relay.machine('snap-unpaired');
    makeDb(m.env.CASA_DB, 100);
    const r = await m.run(['snapshot']);
    expect(r.code).toBe(7);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^casa: error: this device is not paired/m);
    expect(r.stderr).toMatch(/^casa: hint: run `casa pair`/m);
  });

  it('no database, or not a SQLite file: exit 1 naming --db and CASA_DB', async () => {
    const m = relay.machine('snap-nodb');
    await pairNew(m, 'nodb');
    const r = await m.run(['snapshot']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`casa: error: no database at ${m.env.CASA_DB}\n`);
    expect(r.stderr).toMatch(/^casa: hint: .*--db \(or CASA_DB\)/m);
    writeFileSync(m.env.CASA_DB, 'these are not the pages you are looking for\n'.repeat(10));
    const j = await m.run(['snapshot', '--json']);
    expect(j.code).toBe(1);
    expect(j.stdout).toBe('');
    expect(JSON.parse(j.stderr)).toMatchObject({ message_type: 'exit_error', code: 1, message: `${m.env.CASA_DB} is not a SQLite database` });
  });

  it('a lock held by a live casa: exit 8 with a hint; a dead one is taken over', async () => {
    const m = relay.machine('snap-lock');
    await pairNew(m, 'lock');
    makeDb(m.env.CASA_DB, 500);
    const lock = lockPath(m.home, m.env.CASA_DB);
    mkdirSync(join(m.home, 'locks'), { recursive: true });
    writeFileSync(lock, JSON.stringify({ pid: process.pid, host: hostname(), command: 'snapshot', since: Date.now() }));
    const busy = await m.run(['snapshot']);
    expect(busy.code).toBe(8);
    expect(busy.stderr).toMatch(new RegExp(`^casa: error: another casa \\(pid ${process.pid}, \`casa snapshot\`\\) is using`, 'm'));
    expect(busy.stderr).toMatch(/^casa: hint: wait for it to finish/m);
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    writeFileSync(lock, JSON.stringify({ pid: dead, host: hostname(), command: 'snapshot', since: Date.now() }));
    const ok = await snapshot(m);
    expect(ok.status).toBe('committed');
    expect(existsSync(lock)).toBe(false);
  });

  it('a relay that rolled back: exit 6, nothing committed', async () => {
    const m = relay.machine('snap-rollback');
    await pairNew(m, 'rollback');
    makeDb(m.env.CASA_DB, 500);
    await snapshot(m);
    const two = await snapshot(m, ['--force']);
    const { vaultId } = vaultOf(m);
    expect(vaultOf(m).highestSeq).toBe(2);
    await relay.relay.vaults().prepare('DELETE FROM snapshots WHERE vault_id = ?1 AND id = ?2').bind(vaultId, two.snapshot_id).run();
    updateRows(m.env.CASA_DB, 5);
    const r = await m.run(['snapshot']);
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/^casa: error: the relay at .* serves snapshot 1 as the newest, but this device has already seen snapshot 2/m);
    expect((await snapshotRows(vaultId)).map((s) => s.seq)).toEqual([1]);
    const j = await m.run(['snapshot', '--json']);
    expect(JSON.parse(j.stderr)).toMatchObject({ code: 6, reason: 'rollback' });
  });

  it('a revoked device: exit 4', async () => {
    const m = relay.machine('snap-revoked');
    await pairNew(m, 'revoked');
    makeDb(m.env.CASA_DB, 500);
    const rv = await m.run(['devices', 'revoke', vaultOf(m).deviceId, '--yes']);
    expect(rv.code, rv.stderr).toBe(0);
    const r = await m.run(['snapshot']);
    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(/^casa: error: this device was revoked/m);
  });
});

describe('casa snapshot, interrupted and concurrent', () => {
  let proxy: Server;
  let proxyUrl: string;
  let holdPacks = false;
  let packPuts = 0;

  beforeAll(async () => {
    // A pass-through proxy that, when asked, lets the first pack upload through and holds the rest.
    proxy = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', async () => {
        if (holdPacks && req.method === 'PUT' && /\/packs\//.test(req.url ?? '') && ++packPuts > 1) return; // held until the client dies
        const headers: Record<string, string> = {};
        for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string' && !['host', 'connection', 'content-length'].includes(k)) headers[k] = v;
        try {
          const up = await fetch(relay.url + req.url, { method: req.method, headers, body: chunks.length ? Buffer.concat(chunks) : undefined });
          const body = Buffer.from(await up.arrayBuffer());
          const out: Record<string, string> = {};
          up.headers.forEach((v, k) => {
            if (!['content-length', 'content-encoding', 'transfer-encoding', 'connection', 'keep-alive'].includes(k)) out[k] = v;
          });
          res.writeHead(up.status, out).end(body);
        } catch {
          res.destroy();
        }
      });
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    proxy.closeAllConnections();
    await new Promise((r) => proxy.close(r));
  });

  /** Starts `casa snapshot` through the proxy holding all but the first pack upload; resolves once that pack is on the relay. */
  async function startHeld(m: Machine) {
    const { vaultId } = vaultOf(m);
    holdPacks = true;
    packPuts = 0;
    const child: ChildProcess = spawn(process.execPath, [CASA, 'snapshot'], {
      env: baseEnv({ ...m.env, CASA_SERVER: proxyUrl }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise<RunResult>((r) => child.on('close', (code, signal) => r({ code, signal, stdout, stderr })));
    const d1 = relay.relay.vaults();
    const deadline = Date.now() + 30_000;
    let packs = 0;
    while (Date.now() < deadline) {
      packs = (await d1.prepare('SELECT count(*) AS n FROM packs WHERE vault_id = ?1').bind(vaultId).first<{ n: number }>())!.n;
      if (packs >= 1) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(packs).toBeGreaterThanOrEqual(1);
    return {
      child,
      async ended(): Promise<RunResult> {
        const r = await exited;
        holdPacks = false;
        proxy.closeAllConnections();
        return r;
      },
    };
  }

  it('SIGINT mid-upload: exit 130, nothing committed, the temporary copy removed', async () => {
    const m = relay.machine('snap-int');
    await pairNew(m, 'int');
    makeDb(m.env.CASA_DB, 1_000, 20);
    const run = await startHeld(m);
    run.child.kill('SIGINT');
    const r = await run.ended();
    expect(r.code).toBe(130);
    expect(r.stderr).toMatch(/^casa: error: cancelled/m);
    expect(await snapshotRows(vaultOf(m).vaultId)).toEqual([]);
    expect(tmpFiles(m)).toEqual([]);
    expect(readdirSync(join(m.home, 'locks'))).toEqual([]);
  });

  for (const mode of ['wal', 'delete'] as const) {
    it(`SIGKILL mid-upload (${mode === 'wal' ? 'WAL, read in place' : 'rollback journal, copied'}): the head is unchanged, and the next run reuses the uploaded packs`, async () => {
      const m = relay.machine(`snap-kill-${mode}`);
      await pairNew(m, 'kill');
      makeDb(m.env.CASA_DB, 2_000, 40); // ~40 MiB of incompressible attachments: several packs
      if (mode === 'delete') {
        const db = new Database(m.env.CASA_DB);
        db.pragma('journal_mode = DELETE');
        db.close();
      }
      const before = readFileSync(m.env.CASA_DB);
      const { vaultId } = vaultOf(m);
      const run = await startHeld(m);
      run.child.kill('SIGKILL');
      expect((await run.ended()).signal).toBe('SIGKILL');
      expect(await snapshotRows(vaultId)).toEqual([]);
      // The killed run leaves its working copy (swept by the next run), or nothing at all.
      expect(tmpFiles(m).length).toBe(mode === 'wal' ? 0 : 1);
      expect(readFileSync(m.env.CASA_DB).equals(before)).toBe(true); // a snapshot never changes the database

      const next = await snapshot(m);
      expect(next).toMatchObject({ status: 'committed', seq: 1 });
      expect(next.reused_packs).toBeGreaterThanOrEqual(1);
      expect(tmpFiles(m)).toEqual([]);
      const manifest = await rebuild(m, next.snapshot_id, 1, join(m.home, 'rebuilt.db'));
      expect(manifest.packs.length).toBeGreaterThanOrEqual(4);
      expect(next.uploaded_objects).toBeLessThan(manifest.packs.length);
      expect(next.uploaded_objects + next.reused_packs).toBe(manifest.packs.length);
    });
  }

  it('two devices snapshotting at the same time: both committed, one after the other', async () => {
    const [a, b] = await twoDevices('snap-two');
    const base = (await snapshot(a)).seq;
    const [da, db] = await Promise.all([snapshot(a, ['--force']), snapshot(b)]);
    expect([da.status, db.status]).toEqual(['committed', 'committed']);
    expect([da.seq, db.seq].sort()).toEqual([base + 1, base + 2]);
    const rows = await snapshotRows(vaultOf(a).vaultId);
    expect(rows.map((r) => r.seq)).toEqual([base, base + 1, base + 2]);
    expect(rows.map((r) => r.id)).toEqual(expect.arrayContaining([da.snapshot_id, db.snapshot_id]));
    await rebuild(a, db.snapshot_id, db.seq, join(a.home, 'b.db'));
  });

  it('the engine rebases after losing the race, and re-uploads packs the relay reports missing', async () => {
    const [a, b] = await twoDevices('snap-race');
    const { ctx, p, api, keys } = await openAs(a);
    let calls = 0;
    let reportedMissing = '';
    const racing = {
      list: () => api.list(),
      head: () => api.head(),
      missingPacks: (ids: string[]) => api.missingPacks(ids),
      putPack: (id: string, o: Uint8Array) => api.putPack(id, o),
      putManifest: (id: string, o: Uint8Array) => api.putManifest(id, o),
      async commit(req: CommitRequest) {
        calls++;
        if (calls === 1) {
          // Another device commits first: this commit meets a moved head.
          expect((await snapshot(b)).seq).toBe(1);
        } else if (calls === 2) {
          reportedMissing = req.packs[0]!;
          return { ok: false as const, reason: 'missing_packs' as const, missing: [reportedMissing] };
        }
        return api.commit(req);
      },
    };
    const pool = new WorkerPool(keys, 1);
    try {
      const r = await takeSnapshot(
        {
          home: a.home,
          dbPath: ctx.globals.db,
          keys,
          deviceId: p.vault.deviceId,
          highestSeq: 0,
          api: racing,
          server: relay.url,
          pool,
          random: ctx.deps.random,
          now: Date.now,
          signal: ctx.deps.signal,
          sleep: async () => {},
        },
        { force: false },
      );
      expect(r).toMatchObject({ status: 'committed', seq: 2, rebases: 1 });
      expect(calls).toBe(3);
      expect(r.uploadedObjects).toBeGreaterThan(r.packCount - 1); // the reported pack went up twice
      await rebuild(a, r.snapshotId, 2, join(a.home, 'raced.db'));
    } finally {
      await pool.close();
    }
    expect(reportedMissing).toMatch(/^[0-9a-f]{64}$/);
  });
});
