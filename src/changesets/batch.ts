/**
 * Changeset batches (docs/FORMAT.md §7, docs/ARCHITECTURE.md §4): a device's field
 * changes, pushed in batches that are compressed, encrypted, numbered per
 * device (seq 1, 2, 3, …) and hash-chained (each batch names the SHA-256 of
 * the device's previous sealed batch).
 *
 * A batch is one encrypted object (FORMAT.md §3) of type `changeset`, codec
 * zstd, under the changeset key, identity `changeset:<device id>:<seq>`; its
 * plaintext is `u32be(len(header)) || header (UTF-8 JSON) || body`. The AEAD
 * binds vault, device and seq, so a relay that moves a batch to another
 * device or seq breaks the tag; the chain makes a dropped, reordered,
 * replayed or substituted batch visible, since the relay can reorder and
 * withhold whole objects even though it cannot forge them.
 *
 * The body is opaque here (the change-log encoding is the caller's). The
 * module is pure apart from hashing: randomness comes from the caller.
 */
import { isDeviceId, isSha256Hex, isVaultId } from '../protocol/ids.js';
import { CHANGESET_MAX_BYTES } from '../protocol/messages.js';
import { bytesToUtf8, concatBytes, u32be, utf8ToBytes } from '../crypto/bytes.js';
import type { VaultKeys } from '../crypto/kdf.js';
import { keysFor } from '../crypto/keyring.js';
import { Codec, ObjectType, openObject, SALT_BYTES, sealObject } from '../crypto/objects.js';
import { sha256Hex } from '../crypto/sha256.js';

export const BATCH_FORMAT = 1;
/** The largest body a batch carries (plaintext, before compression). */
export const MAX_BATCH_BODY = 8 * 1024 * 1024;
/** The largest sealed batch: the relay refuses bigger uploads (413), so sealBatch does too. */
export const MAX_SEALED_BATCH = CHANGESET_MAX_BYTES;
/** The largest header JSON a reader accepts; a real one is ~300 bytes. */
export const MAX_BATCH_HEADER = 4096;
/** Longest schema fingerprint. */
export const MAX_SCHEMA_CHARS = 128;

export interface BatchHeader {
  format: 1;
  vaultId: string;
  deviceId: string;
  /** Per device, from 1. */
  seq: number;
  /** 64 hex: SHA-256 of this device's previous sealed batch; '' for seq 1. */
  prev: string;
  /** Opaque schema fingerprint, at most 128 characters. */
  schema: string;
  /** Number of changes in the body. */
  count: number;
  /** Device time of sealing, ms. */
  time: number;
}

export interface SealedBatch {
  bytes: Uint8Array;
  /** Lowercase hex SHA-256 of `bytes`: the next batch's `prev`, and the relay's X-Casa-Sha256. */
  hash: string;
}

export interface OpenedBatch {
  header: BatchHeader;
  body: Uint8Array;
  hash: string;
}

/**
 * An authenticated batch whose header is not a format-1 header (a bug in
 * the device that sealed it, or a newer format). Sealed under the vault
 * key, so not the relay's doing; callers report it as an integrity failure.
 */
export class BatchFormatError extends Error {
  constructor(message: string) {
    super(`changeset batch is malformed: ${message}`);
    this.name = 'BatchFormatError';
  }
}

export type BatchChainReason = 'dropped' | 'reordered' | 'replayed' | 'forked' | 'mismatch';

const CHAIN_MESSAGES: Record<BatchChainReason, string> = {
  dropped: 'a batch is missing before this one',
  reordered: 'batches arrived out of order',
  replayed: 'an older batch was served again',
  forked: 'the batch does not follow the previous batch of its device',
  mismatch: 'the batch is not the one that was asked for',
};

/**
 * A batch breaks its device's chain (or is not where it claims to be).
 * `expectedSeq` is the seq that would have been accepted, when there is one.
 */
export class BatchChainError extends Error {
  readonly reason: BatchChainReason;
  readonly deviceId: string;
  readonly seq: number;
  readonly expectedSeq: number | null;
  constructor(reason: BatchChainReason, deviceId: string, seq: number, expectedSeq: number | null = null) {
    super(`changeset ${deviceId}:${seq}: ${CHAIN_MESSAGES[reason]}`);
    this.name = 'BatchChainError';
    this.reason = reason;
    this.deviceId = deviceId;
    this.seq = seq;
    this.expectedSeq = expectedSeq;
  }
}

const HEADER_KEYS = ['format', 'vaultId', 'deviceId', 'seq', 'prev', 'schema', 'count', 'time'] as const;

