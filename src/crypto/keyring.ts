/**
 * Key epochs (docs/FORMAT.md §9, docs/SECURITY.md §2): the vault's data keys
 * come from a random secret per epoch, not from the phrase; a device holds
 * the keyring (every epoch's purpose keys, oldest first, and the vault's
 * local-index key), sealed to its X25519 exchange key and to the paper's.
 *
 *   epoch keys(secret)  = the purpose keys of vaultKeysFromRoot(secret) (the FORMAT.md §2 labels)
 *   exchange(seed)      = X25519 secret HKDF-SHA256(seed, "", "casa/v2/device-exchange", 32)
 *   recovery(root)      = signing seed sub("casa/v1/vault-auth"),
 *                         exchange secret sub("casa/v2/recovery-exchange"),
 *                         recovery id sub("casa/v1/vault-id") (the vault id of a vault made with this paper)
 *   wrap(ring, to)      = ephemeral X25519 public key (32) || object type 8 sealed under
 *                         HKDF-SHA256(X25519(eph, to), eph || to, "casa/v2/keyring-wrap", 32)
 *
 * A format-1 vault's keys, derived from the phrase, are its epoch 1.
 * Pure: randomness comes from the caller.
 */
import { x25519 } from '@noble/curves/ed25519.js';
import { sha256Hex } from './sha256.js';
import { isKeyId, isVaultId } from '../protocol/ids.js';
import { abytes, b64uDecode, b64uEncode, bytesToHex, bytesToUtf8, concatBytes, equalBytes, utf8ToBytes } from './bytes.js';
import { hkdfSha256, KEY_BYTES, LABELS, vaultKeysFromRoot, type EpochKeys, type EpochMark, type VaultKeys } from './kdf.js';
import { Codec, ObjectFormatError, ObjectType, openObject, sealObject } from './objects.js';
import { publicKeyFromSeed } from './sign.js';

export const EXCHANGE_KEY_BYTES = 32;
export const WRAP_LABEL = 'casa/v2/keyring-wrap';
export const DEVICE_EXCHANGE_LABEL = 'casa/v2/device-exchange';
export const RECOVERY_EXCHANGE_LABEL = 'casa/v2/recovery-exchange';
/** A keyring of a thousand epochs is ~200 KB; anything larger is not one. */
const KEYRING_MAX_PLAINTEXT = 1 << 20;

export type { EpochKeys, EpochMark };

export interface Keyring {
  vaultId: string;
  /** HMAC key of device-local files (page index, sync state): the same in every epoch. */
  localIndexKey: Uint8Array;
  /** Every epoch's keys, epochs[i].epoch === i + 1. */
  epochs: EpochKeys[];
}

/** The purpose keys of an epoch secret (the FORMAT.md §2 labels, applied to the secret). */
export function epochKeys(secret: Uint8Array, epoch: number): EpochKeys {
  abytes(secret, 'secret', KEY_BYTES);
  const k = vaultKeysFromRoot(secret);
  return { epoch, keyId: k.keyId, keyIdHex: k.keyIdHex, canaryKey: k.canaryKey, snapshotKey: k.snapshotKey, changesetKey: k.changesetKey, idMacKey: k.idMacKey };
}

/** A format-1 vault's keys (derived from the phrase's root) as its epoch 1, with its local-index key. */
export function legacyKeyring(root: Uint8Array): Keyring {
  const k = vaultKeysFromRoot(root);
  return {
    vaultId: k.vaultId,
    localIndexKey: k.localIndexKey,
    epochs: [{ epoch: 1, keyId: k.keyId, keyIdHex: k.keyIdHex, canaryKey: k.canaryKey, snapshotKey: k.snapshotKey, changesetKey: k.changesetKey, idMacKey: k.idMacKey }],
  };
}

/** A new vault's keyring: epoch 1 from a random secret, and a random local-index key. */
export function newKeyring(vaultId: string, random: (n: number) => Uint8Array): Keyring {
  return { vaultId, localIndexKey: abytes(random(KEY_BYTES), 'random', KEY_BYTES), epochs: [epochKeys(abytes(random(KEY_BYTES), 'random', KEY_BYTES), 1)] };
}

