#!/usr/bin/env node
/**
 * Writes casa's known-answer vectors into test/vectors/, one JSON file per
 * case (README.md there lists them). Bytes come from the independent
 * reference implementation (test/vectors/reference.mjs, @noble only); zstd
 * frames come from zstd-napi, level 1.
 *
 * The vectors are frozen: an existing file is never rewritten unless
 * `--force` is given (which means a format change, or a deliberate new case).
 * Without --force the script reports which files would change.
 *
 *   node scripts/make-vectors.mjs            # write missing files, compare the rest
 *   node scripts/make-vectors.mjs --force    # rewrite every file (a format change)
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ref from '../test/vectors/reference.mjs';

const dir = join(dirname(fileURLToPath(import.meta.url)), '..', 'test', 'vectors');
const force = process.argv.includes('--force');
const zstd = createRequire(import.meta.url)('zstd-napi');
const { hex, unhex, b64u } = ref;
const utf8 = (s) => new TextEncoder().encode(s);

const SOURCES = {
  phrase: 'BIP-39 (English word list, checksum); casa docs/FORMAT.md §1',
  pbkdf2: 'RFC 8018 §5.2 PBKDF2 with HMAC-SHA256 (RFC 2104, FIPS 180-4)',
  hkdf: 'RFC 5869 §2 HKDF-SHA256',
  gcm: 'NIST SP 800-38D AES-256-GCM, 96-bit nonce, 128-bit tag',
  stream: "age STREAM chunking (C2SP age.md 'Payload'; Hoang, Reyhanitabar, Rogaway, Vizár, 'Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance')",
  cctv: 'one file per case with an expected outcome class, after C2SP CCTV age vectors',
  ed25519: 'RFC 8032 §5.1 Ed25519',
  zstd: 'RFC 8878 Zstandard frame (zstd-napi / libzstd 1.5.x, level 1)',
  format: 'casa docs/FORMAT.md §3',
  x25519: 'RFC 7748 §5 X25519 (§4.1 base point u = 9)',
  epochs: 'casa docs/FORMAT.md §9',
};
const OBJECT_SOURCES = [SOURCES.format, SOURCES.hkdf, SOURCES.gcm, SOURCES.stream, SOURCES.cctv];

const files = new Map();
const put = (name, value) => files.set(name, value);
const salt = (name) => ref.sha256hex(utf8(`casa/v1 vector salt: ${name}`));

// --- §1 and §2: phrase → keys ---------------------------------------------------

// BIP-39 reference vector (trezor/python-mnemonic vectors.json), entropy 0x80 × 32.
const normalised =
  'letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd ' +
  'amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic bless';
const typed =
  ' LETTER advi  CAGE\tabsurd amou doctor\nACOUSTIC avoid letter advice cage absu amount ' +
  'Doct acoustic avoi letter ADVICE cage absurd amount docto acoustic bless\n';
const root = ref.root(normalised);
const K = ref.keysFromRoot(root);
// A second key set (another vault) for the wrong-key case: from a fixed root, no phrase.
const other = ref.keysFromRoot(ref.objectKey(new Uint8Array(32), new Uint8Array(32), 1));

put('phrase-keys', {
  description:
    'A fixed 24-word phrase, typed carelessly (case, tabs, newlines, 4-letter prefixes), normalised, then every key of FORMAT.md §2.',
  sources: [SOURCES.phrase, SOURCES.pbkdf2, SOURCES.hkdf, SOURCES.ed25519],
  input: { typed, normalised },
  expected: {
    outcome: 'ok',
    entropy: hex(ref.entropyOf(normalised)),
    root: hex(root),
    vaultId: K.vaultId,
    keyId: K.keyIdHex,
    authSeed: hex(K.authSeed),
    authPublicKey: hex(K.authPublicKey),
    canaryKey: hex(K.canaryKey),
    snapshotKey: hex(K.snapshotKey),
    changesetKey: hex(K.changesetKey),
    idMacKey: hex(K.idMacKey),
    localIndexKey: hex(K.localIndexKey),
  },
});

// --- §3: objects ----------------------------------------------------------------

const TYPE = { canary: 1, pack: 2, manifest: 3, changeset: 4, pairing: 5 };
const INLINE_MAX = 8192; // larger objects are stored by SHA-256 and rebuilt from their inputs

const PACK_ID = ref.sha256hex(utf8('casa vector pack'));
const DEVICE_ID = '0123456789abcdef';
const bases = {
  canary: {
    type: TYPE.canary, codec: 0, key: 'canaryKey', identity: 'canary',
    plaintext: { utf8: `casa canary v1\n${K.vaultId}` },
  },
  small: {
    type: TYPE.manifest, codec: 0, key: 'snapshotKey', identity: 'manifest:20240301T120000Z-3f2a:1',
    plaintext: { utf8: '{"snapshot":"20240301T120000Z-3f2a","seq":1,"pages":4096,"packs":["…"]}\n' },
  },
  empty: { type: TYPE.pack, codec: 0, key: 'snapshotKey', identity: `pack:${PACK_ID}`, plaintext: { hex: '' } },
  multichunk: {
    type: TYPE.pack, codec: 0, key: 'snapshotKey', identity: `pack:${PACK_ID}`,
    plaintext: { recipe: 'byte i = (i * 7 + (i >> 8)) mod 256', length: 150_000 },
  },
  zstd: {
    type: TYPE.changeset, codec: 1, key: 'changesetKey', identity: `changeset:${DEVICE_ID}:42`,
    plaintext: { recipe: 'repeat utf8', unit: 'INSERT INTO transactions VALUES (?, ?, ?);\n', length: 100_000 },
  },
  changeset: {
    type: TYPE.changeset, codec: 0, key: 'changesetKey', identity: `changeset:${DEVICE_ID}:1`,
    plaintext: { utf8: 'changeset batch 1' },
  },
  zstdCorrupt: {
    type: TYPE.changeset, codec: 1, key: 'changesetKey', identity: `changeset:${DEVICE_ID}:43`,
    compressed: hex(utf8('this is not a zstd frame')),
  },
};

function sealInputs(base, name) {
  const seal = {
    type: base.type,
    codec: base.codec,
    keyId: K.keyIdHex,
    purposeKey: hex(K[base.key]),
    purposeKeyName: base.key,
    vaultId: K.vaultId,
    identity: base.identity,
    salt: salt(name),
  };
  if (base.plaintext) seal.plaintext = base.plaintext;
  if (base.codec === 1) {
    seal.compressed = base.compressed ?? hex(zstd.compress(ref.plaintextOf(base.plaintext), { compressionLevel: 1 }));
  }
  return seal;
}

function objectFields(bytes) {
  return bytes.length <= INLINE_MAX
    ? { object: hex(bytes) }
    : { objectSha256: ref.sha256hex(bytes), objectLength: bytes.length };
}

/** One object case: seal `base`, apply `mutation`, open with `open` overrides, expect `expected`. */
function objectCase(name, { base, description, mutation, open = {}, expected, openOnly }) {
  const seal = sealInputs(base, name.replace(/^bad-/, ''));
  const sealed = ref.sealVector(seal);
  const object = ref.mutate(sealed, mutation);
  const h = object.subarray(0, 48);
  const vector = {
    description,
    sources: base.codec === 1 ? [...OBJECT_SOURCES, SOURCES.zstd] : OBJECT_SOURCES,
    seal,
    openOnly: Boolean(openOnly || base.codec === 1),
    ...(mutation ? { mutation } : {}),
    ...(!mutation
      ? {
          intermediate: {
            objectKey: hex(ref.objectKey(unhex(seal.purposeKey), unhex(seal.salt), seal.type)),
            ad: hex(ref.ad(h, seal.vaultId, seal.identity)),
          },
        }
      : {}),
    ...objectFields(object),
    open: {
      type: seal.type, keyId: seal.keyId, purposeKey: seal.purposeKey, vaultId: seal.vaultId,
      identity: seal.identity, maxPlaintext: 1 << 20, ...open,
    },
    expected,
  };
  put(name, vector);
  return object;
}

