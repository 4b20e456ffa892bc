/**
 * `casa verify --sync` as users meet it: spawned CLIs on two CASA_HOMEs
 * against a real relay in workerd, the bench's realistic database. Two
 * devices in step say "same" (exit 0); a write made with capture switched
 * off (casa_meta 'applying' = 1, the way casa silences its own triggers)
 * splits them silently for `casa sync`, and verify --sync names the table
 * on both (exit 6); `casa status` remembers it without asking the relay; a
 * relay that serves an altered or moved slot is refused (exit 6); a device
 * in another state is listed as not comparable, with what to run there.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { makeDb } from '../../bench/lib/make-db.mjs';
import { pairedDevices, useRelay, type RunResult, sqlOn } from '../helpers/cli.js';

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;

const sql = sqlOn;
/** Two devices of a vault that never rotated, with an honest relay: the same key history (epoch 1). */
const SAME_KEYS = { status: 'same', epoch: 1, hidden_revocations: [], missing_revocations: [] };

/** A write casa's triggers do not see: capture silenced as casa silences it while applying. */
function uncaptured(m: Machine, query: string, ...params: unknown[]): void {
  const db = new Database(m.env.CASA_DB);
  try {
    db.pragma('busy_timeout = 5000');
    db.transaction(() => {
      db.prepare("UPDATE casa_meta SET value = 1 WHERE key = 'applying'").run();
      db.prepare(query).run(...params);
      db.prepare("UPDATE casa_meta SET value = 0 WHERE key = 'applying'").run();
    })();
  } finally {
    db.close();
  }
}

