/**
 * CPace over ristretto255 with SHA-512 ("CPaceRistretto255", the coffee
 * ecosystem group of draft-irtf-cfrg-cpace; github.com/cfrg/draft-irtf-cfrg-cpace,
 * checked against the draft's testvectors.json):
 *
 *   generator_string = lv_cat(DSI, PRS, zpad, CI, sid)                      (§ "Definition of generator_string")
 *     zpad           = 0x00 × max(0, s_in_bytes − 1 − len(prepend_len(PRS)) − len(prepend_len(DSI)))
 *   g                = ristretto255 one-way map of SHA-512(generator_string)  (RFC 9496 §4.3.4, element derivation;
 *                                                                             not RFC 9380 hash_to_curve)
 *   Y                = y·g, y uniform in [1, ℓ)                               (sample_scalar, scalar_mult)
 *   K                = scalar_mult_vfy(y, Y_peer), abort if invalid or the identity
 *   ISK              = SHA-512(lv_cat(DSI || "_ISK", sid, K) || transcript)
 *     transcript_ir  = lv_cat(Ya, ADa) || lv_cat(Yb, ADb)                     (initiator–responder)
 *     transcript_oc  = o_cat(lv_cat(Ya, ADa), lv_cat(Yb, ADb))                (symmetric, ordered)
 *   sid_output       = SHA-512("CPaceSidOutput" || transcript)
 *
 * lv_cat prefixes every field with its LEB128 length (prepend_len). Scalars
 * are 32 bytes little-endian; points are canonical 32-byte ristretto255
 * encodings (RFC 9496 §4.3.1–4.3.2), and decoding rejects every other string.
 *
 * Pure: randomness comes from the caller. The secret scalar lives in a
 * Uint8Array the caller can zero; the bigint copies made for the arithmetic
 * cannot be zeroed (JavaScript has no way to), which is the usual limit.
 */
import { createHash } from 'node:crypto';
import { ristretto255, ristretto255_hasher } from '@noble/curves/ed25519.js';
import { abytes, concatBytes, utf8ToBytes } from './bytes.js';

const Point = ristretto255.Point;
type Point = InstanceType<typeof Point>;
/** The prime order ℓ of ristretto255 = 2^252 + 27742317777372353535851937790883648493. */
const ORDER: bigint = Point.Fn.ORDER;

/** Domain separation identifier of the ristretto255 / SHA-512 suite. */
export const DSI = utf8ToBytes('CPaceRistretto255');
/** G.DSI || "_ISK". */
export const DSI_ISK = utf8ToBytes('CPaceRistretto255_ISK');
const SID_OUTPUT_PREFIX = utf8ToBytes('CPaceSidOutput');
/** SHA-512's input block size (H.s_in_bytes). */
export const S_IN_BYTES = 128;
export const POINT_BYTES = 32;
export const SCALAR_BYTES = 32;
/** Random bytes sample_scalar reduces modulo ℓ (64, so the bias is below 2^-250). */
export const SCALAR_RANDOM_BYTES = 64;

export type PakeErrorReason = 'invalid_point';

/** A peer's share cannot be used: not a canonical encoding, or it gives the identity. */
export class PakeError extends Error {
  readonly reason: PakeErrorReason;
  constructor(reason: PakeErrorReason) {
    super('the peer sent an invalid group element');
    this.name = 'PakeError';
    this.reason = reason;
  }
}

