/**
 * Every file in test/vectors is checked twice: against casa's implementation
 * (src/crypto on node:crypto, src/protocol, src/keys/verify.ts) and against
 * the independent reference (./reference.mjs on @noble/hashes,
 * @noble/ciphers and @noble/curves). Both must produce the frozen bytes, or
 * both must fail with the expected class (and reason).
 */
import { createCipheriv, createPrivateKey, createPublicKey, hkdfSync, pbkdf2Sync, sign as nodeSign, verify as nodeVerify } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gcm } from '@noble/ciphers/aes.js';
import { ed25519, x25519 } from '@noble/curves/ed25519.js';
import { extract, expand } from '@noble/hashes/hkdf.js';
import { pbkdf2 } from '@noble/hashes/pbkdf2.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { describe, expect, it } from 'vitest';
import { Codec, CodecError, decompress } from '../../src/codec.js';
import { b64uDecode, b64uEncode, bytesToHex, hexToBytes, utf8ToBytes } from '../../src/crypto/bytes.js';
import { deriveRoot, hkdfSha256, vaultKeysFromRoot, type VaultKeys } from '../../src/crypto/kdf.js';
import {
  decodeKeyring,
  deviceExchangeKey,
  encodeKeyring,
  epochKeys,
  legacyKeyring,
  openWrap,
  recoveryKeys,
  wrapHashes,
  wrapKeyring,
  type Keyring,
} from '../../src/crypto/keyring.js';
import { sha256Hex } from '../../src/crypto/sha256.js';
import { checkEpochRecord, membership, paperChain } from '../../src/keys/verify.js';
import {
  deviceIdOf,
  certFields,
  certMessage,
  epochFields,
  epochMessage,
  formatRecipients,
  isDeviceCert,
  isEpochRecord,
  isRecoveryRecord,
  isRevocation,
  parseRecipients,
  recoveryFields,
  recoveryMessage,
  revocationFields,
  revocationMessage,
  type DeviceCert,
  type EpochRecord,
  type RecoveryRecord,
  type Revocation,
} from '../../src/protocol/membership.js';
import { openCanary, openObject, type ObjectType, sealCanary, sealObject } from '../../src/crypto/objects.js';
import { parsePhrase, phraseToEntropy } from '../../src/crypto/phrase.js';
import { publicKeyFromSeed, signPurpose, verifyPurpose, type SignedPurpose } from '../../src/crypto/sign.js';
import { signedMessage } from '../../src/protocol/messages.js';
import * as ref from './reference.mjs';

const dir = dirname(fileURLToPath(import.meta.url));
const names = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Vector = Record<string, any>;
const load = (name: string): Vector => JSON.parse(readFileSync(join(dir, name), 'utf8'));
const hex = bytesToHex;
const unhex = hexToBytes;

const phraseKeys = load('phrase-keys.json');
/** The vault keys of phrase-keys.json, from its frozen root (HKDF only, no PBKDF2). */
const KEYS: VaultKeys = vaultKeysFromRoot(unhex(phraseKeys.expected.root));

describe('the vector set', () => {
  it('has the cases its README names', () => {
    const readme = readFileSync(join(dir, 'README.md'), 'utf8');
    for (const name of names) expect(readme, `README.md names ${name}`).toContain(`\`${name}\``);
    for (const required of [
      'phrase-keys.json', 'object-canary.json', 'object-small-none.json', 'object-multichunk-none.json',
      'object-zstd.json', 'bad-truncated-header.json', 'bad-truncated-body.json', 'bad-trailing-bytes.json',
      'bad-flipped-tag.json', 'bad-wrong-key-id.json', 'bad-swapped-ad.json', 'bad-magic.json',
      'bad-version.json', 'signed-message.json', 'keys-epoch.json', 'keyring-wrap.json',
      'bad-keyring-wrap-other-recipient.json', 'bad-keyring-wrap-flipped.json', 'bad-keyring-not-extending.json',
      'signed-records.json',
    ]) {
      expect(names).toContain(required);
    }
  });

  it.each(names)('%s names itself, its sources and an expected outcome', (name) => {
    const v = load(name);
    expect(`${v.name}.json`).toBe(name);
    expect(v.description).toBeTypeOf('string');
    expect(v.sources.length).toBeGreaterThan(0);
    expect(['ok', 'error']).toContain(v.expected.outcome);
  });
});

