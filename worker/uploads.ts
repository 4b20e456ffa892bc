/**
 * Binary uploads shared by the routes that take them (packs, manifests,
 * changeset batches, digests): the body read under the route's cap with the
 * client's X-Casa-Sha256 (docs/RELAY-API.md "Every response": 413 past the
 * cap, 400 if empty or the header is malformed), and stored in R2 only if
 * it hashes to that digest.
 *
 * Invariant: nothing is stored unless its bytes hash to what the client
 * declared; a mismatch is the same 400 whether the body is stored or
 * discarded.
 */
import type { Context } from 'hono';
import { isSha256Hex } from '../src/protocol/ids.js';
import { SHA256_HEADER } from '../src/protocol/messages.js';
import { BlobChecksumError, putBlob } from './blobs.js';
import type { AppEnv } from './env.js';
import { ApiError, BLOB_BODY_LIMIT, badRequest, hex, sha256, tooLarge } from './http.js';

export interface Upload {
  sha256: string;
  /** Streamed when the length was declared, else read (under the cap) into memory. */
  body: ReadableStream | Uint8Array;
  /** The declared length (set when `body` is a stream). */
  length?: number;
}

/**
 * X-Casa-Sha256 and the body: 413 past `maxBytes` (BLOB_BODY_LIMIT; the
 * changeset and digest routes pass their own caps), 400 if empty or the
 * header is malformed.
 */
export async function readUpload(c: Context<AppEnv>, maxBytes = BLOB_BODY_LIMIT): Promise<Upload> {
  const declared = c.req.header('Content-Length');
  if (declared !== undefined) {
    if (!/^\d{1,16}$/.test(declared)) throw badRequest('Content-Length must be a number');
    if (Number(declared) > maxBytes) throw tooLarge(maxBytes);
  }
  const sha = c.req.header(SHA256_HEADER)?.toLowerCase();
  if (!isSha256Hex(sha)) throw badRequest(`${SHA256_HEADER} must be 64 hex characters`);
  const raw = c.req.raw.body;
  if (raw === null || declared === '0') throw badRequest('body must not be empty');
  // A declared length is enforced by the runtime, so R2 can take the stream as it is.
  if (declared !== undefined) return { sha256: sha, body: raw, length: Number(declared) };
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = raw.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel().catch(() => undefined);
      throw tooLarge(maxBytes);
    }
    chunks.push(value);
  }
  if (size === 0) throw badRequest('body must not be empty');
  return { sha256: sha, body: joinChunks(chunks, size) };
}

/** The chunks a stream's reader gave, `size` bytes in all, as one array. */
function joinChunks(chunks: Uint8Array[], size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const ch of chunks) {
    bytes.set(ch, at);
    at += ch.byteLength;
  }
  return bytes;
}


/** The 400 for a body that does not hash to its X-Casa-Sha256. */
export const checksumMismatch = (): ApiError => badRequest(`body does not match ${SHA256_HEADER}`);

/** Checks a body we are not going to store (its pack is already there): same 400 on mismatch. */
export async function checkDiscarded(u: Upload): Promise<void> {
  let digest: Uint8Array;
  if (u.body instanceof Uint8Array) {
    digest = await sha256(u.body);
  } else {
    const ds = new crypto.DigestStream('SHA-256');
    await u.body.pipeTo(ds);
    digest = new Uint8Array(await ds.digest);
  }
  if (hex(digest) !== u.sha256) throw checksumMismatch();
}

/** Stores the upload under `key`; 400 (and nothing stored) if it does not hash to X-Casa-Sha256. */
export async function storeUpload(c: Context<AppEnv>, key: string, u: Upload): Promise<number> {
  try {
    return (await putBlob(c.env.BLOBS, key, u.body, u.sha256)).size;
  } catch (err) {
    if (err instanceof BlobChecksumError) throw checksumMismatch();
    throw err;
  }
}

/** 409 for an object sealed under a key id that is not the vault's current epoch's (docs/RELAY-API.md "Membership and epochs"). */
export const staleEpoch = (): ApiError =>
  new ApiError(409, 'stale_epoch', "sealed under a key that is not the vault's current epoch's: fetch the new keys and seal again");

/** Where an object header carries its key id (docs/FORMAT.md §3): bytes 8..16. */
const KEY_ID_AT = 8;
const KEY_ID_END = 16;

/**
 * The key id of the object being uploaded (its header's bytes 8..16, lowercase
 * hex; '' when the body is shorter), and the upload to store in its place: a
 * streamed body is read only that far and handed on, those bytes first, as
 * a stream of the same declared length.
 */
export async function peekKeyId(u: Upload): Promise<{ keyId: string; upload: Upload }> {
  if (u.body instanceof Uint8Array) {
    return { keyId: u.body.length >= KEY_ID_END ? hex(u.body.subarray(KEY_ID_AT, KEY_ID_END)) : '', upload: u };
  }
  if (u.length === undefined) throw new Error('a streamed upload without its length');
  const reader = u.body.getReader();
  const head: Uint8Array[] = [];
  let size = 0;
  let ended = false;
  while (size < KEY_ID_END) {
    const r = await reader.read();
    if (r.done) {
      ended = true;
      break;
    }
    head.push(r.value);
    size += r.value.byteLength;
  }
  const first = joinChunks(head, size);
  const keyId = size >= KEY_ID_END ? hex(first.subarray(KEY_ID_AT, KEY_ID_END)) : '';
  const out = new FixedLengthStream(u.length);
  const writer = out.writable.getWriter();
  const pump = async () => {
    if (size > 0) await writer.write(first);
    while (!ended) {
      const r = await reader.read();
      if (r.done) break;
      await writer.write(r.value);
    }
    await writer.close();
  };
  // A failure on either side ends both (the store then fails as an unreadable body would).
  pump().catch(async (err: unknown) => {
    await writer.abort(err).catch(() => undefined);
    await reader.cancel(err).catch(() => undefined);
  });
  return { keyId, upload: { ...u, body: out.readable } };
}