const isUint = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** Why `h` is not a valid header, or null. Shared by sealing (RangeError) and opening (BatchFormatError). */
function headerProblem(h: Record<string, unknown>): string | null {
  if (h.format !== BATCH_FORMAT) return 'unsupported format';
  if (!isVaultId(h.vaultId)) return 'vaultId must be 32 lowercase hex characters';
  if (!isDeviceId(h.deviceId)) return 'deviceId must be 16 lowercase hex characters';
  if (!isUint(h.seq) || h.seq < 1) return 'seq must be a positive integer';
  // The chain starts at seq 1 with nothing before it; every later batch names its predecessor.
  if (h.seq === 1 ? h.prev !== '' : !isSha256Hex(h.prev)) {
    return "prev must be '' for seq 1 and 64 lowercase hex characters after";
  }
  if (typeof h.schema !== 'string' || [...h.schema].length > MAX_SCHEMA_CHARS) return `schema must be a string of at most ${MAX_SCHEMA_CHARS} characters`;
  if (!isUint(h.count)) return 'count must be a non-negative integer';
  if (!isUint(h.time)) return 'time must be a non-negative integer';
  return null;
}

const identity = (deviceId: string, seq: number): string => `changeset:${deviceId}:${seq}`;

/**
 * Seals one batch. Throws RangeError for a bad header, a body over
 * MAX_BATCH_BODY, or a sealed batch over MAX_SEALED_BATCH (the relay's
 * cap; an incompressible body near 8 MiB gets there: split the batch).
 */
export function sealBatch(
  keys: VaultKeys,
  h: Omit<BatchHeader, 'format' | 'vaultId'>,
  body: Uint8Array,
  random: (n: number) => Uint8Array,
): SealedBatch {
  // Fixed key order: the header bytes depend on the values only.
  const header: BatchHeader = {
    format: BATCH_FORMAT,
    vaultId: keys.vaultId,
    deviceId: h.deviceId,
    seq: h.seq,
    prev: h.prev,
    schema: h.schema,
    count: h.count,
    time: h.time,
  };
  const problem = headerProblem(header as unknown as Record<string, unknown>);
  if (problem !== null) throw new RangeError(`batch header: ${problem}`);
  if (!(body instanceof Uint8Array)) throw new TypeError('body must be a Uint8Array');
  if (body.length > MAX_BATCH_BODY) throw new RangeError(`batch body is over ${MAX_BATCH_BODY} bytes`);
  const json = utf8ToBytes(JSON.stringify(header));
  const bytes = sealObject({
    type: ObjectType.changeset,
    codec: Codec.zstd,
    keyId: keys.keyId,
    purposeKey: keys.changesetKey,
    vaultId: keys.vaultId,
    identity: identity(header.deviceId, header.seq),
    plaintext: concatBytes(u32be(json.length), json, body),
    salt: random(SALT_BYTES),
  });
  if (bytes.length > MAX_SEALED_BATCH) throw new RangeError(`sealed batch is over ${MAX_SEALED_BATCH} bytes: split it`);
  return { bytes, hash: sha256Hex(bytes) };
}

/**
 * Opens the batch the relay says is `meta.deviceId`'s `meta.seq`.
 * AuthenticationError / ObjectFormatError / WrongKeyError from openObject
 * propagate as they are (a batch moved to another device or seq fails
 * authentication); a malformed header is BatchFormatError; a header naming
 * another vault, device or seq is BatchChainError 'mismatch'. With
 * `expectedPrev` (the hash of the device's previous batch, '' before seq 1)
 * a batch that does not follow it is 'forked'; null skips the chain check
 * (the caller runs checkChain itself).
 */