const ok = { outcome: 'ok' };
const fail = (cls, reason) => ({ outcome: 'error', class: cls, ...(reason ? { reason } : {}) });
const CH = 65536 + 16;

const canary = objectCase('object-canary', {
  base: bases.canary,
  description: `The vault canary: plaintext "casa canary v1\\n" + vault id, type canary, identity "canary", canary key. Also what sealCanary(keys, salt) writes and openCanary accepts.`,
  open: { maxPlaintext: 64 },
  expected: ok,
});
objectCase('object-small-none', {
  base: bases.small, description: 'A small manifest object, codec none, one (final) chunk.', expected: ok,
});
objectCase('object-empty-none', {
  base: bases.empty, description: 'An empty plaintext: one empty final chunk (the body is a lone tag).', expected: ok,
});
objectCase('object-multichunk-none', {
  base: bases.multichunk,
  description: 'A 150,000-byte pack, codec none: chunks of 65,536, 65,536 and 18,928 bytes (nonce counters 0, 1, 2; last flag on 2). Stored by SHA-256; rebuild it from the inputs.',
  expected: ok,
});
objectCase('object-zstd', {
  base: bases.zstd,
  description: 'A changeset batch, codec zstd (100,000 bytes of repeated SQL → one zstd frame). Open-only: another libzstd may compress to other bytes.',
  expected: ok,
});

