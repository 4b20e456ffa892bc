import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Codec, compress } from '../../src/codec.js';
import { bytesToHex } from '../../src/crypto/bytes.js';
import { vaultKeysFromRoot } from '../../src/crypto/kdf.js';
import {
  AuthenticationError,
  CHUNK_BYTES,
  HEADER_BYTES,
  ObjectFormatError,
  type ObjectFormatReason,
  ObjectType,
  openCanary,
  openObject,
  openObjectReader,
  type OpenParams,
  readHeader,
  sealCanary,
  sealEncoded,
  sealObject,
  sealObjectParts,
  type SealParams,
  TAG_BYTES,
  WrongKeyError,
} from '../../src/crypto/objects.js';

const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 131 + seed * 17 + 7) & 0xff);
const KEY = bytes(32, 1);
const KEY_ID = bytes(8, 2);
const SALT = bytes(32, 3);
const VAULT = '00112233445566778899aabbccddeeff';
const IDENTITY = 'pack:0f0e0d0c';
const SLOW = process.env.SLOW === '1';

/** Ledger-like text: compressible, so zstd objects are smaller than their plaintext. */
function plaintext(n: number): Uint8Array {
  const out = new Uint8Array(n);
  const line = new TextEncoder().encode('2024-03-01;rent;-950.00;EUR\n');
  for (let i = 0; i < n; i++) out[i] = line[i % line.length]! ^ (i % 1000 === 0 ? 1 : 0);
  return out;
}

function seal(over: Partial<SealParams> = {}): Uint8Array {
  return sealObject({
    type: ObjectType.pack,
    codec: Codec.none,
    keyId: KEY_ID,
    purposeKey: KEY,
    vaultId: VAULT,
    identity: IDENTITY,
    plaintext: plaintext(100),
    salt: SALT,
    ...over,
  });
}

function open(object: Uint8Array, over: Partial<OpenParams> = {}): Uint8Array {
  return openObject({
    type: ObjectType.pack,
    keyId: KEY_ID,
    purposeKey: KEY,
    vaultId: VAULT,
    identity: IDENTITY,
    object,
    maxPlaintext: 1 << 20,
    ...over,
  });
}

function failure(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a failure');
}

function expectFormat(fn: () => unknown, reason: ObjectFormatReason): void {
  const err = failure(fn);
  expect(err).toBeInstanceOf(ObjectFormatError);
  expect((err as ObjectFormatError).reason).toBe(reason);
}

function expectAuth(fn: () => unknown): void {
  const err = failure(fn);
  expect(err).toBeInstanceOf(AuthenticationError);
  expect(err.message).toBe('object failed authentication');
}

function mutate(object: Uint8Array, at: number, value: number): Uint8Array {
  const copy = object.slice();
  copy[at] = value;
  return copy;
}

const sameBytes = (a: Uint8Array, b: Uint8Array) => expect(Buffer.compare(a, b)).toBe(0);

