/**
 * The keyring of docs/FORMAT.md §9 (src/crypto/keyring.ts): its plaintext,
 * epochs, the keys commands open objects with, and the wraps that seal it to
 * each recipient. The frozen bytes are in test/vectors (keyring-wrap.json);
 * this file tests the behaviour around them.
 */
import { deviceIdOf } from '../../src/protocol/membership.js';
import { x25519 } from '@noble/curves/ed25519.js';
import { describe, expect, it } from 'vitest';
import { b64uEncode, bytesToHex, concatBytes, hexToBytes, utf8ToBytes } from '../../src/crypto/bytes.js';
import { hkdfSha256 } from '../../src/crypto/kdf.js';
import {
  currentEpoch,
  decodeKeyring,
  deviceExchangeKey,
  encodeKeyring,
  epochKeys,
  extends_,
  keysFor,
  markOf,
  newKeyring,
  nextEpoch,
  openWrap,
  recoveryKeys,
  vaultKeysOf,
  wrapHashes,
  wrapIdentity,
  wrapKeyring,
  type ExchangeKey,
  type Keyring,
} from '../../src/crypto/keyring.js';
import { AuthenticationError, Codec, ObjectFormatError, ObjectType, openObject, sealObject, WrongKeyError } from '../../src/crypto/objects.js';
import { sha256Hex } from '../../src/crypto/sha256.js';
import { publicKeyFromSeed } from '../../src/crypto/sign.js';

/** 32 fixed bytes per label. */
const fixed = (label: string) => hexToBytes(sha256Hex(utf8ToBytes(`casa keyring test: ${label}`)));
/** A deterministic `random` for newKeyring/nextEpoch: each call gives the next block of a labelled stream. */
function randomFrom(label: string): (n: number) => Uint8Array {
  let i = 0;
  return (n) => {
    const out = new Uint8Array(n);
    for (let at = 0; at < n; at += 32) out.set(fixed(`${label} ${i++}`).subarray(0, Math.min(32, n - at)), at);
    return out;
  };
}

const VAULT = 'c0ffee00'.repeat(4);
const OTHER_VAULT = '0badf00d'.repeat(4);

function device(label: string) {
  const seed = fixed(`device ${label}`);
  const exchange = deviceExchangeKey(seed);
  return { id: deviceIdOf(publicKeyFromSeed(seed)), exchange, exchangePublicKey: exchange.publicKey };
}
const A = device('A');
const B = device('B');
const paper = recoveryKeys(fixed('paper root'));
const PAPER = { id: 'recovery', exchange: paper.exchange, exchangePublicKey: paper.exchange.publicKey };

const ring1 = newKeyring(VAULT, randomFrom('ring'));
const ring2 = nextEpoch(ring1, randomFrom('epoch 2'));
const ring3 = nextEpoch(ring2, randomFrom('epoch 3'));

function formatError(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof ObjectFormatError) return err.reason;
    throw err;
  }
  return undefined;
}

