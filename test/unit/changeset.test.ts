// Changeset batches (docs/FORMAT.md §7, src/changesets/batch.ts): the sealed
// format, what a relay that moves, alters, drops, reorders or replays batches
// runs into, and the chain rules.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { vaultKeysFromRoot } from '../../src/crypto/kdf.js';
import { AuthenticationError, HEADER_BYTES, ObjectFormatError, ObjectType, sealObject, WrongKeyError, Codec } from '../../src/crypto/objects.js';
import {
  BatchChainError,
  BatchFormatError,
  checkChain,
  checkChains,
  MAX_BATCH_BODY,
  openBatch,
  sealBatch,
  type BatchChainReason,
  type ChainLink,
} from '../../src/changesets/batch.js';
import { sha256Hex } from '../../src/crypto/sha256.js';

const keys = vaultKeysFromRoot(new Uint8Array(32).fill(21));
const other = vaultKeysFromRoot(new Uint8Array(32).fill(22));
const DEV = '0123456789abcdef';
const DEV2 = 'fedcba9876543210';
const random = (n: number) => new Uint8Array(randomBytes(n));
const body = (text: string) => new TextEncoder().encode(text);

function batch(seq: number, prev: string, deviceId = DEV, data = body(`changes of batch ${seq}\n`.repeat(20))) {
  return sealBatch(keys, { deviceId, seq, prev, schema: 'schema-v1:abc', count: 20, time: 1_700_000_000_000 + seq }, data, random);
}

/** A device's chain of `n` batches. */
function chain(n: number, deviceId = DEV): { seq: number; bytes: Uint8Array; hash: string; prev: string }[] {
  const out: { seq: number; bytes: Uint8Array; hash: string; prev: string }[] = [];
  let prev = '';
  for (let seq = 1; seq <= n; seq++) {
    const b = batch(seq, prev, deviceId);
    out.push({ seq, prev, ...b });
    prev = b.hash;
  }
  return out;
}

function chainError(fn: () => unknown): BatchChainReason {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(BatchChainError);
    return (err as BatchChainError).reason;
  }
  throw new Error('expected a BatchChainError');
}

