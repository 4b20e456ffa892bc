/**
 * An independent reference implementation of docs/FORMAT.md §1–§4 and §9,
 * written from the document on @noble/hashes, @noble/ciphers and
 * @noble/curves only (no node:crypto, no code from src/). scripts/make-vectors.mjs uses it to write the frozen
 * vectors; test/vectors/vectors.test.ts checks both it and casa's
 * implementation (node:crypto) against those files.
 *
 * Sources: RFC 8018 §5.2 (PBKDF2), RFC 5869 §2 (HKDF), NIST SP 800-38D
 * (AES-GCM), RFC 8032 §5.1 (Ed25519), RFC 7748 §5 (X25519), BIP-39, age's
 * STREAM (C2SP age.md "Payload").
 */
import { gcm } from '@noble/ciphers/aes.js';
import { ed25519, x25519 } from '@noble/curves/ed25519.js';
import { hkdf } from '@noble/hashes/hkdf.js';
import { pbkdf2 } from '@noble/hashes/pbkdf2.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { mnemonicToEntropy } from '@scure/bip39';
import { wordlist } from '@scure/bip39/wordlists/english.js';

const utf8 = (s) => new TextEncoder().encode(s);

export const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
export function unhex(s) {
  if (typeof s !== 'string' || s.length % 2 !== 0 || !/^[0-9a-f]*$/.test(s)) throw new Error('vector hex is malformed');
  return Uint8Array.from(s.match(/../g) ?? [], (h) => parseInt(h, 16));
}
export const b64u = (b) => Buffer.from(b).toString('base64url');
export const sha256hex = (b) => hex(sha256(b));

// Written out from FORMAT.md §2 on purpose, not imported from src/crypto/kdf.ts:
// a shared constant could not catch a typo in either.
export const LABELS = {
  vaultId: 'casa/v1/vault-id',
  vaultAuth: 'casa/v1/vault-auth',
  keyId: 'casa/v1/key-id',
  canaryKey: 'casa/v1/canary-key',
  snapshotKey: 'casa/v1/snapshot-key',
  changesetKey: 'casa/v1/changeset-key',
  idMacKey: 'casa/v1/id-mac-key',
  localIndexKey: 'casa/v1/local-index-key',
};

// §1: the reference checks a normalised phrase (24 list words + checksum); the
// forgiving parser is casa's alone and is checked against the vector's "typed" form.
export function entropyOf(normalised) {
  if (normalised.split(' ').length !== 24) throw new Error('not 24 words');
  return mnemonicToEntropy(normalised, wordlist);
}

// §2
export function root(normalised) {
  return pbkdf2(sha256, utf8(normalised), utf8('casa/v1/root-salt'), { c: 600_000, dkLen: 32 });
}

export function keysFromRoot(rootKey) {
  const sub = (label, n) => hkdf(sha256, rootKey, undefined, utf8(label), n);
  const authSeed = sub(LABELS.vaultAuth, 32);
  const keyId = sub(LABELS.keyId, 8);
  return {
    vaultId: hex(sub(LABELS.vaultId, 16)),
    keyId,
    keyIdHex: hex(keyId),
    authSeed,
    authPublicKey: ed25519.getPublicKey(authSeed),
    canaryKey: sub(LABELS.canaryKey, 32),
    snapshotKey: sub(LABELS.snapshotKey, 32),
    changesetKey: sub(LABELS.changesetKey, 32),
    idMacKey: sub(LABELS.idMacKey, 32),
    localIndexKey: sub(LABELS.localIndexKey, 32),
  };
}

// §3
const CHUNK = 65536;
const TAG = 16;
const u32 = (n) => Uint8Array.of(n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
const cat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) (out.set(p, at), (at += p.length));
  return out;
};

export function header({ type, codec, keyId, salt }) {
  return cat(utf8('CASA'), Uint8Array.of(1, type, codec, 0), keyId, salt);
}

