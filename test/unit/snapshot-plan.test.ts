/**
 * The pure half of `casa snapshot` (src/snapshots/plan.ts): page diff,
 * compaction and pack selection, grouping, and manifest assembly. The
 * property test chains snapshots of a changing "database" through a fake pack
 * store and restores each manifest: it must give back the database exactly,
 * keep unchanged pages where they were, and never keep a pack below the
 * live-share threshold. Few cases by default, many under SLOW=1; a failure
 * prints its seed.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { encodeManifest, expandRuns, liveBytes, validateManifest, type Manifest } from '../../src/snapshots/manifest.js';
import { hashPages, PAGE_HASH_BYTES } from '../../src/snapshots/page-hash.js';
import {
  assembleManifest,
  changedPages,
  COMPACT_BELOW,
  countChanged,
  groupPages,
  planPages,
  storedBytes,
  type ManifestHeader,
  type NewPack,
} from '../../src/snapshots/plan.js';

const RUNS = process.env.SLOW === '1' ? 2000 : 150;

function header(pageSize: number, pageCount: number, seq = 1): ManifestHeader {
  return {
    format: 1,
    vaultId: 'ab'.repeat(16),
    snapshotId: seq.toString(16).padStart(32, '0'),
    seq,
    parentId: seq === 1 ? null : (seq - 1).toString(16).padStart(32, '0'),
    parentSeq: seq - 1,
    deviceId: 'cd'.repeat(8),
    time: 1_795_000_000_000,
    pageSize,
    pageCount,
    dbBytes: pageSize * pageCount,
    pagesSha256: '00'.repeat(32),
    schemaVersion: 1,
    userVersion: 0,
    changesetWatermark: 0,
  };
}

/** A pack store keyed by content, as the relay's is (pack id = hash of the plaintext). */
class FakeStore {
  packs = new Map<string, Uint8Array>();
  put(plaintext: Uint8Array): string {
    const id = createHash('sha256').update(plaintext).digest('hex');
    this.packs.set(id, plaintext);
    return id;
  }
  restore(m: Manifest): Uint8Array {
    const out = new Uint8Array(m.dbBytes);
    for (let i = 0; i < m.runs.length; i += 4) {
      const [first, count, pack, off] = m.runs.slice(i, i + 4) as [number, number, number, number];
      const data = this.packs.get(m.packs[pack]!.id)!;
      out.set(data.subarray(off, off + count * m.pageSize), first * m.pageSize);
    }
    return out;
  }
}

function sealAll(store: FakeStore, db: Uint8Array, pageSize: number, pages: Uint32Array, target: number): NewPack[] {
  return groupPages(pages, pageSize, target).map((g) => {
    const plain = new Uint8Array(g.length * pageSize);
    g.forEach((p, k) => plain.set(db.subarray(p * pageSize, (p + 1) * pageSize), k * pageSize));
    return { id: store.put(plain), bytes: plain.length, pages: g };
  });
}

function pagesOf(n: number, pageSize: number, fill: (p: number) => number): Uint8Array {
  const db = new Uint8Array(n * pageSize);
  for (let p = 0; p < n; p++) db.fill(fill(p), p * pageSize, (p + 1) * pageSize);
  return db;
}

describe('changedPages', () => {
  const ps = 512;
  it('flags pages whose hash differs and pages beyond the old count', () => {
    const a = pagesOf(6, ps, (p) => p);
    const b = pagesOf(8, ps, (p) => (p === 2 ? 99 : p));
    const c = changedPages(hashPages(a, ps), hashPages(b, ps));
    expect([...c]).toEqual([0, 0, 1, 0, 0, 0, 1, 1]);
    expect(countChanged(c)).toBe(3);
  });
  it('without an index every page is changed; a shrunk database keeps its unchanged pages', () => {
    const a = pagesOf(4, ps, (p) => p);
    expect([...changedPages(null, hashPages(a, ps))]).toEqual([1, 1, 1, 1]);
    expect([...changedPages(hashPages(a, ps), hashPages(a.subarray(0, 2 * ps), ps))]).toEqual([0, 0]);
    expect(changedPages(hashPages(a, ps), new Uint8Array(0))).toHaveLength(0);
    expect(PAGE_HASH_BYTES).toBe(32);
  });
});