objectCase('bad-truncated-header', {
  base: bases.small, description: 'The small object cut to 47 bytes: a format error, before any key is looked at.',
  mutation: { truncateTo: 47 }, open: { keyId: other.keyIdHex }, expected: fail('ObjectFormatError', 'truncated_header'),
});
objectCase('bad-magic', {
  base: bases.small, description: 'Magic "CASA" changed to "CASB".',
  mutation: { set: { offset: 3, value: 0x42 } }, expected: fail('ObjectFormatError', 'bad_magic'),
});
objectCase('bad-version', {
  base: bases.small, description: 'Format version 2 (unknown to version 1 readers).',
  mutation: { set: { offset: 4, value: 2 } }, expected: fail('ObjectFormatError', 'unsupported_version'),
});
objectCase('bad-unknown-codec', {
  base: bases.small, description: 'Codec byte 2 (no such codec).',
  mutation: { set: { offset: 6, value: 2 } }, expected: fail('ObjectFormatError', 'unknown_codec'),
});
objectCase('bad-reserved', {
  base: bases.small, description: 'Reserved header byte 7 set to 1.',
  mutation: { set: { offset: 7, value: 1 } }, expected: fail('ObjectFormatError', 'bad_reserved'),
});
objectCase('bad-unexpected-type', {
  base: bases.small, description: 'A valid manifest object opened where a pack is expected.',
  open: { type: TYPE.pack }, expected: fail('ObjectFormatError', 'unexpected_type'),
});
objectCase('bad-wrong-key-id', {
  base: bases.small,
  description: "The small object opened with another vault's key id and key: refused by key id before any decryption (the wrong-phrase signal).",
  open: { keyId: other.keyIdHex, purposeKey: hex(other.snapshotKey) }, expected: fail('WrongKeyError'),
});
objectCase('bad-empty-body', {
  base: bases.small, description: 'Header only: a body shorter than one tag.',
  mutation: { truncateTo: 48 }, expected: fail('ObjectFormatError', 'truncated_body'),
});
objectCase('bad-short-final-chunk', {
  base: bases.multichunk,
  description: 'The multichunk object cut 15 bytes into its third chunk: the final chunk is shorter than a tag.',
  mutation: { truncateTo: 48 + 2 * CH + 15 }, expected: fail('ObjectFormatError', 'truncated_body'),
});
objectCase('bad-truncated-body', {
  base: bases.multichunk,
  description: 'The multichunk object cut at a chunk boundary (after chunk 1): the new last chunk was not sealed as last, so its tag fails.',
  mutation: { truncateTo: 48 + 2 * CH }, expected: fail('AuthenticationError'),
});
const small = ref.sealVector(sealInputs(bases.small, 'small-none'));
objectCase('bad-trailing-bytes', {
  base: bases.small, description: 'One zero byte appended: the final chunk grows by one byte and its tag fails.',
  mutation: { append: '00' }, expected: fail('AuthenticationError'),
});
objectCase('bad-flipped-tag', {
  base: bases.small, description: 'The lowest bit of the last tag byte flipped.',
  mutation: { xor: { offset: small.length - 1, mask: 0x01 } }, expected: fail('AuthenticationError'),
});
objectCase('bad-flipped-salt', {
  base: bases.small, description: 'One bit of the header salt flipped: another object key, and another AD.',
  mutation: { xor: { offset: 16, mask: 0x80 } }, expected: fail('AuthenticationError'),
});
objectCase('bad-swapped-ad', {
  base: bases.changeset,
  description: "Changeset batch 1 of a device served as its batch 2: the identity in the AD differs, so the tag fails (the relay cannot swap or replay objects).",
  open: { identity: `changeset:${DEVICE_ID}:2` }, expected: fail('AuthenticationError'),
});
objectCase('bad-other-vault', {
  base: bases.small, description: 'The small object opened under another vault id (same keys): the AD differs.',
  open: { vaultId: other.vaultId }, expected: fail('AuthenticationError'),
});
objectCase('bad-over-limit', {
  base: bases.zstd,
  description: 'The zstd object opened with a 65,536-byte plaintext limit: it authenticates, then decompression stops at the limit.',
  open: { maxPlaintext: 65536 }, expected: fail('ObjectFormatError', 'too_large'),
});
objectCase('bad-zstd-corrupt', {
  base: bases.zstdCorrupt,
  description: 'An authentic object (sealed by a key holder) whose header says zstd but whose plaintext is not a zstd frame.',
  expected: fail('ObjectFormatError', 'bad_compression'),
});

