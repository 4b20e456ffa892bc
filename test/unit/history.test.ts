// The history index (src/changesets/history.ts, docs/MERGE.md §9): batches
// checked and indexed incrementally, pruning followed, a rollback or a
// broken chain refused with nothing written; the old value of each field in
// `casa log`; the changes `restore --at` merges; and KEY and TIME as a user
// types them (src/commands/history.ts keyCandidates, src/ui/format.ts parseMoment).
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { vaultKeysFromRoot } from '../../src/crypto/kdf.js';
import { sealBatch } from '../../src/changesets/batch.js';
import type { Change } from '../../src/changesets/change.js';
import { encodeChanges } from '../../src/changesets/change-codec.js';
import { changesAfter, historyWindow, logEntries, openHistory, rowHistory, updateHistory } from '../../src/changesets/history.js';
import { formatHlc } from '../../src/changesets/hlc.js';
import { encodePk } from '../../src/changesets/pk-text.js';
import type { ChangesetApi, PulledChangeset, PullResult } from '../../src/relay/changesets.js';
import { formatValue, jsonValue, keyCandidates, windowText } from '../../src/commands/indexed.js';
import { checkSince } from '../../src/commands/log.js';
import { CasaError } from '../../src/errors.js';
import { parseMoment } from '../../src/ui/format.js';

const keys = vaultKeysFromRoot(new Uint8Array(32).fill(31));
const A = '0123456789abcdef';
const B = 'fedcba9876543210';
const random = (n: number) => new Uint8Array(randomBytes(n));
const hlc = (wall: number, dev: string, counter = 0) => formatHlc({ wall, counter, deviceId: dev });
const pk = (id: string) => encodePk([id]);

/** A fake relay: each device's batches chained, numbered by cursor in push order; pages of `limit`. */
class FakeRelay {
  batches: PulledChangeset[] = [];
  prunedThrough = 0;
  private last: Record<string, { seq: number; hash: string }> = {};

  push(device: string, changes: Change[]): void {
    const prev = this.last[device] ?? { seq: 0, hash: '' };
    const b = sealBatch(keys, { deviceId: device, seq: prev.seq + 1, prev: prev.hash, schema: 'fp', count: changes.length, time: 1000 * (this.batches.length + 1) }, encodeChanges(changes), random);
    this.last[device] = { seq: prev.seq + 1, hash: b.hash };
    this.batches.push({ cursor: this.batches.length + 1, deviceId: device, seq: prev.seq + 1, sha256: b.hash, bytes: b.bytes });
  }

  get api(): ChangesetApi {
    return {
      pull: async (after: number, opts: { limit?: number } = {}): Promise<PullResult> => {
        const from = Math.max(after, this.prunedThrough);
        const list = this.batches.filter((b) => b.cursor > from).slice(0, opts.limit ?? 200);
        const head = this.batches.length;
        const lastSent = list.length ? list[list.length - 1]!.cursor : from;
        return { changesets: list, head, prunedThrough: this.prunedThrough, more: lastSent < head };
      },
    } as unknown as ChangesetApi;
  }
}

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function index(vaultId = keys.vaultId) {
  const dir = mkdtempSync(join(tmpdir(), 'casa-history-'));
  dirs.push(dir);
  return { path: join(dir, 'history.db'), db: openHistory(join(dir, 'history.db'), vaultId) };
}
const env = (relay: FakeRelay) => ({ keys, api: relay.api, server: 'http://relay.test', signal: new AbortController().signal });

/** insert p1 on A (t=10), name on B (t=20), delete on B (t=30), insert again on A (t=40). */
function story(relay: FakeRelay): void {
  relay.push(A, [
    { tbl: 'payees', pk: pk('p1'), col: 'name', op: 'i', val: 'shop', hlc: hlc(10, A) },
    { tbl: 'payees', pk: pk('p1'), col: 'notes', op: 'i', val: null, hlc: hlc(10, A) },
  ]);
  relay.push(B, [{ tbl: 'payees', pk: pk('p1'), col: 'name', op: 'u', val: 'Shop Ltd', hlc: hlc(20, B) }]);
  relay.push(B, [{ tbl: 'payees', pk: pk('p1'), col: null, op: 'd', val: null, hlc: hlc(30, B) }]);
  relay.push(A, [
    { tbl: 'payees', pk: pk('p1'), col: 'name', op: 'i', val: 'again', hlc: hlc(40, A) },
    { tbl: 'payees', pk: pk('p1'), col: 'notes', op: 'i', val: 7n, hlc: hlc(40, A) },
    { tbl: 'accounts', pk: pk('a1'), col: 'balance', op: 'u', val: 1.5, hlc: hlc(41, A) },
  ]);
}

