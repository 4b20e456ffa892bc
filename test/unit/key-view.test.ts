/**
 * The key view a digest record carries (src/changesets/key-view.ts,
 * docs/FORMAT.md §8 "Key view") and the rules `casa verify --sync` compares
 * two by: two devices holding the same epochs (however they got them) agree;
 * other keys or another mark at any epoch is a fork, at that epoch and every
 * later one; a device behind is checked against the same prefix; a newer
 * epoch elsewhere is "ahead"; a revocation verified elsewhere of a device
 * counted here as a member is hidden. And the errors verify --sync raises
 * for each (exit 6, naming the device).
 */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { decodeKeyring, encodeKeyring, newKeyring, nextEpoch, vaultKeysOf, type Keyring } from '../../src/crypto/keyring.js';
import { vaultKeysFromRoot, type EpochMark } from '../../src/crypto/kdf.js';
import { compareKeyViews, heldEpoch, keyHistory, keyViewOf, type KeyView } from '../../src/changesets/key-view.js';
import type { PeerResult } from '../../src/changesets/digest-exchange.js';
import { keyHistoryError } from '../../src/commands/verify.js';
import { EXIT } from '../../src/errors.js';

const random = (n: number) => new Uint8Array(randomBytes(n));
const VAULT = 'ab'.repeat(16);
const C = 'c0c0c0c0c0c0c0c0';
const D = 'd0d0d0d0d0d0d0d0';

/** A keyring of `n` epochs, and marks for each but the newest. */
function history(n: number): { ring: Keyring; marks: Record<number, EpochMark> } {
  let ring = newKeyring(VAULT, random);
  const marks: Record<number, EpochMark> = {};
  for (let e = 2; e <= n; e++) {
    marks[e - 1] = { cursor: 10 * e, seq: e };
    ring = nextEpoch(ring, random);
  }
  return { ring, marks };
}

const copy = (ring: Keyring) => decodeKeyring(encodeKeyring(ring));