// --- §4: signed relay messages --------------------------------------------------

const deviceSeed = ref.sha256hex(utf8('casa vector device seed'));
const devicePub = ref.publicKey(unhex(deviceSeed));
const signed = [
  ['create-vault', hex(K.authSeed), [K.vaultId, b64u(K.authPublicKey), ref.sha256hex(canary), 1_709_294_400_000]],
  ['enroll', hex(K.authSeed), [K.vaultId, b64u(devicePub), 'kitchen laptop', 1_709_294_400_123]],
  ['token', deviceSeed, [K.vaultId, DEVICE_ID, b64u(unhex(ref.sha256hex(utf8('casa vector challenge'))))]],
].map(([purpose, seed, fields]) => {
  const message = ref.signedMessage(purpose, fields);
  return {
    purpose,
    seed,
    publicKey: hex(ref.publicKey(unhex(seed))),
    fields,
    message: hex(message),
    signature: hex(ref.sign(unhex(seed), message)),
  };
});
put('signed-message', {
  description:
    'Each signed relay request (FORMAT.md §4, RELAY-API.md): create-vault and enroll signed by the vault auth key of phrase-keys.json, token by a device key. Fields as the relay API orders them.',
  sources: [SOURCES.ed25519, 'casa docs/FORMAT.md §4, docs/RELAY-API.md'],
  cases: signed,
  expected: ok,
});

// --- §9: epochs, the keyring, its wraps, signed records ---------------------------

const fixed = (label) => unhex(ref.sha256hex(utf8(`casa vector ${label}`)));
const V2_SOURCES = [SOURCES.epochs, SOURCES.hkdf, SOURCES.x25519];
const WRAP_SOURCES = [SOURCES.epochs, SOURCES.x25519, SOURCES.hkdf, SOURCES.format, SOURCES.gcm, SOURCES.cctv];