async function ok(m: Machine, args: string[]): Promise<RunResult> {
  const r = await m.run(args);
  expect(r.code, `casa ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r;
}

interface VerifySync {
  message_type: 'verify_sync';
  device: string;
  cursor: number;
  tables: Record<string, string>;
  devices: { device_id: string; name: string; status: string; tables_differ: string[]; why: string | null; key_history: unknown }[];
  digest_ms: number;
  rows: number;
  key_history: { epoch: number; history: string; revoked: string[] } | null;
}

async function verifyJson(m: Machine, code = 0): Promise<{ doc: VerifySync; r: RunResult }> {
  const r = await m.run(['verify', '--sync', '--json']);
  expect(r.code, r.stderr).toBe(code);
  return { doc: JSON.parse(r.stdout) as VerifySync, r };
}

const pair = (name: string) => pairedDevices(relay, name);

const txId = (m: Machine): string => sql<{ id: string }>(m, 'SELECT id FROM transactions ORDER BY id LIMIT 1')[0]!.id;

describe('casa verify --sync', () => {
  it('says same for devices in step, and names the table a capture gap split (exit 6 on both)', async () => {
    const { a, b, ids } = await pair('split');
    const first = await verifyJson(a);
    expect(first.doc).toMatchObject({ message_type: 'verify_sync', device: ids.a, devices: [{ device_id: ids.b, name: 'split-b', status: 'not_comparable' }] });
    expect(Object.keys(first.doc.tables).sort()).toEqual(['accounts', 'casa_tables', 'categories', 'payees', 'rules', 'transaction_tags', 'transactions']);
    expect(first.doc.rows).toBeGreaterThan(1000);
    expect(first.doc.digest_ms).toEqual(expect.any(Number));
    const fromB = await verifyJson(b);
    expect(fromB.doc.devices).toEqual([{ device_id: ids.a, name: 'split-a', status: 'same', tables_differ: [], why: null, key_history: SAME_KEYS }]);
    expect(first.doc.devices[0]!.key_history).toEqual({ status: 'unknown', epoch: null, hidden_revocations: [], missing_revocations: [] });
    expect(fromB.doc.key_history).toEqual({ epoch: 1, history: first.doc.key_history!.history, revoked: [] });
    expect(fromB.doc.tables).toEqual(first.doc.tables);
    expect(fromB.doc.cursor).toBe(first.doc.cursor);
    const human = await ok(a, ['verify', '--sync']);
    expect(human.stdout).toMatch(/^this device {2}split-a \([0-9a-f]{8}\) at changeset \d+: [\d,]+ rows in 7 tables digested in \d+ ms$/m);
    expect(human.stdout).toMatch(/^split-b \([0-9a-f]{8}\) +same$/m);

    // A write casa does not capture: b's transactions now hold what a's do not, and sync cannot tell.
    const id = txId(b);
    uncaptured(b, 'UPDATE transactions SET memo = ? WHERE id = ?', 'written with capture off', id);
    expect(sql(b, 'SELECT count(*) AS n FROM casa_changes')).toEqual([{ n: 0 }]);
    for (const m of [a, b]) expect(JSON.parse((await ok(m, ['sync', '--json'])).stdout)).toMatchObject({ pushed_changes: 0, pending_local: 0 });

    const split = await verifyJson(b, 6);
    expect(split.doc.devices).toEqual([{ device_id: ids.a, name: 'split-a', status: 'differs', tables_differ: ['transactions'], why: null, key_history: SAME_KEYS }]);
    expect(split.doc.tables.transactions).not.toBe(first.doc.tables.transactions);
    expect(split.doc.tables.accounts).toBe(first.doc.tables.accounts);
    const err = JSON.parse(split.r.stderr.trim().split('\n').pop()!) as { code: number; reason: string; message: string; hints: string[] };
    expect(err).toMatchObject({ code: 6, reason: 'integrity' });
    expect(err.message).toMatch(/transactions/);

    const onA = await a.run(['verify', '--sync']);
    expect(onA.code, onA.stderr).toBe(6);
    expect(onA.stdout).toMatch(/^split-b \([0-9a-f]{8}\) +DIFFERS +transactions$/m);
    expect(onA.stderr).toMatch(/^casa: error: synced tables differ from device split-b: transactions$/m);
    expect(onA.stderr).toMatch(/^casa: hint: .*transactions.*$/m);
    expect(onA.stderr).toMatch(/^casa: hint: .*`casa pull --force`.*$/m);

    // status remembers the verdict (read only: no relay call for it).
    const st = JSON.parse((await ok(a, ['status', '--json'])).stdout) as { changesets: { last_comparison: unknown } };
    expect(st.changesets.last_comparison).toMatchObject({ comparable: true, same: 0, not_comparable: 0, differs: [{ device_id: ids.b, name: 'split-b', tables: ['transactions'] }] });
    expect((await ok(a, ['status'])).stdout).toMatch(/^compared: +at changeset \d+, \S+: split-b DIFFERS \(transactions\): see `casa verify --sync`$/m);
  });

  it('lists a device in another state as not comparable, with what to run there (exit 0)', async () => {
    const { a, b, ids } = await pair('behind');
    await verifyJson(b);
    // a moves on: its edit is pushed by its own verify round; b's record is of the older cursor.
    sql(a, 'UPDATE transactions SET memo = ? WHERE id = ?', 'a moved on', txId(a));
    const r = await a.run(['verify', '--sync']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^behind-b \([0-9a-f]{8}\) +not comparable +it is at changeset \d+, this device at \d+$/m);
    expect(r.stderr).toMatch(/^casa: hint: on behind-b, run `casa verify --sync` \(it syncs first\), then run `casa verify --sync` here again$/m);
    // b catches up and compares: same.
    expect((await verifyJson(b)).doc.devices).toEqual([{ device_id: ids.a, name: 'behind-a', status: 'same', tables_differ: [], why: null, key_history: SAME_KEYS }]);
  });

  it('refuses a relay that serves an altered or moved slot (exit 6)', async () => {
    const { a, b, vaultId, ids } = await pair('tamper');
    await verifyJson(a);
    await verifyJson(b);
    const d1 = relay.relay.vaults();
    const slot = async (deviceId: string) =>
      (await d1.prepare('SELECT data FROM digests WHERE vault_id = ?1 AND device_id = ?2').bind(vaultId, deviceId).first<{ data: string }>())!.data;
    const serve = (deviceId: string, data: string) =>
      d1.prepare('UPDATE digests SET data = ?3, bytes = ?4 WHERE vault_id = ?1 AND device_id = ?2').bind(vaultId, deviceId, data, Buffer.from(data, 'base64url').length).run();
    const good = await slot(ids.b);

    const altered = Buffer.from(good, 'base64url');
    altered[altered.length - 20]! ^= 0x40;
    await serve(ids.b, altered.toString('base64url'));
    const r1 = await a.run(['verify', '--sync']);
    expect(r1.code, r1.stderr).toBe(6);
    expect(r1.stderr).toMatch(/^casa: error: the digest the relay holds for device tamper-b failed its integrity check$/m);
    expect(r1.stderr).toMatch(/^casa: hint: /m);

    await serve(ids.b, await slot(ids.a)); // a's own record, served as b's
    const r2 = await a.run(['verify', '--sync', '--json']);
    expect(r2.code, r2.stderr).toBe(6);
    expect(JSON.parse(r2.stderr.trim().split('\n').pop()!)).toMatchObject({ code: 6, reason: 'integrity' });

    await serve(ids.b, good);
    expect((await verifyJson(a)).doc.devices[0]).toMatchObject({ status: 'same' });
  });

  it('is a usage error with --all, --snapshot or --thorough (exit 2)', async () => {
    const a = relay.machine('usage');
    for (const extra of [['--all'], ['--snapshot', 'abcdef'], ['--thorough']]) {
      const r = await a.run(['verify', '--sync', ...extra]);
      expect(r.code, `${extra.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(/^casa: error: --sync cannot be used with --all, --snapshot or --thorough$/m);
    }
  });
});
