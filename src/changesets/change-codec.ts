/**
 * The change encoding (docs/MERGE.md §6): a list of changes as the body of a
 * changeset batch, which batch.ts seals (docs/FORMAT.md §7).
 *
 * Invariants:
 * - Deterministic: the same changes give the same bytes (strings listed
 *   once, in the order of their first use; an HLC repeated by the next
 *   change is not spelled out again).
 * - Lossless for every SQLite value: integers as zigzag varints (64 bits),
 *   reals as their float64 bits, text as UTF-8, blobs as they are.
 * - Strict: decodeChanges refuses, as a ChangeFormatError, whatever
 *   encodeChanges would not have made (the list is docs/MERGE.md §6): a
 *   sender's bug or a forged body is never half read. checkChange is the
 *   shape rule both ends (and merge.ts) hold every change to.
 */
import { bytesToHex, bytesToUtf8, hexToBytes } from '../crypto/bytes.js';
import { ChangeFormatError, type Change, type SqlValue } from './change.js';
import { isVector } from './causal.js';
import { isHlc } from './hlc.js';
import { decodePk } from './pk-text.js';

const OPS = ['i', 'u', 'd'] as const;
const TAG_NULL = 0;
const TAG_INT = 1;
const TAG_REAL = 2;
const TAG_TEXT = 3;
const TAG_BLOB = 4;
const SAME_HLC = 0x20;
/** Format 1: no vectors; format 2: a table of vectors, and a reference with every HLC spelled out (docs/MERGE.md §6). */
const FORMAT = 1;
const FORMAT_SEEN = 2;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

const utf8 = new TextEncoder();

/** Throws `fail(message)` unless c is a well-formed change (the pk's canonical form is checked apart: decodePk). */
export function checkChange(c: Change, i: number, fail: (m: string) => Error): void {
  const at = `change ${i}`;
  if (typeof c !== 'object' || c === null) throw fail(`${at} is not an object`);
  if (typeof c.tbl !== 'string' || c.tbl === '') throw fail(`${at}: tbl must be a non-empty string`);
  if (typeof c.pk !== 'string') throw fail(`${at}: pk must be a string`);
  if (c.op !== 'i' && c.op !== 'u' && c.op !== 'd') throw fail(`${at}: op must be i, u or d`);
  if (c.col !== null && (typeof c.col !== 'string' || c.col === '')) throw fail(`${at}: col must be null or a non-empty string`);
  if (!isHlc(c.hlc)) throw fail(`${at}: hlc must be 32 lowercase hex characters`);
  const v = c.val;
  if (typeof v === 'number' && Number.isNaN(v)) throw fail(`${at}: a real must not be NaN`);
  if (typeof v === 'bigint' && (v < INT64_MIN || v > INT64_MAX)) throw fail(`${at}: an integer must fit 64 bits`);
  if (!(v === null || typeof v === 'number' || typeof v === 'bigint' || typeof v === 'string' || v instanceof Uint8Array)) {
    throw fail(`${at}: val must be an SQLite value`);
  }
  if (c.op === 'u' && c.col === null) throw fail(`${at}: an update names a column`);
  if (c.op === 'd' && c.col !== null) throw fail(`${at}: a delete names no column`);
  if (c.col === null && v !== null) throw fail(`${at}: a row change without a column carries no value`);
  if (c.seen !== undefined && !isVector(c.seen)) throw fail(`${at}: seen must be HLCs sorted by device, each device once`);
}

class Writer {
  buf = new Uint8Array(1024);
  len = 0;
  private view = new DataView(this.buf.buffer);
  ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  byte(b: number): void {
    this.ensure(1);
    this.buf[this.len++] = b;
  }
  uvarint(n: number): void {
    this.ensure(10);
    while (n >= 0x80) {
      this.buf[this.len++] = (n % 0x80) | 0x80;
      n = Math.floor(n / 0x80);
    }
    this.buf[this.len++] = n;
  }
  uvarintBig(n: bigint): void {
    if (n <= 0x1fffffffffffffn) return this.uvarint(Number(n));
    this.ensure(10);
    while (n >= 0x80n) {
      this.buf[this.len++] = Number(n & 0x7fn) | 0x80;
      n >>= 7n;
    }
    this.buf[this.len++] = Number(n);
  }
  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  f64(x: number): void {
    this.ensure(8);
    this.view.setFloat64(this.len, x, false);
    this.len += 8;
  }
}