export function objectKey(purposeKey, salt, type) {
  return hkdf(sha256, purposeKey, salt, cat(utf8('casa/v1/object-key'), Uint8Array.of(0, type)), 32);
}

export function ad(headerBytes, vaultId, identity) {
  const v = utf8(vaultId);
  const id = utf8(identity);
  return cat(headerBytes, u32(v.length), v, u32(id.length), id);
}

function nonce(i, last) {
  const n = new Uint8Array(12);
  let x = i;
  for (let k = 10; k >= 0 && x > 0; k--) (n[k] = x % 256, (x = Math.floor(x / 256)));
  n[11] = last ? 1 : 0;
  return n;
}

/** Seals already-compressed `data` (the reference has no zstd; the caller compresses). */
export function seal({ type, codec, keyId, purposeKey, vaultId, identity, data, salt }) {
  const h = header({ type, codec, keyId, salt });
  const key = objectKey(purposeKey, salt, type);
  const a = ad(h, vaultId, identity);
  const n = Math.max(1, Math.ceil(data.length / CHUNK));
  const parts = [h];
  for (let i = 0; i < n; i++) {
    parts.push(gcm(key, nonce(i, i === n - 1), a).encrypt(data.subarray(i * CHUNK, (i + 1) * CHUNK)));
  }
  return cat(...parts);
}

export class RefError extends Error {
  constructor(cls, reason) {
    super(reason ? `${cls}: ${reason}` : cls);
    this.cls = cls;
    this.reason = reason;
  }
}

/**
 * Opens an object, returning the still-compressed data and the header codec.
 * Failures are RefError(class, reason) in the order of the FORMAT.md §3 table.
 * The size limit for codec none is checked here; for zstd the caller
 * decompresses and checks.
 */
export function open({ type, keyId, purposeKey, vaultId, identity, object, maxPlaintext }) {
  const fmt = (reason) => new RefError('ObjectFormatError', reason);
  if (object.length < 48) throw fmt('truncated_header');
  if (object[0] !== 0x43 || object[1] !== 0x41 || object[2] !== 0x53 || object[3] !== 0x41) throw fmt('bad_magic');
  if (object[4] !== 1) throw fmt('unsupported_version');
  // §3's types 1–7, and §9's type 8 (keyring).
  if (object[5] < 1 || object[5] > 8) throw fmt('unknown_type');
  if (object[6] > 1) throw fmt('unknown_codec');
  if (object[7] !== 0) throw fmt('bad_reserved');
  if (object[5] !== type) throw fmt('unexpected_type');
  if (hex(object.subarray(8, 16)) !== hex(keyId)) throw new RefError('WrongKeyError');
  const body = object.subarray(48);
  const n = Math.max(1, Math.ceil(body.length / (CHUNK + TAG)));
  const last = body.length - (n - 1) * (CHUNK + TAG);
  if (last < TAG || (n > 1 && last === TAG)) throw fmt('truncated_body');
  const key = objectKey(purposeKey, object.subarray(16, 48), type);
  const a = ad(object.subarray(0, 48), vaultId, identity);
  const parts = [];
  for (let i = 0; i < n; i++) {
    const sealed = body.subarray(i * (CHUNK + TAG), (i + 1) * (CHUNK + TAG));
    try {
      parts.push(gcm(key, nonce(i, i === n - 1), a).decrypt(sealed));
    } catch {
      throw new RefError('AuthenticationError');
    }
  }
  const data = cat(...parts);
  if (object[6] === 0 && data.length > maxPlaintext) throw fmt('too_large');
  return { codec: object[6], data };
}

// §4
export function signedMessage(purpose, fields) {
  return utf8(`casa/v1/${purpose}\n${JSON.stringify(fields)}`);
}
export const sign = (seed, message) => ed25519.sign(message, seed);
export const publicKey = (seed) => ed25519.getPublicKey(seed);

// §9: epochs, the keyring and its wraps, signed records.