describe('primitives (published vectors)', () => {
  it('rfc5869-case1: HKDF-SHA256 with node:crypto and @noble/hashes', () => {
    const { input, expected } = load('rfc5869-case1.json');
    const [ikm, salt, info] = [unhex(input.ikm), unhex(input.salt), unhex(input.info)];
    expect(hex(hkdfSha256(ikm, salt, info, input.length))).toBe(expected.okm);
    expect(hex(new Uint8Array(hkdfSync('sha256', ikm, salt, info, input.length)))).toBe(expected.okm);
    const prk = extract(sha256, ikm, salt);
    expect(hex(prk)).toBe(expected.prk);
    expect(hex(expand(sha256, prk, info, input.length))).toBe(expected.okm);
  });

  it('rfc7914-pbkdf2-sha256: PBKDF2-HMAC-SHA256 with node:crypto and @noble/hashes', () => {
    const { input, expected } = load('rfc7914-pbkdf2-sha256.json');
    expect(pbkdf2Sync(input.password, input.salt, input.iterations, input.length, 'sha256').toString('hex')).toBe(expected.dk);
    expect(hex(pbkdf2(sha256, input.password, input.salt, { c: input.iterations, dkLen: input.length }))).toBe(expected.dk);
  });

  it('gcm-aes256-case16: AES-256-GCM with node:crypto and @noble/ciphers', () => {
    const { input, expected } = load('gcm-aes256-case16.json');
    const c = createCipheriv('aes-256-gcm', unhex(input.key), unhex(input.iv));
    c.setAAD(unhex(input.aad));
    const ct = Buffer.concat([c.update(unhex(input.plaintext)), c.final()]);
    expect(ct.toString('hex')).toBe(expected.ciphertext);
    expect(c.getAuthTag().toString('hex')).toBe(expected.tag);
    const sealed = gcm(unhex(input.key), unhex(input.iv), unhex(input.aad)).encrypt(unhex(input.plaintext));
    expect(hex(sealed)).toBe(expected.ciphertext + expected.tag);
  });

  it('rfc8032-test1: Ed25519 with casa (@noble/curves) and node:crypto', () => {
    const { input, expected } = load('rfc8032-test1.json');
    const seed = unhex(input.seed);
    expect(hex(publicKeyFromSeed(seed))).toBe(expected.publicKey);
    expect(hex(ed25519.sign(unhex(input.message), seed))).toBe(expected.signature);
    const key = nodeKey(seed);
    expect(hex(nodeSign(null, unhex(input.message), key))).toBe(expected.signature);
    expect(hex(new Uint8Array(createPublicKey(key).export({ format: 'der', type: 'spki' }).subarray(12)))).toBe(expected.publicKey);
  });
});

/** An Ed25519 private key for node:crypto from a 32-byte seed (RFC 8410 PKCS#8 prefix). */
function nodeKey(seed: Uint8Array) {
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
}

describe('phrase-keys.json', () => {
  const v = phraseKeys;
  const e = v.expected;
  const keyHex = (k: VaultKeys) => ({
    vaultId: k.vaultId,
    keyId: k.keyIdHex,
    authSeed: hex(k.authSeed),
    authPublicKey: hex(k.authPublicKey),
    canaryKey: hex(k.canaryKey),
    snapshotKey: hex(k.snapshotKey),
    changesetKey: hex(k.changesetKey),
    idMacKey: hex(k.idMacKey),
    localIndexKey: hex(k.localIndexKey),
  });
  const { outcome: _o, entropy: _e, root: _r, ...expectedKeys } = e;

  it('casa: typed → normalised → entropy, root and every key', () => {
    expect(parsePhrase(v.input.typed)).toBe(v.input.normalised);
    expect(hex(phraseToEntropy(v.input.typed))).toBe(e.entropy);
    const root = deriveRoot(v.input.typed);
    expect(hex(root)).toBe(e.root);
    expect(keyHex(vaultKeysFromRoot(root))).toEqual(expectedKeys);
    expect(KEYS.keyIdHex).toBe(e.keyId);
  });

  it('reference: @noble/hashes PBKDF2 + HKDF, @noble/curves Ed25519', () => {
    expect(hex(ref.entropyOf(v.input.normalised))).toBe(e.entropy);
    const root = ref.root(v.input.normalised);
    expect(hex(root)).toBe(e.root);
    expect(keyHex(ref.keysFromRoot(root))).toEqual(expectedKeys);
  });
});