describe('encodeKeyring / decodeKeyring', () => {
  it('round-trips, byte for byte, with the fields in FORMAT.md §9 order', () => {
    for (const ring of [ring1, ring2, ring3]) {
      const bytes = encodeKeyring(ring);
      const back = decodeKeyring(bytes);
      expect(back).toEqual(ring);
      expect(encodeKeyring(back)).toEqual(bytes);
    }
    const json = JSON.parse(Buffer.from(encodeKeyring(ring2)).toString('utf8'));
    expect(Object.keys(json)).toEqual(['v', 'vault', 'local', 'epochs']);
    expect(json.v).toBe(1);
    expect(json.vault).toBe(VAULT);
    expect(json.local).toBe(b64uEncode(ring2.localIndexKey));
    expect(Object.keys(json.epochs[0])).toEqual(['e', 'id', 'canary', 'snapshot', 'changeset', 'idmac']);
    expect(json.epochs.map((e: { e: number; id: string }) => [e.e, e.id])).toEqual(ring2.epochs.map((e) => [e.epoch, e.keyIdHex]));
  });

  // A valid keyring's JSON, changed one way each: every one is refused as bad_keyring.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  type Json = any;
  const base = (): Json => JSON.parse(Buffer.from(encodeKeyring(ring2)).toString('utf8'));
  const key32 = b64uEncode(fixed('a key'));
  /** The same 32 bytes but with a non-zero bit after the last byte (accepted by a lax decoder). */
  const nonCanonical = (() => {
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const last = alphabet.indexOf(key32[42]!);
    return key32.slice(0, 42) + alphabet[last | 1];
  })();
  const cases: [string, (d: Json) => unknown][] = [
    ['v 2', (d) => ({ ...d, v: 2 })],
    ['v as a string', (d) => ({ ...d, v: '1' })],
    ['no v', ({ v: _v, ...d }) => d],
    ['vault in capitals', (d) => ({ ...d, vault: d.vault.toUpperCase() })],
    ['vault of 31 hex', (d) => ({ ...d, vault: d.vault.slice(1) })],
    ['vault as a number', (d) => ({ ...d, vault: 1 })],
    ['no local', ({ local: _l, ...d }) => d],
    ['local of 31 bytes', (d) => ({ ...d, local: b64uEncode(fixed('x').subarray(1)) })],
    ['local of 33 bytes', (d) => ({ ...d, local: b64uEncode(concatBytes(fixed('x'), Uint8Array.of(1))) })],
    ['local padded', (d) => ({ ...d, local: `${key32}=` })],
    ['local in standard base64', (d) => ({ ...d, local: Buffer.from(fixed('x')).toString('base64').replace(/=+$/, '') })],
    ['local not canonical', (d) => ({ ...d, local: nonCanonical })],
    ['no epochs', ({ epochs: _e, ...d }) => d],
    ['epochs empty', (d) => ({ ...d, epochs: [] })],
    ['epochs not an array', (d) => ({ ...d, epochs: { 0: d.epochs[0] } })],
    ['an epoch null', (d) => ({ ...d, epochs: [d.epochs[0], null] })],
    ['epochs from 2', (d) => ({ ...d, epochs: d.epochs.map((e: Json, i: number) => ({ ...e, e: i + 2 })) })],
    ['a gap', (d) => ({ ...d, epochs: [d.epochs[0], { ...d.epochs[1], e: 3 }] })],
    ['epochs newest first', (d) => ({ ...d, epochs: [...d.epochs].reverse() })],
    ['e as a string', (d) => ({ ...d, epochs: [{ ...d.epochs[0], e: '1' }, d.epochs[1]] })],
    ['key id of 15 hex', (d) => ({ ...d, epochs: [{ ...d.epochs[0], id: d.epochs[0].id.slice(1) }, d.epochs[1]] })],
    ['key id in capitals', (d) => ({ ...d, epochs: [{ ...d.epochs[0], id: 'ABCDEF0123456789' }, d.epochs[1]] })],
    ['two epochs with one key id', (d) => ({ ...d, epochs: [d.epochs[0], { ...d.epochs[1], id: d.epochs[0].id }] })],
    ['canary of 33 bytes', (d) => ({ ...d, epochs: [{ ...d.epochs[0], canary: b64uEncode(new Uint8Array(33)) }, d.epochs[1]] })],
    ['no snapshot key', (d) => ({ ...d, epochs: [d.epochs[0], { ...d.epochs[1], snapshot: undefined }] })],
    ['changeset key as a number', (d) => ({ ...d, epochs: [d.epochs[0], { ...d.epochs[1], changeset: 7 }] })],
    ['id-MAC key not canonical', (d) => ({ ...d, epochs: [d.epochs[0], { ...d.epochs[1], idmac: nonCanonical }] })],
  ];
  it.each(cases)('refuses %s (bad_keyring)', (_what, change) => {
    const bytes = utf8ToBytes(JSON.stringify(change(base())));
    expect(formatError(() => decodeKeyring(bytes))).toBe('bad_keyring');
  });

  it.each([
    ['not JSON', utf8ToBytes('{"v":1,')],
    ['not UTF-8', Uint8Array.of(0x7b, 0xff, 0x7d)],
    ['JSON null', utf8ToBytes('null')],
    ['a JSON array', utf8ToBytes('[1]')],
    ['a JSON number', utf8ToBytes('1')],
    ['empty', new Uint8Array(0)],
  ])('refuses %s (bad_keyring)', (_what, bytes) => {
    expect(formatError(() => decodeKeyring(bytes))).toBe('bad_keyring');
  });
});

