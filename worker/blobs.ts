/**
 * R2 helpers for encrypted blobs (packs, manifests, changeset batches). The
 * relay cannot read them; it only checks that what arrived is what the
 * client hashed: every put carries the client's SHA-256, which R2 verifies
 * on arrival (and which we also check ourselves for in-memory bodies, so a
 * mismatch is a clear BlobChecksumError rather than a storage error).
 *
 * Keys: snapshot blobs get a fresh key per upload, `<kind>/<vaultId>/<id>/<upload id>`
 * (uploadKey; kind first so the retention job can sweep each kind's prefix),
 * changeset batches `changesets/<vaultId>/<deviceId>/<seq>/<upload id>`,
 * and D1 names the key that counts; `blobKey` is the fixed-key layout
 * `v/<vaultId>/<kind>/<id>`. Nothing is atomic across D1 and R2 (docs/RELAY-API.md):
 * write the blob first, then the D1 row; readers trust D1.
 *
 * Uses only the R2Bucket interface, so it runs in the worker and against
 * Miniflare's R2 proxy in tests.
 */
import { isDeviceId, isSha256Hex, isVaultId } from '../src/protocol/ids.js';
import { hex, randomBytes, sha256 } from './http.js';

export class BlobChecksumError extends Error {
  constructor() {
    super('blob SHA-256 does not match');
    this.name = 'BlobChecksumError';
  }
}

const KIND = /^[a-z][a-z0-9-]{0,31}$/;
const ID = /^[A-Za-z0-9_-]{1,128}$/;

export function blobKey(vaultId: string, kind: string, id: string): string {
  if (!isVaultId(vaultId) || !KIND.test(kind) || !ID.test(id)) throw new RangeError('bad blob key part');
  return `v/${vaultId}/${kind}/${id}`;
}

/** The R2 prefixes of per-upload blobs, which the retention job sweeps for orphans. */
export const UPLOAD_KINDS = ['packs', 'manifests', 'changesets'] as const;
export type UploadKind = (typeof UPLOAD_KINDS)[number];

/** A fresh key for one upload of blob `id`: deleting it never touches another upload of the same id. */
export function uploadKey(kind: Exclude<UploadKind, 'changesets'>, vaultId: string, id: string): string {
  if (!isVaultId(vaultId) || !ID.test(id)) throw new RangeError('bad blob key part');
  return `${kind}/${vaultId}/${id}/${uploadId()}`;
}

/**
 * A fresh key for one upload of a changeset batch,
 * `changesets/<vault>/<device>/<seq>/<upload id>`: a retried push stores its
 * own copy, and dropping the surplus one never touches the copy that counts.
 */
export function changesetUploadKey(vaultId: string, deviceId: string, seq: number): string {
  if (!isVaultId(vaultId) || !isDeviceId(deviceId) || !Number.isSafeInteger(seq) || seq < 1) {
    throw new RangeError('bad blob key part');
  }
  return `changesets/${vaultId}/${deviceId}/${seq}/${uploadId()}`;
}

function uploadId(): string {
  return hex(randomBytes(16));
}

/**
 * Stores `body` under `key` if its SHA-256 is `sha256Hex` (lowercase hex).
 * Streams must have a known length (FixedLengthStream / Content-Length).
 */
export async function putBlob(
  bucket: R2Bucket,
  key: string,
  body: ReadableStream | ArrayBuffer | Uint8Array,
  sha256Hex: string,
): Promise<R2Object> {
  if (!isSha256Hex(sha256Hex)) throw new RangeError('sha256 must be 64 lowercase hex characters');
  if (!(body instanceof ReadableStream)) {
    const bytes = body instanceof Uint8Array ? body : new Uint8Array(body);
    if (hex(await sha256(bytes)) !== sha256Hex) throw new BlobChecksumError();
  }
  let obj: R2Object | null;
  try {
    obj = await bucket.put(key, body, { sha256: sha256Hex });
  } catch (err) {
    if (/sha-?256|checksum|10037/i.test(String((err as Error)?.message))) throw new BlobChecksumError();
    throw err;
  }
  if (obj === null) throw new Error('R2 put returned no object');
  return obj;
}

export async function getBlob(bucket: R2Bucket, key: string): Promise<R2ObjectBody | null> {
  return bucket.get(key);
}

/** Deletes the keys (R2 takes at most 1000 per call). Missing keys are fine: idempotent. */
export async function deleteBlobs(bucket: R2Bucket, keys: readonly string[]): Promise<void> {
  for (let i = 0; i < keys.length; i += 1000) await bucket.delete(keys.slice(i, i + 1000));
}