describe('signed-message.json', () => {
  const v = load('signed-message.json');
  it.each(v.cases as Vector[])('$purpose: casa and node:crypto agree with the frozen bytes', (c) => {
    const purpose = c.purpose as SignedPurpose;
    const seed = unhex(c.seed);
    const message = signedMessage(purpose, c.fields);
    expect(hex(message)).toBe(c.message);
    expect(hex(ref.signedMessage(purpose, c.fields))).toBe(c.message);
    expect(hex(publicKeyFromSeed(seed))).toBe(c.publicKey);
    expect(hex(signPurpose(seed, purpose, c.fields))).toBe(c.signature);
    expect(hex(nodeSign(null, message, nodeKey(seed)))).toBe(c.signature);
    expect(verifyPurpose(unhex(c.publicKey), purpose, c.fields, unhex(c.signature))).toBe(true);
    expect(nodeVerify(null, message, createPublicKey(nodeKey(seed)), unhex(c.signature))).toBe(true);
    // Any change to purpose, fields or signature must not verify.
    const flipped = unhex(c.signature);
    flipped[0]! ^= 1;
    expect(verifyPurpose(unhex(c.publicKey), purpose, c.fields, flipped)).toBe(false);
    const otherPurpose: SignedPurpose = purpose === 'token' ? 'enroll' : 'token';
    expect(verifyPurpose(unhex(c.publicKey), otherPurpose, c.fields, unhex(c.signature))).toBe(false);
    expect(verifyPurpose(unhex(c.publicKey), purpose, [...c.fields, 0], unhex(c.signature))).toBe(false);
  });
});

// --- objects ---------------------------------------------------------------

const objectNames = names.filter((n) => (n.startsWith('object-') || n.startsWith('bad-')) && !n.startsWith('bad-keyring-'));

function objectBytes(v: Vector): Uint8Array {
  if (v.object !== undefined) return unhex(v.object);
  // Large objects are frozen by hash: rebuild from the inputs with the reference, then check the hash.
  const bytes = ref.mutate(ref.sealVector(v.seal), v.mutation);
  expect(bytes.length).toBe(v.objectLength);
  expect(ref.sha256hex(bytes)).toBe(v.objectSha256);
  return bytes;
}

function sameObject(actual: Uint8Array, v: Vector): void {
  if (v.object !== undefined) expect(hex(actual)).toBe(v.object);
  else {
    expect(actual.length).toBe(v.objectLength);
    expect(ref.sha256hex(actual)).toBe(v.objectSha256);
  }
}

function outcome(fn: () => Uint8Array): { outcome: 'ok'; plaintext: Uint8Array } | { outcome: 'error'; class: string; reason?: string } {
  try {
    return { outcome: 'ok', plaintext: fn() };
  } catch (err) {
    if (err instanceof ref.RefError) return { outcome: 'error', class: err.cls, ...(err.reason ? { reason: err.reason } : {}) };
    const e = err as Error & { reason?: string };
    if (!['ObjectFormatError', 'WrongKeyError', 'AuthenticationError'].includes(e.name)) throw err;
    return { outcome: 'error', class: e.name, ...(e.reason ? { reason: e.reason } : {}) };
  }
}

function expectOutcome(got: ReturnType<typeof outcome>, v: Vector): void {
  if (v.expected.outcome === 'ok') {
    expect(got.outcome).toBe('ok');
    if (got.outcome === 'ok' && v.seal.plaintext) {
      expect(Buffer.compare(got.plaintext, ref.plaintextOf(v.seal.plaintext))).toBe(0);
    }
  } else {
    expect(got).toEqual(v.expected);
  }
}

describe.each(objectNames)('%s', (name) => {
  const v = load(name);
  const s = v.seal;
  const o = v.open;

  it('casa seals the frozen bytes (unless open-only), the reference always', () => {
    sameObject(ref.mutate(ref.sealVector(s), v.mutation), v);
    if (v.intermediate) {
      const h = ref.sealVector(s).subarray(0, 48);
      expect(hex(ref.objectKey(unhex(s.purposeKey), unhex(s.salt), s.type))).toBe(v.intermediate.objectKey);
      expect(hex(ref.ad(h, s.vaultId, s.identity))).toBe(v.intermediate.ad);
    }
    if (v.openOnly) return;
    const sealed = sealObject({
      type: s.type as ObjectType,
      codec: s.codec as Codec,
      keyId: unhex(s.keyId),
      purposeKey: unhex(s.purposeKey),
      vaultId: s.vaultId,
      identity: s.identity,
      plaintext: ref.plaintextOf(s.plaintext),
      salt: unhex(s.salt),
    });
    sameObject(ref.mutate(sealed, v.mutation), v);
  });

  it(`casa opens it: ${v.expected.outcome === 'ok' ? 'ok' : v.expected.class}`, () => {
    const object = objectBytes(v);
    const got = outcome(() =>
      openObject({
        type: o.type,
        keyId: unhex(o.keyId),
        purposeKey: unhex(o.purposeKey),
        vaultId: o.vaultId,
        identity: o.identity,
        object,
        maxPlaintext: o.maxPlaintext,
      }),
    );
    expectOutcome(got, v);
  });

  it(`the reference opens it: ${v.expected.outcome === 'ok' ? 'ok' : v.expected.class}`, () => {
    const object = objectBytes(v);
    const got = outcome(() => {
      const { codec, data } = ref.open({ ...o, keyId: unhex(o.keyId), purposeKey: unhex(o.purposeKey), object });
      if (codec !== Codec.zstd) return data;
      if (s.compressed) expect(hex(data)).toBe(s.compressed);
      // The reference has no zstd of its own: decompression is casa's codec module (not crypto).
      try {
        return decompress(Codec.zstd, data, o.maxPlaintext);
      } catch (err) {
        if (!(err instanceof CodecError)) throw err;
        throw new ref.RefError('ObjectFormatError', err.reason === 'too_large' ? 'too_large' : 'bad_compression');
      }
    });
    expectOutcome(got, v);
  });
});