describe('epochs', () => {
  it('newKeyring: epoch 1 and a local-index key, from the caller\'s randomness', () => {
    expect(ring1.vaultId).toBe(VAULT);
    expect(ring1.epochs.map((e) => e.epoch)).toEqual([1]);
    expect(newKeyring(VAULT, randomFrom('ring'))).toEqual(ring1);
    expect(ring1.localIndexKey).not.toEqual(ring1.epochs[0]!.canaryKey);
  });

  it('nextEpoch keeps every older epoch and the local-index key, and adds a fresh one', () => {
    expect(ring2.epochs[0]).toEqual(ring1.epochs[0]);
    expect(ring3.epochs.slice(0, 2)).toEqual(ring2.epochs);
    expect(ring3.epochs.map((e) => e.epoch)).toEqual([1, 2, 3]);
    expect(ring3.localIndexKey).toEqual(ring1.localIndexKey);
    expect(ring3.vaultId).toBe(VAULT);
    expect(new Set(ring3.epochs.map((e) => e.keyIdHex)).size).toBe(3);
    expect(ring1.epochs).toHaveLength(1); // not changed in place
    expect(currentEpoch(ring3).epoch).toBe(3);
    expect(extends_(ring3, ring1)).toBe(true);
    expect(extends_(ring3, ring2)).toBe(true);
    expect(extends_(ring2, ring3)).toBe(false);
  });

  it('an epoch\'s keys come from its secret alone', () => {
    const secret = fixed('secret');
    expect(epochKeys(secret, 4)).toEqual(epochKeys(secret, 4));
    expect(epochKeys(secret, 4).epoch).toBe(4);
    expect(epochKeys(fixed('other secret'), 4).keyIdHex).not.toBe(epochKeys(secret, 4).keyIdHex);
  });
});

describe('keysFor and markOf', () => {
  const seal = (e: Keyring['epochs'][number], keyId = e.keyId) =>
    sealObject({
      type: ObjectType.changeset,
      codec: Codec.none,
      keyId,
      purposeKey: e.changesetKey,
      vaultId: VAULT,
      identity: 'changeset:0123456789abcdef:1',
      plaintext: utf8ToBytes(`sealed under epoch ${e.epoch}`),
      salt: fixed(`salt ${e.epoch}`),
    });
  const open = (keys: ReturnType<typeof vaultKeysOf>, object: Uint8Array) =>
    Buffer.from(
      openObject({ type: ObjectType.changeset, keyId: keys.keyId, purposeKey: keys.changesetKey, vaultId: VAULT, identity: 'changeset:0123456789abcdef:1', object, maxPlaintext: 1024 }),
    ).toString('utf8');
  const marks = { 1: { cursor: 10, seq: 2 }, 2: { cursor: 25, seq: 4 } };
  const keys = vaultKeysOf(ring3, marks);

  it('vaultKeysOf: the current epoch seals; the local-index key is the ring\'s', () => {
    expect(keys.epoch).toBe(3);
    expect(keys.keyIdHex).toBe(ring3.epochs[2]!.keyIdHex);
    expect(keys.changesetKey).toEqual(ring3.epochs[2]!.changesetKey);
    expect(keys.localIndexKey).toEqual(ring3.localIndexKey);
    expect(keys.vaultId).toBe(VAULT);
    expect(Object.keys(keys.epochs!).sort()).toEqual(ring3.epochs.map((e) => e.keyIdHex).sort());
  });

  it('keysFor picks the epoch named by the header\'s key id', () => {
    for (const e of ring3.epochs) {
      const object = seal(e);
      const k = keysFor(keys, object);
      expect(k.epoch).toBe(e.epoch);
      expect(k.keyIdHex).toBe(e.keyIdHex);
      expect(k.changesetKey).toEqual(e.changesetKey);
      expect(k.localIndexKey).toEqual(ring3.localIndexKey);
      expect(open(k, object)).toBe(`sealed under epoch ${e.epoch}`);
    }
    // The current epoch's object gets the keys themselves.
    expect(keysFor(keys, seal(ring3.epochs[2]!))).toBe(keys);
  });

  it('keysFor: an unknown key id, a short object or keys without epochs give the current keys (opening then fails as a wrong key)', () => {
    const stranger = epochKeys(fixed('stranger'), 1);
    const object = seal(stranger);
    expect(keysFor(keys, object)).toBe(keys);
    expect(() => open(keysFor(keys, object), object)).toThrow(WrongKeyError);
    expect(keysFor(keys, new Uint8Array(15))).toBe(keys);
    const { epochs: _e, ...plain } = keys;
    expect(keysFor(plain, seal(ring3.epochs[0]!))).toBe(plain);
  });

  it('markOf: where the sealing epoch ended; none for the current epoch or an unknown key id', () => {
    expect(markOf(keys, seal(ring3.epochs[0]!))).toEqual(marks[1]);
    expect(markOf(keys, seal(ring3.epochs[1]!))).toEqual(marks[2]);
    expect(markOf(keys, seal(ring3.epochs[2]!))).toBeUndefined();
    expect(markOf(keys, seal(epochKeys(fixed('stranger'), 1)))).toBeUndefined();
    expect(markOf(keys, new Uint8Array(10))).toBeUndefined();
    expect(markOf(vaultKeysOf(ring3), seal(ring3.epochs[0]!))).toBeUndefined();
  });
});