/** The keyring with one more epoch (a fresh random secret). */
export function nextEpoch(ring: Keyring, random: (n: number) => Uint8Array): Keyring {
  return { ...ring, epochs: [...ring.epochs, epochKeys(abytes(random(KEY_BYTES), 'random', KEY_BYTES), ring.epochs.length + 1)] };
}

export function currentEpoch(ring: Keyring): EpochKeys {
  return ring.epochs[ring.epochs.length - 1]!;
}

/**
 * The keys commands use: the current epoch's for sealing, and every epoch's
 * by key id for opening (`keysFor`). `marks[k]` is where epoch k stopped
 * being current (absent for the current epoch).
 */
export function vaultKeysOf(ring: Keyring, marks: Record<number, EpochMark> = {}): VaultKeys {
  const cur = currentEpoch(ring);
  const epochs: NonNullable<VaultKeys['epochs']> = {};
  for (const e of ring.epochs) epochs[e.keyIdHex] = { ...e, ...(marks[e.epoch] ? { until: marks[e.epoch] } : {}) };
  return {
    vaultId: ring.vaultId,
    keyId: cur.keyId,
    keyIdHex: cur.keyIdHex,
    epoch: cur.epoch,
    canaryKey: cur.canaryKey,
    snapshotKey: cur.snapshotKey,
    changesetKey: cur.changesetKey,
    idMacKey: cur.idMacKey,
    localIndexKey: ring.localIndexKey,
    epochs,
  };
}

/**
 * The keys that open `object`: those of the epoch named by its header's key
 * id, with `keyIdHex`/`epoch` of that epoch; the current keys when the key id
 * is unknown (opening then fails as a wrong key).
 */
export function keysFor(keys: VaultKeys, object: Uint8Array): VaultKeys {
  if (!keys.epochs || object.length < 16) return keys;
  const hex = bytesToHex(object.subarray(8, 16));
  if (hex === keys.keyIdHex) return keys;
  const e = keys.epochs[hex];
  if (!e) return keys;
  return { ...keys, keyId: e.keyId, keyIdHex: e.keyIdHex, epoch: e.epoch, canaryKey: e.canaryKey, snapshotKey: e.snapshotKey, changesetKey: e.changesetKey, idMacKey: e.idMacKey };
}

/** An object sealed under an older epoch, at a place after that epoch ended (a revoked device's keys at work). */
export class EpochMarkError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EpochMarkError';
  }
}

/** The mark of the epoch that sealed `object`, when it is not the current one. */
export function markOf(keys: VaultKeys, object: Uint8Array): EpochMark | undefined {
  if (!keys.epochs || object.length < 16) return undefined;
  return keys.epochs[bytesToHex(object.subarray(8, 16))]?.until;
}

// ---------------------------------------------------------------- encoding

/** The keyring's plaintext: canonical JSON (FORMAT.md §9). */
export function encodeKeyring(ring: Keyring): Uint8Array {
  return utf8ToBytes(
    JSON.stringify({
      v: 1,
      vault: ring.vaultId,
      local: b64uEncode(ring.localIndexKey),
      epochs: ring.epochs.map((e) => ({
        e: e.epoch,
        id: e.keyIdHex,
        canary: b64uEncode(e.canaryKey),
        snapshot: b64uEncode(e.snapshotKey),
        changeset: b64uEncode(e.changesetKey),
        idmac: b64uEncode(e.idMacKey),
      })),
    }),
  );
}

