/**
 * CPace over ristretto255 / SHA-512 (src/crypto/pake.ts) against the CFRG
 * draft's published vectors (test/vectors/cpace-ristretto255.json, copied from
 * cfrg/draft-irtf-cfrg-cpace testvectors.json) and the intermediate values the
 * draft prints next to them (testvectors.md in the same repository: string
 * utilities, generator string, hash result, transcripts).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ristretto255, ristretto255_hasher } from '@noble/curves/ed25519.js';
import { sha512 } from '@noble/hashes/sha2.js';
import { describe, expect, it } from 'vitest';
import { bytesToHex, hexToBytes, utf8ToBytes } from '../../src/crypto/bytes.js';
import {
  calculateGenerator,
  cpaceShare,
  deriveIsk,
  DSI,
  DSI_ISK,
  generatorString,
  lexicographicallyLarger,
  lvCat,
  lvSplit,
  oCat,
  PakeError,
  prependLen,
  sampleScalar,
  scalarMult,
  scalarMultVfy,
  sidOutput,
  transcriptIr,
  transcriptOc,
} from '../../src/crypto/pake.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const file = JSON.parse(readFileSync(join(here, '../vectors/cpace-ristretto255.json'), 'utf8'));
const b64 = (s: string) => new Uint8Array(Buffer.from(s, 'base64'));
const hex = bytesToHex;
const unhex = (s: string) => hexToBytes(s.replace(/\s+/g, ''));
const utf8 = utf8ToBytes;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const raw: Record<string, any> = file.G_Coffee25519;
const V = Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, b64(v as string)])) as Record<string, Uint8Array>;
const points = file.G_Coffee25519_points;

/** The element ℓ·anything is the identity; its encoding is 32 zero bytes (upstream's "Invalid Y2"). */
const IDENTITY = new Uint8Array(32);

function pakeError(f: () => unknown): PakeError {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(PakeError);
    return err as PakeError;
  }
  throw new Error('expected a PakeError');
}

describe('the vector file', () => {
  it('is the ristretto255 entry of the draft, with the fields this test reads', () => {
    expect(file.name).toBe('cpace-ristretto255');
    expect(file.sources.join(' ')).toContain('032a28c83eb53899c88f3800b677edc5865b0216');
    for (const k of ['PRS', 'CI', 'sid', 'g', 'ya', 'ADa', 'Ya', 'yb', 'ADb', 'Yb', 'K', 'ISK_IR', 'ISK_SY', 'sid_output_ir', 'sid_output_oc']) {
      expect(raw[k], k).toBeTypeOf('string');
    }
    expect(new TextDecoder().decode(V.PRS)).toBe('Password');
    expect(new TextDecoder().decode(V.CI)).toBe('oc\x0bB_responder\x0bA_initiator');
  });
});

