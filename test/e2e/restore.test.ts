/**
 * `casa restore`, `casa pull`, `casa verify` and `casa snapshots` as a user
 * meets them: the spawned CLI, a real relay in workerd, real SQLite files.
 * Machine A writes and snapshots; fresh machines restore with the phrase;
 * every refusal leaves the database byte for byte as it was.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { useRelay } from '../helpers/cli.js';
import { backupsOf, consistentCopy, editRows, integrityCheck, restoreTemps, sha256, writeRows } from '../helpers/sqlite.js';

const relay = useRelay();

type Machine = ReturnType<typeof relay.machine>;
const db = (m: Machine) => m.env.CASA_DB;
const json = (s: string) => JSON.parse(s) as Record<string, unknown>;

let a: Machine;
let phraseFile: string;
let phrase: string;
/** Snapshot ids by seq, and the bytes each snapshot holds. */
const snaps: { id: string; seq: number; bytes: Buffer }[] = [];

async function snapshot(m: Machine) {
  const r = await m.run(['snapshot', '--json']);
  expect(r.code, r.stderr).toBe(0);
  const doc = json(r.stdout);
  expect(doc).toMatchObject({ message_type: 'snapshot', status: 'committed' });
  snaps.push({ id: doc.snapshot_id as string, seq: doc.seq as number, bytes: await consistentCopy(db(m)) });
  return snaps[snaps.length - 1]!;
}

function indexFiles(m: Machine): Record<string, number> {
  const out: Record<string, number> = {};
  const walk = (d: string) => {
    if (!existsSync(d)) return;
    for (const n of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, n.name);
      if (n.isDirectory()) walk(p);
      else out[p] = statSync(p).mtimeMs;
    }
  };
  walk(join(m.home, 'index'));
  return out;
}

beforeAll(async () => {
  a = relay.machine('a');
  phraseFile = join(a.home, 'phrase.txt');
  const p = await a.run(['pair', '--new', '--phrase-out', phraseFile, '--device-name', 'laptop']);
  expect(p.code, p.stderr).toBe(0);
  phrase = readFileSync(phraseFile, 'utf8');
  writeRows(db(a), 4000, 'first');
  await snapshot(a); // seq 1
  editRows(db(a), 'second');
  writeRows(db(a), 500, 'more');
  await snapshot(a); // seq 2
});

