/**
 * casa's pairing handshake: a paired device (the OFFER side, CPace initiator
 * A) hands the vault's keyring and a certificate it signs for the new device
 * (the JOIN side, responder B) through the relay, authenticated by a short
 * code the person carries between the two screens (docs/FORMAT.md §6).
 * CPace (./pake.ts) runs with
 *
 *   PRS = UTF-8(w1 "-" w2 "-" w3)   three BIP-39 English words, never sent anywhere
 *   CI  = UTF-8("casa/v1/pair")
 *   sid = 16 random bytes chosen by the offer side (public; the relay forwards it)
 *   ADa = lv_cat("casa/v2/pair/offer")                  the label only: msgA names nobody
 *   ADb = lv_cat("casa/v2/pair/join", signingPublicKey (32), exchangePublicKey (32), UTF-8 deviceName)
 *   ISK = CPace ISK, initiator–responder ordering (transcript_ir)
 *
 * Messages (opaque to the relay):
 *
 *   msgA     = Ya (32) || ADa
 *   msgB     = Yb (32) || ADb || tagB (32)
 *   msgFinal = tagA (32) || sealed payload (docs/FORMAT.md §3 object, type pairing, codec zstd)
 *
 *   th   = SHA-256(lv_cat(sid, msgA, Yb || ADb))
 *   k(L) = HKDF-SHA256(IKM = ISK, salt = empty, info = UTF-8(L))            (RFC 5869)
 *   tagB = HMAC-SHA256(k("casa/v1/pair/confirm-join"), th)                  (RFC 2104)
 *   tagA = HMAC-SHA256(k("casa/v1/pair/confirm-offer"), th)
 *   payload object: purpose key k("casa/v1/pair/payload"), key id k("casa/v1/pair/key-id")[0..8],
 *                   vault id field = hex(sid), identity "pairing:" || hex(sid)
 *   SAS  = u32be(k("casa/v1/pair/sas")[0..4]) mod 10^6, shown as "123 456"
 *
 * Anyone who guesses a nameplate can read msgA, so it carries nothing but
 * the CPace share and a constant label; who offers, and for which vault,
 * travels inside the sealed payload.
 *
 * Order: the joiner answers (tagB) and can show the SAS at once; the offer
 * side checks tagB (checkAnswer) and only then knows the joiner's keys and
 * the SAS; the person there compares the SAS and says yes before the payload
 * is sealed (sealFinal): nothing is released to a party that does not know
 * the words, or that the person did not accept. The joiner opens the payload
 * only after tagA. An active attacker (the relay) gets one password guess per
 * session; anything it changes in sid, Ya, Yb, ADa or ADb changes the ISK, so
 * the tags fail. Errors: PairingError for what the peer or the person sent;
 * TypeError / RangeError for a caller's bug (PairingTooLargeError, a
 * RangeError, for a payload over the caps). Pure: randomness comes in.
 */
import { createHash, createHmac } from 'node:crypto';
import { ed25519, x25519 } from '@noble/curves/ed25519.js';
import { wordlist } from '@scure/bip39/wordlists/english.js';
import { Codec, compress } from '../codec.js';
import { abytes, astring, bytesToHex, bytesToUtf8, concatBytes, equalBytes, utf8ToBytes } from './bytes.js';
import { hkdfSha256, KEY_BYTES, KEY_ID_BYTES } from './kdf.js';
import {
  AuthenticationError,
  HEADER_BYTES,
  ObjectFormatError,
  ObjectType,
  openObject,
  SALT_BYTES,
  sealEncoded,
  TAG_BYTES,
  WrongKeyError,
} from './objects.js';
import { cpaceShare, deriveIsk, lvCat, lvSplit, PakeError, POINT_BYTES, scalarMultVfy } from './pake.js';

export const PAIR_WORDS = 3;
export const PAIR_SID_BYTES = 16;
export const PAIR_TAG_BYTES = 32;
/**
 * The largest payload plaintext either side handles (before compression):
 * room for the JSON of docs/FORMAT.md §6 with a keyring of ~250 epochs
 * (~385 bytes an epoch with its mark); the joiner's bound on decompression.
 */
