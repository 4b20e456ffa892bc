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
import { hashDatabase, openDatabaseView, scratchDir, type DbCopy, type DbSource } from './db-copy.js';
import { PAGE_HASH_BYTES, pagesDigest } from './page-hash.js';
import { equalBytes } from '../crypto/bytes.js';
import { sealManifest, type Manifest } from './manifest.js';
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
  type ManifestHeader,
  type NewPack,
  type PagePlan,
} from './plan.js';
import { checkNotRolledBack, type CommitResult, type SnapshotApi, type SnapshotInfo } from '../relay/snapshots.js';

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

/**
 * Takes a snapshot of `env.dbPath`, or reports that the newest one this
 * device made still holds it. The steps of docs/ARCHITECTURE.md §3: open a
 * view → diff against the index → up to date? → upload plan → commit with
 * rebase → record.
 */
export async function takeSnapshot(env: SnapshotEnv, opts: SnapshotOptions): Promise<SnapshotResult> {
  const started = env.now();
  const seqs = new SeenSeqs(env);
  // Ask the relay first: a revoked device, a wrong relay or a rollback fails before the copy.
  const listed = await env.api.list();
  seqs.check(listed.head);
  checkAbort(env);
  env.trace?.('listed snapshots');

  const view = await openView(env);
  let sealPool: WorkerPool | undefined;
  try {
    checkAbort(env);
    const diff = await diffAgainstIndex(env, view);
    checkAbort(env);
    if (!opts.force && isUpToDate(diff, listed.snapshots)) return keepUpToDate(env, diff, started);
    const { copy, sizes, nChanged } = diff;
    const oldManifest = keepOnlyManifest(diff);

    const plan = await planUpload(env, oldManifest, diff.changed, copy.pageSize);
    // Every page to seal (no index): a pool of its own, when the caller gives one.
    if (oldManifest === null && env.fullUploadPool) sealPool = env.fullUploadPool();
    const up = await uploadPlanned(env, plan, copy, sizes, sealPool ?? env.pool);
    const { manifest, stored, rebases } = await commitWithRebase(env, seqs, copy, sizes, plan, up);
    record(env, seqs, manifest, copy, sizes);
    return snapshotResult('committed', manifest, copy, {
      changedPages: nChanged,
      compactedPages: plan.pages.compacted,
      uploads: up,
      storedBytes: stored,
      rebases,
      durationMs: env.now() - started,
    });
  } finally {
    // Every lane of the uploader has settled (packPages waits for all): nothing reads the view any more.
    await sealPool?.close();
    view.close();
  }
}

// ---------------------------------------------------------------- the steps
// "Step N" is step N of the path of a snapshot, docs/ARCHITECTURE.md §3.

/** Ctrl-C (or SIGTERM) stops the run at the next step: CancelledError, exit 130. */
function checkAbort(env: Pick<SnapshotEnv, 'signal'>): void {
  if (env.signal.aborted) throw new CancelledError();
}

/**
 * The highest snapshot seq this device has authenticated (state.json): every
 * head the relay answers with is checked against it (an older one is a
 * rollback, IntegrityError, exit 6). Only the seq of the snapshot this run
 * committed — its own manifest, sealed here — is noted: a head the relay
 * merely lists is not authenticated (src/commands/vault.ts noteVerifiedSeq),
 * and a relay that could raise the recorded seq at will could make every
 * honest answer after look like a rollback.
 */
class SeenSeqs {
  private highest: number;

  constructor(private readonly env: SnapshotEnv) {
    this.highest = env.highestSeq;
  }

  /** Checks a head the relay answered with (never noted: see above). */
  check(head: SnapshotInfo | null): void {
    checkNotRolledBack(head, this.highest, this.env.server);
  }

  /** Notes the seq of the snapshot this run committed, if it is the highest yet. */
  note(seq: number): void {
    if (seq > this.highest) {
      this.highest = seq;
      noteSeenSeq(this.env.home, seq);
    }
  }
}