describe('casa restore', () => {
  it('restores a fresh machine with the phrase from a file: the exact snapshotted database', async () => {
    const b = relay.machine('b');
    const r = await b.run(['restore', '--phrase-file', phraseFile, '--device-name', 'desktop', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const doc = json(r.stdout);
    expect(Object.keys(doc).sort()).toEqual(
      ['message_type', 'snapshot_id', 'seq', 'snapshot_time', 'device_id', 'device_name', 'db_path', 'db_bytes', 'downloaded_bytes', 'backup_path', 'duration_ms'].sort(),
    );
    expect(doc).toMatchObject({ message_type: 'restore', snapshot_id: snaps[1]!.id, seq: 2, db_path: db(b), backup_path: null, device_name: 'laptop' });
    expect(doc.db_bytes).toBe(snaps[1]!.bytes.length);
    expect(doc.downloaded_bytes as number).toBeGreaterThan(0);
    expect(readFileSync(db(b)).equals(snaps[1]!.bytes)).toBe(true);
    expect(integrityCheck(db(b))).toBe('ok');
    expect(restoreTemps(db(b))).toEqual([]);
    // It paired, as `casa pair --join` would.
    const st = json((await b.run(['status', '--json'])).stdout);
    expect(st).toMatchObject({ paired: true, device_name: 'desktop' });
  });

  it('restores an older snapshot by id prefix, with the phrase on stdin, and says so on stdout', async () => {
    const c = relay.machine('c');
    const r = await c.run(['restore', '--phrase-stdin', '--snapshot', snaps[0]!.id.slice(0, 8)], { input: phrase });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`restored snapshot ${snaps[0]!.id.slice(0, 12)} (seq 1,`);
    expect(r.stderr).not.toContain(phrase.trim().split(/\s+/).slice(0, 3).join(' '));
    expect(readFileSync(db(c)).equals(snaps[0]!.bytes)).toBe(true);
  });

  it('asks before replacing a database: without a terminal it needs --yes (exit 2, untouched); with it, keeps a backup', async () => {
    const d = relay.machine('d');
    writeRows(db(d), 300, 'local');
    const before = readFileSync(db(d));
    const no = await d.run(['restore', '--phrase-file', phraseFile]);
    expect(no.code).toBe(2);
    expect(no.stderr).toMatch(/^casa: error: .* already exists$/m);
    expect(no.stderr).toContain('casa: hint: pass --yes');
    expect(readFileSync(db(d)).equals(before)).toBe(true);
    expect(existsSync(join(d.home, 'state.json')) && json(readFileSync(join(d.home, 'state.json'), 'utf8')).vault).toBeFalsy();

    const yes = await d.run(['restore', '--phrase-file', phraseFile, '--yes', '--json']);
    expect(yes.code, yes.stderr).toBe(0);
    const doc = json(yes.stdout);
    expect(readFileSync(db(d)).equals(snaps[1]!.bytes)).toBe(true);
    expect(backupsOf(db(d))).toEqual([doc.backup_path]);
    expect(readFileSync(doc.backup_path as string).equals(before)).toBe(true);
    expect(restoreTemps(db(d))).toEqual([]);
  });

  it('refuses what it cannot do: unknown snapshot (1), no phrase without a terminal (2), empty vault (1)', async () => {
    const e = relay.machine('e');
    const unknown = await e.run(['restore', '--phrase-file', phraseFile, '--snapshot', 'abcdef012345']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('casa: error: no snapshot abcdef012345 in this vault');
    expect(unknown.stderr).toContain('casa snapshots');
    expect(existsSync(db(e))).toBe(false);

    const f = relay.machine('f');
    const nophrase = await f.run(['restore']);
    expect(nophrase.code).toBe(2);
    expect(nophrase.stderr).toMatch(/casa: hint: .*--phrase-stdin/);

    const g = relay.machine('g');
    const pf = join(g.home, 'p.txt');
    expect((await g.run(['pair', '--new', '--phrase-out', pf])).code).toBe(0);
    const empty = await g.run(['restore']);
    expect(empty.code).toBe(1);
    expect(empty.stderr).toContain('casa: error: the vault has no snapshot yet');
    expect(empty.stderr).toContain('casa: hint: run `casa snapshot`');
  });
});

describe('casa pull', () => {
  let b: Machine;
  beforeAll(async () => {
    b = relay.machine('pull-b');
    expect((await b.run(['restore', '--phrase-file', phraseFile])).code).toBe(0);
  });

  it('is up to date right after a restore', async () => {
    const r = await b.run(['pull', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(json(r.stdout)).toMatchObject({ message_type: 'pull', status: 'up_to_date', seq: 2 });
    expect((await b.run(['pull'])).stdout).toContain('up to date');
  });

  it('takes a newer snapshot from another device', async () => {
    editRows(db(a), 'third', 13);
    const s3 = await snapshot(a);
    const r = await b.run(['pull', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(json(r.stdout)).toMatchObject({ message_type: 'pull', status: 'pulled', seq: s3.seq, snapshot_id: s3.id });
    expect(readFileSync(db(b)).equals(s3.bytes)).toBe(true);
    expect(integrityCheck(db(b))).toBe('ok');
  });

  it('refuses to overwrite local changes (exit 3, untouched); --force replaces and keeps them as a backup', async () => {
    editRows(db(b), 'local edit', 7);
    const mine = readFileSync(db(b));
    editRows(db(a), 'fourth', 11);
    const s4 = await snapshot(a);
    const r = await b.run(['pull']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^casa: error: .* changed since snapshot .*; pulling would lose those changes$/m);
    expect(r.stderr).toContain('casa: hint: run `casa snapshot` first');
    expect(r.stderr).toContain('--force');
    expect(readFileSync(db(b)).equals(mine)).toBe(true);
    expect(restoreTemps(db(b))).toEqual([]);

    const before = backupsOf(db(b));
    const f = await b.run(['pull', '--force', '--json']);
    expect(f.code, f.stderr).toBe(0);
    const doc = json(f.stdout);
    expect(readFileSync(db(b)).equals(s4.bytes)).toBe(true);
    expect(backupsOf(db(b))).toEqual([...before, doc.backup_path]);
    expect(readFileSync(doc.backup_path as string).equals(mine)).toBe(true);
  });

  it('a database never synced here counts as changed; a missing one is simply restored', async () => {
    const h = relay.machine('pull-h');
    expect((await h.run(['pair', '--join', '--phrase-file', phraseFile])).code).toBe(0);
    writeRows(db(h), 10, 'stray');
    const stray = readFileSync(db(h));
    const r = await h.run(['pull']);
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('was never synced on this device');
    expect(readFileSync(db(h)).equals(stray)).toBe(true);

    const i = relay.machine('pull-i');
    expect((await i.run(['pair', '--join', '--phrase-file', phraseFile])).code).toBe(0);
    const ok = await i.run(['pull', '--json']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(readFileSync(db(i)).equals(snaps[snaps.length - 1]!.bytes)).toBe(true);
  });
});

describe('casa verify and casa snapshots', () => {
  it('verify restores into a temp dir and checks, touching neither the database nor the index', async () => {
    const b = relay.machine('verify-b');
    expect((await b.run(['restore', '--phrase-file', phraseFile, '--snapshot', snaps[0]!.id])).code).toBe(0);
    editRows(db(b), 'unsynced', 5);
    const before = readFileSync(db(b));
    const idx = indexFiles(b);
    expect(Object.keys(idx)).toHaveLength(1);

    const r = await b.run(['verify', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const head = snaps[snaps.length - 1]!;
    expect(json(r.stdout)).toEqual({ message_type: 'verify', snapshots: [{ snapshot_id: head.id, seq: head.seq, ok: true, error: null }] });
    const all = await b.run(['verify', '--all', '--thorough']);
    expect(all.code, all.stderr).toBe(0);
    expect(all.stdout.trim().split('\n')).toHaveLength(snaps.length);
    for (const s of snaps) expect(all.stdout).toContain(`ok      ${s.id.slice(0, 12)}  seq ${s.seq}`);

    expect(readFileSync(db(b)).equals(before)).toBe(true);
    expect(indexFiles(b)).toEqual(idx);
    expect(restoreTemps(db(b))).toEqual([]);
    expect(backupsOf(db(b))).toEqual([]);
  });

  it('snapshots lists newest first with the head marked', async () => {
    const r = await a.run(['snapshots', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const doc = json(r.stdout) as { head_seq: number; snapshots: Record<string, unknown>[] };
    expect(doc.head_seq).toBe(snaps.length);
    expect(doc.snapshots.map((s) => s.snapshot_id)).toEqual(snaps.map((s) => s.id).reverse());
    expect(doc.snapshots[0]).toMatchObject({ head: true, device_name: 'laptop', db_bytes: snaps[snaps.length - 1]!.bytes.length });
    expect(doc.snapshots.slice(1).every((s) => s.head === false)).toBe(true);

    const t = await a.run(['snapshots']);
    expect(t.code).toBe(0);
    const lines = t.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/ID\s+SEQ\s+TIME\s+DEVICE\s+SIZE\s+NEW/);
    expect(lines[1]).toMatch(new RegExp(`^\\*\\s+${snaps[snaps.length - 1]!.id.slice(0, 12)}\\s+${snaps.length}\\s`));
    expect(lines).toHaveLength(snaps.length + 1);
  });

  it('an unpaired home: exit 7', async () => {
    const u = relay.machine('u');
    for (const cmd of [['pull'], ['verify'], ['snapshots']]) {
      const r = await u.run(cmd);
      expect(r.code, cmd.join(' ')).toBe(7);
    }
  });
});