/**
 * A wrap made by hand as FORMAT.md §9 says, with any plaintext, identity, key
 * id and vault: what a dishonest epoch creator could seal.
 */
function handWrap(p: { canaryKey: Uint8Array; to: { id: string; exchangePublicKey: Uint8Array }; keyId: Uint8Array; vaultId: string; identity: string; plaintext: Uint8Array }): Uint8Array {
  const d = (w: string) => hkdfSha256(p.canaryKey, new Uint8Array(0), utf8ToBytes(`casa/v2/wrap-${w}\n${p.to.id}`), 32);
  const eph = d('ephemeral');
  const E = x25519.getPublicKey(eph);
  const wrapKey = hkdfSha256(x25519.getSharedSecret(eph, p.to.exchangePublicKey), concatBytes(E, p.to.exchangePublicKey), utf8ToBytes('casa/v2/keyring-wrap'), 32);
  const object = sealObject({ type: ObjectType.keyring, codec: Codec.none, keyId: p.keyId, purposeKey: wrapKey, vaultId: p.vaultId, identity: p.identity, plaintext: p.plaintext, salt: d('salt') });
  return concatBytes(E, object);
}

describe('openWrap', () => {
  const wrapA = wrapKeyring(ring2, A);
  const e2 = ring2.epochs[1]!;
  const asA = (over: Partial<Parameters<typeof openWrap>[0]> = {}) =>
    openWrap({ wrap: wrapA, vaultId: VAULT, epoch: 2, keyIdHex: e2.keyIdHex, recipient: A.id, exchange: A.exchange, previous: ring1, ...over });
  const failure = (fn: () => unknown) => {
    try {
      fn();
    } catch (err) {
      return err instanceof ObjectFormatError ? `format ${err.reason}` : (err as Error).name;
    }
    return 'opened';
  };

  it('opens the wrap made for it, given the keyring it held (or none)', () => {
    expect(asA()).toEqual(ring2);
    expect(asA({ previous: undefined })).toEqual(ring2);
    expect(asA({ previous: ring2 })).toEqual(ring2);
  });

  it('the wrap is E || a type-8 object named keyring:<epoch>:<recipient>', () => {
    expect(bytesToHex(wrapA.subarray(0, 32))).not.toBe(bytesToHex(wrapKeyring(ring2, B).subarray(0, 32)));
    expect(wrapA[32 + 5]).toBe(ObjectType.keyring);
    expect(bytesToHex(wrapA.subarray(40, 48))).toBe(e2.keyIdHex);
    expect(wrapIdentity(2, A.id)).toBe(`keyring:2:${A.id}`);
  });

  it('refuses the wrong epoch: another identity (authentication), or the header\'s key id', () => {
    expect(failure(() => asA({ epoch: 3 }))).toBe(AuthenticationError.name);
    expect(failure(() => asA({ epoch: 1, keyIdHex: ring2.epochs[0]!.keyIdHex }))).toBe(WrongKeyError.name);
  });

  it('refuses an authentic keyring that does not end at the record\'s epoch (bad_keyring)', () => {
    // Sealed as epoch 3 under epoch 2's key id, but the keyring inside ends at epoch 2.
    const wrap = handWrap({ canaryKey: e2.canaryKey, to: A, keyId: e2.keyId, vaultId: VAULT, identity: wrapIdentity(3, A.id), plaintext: encodeKeyring(ring2) });
    expect(failure(() => asA({ wrap, epoch: 3 }))).toBe('format bad_keyring');
    // A rollback: epoch 1's keyring sealed as epoch 2.
    const back = handWrap({ canaryKey: e2.canaryKey, to: A, keyId: e2.keyId, vaultId: VAULT, identity: wrapIdentity(2, A.id), plaintext: encodeKeyring(ring1) });
    expect(failure(() => asA({ wrap: back, previous: undefined }))).toBe('format bad_keyring');
  });

  it('refuses the wrong key id: the header\'s (wrong key), or a keyring whose newest key id is not the record\'s (bad_keyring)', () => {
    expect(failure(() => asA({ keyIdHex: ring3.epochs[2]!.keyIdHex }))).toBe(WrongKeyError.name);
    const stranger = epochKeys(fixed('stranger'), 2);
    const wrap = handWrap({ canaryKey: e2.canaryKey, to: A, keyId: stranger.keyId, vaultId: VAULT, identity: wrapIdentity(2, A.id), plaintext: encodeKeyring(ring2) });
    expect(failure(() => asA({ wrap, keyIdHex: stranger.keyIdHex }))).toBe('format bad_keyring');
  });

  it('refuses the wrong vault: another AD (authentication), or a keyring naming another vault (bad_keyring)', () => {
    expect(failure(() => asA({ vaultId: OTHER_VAULT }))).toBe(AuthenticationError.name);
    const theirs = { ...ring2, vaultId: OTHER_VAULT };
    const wrap = handWrap({ canaryKey: e2.canaryKey, to: A, keyId: e2.keyId, vaultId: VAULT, identity: wrapIdentity(2, A.id), plaintext: encodeKeyring(theirs) });
    expect(failure(() => asA({ wrap, previous: undefined }))).toBe('format bad_keyring');
  });

  it('refuses a keyring that does not extend the one held (bad_keyring)', () => {
    const forked = nextEpoch(newKeyring(VAULT, randomFrom('a forked ring')), randomFrom('forked epoch 2'));
    const wrap = wrapKeyring(forked, A);
    const open = (previous?: Keyring) => openWrap({ wrap, vaultId: VAULT, epoch: 2, keyIdHex: forked.epochs[1]!.keyIdHex, recipient: A.id, exchange: A.exchange, ...(previous ? { previous } : {}) });
    expect(open()).toEqual(forked);
    expect(failure(() => open(ring1))).toBe('format bad_keyring');
    // Same epochs, another local-index key.
    const otherLocal = { ...ring2, localIndexKey: fixed('other local') };
    const w2 = wrapKeyring(otherLocal, A);
    expect(failure(() => openWrap({ wrap: w2, vaultId: VAULT, epoch: 2, keyIdHex: e2.keyIdHex, recipient: A.id, exchange: A.exchange, previous: ring1 }))).toBe('format bad_keyring');
    // One epoch key changed.
    const oneKey = { ...ring2, epochs: [{ ...ring2.epochs[0]!, idMacKey: fixed('other id mac') }, ring2.epochs[1]!] };
    const w3 = wrapKeyring(oneKey, A);
    expect(failure(() => openWrap({ wrap: w3, vaultId: VAULT, epoch: 2, keyIdHex: e2.keyIdHex, recipient: A.id, exchange: A.exchange, previous: ring1 }))).toBe('format bad_keyring');
    // Fewer epochs than held (a rollback).
    expect(failure(() => asA({ previous: ring3 }))).toBe('format bad_keyring');
  });

  it('refuses another recipient, and a wrap cut short', () => {
    expect(failure(() => asA({ recipient: B.id, exchange: B.exchange }))).toBe(AuthenticationError.name);
    expect(failure(() => asA({ exchange: B.exchange }))).toBe(AuthenticationError.name);
    expect(failure(() => asA({ recipient: B.id }))).toBe(AuthenticationError.name);
    expect(failure(() => asA({ wrap: wrapA.subarray(0, 79) }))).toBe('format truncated_header');
    expect(failure(() => asA({ wrap: wrapA.subarray(0, wrapA.length - 1) }))).toBe(AuthenticationError.name);
  });

  // Fixed bug, kept as a regression test: FORMAT.md §9 says an all-zero X25519 result is refused, and
  // keyring.ts's wrapKey() means to refuse it as ObjectFormatError('bad_keyring');
  // but @noble/curves' getSharedSecret throws a plain Error ("invalid private or
  // public key received") first, so a wrap whose E is a low-order point fails
  // with an unclassified Error (mapCryptoError passes it through), and so does
  // wrapKeyring to a recipient whose exchange key is low-order.
  it('refuses a wrap whose ephemeral key is a low-order point as bad_keyring', () => {
    const lowOrder = new Uint8Array(32); // u = 0: X25519 of anything is all zero
    const wrap = concatBytes(lowOrder, wrapA.subarray(32));
    expect(failure(() => asA({ wrap }))).toBe('format bad_keyring');
  });
});

