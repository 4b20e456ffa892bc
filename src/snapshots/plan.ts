/**
 * The planning half of `casa snapshot` (docs/ARCHITECTURE.md §3, docs/FORMAT.md §5): which
 * pages go into new packs, how they are grouped, and the manifest that
 * results. Pure: no fs, network or clock; the engine (src/snapshots/snapshot.ts)
 * feeds in page hashes, the previous manifest and the packs it sealed.
 *
 * A page goes into a new pack when
 * - its keyed hash differs from the local index's, or it lies beyond the
 *   previous page count (changed);
 * - its old pack would keep less than COMPACT_BELOW of its bytes live in the
 *   new manifest (compaction, like `restic prune`: the relay has no keys, so
 *   the client re-packs those pages from its own copy — nothing is
 *   downloaded);
 * - its old pack is gone from the relay (unavailable).
 * Every other page keeps its place (pack and offset) in the previous manifest.
 */
import { PAGE_HASH_BYTES } from './page-hash.js';
import { buildRuns, expandRuns, PACK_TARGET_BYTES, type Manifest, type PackRef } from './manifest.js';

/** An old pack whose live share in the new manifest would fall below this is re-packed. */
export const COMPACT_BELOW = 0.3;

/** 1 for each page whose hash differs from the old one or that the old database did not have. */
export function changedPages(oldHashes: Uint8Array | null, newHashes: Uint8Array): Uint8Array {
  const pageCount = newHashes.length / PAGE_HASH_BYTES;
  const oldCount = oldHashes === null ? 0 : oldHashes.length / PAGE_HASH_BYTES;
  const changed = new Uint8Array(pageCount);
  for (let p = 0; p < pageCount; p++) {
    if (p >= oldCount) {
      changed[p] = 1;
      continue;
    }
    const o = p * PAGE_HASH_BYTES;
    for (let k = 0; k < PAGE_HASH_BYTES; k++) {
      if (oldHashes![o + k] !== newHashes[o + k]) {
        changed[p] = 1;
        break;
      }
    }
  }
  return changed;
}

export function countChanged(changed: Uint8Array): number {
  let n = 0;
  for (let p = 0; p < changed.length; p++) n += changed[p]!;
  return n;
}

export interface PagePlan {
  /** Per page of the new database: the old pack index it stays in, or −1 when it goes into a new pack. */
  keepPack: Int32Array;
  /** Per kept page: its byte offset in that old pack. */
  keepOffset: Float64Array;
  /** The pages to write into new packs, ascending. */
  repack: Uint32Array;
  /** Pages re-packed although unchanged: their old pack fell below COMPACT_BELOW or is gone. */
  compacted: number;
  /** Ids of the old packs the new manifest keeps referencing. */
  keptPacks: string[];
}

export interface PlanOptions {
  compactBelow?: number;
  /** Old packs the relay no longer has: their pages are re-packed. */
  unavailable?: ReadonlySet<string>;
}

/**
 * Decides, for every page of the new database, whether it keeps its place in
 * `old` or goes into a new pack. `old` is null when there is no usable index
 * (first snapshot, another page size): then every page is re-packed.
 */
export function planPages(old: Manifest | null, changed: Uint8Array, opts: PlanOptions = {}): PagePlan {
  const pageCount = changed.length;
  const compactBelow = opts.compactBelow ?? COMPACT_BELOW;
  const keepPack = new Int32Array(pageCount).fill(-1);
  const keepOffset = new Float64Array(pageCount);
  if (old !== null) {
    const { packOf, offsetOf } = expandRuns(old);
    const usable = old.packs.map((p) => !opts.unavailable?.has(p.id));
    const shared = Math.min(pageCount, old.pageCount);
    // Live bytes each old pack would keep if every unchanged page stayed.
    const live = new Float64Array(old.packs.length);
    for (let p = 0; p < shared; p++) {
      if (changed[p] === 0 && usable[packOf[p]!]) live[packOf[p]!]! += old.pageSize;
    }
    const keep = old.packs.map((pack, i) => usable[i]! && live[i]! > 0 && live[i]! >= compactBelow * pack.bytes);
    for (let p = 0; p < shared; p++) {
      if (changed[p] === 0 && keep[packOf[p]!]) {
        keepPack[p] = packOf[p]!;
        keepOffset[p] = offsetOf[p]!;
      }
    }
  }
  let n = 0;
  let compacted = 0;
  for (let p = 0; p < pageCount; p++) if (keepPack[p] === -1) n++;
  const repack = new Uint32Array(n);
  n = 0;
  for (let p = 0; p < pageCount; p++) {
    if (keepPack[p] !== -1) continue;
    repack[n++] = p;
    if (changed[p] === 0) compacted++;
  }
  const used = new Set<number>();
  for (let p = 0; p < pageCount; p++) if (keepPack[p] !== -1) used.add(keepPack[p]!);
  const keptPacks = old === null ? [] : [...used].sort((a, b) => a - b).map((i) => old.packs[i]!.id);
  return { keepPack, keepOffset, repack, compacted, keptPacks };
}

