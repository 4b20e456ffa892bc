/**
 * The snapshot engine (docs/ARCHITECTURE.md §3, docs/FORMAT.md §5, docs/RELAY-API.md
 * "Snapshots"): a consistent view (src/snapshots/db-copy.ts) → page diff against the local index → seal
 * changed pages into packs on the worker pool, pipelined with uploads →
 * manifest → compare-and-swap commit on the vault's head → new local index.
 * All I/O comes in through SnapshotEnv, so tests drive it with a real relay
 * or a stand-in; the decisions live in src/snapshots/plan.ts.
 *
 * Invariants:
 * - memory stays bounded: at most `pool.size + 1` packs are between "sealing"
 *   and "uploaded"; pages are read from the copy by the workers, so the
 *   database is never held in memory whole;
 * - a pack the relay already has is not uploaded again (a snapshot retried
 *   after a kill reuses what the killed run uploaded);
 * - nothing is committed unless every pack the manifest names is on the
 *   relay (the relay re-checks at commit: `missing_packs`);
 * - a head older than the highest seq this device has seen is a rollback
 *   (IntegrityError, exit 6) and nothing is uploaded or committed;
 * - the temporary copy is removed on every path, success or failure.
 */
import { bytesToHex } from '../crypto/bytes.js';
import type { VaultKeys } from '../crypto/kdf.js';
import { CancelledError, FailureError } from '../errors.js';
import { noteSeenSeq } from '../state.js';
import { hashDatabase, openDatabaseView, scratchDir, type DbCopy } from './db-copy.js';
import { PAGE_HASH_BYTES, pagesDigest } from './page-hash.js';
import { equalBytes } from '../crypto/bytes.js';
import { sealManifest } from './manifest.js';
import { collectGarbage } from '../gc.js';
import { readIndex, statDatabase, writeIndex, type PageIndex } from './page-index.js';
import type { WorkerPool } from './pool.js';
import {
  assembleManifest,
  changedPages,
  countChanged,
  groupPages,
  planPages,
  storedBytes,
  type NewPack,
  type PagePlan,
} from './plan.js';
import { checkNotRolledBack, type SnapshotApi, type SnapshotInfo } from '../relay/snapshots.js';

/** Commit attempts before giving up on a head that keeps moving. */
export const COMMIT_ATTEMPTS = 10;
const SALT_BYTES = 32;

export type SnapshotPhase = 'copy' | 'read' | 'upload';

export interface SnapshotEnv {
  home: string;
  /** Absolute path of the database (it keys the local index). */
  dbPath: string;
  keys: VaultKeys;
  deviceId: string;
  /** The highest snapshot seq this device has seen (state.json). */
  highestSeq: number;
  api: Pick<SnapshotApi, 'missingPacks' | 'putPack' | 'putManifest' | 'commit' | 'list' | 'head'>;
  /** For messages: the relay's URL. */
  server: string;
  /** Hashes pages and seals the packs of an incremental snapshot (few packs: the main thread is enough). */
  pool: WorkerPool;
  /**
   * A pool for a snapshot that seals every page (no usable index): started
   * only then, closed at the end. Without it, `pool` seals everything.
   */
  fullUploadPool?: () => WorkerPool;
  random: (n: number) => Uint8Array;
  now: () => number;
  signal: AbortSignal;
  /** Progress: `phase` starts with `total` bytes; then `add` bytes at a time. */
  onPhase?: (phase: SnapshotPhase, total: number) => void;
  onProgress?: (bytes: number) => void;
  sleep?: (ms: number) => Promise<void>;
  /** Where a working copy goes when one is needed (CASA_TMPDIR); default: see scratchDir. */
  tmpDir?: string;
  /** Timing marks for `CASA_TRACE=1` (phase names only: never data). */
  trace?: (label: string) => void;
  /** The vault-wide changeset cursor the database includes (docs/FORMAT.md §5 manifest). */
  changesetWatermark?: number;
}

export interface SnapshotOptions {
  /** Commit a new snapshot even when the database is unchanged. */
  force: boolean;
}

export interface SnapshotResult {
  status: 'committed' | 'up_to_date';
  snapshotId: string;
  seq: number;
  dbBytes: number;
  /** Pages whose content changed since the previous snapshot (or all, without one). */
  changedPages: number;
  /** Unchanged pages re-packed because their old pack fell below the live-share threshold or was gone. */
  compactedPages: number;
  totalPages: number;
  /** Bytes and count of the pack objects this run uploaded. */
  uploadedBytes: number;
  uploadedObjects: number;
  /** Packs the snapshot references that this run did not upload. */
  reusedPacks: number;
  packCount: number;
  /** Sum of the stored sizes of the snapshot's packs. */
  storedBytes: number;
  /** Commit attempts that lost the race for the head and rebased. */
  rebases: number;
  durationMs: number;
}