export const PAIR_MAX_PAYLOAD_BYTES = 128 * 1024;
/**
 * The largest msgFinal (tag, header, compressed payload, GCM tag): the
 * relay's MAX_FINAL_MESSAGE (worker/routes/pairing.ts), whose base64url in
 * `{"ok":true,"msgFinal":"…"}` stays under its 64 KiB JSON body cap. A
 * keyring of 150 epochs takes ~29 KB of it.
 */
export const PAIR_MAX_FINAL_BYTES = 48_000;
/** Device names: 1 to 64 Unicode code points, no control characters. */
export const PAIR_MAX_NAME_CHARS = 64;
export const PAIR_CI = 'casa/v1/pair';
/** An X25519 public key. */
export const PAIR_EXCHANGE_KEY_BYTES = 32;

/** Every label of the handshake, each used for exactly one thing. */
export const PAIR_LABELS = {
  offerAd: 'casa/v2/pair/offer',
  joinAd: 'casa/v2/pair/join',
  confirmOffer: 'casa/v1/pair/confirm-offer',
  confirmJoin: 'casa/v1/pair/confirm-join',
  payload: 'casa/v1/pair/payload',
  keyId: 'casa/v1/pair/key-id',
  sas: 'casa/v1/pair/sas',
} as const;

/** ADa's label in version 1 (whose payload was the recovery phrase): recognised only to say so. */
const V1_OFFER_AD_LABEL = 'casa/v1/pair/offer';

const SAS_BYTES = 4;
const ED25519_PUBLIC_KEY_BYTES = 32;

export type PairingErrorReason = 'malformed' | 'confirmation' | 'invalid_point' | 'payload' | 'version';

const MESSAGES: Record<PairingErrorReason, string> = {
  malformed: 'the pairing message is malformed',
  confirmation: 'pairing confirmation failed: the words differ on the two devices, or someone interfered',
  invalid_point: 'the pairing message carries an invalid key share',
  payload: 'the pairing payload failed to open',
  version: 'the other device runs an older casa, whose pairing codes send the recovery phrase: update it first',
};