describe('object-canary.json through the canary API', () => {
  const v = load('object-canary.json');
  it('sealCanary writes it and openCanary accepts it', () => {
    expect(v.seal.keyId).toBe(KEYS.keyIdHex);
    expect(v.seal.purposeKey).toBe(hex(KEYS.canaryKey));
    expect(hex(sealCanary(KEYS, unhex(v.seal.salt)))).toBe(v.object);
    expect(() => openCanary(KEYS, KEYS.vaultId, unhex(v.object))).not.toThrow();
    expect(v.seal.plaintext.utf8).toBe(`casa canary v1\n${KEYS.vaultId}`);
  });
});

describe('object vectors use the keys of phrase-keys.json', () => {
  it.each(objectNames)('%s', (name) => {
    const s = load(name).seal;
    expect(s.vaultId).toBe(KEYS.vaultId);
    expect(s.keyId).toBe(KEYS.keyIdHex);
    expect(s.purposeKey).toBe(hex(KEYS[s.purposeKeyName as keyof VaultKeys] as Uint8Array));
  });
});

// --- §9: epochs, the keyring, its wraps, signed records ---------------------

const keysEpoch = load('keys-epoch.json');
const keyringWrap = load('keyring-wrap.json');
const signedRecords = load('signed-records.json');

/** A vector's `keyring` (vault, local-index key, epoch secrets) as casa's Keyring. */
function casaRing(k: Vector): Keyring {
  return { vaultId: k.vaultId, localIndexKey: unhex(k.localIndexKey), epochs: (k.epochs as Vector[]).map((e) => epochKeys(unhex(e.secret), e.epoch)) };
}
function refRing(k: Vector) {
  return { vaultId: k.vaultId, localIndexKey: unhex(k.localIndexKey), epochs: (k.epochs as Vector[]).map((e) => ref.epochKeys(unhex(e.secret), e.epoch)) };
}
const epochHex = (e: { epoch: number; keyIdHex: string; canaryKey: Uint8Array; snapshotKey: Uint8Array; changesetKey: Uint8Array; idMacKey: Uint8Array }) => ({
  epoch: e.epoch,
  keyId: e.keyIdHex,
  canaryKey: hex(e.canaryKey),
  snapshotKey: hex(e.snapshotKey),
  changesetKey: hex(e.changesetKey),
  idMacKey: hex(e.idMacKey),
});
const utf8Of = (spec: { utf8: string }) => utf8ToBytes(spec.utf8);