// The vault: the paper of phrase-keys.json (its recovery id is the vault id of a vault made with it).
const paper = ref.paperKeys(root);
const VAULT = paper.recoveryId;
const LOCAL = fixed('local-index key');
const SECRETS = { 1: fixed('epoch secret 1'), 2: fixed('epoch secret 2') };
const OTHER_SECRETS = { 1: fixed('other epoch secret 1'), 2: fixed('other epoch secret 2') };
const makeRing = (secrets, n) => ({
  vaultId: VAULT,
  localIndexKey: LOCAL,
  epochs: Array.from({ length: n }, (_, i) => ref.epochKeys(secrets[i + 1], i + 1)),
});
const ring1 = makeRing(SECRETS, 1);
const ring2 = makeRing(SECRETS, 2);
const otherRing2 = makeRing({ 1: OTHER_SECRETS[1], 2: OTHER_SECRETS[2] }, 2);
// Device A: the seed of signed-message.json's token case; device B: another fixed seed.
const seedA = unhex(deviceSeed);
const seedB = fixed('device seed 2');
const devA = ref.deviceKeys(seedA);
const devB = ref.deviceKeys(seedB);
// A second paper (a fixed root, no phrase): the replacement in signed-records.json.
const paper2Root = fixed('paper 2 root');
const paper2 = ref.paperKeys(paper2Root);

const epochHex = (e) => ({
  epoch: e.epoch,
  keyId: e.keyIdHex,
  canaryKey: hex(e.canaryKey),
  snapshotKey: hex(e.snapshotKey),
  changesetKey: hex(e.changesetKey),
  idMacKey: hex(e.idMacKey),
});
const deviceHex = (seed, d) => ({
  seed: hex(seed),
  signingPublicKey: hex(d.signingPublicKey),
  exchangeSecret: hex(d.exchangeSecret),
  exchangePublicKey: hex(d.exchangePublicKey),
  deviceId: d.deviceId,
});
const paperHex = (r, p) => ({
  root: hex(r),
  authSeed: hex(p.authSeed),
  authPublicKey: hex(p.authPublicKey),
  exchangeSecret: hex(p.exchangeSecret),
  exchangePublicKey: hex(p.exchangePublicKey),
  recoveryId: p.recoveryId,
});

put('keys-epoch', {
  description:
    "FORMAT.md §9's keys: epoch secrets → key id and purpose keys (§2's labels with the secret as root); device seeds → signing public key, X25519 exchange key and device id; phrase-keys.json's root (and a second, fixed root) → the paper's signing key, exchange key and recovery id.",
  sources: [...V2_SOURCES, SOURCES.ed25519],
  epochs: [1, 2].map((n) => ({ secret: hex(SECRETS[n]), ...epochHex(ref.epochKeys(SECRETS[n], n)) })),
  devices: [deviceHex(seedA, devA), deviceHex(seedB, devB)],
  papers: [paperHex(root, paper), paperHex(paper2Root, paper2)],
  expected: ok,
});

const ringJson = (secrets, n) => ({
  vaultId: VAULT,
  localIndexKey: hex(LOCAL),
  epochs: Array.from({ length: n }, (_, i) => ({ secret: hex(secrets[i + 1]), epoch: i + 1 })),
});
const recipientA = { id: devA.deviceId, exchangeSecret: hex(devA.exchangeSecret), exchangePublicKey: hex(devA.exchangePublicKey) };
const recipientB = { id: devB.deviceId, exchangeSecret: hex(devB.exchangeSecret), exchangePublicKey: hex(devB.exchangePublicKey) };
const recipientPaper = { id: 'recovery', exchangeSecret: hex(paper.exchangeSecret), exchangePublicKey: hex(paper.exchangePublicKey) };
const cur2 = ring2.epochs[1];