/** The batch body: deterministic (same changes → same bytes) and lossless. See docs/MERGE.md §6. */
export function encodeChanges(changes: Change[]): Uint8Array {
  const fail = (m: string) => new ChangeFormatError(m);
  const strings = new Map<string, number>();
  const order: string[] = [];
  const ref = (s: string): number => {
    let k = strings.get(s);
    if (k === undefined) {
      k = order.length;
      strings.set(s, k);
      order.push(s);
    }
    return k;
  };
  const withSeen = changes.some((c) => c.seen !== undefined);
  const vectors = new Map<string, number>();
  const vectorOrder: string[][] = [];
  const body = new Writer();
  body.uvarint(changes.length);
  let prevHlc = '';
  let prevSeen = '';
  changes.forEach((c, i) => {
    checkChange(c, i, fail);
    decodePk(c.pk);
    const seenText = c.seen === undefined ? '' : c.seen.join('');
    body.uvarint(ref(c.tbl));
    body.uvarint(ref(c.pk));
    body.uvarint(c.col === null ? 0 : ref(c.col) + 1);
    const v = c.val;
    const tag =
      v === null ? TAG_NULL : typeof v === 'bigint' ? TAG_INT : typeof v === 'number' ? TAG_REAL : typeof v === 'string' ? TAG_TEXT : TAG_BLOB;
    const same = i > 0 && c.hlc === prevHlc;
    // One row write, one stamping pass: the changes of one HLC share what their writer had seen.
    if (same && seenText !== prevSeen) throw fail(`change ${i}: two vectors for one hlc`);
    body.byte(OPS.indexOf(c.op) | (tag << 2) | (same ? SAME_HLC : 0));
    if (!same) {
      body.bytes(hexToBytes(c.hlc));
      if (withSeen) {
        let ref = 0;
        if (c.seen !== undefined) {
          let k = vectors.get(seenText);
          if (k === undefined) {
            k = vectorOrder.length;
            vectors.set(seenText, k);
            vectorOrder.push(c.seen);
          }
          ref = k + 1;
        }
        body.uvarint(ref);
      }
    }
    prevHlc = c.hlc;
    prevSeen = seenText;
    if (tag === TAG_INT) {
      const n = v as bigint;
      body.uvarintBig(n < 0n ? -2n * n - 1n : 2n * n);
    } else if (tag === TAG_REAL) body.f64(v as number);
    else if (tag === TAG_TEXT || tag === TAG_BLOB) {
      const b = tag === TAG_TEXT ? utf8.encode(v as string) : (v as Uint8Array);
      body.uvarint(b.length);
      body.bytes(b);
    }
  });
  const head = new Writer();
  head.byte(withSeen ? FORMAT_SEEN : FORMAT);
  head.uvarint(order.length);
  for (const s of order) {
    const b = utf8.encode(s);
    head.uvarint(b.length);
    head.bytes(b);
  }
  if (withSeen) {
    head.uvarint(vectorOrder.length);
    for (const v of vectorOrder) {
      head.uvarint(v.length);
      for (const h of v) head.bytes(hexToBytes(h));
    }
  }
  const out = new Uint8Array(head.len + body.len);
  out.set(head.buf.subarray(0, head.len), 0);
  out.set(body.buf.subarray(0, body.len), head.len);
  return out;
}

class Reader {
  at = 0;
  private view: DataView;
  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  need(n: number): void {
    if (this.at + n > this.buf.length) throw new ChangeFormatError('truncated');
  }
  byte(): number {
    this.need(1);
    return this.buf[this.at++]!;
  }
  uvarint(): number {
    let n = 0;
    let mul = 1;
    for (let k = 0; ; k++) {
      const b = this.byte();
      n += (b & 0x7f) * mul;
      if (b < 0x80) {
        if (k > 0 && b === 0) throw new ChangeFormatError('non-minimal varint');
        if (n > Number.MAX_SAFE_INTEGER) throw new ChangeFormatError('varint out of range');
        return n;
      }
      mul *= 0x80;
      if (k >= 7) throw new ChangeFormatError('varint out of range');
    }
  }
  uvarintBig(): bigint {
    let n = 0n;
    let shift = 0n;
    for (let k = 0; ; k++) {
      const b = this.byte();
      n |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) {
        if (k > 0 && b === 0) throw new ChangeFormatError('non-minimal varint');
        if (n >= 2n ** 64n) throw new ChangeFormatError('integer out of range');
        return n;
      }
      shift += 7n;
      if (k >= 9) throw new ChangeFormatError('integer out of range');
    }
  }
  bytes(n: number): Uint8Array {
    this.need(n);
    const out = this.buf.slice(this.at, this.at + n);
    this.at += n;
    return out;
  }
  f64(): number {
    this.need(8);
    const x = this.view.getFloat64(this.at, false);
    this.at += 8;
    return x;
  }
}