function sha512(...parts: Uint8Array[]): Uint8Array {
  const h = createHash('sha512');
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

/** LEB128 encoding of `data.length`, then `data` (prepend_len). */
export function prependLen(data: Uint8Array): Uint8Array {
  abytes(data, 'data');
  const len: number[] = [];
  let n = data.length;
  do {
    len.push(n < 128 ? n : (n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  } while (n !== 0);
  return concatBytes(Uint8Array.from(len), data);
}

/** prepend_len of every argument, concatenated (lv_cat). */
export function lvCat(...fields: Uint8Array[]): Uint8Array {
  return concatBytes(...fields.map((f, i) => prependLen(abytes(f, `fields[${i}]`))));
}

/**
 * Splits an lv_cat string back into its fields. Strict: minimal LEB128
 * lengths only, no bytes left over, lengths below 2^28. Returns undefined on
 * any malformed input (the caller decides which error that is).
 */
export function lvSplit(bytes: Uint8Array): Uint8Array[] | undefined {
  abytes(bytes, 'bytes');
  const out: Uint8Array[] = [];
  let at = 0;
  while (at < bytes.length) {
    let len = 0;
    let shift = 0;
    for (;;) {
      if (at >= bytes.length || shift > 21) return undefined;
      const b = bytes[at++]!;
      len += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) {
        if (b === 0 && shift > 0) return undefined; // not minimal
        break;
      }
      shift += 7;
    }
    if (len > bytes.length - at) return undefined;
    out.push(bytes.slice(at, at + len));
    at += len;
  }
  return out;
}

/** bytes1 > bytes2 in lexicographical order (a proper prefix is smaller). */
export function lexicographicallyLarger(bytes1: Uint8Array, bytes2: Uint8Array): boolean {
  abytes(bytes1, 'bytes1');
  abytes(bytes2, 'bytes2');
  const n = Math.min(bytes1.length, bytes2.length);
  for (let i = 0; i < n; i++) {
    if (bytes1[i]! > bytes2[i]!) return true;
    if (bytes1[i]! < bytes2[i]!) return false;
  }
  return bytes1.length > bytes2.length;
}

const OC = utf8ToBytes('oc');

/** "oc" || the larger || the smaller (o_cat). */
export function oCat(bytes1: Uint8Array, bytes2: Uint8Array): Uint8Array {
  return lexicographicallyLarger(bytes1, bytes2) ? concatBytes(OC, bytes1, bytes2) : concatBytes(OC, bytes2, bytes1);
}

/**
 * generator_string(DSI, PRS, CI, sid, s_in_bytes): the zero padding fills the
 * first hash block after DSI and PRS, so a short password costs one block.
 */
export function generatorString(prs: Uint8Array, ci: Uint8Array, sid: Uint8Array, sInBytes = S_IN_BYTES, dsi = DSI): Uint8Array {
  abytes(prs, 'PRS');
  abytes(ci, 'CI');
  abytes(sid, 'sid');
  abytes(dsi, 'DSI');
  const zpad = Math.max(0, sInBytes - 1 - prependLen(prs).length - prependLen(dsi).length);
  return lvCat(dsi, prs, new Uint8Array(zpad), ci, sid);
}

function generatorPoint(prs: Uint8Array, ci: Uint8Array, sid: Uint8Array): Point {
  const gs = generatorString(prs, ci, sid);
  const h = sha512(gs);
  gs.fill(0); // it holds the password
  const g = ristretto255_hasher.deriveToCurve!(h);
  h.fill(0);
  if (g.is0()) throw new Error('CPace generator is the identity'); // probability 2^-252; cannot happen in practice
  return g;
}

/** calculate_generator: the encoded generator g for (PRS, CI, sid). */
export function calculateGenerator(prs: Uint8Array, ci: Uint8Array, sid: Uint8Array): Uint8Array {
  return generatorPoint(prs, ci, sid).toBytes();
}

function scalarToBigint(scalar: Uint8Array): bigint {
  abytes(scalar, 'scalar', SCALAR_BYTES);
  let n = 0n;
  for (let i = SCALAR_BYTES - 1; i >= 0; i--) n = (n << 8n) | BigInt(scalar[i]!);
  const s = n % ORDER;
  if (s === 0n) throw new RangeError('scalar must not be 0 modulo the group order');
  return s;
}

/**
 * sample_scalar: 64 random bytes, read little-endian and reduced modulo ℓ,
 * as 32 bytes little-endian. Zero (probability 2^-252) means the random
 * source is broken and throws.
 */
export function sampleScalar(random: (n: number) => Uint8Array): Uint8Array {
  if (typeof random !== 'function') throw new TypeError('random must be a function');
  const r = abytes(random(SCALAR_RANDOM_BYTES), `random(${SCALAR_RANDOM_BYTES})`, SCALAR_RANDOM_BYTES);
  let n = 0n;
  for (let i = r.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(r[i]!);
  n %= ORDER;
  if (n === 0n) throw new RangeError('random returned bytes that reduce to 0');
  const out = new Uint8Array(SCALAR_BYTES);
  for (let i = 0; i < SCALAR_BYTES; i++, n >>= 8n) out[i] = Number(n & 0xffn);
  return out;
}

/** scalar_mult on a trusted encoded point (e.g. the generator): encode(scalar·decode(point)). */
export function scalarMult(scalar: Uint8Array, point: Uint8Array): Uint8Array {
  return Point.fromBytes(abytes(point, 'point', POINT_BYTES)).multiply(scalarToBigint(scalar)).toBytes();
}

/**
 * scalar_mult_vfy: encode(scalar·decode(point)) for a point from the peer.
 * A string that is not a canonical ristretto255 encoding, or a result that is
 * the identity (the peer sent the identity), throws PakeError('invalid_point').
 */
export function scalarMultVfy(scalar: Uint8Array, point: Uint8Array): Uint8Array {
  const s = scalarToBigint(scalar);
  if (!(point instanceof Uint8Array) || point.length !== POINT_BYTES) throw new PakeError('invalid_point');
  let p: Point;
  try {
    p = Point.fromBytes(point);
  } catch {
    throw new PakeError('invalid_point');
  }
  const k = p.multiply(s);
  if (k.is0()) throw new PakeError('invalid_point');
  return k.toBytes();
}

/** lv_cat(Ya, ADa) || lv_cat(Yb, ADb). */
export function transcriptIr(ya: Uint8Array, ada: Uint8Array, yb: Uint8Array, adb: Uint8Array): Uint8Array {
  return concatBytes(lvCat(ya, ada), lvCat(yb, adb));
}

/** o_cat(lv_cat(Ya, ADa), lv_cat(Yb, ADb)). */
export function transcriptOc(ya: Uint8Array, ada: Uint8Array, yb: Uint8Array, adb: Uint8Array): Uint8Array {
  return oCat(lvCat(ya, ada), lvCat(yb, adb));
}

export type Ordering = 'ir' | 'oc';

function transcript(order: Ordering, ya: Uint8Array, ada: Uint8Array, yb: Uint8Array, adb: Uint8Array): Uint8Array {
  if (order === 'ir') return transcriptIr(ya, ada, yb, adb);
  if (order === 'oc') return transcriptOc(ya, ada, yb, adb);
  throw new RangeError("order must be 'ir' or 'oc'");
}

export interface IskInput {
  sid: Uint8Array;
  /** The shared point, from scalarMultVfy. */
  K: Uint8Array;
  Ya: Uint8Array;
  ADa: Uint8Array;
  Yb: Uint8Array;
  ADb: Uint8Array;
}

/** ISK = SHA-512(lv_cat(DSI_ISK, sid, K) || transcript_ir or transcript_oc): 64 bytes. */
export function deriveIsk(p: IskInput, order: Ordering = 'ir'): Uint8Array {
  abytes(p.K, 'K', POINT_BYTES);
  const prefix = lvCat(DSI_ISK, p.sid, p.K);
  const isk = sha512(prefix, transcript(order, p.Ya, p.ADa, p.Yb, p.ADb));
  prefix.fill(0);
  return isk;
}

/** sid_output = SHA-512("CPaceSidOutput" || transcript): 64 bytes, public. */
export function sidOutput(p: Omit<IskInput, 'sid' | 'K'>, order: Ordering = 'ir'): Uint8Array {
  return sha512(SID_OUTPUT_PREFIX, transcript(order, p.Ya, p.ADa, p.Yb, p.ADb));
}

/** One party's share: the secret scalar y (zero it when done) and the public Y = y·g. */
export interface Share {
  y: Uint8Array;
  Y: Uint8Array;
}

/** g from (PRS, CI, sid), then y = sample_scalar() and Y = y·g. */
export function cpaceShare(p: { prs: Uint8Array; ci: Uint8Array; sid: Uint8Array; random: (n: number) => Uint8Array }): Share {
  const g = generatorPoint(p.prs, p.ci, p.sid);
  const y = sampleScalar(p.random);
  return { y, Y: g.multiply(scalarToBigint(y)).toBytes() };
}