function wrapCase(ring, r) {
  const parts = ref.wrapParts(ring, r.id, unhex(r.exchangePublicKey));
  const wrap = ref.wrapKeyring(ring, r.id, unhex(r.exchangePublicKey));
  return {
    recipient: r,
    intermediate: {
      ephemeralSecret: hex(parts.ephemeralSecret),
      ephemeralPublic: hex(parts.ephemeralPublic),
      salt: hex(parts.salt),
      shared: hex(parts.shared),
      wrapKey: hex(parts.wrapKey),
      objectKey: hex(parts.objectKey),
      identity: parts.identity,
    },
    wrap: hex(wrap),
    wrapSha256: ref.sha256hex(wrap),
  };
}
const wraps2 = [wrapCase(ring2, recipientA), wrapCase(ring2, recipientPaper)];
const recipients2 = ref.recipientsField(wraps2.map((w) => [w.recipient.id, w.wrapSha256]));

put('keyring-wrap', {
  description:
    "A keyring of two epochs (secrets of keys-epoch.json) sealed to device A and to the paper (FORMAT.md §9): deterministic, so the wraps and their SHA-256 are frozen. Each recipient opens its wrap at epoch 2 with epoch 2's key id, given the epoch-1 keyring it held (`open.previous`), and gets `plaintext` back. `recipients` is the epoch record's field for these two wraps.",
  sources: WRAP_SOURCES,
  keyring: ringJson(SECRETS, 2),
  plaintext: { utf8: new TextDecoder().decode(ref.encodeKeyring(ring2)) },
  wraps: wraps2,
  recipients: recipients2,
  open: { vaultId: VAULT, epoch: 2, keyId: cur2.keyIdHex, previous: { utf8: new TextDecoder().decode(ref.encodeKeyring(ring1)) } },
  expected: ok,
});

const wrapA = unhex(wraps2[0].wrap);
put('bad-keyring-wrap-other-recipient', {
  description:
    "keyring-wrap.json's wrap for device A, opened by device B (B's exchange secret, B's id in the identity): another shared secret and another AD, so the tag fails.",
  sources: WRAP_SOURCES,
  keyring: ringJson(SECRETS, 2),
  sealedFor: recipientA,
  wrap: hex(wrapA),
  open: { vaultId: VAULT, epoch: 2, keyId: cur2.keyIdHex, recipient: recipientB },
  expected: fail('AuthenticationError'),
});

const flip = { xor: { offset: 31, mask: 0x80 } };
put('bad-keyring-wrap-flipped', {
  description:
    "keyring-wrap.json's wrap for device A with the top bit of the ephemeral public key's last byte flipped. X25519 ignores that bit (RFC 7748 §5), so the shared secret is unchanged: the tag fails only because the wrap key's HKDF salt is E || recipient key, byte for byte.",
  sources: WRAP_SOURCES,
  keyring: ringJson(SECRETS, 2),
  sealedFor: recipientA,
  mutation: flip,
  wrap: hex(ref.mutate(wrapA, flip)),
  open: { vaultId: VAULT, epoch: 2, keyId: cur2.keyIdHex, recipient: recipientA },
  expected: fail('AuthenticationError'),
});

put('bad-keyring-not-extending', {
  description:
    "An authentic wrap to device A of a keyring of two epochs whose epoch 1 is not the one A holds (other secrets; same vault and local-index key): it opens and names epoch 2 and its key id, but does not extend A's keyring.",
  sources: WRAP_SOURCES,
  keyring: ringJson(OTHER_SECRETS, 2),
  plaintext: { utf8: new TextDecoder().decode(ref.encodeKeyring(otherRing2)) },
  sealedFor: recipientA,
  wrap: hex(ref.wrapKeyring(otherRing2, recipientA.id, unhex(recipientA.exchangePublicKey))),
  open: {
    vaultId: VAULT, epoch: 2, keyId: otherRing2.epochs[1].keyIdHex, recipient: recipientA,
    previous: { utf8: new TextDecoder().decode(ref.encodeKeyring(ring1)) },
  },
  expected: fail('ObjectFormatError', 'bad_keyring'),
});

