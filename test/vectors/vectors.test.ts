/**
 * Every file in test/vectors is checked twice: against casa's implementation
 * (src/crypto on node:crypto) and against the independent reference
 * (./reference.mjs on @noble/hashes + @noble/ciphers). Both must produce the
 * frozen bytes, or both must fail with the expected class (and reason).
 */
import { createCipheriv, createPrivateKey, createPublicKey, hkdfSync, pbkdf2Sync, sign as nodeSign, verify as nodeVerify } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gcm } from '@noble/ciphers/aes.js';
import { ed25519 } from '@noble/curves/ed25519.js';
import { extract, expand } from '@noble/hashes/hkdf.js';
import { pbkdf2 } from '@noble/hashes/pbkdf2.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { describe, expect, it } from 'vitest';
import { Codec, CodecError, decompress } from '../../src/codec.js';
import { bytesToHex, hexToBytes } from '../../src/crypto/bytes.js';
import { deriveRoot, hkdfSha256, vaultKeysFromRoot, type VaultKeys } from '../../src/crypto/kdf.js';
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
      'bad-version.json', 'signed-message.json',
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

const objectNames = names.filter((n) => n.startsWith('object-') || n.startsWith('bad-'));

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