describe('the history index', () => {
  it('indexes every batch once, incrementally, 0600', async () => {
    const relay = new FakeRelay();
    story(relay);
    const { db, path } = index();
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(await updateHistory(db, env(relay))).toMatchObject({ batches: 4, changes: 7, head: 4 });
    expect(await updateHistory(db, env(relay))).toMatchObject({ batches: 0, changes: 0 });
    relay.push(B, [{ tbl: 'payees', pk: pk('p1'), col: 'name', op: 'u', val: 'last', hlc: hlc(50, B) }]);
    expect(await updateHistory(db, env(relay))).toMatchObject({ batches: 1, changes: 1, head: 5 });
    const h = rowHistory(db, 'payees', pk('p1'), 'name');
    expect(h.map((e) => [e.device, e.op, e.val])).toEqual([
      [A, 'i', 'shop'],
      [B, 'u', 'Shop Ltd'],
      [B, 'd', null],
      [A, 'i', 'again'],
      [B, 'u', 'last'],
    ]);
    expect(rowHistory(db, 'payees', pk('p1'), null).find((e) => e.col === 'notes' && e.wall === 40)?.val).toBe(7n);
    expect(historyWindow(db)).toMatchObject({ prunedThrough: 0, start: null, oldest: 10, head: 5 });
    db.close();
  });

  it('pages through more batches than one answer holds', async () => {
    const relay = new FakeRelay();
    for (let i = 0; i < 1203; i++) relay.push(i % 2 ? A : B, [{ tbl: 't', pk: pk(`r${i}`), col: 'c', op: 'u', val: BigInt(i), hlc: hlc(100 + i, i % 2 ? A : B) }]);
    const { db } = index();
    expect(await updateHistory(db, env(relay))).toMatchObject({ batches: 1203, changes: 1203 });
    db.close();
  });

  it('gives each field its value before the change: the previous one, absent after a delete or before an insert, unknown before the window', async () => {
    const relay = new FakeRelay();
    relay.push(B, [{ tbl: 'payees', pk: pk('p0'), col: 'name', op: 'u', val: 'edited', hlc: hlc(5, B) }]);
    story(relay);
    const { db } = index();
    await updateHistory(db, env(relay));
    const log = logEntries(db, { table: 'payees' });
    expect(log.map((e) => [e.pk, e.wall, e.op, e.col, e.before])).toEqual([
      [pk('p1'), 40, 'i', 'name', { kind: 'absent' }],
      [pk('p1'), 40, 'i', 'notes', { kind: 'absent' }],
      [pk('p1'), 30, 'd', null, { kind: 'value', value: null }],
      [pk('p1'), 20, 'u', 'name', { kind: 'value', value: 'shop' }],
      [pk('p1'), 10, 'i', 'name', { kind: 'absent' }],
      [pk('p1'), 10, 'i', 'notes', { kind: 'absent' }],
      [pk('p0'), 5, 'u', 'name', { kind: 'unknown' }],
    ]);
    expect(logEntries(db, { since: 20, devices: [B] }).map((e) => e.wall)).toEqual([30, 20]);
    expect(logEntries(db, { limit: 2 }).map((e) => e.col)).toEqual(['balance', 'name']);
    db.close();
  });

  it('gives restore --at the changes after a watermark written up to a time', async () => {
    const relay = new FakeRelay();
    story(relay);
    const { db } = index();
    await updateHistory(db, env(relay));
    const flat = (after: number, upto: number, limit = 100) => [...changesAfter(db, after, upto, limit)].flat().map((c) => `${c.op}${c.col ?? ''}@${parseInt(c.hlc.slice(0, 12), 16)}`);
    expect(flat(1, 30)).toEqual(['uname@20', 'd@30']);
    expect(flat(0, 1e12, 2)).toHaveLength(7);
    expect([...changesAfter(db, 0, 1e12, 2)].map((c) => c.length)).toEqual([2, 2, 2, 1]);
    db.close();
  });

  it('follows the relay pruning: rows at or below prunedThrough leave; pruned past the index, it starts over there', async () => {
    const relay = new FakeRelay();
    story(relay);
    const { db } = index();
    await updateHistory(db, env(relay));
    relay.prunedThrough = 2;
    await updateHistory(db, env(relay));
    expect(rowHistory(db, 'payees', pk('p1'), 'name').map((e) => e.wall)).toEqual([30, 40]);
    expect(historyWindow(db)).toMatchObject({ prunedThrough: 2, start: 3000 });
    // A second index that never saw the first batches starts after the pruned ones, its chains anywhere.
    const fresh = index();
    await updateHistory(fresh.db, env(relay));
    expect(logEntries(fresh.db, {}).map((e) => e.wall)).toEqual([41, 40, 40, 30]);
    fresh.db.close();
    db.close();
  });

  it('refuses a rollback and a broken chain (exit 6), writing nothing of the page', async () => {
    const relay = new FakeRelay();
    story(relay);
    const { db } = index();
    await updateHistory(db, env(relay));
    const lost = new FakeRelay();
    lost.push(A, [{ tbl: 't', pk: pk('x'), col: 'c', op: 'u', val: 1n, hlc: hlc(1, A) }]);
    const rollback = await updateHistory(db, env(lost)).catch((e: unknown) => e);
    expect(rollback).toBeInstanceOf(CasaError);
    expect((rollback as CasaError).code).toBe('rollback');
    expect((rollback as CasaError).exitCode).toBe(6);

    // A fifth batch on A's chain served with A's second batch's bytes replaced by a fork of it.
    const forked = new FakeRelay();
    story(forked);
    forked.push(A, [{ tbl: 't', pk: pk('y'), col: 'c', op: 'u', val: 2n, hlc: hlc(60, A) }]);
    const other = new FakeRelay();
    other.push(A, [{ tbl: 't', pk: pk('z'), col: 'c', op: 'u', val: 3n, hlc: hlc(61, A) }]);
    other.push(A, [{ tbl: 't', pk: pk('z'), col: 'c', op: 'u', val: 4n, hlc: hlc(62, A) }]);
    const odd = other.batches[1]!;
    forked.batches[4] = { ...odd, cursor: 5 };
    const before = logEntries(db, {}).length;
    const err = await updateHistory(db, env(forked)).catch((e: unknown) => e);
    expect((err as CasaError).exitCode).toBe(6);
    expect(logEntries(db, {}).length).toBe(before);
    db.close();
  });

  it("is wiped when it is opened for another vault", async () => {
    const relay = new FakeRelay();
    story(relay);
    const { db, path } = index();
    await updateHistory(db, env(relay));
    db.close();
    const again = openHistory(path, 'f'.repeat(32));
    expect(logEntries(again, {})).toEqual([]);
    again.close();
  });
});