/** Decodes a batch body; anything but exactly what encodeChanges makes throws ChangeFormatError. */
export function decodeChanges(bytes: Uint8Array): Change[] {
  if (!(bytes instanceof Uint8Array)) throw new TypeError('bytes must be a Uint8Array');
  const r = new Reader(bytes);
  const version = r.byte();
  if (version !== FORMAT && version !== FORMAT_SEEN) {
    throw new ChangeFormatError(`unknown format ${version} (made by a newer casa? update casa on this device)`);
  }
  const nStrings = r.uvarint();
  if (nStrings > bytes.length) throw new ChangeFormatError('string count beyond the body');
  const strings: string[] = [];
  for (let k = 0; k < nStrings; k++) {
    const b = r.bytes(r.uvarint());
    try {
      strings.push(bytesToUtf8(b));
    } catch {
      throw new ChangeFormatError(`string ${k} is not UTF-8`);
    }
  }
  if (new Set(strings).size !== strings.length) throw new ChangeFormatError('a string is listed twice');
  const vectors: string[][] = [];
  if (version === FORMAT_SEEN) {
    const nVectors = r.uvarint();
    if (nVectors === 0) throw new ChangeFormatError('format 2 without a vector');
    if (nVectors > bytes.length) throw new ChangeFormatError('vector count beyond the body');
    const texts = new Set<string>();
    for (let k = 0; k < nVectors; k++) {
      const len = r.uvarint();
      if (len > bytes.length / 16) throw new ChangeFormatError('vector length beyond the body');
      const v: string[] = [];
      for (let e = 0; e < len; e++) v.push(bytesToHex(r.bytes(16)));
      if (!isVector(v)) throw new ChangeFormatError(`vector ${k} is not HLCs sorted by device, each device once`);
      const text = v.join('');
      if (texts.has(text)) throw new ChangeFormatError('a vector is listed twice');
      texts.add(text);
      vectors.push(v);
    }
  }
  let firstUnusedVector = 0;
  const vector = (ref: number): string[] | undefined => {
    if (ref === 0) return undefined;
    const v = vectors[ref - 1];
    if (v === undefined) throw new ChangeFormatError(`vector index ${ref - 1} out of range`);
    if (ref - 1 === firstUnusedVector) firstUnusedVector++;
    else if (ref - 1 > firstUnusedVector) throw new ChangeFormatError('vectors out of order');
    return v;
  };
  // Canonical: the strings are listed in the order of their first use.
  let firstUnused = 0;
  const str = (k: number): string => {
    const s = strings[k];
    if (s === undefined) throw new ChangeFormatError(`string index ${k} out of range`);
    if (k === firstUnused) firstUnused++;
    else if (k > firstUnused) throw new ChangeFormatError('strings out of order');
    return s;
  };
  const n = r.uvarint();
  if (n > bytes.length) throw new ChangeFormatError('change count beyond the body');
  const changes: Change[] = [];
  const pkOk = new Set<string>();
  let prevHlc = '';
  let seen: string[] | undefined;
  for (let i = 0; i < n; i++) {
    const tbl = str(r.uvarint());
    const pk = str(r.uvarint());
    const colRef = r.uvarint();
    const col = colRef === 0 ? null : str(colRef - 1);
    const flags = r.byte();
    if (flags & 0xc0) throw new ChangeFormatError(`change ${i}: reserved flag bits set`);
    const op = OPS[flags & 3];
    if (op === undefined) throw new ChangeFormatError(`change ${i}: unknown op`);
    const tag = (flags >> 2) & 7;
    let hlc: string;
    if (flags & SAME_HLC) {
      if (i === 0) throw new ChangeFormatError('the first change has no previous hlc');
      hlc = prevHlc;
    } else {
      hlc = bytesToHex(r.bytes(16));
      if (hlc === prevHlc) throw new ChangeFormatError(`change ${i}: a repeated hlc spelled out`);
      if (version === FORMAT_SEEN) seen = vector(r.uvarint());
    }
    prevHlc = hlc;
    let val: SqlValue;
    if (tag === TAG_NULL) val = null;
    else if (tag === TAG_INT) {
      const z = r.uvarintBig();
      val = z & 1n ? -(z >> 1n) - 1n : z >> 1n;
    } else if (tag === TAG_REAL) val = r.f64();
    else if (tag === TAG_TEXT) {
      try {
        val = bytesToUtf8(r.bytes(r.uvarint()));
      } catch (err) {
        if (err instanceof ChangeFormatError) throw err;
        throw new ChangeFormatError(`change ${i}: text is not UTF-8`);
      }
    } else if (tag === TAG_BLOB) val = r.bytes(r.uvarint());
    else throw new ChangeFormatError(`change ${i}: unknown value type ${tag}`);
    const c: Change = seen === undefined ? { tbl, pk, col, op, val, hlc } : { tbl, pk, col, op, val, hlc, seen };
    checkChange(c, i, (m) => new ChangeFormatError(m));
    if (!pkOk.has(pk)) {
      decodePk(pk);
      pkOk.add(pk);
    }
    changes.push(c);
  }
  if (r.at !== bytes.length) throw new ChangeFormatError('trailing bytes');
  if (firstUnused !== strings.length) throw new ChangeFormatError('an unused string');
  if (firstUnusedVector !== vectors.length) throw new ChangeFormatError('an unused vector');
  return changes;
}
