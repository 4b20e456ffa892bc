/**
 * The ids and digests the CLI and the relay pass each other, checked in one
 * place (worker/ bundles this file too, so it imports nothing). On the wire
 * every one of them is lowercase hex of a fixed length (docs/FORMAT.md,
 * docs/RELAY-API.md); an uppercase or padded spelling is refused, never
 * normalised, so one id has one spelling everywhere it is compared or keyed.
 *
 * Each check takes `unknown` and narrows to string, so it serves a parsed
 * relay answer, a request body and a sealed header alike.
 */

/** Hex characters of a device id (8 random bytes the relay assigns at enrollment). */
const DEVICE_ID_HEX = 16;
/** Hex characters of a key id (8 bytes: an epoch's keys, carried in every object header: docs/FORMAT.md §2, §3). */
const KEY_ID_HEX = 16;
/** Hex characters of a vault id (16 bytes, derived from the root key: docs/FORMAT.md §2). */
const VAULT_ID_HEX = 32;
/** Hex characters of a snapshot id (16 random bytes). */
const SNAPSHOT_ID_HEX = 32;
/** Hex characters of a pack id (a keyed MAC of the pack's page hashes: docs/FORMAT.md §5). */
const PACK_ID_HEX = 64;
/** Hex characters of a pairing session id (`sid`, 16 random bytes: docs/FORMAT.md §6). */
const PAIRING_SESSION_ID_HEX = 32;
/** Hex characters of a SHA-256 digest (an upload's `X-Casa-Sha256`, a batch's hash and `prev`). */
const SHA256_HEX = 64;

const LOWER_HEX = /^[0-9a-f]*$/;

/** True if `value` is a string of exactly `length` lowercase hex characters. */
export function isLowerHex(value: unknown, length: number): value is string {
  return typeof value === 'string' && value.length === length && LOWER_HEX.test(value);
}

/** A device id: 16 lowercase hex characters. */
export const isDeviceId = (value: unknown): value is string => isLowerHex(value, DEVICE_ID_HEX);

/** A key id (an epoch record's `keyId`, a keyring entry's): 16 lowercase hex characters. */
export const isKeyId = (value: unknown): value is string => isLowerHex(value, KEY_ID_HEX);

/** A vault id (also a paper's recovery id, derived alike): 32 lowercase hex characters. */
export const isVaultId = (value: unknown): value is string => isLowerHex(value, VAULT_ID_HEX);

/** A snapshot id (also a manifest's `parentId`): 32 lowercase hex characters. */
export const isSnapshotId = (value: unknown): value is string => isLowerHex(value, SNAPSHOT_ID_HEX);

/** A pack id: 64 lowercase hex characters. */
export const isPackId = (value: unknown): value is string => isLowerHex(value, PACK_ID_HEX);

/** A pairing session id (`sid`): 32 lowercase hex characters. */
export const isPairingSessionId = (value: unknown): value is string => isLowerHex(value, PAIRING_SESSION_ID_HEX);

/** A SHA-256 digest in lowercase hex: 64 characters. */
export const isSha256Hex = (value: unknown): value is string => isLowerHex(value, SHA256_HEX);