// Written out from FORMAT.md §9, not imported from src/crypto/keyring.ts.
export const LABELS_V2 = {
  deviceExchange: 'casa/v2/device-exchange',
  deviceId: 'casa/v2/device-id',
  recoveryExchange: 'casa/v2/recovery-exchange',
  keyringWrap: 'casa/v2/keyring-wrap',
  wrapPrefix: 'casa/v2/wrap-',
};
export const KEYRING_TYPE = 8;
/** casa's cap on a keyring's plaintext (not in FORMAT.md; no vector comes near it). */
const KEYRING_MAX_PLAINTEXT = 1 << 20;
const EMPTY = new Uint8Array(0);
// RFC 7748 §4.1: the u-coordinate of Curve25519's base point, 9, as 32 little-endian bytes.
const U9 = cat(Uint8Array.of(9), new Uint8Array(31));
const badKeyring = () => new RefError('ObjectFormatError', 'bad_keyring');

/** RFC 7748 §5 X25519(k, u); an all-zero result is refused (FORMAT.md §9: "all-zero: refused"). */
export function X25519(k, u) {
  let out;
  try {
    out = x25519.scalarMult(k, u);
  } catch {
    throw badKeyring(); // @noble/curves refuses the all-zero result itself
  }
  if (out.every((b) => b === 0)) throw badKeyring();
  return out;
}

const hk = (ikm, salt, info, n) => hkdf(sha256, ikm, salt, utf8(info), n);

/** An epoch's keys: §2's derivation with the epoch secret as the root, without vault id and auth key. */
export function epochKeys(secret, epoch) {
  const k = keysFromRoot(secret);
  return { epoch, keyId: k.keyId, keyIdHex: k.keyIdHex, canaryKey: k.canaryKey, snapshotKey: k.snapshotKey, changesetKey: k.changesetKey, idMacKey: k.idMacKey };
}

/** A device's public keys and id, from its Ed25519 seed. */
export function deviceKeys(seed) {
  const signingPublicKey = ed25519.getPublicKey(seed);
  const exchangeSecret = hk(seed, EMPTY, LABELS_V2.deviceExchange, 32);
  return {
    signingPublicKey,
    exchangeSecret,
    exchangePublicKey: X25519(exchangeSecret, U9),
    deviceId: hex(hk(signingPublicKey, EMPTY, LABELS_V2.deviceId, 8)),
  };
}

/** The paper's keys, from the §2 root of its phrase. */
export function paperKeys(rootKey) {
  const k = keysFromRoot(rootKey);
  const exchangeSecret = hk(rootKey, EMPTY, LABELS_V2.recoveryExchange, 32);
  return { authSeed: k.authSeed, authPublicKey: k.authPublicKey, exchangeSecret, exchangePublicKey: X25519(exchangeSecret, U9), recoveryId: k.vaultId };
}

/** A keyring: { vaultId, localIndexKey, epochs: [epochKeys(…), …] }, oldest first. Its plaintext, fields in §9's order. */
export function encodeKeyring(ring) {
  return utf8(
    JSON.stringify({
      v: 1,
      vault: ring.vaultId,
      local: b64u(ring.localIndexKey),
      epochs: ring.epochs.map((e) => ({
        e: e.epoch,
        id: e.keyIdHex,
        canary: b64u(e.canaryKey),
        snapshot: b64u(e.snapshotKey),
        changeset: b64u(e.changesetKey),
        idmac: b64u(e.idMacKey),
      })),
    }),
  );
}

/**
 * The keyring of a plaintext. Stricter than it need be: the plaintext must be
 * exactly what encodeKeyring writes (field order, no extra fields, canonical
 * base64url), since §9 gives one form.
 */