describe('keys-epoch.json', () => {
  const v = keysEpoch;

  it('casa: epoch secrets → key id and purpose keys', () => {
    for (const e of v.epochs as Vector[]) {
      const { secret, ...expected } = e;
      expect(epochHex(epochKeys(unhex(secret), e.epoch))).toEqual(expected);
    }
  });

  it('casa: device seeds → signing key, exchange key (X25519), device id', () => {
    for (const d of v.devices as Vector[]) {
      const seed = unhex(d.seed);
      const signing = publicKeyFromSeed(seed);
      const x = deviceExchangeKey(seed);
      expect({ seed: d.seed, signingPublicKey: hex(signing), exchangeSecret: hex(x.secret), exchangePublicKey: hex(x.publicKey), deviceId: deviceIdOf(signing) }).toEqual(d);
    }
  });

  it('casa: paper roots → signing key, exchange key, recovery id', () => {
    for (const p of v.papers as Vector[]) {
      const k = recoveryKeys(unhex(p.root));
      expect({
        root: p.root,
        authSeed: hex(k.authSeed),
        authPublicKey: hex(k.authPublicKey),
        exchangeSecret: hex(k.exchange.secret),
        exchangePublicKey: hex(k.exchange.publicKey),
        recoveryId: k.recoveryId,
      }).toEqual(p);
    }
  });

  it('reference: @noble/hashes HKDF, @noble/curves X25519 and Ed25519', () => {
    for (const e of v.epochs as Vector[]) {
      const { secret, ...expected } = e;
      expect(epochHex(ref.epochKeys(unhex(secret), e.epoch))).toEqual(expected);
    }
    for (const d of v.devices as Vector[]) {
      const k = ref.deviceKeys(unhex(d.seed));
      expect({ seed: d.seed, signingPublicKey: hex(k.signingPublicKey), exchangeSecret: hex(k.exchangeSecret), exchangePublicKey: hex(k.exchangePublicKey), deviceId: k.deviceId }).toEqual(d);
    }
    for (const p of v.papers as Vector[]) {
      const k = ref.paperKeys(unhex(p.root));
      expect({
        root: p.root,
        authSeed: hex(k.authSeed),
        authPublicKey: hex(k.authPublicKey),
        exchangeSecret: hex(k.exchangeSecret),
        exchangePublicKey: hex(k.exchangePublicKey),
        recoveryId: k.recoveryId,
      }).toEqual(p);
    }
  });

  it("the first paper is phrase-keys.json's: §2's vault auth key, vault id; its format-1 epoch 1 is §2's keys", () => {
    const [p] = v.papers as Vector[];
    expect(p!.root).toBe(phraseKeys.expected.root);
    expect(p!.authSeed).toBe(phraseKeys.expected.authSeed);
    expect(p!.authPublicKey).toBe(phraseKeys.expected.authPublicKey);
    expect(p!.recoveryId).toBe(phraseKeys.expected.vaultId);
    const legacy = legacyKeyring(unhex(p!.root));
    expect(legacy.vaultId).toBe(phraseKeys.expected.vaultId);
    expect(hex(legacy.localIndexKey)).toBe(phraseKeys.expected.localIndexKey);
    const { outcome: _o, entropy: _e, root: _r, vaultId: _v, authSeed: _a, authPublicKey: _p, localIndexKey: _l, ...epoch1 } = phraseKeys.expected;
    expect(epochHex(legacy.epochs[0]!)).toEqual({ epoch: 1, ...epoch1 });
    // An epoch secret's keys are §2's keys of that secret taken as a root.
    const k = ref.keysFromRoot(unhex(v.epochs[0].secret));
    expect(k.keyIdHex).toBe(v.epochs[0].keyId);
  });

  it('the keyring and signed-record vectors use these keys', () => {
    const [a, b] = v.devices as Vector[];
    const [p1, p2] = v.papers as Vector[];
    expect((keyringWrap.keyring.epochs as Vector[]).map((e) => e.secret)).toEqual((v.epochs as Vector[]).map((e) => e.secret));
    expect(keyringWrap.keyring.vaultId).toBe(p1!.recoveryId);
    expect(keyringWrap.wraps[0].recipient).toEqual({ id: a!.deviceId, exchangeSecret: a!.exchangeSecret, exchangePublicKey: a!.exchangePublicKey });
    expect(keyringWrap.wraps[1].recipient).toEqual({ id: 'recovery', exchangeSecret: p1!.exchangeSecret, exchangePublicKey: p1!.exchangePublicKey });
    expect(load('bad-keyring-wrap-other-recipient.json').open.recipient.id).toBe(b!.deviceId);
    const recovery = (signedRecords.cases as Vector[]).find((c) => c.purpose === 'recovery')!;
    expect(recovery.record.authKey).toBe(b64uEncode(unhex(p2!.authPublicKey)));
    expect(recovery.record.exchangeKey).toBe(b64uEncode(unhex(p2!.exchangePublicKey)));
    expect(recovery.record.recoveryId).toBe(p2!.recoveryId);
  });
});