describe('KEY as the user types it', () => {
  it('a single value is text, and also the number it reads as', () => {
    expect(keyCandidates('p1')).toEqual(['["p1"]']);
    expect(keyCandidates('42')).toEqual(['["42"]', '[42]']);
    expect(keyCandidates('-9223372036854775808')).toEqual(['["-9223372036854775808"]', '[-9223372036854775808]']);
    expect(keyCandidates('1.5')).toEqual(['["1.5"]', '[{"r":"1.5"}]']);
  });
  it('a JSON array is a composite key; canonical pk text as log prints it is taken as it is', () => {
    expect(keyCandidates('["t1", "food"]')).toEqual(['["t1","food"]']);
    expect(keyCandidates('[ "a", 2, null, {"x": "00ff"}, 2.5 ]')).toEqual(['["a",2,null,{"x":"00ff"},{"r":"2.5"}]']);
    expect(keyCandidates('[9223372036854775807]')).toEqual(['[9223372036854775807]']);
  });
  it('a malformed array is a usage error (exit 2)', () => {
    for (const bad of ['[oops', '[]', '[true]', '[{"y": 1}]']) {
      let e: unknown;
      try {
        keyCandidates(bad);
      } catch (err) {
        e = err;
      }
      expect(e, bad).toBeInstanceOf(CasaError);
      expect((e as CasaError).exitCode, bad).toBe(2);
    }
  });
});