describe('seal and open', () => {
  const sizes = [0, 1, 65_535, 65_536, 65_537, 3 * 65_536 + 5];
  for (const codec of [Codec.none, Codec.zstd]) {
    it.each(sizes)(`round trips %i bytes with codec ${codec}`, (n) => {
      const pt = plaintext(n);
      const object = seal({ plaintext: pt, codec });
      if (codec === Codec.none) {
        const chunks = Math.max(1, Math.ceil(n / CHUNK_BYTES));
        expect(object.length).toBe(HEADER_BYTES + n + chunks * TAG_BYTES);
      } else if (n > 1000) {
        expect(object.length).toBeLessThan(n / 2);
      }
      sameBytes(open(object), pt);
    });
  }

  it('sealObjectParts writes exactly sealObject\'s bytes, however the plaintext is cut into parts', () => {
    fc.assert(
      fc.property(fc.array(fc.nat({ max: 3 * CHUNK_BYTES }), { maxLength: 5 }), (lengths) => {
        const parts = lengths.map((n, k) => plaintext(n).map((b) => b ^ k));
        const whole = new Uint8Array(lengths.reduce((a, b) => a + b, 0));
        let at = 0;
        for (const p of parts) {
          whole.set(p, at);
          at += p.length;
        }
        const pieces: Uint8Array[] = [];
        sealObjectParts({ type: ObjectType.pack, keyId: KEY_ID, purposeKey: KEY, vaultId: VAULT, identity: IDENTITY, salt: SALT, parts }, (b) =>
          pieces.push(Uint8Array.from(b)),
        );
        sameBytes(Buffer.concat(pieces), seal({ plaintext: whole }));
      }),
      { numRuns: 40 },
    );
  });

  it('opens in place when asked (codec none): the result is a view of the object, and a failure leaves no plaintext', () => {
    const pt = plaintext(3 * CHUNK_BYTES + 17);
    const object = seal({ plaintext: pt });
    const opened = open(object, { inPlace: true });
    sameBytes(opened, pt);
    expect(opened.buffer).toBe(object.buffer);
    const bad = seal({ plaintext: pt });
    bad[bad.length - 1]! ^= 1;
    expect(() => open(bad, { inPlace: true })).toThrow(AuthenticationError);
    expect(Buffer.from(bad.subarray(0, pt.length)).includes(Buffer.from(pt.subarray(0, 64)))).toBe(false);
  });

  it('seals into a given buffer when it is long enough: same bytes, a view of it', () => {
    const pt = plaintext(2 * CHUNK_BYTES + 5);
    const encoded = compress(Codec.zstd, pt);
    const params = { type: ObjectType.pack, codec: Codec.zstd, keyId: KEY_ID, purposeKey: KEY, vaultId: VAULT, identity: IDENTITY, salt: SALT, encoded };
    const fresh = sealEncoded(params);
    sameBytes(fresh, seal({ codec: Codec.zstd, plaintext: pt }));
    const into = new Uint8Array(fresh.length + 100).fill(0xee);
    const reused = sealEncoded({ ...params, into });
    sameBytes(reused, fresh);
    expect(reused.buffer).toBe(into.buffer);
    const small = new Uint8Array(fresh.length - 1);
    const other = sealEncoded({ ...params, into: small });
    sameBytes(other, fresh);
    expect(other.buffer).not.toBe(small.buffer);
  });

  it('openObjectReader hands out what openObject returns, and authenticates every chunk before the first piece', () => {
    for (const codec of [Codec.none, Codec.zstd] as const) {
      const pt = plaintext(5 * CHUNK_BYTES + 123);
      const object = seal({ codec, plaintext: pt });
      const r = openObjectReader({ type: ObjectType.pack, keyId: KEY_ID, purposeKey: KEY, vaultId: VAULT, identity: IDENTITY, object, maxPlaintext: pt.length });
      const pieces: Uint8Array[] = [];
      for (;;) {
        const win = new Uint8Array(100_000);
        const n = r.read(win);
        pieces.push(win.slice(0, n));
        if (n < win.length) break;
      }
      r.end();
      sameBytes(Buffer.concat(pieces), pt);
      // A flipped bit in the last chunk fails before anything can be read.
      const bad = Uint8Array.from(object);
      bad[bad.length - 1]! ^= 1;
      expect(() =>
        openObjectReader({ type: ObjectType.pack, keyId: KEY_ID, purposeKey: KEY, vaultId: VAULT, identity: IDENTITY, object: bad, maxPlaintext: pt.length }),
      ).toThrow(AuthenticationError);
      // More plaintext than the caller's limit is a format error (too_large), as with openObject.
      const e = failure(() =>
        openObjectReader({ type: ObjectType.pack, keyId: KEY_ID, purposeKey: KEY, vaultId: VAULT, identity: IDENTITY, object, maxPlaintext: pt.length - 1 }).read(
          new Uint8Array(pt.length),
        ),
      );
      expect(e).toBeInstanceOf(ObjectFormatError);
      expect((e as ObjectFormatError).reason).toBe('too_large');
    }
  });

  it('is deterministic for a given salt and fresh for another', () => {
    sameBytes(seal(), seal());
    expect(bytesToHex(seal({ salt: bytes(32, 9) }).subarray(HEADER_BYTES))).not.toBe(bytesToHex(seal().subarray(HEADER_BYTES)));
  });

  it('writes the header of FORMAT.md §3', () => {
    const object = seal({ type: ObjectType.changeset, codec: Codec.zstd, identity: 'changeset:dev1:7' });
    expect(bytesToHex(object.subarray(0, 8))).toBe('4341534101040100');
    expect(readHeader(object)).toEqual({ version: 1, type: ObjectType.changeset, codec: Codec.zstd, keyId: KEY_ID, salt: SALT });
  });

  it('checks its parameters by name, never echoing bytes', () => {
    const err = failure(() => seal({ salt: new Uint8Array(31).fill(0xab) }));
    expect(err).toBeInstanceOf(RangeError);
    expect(err.message).toBe('salt must be 32 bytes, got 31');
    expect(() => seal({ purposeKey: 'k' as unknown as Uint8Array })).toThrow(TypeError);
    expect(() => seal({ vaultId: 'NOT-A-VAULT' })).toThrow(/vaultId/);
    expect(() => seal({ identity: '' })).toThrow(/identity/);
    expect(() => seal({ type: 9 as ObjectType })).toThrow(/type/);
    expect(() => open(seal(), { maxPlaintext: -1 })).toThrow(/maxPlaintext/);
  });
});