describe('string utilities (draft testvectors.md)', () => {
  it('prepend_len is LEB128 length then data', () => {
    expect(hex(prependLen(new Uint8Array(0)))).toBe('00');
    expect(hex(prependLen(utf8('1234')))).toBe('0431323334');
    const r127 = Uint8Array.from({ length: 127 }, (_, i) => i);
    const r128 = Uint8Array.from({ length: 128 }, (_, i) => i);
    expect(hex(prependLen(r127))).toBe(`7f${hex(r127)}`);
    expect(hex(prependLen(r128))).toBe(`8001${hex(r128)}`);
    expect(hex(prependLen(new Uint8Array(300)).subarray(0, 2))).toBe('ac02');
    expect(hex(prependLen(new Uint8Array(16384)).subarray(0, 3))).toBe('808001');
  });

  it('lv_cat', () => {
    expect(hex(lvCat(utf8('1234'), utf8('5'), utf8(''), utf8('678')))).toBe('043132333401350003363738');
    expect(lvCat()).toEqual(new Uint8Array(0));
  });

  it('lvSplit inverts lv_cat and rejects anything else', () => {
    const fields = [utf8('1234'), new Uint8Array(0), new Uint8Array(200).fill(7), utf8('x')];
    expect(lvSplit(lvCat(...fields))).toEqual(fields);
    expect(lvSplit(new Uint8Array(0))).toEqual([]);
    expect(lvSplit(unhex('0431323334'))).toEqual([utf8('1234')]);
    expect(lvSplit(unhex('04313233'))).toBeUndefined(); // truncated field
    expect(lvSplit(unhex('80'))).toBeUndefined(); // truncated length
    expect(lvSplit(unhex('8000'))).toBeUndefined(); // non-minimal LEB128 for 0
    expect(lvSplit(unhex('840031323334'))).toBeUndefined(); // non-minimal LEB128 for 4
    // The draft's "invalid encoded messages": lengths that do not add up.
    for (const bad of ['ffffff', 'ffff03', '00ffff03', '00ffffff']) expect(lvSplit(unhex(bad)), bad).toBeUndefined();
  });

  it('lexicographical order and o_cat', () => {
    const b = (...xs: number[]) => Uint8Array.from(xs);
    expect(lexicographicallyLarger(b(0), b(0, 0))).toBe(false);
    expect(lexicographicallyLarger(b(1), b(0, 0))).toBe(true);
    expect(lexicographicallyLarger(b(0, 0), b(0))).toBe(true);
    expect(lexicographicallyLarger(b(0, 0), b(1))).toBe(false);
    expect(lexicographicallyLarger(b(0, 1), b(1))).toBe(false);
    expect(lexicographicallyLarger(utf8('ABCD'), utf8('BCD'))).toBe(false);
    expect(hex(oCat(utf8('ABCD'), utf8('BCD')))).toBe('6f6342434441424344');
    expect(hex(oCat(utf8('BCD'), utf8('ABCDE')))).toBe('6f634243444142434445');
  });

  it('transcript_ir and transcript_oc', () => {
    const [pa, pb] = [utf8('PartyA'), utf8('PartyB')];
    expect(hex(transcriptIr(utf8('123'), pa, utf8('234'), pb))).toBe('03313233065061727479410332333406506172747942');
    expect(hex(transcriptIr(utf8('3456'), pa, utf8('2345'), pb))).toBe('043334353606506172747941043233343506506172747942');
    expect(hex(transcriptOc(utf8('123'), pa, utf8('234'), pb))).toBe('6f6303323334065061727479420331323306506172747941');
    expect(hex(transcriptOc(utf8('3456'), pa, utf8('2345'), pb))).toBe('6f63043334353606506172747941043233343506506172747942');
  });
});