describe('groupPages', () => {
  it('closes a pack when the next page would pass the target (8 MiB = 2048 pages of 4 KiB)', () => {
    const pages = Uint32Array.from({ length: 5000 }, (_, i) => i * 2);
    const g = groupPages(pages, 4096);
    expect(g.map((x) => x.length)).toEqual([2048, 2048, 904]);
    expect([...g[1]!.subarray(0, 2)]).toEqual([4096, 4098]);
    expect(groupPages(pages, 65536).every((x) => x.length <= 128)).toBe(true);
    expect(groupPages(new Uint32Array(0), 4096)).toEqual([]);
    expect(groupPages(Uint32Array.of(1, 2, 3), 4096, 100).map((x) => x.length)).toEqual([1, 1, 1]);
  });
});

describe('planPages and assembleManifest', () => {
  const ps = 512;
  const target = 10 * ps; // packs of 10 pages

  function first(db: Uint8Array, store: FakeStore) {
    const n = db.length / ps;
    const plan = planPages(null, changedPages(null, hashPages(db, ps)));
    const m = assembleManifest(header(ps, n), null, plan, sealAll(store, db, ps, plan.repack, target));
    return { m, hashes: hashPages(db, ps) };
  }

  it('a first snapshot packs every page in order', () => {
    const store = new FakeStore();
    const db = pagesOf(25, ps, (p) => p);
    const { m } = first(db, store);
    expect(m.packs.map((p) => p.bytes)).toEqual([10 * ps, 10 * ps, 5 * ps]);
    expect(m.runs).toEqual([0, 10, 0, 0, 10, 10, 1, 0, 20, 5, 2, 0]);
    expect(store.restore(m)).toEqual(db);
    expect(() => encodeManifest(m)).not.toThrow();
  });

  it('keeps unchanged pages in their packs and puts changed ones in new packs', () => {
    const store = new FakeStore();
    const db0 = pagesOf(30, ps, (p) => p);
    const { m: m0, hashes } = first(db0, store);
    const db1 = pagesOf(32, ps, (p) => (p === 3 || p === 17 ? 200 + p : p));
    const changed = changedPages(hashes, hashPages(db1, ps));
    const plan = planPages(m0, changed);
    expect([...plan.repack]).toEqual([3, 17, 30, 31]);
    expect(plan.compacted).toBe(0);
    expect(plan.keptPacks).toEqual(m0.packs.map((p) => p.id));
    const m1 = assembleManifest(header(ps, 32, 2), m0, plan, sealAll(store, db1, ps, plan.repack, target));
    expect(m1.packs.slice(0, 3)).toEqual(m0.packs);
    expect(m1.packs).toHaveLength(4);
    expect(store.restore(m1)).toEqual(db1);
  });

  it(`re-packs the live pages of a pack that would keep less than ${COMPACT_BELOW * 100}%`, () => {
    const store = new FakeStore();
    const db0 = pagesOf(20, ps, (p) => p);
    const { m: m0, hashes } = first(db0, store);
    // Pack 0 (pages 0–9): 8 change → 2 of 10 live (20%): re-packed. Pack 1: 7 change → 3 of 10 (30%): kept.
    const db1 = pagesOf(20, ps, (p) => ((p >= 2 && p < 10) || (p >= 13 && p < 20) ? 100 + p : p));
    const plan = planPages(m0, changedPages(hashes, hashPages(db1, ps)));
    expect(plan.keptPacks).toEqual([m0.packs[1]!.id]);
    expect(plan.compacted).toBe(2);
    expect([...plan.repack]).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 18, 19]);
    const m1 = assembleManifest(header(ps, 20, 2), m0, plan, sealAll(store, db1, ps, plan.repack, target));
    expect(store.restore(m1)).toEqual(db1);
    expect(m1.packs.map((p) => p.id)).not.toContain(m0.packs[0]!.id);
  });

  it('re-packs the pages of old packs the relay no longer has, and drops packs nothing uses', () => {
    const store = new FakeStore();
    const db0 = pagesOf(30, ps, (p) => p);
    const { m: m0, hashes } = first(db0, store);
    const h1 = hashPages(db0.subarray(0, 12 * ps), ps); // shrunk to 12 pages: pack 2 unused, pack 1 has 2 of 10 live
    const plan = planPages(m0, changedPages(hashes, h1), { unavailable: new Set([m0.packs[0]!.id]) });
    expect(plan.keptPacks).toEqual([]);
    expect(plan.compacted).toBe(12);
    const m1 = assembleManifest(header(ps, 12, 2), m0, plan, sealAll(store, db0, ps, plan.repack, target));
    // Pages 0–9 re-packed unchanged: the same plaintext, so the same id as the lost pack (re-uploaded).
    expect(m1.packs.map((p) => p.id)).toEqual([m0.packs[0]!.id, expect.any(String)]);
    expect(store.restore(m1)).toEqual(db0.subarray(0, 12 * ps));
  });

  it('lists two packs with equal contents once', () => {
    const store = new FakeStore();
    const db = pagesOf(20, ps, () => 0); // every page equal: both packs have one id
    const { m } = first(db, store);
    expect(m.packs).toHaveLength(1);
    expect(m.runs).toEqual([0, 10, 0, 0, 10, 10, 0, 0]);
    expect(store.restore(m)).toEqual(db);
  });

  it('refuses a plan that leaves a page in no pack', () => {
    const plan = planPages(null, new Uint8Array(3).fill(1));
    expect(() => assembleManifest(header(ps, 3), null, plan, [])).toThrow(/page 0 is in no pack/);
  });

  it('storedBytes sums known stored sizes, falling back to the plaintext size', () => {
    const m = { packs: [{ id: 'a'.repeat(64), bytes: 100 }, { id: 'b'.repeat(64), bytes: 50 }] };
    expect(storedBytes(m, new Map([['a'.repeat(64), 30]]))).toBe(80);
  });

  it('chained snapshots restore exactly, keep pages in place, and respect the threshold (property)', () => {
    const step = fc.record({
      grow: fc.integer({ min: -8, max: 12 }),
      edits: fc.array(fc.integer({ min: 0, max: 200 }), { maxLength: 25 }),
      lost: fc.array(fc.nat(), { maxLength: 2 }),
    });
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 60 }), fc.array(step, { minLength: 1, maxLength: 6 }), (n0, steps) => {
        const store = new FakeStore();
        let db = pagesOf(n0, ps, (p) => p % 251);
        let { m, hashes } = first(db, store);
        let gen = 1;
        for (const s of steps) {
          gen++;
          const n = Math.max(1, db.length / ps + s.grow);
          const next = new Uint8Array(n * ps);
          next.set(db.subarray(0, Math.min(db.length, next.length)));
          for (let p = db.length / ps; p < n; p++) next.fill((p * 7 + gen) % 251, p * ps, (p + 1) * ps);
          for (const e of s.edits) if (e < n) next[e * ps + (gen % ps)] = (next[e * ps + (gen % ps)]! + 1) % 256;
          const nh = hashPages(next, ps);
          const changed = changedPages(hashes, nh);
          const unavailable = new Set(s.lost.map((i) => m.packs[i % m.packs.length]!.id));
          const plan = planPages(m, changed, { unavailable });
          const m2 = assembleManifest(header(ps, n, gen), m, plan, sealAll(store, next, ps, plan.repack, target));
          validateManifest(m2);
          if (!Buffer.from(store.restore(m2)).equals(Buffer.from(next))) throw new Error('restore differs');
          // Unchanged pages of kept packs stay exactly where they were.
          const before = expandRuns(m);
          const after = expandRuns(m2);
          for (let p = 0; p < n; p++) {
            if (plan.keepPack[p] === -1) continue;
            if (changed[p] !== 0) throw new Error(`changed page ${p} kept`);
            if (m2.packs[after.packOf[p]!]!.id !== m.packs[before.packOf[p]!]!.id || after.offsetOf[p] !== before.offsetOf[p]) {
              throw new Error(`kept page ${p} moved`);
            }
          }
          // No kept old pack falls below the threshold; no lost pack is kept.
          const live = liveBytes(m2);
          m2.packs.forEach((pk, i) => {
            if (plan.keptPacks.includes(pk.id) && live[i]! / pk.bytes < COMPACT_BELOW) throw new Error(`pack ${i} kept below the threshold`);
          });
          for (const id of unavailable) if (plan.keptPacks.includes(id)) throw new Error('a lost pack was kept');
          db = next;
          m = m2;
          hashes = nh;
        }
      }),
      { numRuns: RUNS },
    );
  });
});