export function decodeKeyring(bytes) {
  let d;
  try {
    d = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw badKeyring();
  }
  const key = (s) => {
    if (typeof s !== 'string' || !/^[A-Za-z0-9_-]{43}$/.test(s)) throw badKeyring();
    const b = new Uint8Array(Buffer.from(s, 'base64url'));
    if (b.length !== 32 || b64u(b) !== s) throw badKeyring();
    return b;
  };
  if (typeof d !== 'object' || d === null || Array.isArray(d) || d.v !== 1) throw badKeyring();
  if (typeof d.vault !== 'string' || !/^[0-9a-f]{32}$/.test(d.vault) || !Array.isArray(d.epochs) || d.epochs.length === 0) throw badKeyring();
  const epochs = d.epochs.map((e, i) => {
    if (typeof e !== 'object' || e === null || e.e !== i + 1 || typeof e.id !== 'string' || !/^[0-9a-f]{16}$/.test(e.id)) throw badKeyring();
    return { epoch: i + 1, keyId: unhex(e.id), keyIdHex: e.id, canaryKey: key(e.canary), snapshotKey: key(e.snapshot), changesetKey: key(e.changeset), idMacKey: key(e.idmac) };
  });
  const ring = { vaultId: d.vault, localIndexKey: key(d.local), epochs };
  if (hex(encodeKeyring(ring)) !== hex(bytes)) throw badKeyring();
  return ring;
}

/** Every intermediate of a wrap of `ring` (its newest epoch) to one recipient. */
export function wrapParts(ring, recipientId, recipientPublicKey) {
  const cur = ring.epochs[ring.epochs.length - 1];
  const d = (w) => hk(cur.canaryKey, EMPTY, `${LABELS_V2.wrapPrefix}${w}\n${recipientId}`, 32);
  const ephemeralSecret = d('ephemeral');
  const ephemeralPublic = X25519(ephemeralSecret, U9);
  const salt = d('salt');
  const shared = X25519(ephemeralSecret, recipientPublicKey);
  const wrapKey = hkdf(sha256, shared, cat(ephemeralPublic, recipientPublicKey), utf8(LABELS_V2.keyringWrap), 32);
  return {
    ephemeralSecret,
    ephemeralPublic,
    salt,
    shared,
    wrapKey,
    objectKey: objectKey(wrapKey, salt, KEYRING_TYPE),
    identity: `keyring:${cur.epoch}:${recipientId}`,
  };
}

/** E || object(type 8, codec none, the newest epoch's key id, wrapKey, "keyring:<epoch>:<recipient id>"). */
export function wrapKeyring(ring, recipientId, recipientPublicKey) {
  const cur = ring.epochs[ring.epochs.length - 1];
  const p = wrapParts(ring, recipientId, recipientPublicKey);
  const object = seal({
    type: KEYRING_TYPE,
    codec: 0,
    keyId: cur.keyId,
    purposeKey: p.wrapKey,
    vaultId: ring.vaultId,
    identity: p.identity,
    data: encodeKeyring(ring),
    salt: p.salt,
  });
  return cat(p.ephemeralPublic, object);
}

/** True when `ring` holds every epoch of `older` with the same keys, and the same vault and local-index key. */
export function extendsRing(ring, older) {
  if (ring.vaultId !== older.vaultId || hex(ring.localIndexKey) !== hex(older.localIndexKey) || ring.epochs.length < older.epochs.length) return false;
  const same = (a, b) => ['keyIdHex', 'canaryKey', 'snapshotKey', 'changesetKey', 'idMacKey'].every((f) => (typeof a[f] === 'string' ? a[f] === b[f] : hex(a[f]) === hex(b[f])));
  return older.epochs.every((o, i) => same(ring.epochs[i], o));
}

/**
 * Opens a wrap as recipient `recipientId` holding `exchangeSecret`: §3's
 * opening of the object, then §9's checks (the vault, the record's epoch and
 * key id, and every epoch of `previous` unchanged). Failures are RefError.
 */