/** What the other device (or the relay, or the person typing the code) sent cannot be used. */
export class PairingError extends Error {
  readonly reason: PairingErrorReason;
  /** 1-based position of an unknown word (normalisePairingWords), never the word. */
  readonly position: number | undefined;
  constructor(reason: PairingErrorReason, options?: { message?: string; position?: number; cause?: unknown }) {
    super(options?.message ?? MESSAGES[reason], options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'PairingError';
    this.reason = reason;
    this.position = options?.position;
  }
}

/** A payload over PAIR_MAX_PAYLOAD_BYTES, or whose msgFinal would be over PAIR_MAX_FINAL_BYTES (a caller's limit; the state is not spent). */
export class PairingTooLargeError extends RangeError {
  /** The size that did not fit, and its cap. */
  readonly bytes: number;
  readonly max: number;
  constructor(what: string, bytes: number, max: number) {
    super(`${what} is ${bytes} bytes; at most ${max} fit`);
    this.name = 'PairingTooLargeError';
    this.bytes = bytes;
    this.max = max;
  }
}

// ---------------------------------------------------------------------------
// The code's words

const WORDS: ReadonlySet<string> = new Set(wordlist);
const BY_PREFIX: ReadonlyMap<string, string> = new Map(
  wordlist.filter((w) => w.length >= 4).map((w) => [w.slice(0, 4), w] as const),
);

function arandom(random: unknown): (n: number) => Uint8Array {
  if (typeof random !== 'function') throw new TypeError('random must be a function');
  return random as (n: number) => Uint8Array;
}

/** Three uniform BIP-39 English words: 11 bits each from 16 random bits (2048 divides 65536). */
export function generatePairingWords(random: (n: number) => Uint8Array): string[] {
  const r = abytes(arandom(random)(2 * PAIR_WORDS), `random(${2 * PAIR_WORDS})`, 2 * PAIR_WORDS);
  const words: string[] = [];
  for (let i = 0; i < PAIR_WORDS; i++) words.push(wordlist[((r[2 * i]! << 8) | r[2 * i + 1]!) & 0x7ff]!);
  return words;
}

function resolveWord(token: string): string | undefined {
  if (WORDS.has(token)) return token;
  if (token.length < 4) return undefined;
  const word = BY_PREFIX.get(token.slice(0, 4));
  return word !== undefined && word.startsWith(token) ? word : undefined;
}

/**
 * What a person typed → the canonical words: NFKD, lowercase, split on white
 * space and hyphens; each token an exact word or, from 4 letters on, a prefix
 * of the one word sharing its first four letters (as src/crypto/phrase.ts).
 * Throws PairingError('malformed') naming the position of an unknown word
 * (never the word), then for a count other than PAIR_WORDS.
 */
export function normalisePairingWords(text: string): string[] {
  astring(text, 'text');
  const tokens = text.normalize('NFKD').toLowerCase().split(/[\s\-‐‑‒–—]+/u).filter((t) => t !== '');
  const words: string[] = [];
  for (const [i, token] of tokens.entries()) {
    const word = resolveWord(token);
    if (word === undefined) {
      throw new PairingError('malformed', {
        message: `word ${i + 1} of the pairing code is not in the BIP-39 English word list`,
        position: i + 1,
      });
    }
    words.push(word);
  }
  if (words.length !== PAIR_WORDS) {
    throw new PairingError('malformed', { message: `the pairing code has ${words.length} words; it needs ${PAIR_WORDS}` });
  }
  return words;
}

/** PRS: the canonical words joined by "-". Throws RangeError unless `words` are exactly that. */
function passwordBytes(words: unknown): Uint8Array {
  if (!Array.isArray(words) || words.length !== PAIR_WORDS || !words.every((w) => typeof w === 'string' && WORDS.has(w))) {
    throw new RangeError(`words must be ${PAIR_WORDS} lowercase BIP-39 English words (see normalisePairingWords)`);
  }
  return utf8ToBytes(words.join('-'));
}

// ---------------------------------------------------------------------------
// The joiner's identity and the party data

/** Who joins, bound by the PAKE transcript (ADb): the offer side vouches for exactly these keys. */
export interface JoinIdentity {
  /** The new device's Ed25519 signing public key (RFC 8032), 32 bytes. */
  signingPublicKey: Uint8Array;
  /** The new device's X25519 exchange public key (RFC 7748), 32 bytes: the keyring's later epochs are sealed to it. */
  exchangePublicKey: Uint8Array;
  deviceName: string;
}

const CONTROL = /\p{Cc}/u;

/** 1 to 64 code points, no control characters, valid UTF-16 (the relay's rule for device names). */
export function isPairingDeviceName(name: unknown): name is string {
  if (typeof name !== 'string') return false;
  const chars = [...name].length;
  // Round trip through UTF-8: lone surrogates would not survive it.
  return chars >= 1 && chars <= PAIR_MAX_NAME_CHARS && !CONTROL.test(name) && bytesToUtf8(utf8ToBytes(name)) === name;
}

function isEd25519PublicKey(key: Uint8Array): boolean {
  if (key.length !== ED25519_PUBLIC_KEY_BYTES) return false;
  try {
    ed25519.Point.fromBytes(key); // strict RFC 8032 §5.1.3 decoding
    return true;
  } catch {
    return false;
  }
}

/** A fixed scalar: a key whose product with it is all zero is of small order (it would seal to nobody). */
const PROBE_SCALAR = new Uint8Array(32).fill(0x42);

function isX25519PublicKey(key: Uint8Array): boolean {
  if (key.length !== PAIR_EXCHANGE_KEY_BYTES) return false;
  try {
    return !x25519.getSharedSecret(PROBE_SCALAR, key).every((b) => b === 0);
  } catch {
    return false;
  }
}

function ajoinIdentity(id: JoinIdentity): JoinIdentity {
  if (typeof id !== 'object' || id === null) throw new TypeError('identity must be an object');
  abytes(id.signingPublicKey, 'identity.signingPublicKey', ED25519_PUBLIC_KEY_BYTES);
  if (!isEd25519PublicKey(id.signingPublicKey)) throw new RangeError('identity.signingPublicKey must be an Ed25519 public key');
  abytes(id.exchangePublicKey, 'identity.exchangePublicKey', PAIR_EXCHANGE_KEY_BYTES);
  if (!isX25519PublicKey(id.exchangePublicKey)) throw new RangeError('identity.exchangePublicKey must be an X25519 public key (not of small order)');
  if (!isPairingDeviceName(astring(id.deviceName, 'identity.deviceName'))) {
    throw new RangeError(`identity.deviceName must be 1 to ${PAIR_MAX_NAME_CHARS} characters without control characters`);
  }
  return { signingPublicKey: Uint8Array.from(id.signingPublicKey), exchangePublicKey: Uint8Array.from(id.exchangePublicKey), deviceName: id.deviceName };
}

/** ADa: the label alone. */
function encodeOfferAd(): Uint8Array {
  return lvCat(utf8ToBytes(PAIR_LABELS.offerAd));
}

function encodeJoinAd(id: JoinIdentity): Uint8Array {
  return lvCat(utf8ToBytes(PAIR_LABELS.joinAd), id.signingPublicKey, id.exchangePublicKey, utf8ToBytes(id.deviceName));
}

function utf8OrUndefined(bytes: Uint8Array): string | undefined {
  try {
    return bytesToUtf8(bytes);
  } catch {
    return undefined;
  }
}

/** ADa → 'ok' when it is exactly what encodeOfferAd makes, 'v1' for a version-1 offer, else undefined. */
function parseOfferAd(ad: Uint8Array): 'ok' | 'v1' | undefined {
  const f = lvSplit(ad);
  if (f === undefined || f.length === 0) return undefined;
  const label = utf8OrUndefined(f[0]!);
  if (label === PAIR_LABELS.offerAd && f.length === 1) return 'ok';
  if (label === V1_OFFER_AD_LABEL) return 'v1';
  return undefined;
}

/** ADb → the joiner's identity, or undefined unless it is exactly what encodeJoinAd makes. */
function parseJoinAd(ad: Uint8Array): JoinIdentity | undefined {
  const f = lvSplit(ad);
  if (f === undefined || f.length !== 4 || utf8OrUndefined(f[0]!) !== PAIR_LABELS.joinAd) return undefined;
  const [signingPublicKey, exchangePublicKey] = [f[1]!, f[2]!];
  const deviceName = utf8OrUndefined(f[3]!);
  if (!isEd25519PublicKey(signingPublicKey) || !isX25519PublicKey(exchangePublicKey) || !isPairingDeviceName(deviceName)) return undefined;
  return { signingPublicKey, exchangePublicKey, deviceName };
}

// ---------------------------------------------------------------------------
// Key schedule

/** th = SHA-256(lv_cat(sid, msgA, Yb || ADb)), msgA = Ya || ADa. */
export function pairingTranscriptHash(sid: Uint8Array, msgA: Uint8Array, yb: Uint8Array, adb: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(lvCat(sid, msgA, concatBytes(yb, adb))).digest());
}