describe('opening refuses, in the order of FORMAT.md §3', () => {
  const object = seal({ plaintext: plaintext(3 * CHUNK_BYTES + 5) });

  it('a wrong purpose key fails authentication', () => {
    expectAuth(() => open(object, { purposeKey: bytes(32, 5) }));
  });

  it('a truncated header is a format error, whatever else is wrong', () => {
    for (const n of [0, 1, 4, 47]) expectFormat(() => open(object.subarray(0, n), { keyId: bytes(8, 9) }), 'truncated_header');
  });

  it('every header field tampered', () => {
    for (let i = 0; i < 4; i++) expectFormat(() => open(mutate(object, i, object[i]! ^ 0x20)), 'bad_magic');
    expectFormat(() => open(mutate(object, 4, 2)), 'unsupported_version');
    expectFormat(() => open(mutate(object, 4, 0)), 'unsupported_version');
    expectFormat(() => open(mutate(object, 5, 0)), 'unknown_type');
    expectFormat(() => open(mutate(object, 5, 9)), 'unknown_type');
    expectFormat(() => open(mutate(object, 5, ObjectType.manifest)), 'unexpected_type');
    expectFormat(() => open(mutate(object, 6, 2)), 'unknown_codec');
    expectAuth(() => open(mutate(object, 6, Codec.zstd))); // a valid codec, but the header is in the AD
    expectFormat(() => open(mutate(object, 7, 1)), 'bad_reserved');
    for (let i = 8; i < 16; i++) expect(failure(() => open(mutate(object, i, object[i]! ^ 1)))).toBeInstanceOf(WrongKeyError);
    for (let i = 16; i < 48; i++) expectAuth(() => open(mutate(object, i, object[i]! ^ 0x80)));
  });

  it('format errors come before the key id, the key id before the body', () => {
    const wrongKey = mutate(object, 8, object[8]! ^ 1);
    expectFormat(() => open(mutate(wrongKey, 7, 1)), 'bad_reserved');
    expect(failure(() => open(wrongKey.subarray(0, HEADER_BYTES + 3)))).toBeInstanceOf(WrongKeyError);
  });

  it('a body shorter than a tag, or a final chunk shorter than a tag, is truncated', () => {
    expectFormat(() => open(object.subarray(0, HEADER_BYTES)), 'truncated_body');
    expectFormat(() => open(object.subarray(0, HEADER_BYTES + TAG_BYTES - 1)), 'truncated_body');
    const boundary = HEADER_BYTES + 2 * (CHUNK_BYTES + TAG_BYTES);
    expectFormat(() => open(object.subarray(0, boundary + 15)), 'truncated_body');
    // An empty final chunk after full ones: only an empty plaintext has one.
    expectFormat(() => open(object.subarray(0, boundary + TAG_BYTES)), 'truncated_body');
  });

  it('a body cut at a chunk boundary fails authentication (its new last chunk was not sealed as last)', () => {
    for (const chunks of [1, 2, 3]) expectAuth(() => open(object.subarray(0, HEADER_BYTES + chunks * (CHUNK_BYTES + TAG_BYTES))));
  });

  it('trailing bytes fail authentication', () => {
    for (const extra of [1, 15, 16, 17, 1000]) {
      const longer = new Uint8Array(object.length + extra);
      longer.set(object);
      expectAuth(() => open(longer));
    }
  });

  it('swapped or repeated chunks fail authentication', () => {
    const c = CHUNK_BYTES + TAG_BYTES;
    const swapped = object.slice();
    swapped.set(object.subarray(HEADER_BYTES + c, HEADER_BYTES + 2 * c), HEADER_BYTES);
    swapped.set(object.subarray(HEADER_BYTES, HEADER_BYTES + c), HEADER_BYTES + c);
    expectAuth(() => open(swapped));
  });

  it('binds the vault id, the identity and the type (AD and key)', () => {
    const small = seal();
    expectAuth(() => open(small, { vaultId: 'ffeeddccbbaa99887766554433221100' }));
    expectAuth(() => open(small, { identity: 'pack:0f0e0d0d' }));
    expectAuth(() => open(small, { identity: IDENTITY + ' ' }));
    // The same object relabelled as a manifest and opened as one.
    expectAuth(() => open(mutate(small, 5, ObjectType.manifest), { type: ObjectType.manifest }));
  });

  it('refuses plaintext over the caller limit after authentication, with either codec', () => {
    const pt = new Uint8Array(10 * 1024 * 1024); // zeros: a ~1 KiB zstd object
    const bomb = seal({ codec: Codec.zstd, plaintext: pt });
    expect(bomb.length).toBeLessThan(4096);
    expectFormat(() => open(bomb, { maxPlaintext: 64 * 1024 }), 'too_large');
    expect(open(bomb, { maxPlaintext: pt.length })).toHaveLength(pt.length);
    expectFormat(() => open(seal({ plaintext: plaintext(1001) }), { maxPlaintext: 1000 }), 'too_large');
    // Tampering still wins over the size check: authentication comes first.
    expectAuth(() => open(mutate(bomb, bomb.length - 1, bomb[bomb.length - 1]! ^ 1), { maxPlaintext: 10 }));
  });
});