/** Takes a snapshot of `env.dbPath`, or reports that the newest one this device made still holds it. */
export async function takeSnapshot(env: SnapshotEnv, opts: SnapshotOptions): Promise<SnapshotResult> {
  const started = env.now();
  const checkAbort = () => {
    if (env.signal.aborted) throw new CancelledError();
  };
  let highest = env.highestSeq;
  const seen = (head: SnapshotInfo | null) => {
    checkNotRolledBack(head, highest, env.server);
    if (head && head.seq > highest) {
      highest = head.seq;
      noteSeenSeq(env.home, head.seq);
    }
  };

  // Ask the relay first: a revoked device, a wrong relay or a rollback fails before the copy.
  const listed = await env.api.list();
  seen(listed.head);
  checkAbort();
  env.trace?.('listed snapshots');

  const before = statDatabase(env.dbPath);
  const dbSize = before.size + before.walSize;
  const view = await openDatabaseView(
    env.dbPath,
    () => {
      env.onPhase?.('copy', dbSize);
      return scratchDir(env.home, dbSize, env.tmpDir);
    },
    (b) => env.onProgress?.(b),
    env.trace,
  );
  let sealPool: WorkerPool | undefined;
  try {
    checkAbort();
    // The local index, if it describes pages of this size.
    let old = readIndex(env.home, env.keys, env.dbPath);
    env.trace?.('read the index');
    if (old && old.manifest.pageSize !== view.pageSize) old = null;
    const dbStat = view.stat;
    // Without an index every page goes into a new pack, and sealing hashes each page: no pass of its own.
    let copy: DbCopy;
    if (old) {
      env.onPhase?.('read', view.dbBytes);
      copy = { ...view, ...(await hashDatabase(view, env.pool, (b) => env.onProgress?.(b))) };
      env.trace?.('hashed');
    } else {
      copy = { ...view, hashes: new Uint8Array(view.pageCount * PAGE_HASH_BYTES), pagesSha256: '' };
    }
    checkAbort();
    const changed = old ? changedPages(old.hashes, copy.hashes) : new Uint8Array(copy.pageCount).fill(1);
    const nChanged = countChanged(changed);
    const sizes = new Map<string, number>(Object.entries(old?.packSizes ?? {}));

    if (
      !opts.force &&
      old !== null &&
      nChanged === 0 &&
      old.manifest.pageCount === copy.pageCount &&
      old.manifest.pagesSha256 === copy.pagesSha256 &&
      listed.snapshots.some((s) => s.id === old!.manifest.snapshotId && s.seq === old!.manifest.seq)
    ) {
      // Refresh the index's file stat, so `casa status` sees the database as unchanged since.
      writeIndex(env.home, env.keys, env.dbPath, { ...old, updatedAt: env.now(), dbStat });
      return {
        status: 'up_to_date',
        snapshotId: old.manifest.snapshotId,
        seq: old.manifest.seq,
        dbBytes: copy.dbBytes,
        changedPages: 0,
        compactedPages: 0,
        totalPages: copy.pageCount,
        uploadedBytes: 0,
        uploadedObjects: 0,
        reusedPacks: old.manifest.packs.length,
        packCount: old.manifest.packs.length,
        storedBytes: storedBytes(old.manifest, sizes),
        rebases: 0,
        durationMs: env.now() - started,
      };
    }

    // Only the old manifest is needed from here: the old page hashes (8 MiB per GiB of database, a view of
    // the whole index file's buffer) go before the packs are sealed, and the hashing pass's garbage with them.
    const oldManifest = old?.manifest ?? null;
    old = null;
    collectGarbage();

    // Which old packs are still on the relay (the check also restarts their retention grace period).
    let plan = planPages(oldManifest, changed);
    const unavailable = new Set<string>();
    if (plan.keptPacks.length > 0) {
      for (const id of await env.api.missingPacks(plan.keptPacks)) unavailable.add(id);
      if (unavailable.size > 0) plan = planPages(oldManifest!, changed, { unavailable });
    }
    checkAbort();

    env.trace?.('planned; kept packs checked');
    // Every page to seal: a worker thread compresses and encrypts while the main thread keeps the uploads going.
    if (oldManifest === null && env.fullUploadPool) sealPool = env.fullUploadPool();
    const up = new Uploader({ ...env, pool: sealPool ?? env.pool }, copy, sizes, oldManifest === null);
    env.onPhase?.('upload', plan.repack.length * copy.pageSize);
    const newPacks = await up.packPages(plan.repack);
    if (oldManifest === null) copy.pagesSha256 = pagesDigest(copy.hashes);
    // The uploads' garbage goes before the manifest is built, so the two do not add up (milliseconds).
    collectGarbage();

    // Commit, rebasing onto a head that moved and re-packing what the relay lost meanwhile.
    env.trace?.('packs sealed and uploaded');
    let head = await env.api.head();
    seen(head);
    let rebases = 0;
    for (let attempt = 1; ; attempt++) {
      checkAbort();
      const manifest = assembleManifest(
        {
          format: 1,
          vaultId: env.keys.vaultId,
          snapshotId: bytesToHex(env.random(16)),
          seq: (head?.seq ?? 0) + 1,
          parentId: head?.id ?? null,
          parentSeq: head?.seq ?? 0,
          deviceId: env.deviceId,
          time: env.now(),
          pageSize: copy.pageSize,
          pageCount: copy.pageCount,
          dbBytes: copy.dbBytes,
          pagesSha256: copy.pagesSha256,
          schemaVersion: copy.schemaVersion,
          userVersion: copy.userVersion,
          changesetWatermark: env.changesetWatermark ?? 0,
        },
        oldManifest,
        plan,
        newPacks,
      );
      const stored = storedBytes(manifest, sizes);
      // assembleManifest's per-page arrays (12 bytes a page) go before the manifest is encoded (milliseconds).
      collectGarbage();
      const sealedManifest = sealManifest(env.keys, manifest, env.random(SALT_BYTES));
      env.trace?.(`manifest sealed (${sealedManifest.length} bytes)`);
      await env.api.putManifest(manifest.snapshotId, sealedManifest);
      const res = await env.api.commit({
        snapshotId: manifest.snapshotId,
        seq: manifest.seq,
        parentSeq: manifest.parentSeq,
        packs: manifest.packs.map((p) => p.id),
        dbBytes: manifest.dbBytes,
        storedBytes: stored,
        newBytes: up.uploadedBytes,
        ...(manifest.changesetWatermark > 0 ? { changesetWatermark: manifest.changesetWatermark } : {}),
      });
      env.trace?.('commit answered');
      if (res.ok) {
        if (manifest.seq > highest) {
          highest = manifest.seq;
          noteSeenSeq(env.home, manifest.seq);
        }
        const packSizes: Record<string, number> = {};
        for (const p of manifest.packs) {
          const n = sizes.get(p.id);
          if (n !== undefined) packSizes[p.id] = n;
        }
        const idx: PageIndex = { manifest, hashes: copy.hashes, source: 'snapshot', updatedAt: env.now(), dbStat, packSizes };
        writeIndex(env.home, env.keys, env.dbPath, idx);
        env.trace?.('index written');
        return {
          status: 'committed',
          snapshotId: manifest.snapshotId,
          seq: manifest.seq,
          dbBytes: copy.dbBytes,
          changedPages: nChanged,
          compactedPages: plan.compacted,
          totalPages: copy.pageCount,
          uploadedBytes: up.uploadedBytes,
          uploadedObjects: up.uploadedObjects,
          reusedPacks: manifest.packs.filter((p) => !up.uploaded.has(p.id)).length,
          packCount: manifest.packs.length,
          storedBytes: stored,
          rebases,
          durationMs: env.now() - started,
        };
      }
      if (attempt >= COMMIT_ATTEMPTS) {
        throw new FailureError(`could not commit the snapshot after ${attempt} attempts (${res.reason})`, {
          hints: ['other devices may be snapshotting at the same time; run the command again'],
        });
      }
      if (res.reason === 'conflict') {
        // Another device committed first: go after it, with the same packs.
        head = res.head;
        seen(head);
        rebases++;
        await (env.sleep ?? sleep)(jitter(attempt, env.random));
        continue;
      }
      if (res.reason === 'missing_manifest') continue; // the next attempt uploads a manifest again
      // missing_packs: the relay lost packs between our check and the commit.
      const missing = new Set(res.missing);
      const lostNew = newPacks.filter((p) => missing.has(p.id));
      for (const p of lostNew) await up.reupload(p);
      const lostOld = plan.keptPacks.filter((id) => missing.has(id));
      if (lostOld.length > 0) {
        for (const id of lostOld) unavailable.add(id);
        const before = plan;
        plan = planPages(oldManifest!, changed, { unavailable });
        const extra = newlyRepacked(before, plan);
        env.onPhase?.('upload', extra.length * copy.pageSize);
        newPacks.push(...(await up.packPages(extra)));
      }
      if (lostNew.length === 0 && lostOld.length === 0) {
        throw new FailureError('the relay reports packs missing that this snapshot does not use', {
          hints: ['the relay may be misbehaving; run `casa status`'],
        });
      }
    }
  } finally {
    // Every lane of the uploader has settled (packPages waits for all): nothing reads the view any more.
    await sealPool?.close();
    view.close();
  }
}