export function openWrap({ wrap, vaultId, epoch, keyIdHex, recipientId, exchangeSecret, previous }) {
  if (wrap.length < 32 + 48) throw new RefError('ObjectFormatError', 'truncated_header');
  const E = wrap.subarray(0, 32);
  const recipientPublicKey = X25519(exchangeSecret, U9);
  const wrapKey = hkdf(sha256, X25519(exchangeSecret, E), cat(E, recipientPublicKey), utf8(LABELS_V2.keyringWrap), 32);
  const { data } = open({
    type: KEYRING_TYPE,
    keyId: unhex(keyIdHex),
    purposeKey: wrapKey,
    vaultId,
    identity: `keyring:${epoch}:${recipientId}`,
    object: wrap.subarray(32),
    maxPlaintext: KEYRING_MAX_PLAINTEXT,
  });
  const ring = decodeKeyring(data);
  const cur = ring.epochs[ring.epochs.length - 1];
  if (ring.vaultId !== vaultId || cur.epoch !== epoch || cur.keyIdHex !== keyIdHex) throw badKeyring();
  if (previous && !extendsRing(ring, previous)) throw badKeyring();
  return ring;
}

/** The fields each signed record signs, in §9's order (signed with §4's signedMessage). */
export const RECORD_FIELDS = {
  'device-cert': (c) => [c.vaultId, c.deviceId, c.signingKey, c.exchangeKey, c.name, c.issuedAt, c.issuer],
  revoke: (r) => [r.vaultId, r.deviceId, r.revokedAt, r.issuer],
  epoch: (e) => [e.vaultId, e.epoch, e.keyId, e.prevKeyId, e.recoveryKey, e.markCursor, e.markSeq, e.createdAt, e.issuer, e.recipients],
  recovery: (r) => [r.vaultId, r.n, r.recoveryId, r.authKey, r.exchangeKey, r.members, r.time],
};

/** An epoch record's `recipients`: `<id>=<sha256 hex of the wrap>`, sorted by id, joined by `,`. */
export function recipientsField(pairs) {
  return [...pairs]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([id, h]) => `${id}=${h}`)
    .join(',');
}

/** RFC 8032 §5.1.7 verification, strict (not ZIP-215), as §4 says. */
export const verify = (publicKeyBytes, message, signature) => ed25519.verify(signature, message, publicKeyBytes, { zip215: false });

// Vector plumbing shared by the generator and the test.

/** Plaintext from a vector: inline hex, inline UTF-8, or a generator recipe for large inputs. */
export function plaintextOf(spec) {
  if ('hex' in spec) return unhex(spec.hex);
  if ('utf8' in spec) return utf8(spec.utf8);
  if (spec.recipe === 'byte i = (i * 7 + (i >> 8)) mod 256') {
    return Uint8Array.from({ length: spec.length }, (_, i) => (i * 7 + (i >> 8)) & 0xff);
  }
  if (spec.recipe === 'repeat utf8') {
    const unit = utf8(spec.unit);
    return Uint8Array.from({ length: spec.length }, (_, i) => unit[i % unit.length]);
  }
  throw new Error(`unknown plaintext recipe ${spec.recipe}`);
}

/** Applies a vector's mutation (what makes a bad case bad) to the sealed object. */
export function mutate(object, m) {
  if (!m) return object;
  let out = object.slice();
  if (m.truncateTo !== undefined) out = out.slice(0, m.truncateTo);
  if (m.append !== undefined) out = cat(out, unhex(m.append));
  if (m.xor !== undefined) out[m.xor.offset] ^= m.xor.mask;
  if (m.set !== undefined) out[m.set.offset] = m.set.value;
  return out;
}

/** Seals a vector's `seal` inputs with the reference (codec zstd: the stored `compressed` bytes). */
export function sealVector(v) {
  return seal({
    type: v.type,
    codec: v.codec,
    keyId: unhex(v.keyId),
    purposeKey: unhex(v.purposeKey),
    vaultId: v.vaultId,
    identity: v.identity,
    data: v.codec === 1 ? unhex(v.compressed) : plaintextOf(v.plaintext),
    salt: unhex(v.salt),
  });
}
