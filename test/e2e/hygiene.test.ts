/**
 * Local hygiene (docs/SECURITY.md §5, §7), as a user meets it: the spawned
 * CLI, a real relay in workerd, real SQLite files — plus, for what only a
 * hostile relay would send, a small HTTP server that answers like one.
 *
 * - CASA_HOME and CASA_TMPDIR are private: another user's, or a group- or
 *   world-writable one, is refused (exit 1); one of the user's own is made
 *   0700. Restored databases and `.casa-backup-*` files are 0600, and a
 *   restore or pull keeps the newest three backups.
 * - Text from the relay reaches the terminal without control characters.
 * - Only seqs whose manifest the device authenticated are remembered.
 * - A relay over plain http off this machine needs --insecure-http (exit 2).
 * - restore and pull say which snapshot they put in place, from its
 *   authenticated manifest, and warn when it is older than what was seen.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { useRelay } from '../helpers/cli.js';
import { backupsOf, editRows, writeRows } from '../helpers/sqlite.js';

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;
const json = (s: string) => JSON.parse(s) as Record<string, unknown>;
const mode = (p: string) => statSync(p).mode & 0o777;
/** A byte a terminal acts on, other than the newline casa's own lines end with. */
const CONTROL = /[\x00-\x09\x0b-\x1f\x7f-\x9f]/;
const iso = (t: number) => new Date(t).toISOString().replace(/\.\d+Z$/, 'Z');

let a: Machine;
let phraseFile: string;
let deviceA: string;
const snaps: { id: string; seq: number; before: number; after: number }[] = [];

async function snapshot(m: Machine, args: string[] = []) {
  const before = Date.now();
  const r = await m.run(['snapshot', '--json', ...args]);
  expect(r.code, r.stderr).toBe(0);
  const doc = json(r.stdout);
  snaps.push({ id: doc.snapshot_id as string, seq: doc.seq as number, before, after: Date.now() });
  return snaps[snaps.length - 1]!;
}

function highestSeq(m: Machine): number | undefined {
  return (json(readFileSync(join(m.home, 'state.json'), 'utf8')).vault as { highestSeq?: number }).highestSeq;
}

beforeAll(async () => {
  a = relay.machine('a');
  phraseFile = join(a.home, 'phrase.txt');
  const p = await a.run(['pair', '--new', '--phrase-out', phraseFile, '--device-name', 'laptop']);
  expect(p.code, p.stderr).toBe(0);
  deviceA = json((await a.run(['status', '--json'])).stdout).device_id as string;
  writeRows(a.env.CASA_DB, 2000, 'first');
  await snapshot(a); // seq 1
});