interface Keys {
  confirmOffer: Uint8Array;
  confirmJoin: Uint8Array;
  payloadKey: Uint8Array;
  keyId: Uint8Array;
  sas: string;
}

function deriveKeys(isk: Uint8Array): Keys {
  const empty = new Uint8Array(0);
  const k = (label: string, n: number) => hkdfSha256(isk, empty, utf8ToBytes(label), n);
  const sasBytes = k(PAIR_LABELS.sas, SAS_BYTES);
  const n = new DataView(sasBytes.buffer, sasBytes.byteOffset, SAS_BYTES).getUint32(0, false) % 1_000_000;
  sasBytes.fill(0);
  const digits = String(n).padStart(6, '0');
  return {
    confirmOffer: k(PAIR_LABELS.confirmOffer, KEY_BYTES),
    confirmJoin: k(PAIR_LABELS.confirmJoin, KEY_BYTES),
    payloadKey: k(PAIR_LABELS.payload, KEY_BYTES),
    keyId: k(PAIR_LABELS.keyId, KEY_ID_BYTES),
    sas: `${digits.slice(0, 3)} ${digits.slice(3)}`,
  };
}

function hmac(key: Uint8Array, data: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac('sha256', key).update(data).digest());
}

/** The payload object's vault id field (the joiner does not know the vault yet) and identity: both from the sid. */
function payloadVaultId(sid: Uint8Array): string {
  return bytesToHex(sid);
}