export function openBatch(
  vaultKeys: VaultKeys,
  meta: { deviceId: string; seq: number },
  bytes: Uint8Array,
  expectedPrev: string | null,
): OpenedBatch {
  if (!isDeviceId(meta.deviceId) || !isUint(meta.seq) || meta.seq < 1) throw new RangeError('meta must name a device id and a seq ≥ 1');
  const keys = keysFor(vaultKeys, bytes);
  const plaintext = openObject({
    type: ObjectType.changeset,
    keyId: keys.keyId,
    purposeKey: keys.changesetKey,
    vaultId: keys.vaultId,
    identity: identity(meta.deviceId, meta.seq),
    object: bytes,
    maxPlaintext: 4 + MAX_BATCH_HEADER + MAX_BATCH_BODY,
  });
  if (plaintext.length < 4) throw new BatchFormatError('no header');
  const len = new DataView(plaintext.buffer, plaintext.byteOffset, 4).getUint32(0, false);
  if (len > MAX_BATCH_HEADER || len > plaintext.length - 4) throw new BatchFormatError('header length out of range');
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytesToUtf8(plaintext.subarray(4, 4 + len)));
  } catch {
    throw new BatchFormatError('header is not JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new BatchFormatError('header is not an object');
  const h = parsed as Record<string, unknown>;
  const problem = headerProblem(h);
  if (problem !== null) throw new BatchFormatError(problem);
  if (Object.keys(h).some((k) => !(HEADER_KEYS as readonly string[]).includes(k))) throw new BatchFormatError('unknown header field');
  const body = plaintext.subarray(4 + len);
  if (body.length > MAX_BATCH_BODY) throw new BatchFormatError('body over the limit');
  const header = h as unknown as BatchHeader;
  // Authenticated under this identity, so only the sealing device can have got these wrong.
  if (header.vaultId !== keys.vaultId || header.deviceId !== meta.deviceId || header.seq !== meta.seq) {
    throw new BatchChainError('mismatch', meta.deviceId, meta.seq);
  }
  if (expectedPrev !== null && header.prev !== expectedPrev) throw new BatchChainError('forked', meta.deviceId, meta.seq);
  return { header, body, hash: sha256Hex(bytes) };
}

/** The last batch accepted from a device. */
export interface ChainPoint {
  seq: number;
  hash: string;
}

/** What the chain check needs of a batch (its header's seq and prev, and its own hash). */
export interface ChainLink {
  deviceId: string;
  seq: number;
  prev: string;
  hash: string;
}

/** 'next': the batch extends the chain; 'duplicate': it is the last batch again (harmless, skip it). */
export type ChainStep = 'next' | 'duplicate';

/**
 * Where a device's chain starts for a reader that has seen nothing of it
 * yet: by default at seq 1 (whose prev is ''). A reader that starts from a
 * snapshot, whose older batches may be pruned, passes the seq it expects
 * first (`seq`), or, not knowing it, `startAnywhere`: the first batch it
 * gets is then taken as the chain's start, its prev unchecked (trust on
 * first use: a relay that withholds a device's first batches after the
 * snapshot is not caught by the chain, only by the cursor rules of a pull).
 */
export interface ChainStart {
  seq?: number;
  startAnywhere?: boolean;
}

/**
 * Checks that `next` follows `last`, the device's last accepted batch (null:
 * none yet, see ChainStart). Throws BatchChainError: the same seq with
 * another hash → 'forked' (two batches claim one place); a lower seq →
 * 'replayed'; a seq beyond the next → 'dropped'; the next seq naming
 * another predecessor → 'forked'.
 */
export function checkChain(last: ChainPoint | null, next: ChainLink, start: ChainStart = {}): ChainStep {
  const fail = (reason: BatchChainReason, expected: number | null): never => {
    throw new BatchChainError(reason, next.deviceId, next.seq, expected);
  };
  if (last === null) {
    if (start.startAnywhere === true) {
      if (next.seq === 1 && next.prev !== '') fail('forked', null);
      return 'next';
    }
    const first = start.seq ?? 1;
    if (!isUint(first) || first < 1) throw new RangeError('start.seq must be a positive integer');
    if (next.seq < first) fail('replayed', first);
    if (next.seq > first) fail('dropped', first);
    if (first === 1 && next.prev !== '') fail('forked', first);
    return 'next';
  }
  if (next.seq === last.seq) {
    if (next.hash === last.hash) return 'duplicate';
    fail('forked', last.seq + 1);
  }
  if (next.seq < last.seq) fail('replayed', last.seq + 1);
  if (next.seq > last.seq + 1) fail('dropped', last.seq + 1);
  if (next.prev !== last.hash) fail('forked', last.seq + 1);
  return 'next';
}

/**
 * checkChain over a list of batches in the relay's cursor order (one pull),
 * across devices. Returns each batch's step and the devices' new last
 * points (a copy: `lasts` is not changed, so nothing moves unless all
 * pass). A gap whose missing batch comes later in the same list is
 * 'reordered' rather than 'dropped'. `start` applies to every device
 * without a last point.
 */
export function checkChains(
  lasts: ReadonlyMap<string, ChainPoint>,
  links: readonly ChainLink[],
  start: ChainStart = {},
): { lasts: Map<string, ChainPoint>; steps: ChainStep[] } {
  const out = new Map(lasts);
  const steps: ChainStep[] = [];
  for (const [i, link] of links.entries()) {
    try {
      steps.push(checkChain(out.get(link.deviceId) ?? null, link, start));
    } catch (err) {
      if (err instanceof BatchChainError && err.reason === 'dropped' && err.expectedSeq !== null) {
        const missing = err.expectedSeq;
        if (links.slice(i + 1).some((l) => l.deviceId === link.deviceId && l.seq === missing)) {
          throw new BatchChainError('reordered', link.deviceId, link.seq, missing);
        }
      }
      throw err;
    }
    out.set(link.deviceId, { seq: link.seq, hash: link.hash });
  }
  return { lasts: out, steps };
}