describe('keyHistory', () => {
  it('is the same for two devices holding the same epochs and marks, whichever way they hold them', () => {
    const { ring, marks } = history(3);
    const a = vaultKeysOf(ring, marks);
    const b = vaultKeysOf(copy(ring), { ...marks }); // picked up from the wraps: a decoded copy
    expect(heldEpoch(a)).toBe(3);
    expect(keyHistory(a)).toMatch(/^[0-9a-f]{64}$/);
    expect(keyHistory(b)).toBe(keyHistory(a));
    expect(keyViewOf(b, [D, C, C])).toEqual({ epoch: 3, history: keyHistory(a), revoked: [C, D] });
  });

  it('differs at an epoch with other keys, and at every later epoch; the prefix before it stays equal', () => {
    const { ring, marks } = history(2);
    const forkA = nextEpoch(ring, random);
    const forkB = nextEpoch(ring, random); // two epoch-3 records: the relay showed each device its own
    const a = vaultKeysOf(forkA, { ...marks, 2: { cursor: 30, seq: 3 } });
    const b = vaultKeysOf(forkB, { ...marks, 2: { cursor: 30, seq: 3 } });
    expect(keyHistory(a, 3)).not.toBe(keyHistory(b, 3));
    expect(keyHistory(a, 2)).toBe(keyHistory(b, 2));
    expect(keyHistory(a, 1)).toBe(keyHistory(b, 1));
    const a4 = vaultKeysOf(nextEpoch(forkA, random), { ...marks, 2: { cursor: 30, seq: 3 }, 3: { cursor: 40, seq: 4 } });
    expect(keyHistory(a4, 3)).toBe(keyHistory(a, 3));
    expect(keyHistory(a4, 5)).toBeNull();
  });

  it('differs with another mark of an older epoch (another record of the same epoch), not with the newest epoch having none', () => {
    const { ring, marks } = history(3);
    const other = vaultKeysOf(ring, { ...marks, 2: { cursor: marks[2]!.cursor + 1, seq: marks[2]!.seq } });
    expect(keyHistory(other)).not.toBe(keyHistory(vaultKeysOf(ring, marks)));
    expect(keyHistory(other, 2)).toBe(keyHistory(vaultKeysOf(ring, marks), 2));
  });

  it('hashes exactly the bytes docs/FORMAT.md §8 describes (an independent encoder)', () => {
    const { ring, marks } = history(2);
    const keys = vaultKeysOf(ring, marks);
    const lv = (s: string) => {
      const b = Buffer.from(s);
      const n = Buffer.alloc(4);
      n.writeUInt32BE(b.length);
      return Buffer.concat([n, b]);
    };
    const u32 = (n: number) => Buffer.from([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
    const u64 = (n: number) => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(BigInt(n));
      return b;
    };
    const keysHash = (e: Keyring['epochs'][number]) => createHash('sha256').update(Buffer.concat([e.canaryKey, e.snapshotKey, e.changesetKey, e.idMacKey])).digest();
    const [e1, e2] = ring.epochs as [Keyring['epochs'][number], Keyring['epochs'][number]];
    const bytes = Buffer.concat([
      lv('casa/v2/key-history'),
      lv(VAULT),
      u32(2),
      u32(1), e1.keyId, keysHash(e1), Buffer.of(1), u64(marks[1]!.cursor), u64(marks[1]!.seq),
      u32(2), e2.keyId, keysHash(e2),
    ]);
    expect(keyHistory(keys)).toBe(createHash('sha256').update(bytes).digest('hex'));
    // Without a keyring (a format-1 vault's phrase keys): the one epoch they are.
    const legacy = vaultKeysFromRoot(new Uint8Array(32).fill(7));
    expect(heldEpoch(legacy)).toBe(1);
    expect(keyHistory(legacy)).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('compareKeyViews', () => {
  const { ring, marks } = history(3);
  const keys = vaultKeysOf(ring, marks);
  const members = new Set(['1111111111111111', C]);
  const mine = { keys, view: keyViewOf(keys, [D]), members };
  const at = (epoch: number, over: Partial<KeyView> = {}): KeyView => ({ epoch, history: keyHistory(keys, epoch)!, revoked: [D], ...over });

  it('same epoch, same history: same; an earlier epoch on the same history: behind (reported, not an error)', () => {
    expect(compareKeyViews(mine, at(3))).toEqual({ status: 'same', hiddenRevocations: [], missingRevocations: [] });
    expect(compareKeyViews(mine, at(1)).status).toBe('behind');
    expect(compareKeyViews(mine, at(2, { revoked: [] }))).toEqual({ status: 'behind', hiddenRevocations: [], missingRevocations: [D] });
  });

  it('the same or an earlier epoch with another history: fork; a newer epoch: ahead', () => {
    expect(compareKeyViews(mine, at(3, { history: 'ee'.repeat(32) })).status).toBe('fork');
    expect(compareKeyViews(mine, at(2, { history: keyHistory(keys, 1)! })).status).toBe('fork');
    expect(compareKeyViews(mine, at(4, { history: 'ee'.repeat(32) })).status).toBe('ahead');
  });

  it('a revocation verified there of a device counted here as a member is hidden here; one of a device not a member here is not', () => {
    const other = compareKeyViews(mine, at(3, { revoked: [C, D] }));
    expect(other).toEqual({ status: 'same', hiddenRevocations: [C], missingRevocations: [] });
    expect(compareKeyViews(mine, at(3, { revoked: ['2222222222222222', D] })).hiddenRevocations).toEqual([]);
  });
});

describe('keyHistoryError (casa verify --sync)', () => {
  const peer = (name: string, keys: PeerResult['keys']): PeerResult => ({
    deviceId: name === 'desk' ? 'aaaaaaaaaaaaaaaa' : C,
    name,
    status: 'same',
    tablesDiffer: [],
    why: null,
    cursor: 1,
    at: 1,
    keys,
  });
  const k = (status: NonNullable<PeerResult['keys']>['status'], over: Partial<NonNullable<PeerResult['keys']>> = {}) => ({ status, epoch: 2, hiddenRevocations: [], missingRevocations: [], ...over });
  const mine: KeyView = { epoch: 2, history: 'aa'.repeat(32), revoked: [] };
  const err = (devices: PeerResult[]) => keyHistoryError({ devices, keys: mine }, 'https://relay.example', 'this device (laptop)');

  it('none for devices the same, behind, missing a revocation, of an older casa, or not compared', () => {
    expect(err([peer('desk', k('same')), peer('phone', k('behind', { epoch: 1, missingRevocations: [D] })), peer('old', k('unknown', { epoch: null })), peer('x', null)])).toBeNull();
  });

  it('a fork names the device and says the relay showed the two different key histories (exit 6, with what to do)', () => {
    const e = err([peer('phone', k('behind', { epoch: 1 })), peer('desk', k('fork'))])!;
    expect(e.exitCode).toBe(EXIT.integrity);
    expect(e.message).toBe('the relay showed this device (laptop) and device desk (aaaaaaaa) different key histories: other keys or records at epoch 2 (a fork)');
    expect(e.hints.join('\n')).toMatch(/casa rotate/);
    expect(e.hints.join('\n')).toMatch(/SECURITY\.md/);
  });

  it('an epoch withheld: named with the device that holds it; a slot under keys not served here likewise', () => {
    expect(err([peer('desk', k('ahead', { epoch: 3 }))])!.message).toBe('the relay withholds epoch 3 that device desk (aaaaaaaa) holds (this device holds epoch 2)');
    const u = err([peer('desk', k('unreadable', { epoch: null }))])!;
    expect(u.exitCode).toBe(EXIT.integrity);
    expect(u.message).toMatch(/^the digest of device desk \(aaaaaaaa\) is sealed under keys the relay does not serve this device: the relay showed the two devices different key histories/);
  });

  it('a hidden revocation names the device that verified it and the device revoked, and says how to keep it revoked here', () => {
    const e = err([peer('desk', k('same', { hiddenRevocations: [C] })), peer('phone', k('same'))])!;
    expect(e.exitCode).toBe(EXIT.integrity);
    expect(e.message).toBe(`device desk (aaaaaaaa) verified the revocation of phone (${C}), which the relay does not show this device`);
    expect(e.hints[0]).toMatch(new RegExp(`casa devices revoke ${C}`));
  });
});