describe('CPace ristretto255 / SHA-512 (G_Coffee25519)', () => {
  const GENERATOR_STRING =
    '11435061636552697374726574746f3235350850617373776f726464' +
    '00'.repeat(100) +
    '1a6f630b425f726573706f6e6465720b415f696e69746961746f72107e4b4791d6a8ef019b936c79fb7f2c57';

  it('DSI and DSI_ISK', () => {
    expect(hex(DSI)).toBe('435061636552697374726574746f323535');
    expect(hex(DSI_ISK)).toBe('435061636552697374726574746f3235355f49534b');
  });

  it('generator_string: 100 bytes of zero padding fill the first SHA-512 block', () => {
    const gs = generatorString(V.PRS!, V.CI!, V.sid!);
    expect(gs.length).toBe(172);
    expect(hex(gs)).toBe(GENERATOR_STRING);
    expect(hex(sha512(gs))).toBe(
      'c63a5750e2439c17ccd8213be14fde2f87e1bc637001a97f5929c77b30ea0e08' +
        'afbc75ace5d3d73b2842a79d01488c5fd7ea30d475ee609545af1bfd1ff77c8e',
    );
    // A password longer than the block gets no padding (max(0, ...)).
    const long = new Uint8Array(200);
    expect(generatorString(long, V.CI!, V.sid!).length).toBe(18 + 202 + 1 + 27 + 17);
  });

  it('calculate_generator: the one-way map of SHA-512(generator_string), not hash_to_curve', () => {
    const g = calculateGenerator(V.PRS!, V.CI!, V.sid!);
    expect(hex(g)).toBe(hex(V.g!));
    const gs = generatorString(V.PRS!, V.CI!, V.sid!);
    expect(hex(ristretto255_hasher.deriveToCurve!(sha512(gs)).toBytes())).toBe(hex(V.g!));
    expect(hex(ristretto255_hasher.hashToCurve(gs).toBytes())).not.toBe(hex(V.g!));
  });

  it('Ya = ya·g and Yb = yb·g', () => {
    expect(hex(scalarMult(V.ya!, V.g!))).toBe(hex(V.Ya!));
    expect(hex(scalarMult(V.yb!, V.g!))).toBe(hex(V.Yb!));
  });

  it('K = scalar_mult_vfy(ya, Yb) = scalar_mult_vfy(yb, Ya)', () => {
    expect(hex(scalarMultVfy(V.ya!, V.Yb!))).toBe(hex(V.K!));
    expect(hex(scalarMultVfy(V.yb!, V.Ya!))).toBe(hex(V.K!));
  });

  it('transcripts of the vector (draft testvectors.md)', () => {
    expect(hex(transcriptIr(V.Ya!, V.ADa!, V.Yb!, V.ADb!))).toBe(
      '20d40fb265a7abeaee7939d91a585fe59f7053f982c296ec413c624c669308f87a03414461' +
        '2008bcf6e9777a9c313a3db6daa510f2d398403319c2341bd506a92e672eb7e30703414462',
    );
    expect(hex(transcriptOc(V.Ya!, V.ADa!, V.Yb!, V.ADb!))).toBe(
      '6f6320d40fb265a7abeaee7939d91a585fe59f7053f982c296ec413c624c669308f87a03414461' +
        '2008bcf6e9777a9c313a3db6daa510f2d398403319c2341bd506a92e672eb7e30703414462',
    );
  });

  it('ISK_IR and ISK_SY (ordered concatenation)', () => {
    const input = { sid: V.sid!, K: V.K!, Ya: V.Ya!, ADa: V.ADa!, Yb: V.Yb!, ADb: V.ADb! };
    expect(hex(deriveIsk(input))).toBe(hex(V.ISK_IR!));
    expect(hex(deriveIsk(input, 'ir'))).toBe(hex(V.ISK_IR!));
    expect(hex(deriveIsk(input, 'oc'))).toBe(hex(V.ISK_SY!));
    // The ordered transcript does not depend on who is A: swapping the parties keeps ISK_SY.
    const swapped = { sid: V.sid!, K: V.K!, Ya: V.Yb!, ADa: V.ADb!, Yb: V.Ya!, ADb: V.ADa! };
    expect(hex(deriveIsk(swapped, 'oc'))).toBe(hex(V.ISK_SY!));
    expect(hex(deriveIsk(swapped, 'ir'))).not.toBe(hex(V.ISK_IR!));
    expect(() => deriveIsk(input, 'xx' as 'ir')).toThrow(RangeError);
  });

  it('sid_output_ir and sid_output_oc ("CPaceSidOutput" || transcript)', () => {
    const input = { Ya: V.Ya!, ADa: V.ADa!, Yb: V.Yb!, ADb: V.ADb! };
    expect(hex(sidOutput(input, 'ir'))).toBe(hex(V.sid_output_ir!));
    expect(hex(sidOutput(input, 'oc'))).toBe(hex(V.sid_output_oc!));
  });
});

describe('scalar_mult_vfy', () => {
  const s = b64(points.Valid.s);
  const X = b64(points.Valid.X);

  it('valid point: scalar_mult and scalar_mult_vfy agree with the vector', () => {
    expect(hex(scalarMult(s, X))).toBe(hex(b64(points.Valid['G.scalar_mult(s,decode(X))'])));
    expect(hex(scalarMultVfy(s, X))).toBe(hex(b64(points.Valid['G.scalar_mult_vfy(s,X)'])));
  });

  it('the vector\'s invalid encoding throws invalid_point', () => {
    expect(pakeError(() => scalarMultVfy(s, b64(points['Invalid Y']))).reason).toBe('invalid_point');
  });

  it('the identity (upstream "Invalid Y2") throws invalid_point', () => {
    expect(pakeError(() => scalarMultVfy(s, IDENTITY)).reason).toBe('invalid_point');
    expect(pakeError(() => scalarMultVfy(V.ya!, IDENTITY)).reason).toBe('invalid_point');
  });

  it.each([
    // RFC 9496 Appendix A.2 bad encodings: non-canonical field elements, negative field elements, ...
    '00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff',
    'ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
    'f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
    'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
    '0100000000000000000000000000000000000000000000000000000000000000',
    '01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
    // ... and the Ed25519 base point, which is not a ristretto255 encoding.
    '5866666666666666666666666666666666666666666666666666666666666666',
  ])('bad encoding %s throws invalid_point', (bad) => {
    expect(pakeError(() => scalarMultVfy(s, unhex(bad))).reason).toBe('invalid_point');
  });

  it('wrong lengths and non-bytes are invalid points, never a crash', () => {
    for (const bad of [new Uint8Array(31), new Uint8Array(33), X.subarray(0, 31), new Uint8Array(0)]) {
      expect(pakeError(() => scalarMultVfy(s, bad)).reason).toBe('invalid_point');
    }
    expect(pakeError(() => scalarMultVfy(s, 'X' as unknown as Uint8Array)).reason).toBe('invalid_point');
  });

  it('a zero scalar (or ℓ) is a caller error, not a point error', () => {
    const order = ristretto255.Point.Fn.ORDER;
    const l = new Uint8Array(32);
    for (let i = 0, n = order; i < 32; i++, n >>= 8n) l[i] = Number(n & 0xffn);
    expect(() => scalarMultVfy(new Uint8Array(32), X)).toThrow(RangeError);
    expect(() => scalarMultVfy(l, X)).toThrow(RangeError);
    expect(() => scalarMultVfy(new Uint8Array(31), X)).toThrow(RangeError);
  });
});

