/**
 * Snapshot routes (docs/RELAY-API.md "Snapshots: packs, manifests, the
 * head"), all authenticated: packs and manifests are opaque encrypted blobs
 * streamed into R2 under a fresh key per upload, checked against the
 * client's X-Casa-Sha256 on arrival, then named by a D1 row (docs/RELAY-API.md: blob
 * first, then the row; readers trust D1). The commit is a compare-and-swap
 * on the vault's head (snapshot-db.ts commitSnapshot). Once the vault has
 * key epochs, a manifest sealed under a key id other than the current
 * epoch's is refused on upload and on commit (409 stale_epoch).
 */
import { Hono, type Context } from 'hono';
import { isPackId, isSnapshotId } from '../../src/protocol/ids.js';
import { MAX_PACK_IDS, SHA256_HEADER } from '../../src/protocol/messages.js';
import { requireDevice } from '../auth.js';
import { checkQuota, uploadSize } from '../quotas.js';
import { deleteBlobs, getBlob, uploadKey } from '../blobs.js';
import { getChangesetState } from '../changeset-db.js';
import type { AppEnv } from '../env.js';
import {
  ApiError,
  LARGE_JSON_BODY_LIMIT,
  badRequest,
  hex,
  int,
  jsonBodyLimitOf,
  notFound,
  readJson,
  str,
} from '../http.js';
import {
  checkPacks,
  commitSnapshot,
  getHead,
  getManifestKey,
  getPack,
  isCommitted,
  listSnapshots,
  putPendingManifest,
  touchPack,
  upsertPack,
} from '../snapshot-db.js';
import { checkDiscarded, peekKeyId, readUpload, staleEpoch, storeUpload } from '../uploads.js';

export const snapshotRoutes = new Hono<AppEnv>();

function packIdParam(c: Context<AppEnv>): string {
  const id = c.req.param('packId');
  if (!isPackId(id)) throw badRequest('packId must be 64 lowercase hex characters');
  return id;
}

function snapshotIdParam(c: Context<AppEnv>): string {
  const id = c.req.param('snapshotId');
  if (!isSnapshotId(id)) throw badRequest('snapshotId must be 32 lowercase hex characters');
  return id;
}

/** A list of at most MAX_PACK_IDS pack ids, without repeats (first occurrence kept). */
function packIds(body: Record<string, unknown>, field: string): string[] {
  const v = body[field];
  if (!Array.isArray(v) || v.length > MAX_PACK_IDS) throw badRequest(`${field} must be an array of at most ${MAX_PACK_IDS} pack ids`);
  for (const id of v) if (!isPackId(id)) throw badRequest(`${field} must hold 64 lowercase hex characters each`);
  return [...new Set(v as string[])];
}

async function blobResponse(c: Context<AppEnv>, key: string | null): Promise<Response> {
  const obj = key === null ? null : await getBlob(c.env.BLOBS, key);
  // A row whose blob is gone (retention deleted it just now): not there.
  if (obj === null) throw notFound();
  const headers = new Headers({ 'Content-Type': 'application/octet-stream', 'Content-Length': String(obj.size) });
  const sha = obj.checksums.sha256;
  if (sha !== undefined) headers.set(SHA256_HEADER, hex(new Uint8Array(sha)));
  return new Response(obj.body, { status: 200, headers });
}

// ---- packs -----------------------------------------------------------------

snapshotRoutes.put('/:vaultId/packs/:packId', requireDevice(), async (c) => {
  const vaultId = c.var.vaultId;
  const packId = packIdParam(c);
  const upload = await readUpload(c);
  // Already stored: touch it and discard the body without an R2 write (the first copy wins).
  const existing = await touchPack(c.env.DB, vaultId, packId, Date.now());
  if (existing !== null) {
    await checkDiscarded(upload);
    return c.json({ id: packId, bytes: existing, created: false }, 201);
  }
  await checkQuota(c, vaultId, { stored: uploadSize(upload) });
  const key = uploadKey('packs', vaultId, packId);
  const bytes = await storeUpload(c, key, upload);
  const now = Date.now();
  const row = await upsertPack(c.env.DB, { vault_id: vaultId, id: packId, r2_key: key, bytes, created_at: now, touched_at: now });
  if (row.r2_key !== key) {
    // A concurrent upload of the same pack won: ours is surplus.
    await deleteBlobs(c.env.BLOBS, [key]);
    return c.json({ id: packId, bytes: row.bytes, created: false }, 201);
  }
  return c.json({ id: packId, bytes, created: true }, 201);
});

snapshotRoutes.post('/:vaultId/packs/check', requireDevice(), jsonBodyLimitOf(LARGE_JSON_BODY_LIMIT), async (c) => {
  const ids = packIds(await readJson(c), 'ids');
  const missing = await checkPacks(c.env.DB, c.var.vaultId, ids, Date.now());
  return c.json({ missing });
});

