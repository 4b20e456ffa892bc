/**
 * Phrase → keys (docs/FORMAT.md §2).
 *
 *   root      = PBKDF2-HMAC-SHA256(UTF-8(normalised phrase), UTF-8("casa/v1/root-salt"), 600000, 32)
 *               (RFC 8018 §5.2; the iteration count follows OWASP's 2023 figure for SHA-256)
 *   sub(L, n) = HKDF-SHA256(IKM = root, salt = empty, info = UTF-8(L), n)
 *               (RFC 5869 §2.2: an empty salt is HashLen zero bytes)
 *
 * Every label is versioned and used for exactly one key. Changing any constant
 * here is a new format version.
 */
import { hkdfSync, pbkdf2Sync } from 'node:crypto';
import { abytes, anumber, bytesToHex, utf8ToBytes } from './bytes.js';
import { parsePhrase } from './phrase.js';
import { publicKeyFromSeed } from './sign.js';

export const ROOT_SALT = 'casa/v1/root-salt';
export const ROOT_ITERATIONS = 600_000;
export const ROOT_KEY_BYTES = 32;

/** HKDF info labels, one per key (FORMAT.md §2 table). */
export const LABELS = {
  vaultId: 'casa/v1/vault-id',
  vaultAuth: 'casa/v1/vault-auth',
  keyId: 'casa/v1/key-id',
  canaryKey: 'casa/v1/canary-key',
  snapshotKey: 'casa/v1/snapshot-key',
  changesetKey: 'casa/v1/changeset-key',
  idMacKey: 'casa/v1/id-mac-key',
  localIndexKey: 'casa/v1/local-index-key',
} as const;

export const VAULT_ID_BYTES = 16;
export const KEY_ID_BYTES = 8;
export const KEY_BYTES = 32;

/** One key epoch's purpose keys (docs/FORMAT.md §9). */
export interface EpochKeys {
  epoch: number;
  keyId: Uint8Array;
  keyIdHex: string;
  canaryKey: Uint8Array;
  snapshotKey: Uint8Array;
  changesetKey: Uint8Array;
  idMacKey: Uint8Array;
}

/** Where an epoch stopped being current in the vault's history: the heads when the next epoch began. */
export interface EpochMark {
  cursor: number;
  seq: number;
}

export interface VaultKeys {
  /** Public vault id: 32 lowercase hex characters. */
  vaultId: string;
  /** 8-byte key id carried in every object header. */
  keyId: Uint8Array;
  keyIdHex: string;
  /** Ed25519 seed of the vault auth key (the paper's recovery signing key): only when derived from a phrase. */
  authSeed?: Uint8Array;
  authPublicKey?: Uint8Array;
  /** The epoch of these keys (docs/FORMAT.md §9); 1 for a format-1 vault's phrase-derived keys. */
  epoch?: number;
  /** Every epoch's keys by key id hex, for opening what older epochs sealed (src/crypto/keyring.ts keysFor); `until` is where an older one ended. */
  epochs?: Record<string, EpochKeys & { until?: EpochMark }>;
  canaryKey: Uint8Array;
  snapshotKey: Uint8Array;
  changesetKey: Uint8Array;
  /** HMAC-SHA256 key for page and pack ids. */
  idMacKey: Uint8Array;
  /** HMAC-SHA256 key for the device's local page index. */
  localIndexKey: Uint8Array;
}

/** HKDF-SHA256 (RFC 5869) with node:crypto; `salt` may be empty. */
export function hkdfSha256(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  abytes(ikm, 'ikm');
  abytes(salt, 'salt');
  abytes(info, 'info');
  anumber(length, 'length', 1, 255 * 32);
  return new Uint8Array(hkdfSync('sha256', ikm, salt, info, length));
}

/**
 * The 32-byte root key of a phrase. The phrase is normalised first (parsePhrase
 * is idempotent), so the root depends on the words only, never on how they
 * were typed. Costs 600,000 HMAC-SHA256 iterations (~0.2 s natively).
 */
export function deriveRoot(phrase: string): Uint8Array {
  const normalised = parsePhrase(phrase);
  return new Uint8Array(pbkdf2Sync(utf8ToBytes(normalised), utf8ToBytes(ROOT_SALT), ROOT_ITERATIONS, ROOT_KEY_BYTES, 'sha256'));
}

/** Every vault key from the root key. */
export function vaultKeysFromRoot(root: Uint8Array): VaultKeys {
  abytes(root, 'root', ROOT_KEY_BYTES);
  const empty = new Uint8Array(0);
  const sub = (label: string, n: number) => hkdfSha256(root, empty, utf8ToBytes(label), n);
  const keyId = sub(LABELS.keyId, KEY_ID_BYTES);
  const authSeed = sub(LABELS.vaultAuth, KEY_BYTES);
  return {
    vaultId: bytesToHex(sub(LABELS.vaultId, VAULT_ID_BYTES)),
    keyId,
    keyIdHex: bytesToHex(keyId),
    authSeed,
    authPublicKey: publicKeyFromSeed(authSeed),
    canaryKey: sub(LABELS.canaryKey, KEY_BYTES),
    snapshotKey: sub(LABELS.snapshotKey, KEY_BYTES),
    changesetKey: sub(LABELS.changesetKey, KEY_BYTES),
    idMacKey: sub(LABELS.idMacKey, KEY_BYTES),
    localIndexKey: sub(LABELS.localIndexKey, KEY_BYTES),
  };
}

/** deriveRoot then vaultKeysFromRoot. */
export function deriveVaultKeys(phrase: string): VaultKeys {
  return vaultKeysFromRoot(deriveRoot(phrase));
}