export function decodeKeyring(bytes: Uint8Array): Keyring {
  const bad = () => new ObjectFormatError('bad_keyring');
  let d: Record<string, unknown>;
  try {
    d = JSON.parse(bytesToUtf8(bytes)) as Record<string, unknown>;
  } catch {
    throw bad();
  }
  if (typeof d !== 'object' || d === null || d.v !== 1 || !isVaultId(d.vault)) throw bad();
  if (typeof d.local !== 'string' || !Array.isArray(d.epochs) || d.epochs.length === 0) throw bad();
  const key = (v: unknown, n: number) => {
    if (typeof v !== 'string') throw bad();
    let b: Uint8Array;
    try {
      b = b64uDecode(v);
    } catch {
      throw bad();
    }
    if (b.length !== n) throw bad();
    return b;
  };
  const epochs = (d.epochs as unknown[]).map((x, i) => {
    const e = x as Record<string, unknown>;
    if (typeof e !== 'object' || e === null || e.e !== i + 1 || !isKeyId(e.id)) throw bad();
    return {
      epoch: i + 1,
      keyIdHex: e.id,
      keyId: Uint8Array.from(Buffer.from(e.id, 'hex')),
      canaryKey: key(e.canary, KEY_BYTES),
      snapshotKey: key(e.snapshot, KEY_BYTES),
      changesetKey: key(e.changeset, KEY_BYTES),
      idMacKey: key(e.idmac, KEY_BYTES),
    } satisfies EpochKeys;
  });
  if (new Set(epochs.map((e) => e.keyIdHex)).size !== epochs.length) throw bad();
  return { vaultId: d.vault, localIndexKey: key(d.local, KEY_BYTES), epochs };
}

// ---------------------------------------------------------------- exchange keys and wraps

export interface ExchangeKey {
  secret: Uint8Array;
  publicKey: Uint8Array;
}

function exchangeFrom(ikm: Uint8Array, label: string): ExchangeKey {
  const secret = hkdfSha256(ikm, new Uint8Array(0), utf8ToBytes(label), EXCHANGE_KEY_BYTES);
  return { secret, publicKey: x25519.getPublicKey(secret) };
}

/** A device's X25519 exchange key, from its Ed25519 seed (nothing more to keep). */
export function deviceExchangeKey(deviceSeed: Uint8Array): ExchangeKey {
  abytes(deviceSeed, 'deviceSeed', 32);
  return exchangeFrom(deviceSeed, DEVICE_EXCHANGE_LABEL);
}


export interface RecoveryKeys {
  /** The id a vault made with this paper has; after `rotate --phrase`, the relay's alias for the vault. */
  recoveryId: string;
  authSeed: Uint8Array;
  authPublicKey: Uint8Array;
  exchange: ExchangeKey;
}

/** The paper's keys, from its root (FORMAT.md §2's root). */
export function recoveryKeys(root: Uint8Array): RecoveryKeys {
  abytes(root, 'root', KEY_BYTES);
  const empty = new Uint8Array(0);
  const authSeed = hkdfSha256(root, empty, utf8ToBytes(LABELS.vaultAuth), KEY_BYTES);
  return {
    recoveryId: bytesToHex(hkdfSha256(root, empty, utf8ToBytes(LABELS.vaultId), 16)),
    authSeed,
    authPublicKey: publicKeyFromSeed(authSeed),
    exchange: exchangeFrom(root, RECOVERY_EXCHANGE_LABEL),
  };
}

/** X25519, with a low-order point (an all-zero shared secret, RFC 7748 §6.1) refused as a malformed keyring. */
function dh(secret: Uint8Array, publicKey: Uint8Array): Uint8Array {
  try {
    return x25519.getSharedSecret(secret, publicKey);
  } catch {
    throw new ObjectFormatError('bad_keyring');
  }
}

function wrapKey(shared: Uint8Array, eph: Uint8Array, to: Uint8Array): Uint8Array {
  if (shared.every((b) => b === 0)) throw new ObjectFormatError('bad_keyring');
  return hkdfSha256(shared, concatBytes(eph, to), utf8ToBytes(WRAP_LABEL), KEY_BYTES);
}

export function wrapIdentity(epoch: number, recipient: string): string {
  return `keyring:${epoch}:${recipient}`;
}

