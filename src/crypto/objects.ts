/**
 * Encrypted objects (docs/FORMAT.md §3): a 48-byte header, then the
 * (compressed) plaintext in 64 KiB chunks, each sealed with AES-256-GCM
 * (NIST SP 800-38D) under a per-object key:
 *
 *   objectKey = HKDF-SHA256(purpose key, header salt, "casa/v1/object-key" || 0x00 || type, 32)   (RFC 5869)
 *   nonce_i   = u88be(i) || (0x01 if last chunk else 0x00)                                        (age STREAM)
 *   AD        = header || u32be(len) || vault id || u32be(len) || identity
 *
 * A random 256-bit salt per object gives a fresh key per object, so the
 * counter nonces never repeat under one key (the age / Tink pattern). The last
 * flag makes truncation at a chunk boundary fail; AD binds the header, the
 * vault and the object's identity so the relay cannot move or swap objects.
 *
 * Opening checks run lowest level first and the first failure decides
 * (FORMAT.md §3 table): format → wrong key → truncated body → authentication
 * → size/codec. No plaintext is released before every chunk authenticated.
 * The module is pure: salts come from the caller.
 */
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { Codec, CodecError, compressTransient, decompress, decompressReader, isCodec, type DecompressReader } from '../codec.js';
import { abytes, anumber, astring, concatBytes, equalBytes, u32be, utf8ToBytes } from './bytes.js';
import { hkdfSha256, KEY_BYTES, KEY_ID_BYTES, type VaultKeys } from './kdf.js';
import { collectYoung } from '../gc.js';
import { isVaultId } from '../protocol/ids.js';

export { Codec };

export const ObjectType = { canary: 1, pack: 2, manifest: 3, changeset: 4, pairing: 5, localIndex: 6, digest: 7, keyring: 8 } as const;
export type ObjectType = (typeof ObjectType)[keyof typeof ObjectType];

export const MAGIC = Uint8Array.of(0x43, 0x41, 0x53, 0x41); // "CASA"
export const FORMAT_VERSION = 1;
export const HEADER_BYTES = 48;
export const SALT_BYTES = 32;
export const CHUNK_BYTES = 65_536;
export const TAG_BYTES = 16;
export const OBJECT_KEY_LABEL = 'casa/v1/object-key';

const NONCE_BYTES = 12;
const SEALED_CHUNK_BYTES = CHUNK_BYTES + TAG_BYTES;

export interface ObjectHeader {
  version: number;
  type: ObjectType;
  codec: Codec;
  keyId: Uint8Array;
  salt: Uint8Array;
}

export type ObjectFormatReason =
  | 'truncated_header'
  | 'bad_magic'
  | 'unsupported_version'
  | 'unknown_type'
  | 'unexpected_type'
  | 'unknown_codec'
  | 'bad_reserved'
  | 'truncated_body'
  | 'too_large'
  | 'bad_compression'
  | 'bad_canary'
  | 'bad_keyring';

const FORMAT_MESSAGES: Record<ObjectFormatReason, string> = {
  truncated_header: 'truncated header',
  bad_magic: 'not a casa object',
  unsupported_version: 'unsupported format version',
  unknown_type: 'unknown object type',
  unexpected_type: 'not the expected object type',
  unknown_codec: 'unknown codec',
  bad_reserved: 'reserved header byte is not zero',
  truncated_body: 'truncated body',
  too_large: 'plaintext is over the size limit',
  bad_compression: 'compressed plaintext is corrupt',
  bad_canary: 'canary plaintext is not the expected one',
  bad_keyring: 'keyring is malformed or not the one its record names',
};

/** The object is malformed (before or after authentication); `reason` says how. */
export class ObjectFormatError extends Error {
  readonly reason: ObjectFormatReason;
  constructor(reason: ObjectFormatReason, options?: { cause?: unknown }) {
    super(`object is malformed: ${FORMAT_MESSAGES[reason]}`, options);
    this.name = 'ObjectFormatError';
    this.reason = reason;
  }
}

/** The object's key id is not the expected one: it was sealed under another phrase. */
export class WrongKeyError extends Error {
  constructor() {
    super('object was sealed under a different key');
    this.name = 'WrongKeyError';
  }
}

/** A chunk's tag failed. One fixed message: which chunk, and why, is not said. */
export class AuthenticationError extends Error {
  constructor() {
    super('object failed authentication');
    this.name = 'AuthenticationError';
  }
}