function payloadIdentity(sid: Uint8Array): string {
  return `pairing:${bytesToHex(sid)}`;
}

/** The compressed payload, checked against both caps (PairingTooLargeError). */
function encodePayload(payload: Uint8Array): Uint8Array {
  if (payload.length > PAIR_MAX_PAYLOAD_BYTES) throw new PairingTooLargeError('the pairing payload', payload.length, PAIR_MAX_PAYLOAD_BYTES);
  const encoded = compress(Codec.zstd, payload);
  const size = finalBytesOf(encoded.length);
  if (size > PAIR_MAX_FINAL_BYTES) throw new PairingTooLargeError('the final pairing message', size, PAIR_MAX_FINAL_BYTES);
  return encoded;
}

function finalBytesOf(encodedLength: number): number {
  return PAIR_TAG_BYTES + HEADER_BYTES + encodedLength + TAG_BYTES; // one chunk: PAIR_MAX_FINAL_BYTES < 64 KiB
}

/**
 * The size of the msgFinal that `payload` makes (PairingTooLargeError when
 * the payload itself is over PAIR_MAX_PAYLOAD_BYTES): lets the offer side
 * refuse a keyring that cannot fit before it shows a code.
 */
export function pairingFinalBytes(payload: Uint8Array): number {
  abytes(payload, 'payload');
  if (payload.length > PAIR_MAX_PAYLOAD_BYTES) throw new PairingTooLargeError('the pairing payload', payload.length, PAIR_MAX_PAYLOAD_BYTES);
  return finalBytesOf(compress(Codec.zstd, payload).length);
}

// ---------------------------------------------------------------------------
// States: opaque handles; the secrets live here and leave on first use.

declare const offerBrand: unique symbol;
declare const confirmedBrand: unique symbol;
declare const joinBrand: unique symbol;
/** The offer side's secret between startOffer and checkAnswer. Single use. */
export interface OfferState {
  readonly [offerBrand]: true;
}
/** The offer side's keys once the joiner proved the words, until sealFinal (or discardConfirmed). Single use. */
export interface ConfirmedState {
  readonly [confirmedBrand]: true;
}
/** The join side's secret between answerOffer and openFinal. Single use. */
export interface JoinState {
  readonly [joinBrand]: true;
}

interface OfferSecret {
  ya: Uint8Array;
  sid: Uint8Array;
  msgA: Uint8Array;
  Ya: Uint8Array;
  ADa: Uint8Array;
}

interface ConfirmedSecret {
  confirmOffer: Uint8Array;
  payloadKey: Uint8Array;
  keyId: Uint8Array;
  th: Uint8Array;
  sid: Uint8Array;
}

interface JoinSecret {
  confirmOffer: Uint8Array;
  payloadKey: Uint8Array;
  keyId: Uint8Array;
  th: Uint8Array;
  sid: Uint8Array;
  sas: string;
}

const offers = new WeakMap<OfferState, OfferSecret>();
const confirmed = new WeakMap<ConfirmedState, ConfirmedSecret>();
const joins = new WeakMap<JoinState, JoinSecret>();

function take<S extends object, T>(map: WeakMap<S, T>, state: S, what: string): T {
  const secret = peek(map, state, what);
  map.delete(state);
  return secret;
}

function peek<S extends object, T>(map: WeakMap<S, T>, state: S, what: string): T {
  const secret = typeof state === 'object' && state !== null ? map.get(state) : undefined;
  if (secret === undefined) throw new Error(`${what} was already used, or is not one`);
  return secret;
}

// ---------------------------------------------------------------------------
// The handshake

/** OFFER side, step 1: a fresh sid and CPace share; msgA goes to the relay with the sid. */
export function startOffer(p: { words: string[]; random: (n: number) => Uint8Array }): {
  sid: Uint8Array;
  msgA: Uint8Array;
  state: OfferState;
} {
  const prs = passwordBytes(p.words);
  const random = arandom(p.random);
  const sid = Uint8Array.from(abytes(random(PAIR_SID_BYTES), `random(${PAIR_SID_BYTES})`, PAIR_SID_BYTES));
  const { y: ya, Y: Ya } = cpaceShare({ prs, ci: utf8ToBytes(PAIR_CI), sid, random });
  prs.fill(0);
  const ADa = encodeOfferAd();
  const msgA = concatBytes(Ya, ADa);
  const state = Object.freeze({}) as OfferState;
  offers.set(state, { ya, sid, msgA, Ya, ADa });
  return { sid: sid.slice(), msgA, state };
}

