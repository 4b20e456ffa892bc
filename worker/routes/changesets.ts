/**
 * Changeset routes (docs/RELAY-API.md "Changesets"), all authenticated. A
 * batch is an opaque encrypted blob numbered by its device (X-Casa-Seq); the
 * relay stores it in R2 under a fresh key, checked against X-Casa-Sha256 on
 * arrival, then gives it the vault's next cursor in one D1 transaction that
 * also checks the seq and, once the vault has key epochs, that the batch's
 * header names the current key id (changeset-db.ts pushChangeset; a stale
 * one is 409 stale_epoch). Blob first, then the
 * row (docs/RELAY-API.md); a blob whose push was refused is deleted at once, and one
 * left behind by a crash is swept by the retention job.
 */
import { Hono, type Context } from 'hono';
import { CHANGESET_MAX_BYTES, CHANGESET_PULL_MAX_LIMIT, SEQ_HEADER } from '../../src/protocol/messages.js';
import { requireDevice } from '../auth.js';
import { checkQuota, uploadSize } from '../quotas.js';
import { changesetUploadKey, deleteBlobs, getBlob } from '../blobs.js';
import { changesetHeads, getChangesetState, listChangesets, pushChangeset, type ChangesetRow } from '../changeset-db.js';
import type { AppEnv } from '../env.js';
import { ApiError, b64uEncode, badRequest } from '../http.js';
import { announce } from '../hub.js';
import { peekKeyId, readUpload, staleEpoch, storeUpload } from '../uploads.js';

export const changesetRoutes = new Hono<AppEnv>();

export const PULL_DEFAULT_LIMIT = 200;
/** A pull stops adding batches once their bytes would pass this (it always carries at least one). */
export const PULL_MAX_BYTES = 8 * 1024 * 1024;
/** R2 reads in flight per pull. */
const READ_CONCURRENCY = 6;

/** A decimal query value in [min, max], or `fallback` when absent; 400 otherwise. */
export function intQuery(c: Context<AppEnv>, name: string, min: number, max: number, fallback: number): number {
  const text = c.req.query(name);
  if (text === undefined) return fallback;
  const n = /^\d{1,16}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw badRequest(`${name} must be an integer from ${min} to ${max}`);
  return n;
}

function seqHeader(c: Context<AppEnv>): number {
  const text = c.req.header(SEQ_HEADER);
  const n = text !== undefined && /^[1-9]\d{0,15}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n)) throw badRequest(`${SEQ_HEADER} must be a positive integer`);
  return n;
}

const inconsistent = (): ApiError =>
  new ApiError(503, 'storage_inconsistent', 'a stored changeset is missing from blob storage; try again later');

changesetRoutes.post('/:vaultId/changesets', requireDevice(), async (c) => {
  const vaultId = c.var.vaultId;
  const deviceId = c.var.deviceId;
  const seq = seqHeader(c);
  const { keyId, upload } = await peekKeyId(await readUpload(c, CHANGESET_MAX_BYTES));
  await checkQuota(c, vaultId, { stored: uploadSize(upload), push: true });
  const key = changesetUploadKey(vaultId, deviceId, seq);
  const bytes = await storeUpload(c, key, upload);
  const out = await pushChangeset(c.env.DB, { vaultId, deviceId, seq, r2Key: key, bytes, sha256: upload.sha256, keyId, now: Date.now() });
  if (out.cursor !== null) {
    const cursor = out.cursor;
    // Best effort: a device that misses it still finds the batch on its next pull.
    c.executionCtx.waitUntil(announce(c.env, vaultId, { kind: 'changeset', cursor, deviceId, seq }).catch(() => undefined));
    return c.json({ cursor, seq }, 201);
  }
  // Not inserted: our copy is surplus either way.
  await deleteBlobs(c.env.BLOBS, [key]);
  if (out.existing !== null && out.existing.sha256 === upload.sha256) {
    // The same batch again: a retry whose answer was lost.
    return c.json({ cursor: out.existing.cursor, seq, duplicate: true }, 200);
  }
  if (out.stale) throw staleEpoch();
  const expectedSeq = out.lastSeq + 1;
  throw new ApiError(409, 'seq_conflict', `this device's next changeset seq is ${expectedSeq}`, {}, { expectedSeq });
});

/** The first rows whose bytes stay within PULL_MAX_BYTES (at least one). */
function withinBudget(rows: ChangesetRow[]): ChangesetRow[] {
  let total = 0;
  let n = 0;
  for (const r of rows) {
    if (n > 0 && total + r.bytes > PULL_MAX_BYTES) break;
    total += r.bytes;
    n++;
  }
  return rows.slice(0, n);
}

/** The rows' blobs, in order; null where R2 has none. */
async function readBlobs(c: Context<AppEnv>, rows: ChangesetRow[]): Promise<(Uint8Array | null)[]> {
  const out: (Uint8Array | null)[] = [];
  for (let i = 0; i < rows.length; i += READ_CONCURRENCY) {
    const part = await Promise.all(
      rows.slice(i, i + READ_CONCURRENCY).map(async (r) => {
        const obj = await getBlob(c.env.BLOBS, r.r2_key);
        return obj === null ? null : new Uint8Array(await obj.arrayBuffer());
      }),
    );
    out.push(...part);
  }
  return out;
}

changesetRoutes.get('/:vaultId/changesets', requireDevice(), async (c) => {
  const vaultId = c.var.vaultId;
  const after = intQuery(c, 'after', 0, Number.MAX_SAFE_INTEGER, 0);
  const limit = intQuery(c, 'limit', 1, CHANGESET_PULL_MAX_LIMIT, PULL_DEFAULT_LIMIT);
  // Twice at most: a blob can vanish between the D1 read and the R2 read only
  // if the retention job pruned its batch meanwhile (it deletes rows first);
  // the second read then starts past the pruned batches.
  for (let attempt = 0; attempt < 2; attempt++) {
    const { head, prunedThrough, rows } = await listChangesets(c.env.DB, vaultId, after, limit);
    const page = withinBudget(rows);
    const blobs = await readBlobs(c, page);
    const lost = page.findIndex((_, i) => blobs[i] === null);
    if (lost >= 0) {
      if (attempt === 0 && page[lost]!.cursor <= (await getChangesetState(c.env.DB, vaultId)).prunedThrough) continue;
      // A row whose blob is gone and was not pruned: the relay's own fault, never an empty answer.
      throw inconsistent();
    }
    const last = page[page.length - 1];
    return c.json({
      changesets: page.map((r, i) => ({ cursor: r.cursor, deviceId: r.device_id, seq: r.seq, sha256: r.sha256, data: b64uEncode(blobs[i]!) })),
      head,
      prunedThrough,
      more: last !== undefined && last.cursor < head,
    });
  }
  throw inconsistent();
});

changesetRoutes.get('/:vaultId/changesets/heads', requireDevice(), async (c) => {
  const { head, prunedThrough, devices } = await changesetHeads(c.env.DB, c.var.vaultId);
  return c.json({ head, prunedThrough, devices: devices.map((d) => ({ deviceId: d.device_id, seq: d.seq, cursor: d.cursor })) });
});