function isObjectType(value: number): value is ObjectType {
  return Number.isInteger(value) && value >= ObjectType.canary && value <= ObjectType.keyring;
}

function aobjectType(value: unknown, name: string): ObjectType {
  if (typeof value !== 'number' || !isObjectType(value)) throw new RangeError(`${name} must be an ObjectType`);
  return value;
}

function avaultId(value: unknown): string {
  if (!isVaultId(astring(value, 'vaultId'))) throw new RangeError('vaultId must be 32 lowercase hex characters');
  return value as string;
}

function aidentity(value: unknown): string {
  if (astring(value, 'identity') === '') throw new RangeError('identity must not be empty');
  return value as string;
}

export function encodeHeader(header: ObjectHeader): Uint8Array {
  if (header.version !== FORMAT_VERSION) throw new RangeError(`header.version must be ${FORMAT_VERSION}`);
  aobjectType(header.type, 'header.type');
  if (!isCodec(header.codec)) throw new RangeError('header.codec must be a Codec');
  abytes(header.keyId, 'header.keyId', KEY_ID_BYTES);
  abytes(header.salt, 'header.salt', SALT_BYTES);
  const out = new Uint8Array(HEADER_BYTES);
  out.set(MAGIC, 0);
  out[4] = header.version;
  out[5] = header.type;
  out[6] = header.codec;
  out[7] = 0;
  out.set(header.keyId, 8);
  out.set(header.salt, 16);
  return out;
}

/** Parses and checks the header (FORMAT.md §3 table, first two rows). Throws ObjectFormatError. */
export function readHeader(object: Uint8Array): ObjectHeader {
  abytes(object, 'object');
  if (object.length < HEADER_BYTES) throw new ObjectFormatError('truncated_header');
  if (!equalBytes(object.subarray(0, 4), MAGIC)) throw new ObjectFormatError('bad_magic');
  const version = object[4]!;
  const type = object[5]!;
  const codec = object[6]!;
  if (version !== FORMAT_VERSION) throw new ObjectFormatError('unsupported_version');
  if (!isObjectType(type)) throw new ObjectFormatError('unknown_type');
  if (!isCodec(codec)) throw new ObjectFormatError('unknown_codec');
  if (object[7] !== 0) throw new ObjectFormatError('bad_reserved');
  return { version, type, codec, keyId: object.slice(8, 16), salt: object.slice(16, HEADER_BYTES) };
}

function objectKey(purposeKey: Uint8Array, salt: Uint8Array, type: ObjectType): Uint8Array {
  const info = concatBytes(utf8ToBytes(OBJECT_KEY_LABEL), Uint8Array.of(0x00, type));
  return hkdfSha256(purposeKey, salt, info, KEY_BYTES);
}

function associatedData(header: Uint8Array, vaultId: string, identity: string): Uint8Array {
  const v = utf8ToBytes(vaultId);
  const id = utf8ToBytes(identity);
  return concatBytes(header, u32be(v.length), v, u32be(id.length), id);
}

/** u88be(i) || last flag (age STREAM, FORMAT.md §3 "Body"). */
function chunkNonce(i: number, last: boolean): Uint8Array {
  const nonce = new Uint8Array(NONCE_BYTES);
  new DataView(nonce.buffer).setBigUint64(3, BigInt(i), false); // bytes 3..10 of the 11-byte counter
  nonce[11] = last ? 0x01 : 0x00;
  return nonce;
}

/**
 * The body (FORMAT.md §3 "Body"): chunks 0 … `chunks`−1, each from
 * `chunkAt(i)` (called in order, at most CHUNK_BYTES), sealed with
 * AES-256-GCM under `key` with nonce i and the last flag on the final one,
 * handed to `write` as ciphertext then tag. The one seal loop: sealEncoded
 * and sealObjectParts differ only in where chunks come from and go to.
 */
function sealChunks(
  key: Uint8Array,
  ad: Uint8Array,
  chunks: number,
  chunkAt: (i: number) => Uint8Array,
  write: (bytes: Uint8Array) => void,
): void {
  for (let i = 0; i < chunks; i++) {
    const cipher = createCipheriv('aes-256-gcm', key, chunkNonce(i, i === chunks - 1), { authTagLength: TAG_BYTES });
    cipher.setAAD(ad);
    const ct = cipher.update(chunkAt(i));
    const tail = cipher.final();
    write(ct);
    if (tail.length > 0) write(tail);
    write(cipher.getAuthTag());
    // Each chunk's ciphertext is a new 64 KiB buffer, garbage once written (see CHUNK_GC_MASK).
    if ((i & CHUNK_GC_MASK) === CHUNK_GC_MASK) collectYoung();
  }
}