describe('working directories', () => {
  it('CASA_HOME of the user\'s own is made 0700; group- or world-writable is refused (exit 1, unsafe_directory)', async () => {
    const m = relay.machine('home');
    chmodSync(m.home, 0o755);
    const ok = await m.run(['status']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(mode(m.home)).toBe(0o700);

    chmodSync(m.home, 0o775);
    const group = await m.run(['status']);
    expect(group.code).toBe(1);
    expect(group.stderr).toMatch(new RegExp(`^casa: error: CASA_HOME ${m.home} can be written by its group \\(mode 0775\\)$`, 'm'));
    expect(group.stderr).toMatch(/^casa: hint: casa keeps private files there: .*--home \(or CASA_HOME\)/m);
    chmodSync(m.home, 0o777);
    const world = await m.run(['status', '--json']);
    expect(world.code).toBe(1);
    expect(json(world.stderr)).toMatchObject({ message_type: 'exit_error', code: 1, reason: 'unsafe_directory' });
    expect(mode(m.home)).toBe(0o777); // refused, not changed
    chmodSync(m.home, 0o700);
  });

  it('CASA_TMPDIR: another user\'s or a writable one is refused before anything runs; one of the user\'s own is made 0700', async () => {
    const m = relay.machine('tmpdir');
    const open = join(m.home, 'open');
    mkdirSync(open);
    chmodSync(open, 0o777);
    const world = await m.run(['status'], { env: { CASA_TMPDIR: open } });
    expect(world.code).toBe(1);
    expect(world.stderr).toMatch(new RegExp(`^casa: error: CASA_TMPDIR ${open} can be written by every user \\(mode 0777\\)$`, 'm'));
    expect(world.stderr).toMatch(/^casa: hint: .*point CASA_TMPDIR elsewhere$/m);

    // Another user's: as root, a directory given away; otherwise / (root's).
    let foreign = '/';
    if (process.getuid!() === 0) {
      foreign = join(m.home, 'theirs');
      mkdirSync(foreign, { mode: 0o700 });
      chownSync(foreign, 65534, 65534);
    }
    const theirs = await m.run(['snapshot'], { env: { CASA_TMPDIR: foreign } });
    expect(theirs.code).toBe(1);
    expect(theirs.stderr).toMatch(new RegExp(`^casa: error: CASA_TMPDIR ${foreign} belongs to another user \\(uid \\d+\\)$`, 'm'));

    const mine = join(m.home, 'mine');
    mkdirSync(mine, { mode: 0o755 });
    chmodSync(mine, 0o755);
    const ok = await m.run(['status'], { env: { CASA_TMPDIR: mine } });
    expect(ok.code, ok.stderr).toBe(0);
    expect(mode(mine)).toBe(0o700);
  });

  it('a working copy\'s directory is created 0700 (a database that needs a copy: not in WAL mode)', async () => {
    const m = relay.machine('copy');
    expect((await m.run(['pair', '--join', '--phrase-file', phraseFile])).code).toBe(0);
    writeRows(m.env.CASA_DB, 300, 'rollback journal');
    const Database = (await import('better-sqlite3')).default;
    const db = new Database(m.env.CASA_DB);
    db.pragma('journal_mode = DELETE');
    db.close();
    const tmp = join(m.home, 'deep', 'tmp');
    const r = await m.run(['snapshot', '--json'], { env: { CASA_TMPDIR: tmp } });
    expect(r.code, r.stderr).toBe(0);
    expect(json(r.stdout)).toMatchObject({ status: 'committed' });
    snaps.push({ id: json(r.stdout).snapshot_id as string, seq: json(r.stdout).seq as number, before: 0, after: 0 });
    expect(mode(tmp)).toBe(0o700);
    expect(mode(join(m.home, 'deep'))).toBe(0o700);
  });
});

describe('restore and pull', () => {
  let b: Machine;
  const backups: string[] = [];

  it('say which snapshot they put in place, from its manifest; the restored file and the backups are 0600, and three backups are kept', async () => {
    b = relay.machine('b');
    writeRows(b.env.CASA_DB, 50, 'local');
    chmodSync(b.env.CASA_DB, 0o644);
    const head = snaps[snaps.length - 1]!;
    for (let i = 0; i < 5; i++) {
      const r = await b.run(['restore', '--phrase-file', phraseFile, '--yes', '--json']);
      expect(r.code, r.stderr).toBe(0);
      const doc = json(r.stdout);
      expect(doc).toMatchObject({ message_type: 'restore', snapshot_id: head.id, seq: head.seq, device_id: expect.any(String), snapshot_time: expect.any(Number) });
      backups.push(doc.backup_path as string);
      expect(mode(b.env.CASA_DB)).toBe(0o600);
      expect(mode(doc.backup_path as string)).toBe(0o600);
      expect(backupsOf(b.env.CASA_DB).length).toBe(Math.min(i + 1, 3));
    }
    expect(backupsOf(b.env.CASA_DB).sort()).toEqual(backups.slice(-3).sort());

    // Human output: the note on stderr names seq, time and device from the manifest.
    const s1 = snaps[0]!;
    const r = await b.run(['restore', '--yes', '--snapshot', s1.id]);
    expect(r.code, r.stderr).toBe(0);
    const note = new RegExp(`^casa: snapshot ${s1.id.slice(0, 12)}: seq 1, taken (\\S+) on laptop \\(${deviceA}\\)$`, 'm').exec(r.stderr);
    expect(note, r.stderr).not.toBeNull();
    const taken = Date.parse(note![1]!);
    expect(taken).toBeGreaterThanOrEqual(Math.floor(s1.before / 1000) * 1000);
    expect(taken).toBeLessThanOrEqual(s1.after);
    // Seq 1 is older than seq 2, which this device restored: a warning.
    expect(r.stderr).toMatch(new RegExp(`^casa: warning: snapshot ${s1.id.slice(0, 12)} \\(seq 1\\) is older than snapshot 2, the newest this device has seen$`, 'm'));
    expect(backupsOf(b.env.CASA_DB)).toHaveLength(3);
  });

  it('pull: the same report in --json, and it keeps three backups too', async () => {
    editRows(a.env.CASA_DB, 'third');
    const s = await snapshot(a);
    const before = backupsOf(b.env.CASA_DB);
    const r = await b.run(['pull', '--force', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const doc = json(r.stdout);
    expect(doc).toMatchObject({ message_type: 'pull', status: 'pulled', snapshot_id: s.id, seq: s.seq, device_id: deviceA, device_name: 'laptop' });
    expect(doc.snapshot_time as number).toBeGreaterThanOrEqual(s.before - 1000);
    expect(doc.snapshot_time as number).toBeLessThanOrEqual(s.after);
    const after = backupsOf(b.env.CASA_DB);
    expect(after).toHaveLength(3);
    expect(after).toContain(doc.backup_path);
    expect(after.filter((x) => !before.includes(x))).toEqual([doc.backup_path]);
    expect(mode(doc.backup_path as string)).toBe(0o600);
  });

  it('only a seq whose manifest was authenticated is remembered: a head the relay merely lists is not', async () => {
    const seen = highestSeq(b)!;
    const vaultId = json((await b.run(['status', '--json'])).stdout).vault_id as string;
    const d1 = relay.relay.vaults();
    const head = await d1.prepare('SELECT * FROM snapshots WHERE vault_id = ?1 ORDER BY seq DESC LIMIT 1').bind(vaultId).first<Record<string, unknown>>();
    const fake = { ...head!, id: randomBytes(16).toString('hex'), seq: 99, manifest_key: `forged-${randomBytes(8).toString('hex')}` };
    const cols = Object.keys(fake);
    await d1
      .prepare(`INSERT INTO snapshots (${cols.join(', ')}) VALUES (${cols.map((_, i) => `?${i + 1}`).join(', ')})`)
      .bind(...cols.map((c) => (fake as Record<string, unknown>)[c]))
      .run();
    try {
      // `casa snapshot` reads the list (up to date here): it must not note seq 99.
      const up = await b.run(['snapshot', '--json']);
      expect(up.code, up.stderr).toBe(0);
      expect(json(up.stdout)).toMatchObject({ status: 'up_to_date' });
      expect(highestSeq(b)).toBe(seen);
      // `casa pull` cannot open seq 99's manifest: it names the newest that opens, and notes nothing.
      const pull = await b.run(['pull']);
      expect(pull.code).toBe(6);
      expect(pull.stderr).toMatch(new RegExp(`^casa: error: the relay has lost the manifest of snapshot ${fake.id.slice(0, 12)}; the newest snapshot that verifies is ${head!.id} \\(seq ${head!.seq}, taken \\S+\\)$`, 'm'));
      expect(pull.stderr).toContain(`casa: hint: \`casa restore --snapshot ${head!.id}\` restores it`);
      expect(highestSeq(b)).toBe(seen);
    } finally {
      await d1.prepare('DELETE FROM snapshots WHERE vault_id = ?1 AND id = ?2').bind(vaultId, fake.id).run();
    }
    // The relay's lie is gone: nothing here took it for a rollback.
    const after = await b.run(['snapshot']);
    expect(after.code, after.stderr).toBe(0);
    expect((await b.run(['pull'])).code).toBe(0);
  });
});

describe('text from the relay', () => {
  it('a device name with escape sequences reaches the terminal without them (devices, snapshots, restore)', async () => {
    const vaultId = json((await a.run(['status', '--json'])).stdout).vault_id as string;
    const d1 = relay.relay.vaults();
    const hostile = 'evil\x1b[2J\x1b[H\x1b]0;owned\x07\u009b31m\x7fname';
    await d1.prepare('UPDATE devices SET name = ?1 WHERE vault_id = ?2 AND id = ?3').bind(hostile, vaultId, deviceA).run();
    try {
      const c = relay.machine('c');
      const runs = [
        await a.run(['devices']),
        await a.run(['snapshots']),
        await c.run(['restore', '--phrase-file', phraseFile, '--snapshot', snaps[0]!.id]),
      ];
      for (const r of runs) {
        expect(r.code, r.stderr).toBe(0);
        expect(r.stdout + r.stderr).not.toMatch(CONTROL);
        expect(r.stdout + r.stderr).not.toContain('\x1b');
      }
      expect(runs[0]!.stdout).toContain('evil');
      expect(runs[2]!.stderr).toMatch(new RegExp(`^casa: snapshot \\S+: seq 1, taken \\S+ on evil\\S*name \\(${deviceA}\\)$`, 'm'));
      // --json carries the relay's text as data, every control character escaped.
      const j = await a.run(['devices', '--json']);
      expect(j.stdout).not.toMatch(CONTROL);
      expect((json(j.stdout).devices as { name: string }[]).some((d) => d.name === hostile)).toBe(true);
    } finally {
      await d1.prepare('UPDATE devices SET name = ?1 WHERE vault_id = ?2 AND id = ?3').bind('laptop', vaultId, deviceA).run();
    }
  });
});

describe('a hostile or remote relay over plain http', () => {
  let server: Server;
  let port: number;
  let requests = 0;
  const hostileMessage = 'nope\x1b]0;owned\x07\x1b[2J\x1b[31m\u009b1;1H\r\x00';
  beforeAll(async () => {
    server = createServer((req, res) => {
      requests++;
      if (req.url === '/v1/health') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ ok: true, service: 'casa-relay', version: '0.1.0', time: Date.now() }));
        return;
      }
      req.resume();
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'bad_request', message: hostileMessage } }));
    });
    await new Promise<void>((r) => server.listen(0, '0.0.0.0', r));
    port = (server.address() as { port: number }).port;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  const pairNew = (m: Machine, server: string, extra: string[] = [], env: Record<string, string> = {}) =>
    m.run(['--server', server, ...extra, 'pair', '--new', '--phrase-out', join(m.home, `p-${randomBytes(4).toString('hex')}.txt`)], { env });

  it('an error message from the relay is printed without its control characters', async () => {
    const m = relay.machine('hostile');
    const r = await pairNew(m, `http://127.0.0.1:${port}`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^casa: error: the relay refused the request \(400 bad_request: nope\S*\)$/m);
    expect(r.stderr).not.toMatch(CONTROL);
    expect(r.stderr).not.toContain('\x1b');
    const j = await pairNew(m, `http://127.0.0.1:${port}`, ['--json']);
    expect(j.stderr).not.toMatch(CONTROL);
    expect(json(j.stderr.trim().split('\n').pop()!).message).toContain(hostileMessage);
  });

  const lan = Object.values(networkInterfaces())
    .flat()
    .find((i) => i && i.family === 'IPv4' && !i.internal)?.address;

  it.skipIf(lan === undefined)('a relay off this machine over plain http: exit 2 unless --insecure-http or CASA_INSECURE_HTTP=1', async () => {
    const m = relay.machine('remote');
    const url = `http://${lan}:${port}`;
    const before = requests;
    const refused = await pairNew(m, url);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(new RegExp(`^casa: error: refusing to reach the relay at ${url.replace(/\./g, '\\.')} over plain http$`, 'm'));
    expect(refused.stderr).toMatch(/^casa: hint: use an https:\/\/ URL/m);
    expect(refused.stderr).toMatch(/^casa: hint: .*--insecure-http \(or set CASA_INSECURE_HTTP=1\)/m);
    expect(requests).toBe(before); // nothing was sent
    const asJson = await pairNew(m, url, ['--json']);
    expect(json(asJson.stderr.trim().split('\n').pop()!)).toMatchObject({ code: 2, reason: 'usage' });
    expect(existsSync(join(m.home, 'state.json')) && json(readFileSync(join(m.home, 'state.json'), 'utf8')).vault).toBeFalsy();

    // Allowed: the request reaches the (hostile) server, which refuses it.
    for (const r of [await pairNew(m, url, ['--insecure-http']), await pairNew(m, url, [], { CASA_INSECURE_HTTP: '1' })]) {
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain('the relay refused the request (400 bad_request');
    }
    expect(requests).toBeGreaterThan(before);
    // CASA_INSECURE_HTTP only counts as 1.
    expect((await pairNew(m, url, [], { CASA_INSECURE_HTTP: '0' })).code).toBe(2);
    // Loopback by name needs no flag (whichever address localhost resolves to first).
    expect((await pairNew(m, `http://localhost:${port}`)).stderr).not.toContain('refusing');
  });
});