/**
 * JOIN side: checks msgA (PairingError 'malformed', 'invalid_point',
 * 'version'), answers with msgB, and has the SAS at once: it shows it while
 * the person on the offer side compares and accepts.
 */
export function answerOffer(p: {
  words: string[];
  sid: Uint8Array;
  msgA: Uint8Array;
  identity: JoinIdentity;
  random: (n: number) => Uint8Array;
}): { msgB: Uint8Array; sas: string; state: JoinState } {
  const prs = passwordBytes(p.words);
  const identity = ajoinIdentity(p.identity);
  const random = arandom(p.random);
  const sid = Uint8Array.from(abytes(p.sid, 'sid'));
  const msgA = Uint8Array.from(abytes(p.msgA, 'msgA'));
  if (sid.length !== PAIR_SID_BYTES || msgA.length <= POINT_BYTES) throw new PairingError('malformed');
  const Ya = msgA.slice(0, POINT_BYTES);
  const ADa = msgA.slice(POINT_BYTES);
  const offer = parseOfferAd(ADa);
  if (offer === 'v1') throw new PairingError('version');
  if (offer === undefined) throw new PairingError('malformed');

  const { y: yb, Y: Yb } = cpaceShare({ prs, ci: utf8ToBytes(PAIR_CI), sid, random });
  prs.fill(0);
  let K: Uint8Array;
  try {
    K = scalarMultVfy(yb, Ya);
  } catch (err) {
    if (err instanceof PakeError) throw new PairingError('invalid_point', { cause: err });
    throw err;
  } finally {
    yb.fill(0);
  }
  const ADb = encodeJoinAd(identity);
  const isk = deriveIsk({ sid, K, Ya, ADa, Yb, ADb }, 'ir');
  K.fill(0);
  const keys = deriveKeys(isk);
  isk.fill(0);
  const th = pairingTranscriptHash(sid, msgA, Yb, ADb);
  const tagB = hmac(keys.confirmJoin, th);
  keys.confirmJoin.fill(0);

  const state = Object.freeze({}) as JoinState;
  joins.set(state, { confirmOffer: keys.confirmOffer, payloadKey: keys.payloadKey, keyId: keys.keyId, th, sid, sas: keys.sas });
  return { msgB: concatBytes(Yb, ADb, tagB), sas: keys.sas, state };
}

/**
 * OFFER side, step 2: checks msgB (its tag proves the joiner knows the words
 * and saw this msgA and sid) and returns who joined, the SAS, and the state
 * that seals the payload (sealFinal) once the person accepted the joiner. A
 * failure is a result, not an exception; either way the OfferState is spent.
 * Nothing here is for the joiner: no message leaves before sealFinal.
 */
export function checkAnswer(
  state: OfferState,
  msgB: Uint8Array,
): { ok: true; joiner: JoinIdentity; sas: string; state: ConfirmedState } | { ok: false; reason: 'malformed' | 'confirmation' | 'invalid_point' } {
  abytes(msgB, 'msgB');
  const s = take(offers, state, 'the OfferState');
  let keys: Keys | undefined;
  let kept = false;
  try {
    if (msgB.length <= 2 * POINT_BYTES) return { ok: false, reason: 'malformed' };
    const Yb = msgB.slice(0, POINT_BYTES);
    const ADb = msgB.slice(POINT_BYTES, msgB.length - PAIR_TAG_BYTES);
    const tagB = msgB.slice(msgB.length - PAIR_TAG_BYTES);
    const joiner = parseJoinAd(ADb);
    if (joiner === undefined) return { ok: false, reason: 'malformed' };

    let K: Uint8Array;
    try {
      K = scalarMultVfy(s.ya, Yb);
    } catch (err) {
      if (err instanceof PakeError) return { ok: false, reason: 'invalid_point' };
      throw err;
    }
    const isk = deriveIsk({ sid: s.sid, K, Ya: s.Ya, ADa: s.ADa, Yb, ADb }, 'ir');
    K.fill(0);
    keys = deriveKeys(isk);
    isk.fill(0);
    const th = pairingTranscriptHash(s.sid, s.msgA, Yb, ADb);
    if (!equalBytes(hmac(keys.confirmJoin, th), tagB)) return { ok: false, reason: 'confirmation' };

    const next = Object.freeze({}) as ConfirmedState;
    confirmed.set(next, { confirmOffer: keys.confirmOffer, payloadKey: keys.payloadKey, keyId: keys.keyId, th, sid: s.sid });
    kept = true;
    return { ok: true, joiner, sas: keys.sas, state: next };
  } finally {
    s.ya.fill(0);
    if (keys !== undefined) {
      keys.confirmJoin.fill(0);
      if (!kept) {
        keys.confirmOffer.fill(0);
        keys.payloadKey.fill(0);
      }
    }
  }
}