describe('keyring-wrap.json', () => {
  const v = keyringWrap;
  const o = v.open;

  it('casa: the plaintext, each wrap, its SHA-256 and the recipients field', () => {
    const ring = casaRing(v.keyring);
    expect(Buffer.from(encodeKeyring(ring)).toString('utf8')).toBe(v.plaintext.utf8);
    expect(encodeKeyring(decodeKeyring(utf8Of(v.plaintext)))).toEqual(utf8Of(v.plaintext));
    for (const w of v.wraps as Vector[]) {
      const bytes = wrapKeyring(ring, { id: w.recipient.id, exchangePublicKey: unhex(w.recipient.exchangePublicKey) });
      expect(hex(bytes)).toBe(w.wrap);
      expect(sha256Hex(bytes)).toBe(w.wrapSha256);
    }
    const hashes = wrapHashes(ring, (v.wraps as Vector[]).map((w) => ({ id: w.recipient.id, exchangePublicKey: unhex(w.recipient.exchangePublicKey) })));
    expect(formatRecipients(hashes)).toBe(v.recipients);
    expect(parseRecipients(v.recipients)).toEqual(hashes);
  });

  it('the wraps are laid out as §9 says: E, then a type-8 object under epoch 2\'s key id with the derived salt', () => {
    for (const w of v.wraps as Vector[]) {
      const bytes = unhex(w.wrap);
      const i = w.intermediate;
      expect(hex(bytes.subarray(0, 32))).toBe(i.ephemeralPublic);
      expect(hex(bytes.subarray(32, 36))).toBe('43415341');
      expect([...bytes.subarray(36, 40)]).toEqual([1, 8, 0, 0]);
      expect(hex(bytes.subarray(40, 48))).toBe(o.keyId);
      expect(hex(bytes.subarray(48, 80))).toBe(i.salt);
      expect(i.identity).toBe(`keyring:${o.epoch}:${w.recipient.id}`);
      // One final chunk: header, then the plaintext sealed with its tag.
      expect(bytes.length).toBe(32 + 48 + utf8Of(v.plaintext).length + 16);
    }
  });

  it.each((v.wraps as Vector[]).map((w) => [w.recipient.id, w] as const))('casa: %s opens its wrap', (_id, w) => {
    const previous = decodeKeyring(utf8Of(o.previous));
    const ring = openWrap({
      wrap: unhex(w.wrap),
      vaultId: o.vaultId,
      epoch: o.epoch,
      keyIdHex: o.keyId,
      recipient: w.recipient.id,
      exchange: { secret: unhex(w.recipient.exchangeSecret), publicKey: unhex(w.recipient.exchangePublicKey) },
      previous,
    });
    expect(Buffer.from(encodeKeyring(ring)).toString('utf8')).toBe(v.plaintext.utf8);
    // It can make every other recipient's wrap again (FORMAT.md §9).
    for (const other of v.wraps as Vector[]) {
      expect(sha256Hex(wrapKeyring(ring, { id: other.recipient.id, exchangePublicKey: unhex(other.recipient.exchangePublicKey) }))).toBe(other.wrapSha256);
    }
  });

  it('reference: intermediates, wraps, recipients field, and each recipient opens its wrap', () => {
    const ring = refRing(v.keyring);
    expect(Buffer.from(ref.encodeKeyring(ring)).toString('utf8')).toBe(v.plaintext.utf8);
    const previous = ref.decodeKeyring(utf8Of(o.previous));
    for (const w of v.wraps as Vector[]) {
      const pub = unhex(w.recipient.exchangePublicKey);
      const parts = ref.wrapParts(ring, w.recipient.id, pub);
      expect({
        ephemeralSecret: hex(parts.ephemeralSecret),
        ephemeralPublic: hex(parts.ephemeralPublic),
        salt: hex(parts.salt),
        shared: hex(parts.shared),
        wrapKey: hex(parts.wrapKey),
        objectKey: hex(parts.objectKey),
        identity: parts.identity,
      }).toEqual(w.intermediate);
      // The recipient's side of the exchange gives the same shared secret.
      expect(hex(x25519.getSharedSecret(unhex(w.recipient.exchangeSecret), unhex(w.intermediate.ephemeralPublic)))).toBe(w.intermediate.shared);
      const bytes = ref.wrapKeyring(ring, w.recipient.id, pub);
      expect(hex(bytes)).toBe(w.wrap);
      expect(ref.sha256hex(bytes)).toBe(w.wrapSha256);
      const opened = ref.openWrap({
        wrap: bytes,
        vaultId: o.vaultId,
        epoch: o.epoch,
        keyIdHex: o.keyId,
        recipientId: w.recipient.id,
        exchangeSecret: unhex(w.recipient.exchangeSecret),
        previous,
      });
      expect(Buffer.from(ref.encodeKeyring(opened)).toString('utf8')).toBe(v.plaintext.utf8);
    }
    expect(ref.recipientsField((v.wraps as Vector[]).map((w) => [w.recipient.id, w.wrapSha256]))).toBe(v.recipients);
  });
});

const keyringBadNames = names.filter((n) => n.startsWith('bad-keyring-'));