/**
 * The keyring sealed to one recipient's exchange key; its identity names the
 * epoch and the recipient. The ephemeral key and the salt are derived from
 * the new epoch's canary key and the recipient id (FORMAT.md §9), so every
 * recipient can make every other recipient's wrap again and check that all
 * of them hold this keyring (verifyWraps): a member cannot seal junk to the
 * paper, or different keyrings to different members.
 */
export function wrapKeyring(ring: Keyring, recipient: { id: string; exchangePublicKey: Uint8Array }): Uint8Array {
  abytes(recipient.exchangePublicKey, 'exchangePublicKey', EXCHANGE_KEY_BYTES);
  const cur = currentEpoch(ring);
  const derive = (what: string) => hkdfSha256(cur.canaryKey, new Uint8Array(0), utf8ToBytes(`casa/v2/wrap-${what}\n${recipient.id}`), 32);
  const eph = derive('ephemeral');
  const ephPub = x25519.getPublicKey(eph);
  const key = wrapKey(dh(eph, recipient.exchangePublicKey), ephPub, recipient.exchangePublicKey);
  const object = sealObject({
    type: ObjectType.keyring,
    codec: Codec.none,
    keyId: cur.keyId,
    purposeKey: key,
    vaultId: ring.vaultId,
    identity: wrapIdentity(cur.epoch, recipient.id),
    plaintext: encodeKeyring(ring),
    salt: derive('salt'),
  });
  return concatBytes(ephPub, object);
}

/** SHA-256 hex of each recipient's wrap, as an epoch record lists them. */
export function wrapHashes(ring: Keyring, recipients: { id: string; exchangePublicKey: Uint8Array }[]): Map<string, string> {
  return new Map(recipients.map((r) => [r.id, sha256Hex(wrapKeyring(ring, r))]));
}

/**
 * Opens a wrap made for `recipient` at `epoch` with key id `keyIdHex`; the
 * keyring must be of `vaultId`, end at that epoch with that key id, and
 * (given `previous`) hold every earlier epoch's keys unchanged.
 */
export function openWrap(p: {
  wrap: Uint8Array;
  vaultId: string;
  epoch: number;
  keyIdHex: string;
  recipient: string;
  exchange: ExchangeKey;
  previous?: Keyring;
}): Keyring {
  if (p.wrap.length < 32 + 48) throw new ObjectFormatError('truncated_header');
  const eph = p.wrap.subarray(0, 32);
  const key = wrapKey(dh(p.exchange.secret, eph), eph, p.exchange.publicKey);
  const plaintext = openObject({
    type: ObjectType.keyring,
    keyId: Uint8Array.from(Buffer.from(p.keyIdHex, 'hex')),
    purposeKey: key,
    vaultId: p.vaultId,
    identity: wrapIdentity(p.epoch, p.recipient),
    object: p.wrap.subarray(32),
    maxPlaintext: KEYRING_MAX_PLAINTEXT,
  });
  const ring = decodeKeyring(plaintext);
  const cur = currentEpoch(ring);
  if (ring.vaultId !== p.vaultId || cur.epoch !== p.epoch || cur.keyIdHex !== p.keyIdHex) throw new ObjectFormatError('bad_keyring');
  if (p.previous && !extends_(ring, p.previous)) throw new ObjectFormatError('bad_keyring');
  return ring;
}

/** True when `ring` holds every epoch of `older` with the same keys (and the same local-index key). */
export function extends_(ring: Keyring, older: Keyring): boolean {
  if (ring.vaultId !== older.vaultId || !equalBytes(ring.localIndexKey, older.localIndexKey) || ring.epochs.length < older.epochs.length) return false;
  return older.epochs.every((o, i) => {
    const e = ring.epochs[i]!;
    return (
      e.keyIdHex === o.keyIdHex &&
      equalBytes(e.canaryKey, o.canaryKey) &&
      equalBytes(e.snapshotKey, o.snapshotKey) &&
      equalBytes(e.changesetKey, o.changesetKey) &&
      equalBytes(e.idMacKey, o.idMacKey)
    );
  });
}