describe('sealBatch / openBatch', () => {
  it('round-trips header and body; the hash is the SHA-256 of the sealed bytes', () => {
    const data = body('opaque change log\n'.repeat(1000));
    const b = sealBatch(keys, { deviceId: DEV, seq: 1, prev: '', schema: 'fp', count: 1000, time: 42 }, data, random);
    expect(b.hash).toBe(sha256Hex(b.bytes));
    expect(b.bytes[5]).toBe(ObjectType.changeset);
    expect(b.bytes[6]).toBe(Codec.zstd);
    expect(b.bytes.length).toBeLessThan(data.length); // compressed before encryption
    const opened = openBatch(keys, { deviceId: DEV, seq: 1 }, b.bytes, '');
    expect(opened.header).toEqual({ format: 1, vaultId: keys.vaultId, deviceId: DEV, seq: 1, prev: '', schema: 'fp', count: 1000, time: 42 });
    expect(opened.body).toEqual(data);
    expect(opened.hash).toBe(b.hash);
    // An empty body is a batch too; the plaintext never shows in the sealed bytes.
    const empty = sealBatch(keys, { deviceId: DEV, seq: 2, prev: b.hash, schema: '', count: 0, time: 0 }, new Uint8Array(0), random);
    expect(openBatch(keys, { deviceId: DEV, seq: 2 }, empty.bytes, b.hash).body).toEqual(new Uint8Array(0));
    expect(Buffer.from(b.bytes).includes(Buffer.from('opaque change log'))).toBe(false);
  });

  it('refuses bad headers and oversized bodies when sealing', () => {
    const ok = { deviceId: DEV, seq: 2, prev: 'a'.repeat(64), schema: 's', count: 0, time: 0 };
    for (const bad of [
      { ...ok, deviceId: 'XYZ' },
      { ...ok, seq: 0 },
      { ...ok, seq: 1.5 },
      { ...ok, prev: '' }, // seq 2 must name its predecessor
      { ...ok, seq: 1 }, // seq 1 has none
      { ...ok, schema: 'x'.repeat(129) },
      { ...ok, count: -1 },
    ]) {
      expect(() => sealBatch(keys, bad, new Uint8Array(1), random)).toThrow(RangeError);
    }
    expect(() => sealBatch(keys, ok, new Uint8Array(MAX_BATCH_BODY + 1), random)).toThrow(RangeError);
    // An incompressible body near the limit seals past the relay's cap: the caller must split it.
    expect(() => sealBatch(keys, ok, random(MAX_BATCH_BODY), random)).toThrow(/split/);
  });

  it('fails with the wrong key (WrongKeyError) and on any flipped byte (AuthenticationError or ObjectFormatError)', () => {
    const b = batch(1, '');
    expect(() => openBatch(other, { deviceId: DEV, seq: 1 }, b.bytes, '')).toThrow(WrongKeyError);
    for (const at of [HEADER_BYTES + 3, b.bytes.length - 1, 20 /* salt */]) {
      const bad = b.bytes.slice();
      bad[at]! ^= 0x01;
      expect(() => openBatch(keys, { deviceId: DEV, seq: 1 }, bad, '')).toThrow(AuthenticationError);
    }
    const badMagic = b.bytes.slice();
    badMagic[0]! ^= 0x01;
    expect(() => openBatch(keys, { deviceId: DEV, seq: 1 }, badMagic, '')).toThrow(ObjectFormatError);
    expect(() => openBatch(keys, { deviceId: DEV, seq: 1 }, b.bytes.subarray(0, b.bytes.length - 1), '')).toThrow(AuthenticationError);
  });

  it('fails authentication when the relay moves a batch to another seq or device', () => {
    const [b1, b2] = chain(2);
    expect(() => openBatch(keys, { deviceId: DEV, seq: 2 }, b1!.bytes, null)).toThrow(AuthenticationError);
    expect(() => openBatch(keys, { deviceId: DEV, seq: 1 }, b2!.bytes, null)).toThrow(AuthenticationError);
    expect(() => openBatch(keys, { deviceId: DEV2, seq: 1 }, b1!.bytes, null)).toThrow(AuthenticationError);
    // Another vault's key opens nothing of this one, even with its key id forced (the AD binds the vault).
    expect(() => openBatch({ ...other, keyId: keys.keyId }, { deviceId: DEV, seq: 1 }, b1!.bytes, null)).toThrow(AuthenticationError);
  });

  it('checks the chain on open when asked: a batch not following expectedPrev is forked', () => {
    const [, b2] = chain(2);
    expect(chainError(() => openBatch(keys, { deviceId: DEV, seq: 2 }, b2!.bytes, 'b'.repeat(64)))).toBe('forked');
    expect(openBatch(keys, { deviceId: DEV, seq: 2 }, b2!.bytes, b2!.prev).header.seq).toBe(2);
  });

  it('refuses an authenticated object whose header lies about vault, device or seq (mismatch) or is malformed', () => {
    const seal = (header: unknown, raw?: Uint8Array) => {
      const json = raw ?? body(JSON.stringify(header));
      const plaintext = new Uint8Array(4 + json.length);
      new DataView(plaintext.buffer).setUint32(0, json.length);
      plaintext.set(json, 4);
      return sealObject({ type: ObjectType.changeset, codec: Codec.zstd, keyId: keys.keyId, purposeKey: keys.changesetKey, vaultId: keys.vaultId, identity: `changeset:${DEV}:1`, plaintext, salt: random(32) });
    };
    const h = { format: 1, vaultId: keys.vaultId, deviceId: DEV, seq: 1, prev: '', schema: '', count: 0, time: 0 };
    expect(openBatch(keys, { deviceId: DEV, seq: 1 }, seal(h), '').header).toEqual(h);
    for (const lie of [{ deviceId: DEV2 }, { vaultId: other.vaultId }, { seq: 2, prev: 'c'.repeat(64) }]) {
      expect(chainError(() => openBatch(keys, { deviceId: DEV, seq: 1 }, seal({ ...h, ...lie }), null))).toBe('mismatch');
    }
    for (const bad of [{ ...h, format: 2 }, { ...h, extra: 1 }, { ...h, count: '1' }, [1]]) {
      expect(() => openBatch(keys, { deviceId: DEV, seq: 1 }, seal(bad), null)).toThrow(BatchFormatError);
    }
    expect(() => openBatch(keys, { deviceId: DEV, seq: 1 }, seal(null, body('{not json')), null)).toThrow(BatchFormatError);
    const tooLong = sealObject({ type: ObjectType.changeset, codec: Codec.none, keyId: keys.keyId, purposeKey: keys.changesetKey, vaultId: keys.vaultId, identity: `changeset:${DEV}:1`, plaintext: Uint8Array.of(0, 0, 0x10, 0, 1), salt: random(32) });
    expect(() => openBatch(keys, { deviceId: DEV, seq: 1 }, tooLong, null)).toThrow(BatchFormatError);
  });
});

