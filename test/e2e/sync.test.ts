/**
 * Changeset sync as users meet it: spawned CLIs on two and three CASA_HOMEs
 * against a real relay in workerd, a realistic finance database (the bench's
 * generator), edits made by a plain SQLite connection and by the sqlite3
 * shell while casa is not running, concurrent edits merged field by field,
 * restore and pull catching up after the snapshot, the relay tampered with
 * (exit 6, nothing applied), a revoked device refused, and `--watch`.
 */
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeDb } from '../../bench/lib/make-db.mjs';
import { baseEnv, CASA, storageText, useRelay, type RunResult, sqlOn } from '../helpers/cli.js';
import { replaceChangeset } from '../helpers/relay.js';

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;

const sql = sqlOn;

/** A write through the sqlite3 shell: another program, while casa does not run. */
function shell(m: Machine, statement: string): void {
  const r = spawnSync('sqlite3', [m.env.CASA_DB, statement], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
}

async function ok(m: Machine, args: string[]): Promise<RunResult> {
  const r = await m.run(args);
  expect(r.code, `casa ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r;
}

async function syncJson(m: Machine): Promise<Record<string, number>> {
  return JSON.parse((await ok(m, ['sync', '--json'])).stdout);
}

/** Synced tables as text, to compare devices. */
function dump(m: Machine): string {
  const tables = ['accounts', 'categories', 'payees', 'rules', 'transactions', 'transaction_tags'];
  return tables.map((t) => JSON.stringify(sql(m, `SELECT * FROM ${t} ORDER BY 1, 2`))).join('\n');
}


/** Vault on A with a realistic database, sync set up, a snapshot; B (and C) restored from it. */
async function vault(name: string, others = 1): Promise<{ a: Machine; devs: Machine[]; phrase: string }> {
  const a = relay.machine(`${name}-a`);
  const phraseFile = join(a.home, 'phrase.txt');
  await ok(a, ['pair', '--new', '--phrase-out', phraseFile, '--device-name', `${name}-a`]);
  makeDb({ out: a.env.CASA_DB, sizeMb: 1, seed: 3 });
  await ok(a, ['sync']); // installs capture
  await ok(a, ['snapshot', '--quiet']);
  const devs: Machine[] = [];
  for (let i = 0; i < others; i++) {
    const m = relay.machine(`${name}-${'bcd'[i]}`);
    await ok(m, ['restore', '--yes', '--phrase-file', phraseFile, '--device-name', `${name}-${'bcd'[i]}`]);
    devs.push(m);
  }
  return { a, devs, phrase: readFileSync(phraseFile, 'utf8') };
}

const txIds = (m: Machine, n: number) => sql<{ id: string }>(m, 'SELECT id FROM transactions ORDER BY id LIMIT ?', n).map((r) => r.id);

describe('casa sync', () => {
  it('captures writes made without casa, pushes them, and merges them on the other device', async () => {
    const { a, devs } = await vault('basic');
    const [b] = devs as [Machine];
    const [t1, t2] = txIds(a, 2) as [string, string];
    shell(a, `UPDATE transactions SET memo = 'edited in the sqlite3 shell' WHERE id = '${t1}'`);
    sql(a, 'UPDATE transactions SET amount = -4242, cleared = 1 - cleared WHERE id = ?', t2);
    const pushed = await syncJson(a);
    expect(pushed).toMatchObject({ message_type: 'sync', pushed_changes: 3, pending_local: 0 });
    const pulled = await syncJson(b);
    expect(pulled.applied_changes).toBe(3);
    expect(sql(b, 'SELECT memo FROM transactions WHERE id = ?', t1)).toEqual([{ memo: 'edited in the sqlite3 shell' }]);
    expect(sql(b, 'SELECT amount, cleared FROM transactions WHERE id = ?', t2)).toEqual(sql(a, 'SELECT amount, cleared FROM transactions WHERE id = ?', t2));
    expect(sql(b, 'SELECT amount FROM transactions WHERE id = ?', t2)).toEqual([{ amount: -4242 }]);
    // Applied changes do not echo back.
    expect((await syncJson(b)).pushed_changes).toBe(0);
    expect(dump(a)).toBe(dump(b));
    const st = JSON.parse((await ok(b, ['status', '--json'])).stdout);
    expect(st.changesets).toMatchObject({ pending_local: 0, cursor: expect.any(Number) });
    expect(st.changesets.cursor).toBe(st.changesets.relay_head);
  });

  it('merges concurrent edits field by field: different fields both kept, same field decided the same way everywhere and audited', async () => {
    const { a, devs } = await vault('merge');
    const [b] = devs as [Machine];
    const [t1, t2] = txIds(a, 2) as [string, string];
    sql(a, 'UPDATE transactions SET memo = ? WHERE id = ?', 'memo from a', t1);
    sql(b, 'UPDATE transactions SET amount = ? WHERE id = ?', 777, t1);
    sql(a, 'UPDATE transactions SET memo = ? WHERE id = ?', 'a wrote this', t2);
    await new Promise((r) => setTimeout(r, 20)); // b's edit is later by the clock
    sql(b, 'UPDATE transactions SET memo = ? WHERE id = ?', 'b wrote this later', t2);
    await syncJson(a);
    await syncJson(b);
    await syncJson(a);
    expect(sql(a, 'SELECT memo, amount FROM transactions WHERE id = ?', t1)).toEqual([{ memo: 'memo from a', amount: 777 }]);
    expect(sql(a, 'SELECT memo FROM transactions WHERE id = ?', t2)).toEqual([{ memo: 'b wrote this later' }]);
    expect(dump(a)).toBe(dump(b));
    const conflicts = JSON.parse((await ok(b, ['sync', '--conflicts', '--json'])).stdout).conflicts as Record<string, unknown>[];
    expect(conflicts.some((c) => c.col === 'memo' && c.local_val === 'b wrote this later' && c.winner === 'local')).toBe(true);
    const human = await ok(b, ['sync', '--conflicts']);
    expect(human.stdout).toMatch(/FIELD[\s\S]*memo[\s\S]*lww/);
  });

  it('an edit of another device\'s write is no conflict; edits made without seeing each other are exactly one', async () => {
    const { a, devs } = await vault('causal');
    const [b] = devs as [Machine];
    const conflictsOf = async (m: Machine) =>
      (JSON.parse((await ok(m, ['sync', '--conflicts', '--json'])).stdout).conflicts as Record<string, unknown>[]).filter((c) => c.pk === '["tx-new"]');
    sql(a, "INSERT INTO transactions (id, account_id, date, amount, memo, created_at, updated_at) SELECT 'tx-new', id, '2026-12-01', -1250, 'Bahn', 'c', 'u' FROM accounts LIMIT 1");
    await syncJson(a);
    await syncJson(b);
    shell(b, "UPDATE transactions SET amount = -1300 WHERE id = 'tx-new'");
    await syncJson(b);
    await syncJson(a);
    expect(sql(a, "SELECT amount FROM transactions WHERE id = 'tx-new'")).toEqual([{ amount: -1300 }]);
    expect(await conflictsOf(a)).toEqual([]);
    expect(await conflictsOf(b)).toEqual([]);
    // Now both edit the memo before either syncs: one conflict, on each device that merges the other's.
    shell(a, "UPDATE transactions SET memo = 'Bahn (a)' WHERE id = 'tx-new'");
    await new Promise((r) => setTimeout(r, 20));
    shell(b, "UPDATE transactions SET memo = 'Bahn (b)' WHERE id = 'tx-new'");
    await syncJson(a);
    await syncJson(b);
    await syncJson(a);
    expect(dump(a)).toBe(dump(b));
    for (const m of [a, b]) {
      const got = await conflictsOf(m);
      expect(got).toHaveLength(1);
      expect(got[0]).toMatchObject({ col: 'memo', rule: 'lww', winner: m === b ? 'local' : 'remote' });
    }
  });

  it('three devices converge; tags merge as sets; a delete wins over a concurrent update', async () => {
    const { a, devs } = await vault('three', 2);
    const [b, c] = devs as [Machine, Machine];
    const [t1, t2] = txIds(a, 2) as [string, string];
    sql(a, "INSERT INTO transaction_tags (transaction_id, tag) VALUES (?, 'from-a')", t1);
    sql(b, "INSERT INTO transaction_tags (transaction_id, tag) VALUES (?, 'from-b')", t1);
    sql(c, 'DELETE FROM transactions WHERE id = ?', t2);
    sql(a, 'UPDATE transactions SET memo = ? WHERE id = ?', 'updated while deleted elsewhere', t2);
    for (let round = 0; round < 2; round++) for (const m of [a, b, c]) await syncJson(m);
    const d = dump(a);
    expect(dump(b)).toBe(d);
    expect(dump(c)).toBe(d);
    expect(sql(a, 'SELECT tag FROM transaction_tags WHERE transaction_id = ? AND tag LIKE ? ORDER BY tag', t1, 'from-%')).toEqual([
      { tag: 'from-a' },
      { tag: 'from-b' },
    ]);
    expect(sql(a, 'SELECT count(*) AS n FROM transactions WHERE id = ?', t2)).toEqual([{ n: 0 }]);
  });

  it('restore and pull catch up: the snapshot, then the changesets after it; pull pushes local changes first', async () => {
    const { a, devs, phrase } = await vault('catchup');
    const [b] = devs as [Machine];
    const [t1, t2] = txIds(a, 2) as [string, string];
    sql(a, 'UPDATE transactions SET memo = ? WHERE id = ?', 'after the snapshot', t1);
    await syncJson(a);
    const c = relay.machine('catchup-c');
    writeFileSync(join(c.home, 'phrase.txt'), phrase);
    await ok(c, ['restore', '--yes', '--phrase-file', join(c.home, 'phrase.txt')]);
    expect(sql(c, 'SELECT memo FROM transactions WHERE id = ?', t1)).toEqual([{ memo: 'after the snapshot' }]);

    // b has a local edit; a takes a newer snapshot; b pulls it and keeps its edit.
    sql(b, 'UPDATE transactions SET memo = ? WHERE id = ?', 'b, not pushed yet', t2);
    await ok(a, ['snapshot', '--quiet']);
    const p = await ok(b, ['pull', '--json']);
    expect(JSON.parse(p.stdout).status).toBe('pulled');
    expect(sql(b, 'SELECT memo FROM transactions WHERE id = ?', t2)).toEqual([{ memo: 'b, not pushed yet' }]);
    expect(sql(b, 'SELECT memo FROM transactions WHERE id = ?', t1)).toEqual([{ memo: 'after the snapshot' }]);
    await syncJson(a);
    expect(sql(a, 'SELECT memo FROM transactions WHERE id = ?', t2)).toEqual([{ memo: 'b, not pushed yet' }]);
  });

  it('SIGKILL at random moments of push and pull loses nothing and applies nothing twice', async () => {
    const kills = process.env.SLOW === '1' ? 16 : 4;
    const seed = Number(process.env.CASA_SEED ?? Date.now() % 100_000);
    let x = seed;
    const rand = () => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const { a, devs } = await vault('kill');
    const [b] = devs as [Machine];
    const killAt = async (m: Machine, ms: number) => {
      const child = spawn(process.execPath, [CASA, 'sync'], { env: baseEnv(m.env), stdio: 'ignore' });
      const done = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
      const t = setTimeout(() => child.kill('SIGKILL'), ms);
      const code = await done;
      clearTimeout(t);
      return code;
    };
    for (let round = 0; round < kills; round++) {
      // Enough edits for a push and a pull that take a while: 3 fields of 5,000 transactions.
      const ids = txIds(a, 5000);
      const db = new Database(a.env.CASA_DB);
      const up = db.prepare('UPDATE transactions SET memo = ?, amount = ?, cleared = 1 - cleared WHERE id = ?');
      db.transaction(() => ids.forEach((id, i) => up.run(`round ${round} row ${i}`, round * 10_000 + i, id)))();
      db.close();
      await killAt(a, 100 + Math.floor(rand() * 900));
      await killAt(b, 100 + Math.floor(rand() * 900));
    }
    await syncJson(a);
    await syncJson(b);
    await syncJson(a);
    expect(dump(b), `seed ${seed}`).toBe(dump(a));
    expect(sql(a, 'SELECT count(*) AS n FROM casa_changes')).toEqual([{ n: 0 }]);
    const last = sql<{ memo: string }>(b, 'SELECT memo FROM transactions WHERE id = ?', txIds(a, 1)[0]);
    expect(last[0]!.memo, `seed ${seed}`).toBe(`round ${kills - 1} row 0`);
    for (const m of [a, b]) expect(spawnSync('sqlite3', [m.env.CASA_DB, 'PRAGMA integrity_check']).stdout.toString().trim()).toBe('ok');
  }, 120_000);

  it('a device behind the changesets the relay pruned is told to pull (exit 3), and pull catches it up', async () => {
    const { a, devs } = await vault('pruned');
    const [b] = devs as [Machine];
    const [t1, t2] = txIds(a, 2) as [string, string];
    sql(a, 'UPDATE transactions SET memo = ? WHERE id = ?', 'covered by the next snapshot', t1);
    await syncJson(a);
    // Two snapshots that both include it (the oldest retained snapshot's watermark decides), then retention.
    await ok(a, ['snapshot', '--quiet', '--force']);
    const vaultId = JSON.parse((await ok(a, ['status', '--json'])).stdout).vault_id as string;
    await relay.relay.vaults().prepare('DELETE FROM snapshots WHERE vault_id = ? AND changeset_watermark = 0').bind(vaultId).run();
    // Changesets received within the protection window are never pruned: these were received long ago.
    await relay.relay.vaults().prepare('UPDATE changesets SET created_at = 0 WHERE vault_id = ?').bind(vaultId).run();
    await relay.relay.runCron();
    const heads = await relay.relay.vaults().prepare('SELECT pruned_through FROM changeset_state WHERE vault_id = ?').bind(vaultId).first<{ pruned_through: number }>();
    expect(heads?.pruned_through).toBeGreaterThan(0);
    sql(b, 'UPDATE transactions SET memo = ? WHERE id = ?', 'b edits meanwhile', t2);
    const behind = await b.run(['sync']);
    expect(behind.code, behind.stderr).toBe(3);
    expect(behind.stderr).toMatch(/casa pull/);
    await ok(b, ['pull']);
    expect(sql(b, 'SELECT memo FROM transactions WHERE id = ?', t1)).toEqual([{ memo: 'covered by the next snapshot' }]);
    expect(sql(b, 'SELECT memo FROM transactions WHERE id = ?', t2)).toEqual([{ memo: 'b edits meanwhile' }]);
    await syncJson(b);
    await syncJson(a);
    expect(dump(a)).toBe(dump(b));
  });

  it('the relay stores no plaintext of what is synced', async () => {
    const { a } = await vault('plain');
    const marker = `MARKER-${Math.random().toString(36).slice(2)}-never-in-the-relay`;
    sql(a, 'UPDATE transactions SET memo = ? WHERE id = ?', marker, txIds(a, 1)[0]);
    await syncJson(a);
    expect(storageText(relay.relay.dataDir)).not.toContain(marker);
  });

  describe('a relay that tampers with changesets: exit 6, nothing applied', () => {
    async function setup(name: string) {
      const { a, devs } = await vault(name);
      const [b] = devs as [Machine];
      const [t1, t2] = txIds(a, 2) as [string, string];
      sql(a, 'UPDATE transactions SET memo = ? WHERE id = ?', 'first', t1);
      await syncJson(a);
      sql(a, 'UPDATE transactions SET memo = ? WHERE id = ?', 'second', t2);
      await syncJson(a);
      const before = dump(b);
      const vaultId = JSON.parse((await ok(a, ['status', '--json'])).stdout).vault_id as string;
      const rows = (await relay.relay.vaults().prepare('SELECT cursor, r2_key FROM changesets WHERE vault_id = ? ORDER BY cursor').bind(vaultId).all())
        .results as { cursor: number; r2_key: string }[];
      expect(rows.length).toBe(2);
      return { a, b, before, rows };
    }
    const expectRefused = async (b: Machine, before: string) => {
      const r = await b.run(['sync']);
      expect(r.code, r.stderr).toBe(6);
      expect(r.stderr).toMatch(/^casa: error: /m);
      expect(dump(b)).toBe(before);
    };

    it('an altered batch', async () => {
      const { b, before, rows } = await setup('alter');
      // A relay that serves the altered bytes consistently, with their own SHA-256.
      await replaceChangeset(relay.relay, rows[rows.length - 1]!.r2_key);
      await expectRefused(b, before);
    });

    it('a dropped batch', async () => {
      const { b, before, rows } = await setup('drop');
      await relay.relay.vaults().prepare('DELETE FROM changesets WHERE r2_key = ?').bind(rows[0]!.r2_key).run();
      await expectRefused(b, before);
    });

    it('a replayed batch (the first batch served again in place of the second)', async () => {
      const { b, before, rows } = await setup('replay');
      const [first, second] = rows as [{ cursor: number; r2_key: string }, { cursor: number; r2_key: string }];
      const obj = await relay.relay.r2().get(first.r2_key);
      await replaceChangeset(relay.relay, second.r2_key, new Uint8Array(await obj!.arrayBuffer()));
      await expectRefused(b, before);
    });
  });

  it('a revoked device is refused (exit 4)', async () => {
    const { a, devs } = await vault('revoked');
    const [b] = devs as [Machine];
    const id = JSON.parse((await ok(b, ['status', '--json'])).stdout).device_id as string;
    await ok(a, ['devices', 'revoke', id, '--yes']);
    const r = await b.run(['sync']);
    expect(r.code).toBe(4);
  });

  it('refuses a table keyed by integer rowids, naming it, until it is declared snapshot-only', async () => {
    const { a } = await vault('rowid');
    sql(a, 'CREATE TABLE budgets (id INTEGER PRIMARY KEY, month TEXT, amount INTEGER)');
    const r = await a.run(['sync']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/budgets/);
    expect(r.stderr).toMatch(/snapshot-only/);
    writeFileSync(join(a.home, 'sync-tables.json'), JSON.stringify({ tables: { budgets: 'snapshot-only' } }));
    await ok(a, ['sync']);
  });

  it('--watch applies the other device\'s changes as they happen and stops cleanly on Ctrl-C', async () => {
    const { a, devs } = await vault('watch');
    const [b] = devs as [Machine];
    const child = spawn(process.execPath, [CASA, 'sync', '--watch', '--json'], { env: baseEnv(b.env), stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    await new Promise((r) => setTimeout(r, 1500));
    const [t1] = txIds(a, 1) as [string];
    sql(a, 'UPDATE transactions SET memo = ? WHERE id = ?', 'live edit', t1);
    await syncJson(a);
    const deadline = Date.now() + 10_000;
    let seen = false;
    while (!seen && Date.now() < deadline) {
      seen = sql(b, 'SELECT memo FROM transactions WHERE id = ?', t1)[0]?.memo === 'live edit';
      if (!seen) await new Promise((r) => setTimeout(r, 100));
    }
    expect(seen, err).toBe(true);
    // b's own edit goes out without running casa again.
    sql(b, 'UPDATE transactions SET memo = ? WHERE id = ?', 'from the watcher', t1);
    const until = Date.now() + 10_000;
    let back = false;
    while (!back && Date.now() < until) {
      await syncJson(a);
      back = sql(a, 'SELECT memo FROM transactions WHERE id = ?', t1)[0]?.memo === 'from the watcher';
      if (!back) await new Promise((r) => setTimeout(r, 200));
    }
    expect(back, err).toBe(true);
    // One sync per database at a time; pull/restore would replace the file under the watcher.
    for (const args of [['sync'], ['restore', '--yes']]) {
      const busy = await b.run(args);
      expect(busy.code, `${args.join(" ")}: ${busy.stdout} ${busy.stderr}`).toBe(8);
      expect(busy.stderr).toMatch(/`casa sync`\) is using [^#\n]+casaconomy\.db\n/);
    }
    child.kill('SIGINT');
    expect(await exited).toBe(0);
  });
});

beforeAll(() => {
  // The sqlite3 shell is part of the test: it stands for "another program".
  expect(spawnSync('sqlite3', ['-version']).status).toBe(0);
});

describe('casa sync --watch through a relay restart', () => {
  it('keeps going when the relay goes away and comes back on the same address, then applies what it missed', async () => {
    const { startTestRelay } = await import('../helpers/relay.js');
    const { machine, tempDir } = await import('../helpers/cli.js');
    const { createServer } = await import('node:net');
    const port = await new Promise<number>((res) => {
      const srv = createServer().listen(0, '127.0.0.1', () => {
        const p = (srv.address() as { port: number }).port;
        srv.close(() => res(p));
      });
    });
    const data = tempDir('casa-relay-restart-');
    let r = await startTestRelay({ dataDir: data.dir, port });
    const a = machine(r.url, 'restart-a');
    const b = machine(r.url, 'restart-b');
    let child: ReturnType<typeof spawn> | undefined;
    try {
      const phraseFile = join(a.home, 'phrase.txt');
      await ok(a, ['pair', '--new', '--phrase-out', phraseFile]);
      makeDb({ out: a.env.CASA_DB, sizeMb: 1, seed: 4 });
      await ok(a, ['sync']);
      await ok(a, ['snapshot', '--quiet']);
      await ok(b, ['restore', '--yes', '--phrase-file', phraseFile]);
      child = spawn(process.execPath, [CASA, 'sync', '--watch'], { env: baseEnv(b.env), stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr!.on('data', (d) => (err += d));
      const exited = new Promise<number | null>((res) => child!.on('close', (code) => res(code)));
      await new Promise((res) => setTimeout(res, 1500));

      await r.stop();
      await new Promise((res) => setTimeout(res, 1000));
      r = await startTestRelay({ dataDir: data.dir, port });

      const [t1] = txIds(a, 1) as [string];
      sql(a, 'UPDATE transactions SET memo = ? WHERE id = ?', 'after the restart', t1);
      // The restarted relay may take a moment to accept connections on a loaded machine.
      for (let i = 0; ; i++) {
        const res = await a.run(['sync']);
        if (res.code === 0) break;
        expect(res.code === 5 && i < 20, res.stderr).toBe(true);
        await new Promise((w) => setTimeout(w, 500));
      }
      const deadline = Date.now() + 30_000;
      let seen = false;
      while (!seen && Date.now() < deadline) {
        seen = sql(b, 'SELECT memo FROM transactions WHERE id = ?', t1)[0]?.memo === 'after the restart';
        if (!seen) await new Promise((res) => setTimeout(res, 100));
      }
      expect(seen, err).toBe(true);
      expect(err).toMatch(/retrying/);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      child?.kill('SIGKILL');
      await r.stop();
      a.cleanup();
      b.cleanup();
      data.cleanup();
    }
  }, 90_000);
});