/** Pages `after` re-packs that `before` did not. */
function newlyRepacked(before: PagePlan, after: PagePlan): Uint32Array {
  const was = new Set(before.repack);
  return after.repack.filter((p) => !was.has(p));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** 50–250 ms, growing a little with each attempt. */
function jitter(attempt: number, random: (n: number) => Uint8Array): number {
  const r = random(1)[0]! / 255;
  return Math.round((50 + 200 * r) * Math.min(attempt, 4) * 0.5);
}

/**
 * Seals pages into packs on the worker pool and uploads them, in a bounded
 * pipeline: `pool.size + 1` lanes, each holding one pack from "sealing" to
 * "uploaded". Before each upload it asks the relay whether the pack is
 * already there (a retried run, or equal content elsewhere in the vault).
 */
class Uploader {
  uploadedBytes = 0;
  uploadedObjects = 0;
  readonly uploaded = new Set<string>();
  /**
   * Buffers of packs already uploaded, handed back to the next seal (at most
   * one per lane): a snapshot's packs are sealed into the same few buffers
   * instead of leaving 2–8 MiB of garbage each, which V8 would collect late.
   */
  private readonly spare: Uint8Array[] = [];

  /**
   * With `fillHashes`, the sealed pages' hashes are the first ones computed
   * (an initial snapshot) and go into `copy.hashes`; otherwise they must equal
   * the hashing pass's (the view cannot change under a snapshot: a difference
   * is a bug or a broken file system, never a snapshot).
   */
  constructor(
    private readonly env: SnapshotEnv,
    private readonly copy: DbCopy,
    private readonly sizes: Map<string, number>,
    private readonly fillHashes: boolean,
  ) {}

  async packPages(pages: Uint32Array): Promise<NewPack[]> {
    const groups = groupPages(pages, this.copy.pageSize);
    const out: NewPack[] = new Array(groups.length);
    let next = 0;
    let failed = false;
    const lane = async () => {
      while (!failed && next < groups.length) {
        const i = next++;
        try {
          out[i] = await this.one(groups[i]!);
        } catch (err) {
          failed = true;
          throw err;
        }
      }
    };
    const lanes = Math.min(groups.length, this.env.pool.size + 1);
    const results = await Promise.allSettled(Array.from({ length: lanes }, lane));
    // Every lane has stopped before anything is reported: nothing still reads the copy.
    const err = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (err) throw err.reason;
    return out;
  }

  /** Seals and uploads one pack of the given pages again (the relay lost it). */
  async reupload(p: NewPack): Promise<void> {
    const again = await this.one(p.pages, true);
    if (again.id !== p.id) throw new FailureError(`the copy changed under pack ${p.id.slice(0, 12)}`);
  }

  private async one(pages: Uint32Array, force = false): Promise<NewPack> {
    const env = this.env;
    if (env.signal.aborted) throw new CancelledError();
    const { pageSize } = this.copy;
    const into = this.spare.pop();
    const sealed = await env.pool.run(
      { kind: 'seal', fd: this.copy.fd, pageSize, pages: pages.slice(), salt: env.random(SALT_BYTES), ...(into ? { into } : {}) },
      into ? [into.buffer as ArrayBuffer] : [],
    );
    const done = await this.upload(sealed, pages, force);
    // Uploaded: the relay's answer came after the whole body, so nothing reads the buffer any more.
    this.spare.push(new Uint8Array(sealed.object.buffer));
    return done;
  }

  /** Checks the sealed pages' hashes, then uploads the pack unless the relay has it (or `force`). */
  private async upload(sealed: { id: string; object: Uint8Array; bytes: number; hashes: Uint8Array }, pages: Uint32Array, force: boolean): Promise<NewPack> {
    const env = this.env;
    if (env.signal.aborted) throw new CancelledError();
    pages.forEach((page, k) => {
      const h = sealed.hashes.subarray(k * PAGE_HASH_BYTES, (k + 1) * PAGE_HASH_BYTES);
      const at = page * PAGE_HASH_BYTES;
      if (this.fillHashes) this.copy.hashes.set(h, at);
      else if (!equalBytes(h, this.copy.hashes.subarray(at, at + PAGE_HASH_BYTES))) {
        throw new FailureError(`page ${page} of the database changed while it was read`, {
          hints: ['run `casa snapshot` again; if it keeps happening, check the disk'],
        });
      }
    });
    const have = !force && !(await env.api.missingPacks([sealed.id])).has(sealed.id);
    if (!have) {
      await env.api.putPack(sealed.id, sealed.object);
      this.uploadedBytes += sealed.object.length;
      this.uploadedObjects++;
      this.uploaded.add(sealed.id);
    }
    this.sizes.set(sealed.id, sealed.object.length);
    env.onProgress?.(sealed.bytes);
    return { id: sealed.id, bytes: sealed.bytes, pages };
  }
}