describe('checkChain', () => {
  const links = (bs: ReturnType<typeof chain>, deviceId = DEV): ChainLink[] => bs.map((b) => ({ deviceId, seq: b.seq, prev: b.prev, hash: b.hash }));
  const [l1, l2, l3, l4] = links(chain(4));

  it('accepts a chain in order, from seq 1', () => {
    let last = null as { seq: number; hash: string } | null;
    for (const l of [l1!, l2!, l3!, l4!]) {
      expect(checkChain(last, l)).toBe('next');
      last = { seq: l.seq, hash: l.hash };
    }
  });

  it('reports the same batch again as a duplicate, not an error', () => {
    expect(checkChain({ seq: 2, hash: l2!.hash }, l2!)).toBe('duplicate');
  });

  it('detects a dropped batch', () => {
    expect(chainError(() => checkChain({ seq: 1, hash: l1!.hash }, l3!))).toBe('dropped');
    expect(chainError(() => checkChain(null, l2!))).toBe('dropped'); // the first batch withheld
    const err = (() => {
      try {
        checkChain({ seq: 1, hash: l1!.hash }, l4!);
      } catch (e) {
        return e as BatchChainError;
      }
    })();
    expect(err).toMatchObject({ reason: 'dropped', deviceId: DEV, seq: 4, expectedSeq: 2 });
  });

  it('detects a replayed batch', () => {
    expect(chainError(() => checkChain({ seq: 3, hash: l3!.hash }, l1!))).toBe('replayed');
    expect(chainError(() => checkChain({ seq: 3, hash: l3!.hash }, l2!))).toBe('replayed');
  });

  it('detects a fork: a batch that names another predecessor, or another batch at the same seq', () => {
    const [f1, f2] = links(chain(2)); // another history of the same device (new salts, new hashes)
    expect(chainError(() => checkChain({ seq: 1, hash: l1!.hash }, f2!))).toBe('forked');
    expect(chainError(() => checkChain({ seq: 1, hash: l1!.hash }, f1!))).toBe('forked');
    expect(chainError(() => checkChain(null, { ...l1!, prev: 'd'.repeat(64) }))).toBe('forked');
  });

  it('detects reordering within a pull, across devices', () => {
    const other = links(chain(2, DEV2), DEV2);
    const inOrder = [l1!, other[0]!, l2!, other[1]!, l3!];
    const r = checkChains(new Map(), inOrder);
    expect(r.steps).toEqual(['next', 'next', 'next', 'next', 'next']);
    expect(r.lasts.get(DEV)).toEqual({ seq: 3, hash: l3!.hash });
    expect(r.lasts.get(DEV2)).toEqual({ seq: 2, hash: other[1]!.hash });
    expect(chainError(() => checkChains(new Map(), [l1!, other[0]!, l3!, l2!]))).toBe('reordered');
    expect(chainError(() => checkChains(new Map(), [l1!, l3!]))).toBe('dropped');
    // From a device's last point; a duplicate in the list is skipped.
    const lasts = new Map([[DEV, { seq: 2, hash: l2!.hash }]]);
    expect(checkChains(lasts, [l2!, l3!, l4!]).steps).toEqual(['duplicate', 'next', 'next']);
    expect(lasts.get(DEV)).toEqual({ seq: 2, hash: l2!.hash }); // not changed in place
    expect(chainError(() => checkChains(lasts, [l4!, l3!]))).toBe('reordered');
    expect(chainError(() => checkChains(lasts, [l3!, l1!]))).toBe('replayed');
  });

  it('starts later when the caller says so (older batches pruned)', () => {
    expect(checkChain(null, l3!, { seq: 3 })).toBe('next');
    expect(chainError(() => checkChain(null, l2!, { seq: 3 }))).toBe('replayed');
    expect(chainError(() => checkChain(null, l4!, { seq: 3 }))).toBe('dropped');
    expect(checkChain(null, l4!, { startAnywhere: true })).toBe('next');
    expect(checkChain(null, l1!, { startAnywhere: true })).toBe('next');
    expect(chainError(() => checkChain(null, { ...l1!, prev: 'e'.repeat(64) }, { startAnywhere: true }))).toBe('forked');
    expect(checkChains(new Map(), [l3!, l4!], { startAnywhere: true }).steps).toEqual(['next', 'next']);
  });
});