// Signed records: A certified by the paper, B vouched by A, B revoked by A, epoch 2
// (keyring-wrap.json) by A, and the paper replaced by paper 2, keeping A.
const T = 1_709_294_400_000;
function signedRecord(purpose, record, signers) {
  const fields = ref.RECORD_FIELDS[purpose](record);
  const message = ref.signedMessage(purpose, fields);
  const signatures = signers.map(([by, seed]) => ({ by, seed: hex(seed), publicKey: hex(ref.publicKey(seed)), signature: hex(ref.sign(seed, message)) }));
  const b64 = (s) => b64u(unhex(s.signature));
  const signed =
    purpose === 'recovery'
      ? { ...record, signatureOld: b64(signatures[0]), signatureNew: b64(signatures[1]) }
      : { ...record, signature: b64(signatures[0]) };
  return { purpose, record: signed, fields, message: hex(message), signatures };
}
const certA = {
  vaultId: VAULT, deviceId: devA.deviceId, signingKey: b64u(devA.signingPublicKey), exchangeKey: b64u(devA.exchangePublicKey),
  name: 'kitchen laptop', issuedAt: T, issuer: 'recovery',
};
const certB = {
  vaultId: VAULT, deviceId: devB.deviceId, signingKey: b64u(devB.signingPublicKey), exchangeKey: b64u(devB.exchangePublicKey),
  name: 'phone “B” ✓', issuedAt: T + 60_000, issuer: devA.deviceId,
};
const revokeB = { vaultId: VAULT, deviceId: devB.deviceId, revokedAt: T + 3_600_000, issuer: devA.deviceId };
const epoch2 = {
  vaultId: VAULT, epoch: 2, keyId: cur2.keyIdHex, prevKeyId: ring2.epochs[0].keyIdHex, recoveryKey: b64u(paper.exchangePublicKey),
  markCursor: 41, markSeq: 3, createdAt: T + 3_600_500, issuer: devA.deviceId, recipients: recipients2,
};
const replace1 = {
  vaultId: VAULT, n: 1, recoveryId: paper2.recoveryId, authKey: b64u(paper2.authPublicKey), exchangeKey: b64u(paper2.exchangePublicKey),
  members: devA.deviceId, time: T + 7_200_000,
};
put('signed-records', {
  description:
    "FORMAT.md §9's signed records, each with its exact signed message (§4: UTF-8(\"casa/v1/<purpose>\\n\" + JSON.stringify(fields))) and its Ed25519 signatures (deterministic): device A certified by the paper of phrase-keys.json; device B vouched for by A (a name outside ASCII); B revoked by A; epoch 2 of keyring-wrap.json started by A (recipients bound to the wraps' SHA-256); the paper replaced by a second paper (keys-epoch.json papers[1]) keeping A, signed by the old paper then the new. Together they verify: A is the only member, epoch 2 follows epoch 1, the chain has two papers.",
  sources: [SOURCES.epochs, 'casa docs/FORMAT.md §4', SOURCES.ed25519],
  cases: [
    signedRecord('device-cert', certA, [['recovery', paper.authSeed]]),
    signedRecord('device-cert', certB, [[devA.deviceId, seedA]]),
    signedRecord('revoke', revokeB, [[devA.deviceId, seedA]]),
    signedRecord('epoch', epoch2, [[devA.deviceId, seedA]]),
    signedRecord('recovery', replace1, [['old paper', paper.authSeed], ['new paper', paper2.authSeed]]),
  ],
  expected: ok,
});

// --- write ----------------------------------------------------------------------

let changed = 0;
for (const [name, vector] of files) {
  const path = join(dir, `${name}.json`);
  const text = `${JSON.stringify({ name, ...vector }, null, 2)}\n`;
  if (existsSync(path) && !force) {
    if (readFileSync(path, 'utf8') !== text) {
      changed++;
      console.log(`differs (kept): ${name}.json`);
    }
    continue;
  }
  writeFileSync(path, text);
  console.log(`wrote ${name}.json`);
}
if (changed > 0) {
  console.log(`${changed} frozen vector(s) differ from what this script makes; zstd ones may differ across libzstd versions. Use --force only for a format change.`);
}