describe('flipping any single bit makes open throw (fast-check)', () => {
  const small = seal({ plaintext: plaintext(300), identity: 'manifest:s1:3', type: ObjectType.manifest });
  const multi = seal({ plaintext: plaintext(2 * CHUNK_BYTES + 77), codec: Codec.none });
  const zstd = seal({ plaintext: plaintext(200_000), codec: Codec.zstd });
  const cases = [
    { object: small, type: ObjectType.manifest, identity: 'manifest:s1:3' },
    { object: multi, type: ObjectType.pack, identity: IDENTITY },
    { object: zstd, type: ObjectType.pack, identity: IDENTITY },
  ];

  it('for every kind of object', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: cases.length - 1 }).chain((c) =>
          fc.tuple(fc.constant(c), fc.nat({ max: cases[c]!.object.length * 8 - 1 })),
        ),
        ([c, bit]) => {
          const { object, type, identity } = cases[c]!;
          const flipped = mutate(object, bit >> 3, object[bit >> 3]! ^ (1 << (bit & 7)));
          const err = failure(() => open(flipped, { type, identity }));
          expect([ObjectFormatError, WrongKeyError, AuthenticationError].some((k) => err instanceof k)).toBe(true);
        },
      ),
      { seed: Number(process.env.FC_SEED ?? 20_240_301), numRuns: SLOW ? 2000 : 100 },
    );
  });
});

describe('canary', () => {
  const keys = vaultKeysFromRoot(bytes(32, 11));
  const other = vaultKeysFromRoot(bytes(32, 12));

  it('opens under the right keys', () => {
    const canary = sealCanary(keys, SALT);
    expect(readHeader(canary).type).toBe(ObjectType.canary);
    expect(() => openCanary(keys, keys.vaultId, canary)).not.toThrow();
  });

  it('says wrong key for another phrase', () => {
    expect(failure(() => openCanary(other, keys.vaultId, sealCanary(keys, SALT)))).toBeInstanceOf(WrongKeyError);
  });

  it('fails authentication for another vault id or a tampered canary', () => {
    const canary = sealCanary(keys, SALT);
    expectAuth(() => openCanary(keys, other.vaultId, canary));
    expectAuth(() => openCanary(keys, keys.vaultId, mutate(canary, canary.length - 1, canary[canary.length - 1]! ^ 1)));
  });

  it('refuses an authentic object that is not the canary text', () => {
    const fake = sealObject({
      type: ObjectType.canary,
      codec: Codec.none,
      keyId: keys.keyId,
      purposeKey: keys.canaryKey,
      vaultId: keys.vaultId,
      identity: 'canary',
      plaintext: new TextEncoder().encode('something else'),
      salt: SALT,
    });
    expectFormat(() => openCanary(keys, keys.vaultId, fake), 'bad_canary');
  });
});