describe.each(keyringBadNames)('%s', (name) => {
  const v = load(name);
  const o = v.open;
  const recipient = { id: v.sealedFor.id, exchangePublicKey: unhex(v.sealedFor.exchangePublicKey) };

  it('casa and the reference make the frozen wrap', () => {
    expect(hex(ref.mutate(wrapKeyring(casaRing(v.keyring), recipient), v.mutation))).toBe(v.wrap);
    expect(hex(ref.mutate(ref.wrapKeyring(refRing(v.keyring), recipient.id, recipient.exchangePublicKey), v.mutation))).toBe(v.wrap);
    if (v.plaintext) expect(Buffer.from(encodeKeyring(casaRing(v.keyring))).toString('utf8')).toBe(v.plaintext.utf8);
  });

  it(`casa opens it: ${v.expected.class}${v.expected.reason ? ` ${v.expected.reason}` : ''}`, () => {
    const got = outcome(() =>
      encodeKeyring(
        openWrap({
          wrap: unhex(v.wrap),
          vaultId: o.vaultId,
          epoch: o.epoch,
          keyIdHex: o.keyId,
          recipient: o.recipient.id,
          exchange: { secret: unhex(o.recipient.exchangeSecret), publicKey: unhex(o.recipient.exchangePublicKey) },
          ...(o.previous ? { previous: decodeKeyring(utf8Of(o.previous)) } : {}),
        }),
      ),
    );
    expect(got).toEqual(v.expected);
  });

  it(`the reference opens it: ${v.expected.class}${v.expected.reason ? ` ${v.expected.reason}` : ''}`, () => {
    const got = outcome(() =>
      ref.encodeKeyring(
        ref.openWrap({
          wrap: unhex(v.wrap),
          vaultId: o.vaultId,
          epoch: o.epoch,
          keyIdHex: o.keyId,
          recipientId: o.recipient.id,
          exchangeSecret: unhex(o.recipient.exchangeSecret),
          ...(o.previous ? { previous: ref.decodeKeyring(utf8Of(o.previous)) } : {}),
        }),
      ),
    );
    expect(got).toEqual(v.expected);
  });
});

describe('bad-keyring-wrap-flipped.json', () => {
  it('the flipped bit is one X25519 ignores: the shared secret is unchanged, only the HKDF salt differs', () => {
    const v = load('bad-keyring-wrap-flipped.json');
    const w = (keyringWrap.wraps as Vector[])[0]!;
    const secret = unhex(v.open.recipient.exchangeSecret);
    expect(hex(x25519.getSharedSecret(secret, unhex(v.wrap).subarray(0, 32)))).toBe(w.intermediate.shared);
    expect(v.wrap.slice(64)).toBe(w.wrap.slice(64));
  });
});

describe('bad-keyring-not-extending.json', () => {
  it('opens without `previous` (it is authentic and names the record\'s epoch and key id)', () => {
    const v = load('bad-keyring-not-extending.json');
    const o = v.open;
    const exchange = { secret: unhex(o.recipient.exchangeSecret), publicKey: unhex(o.recipient.exchangePublicKey) };
    const ring = openWrap({ wrap: unhex(v.wrap), vaultId: o.vaultId, epoch: o.epoch, keyIdHex: o.keyId, recipient: o.recipient.id, exchange });
    expect(Buffer.from(encodeKeyring(ring)).toString('utf8')).toBe(v.plaintext.utf8);
    const refOpened = ref.openWrap({ wrap: unhex(v.wrap), vaultId: o.vaultId, epoch: o.epoch, keyIdHex: o.keyId, recipientId: o.recipient.id, exchangeSecret: exchange.secret });
    expect(Buffer.from(ref.encodeKeyring(refOpened)).toString('utf8')).toBe(v.plaintext.utf8);
  });
});

