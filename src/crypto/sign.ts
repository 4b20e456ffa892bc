/**
 * Ed25519 signatures over casa's signed relay messages (docs/FORMAT.md §4,
 * docs/RELAY-API.md): the signed bytes are exactly `signedMessage(purpose,
 * fields)` from src/protocol/messages.ts, shared with the relay.
 *
 * Ed25519 as in RFC 8032 §5.1 (@noble/curves). Keys are 32-byte seeds
 * (RFC 8032 §5.1.5 "private key"); verification is RFC 8032 §5.1.7 strict
 * (not ZIP-215), so a signature either verifies everywhere or nowhere.
 */
import { ed25519 } from '@noble/curves/ed25519.js';
import { signedMessage, type SignedPurpose } from '../protocol/messages.js';
import { abytes } from './bytes.js';

export type { SignedPurpose };

export const SEED_BYTES = 32;
export const PUBLIC_KEY_BYTES = 32;
export const SIGNATURE_BYTES = 64;

export function publicKeyFromSeed(seed: Uint8Array): Uint8Array {
  abytes(seed, 'seed', SEED_BYTES);
  return ed25519.getPublicKey(seed);
}

/** A new device key seed; randomness comes from the caller. */
export function newDeviceSeed(randomBytes: (n: number) => Uint8Array): Uint8Array {
  if (typeof randomBytes !== 'function') throw new TypeError('randomBytes must be a function');
  return Uint8Array.from(abytes(randomBytes(SEED_BYTES), 'randomBytes(32)', SEED_BYTES));
}

/** Signs `casa/v1/<purpose>\n` + JSON.stringify(fields). */
export function signPurpose(seed: Uint8Array, purpose: SignedPurpose, fields: ReadonlyArray<string | number>): Uint8Array {
  abytes(seed, 'seed', SEED_BYTES);
  return ed25519.sign(signedMessage(purpose, fields), seed);
}

/** True if and only if `signature` is a valid signature of the message by `publicKey`; never throws on bad bytes. */
export function verifyPurpose(
  publicKey: Uint8Array,
  purpose: SignedPurpose,
  fields: ReadonlyArray<string | number>,
  signature: Uint8Array,
): boolean {
  abytes(publicKey, 'publicKey');
  abytes(signature, 'signature');
  if (publicKey.length !== PUBLIC_KEY_BYTES || signature.length !== SIGNATURE_BYTES) return false;
  const message = signedMessage(purpose, fields);
  try {
    return ed25519.verify(signature, message, publicKey, { zip215: false });
  } catch {
    return false;
  }
}