describe('TIME as the user types it (parseMoment)', () => {
  const now = Date.parse('2026-12-06T12:00:00Z');
  it('a duration is that long ago', () => {
    expect(parseMoment('3h', now)).toBe(now - 3 * 3_600_000);
    expect(parseMoment('1d', now)).toBe(now - 86_400_000);
    expect(parseMoment('45s', now)).toBe(now - 45_000);
  });
  it('ISO 8601: a date is midnight UTC; a time without a zone is UTC; offsets and milliseconds', () => {
    expect(parseMoment('2026-12-01', now)).toBe(Date.parse('2026-12-01T00:00:00Z'));
    expect(parseMoment('2026-12-01T10:04', now)).toBe(Date.parse('2026-12-01T10:04:00Z'));
    expect(parseMoment('2026-12-01T10:04:05.250Z', now)).toBe(Date.parse('2026-12-01T10:04:05.250Z'));
    expect(parseMoment('2026-12-01T10:04:05+0100', now)).toBe(Date.parse('2026-12-01T09:04:05Z'));
    expect(parseMoment('2026-12-01 10:04:05-02:00', now)).toBe(Date.parse('2026-12-01T12:04:05Z'));
  });
  it('anything else is null', () => {
    for (const bad of ['', 'yesterday', '3 h', '2026-13-01', '2026-12-01T25:00', '-1d', '1w']) expect(parseMoment(bad, now), bad).toBeNull();
  });
});

describe('values for people and for --json', () => {
  it('people: NULL, integers, reals with their point, text quoted, blobs as x\'hex\'', () => {
    expect([null, 42n, -0.5, 3, 'a "b"', new Uint8Array([0, 255])].map((v) => formatValue(v))).toEqual(['NULL', '42', '-0.5', '3.0', '"a \\"b\\""', "x'00ff'"]);
  });
  it('--json: lossless, an integer beyond 2^53, a whole or odd real and a blob spelled out', () => {
    expect([null, 't', 42n, 2n ** 60n, 1.25, 3, -0, Infinity, new Uint8Array([1])].map((v) => jsonValue(v))).toEqual([
      null,
      't',
      42,
      { i: '1152921504606846976' },
      1.25,
      { r: '3' },
      { r: '-0' },
      { r: 'Infinity' },
      { x: '01' },
    ]);
  });
});

describe('--since against the window', () => {
  const now = Date.parse('2026-12-06T12:00:00Z');
  const pruned = { window: { prunedThrough: 9, head: 20, start: Date.parse('2026-11-06T12:00:00Z'), oldest: Date.parse('2026-11-07T00:00:00Z') }, now };
  const whole = { window: { prunedThrough: 0, head: 20, start: null, oldest: Date.parse('2026-12-01T00:00:00Z') }, now };
  const refused = (f: () => unknown): string => {
    try {
      f();
    } catch (err) {
      expect((err as CasaError).exitCode).toBe(2);
      return (err as Error).message;
    }
    throw new Error('expected a refusal');
  };
  it('takes a time within the window, and any past time while nothing was pruned', () => {
    expect(checkSince(now - 1000, pruned)).toBe(now - 1000);
    expect(checkSince(Date.parse('2020-01-01'), whole)).toBe(Date.parse('2020-01-01'));
  });
  it('refuses one before the window once the relay pruned, or in the future, naming the bounds', () => {
    expect(refused(() => checkSince(Date.parse('2026-11-01T00:00:00Z'), pruned))).toBe(
      '--since 2026-11-01T00:00:00.000Z is before the history window, 2026-11-06T12:00:00.000Z to 2026-12-06T12:00:00.000Z: the relay pruned older changes',
    );
    expect(refused(() => checkSince(now + 60_000, whole))).toBe('--since 2026-12-06T12:01:00.000Z is in the future; the history window is 2026-12-01T00:00:00.000Z to 2026-12-06T12:00:00.000Z');
    expect(windowText({ ...whole.window, oldest: null }, now)).toBe('nothing yet, up to 2026-12-06T12:00:00.000Z');
  });
});
