/**
 * Canonical pk text (docs/MERGE.md §6): a row's key as the one string that
 * names the row in the stamped change log, casa_clock, casa_pending,
 * casa_conflicts and every change sent.
 *
 * Invariants:
 * - One spelling per key: encodePk is a function of the values alone, the
 *   same on every device, and decodePk accepts a text only when encodePk
 *   gives it back (anything else is a ChangeFormatError), so no row is ever
 *   held under two keys.
 * - Lossless for every SQLite value: integers exactly (64 bits), reals to the
 *   last bit (and -0), text as JSON strings, blobs as lowercase hex.
 * - canonicalPk respells a key as a capture version 1 trigger logged it
 *   (SQLite's JSON: any escapes, upper-case hex, reals as quote() text);
 *   parseObject reads such a version-1 insert's row.
 */
import { bytesToHex, hexToBytes } from '../crypto/bytes.js';
import { ChangeFormatError, type SqlValue } from './change.js';

function realText(n: number): string {
  if (Number.isNaN(n)) throw new RangeError('a real must not be NaN');
  return Object.is(n, -0) ? '-0' : String(n);
}

/**
 * The canonical pk text: a JSON array, no spaces, of the key's values in pk
 * order — text as JSON strings, integers as decimal, `null`, reals as
 * {"r":"<shortest decimal>"} and blobs as {"x":"<lowercase hex>"}.
 */
export function encodePk(values: readonly SqlValue[]): string {
  const parts = values.map((v) => {
    if (v === null) return 'null';
    if (typeof v === 'bigint') return v.toString();
    if (typeof v === 'number') return `{"r":"${realText(v)}"}`;
    if (typeof v === 'string') return JSON.stringify(v);
    if (v instanceof Uint8Array) return `{"x":"${bytesToHex(v)}"}`;
    throw new TypeError('a pk value must be an SqlValue');
  });
  return `[${parts.join(',')}]`;
}

function parseReal(s: string): number {
  if (s === 'Inf' || s === 'Infinity') return Infinity;
  if (s === '-Inf' || s === '-Infinity') return -Infinity;
  if (s === '-0') return -0;
  const n = Number(s);
  if (s.trim() === '' || Number.isNaN(n)) throw new RangeError('bad real');
  return n;
}

/**
 * A reader for the JSON the triggers write (SQLite's: any escapes, upper-case
 * hex, reals as quote() text) and for canonical pk text: arrays and objects
 * of strings, exact integers, null, {"x":hex} blobs and {"r":text} reals.
 */
class JsonValues {
  private i = 0;
  constructor(private readonly s: string) {}

  private ws(): void {
    while (this.i < this.s.length && ' \t\n\r'.includes(this.s[this.i]!)) this.i++;
  }

  private expect(ch: string): void {
    this.ws();
    if (this.s[this.i] !== ch) throw new RangeError(`expected ${ch}`);
    this.i++;
  }

  private peek(): string | undefined {
    this.ws();
    return this.s[this.i];
  }

  private string(): string {
    this.ws();
    const start = this.i;
    if (this.s[start] !== '"') throw new RangeError('expected a string');
    for (let j = start + 1; j < this.s.length; j++) {
      const c = this.s.charCodeAt(j);
      if (c === 0x5c) j++;
      else if (c === 0x22) {
        this.i = j + 1;
        return JSON.parse(this.s.slice(start, j + 1)) as string;
      }
    }
    throw new RangeError('unterminated string');
  }

  value(): SqlValue {
    const c = this.peek();
    if (c === '"') return this.string();
    if (c === '{') {
      this.i++;
      const key = this.string();
      this.expect(':');
      const v = this.string();
      this.expect('}');
      if (key === 'x') {
        if (!/^(?:[0-9a-fA-F]{2})*$/.test(v)) throw new RangeError('bad hex');
        return hexToBytes(v);
      }
      if (key === 'r') return parseReal(v);
      throw new RangeError('bad object key');
    }
    if (this.s.startsWith('null', this.i)) {
      this.i += 4;
      return null;
    }
    const m = /^-?[0-9]+/.exec(this.s.slice(this.i, this.i + 24));
    if (!m) throw new RangeError('bad value');
    const n = BigInt(m[0]);
    if (n < -(2n ** 63n) || n >= 2n ** 63n) throw new RangeError('integer out of range');
    this.i += m[0].length;
    return n;
  }

  array(): SqlValue[] {
    const out: SqlValue[] = [];
    this.expect('[');
    if (this.peek() === ']') this.i++;
    else {
      for (;;) {
        out.push(this.value());
        if (this.peek() === ',') this.i++;
        else break;
      }
      this.expect(']');
    }
    return out;
  }

  object(): [string, SqlValue][] {
    const out: [string, SqlValue][] = [];
    this.expect('{');
    if (this.peek() === '}') this.i++;
    else {
      for (;;) {
        const k = this.string();
        this.expect(':');
        out.push([k, this.value()]);
        if (this.peek() === ',') this.i++;
        else break;
      }
      this.expect('}');
    }
    return out;
  }

  end(): void {
    this.ws();
    if (this.i !== this.s.length) throw new RangeError('trailing text');
  }
}

function parseArray(s: string): SqlValue[] {
  const r = new JsonValues(s);
  const v = r.array();
  r.end();
  return v;
}

export function parseObject(s: string): [string, SqlValue][] {
  const r = new JsonValues(s);
  const v = r.object();
  r.end();
  return v;
}

/** The values of a canonical pk text; anything but canonical throws ChangeFormatError. */
export function decodePk(pk: string): SqlValue[] {
  let values: SqlValue[];
  try {
    values = parseArray(pk);
    if (values.length === 0) throw new RangeError('empty');
    if (encodePk(values) !== pk) throw new RangeError('not canonical');
  } catch (err) {
    throw new ChangeFormatError(`bad pk ${JSON.stringify(pk.slice(0, 80))} (${(err as Error).message})`);
  }
  return values;
}

/** A logged pk (as a trigger wrote it) in canonical form. */
export function canonicalPk(logged: string): string {
  return encodePk(parseArray(logged));
}