export interface SealParams {
  type: ObjectType;
  codec: Codec;
  keyId: Uint8Array;
  purposeKey: Uint8Array;
  vaultId: string;
  identity: string;
  plaintext: Uint8Array;
  /** 32 random bytes, fresh for every object. */
  salt: Uint8Array;
}

export function sealObject(params: SealParams): Uint8Array {
  abytes(params.plaintext, 'plaintext');
  if (typeof params.codec !== 'number' || !isCodec(params.codec)) throw new RangeError('codec must be a Codec');
  // A view of a reused buffer: encrypted into the object right away, before anything else compresses.
  return sealEncoded({ ...params, encoded: compressTransient(params.codec, params.plaintext) });
}

/**
 * sealObject for data already encoded with `codec` (a zstd frame made with
 * compressStream): the same object sealObject makes of the plaintext. With
 * `into` long enough, the object is written into it and the result is a view
 * of it (a caller sealing many objects one after another reuses one buffer).
 */
export function sealEncoded(params: Omit<SealParams, 'plaintext'> & { encoded: Uint8Array; into?: Uint8Array }): Uint8Array {
  const type = aobjectType(params.type, 'type');
  if (typeof params.codec !== 'number' || !isCodec(params.codec)) throw new RangeError('codec must be a Codec');
  abytes(params.keyId, 'keyId', KEY_ID_BYTES);
  abytes(params.purposeKey, 'purposeKey', KEY_BYTES);
  abytes(params.salt, 'salt', SALT_BYTES);
  const data = abytes(params.encoded, 'encoded');
  const vaultId = avaultId(params.vaultId);
  const identity = aidentity(params.identity);

  const header = encodeHeader({ version: FORMAT_VERSION, type, codec: params.codec, keyId: params.keyId, salt: params.salt });
  const chunks = Math.max(1, Math.ceil(data.length / CHUNK_BYTES));
  const size = HEADER_BYTES + data.length + chunks * TAG_BYTES;
  const out = params.into && params.into.length >= size ? params.into.subarray(0, size) : new Uint8Array(size);
  out.set(header, 0);
  const key = objectKey(params.purposeKey, params.salt, type);
  const ad = associatedData(header, vaultId, identity);
  let at = HEADER_BYTES;
  try {
    sealChunks(
      key,
      ad,
      chunks,
      (i) => data.subarray(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES),
      (bytes) => {
        out.set(bytes, at);
        at += bytes.length;
      },
    );
  } finally {
    key.fill(0);
  }
  return out;
}

/**
 * Seals the concatenation of `parts` (codec none) chunk by chunk, handing
 * each sealed piece to `write` as it is made: an object of any size costs one
 * 64 KiB staging buffer, never a copy of its plaintext or of itself. The
 * bytes written are exactly sealObject's for the same plaintext and salt.
 */
export function sealObjectParts(params: Omit<SealParams, 'plaintext' | 'codec'> & { parts: Uint8Array[] }, write: (bytes: Uint8Array) => void): void {
  const type = aobjectType(params.type, 'type');
  abytes(params.keyId, 'keyId', KEY_ID_BYTES);
  abytes(params.purposeKey, 'purposeKey', KEY_BYTES);
  abytes(params.salt, 'salt', SALT_BYTES);
  for (const p of params.parts) abytes(p, 'part');
  const vaultId = avaultId(params.vaultId);
  const identity = aidentity(params.identity);
  const header = encodeHeader({ version: FORMAT_VERSION, type, codec: Codec.none, keyId: params.keyId, salt: params.salt });
  const total = params.parts.reduce((n, p) => n + p.length, 0);
  const chunks = Math.max(1, Math.ceil(total / CHUNK_BYTES));
  const key = objectKey(params.purposeKey, params.salt, type);
  const ad = associatedData(header, vaultId, identity);
  const staging = new Uint8Array(CHUNK_BYTES);
  let part = 0;
  let offset = 0; // in params.parts[part]
  /** Chunk i of the concatenation (called in order): a view of one part, or the pieces copied into `staging`. */
  const chunkAt = (i: number): Uint8Array => {
    const want = Math.min(CHUNK_BYTES, total - i * CHUNK_BYTES);
    let chunk: Uint8Array;
    const cur = params.parts[part];
    if (cur !== undefined && cur.length - offset >= want) {
      chunk = cur.subarray(offset, offset + want); // within one part: no copy
      offset += want;
    } else {
      let got = 0;
      while (got < want) {
        const p = params.parts[part]!;
        const n = Math.min(want - got, p.length - offset);
        staging.set(p.subarray(offset, offset + n), got);
        got += n;
        offset += n;
        if (offset === p.length) {
          part++;
          offset = 0;
        }
      }
      chunk = staging.subarray(0, want);
    }
    while (part < params.parts.length && offset === params.parts[part]!.length) {
      part++;
      offset = 0;
    }
    return chunk;
  };
  try {
    write(header);
    sealChunks(key, ad, chunks, chunkAt, write);
  } finally {
    key.fill(0);
    staging.fill(0);
  }
}