/** Step 1: a consistent view of the live database (src/snapshots/db-copy.ts); a copy, when one is needed, goes to scratchDir. */
async function openView(env: SnapshotEnv): Promise<DbSource> {
  const before = statDatabase(env.dbPath);
  const dbSize = before.size + before.walSize;
  return openDatabaseView(
    env.dbPath,
    () => {
      env.onPhase?.('copy', dbSize);
      return scratchDir(env.home, dbSize, env.tmpDir);
    },
    (b) => env.onProgress?.(b),
    env.trace,
  );
}

/** The view against the last snapshot's local index: which pages changed. */
interface IndexDiff {
  /** The view with its page hashes (all zero, to be filled by sealing, without an index). */
  copy: DbCopy;
  /** The local index, if it describes pages of this size; null once only its manifest is needed. */
  old: PageIndex | null;
  /** One byte a page: 1 where the page changed (every page, without an index). */
  changed: Uint8Array;
  nChanged: number;
  /** Stored sizes of packs, by id: the index's, then every pack this run seals. */
  sizes: Map<string, number>;
}

/**
 * Step 2: the local index read, the view's pages hashed on the pool and
 * compared with it. Without an index every page goes into a new pack, and
 * sealing hashes each page: no pass of its own.
 */
async function diffAgainstIndex(env: SnapshotEnv, view: DbSource): Promise<IndexDiff> {
  let old = readIndex(env.home, env.keys, env.dbPath);
  env.trace?.('read the index');
  if (old && old.manifest.pageSize !== view.pageSize) old = null;
  let copy: DbCopy;
  if (old) {
    env.onPhase?.('read', view.dbBytes);
    copy = { ...view, ...(await hashDatabase(view, env.pool, (b) => env.onProgress?.(b))) };
    env.trace?.('hashed');
  } else {
    copy = { ...view, hashes: new Uint8Array(view.pageCount * PAGE_HASH_BYTES), pagesSha256: '' };
  }
  const changed = old ? changedPages(old.hashes, copy.hashes) : new Uint8Array(copy.pageCount).fill(1);
  return { copy, old, changed, nChanged: countChanged(changed), sizes: new Map(Object.entries(old?.packSizes ?? {})) };
}

/**
 * Step 3: nothing changed since the snapshot the index describes, and the
 * relay still lists that snapshot: nothing to send.
 */
function isUpToDate(diff: IndexDiff, listed: SnapshotInfo[]): diff is IndexDiff & { old: PageIndex } {
  const { old, copy } = diff;
  return (
    old !== null &&
    diff.nChanged === 0 &&
    old.manifest.pageCount === copy.pageCount &&
    old.manifest.pagesSha256 === copy.pagesSha256 &&
    listed.some((s) => s.id === old.manifest.snapshotId && s.seq === old.manifest.seq)
  );
}

/**
 * Up to date: the index's file stat refreshed, so `casa status` sees the
 * database as unchanged since; nothing sent.
 */
function keepUpToDate(env: SnapshotEnv, diff: IndexDiff & { old: PageIndex }, started: number): SnapshotResult {
  const { old, copy } = diff;
  writeIndex(env.home, env.keys, env.dbPath, { ...old, updatedAt: env.now(), dbStat: copy.stat });
  return snapshotResult('up_to_date', old.manifest, copy, {
    changedPages: 0,
    compactedPages: 0,
    uploads: NOTHING_UPLOADED,
    storedBytes: storedBytes(old.manifest, diff.sizes),
    rebases: 0,
    durationMs: env.now() - started,
  });
}

/**
 * Only the old manifest is needed from here: the old page hashes (8 MiB per
 * GiB of database, a view of the whole index file's buffer) go before the
 * packs are sealed, and the hashing pass's garbage with them.
 */
function keepOnlyManifest(diff: IndexDiff): Manifest | null {
  const manifest = diff.old?.manifest ?? null;
  diff.old = null;
  collectGarbage();
  return manifest;
}

/**
 * Step 4: which pages go into new packs (src/snapshots/plan.ts) and the
 * packs sealed for them; the commit amends both when the relay lost packs.
 */
class UploadPlan {
  pages: PagePlan;
  /** The packs this run sealed (uploaded, unless the relay had them). */
  newPacks: NewPack[] = [];
  /** Old packs the relay does not have: their pages are re-packed. */
  private readonly unavailable = new Set<string>();