/**
 * OFFER side, step 3, after the person accepted the joiner: msgFinal = tagA
 * || the payload sealed (zstd) under the PAKE's payload key. A payload over
 * the caps throws PairingTooLargeError and leaves the state usable (a
 * smaller payload, or discardConfirmed); otherwise the state is spent.
 */
export function sealFinal(state: ConfirmedState, payload: Uint8Array, random: (n: number) => Uint8Array): Uint8Array {
  abytes(payload, 'payload');
  arandom(random);
  peek(confirmed, state, 'the ConfirmedState');
  const encoded = encodePayload(payload);
  const s = take(confirmed, state, 'the ConfirmedState');
  try {
    const tagA = hmac(s.confirmOffer, s.th);
    const sealed = sealEncoded({
      type: ObjectType.pairing,
      codec: Codec.zstd,
      keyId: s.keyId,
      purposeKey: s.payloadKey,
      vaultId: payloadVaultId(s.sid),
      identity: payloadIdentity(s.sid),
      encoded,
      salt: abytes(random(SALT_BYTES), `random(${SALT_BYTES})`, SALT_BYTES),
    });
    return concatBytes(tagA, sealed);
  } finally {
    s.confirmOffer.fill(0);
    s.payloadKey.fill(0);
  }
}

/** OFFER side: the person declined (or the payload cannot be sent): the keys are dropped. Idempotent. */
export function discardConfirmed(state: ConfirmedState): void {
  const s = typeof state === 'object' && state !== null ? confirmed.get(state) : undefined;
  if (s === undefined) return;
  confirmed.delete(state);
  s.confirmOffer.fill(0);
  s.payloadKey.fill(0);
}

/**
 * JOIN side, step 2: checks tagA in constant time (PairingError
 * 'confirmation'), then opens the payload (PairingError 'payload'). The state
 * is spent either way.
 */
export function openFinal(state: JoinState, msgFinal: Uint8Array): { payload: Uint8Array; sas: string } {
  abytes(msgFinal, 'msgFinal');
  const s = take(joins, state, 'the JoinState');
  try {
    if (msgFinal.length < PAIR_TAG_BYTES) throw new PairingError('malformed');
    const tagA = msgFinal.subarray(0, PAIR_TAG_BYTES);
    if (!equalBytes(hmac(s.confirmOffer, s.th), tagA)) throw new PairingError('confirmation');
    let payload: Uint8Array;
    try {
      payload = openObject({
        type: ObjectType.pairing,
        keyId: s.keyId,
        purposeKey: s.payloadKey,
        vaultId: payloadVaultId(s.sid),
        identity: payloadIdentity(s.sid),
        object: msgFinal.subarray(PAIR_TAG_BYTES),
        maxPlaintext: PAIR_MAX_PAYLOAD_BYTES,
      });
    } catch (err) {
      if (err instanceof ObjectFormatError || err instanceof WrongKeyError || err instanceof AuthenticationError) {
        throw new PairingError('payload', { cause: err });
      }
      throw err;
    }
    return { payload: Uint8Array.from(payload), sas: s.sas };
  } finally {
    s.confirmOffer.fill(0);
    s.payloadKey.fill(0);
  }
}