export interface OpenParams {
  /** The type the caller expects; another type in the header is a format error. */
  type: ObjectType;
  /** The expected key id; another one in the header is a WrongKeyError. */
  keyId: Uint8Array;
  purposeKey: Uint8Array;
  vaultId: string;
  identity: string;
  object: Uint8Array;
  /** Largest plaintext (after decompression) the caller accepts, in bytes. */
  maxPlaintext: number;
  /**
   * Codec none only: decrypt into `object`'s own bytes (the caller gives the
   * buffer up; the result is a view of it). Opening an 8 MiB local index then
   * needs no second 8 MiB.
   */
  inPlace?: boolean;
}

/**
 * Opens an object. Throws ObjectFormatError, WrongKeyError or
 * AuthenticationError in the order of FORMAT.md §3; returns the plaintext
 * only after every chunk authenticated.
 */
export function openObject(params: OpenParams): Uint8Array {
  const { codec, data, maxPlaintext } = decryptObject(params);
  try {
    return decompress(codec, data, maxPlaintext);
  } catch (err) {
    throw codecFailure(err);
  }
}

/**
 * openObject, with the plaintext taken piece by piece through the reader
 * (every chunk is authenticated before the first piece is handed out): a
 * restore writes an 8 MiB pack through a 1 MiB window. Decompression errors
 * surface from the reader as ObjectFormatError, as from openObject. The
 * reader is valid until this thread's next openObjectReader call.
 */
export function openObjectReader(params: Omit<OpenParams, 'inPlace'>): DecompressReader {
  const { codec, data, maxPlaintext } = decryptObject(params);
  let reader: DecompressReader;
  try {
    reader = decompressReader(codec, data, maxPlaintext);
  } catch (err) {
    throw codecFailure(err);
  }
  return {
    read(into) {
      try {
        return reader.read(into);
      } catch (err) {
        throw codecFailure(err);
      }
    },
    end() {
      try {
        reader.end();
      } catch (err) {
        throw codecFailure(err);
      }
    },
  };
}

function codecFailure(err: unknown): unknown {
  if (err instanceof CodecError) {
    return new ObjectFormatError(err.reason === 'too_large' ? 'too_large' : 'bad_compression', { cause: err });
  }
  return err;
}