describe('wrapHashes', () => {
  const recipients = [A, B, PAPER];

  it('is the SHA-256 of each recipient\'s wrap, and every recipient makes them all again from what it opened', () => {
    const hashes = wrapHashes(ring3, recipients);
    expect([...hashes.keys()]).toEqual([A.id, B.id, 'recovery']);
    for (const r of recipients) {
      const wrap = wrapKeyring(ring3, r);
      expect(sha256Hex(wrap)).toBe(hashes.get(r.id));
      const opened = openWrap({ wrap, vaultId: VAULT, epoch: 3, keyIdHex: ring3.epochs[2]!.keyIdHex, recipient: r.id, exchange: r.exchange as ExchangeKey, previous: ring2 });
      expect(wrapHashes(opened, recipients)).toEqual(hashes);
    }
  });

  it('is deterministic, and differs per recipient and per keyring', () => {
    const hashes = wrapHashes(ring3, recipients);
    expect(wrapHashes(ring3, recipients)).toEqual(hashes);
    expect(new Set(hashes.values()).size).toBe(3);
    // Another keyring with the same newest epoch (older epochs differ): other wraps for everyone.
    const other = { ...ring3, epochs: [epochKeys(fixed('other 1'), 1), epochKeys(fixed('other 2'), 2), ring3.epochs[2]!] };
    const otherHashes = wrapHashes(other, recipients);
    for (const r of recipients) expect(otherHashes.get(r.id)).not.toBe(hashes.get(r.id));
    // Another newest epoch: other wraps too.
    const alt = nextEpoch(ring2, randomFrom('another epoch 3'));
    for (const [id, h] of wrapHashes(alt, recipients)) expect(h).not.toBe(hashes.get(id));
  });
});

describe('recoveryKeys', () => {
  it('the paper\'s recovery id is the vault id of a vault made with it; its signing key is §2\'s vault auth key', async () => {
    const { vaultKeysFromRoot } = await import('../../src/crypto/kdf.js');
    const root = fixed('paper root');
    const k = vaultKeysFromRoot(root);
    expect(paper.recoveryId).toBe(k.vaultId);
    expect(paper.authSeed).toEqual(k.authSeed);
    expect(paper.authPublicKey).toEqual(k.authPublicKey);
    expect(paper.exchange.publicKey).toEqual(x25519.getPublicKey(paper.exchange.secret));
    expect(paper.exchange.secret).not.toEqual(deviceExchangeKey(root).secret); // another label
  });
});