describe('signed-records.json', () => {
  const v = signedRecords;
  const casaFields: Record<string, (r: Vector) => (string | number)[]> = {
    'device-cert': (r) => certFields(r as DeviceCert),
    revoke: (r) => revocationFields(r as Revocation),
    epoch: (r) => epochFields(r as EpochRecord),
    recovery: (r) => recoveryFields(r as RecoveryRecord),
  };
  const casaMessage: Record<string, (r: Vector) => Uint8Array> = {
    'device-cert': (r) => certMessage(r as DeviceCert),
    revoke: (r) => revocationMessage(r as Revocation),
    epoch: (r) => epochMessage(r as EpochRecord),
    recovery: (r) => recoveryMessage(r as RecoveryRecord),
  };
  const casaGuard: Record<string, (r: unknown) => boolean> = {
    'device-cert': isDeviceCert,
    revoke: isRevocation,
    epoch: isEpochRecord,
    recovery: isRecoveryRecord,
  };

  it.each((v.cases as Vector[]).map((c, i) => [`${i + 1} ${c.purpose}`, c] as const))('%s: casa and the reference agree with the frozen bytes', (_n, c) => {
    const purpose = c.purpose as SignedPurpose;
    expect(casaGuard[purpose]!(c.record)).toBe(true);
    expect(casaFields[purpose]!(c.record)).toEqual(c.fields);
    expect(ref.RECORD_FIELDS[purpose as keyof typeof ref.RECORD_FIELDS](c.record)).toEqual(c.fields);
    expect(hex(casaMessage[purpose]!(c.record))).toBe(c.message);
    expect(hex(signedMessage(purpose, c.fields))).toBe(c.message);
    expect(hex(ref.signedMessage(purpose, c.fields))).toBe(c.message);
    const inRecord = purpose === 'recovery' ? [c.record.signatureOld, c.record.signatureNew] : [c.record.signature];
    expect(inRecord).toHaveLength(c.signatures.length);
    for (const [i, s] of (c.signatures as Vector[]).entries()) {
      const seed = unhex(s.seed);
      expect(hex(b64uDecode(inRecord[i]))).toBe(s.signature);
      expect(hex(publicKeyFromSeed(seed))).toBe(s.publicKey);
      expect(hex(ref.publicKey(seed))).toBe(s.publicKey);
      expect(hex(signPurpose(seed, purpose, c.fields))).toBe(s.signature);
      expect(hex(ref.sign(seed, unhex(c.message)))).toBe(s.signature);
      expect(verifyPurpose(unhex(s.publicKey), purpose, c.fields, unhex(s.signature))).toBe(true);
      expect(ref.verify(unhex(s.publicKey), unhex(c.message), unhex(s.signature))).toBe(true);
      // A flipped signature bit, another purpose or one more field: refused by both.
      const flipped = unhex(s.signature);
      flipped[63]! ^= 0x10;
      expect(verifyPurpose(unhex(s.publicKey), purpose, c.fields, flipped)).toBe(false);
      expect(ref.verify(unhex(s.publicKey), unhex(c.message), flipped)).toBe(false);
      const other: SignedPurpose = purpose === 'revoke' ? 'device-cert' : 'revoke';
      expect(verifyPurpose(unhex(s.publicKey), other, c.fields, unhex(s.signature))).toBe(false);
      expect(ref.verify(unhex(s.publicKey), ref.signedMessage(other, c.fields), unhex(s.signature))).toBe(false);
      expect(verifyPurpose(unhex(s.publicKey), purpose, [...c.fields, 0], unhex(s.signature))).toBe(false);
    }
  });

  it("together they verify with casa's membership rules: A is the only member, epoch 2 follows epoch 1, two papers", () => {
    const byPurpose = (p: string) => (v.cases as Vector[]).filter((c) => c.purpose === p).map((c) => c.record);
    const [paper1] = keysEpoch.papers as Vector[];
    const [a, b] = keysEpoch.devices as Vector[];
    const first = { authKey: b64uEncode(unhex(paper1!.authPublicKey)), exchangeKey: b64uEncode(unhex(paper1!.exchangePublicKey)) };
    const chain = paperChain(keyringWrap.keyring.vaultId, first, byPurpose('recovery') as RecoveryRecord[]);
    expect(chain).toHaveLength(2);
    expect([...chain[0]!.keptMembers!]).toEqual([a!.deviceId]);
    const m = membership(keyringWrap.keyring.vaultId, chain, byPurpose('device-cert') as DeviceCert[], byPurpose('revoke') as Revocation[]);
    expect([...m.certified.keys()].sort()).toEqual([a!.deviceId, b!.deviceId].sort());
    expect([...m.revoked.keys()]).toEqual([b!.deviceId]);
    expect([...m.members]).toEqual([a!.deviceId]);
    const [epoch] = byPurpose('epoch') as EpochRecord[];
    expect(epoch!.recoveryKey).toBe(first.exchangeKey);
    const recipients = checkEpochRecord(epoch!, keyringWrap.keyring.vaultId, chain, m, { epoch: 1, keyIdHex: keysEpoch.epochs[0].keyId });
    expect(Object.fromEntries(recipients)).toEqual(Object.fromEntries((keyringWrap.wraps as Vector[]).map((w) => [w.recipient.id, w.wrapSha256])));
    expect(epoch!.keyId).toBe(keysEpoch.epochs[1].keyId);
  });
});