/**
 * Groups pages (ascending) into packs of at most `targetBytes` of plaintext:
 * a pack is closed when the next page would take it past the target
 * (FORMAT.md §5), so every pack but the last holds floor(target / pageSize) pages.
 */
export function groupPages(pages: Uint32Array, pageSize: number, targetBytes = PACK_TARGET_BYTES): Uint32Array[] {
  const per = Math.max(1, Math.floor(targetBytes / pageSize));
  const groups: Uint32Array[] = [];
  for (let i = 0; i < pages.length; i += per) groups.push(pages.subarray(i, Math.min(i + per, pages.length)));
  return groups;
}

/** A pack written by this snapshot: its id, plaintext size, and the pages it holds in order. */
export interface NewPack {
  id: string;
  bytes: number;
  pages: Uint32Array;
}

/** Everything in a manifest but its pack table and runs. */
export type ManifestHeader = Omit<Manifest, 'packs' | 'runs'>;

/**
 * The new manifest: the old packs the plan keeps (in their old order), then
 * the new packs. Two packs with the same id (equal plaintext) are listed
 * once. Throws if some page is covered by neither.
 */
export function assembleManifest(header: ManifestHeader, old: Manifest | null, plan: PagePlan, newPacks: NewPack[]): Manifest {
  const { pageCount, pageSize } = header;
  if (plan.keepPack.length !== pageCount) throw new Error('plan and manifest disagree on the page count');
  if (old !== null && plan.keptPacks.length > 0 && old.pageSize !== pageSize) throw new Error('kept pages of another page size');
  const packs: PackRef[] = [];
  const indexOf = new Map<string, number>();
  const add = (id: string, bytes: number): number => {
    let i = indexOf.get(id);
    if (i === undefined) {
      i = packs.length;
      packs.push({ id, bytes });
      indexOf.set(id, i);
    } else if (packs[i]!.bytes !== bytes) {
      throw new Error(`pack ${id.slice(0, 12)} listed with two sizes`);
    }
    return i;
  };
  const oldToNew = new Map<number, number>();
  if (old !== null) {
    const kept = new Set(plan.keptPacks);
    old.packs.forEach((p, i) => {
      if (kept.has(p.id)) oldToNew.set(i, add(p.id, p.bytes));
    });
  }
  const packOf = new Int32Array(pageCount).fill(-1);
  const offsetOf = new Float64Array(pageCount);
  for (let p = 0; p < pageCount; p++) {
    const k = plan.keepPack[p]!;
    if (k === -1) continue;
    packOf[p] = oldToNew.get(k)!;
    offsetOf[p] = plan.keepOffset[p]!;
  }
  for (const np of newPacks) {
    if (np.bytes !== np.pages.length * pageSize) throw new Error(`pack ${np.id.slice(0, 12)} has the wrong size`);
    const i = add(np.id, np.bytes);
    np.pages.forEach((page, k) => {
      if (page >= pageCount) throw new Error(`pack ${np.id.slice(0, 12)} holds page ${page}, beyond the database`);
      packOf[page] = i;
      offsetOf[page] = k * pageSize;
    });
  }
  for (let p = 0; p < pageCount; p++) if (packOf[p] === -1) throw new Error(`page ${p} is in no pack`);
  // Drop packs no run uses (a new pack whose every page a later pack re-covered), keeping the order.
  const usedIdx = new Uint8Array(packs.length);
  for (let p = 0; p < pageCount; p++) usedIdx[packOf[p]!] = 1;
  if (usedIdx.includes(0)) {
    const remap = new Int32Array(packs.length).fill(-1);
    const kept: PackRef[] = [];
    packs.forEach((pk, i) => {
      if (usedIdx[i]) {
        remap[i] = kept.length;
        kept.push(pk);
      }
    });
    for (let p = 0; p < pageCount; p++) packOf[p] = remap[packOf[p]!]!;
    packs.splice(0, packs.length, ...kept);
  }
  return { ...header, packs, runs: buildRuns(packOf, offsetOf, pageSize) };
}

/** Sum of the stored (ciphertext) sizes of a manifest's packs; a size not known falls back to the plaintext size. */
export function storedBytes(m: Pick<Manifest, 'packs'>, sizes: ReadonlyMap<string, number>): number {
  let n = 0;
  for (const p of m.packs) n += sizes.get(p.id) ?? p.bytes;
  return n;
}