  constructor(
    readonly oldManifest: Manifest | null,
    private readonly changed: Uint8Array,
    private readonly pageSize: number,
  ) {
    this.pages = planPages(oldManifest, changed);
  }

  /** Asks the relay which old packs the plan keeps are still there (the check also restarts their retention grace period). */
  async checkKeptPacks(env: SnapshotEnv): Promise<void> {
    if (this.pages.keptPacks.length === 0) return;
    for (const id of await env.api.missingPacks(this.pages.keptPacks)) this.unavailable.add(id);
    if (this.unavailable.size > 0) this.pages = planPages(this.oldManifest!, this.changed, { unavailable: this.unavailable });
  }

  /** Seals and uploads the planned packs. */
  async upload(env: SnapshotEnv, up: Uploader): Promise<void> {
    env.onPhase?.('upload', this.pages.repack.length * this.pageSize);
    this.newPacks = await up.packPages(this.pages.repack);
  }

  /**
   * After a `missing_packs` answer (the relay lost packs between our check
   * and the commit): this run's lost packs uploaded again, the pages of lost
   * old packs re-packed. A FailureError when the snapshot uses none of them.
   */
  async replaceLost(env: SnapshotEnv, up: Uploader, missing: Set<string>): Promise<void> {
    const lostNew = this.newPacks.filter((p) => missing.has(p.id));
    for (const p of lostNew) await up.reupload(p);
    const lostOld = this.pages.keptPacks.filter((id) => missing.has(id));
    if (lostOld.length > 0) {
      for (const id of lostOld) this.unavailable.add(id);
      const before = this.pages;
      this.pages = planPages(this.oldManifest!, this.changed, { unavailable: this.unavailable });
      const extra = newlyRepacked(before, this.pages);
      env.onPhase?.('upload', extra.length * this.pageSize);
      this.newPacks.push(...(await up.packPages(extra)));
    }
    if (lostNew.length === 0 && lostOld.length === 0) {
      throw new FailureError('the relay reports packs missing that this snapshot does not use', {
        hints: ['the relay may be misbehaving; run `casa status`'],
      });
    }
  }
}

/** The upload plan, with the kept packs checked on the relay. */
async function planUpload(env: SnapshotEnv, oldManifest: Manifest | null, changed: Uint8Array, pageSize: number): Promise<UploadPlan> {
  const plan = new UploadPlan(oldManifest, changed, pageSize);
  await plan.checkKeptPacks(env);
  checkAbort(env);
  env.trace?.('planned; kept packs checked');
  return plan;
}

/**
 * Seals the planned packs on `pool` and uploads them: a worker thread
 * compresses and encrypts while the main thread keeps the uploads going.
 * Without an index, sealing hashed every page: the pages' digest follows.
 */
async function uploadPlanned(env: SnapshotEnv, plan: UploadPlan, copy: DbCopy, sizes: Map<string, number>, pool: WorkerPool): Promise<Uploader> {
  const fillHashes = plan.oldManifest === null;
  const up = new Uploader({ ...env, pool }, copy, sizes, fillHashes);
  await plan.upload(env, up);
  if (fillHashes) copy.pagesSha256 = pagesDigest(copy.hashes);
  // The uploads' garbage goes before the manifest is built, so the two do not add up (milliseconds).
  collectGarbage();
  env.trace?.('packs sealed and uploaded');
  return up;
}

/**
 * Step 5: the manifest built on the vault's head, sealed, uploaded and
 * committed with compare-and-swap. A head that moved (`conflict`) is followed
 * with the same packs after a short wait; a manifest the relay lost is
 * uploaded again; packs it lost are replaced. At most COMMIT_ATTEMPTS tries.
 */
