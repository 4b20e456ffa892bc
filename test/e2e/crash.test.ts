/**
 * SIGKILL `casa restore --yes` and `casa pull --force` at random moments:
 * after every kill the database is the old one or the new one, byte for byte,
 * with no -wal beside the new one that SQLite would apply, and it passes
 * `PRAGMA integrity_check`; temps a killed run left are removed by the next,
 * and a final run completes. ~12 kills by default, 60 under SLOW=1; the seed
 * is printed (CASA_CRASH_SEED=… replays a run).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { baseEnv, CASA, useRelay } from '../helpers/cli.js';
import { consistentCopy, editRows, integrityCheck, restoreTemps, sha256, writeRows } from '../helpers/sqlite.js';

const SLOW = process.env.SLOW === '1';
const KILLS = SLOW ? 60 : 12;
const SEED = Number(process.env.CASA_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));

/** mulberry32: a small seeded PRNG, so a failing run can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const relay = useRelay();
type Machine = ReturnType<typeof relay.machine>;

/** Runs the CLI and SIGKILLs it after `killAfterMs` (if it is still running). */
function runKilled(m: Machine, args: string[], killAfterMs: number): Promise<{ code: number | null; signal: string | null; ms: number }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(process.execPath, [CASA, ...args], { env: baseEnv(m.env), stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code !== null && code !== 0) reject(new Error(`casa ${args.join(' ')} exited ${code}: ${stderr}`));
      else resolve({ code, signal, ms: Date.now() - started });
    });
  });
}

let b: Machine;
const snaps: { id: string; bytes: Buffer; sha: string }[] = [];

beforeAll(async () => {
  const a = relay.machine('a');
  const phraseFile = join(a.home, 'phrase.txt');
  expect((await a.run(['pair', '--new', '--phrase-out', phraseFile])).code).toBe(0);
  writeRows(a.env.CASA_DB, 30_000, 'one', 400); // ~16 MB: a few packs, a run of a few hundred ms
  for (const tag of ['two', 'three']) {
    const r = await a.run(['snapshot', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const bytes = await consistentCopy(a.env.CASA_DB);
    snaps.push({ id: JSON.parse(r.stdout).snapshot_id, bytes, sha: sha256(bytes) });
    editRows(a.env.CASA_DB, tag, 5);
  }
  b = relay.machine('b');
  const r = await b.run(['restore', '--phrase-file', phraseFile, '--snapshot', snaps[0]!.id]);
  expect(r.code, r.stderr).toBe(0);
}, 120_000);

describe('a kill at any moment', () => {
  it(`leaves the old database or the new one (${KILLS} kills, seed ${SEED})`, { timeout: SLOW ? 600_000 : 120_000 }, async () => {
    console.log(`crash test seed ${SEED} (replay with CASA_CRASH_SEED=${SEED})`);
    const random = prng(SEED);
    const db = b.env.CASA_DB;
    // How long an uninterrupted run takes: kills land anywhere from start-up to past the end (some runs finish).
    const full = await runKilled(b, ['restore', '--yes', '--snapshot', snaps[1]!.id], 60_000);
    const span = Math.max(300, full.ms * 1.5);
    const outcomes = { old: 0, new: 0 };

    for (let i = 0; i < KILLS; i++) {
      const old = sha256(readFileSync(db));
      // Always a run with work to do: from snapshot 1 a pull (or a restore) to 2, from 2 a restore to 1.
      const on = snaps.findIndex((s) => s.sha === old);
      expect(on, `kill ${i}: the database is one of the snapshots`).toBeGreaterThanOrEqual(0);
      const pull = on === 0 && random() < 0.5;
      const target = snaps[1 - on]!;
      const args = pull ? ['pull', '--force'] : ['restore', '--yes', '--snapshot', target.id];
      const delay = Math.floor(random() * span);
      await runKilled(b, args, delay);

      const now = sha256(readFileSync(db));
      const what = `kill ${i} (${args.join(' ')} after ${delay} ms, seed ${SEED})`;
      expect([old, target.sha], what).toContain(now);
      if (now === target.sha && now !== old) {
        // The new file: nothing beside it that SQLite would apply.
        expect(!existsSync(`${db}-wal`) || statSync(`${db}-wal`).size === 0, what).toBe(true);
        expect(existsSync(`${db}-journal`), what).toBe(false);
      }
      expect(integrityCheck(db), what).toBe('ok');
      outcomes[now === old ? 'old' : 'new']++;
    }
    console.log(`crash outcomes: ${JSON.stringify(outcomes)} (uninterrupted run ${full.ms} ms)`);

    // A final run completes, removes what killed runs left, and lands on the head.
    const last = await b.run(['restore', '--yes', '--snapshot', snaps[1]!.id, '--json']);
    expect(last.code, last.stderr).toBe(0);
    expect(readFileSync(db).equals(snaps[1]!.bytes)).toBe(true);
    expect(restoreTemps(db)).toEqual([]);
    expect(integrityCheck(db)).toBe('ok');
    const pull = await b.run(['pull', '--json']);
    expect(pull.code, pull.stderr).toBe(0);
    expect(JSON.parse(pull.stdout)).toMatchObject({ status: 'up_to_date', seq: 2 });
  });
});