describe('sample_scalar', () => {
  const order = ristretto255.Point.Fn.ORDER;
  const le = (b: Uint8Array) => b.reduceRight((n, x) => (n << 8n) | BigInt(x), 0n);

  it('reduces 64 little-endian random bytes modulo ℓ', () => {
    const r = new Uint8Array(64).fill(0xff);
    const y = sampleScalar(() => r.slice());
    expect(y.length).toBe(32);
    expect(le(y)).toBe((2n ** 512n - 1n) % order);
    const one = new Uint8Array(64);
    one[0] = 1;
    expect(le(sampleScalar(() => one.slice()))).toBe(1n);
  });

  it('rejects a broken random source', () => {
    expect(() => sampleScalar(() => new Uint8Array(64))).toThrow(RangeError);
    expect(() => sampleScalar(() => new Uint8Array(32))).toThrow(RangeError);
    expect(() => sampleScalar('x' as unknown as () => Uint8Array)).toThrow(TypeError);
  });
});

describe('a whole CPace run', () => {
  let counter = 0;
  const random = (n: number) => {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = (counter * 131 + i * 17 + 1) & 0xff;
    counter++;
    return out;
  };
  const ci = utf8('test/ci');
  const sid = utf8('0123456789abcdef');

  it('same password: same ISK; another password: another ISK', () => {
    const a = cpaceShare({ prs: utf8('pw'), ci, sid, random });
    const b = cpaceShare({ prs: utf8('pw'), ci, sid, random });
    const c = cpaceShare({ prs: utf8('pW'), ci, sid, random });
    const ADa = utf8('A');
    const ADb = utf8('B');
    const iskA = deriveIsk({ sid, K: scalarMultVfy(a.y, b.Y), Ya: a.Y, ADa, Yb: b.Y, ADb });
    const iskB = deriveIsk({ sid, K: scalarMultVfy(b.y, a.Y), Ya: a.Y, ADa, Yb: b.Y, ADb });
    expect(hex(iskA)).toBe(hex(iskB));
    const iskA2 = deriveIsk({ sid, K: scalarMultVfy(a.y, c.Y), Ya: a.Y, ADa, Yb: c.Y, ADb });
    const iskC = deriveIsk({ sid, K: scalarMultVfy(c.y, a.Y), Ya: a.Y, ADa, Yb: c.Y, ADb });
    expect(hex(iskA2)).not.toBe(hex(iskC));
  });

  it('inputs are checked at the boundary', () => {
    expect(() => generatorString('pw' as unknown as Uint8Array, ci, sid)).toThrow(TypeError);
    expect(() => lvCat('x' as unknown as Uint8Array)).toThrow(TypeError);
    expect(() => prependLen(null as unknown as Uint8Array)).toThrow(TypeError);
    expect(() => scalarMult(V.ya!, new Uint8Array(31))).toThrow(RangeError);
    expect(() => deriveIsk({ sid, K: new Uint8Array(31), Ya: V.Ya!, ADa: V.ADa!, Yb: V.Yb!, ADb: V.ADb! })).toThrow(RangeError);
  });
});