async function commitWithRebase(
  env: SnapshotEnv,
  seqs: SeenSeqs,
  copy: DbCopy,
  sizes: Map<string, number>,
  plan: UploadPlan,
  up: Uploader,
): Promise<{ manifest: Manifest; stored: number; rebases: number }> {
  let head = await env.api.head();
  seqs.check(head);
  let rebases = 0;
  for (let attempt = 1; ; attempt++) {
    checkAbort(env);
    const manifest = assembleManifest(manifestHeader(env, copy, head), plan.oldManifest, plan.pages, plan.newPacks);
    const stored = storedBytes(manifest, sizes);
    // assembleManifest's per-page arrays (12 bytes a page) go before the manifest is encoded (milliseconds).
    collectGarbage();
    const res = await uploadAndCommit(env, manifest, stored, up.uploadedBytes);
    if (res.ok) return { manifest, stored, rebases };
    if (attempt >= COMMIT_ATTEMPTS) {
      throw new FailureError(`could not commit the snapshot after ${attempt} attempts (${res.reason})`, {
        hints: ['other devices may be snapshotting at the same time; run the command again'],
      });
    }
    if (res.reason === 'conflict') {
      // Another device committed first: go after it, with the same packs.
      head = res.head;
      seqs.check(head);
      rebases++;
      await (env.sleep ?? sleep)(jitter(attempt, env.random));
    } else if (res.reason === 'missing_packs') {
      await plan.replaceLost(env, up, new Set(res.missing));
    }
    // missing_manifest: the next attempt uploads a manifest again.
  }
}

/** The new manifest's header: the next seq after `head`, with it as the parent. */
function manifestHeader(env: SnapshotEnv, copy: DbCopy, head: SnapshotInfo | null): ManifestHeader {
  return {
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
  };
}

/** Seals and uploads the manifest, then asks the relay to commit it (docs/RELAY-API.md "Snapshots"). */
async function uploadAndCommit(env: SnapshotEnv, manifest: Manifest, stored: number, newBytes: number): Promise<CommitResult> {
  const sealed = sealManifest(env.keys, manifest, env.random(SALT_BYTES));
  env.trace?.(`manifest sealed (${sealed.length} bytes)`);
  await env.api.putManifest(manifest.snapshotId, sealed);
  const res = await env.api.commit({
    snapshotId: manifest.snapshotId,
    seq: manifest.seq,
    parentSeq: manifest.parentSeq,
    packs: manifest.packs.map((p) => p.id),
    dbBytes: manifest.dbBytes,
    storedBytes: stored,
    newBytes,
    ...(manifest.changesetWatermark > 0 ? { changesetWatermark: manifest.changesetWatermark } : {}),
  });
  env.trace?.('commit answered');
  return res;
}

/** Step 6: the committed seq noted as seen, and the new page index written. */
function record(env: SnapshotEnv, seqs: SeenSeqs, manifest: Manifest, copy: DbCopy, sizes: Map<string, number>): void {
  seqs.note(manifest.seq);
  const packSizes: Record<string, number> = {};
  for (const p of manifest.packs) {
    const n = sizes.get(p.id);
    if (n !== undefined) packSizes[p.id] = n;
  }
  writeIndex(env.home, env.keys, env.dbPath, { manifest, hashes: copy.hashes, source: 'snapshot', updatedAt: env.now(), dbStat: copy.stat, packSizes });
  env.trace?.('index written');
}

/** What this run uploaded (the Uploader's counters). */
interface Uploads {
  readonly uploadedBytes: number;
  readonly uploadedObjects: number;
  readonly uploaded: ReadonlySet<string>;
}

const NOTHING_UPLOADED: Uploads = { uploadedBytes: 0, uploadedObjects: 0, uploaded: new Set() };

/** The result of a run that ends at `manifest`: the one place a SnapshotResult is built. */
function snapshotResult(
  status: SnapshotResult['status'],
  manifest: Manifest,
  copy: DbCopy,
  work: { changedPages: number; compactedPages: number; uploads: Uploads; storedBytes: number; rebases: number; durationMs: number },
): SnapshotResult {
  return {
    status,
    snapshotId: manifest.snapshotId,
    seq: manifest.seq,
    dbBytes: copy.dbBytes,
    changedPages: work.changedPages,
    compactedPages: work.compactedPages,
    totalPages: copy.pageCount,
    uploadedBytes: work.uploads.uploadedBytes,
    uploadedObjects: work.uploads.uploadedObjects,
    reusedPacks: manifest.packs.filter((p) => !work.uploads.uploaded.has(p.id)).length,
    packCount: manifest.packs.length,
    storedBytes: work.storedBytes,
    rebases: work.rebases,
    durationMs: work.durationMs,
  };
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
    checkAbort(env);
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
    checkAbort(env);
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
