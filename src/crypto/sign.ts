/**
 * Ed25519 signatures over casa's signed relay messages (docs/FORMAT.md §4,
 * docs/RELAY-API.md): the signed bytes are exactly `signedMessage(purpose,
 * fields)` from src/protocol/messages.ts, shared with the relay.
 *
 * Ed25519 as in RFC 8032 §5.1, through node:crypto (OpenSSL): measured
 * here, @noble/curves' ed25519 costs every command ~16 MB of RSS and ~60 ms
 * for its precomputed tables, against ~1 MB and a few ms natively. The relay
 * verifies with @noble/curves (strict RFC 8032 §5.1.7, not ZIP-215), and the
 * vector tests check that both agree. Keys are 32-byte seeds (RFC 8032
 * §5.1.5 "private key").
 */
import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { signedMessage, type SignedPurpose } from '../protocol/messages.js';
import { abytes } from './bytes.js';

export type { SignedPurpose };

export const SEED_BYTES = 32;
export const PUBLIC_KEY_BYTES = 32;
export const SIGNATURE_BYTES = 64;

// RFC 8410 §7: the PKCS#8 and SPKI DER prefixes of a raw Ed25519 private and public key.
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

function privateKey(seed: Uint8Array): KeyObject {
  abytes(seed, 'seed', SEED_BYTES);
  return createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
}

export function publicKeyFromSeed(seed: Uint8Array): Uint8Array {
  const spki = createPublicKey(privateKey(seed)).export({ format: 'der', type: 'spki' });
  return new Uint8Array(spki.subarray(SPKI_PREFIX.length));
}

/** A new device key seed; randomness comes from the caller. */
export function newDeviceSeed(randomBytes: (n: number) => Uint8Array): Uint8Array {
  if (typeof randomBytes !== 'function') throw new TypeError('randomBytes must be a function');
  return Uint8Array.from(abytes(randomBytes(SEED_BYTES), 'randomBytes(32)', SEED_BYTES));
}

/** Signs `casa/v1/<purpose>\n` + JSON.stringify(fields). */
export function signPurpose(seed: Uint8Array, purpose: SignedPurpose, fields: ReadonlyArray<string | number>): Uint8Array {
  return new Uint8Array(sign(null, signedMessage(purpose, fields), privateKey(seed)));
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
    const key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' });
    return verify(null, message, key, signature);
  } catch {
    return false;
  }
}