/** Checks the header and decrypts every chunk (each tag verified); the still-encoded body. */
function decryptObject(params: OpenParams): { codec: Codec; data: Uint8Array; maxPlaintext: number } {
  const type = aobjectType(params.type, 'type');
  abytes(params.keyId, 'keyId', KEY_ID_BYTES);
  abytes(params.purposeKey, 'purposeKey', KEY_BYTES);
  const vaultId = avaultId(params.vaultId);
  const identity = aidentity(params.identity);
  const maxPlaintext = anumber(params.maxPlaintext, 'maxPlaintext');
  const object = abytes(params.object, 'object');

  const header = readHeader(object);
  if (header.type !== type) throw new ObjectFormatError('unexpected_type');
  if (!equalBytes(header.keyId, params.keyId)) throw new WrongKeyError();

  // Body layout: n-1 full sealed chunks, then a final sealed chunk of 16..65552
  // bytes. Only an empty plaintext has an empty final chunk (FORMAT.md §3).
  const body = object.subarray(HEADER_BYTES);
  const chunks = Math.max(1, Math.ceil(body.length / SEALED_CHUNK_BYTES));
  const finalLength = body.length - (chunks - 1) * SEALED_CHUNK_BYTES;
  if (finalLength < TAG_BYTES || (chunks > 1 && finalLength === TAG_BYTES)) {
    throw new ObjectFormatError('truncated_body');
  }

  // Compressed data is only read by the decompression below: it goes into a buffer this thread reuses
  // (opening a restore's packs one after another allocates nothing per pack here).
  const length = body.length - chunks * TAG_BYTES;
  const data =
    header.codec !== Codec.none ? transientBuffer(length) : params.inPlace ? object.subarray(0, length) : new Uint8Array(length);
  const key = objectKey(params.purposeKey, header.salt, type);
  const ad = associatedData(object.subarray(0, HEADER_BYTES), vaultId, identity);
  try {
    let at = 0;
    for (let i = 0; i < chunks; i++) {
      const sealed = body.subarray(i * SEALED_CHUNK_BYTES, Math.min(body.length, (i + 1) * SEALED_CHUNK_BYTES));
      const ct = sealed.subarray(0, sealed.length - TAG_BYTES);
      const decipher = createDecipheriv('aes-256-gcm', key, chunkNonce(i, i === chunks - 1), { authTagLength: TAG_BYTES });
      decipher.setAAD(ad);
      decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
      const pt = decipher.update(ct);
      data.set(pt, at);
      at += pt.length;
      if ((i & CHUNK_GC_MASK) === CHUNK_GC_MASK) collectYoung();
      try {
        const tail = decipher.final(); // verifies the tag (constant time, in OpenSSL)
        data.set(tail, at);
        at += tail.length;
      } catch {
        throw new AuthenticationError();
      }
    }
  } catch (err) {
    data.fill(0); // nothing unauthenticated leaves, not even by accident
    throw err;
  } finally {
    key.fill(0);
  }

  return { codec: header.codec as Codec, data, maxPlaintext };
}

/**
 * node:crypto hands back each chunk's output in a fresh 64 KiB buffer, below
 * glibc's mmap threshold: hundreds of them (an 8 MiB index, a pack) pile up
 * in the heap until V8 collects, and the heap does not shrink afterwards. A
 * young collection every 16 chunks (1 MiB) frees them as they go: measured
 * here, ~20 MB less peak memory for a 1 GiB database's snapshot, for well
 * under a millisecond each.
 */
const CHUNK_GC_MASK = 15;

let transient = new Uint8Array(0);
/** A view of this thread's reused buffer, `length` bytes long (valid until the next call). */
function transientBuffer(length: number): Uint8Array {
  if (transient.length < length) transient = new Uint8Array(length);
  return transient.subarray(0, length);
}

/** The canary's fixed plaintext (FORMAT.md §3 "Canary"). */
export function canaryPlaintext(vaultId: string): Uint8Array {
  return utf8ToBytes(`casa canary v1\n${avaultId(vaultId)}`);
}

const CANARY_IDENTITY = 'canary';
const CANARY_MAX_PLAINTEXT = 64;

/** The vault canary: a small object that proves a phrase is right before anything is written. */
export function sealCanary(keys: VaultKeys, salt: Uint8Array): Uint8Array {
  return sealObject({
    type: ObjectType.canary,
    codec: Codec.none,
    keyId: keys.keyId,
    purposeKey: keys.canaryKey,
    vaultId: keys.vaultId,
    identity: CANARY_IDENTITY,
    plaintext: canaryPlaintext(keys.vaultId),
    salt,
  });
}

/**
 * Checks that `canary` (the vault `vaultId`'s canary, as the relay keeps it)
 * opens under `keys`. WrongKeyError means another phrase; AuthenticationError
 * means tampering or another vault; returns normally only if the phrase is right.
 */
export function openCanary(keys: VaultKeys, vaultId: string, canary: Uint8Array): void {
  const plaintext = openObject({
    type: ObjectType.canary,
    keyId: keys.keyId,
    purposeKey: keys.canaryKey,
    vaultId,
    identity: CANARY_IDENTITY,
    object: canary,
    maxPlaintext: CANARY_MAX_PLAINTEXT,
  });
  if (!equalBytes(plaintext, canaryPlaintext(vaultId))) throw new ObjectFormatError('bad_canary');
}