snapshotRoutes.get('/:vaultId/packs/:packId', requireDevice(), async (c) => {
  const row = await getPack(c.env.DB, c.var.vaultId, packIdParam(c));
  return blobResponse(c, row?.r2_key ?? null);
});

// ---- manifests -----------------------------------------------------------------

snapshotRoutes.put('/:vaultId/snapshots/:snapshotId/manifest', requireDevice(), async (c) => {
  const vaultId = c.var.vaultId;
  const snapshotId = snapshotIdParam(c);
  const raw = await readUpload(c);
  const committed = (): ApiError => new ApiError(409, 'conflict', 'the snapshot is committed: its manifest cannot change');
  if (await isCommitted(c.env.DB, vaultId, snapshotId)) throw committed();
  // The key id it was sealed under: refused below, in the row's own statement, unless the vault's current one.
  const { keyId, upload } = await peekKeyId(raw);
  await checkQuota(c, vaultId, { stored: uploadSize(upload) });
  const key = uploadKey('manifests', vaultId, snapshotId);
  const bytes = await storeUpload(c, key, upload);
  // Until the commit a new upload replaces the pending one (whose blob becomes an orphan).
  const out = await putPendingManifest(c.env.DB, { vaultId, snapshotId, r2Key: key, bytes, keyId, now: Date.now() });
  if (out !== 'stored') {
    await deleteBlobs(c.env.BLOBS, [key]);
    throw out === 'stale' ? staleEpoch() : committed();
  }
  return c.json({ id: snapshotId, bytes }, 201);
});

snapshotRoutes.get('/:vaultId/snapshots/:snapshotId/manifest', requireDevice(), async (c) => {
  return blobResponse(c, await getManifestKey(c.env.DB, c.var.vaultId, snapshotIdParam(c)));
});

// ---- snapshots -----------------------------------------------------------------

snapshotRoutes.post('/:vaultId/snapshots', requireDevice(), jsonBodyLimitOf(LARGE_JSON_BODY_LIMIT), async (c) => {
  const body = await readJson(c);
  const snapshotId = str(body, 'snapshotId');
  if (!isSnapshotId(snapshotId)) throw badRequest('snapshotId must be 32 lowercase hex characters');
  const seq = int(body, 'seq');
  const parentSeq = int(body, 'parentSeq');
  if (seq !== parentSeq + 1) throw badRequest('seq must be parentSeq + 1');
  const packs = packIds(body, 'packs');
  const dbBytes = int(body, 'dbBytes');
  const storedBytes = int(body, 'storedBytes');
  const newBytes = int(body, 'newBytes');
  const vaultId = c.var.vaultId;
  const deviceId = c.var.deviceId;
  // Optional (clients before changesets omit it). Checked against the head
  // outside the commit's transaction: the head only grows, so a watermark
  // within it now is within it at the commit.
  const changesetWatermark = body.changesetWatermark === undefined ? 0 : int(body, 'changesetWatermark');
  if (changesetWatermark > (await getChangesetState(c.env.DB, vaultId)).head) {
    throw badRequest("changesetWatermark is past the vault's changeset head");
  }
  // A retry of a committed snapshot is answered as before, quota or not.
  if (!(await isCommitted(c.env.DB, vaultId, snapshotId))) await checkQuota(c, vaultId, { commit: true });
  const now = Date.now();
  const out = await commitSnapshot(c.env.DB, {
    vaultId,
    snapshotId,
    seq,
    parentSeq,
    deviceId,
    packs,
    dbBytes,
    storedBytes,
    newBytes,
    changesetWatermark,
    now,
  });
  if (out.inserted) return c.json({ snapshotId, seq, time: now }, 201);
  // Decided on what the commit's own transaction saw, in this order.
  if (out.existing !== null) {
    // A retry of a commit that went through (its answer was lost): the same answer again.
    if (out.existing.seq === seq && out.existing.device_id === deviceId) {
      return c.json({ snapshotId, seq, time: out.existing.time }, 201);
    }
    throw new ApiError(409, 'conflict', 'a snapshot with this id is already committed', {}, { head: out.head });
  }
  if ((out.head?.seq ?? 0) !== parentSeq) {
    throw new ApiError(409, 'conflict', 'the head moved: rebase onto it and commit again', {}, { head: out.head });
  }
  if (!out.hasManifest) throw new ApiError(409, 'missing_manifest', 'upload the manifest before committing');
  if (out.staleManifest) throw staleEpoch();
  if (out.missing.length > 0) {
    throw new ApiError(409, 'missing_packs', 'some packs are not on the relay', {}, { missing: out.missing });
  }
  throw new Error('commit refused for no reason the transaction saw');
});

snapshotRoutes.get('/:vaultId/snapshots', requireDevice(), async (c) => {
  const snapshots = await listSnapshots(c.env.DB, c.var.vaultId);
  return c.json({ head: snapshots[0] ?? null, snapshots });
});

snapshotRoutes.get('/:vaultId/snapshots/head', requireDevice(), async (c) => {
  return c.json({ head: await getHead(c.env.DB, c.var.vaultId) });
});
