/**
 * Byte helpers shared by the crypto core: UTF-8 (WHATWG Encoding, fatal on
 * malformed input), hex (RFC 4648 §8, "base16") and base64url without padding
 * (RFC 4648 §5, canonical only), concatenation, a constant-time comparison and
 * the `a*` boundary checks in the style of noble's `abytes`.
 *
 * Invariants: decoders are strict (a string either decodes to exactly one byte
 * array or throws); error messages name the parameter and what was expected,
 * never the bytes or the text that failed.
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Throws TypeError unless `value` is a Uint8Array; RangeError unless its length is `length` (when given). */
export function abytes(value: unknown, name: string, length?: number): Uint8Array {
  if (!(value instanceof Uint8Array)) throw new TypeError(`${name} must be a Uint8Array`);
  if (length !== undefined && value.length !== length) {
    throw new RangeError(`${name} must be ${length} bytes, got ${value.length}`);
  }
  return value;
}

/** Throws TypeError unless `value` is a string. */
export function astring(value: unknown, name: string): string {
  if (typeof value !== 'string') throw new TypeError(`${name} must be a string`);
  return value;
}

/** Throws unless `value` is a safe integer in [min, max]. */
export function anumber(value: unknown, name: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw new TypeError(`${name} must be a safe integer`);
  }
  if (value < min || value > max) throw new RangeError(`${name} must be between ${min} and ${max}`);
  return value;
}

export function utf8ToBytes(text: string): Uint8Array {
  return encoder.encode(astring(text, 'text'));
}

/** Strict UTF-8 decoding: malformed sequences throw instead of becoming U+FFFD. */
export function bytesToUtf8(bytes: Uint8Array): string {
  abytes(bytes, 'bytes');
  try {
    return decoder.decode(bytes);
  } catch {
    throw new RangeError('bytes must be valid UTF-8');
  }
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/** Lowercase hex. */
export function bytesToHex(bytes: Uint8Array): string {
  abytes(bytes, 'bytes');
  let out = '';
  for (const b of bytes) out += HEX[b];
  return out;
}

function hexNibble(code: number): number {
  if (code >= 48 && code <= 57) return code - 48; // 0-9
  if (code >= 97 && code <= 102) return code - 87; // a-f
  if (code >= 65 && code <= 70) return code - 55; // A-F
  return -1;
}

/** Hex of either case; an odd length or a non-hex character throws RangeError. */
export function hexToBytes(hex: string): Uint8Array {
  astring(hex, 'hex');
  if (hex.length % 2 !== 0) throw new RangeError('hex must have an even length');
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) {
    const hi = hexNibble(hex.charCodeAt(2 * i));
    const lo = hexNibble(hex.charCodeAt(2 * i + 1));
    if (hi < 0 || lo < 0) throw new RangeError('hex must contain only hexadecimal digits');
    out[i] = (hi << 4) | lo;
  }
  return out;
}

/** base64url without padding (RFC 4648 §5). */
export function b64uEncode(bytes: Uint8Array): string {
  abytes(bytes, 'bytes');
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('base64url');
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;

/**
 * Canonical base64url without padding: only the URL-safe alphabet, no `=`, no
 * white space, and no non-zero bits after the last byte (so every byte array
 * has exactly one accepted encoding).
 */
export function b64uDecode(text: string): Uint8Array {
  astring(text, 'base64url');
  if (!BASE64URL.test(text) || text.length % 4 === 1) {
    throw new RangeError('base64url must be unpadded base64url');
  }
  const buf = Buffer.from(text, 'base64url');
  if (buf.toString('base64url') !== text) throw new RangeError('base64url must be canonical');
  return new Uint8Array(buf); // a copy, not a view into Node's shared pool
}

export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const [i, p] of parts.entries()) length += abytes(p, `parts[${i}]`).length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Constant-time equality for secrets and tags: the time depends on the length
 * (which is public) but not on where the arrays differ.
 */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  abytes(a, 'a');
  abytes(b, 'b');
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/** Big-endian 32-bit unsigned integer, 4 bytes. */
export function u32be(n: number): Uint8Array {
  anumber(n, 'n', 0, 0xffffffff);
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n, false);
  return out;
}
