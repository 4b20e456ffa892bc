/**
 * The pairing handshake (src/crypto/pairing.ts): round trip, wrong words, and
 * a relay that tampers with whatever passes through it. Every tampered run
 * must fail — never succeed with a different key. msgA names nobody; ADb
 * binds the joiner's signing and exchange keys; both sides have the SAS
 * before anything is sealed; the payload caps. Then the payload itself
 * (src/commands/pair-code.ts encodePairingPayload / decodePairingPayload):
 * a keyring of 150 epochs fits, and the joiner checks every field.
 * Randomness is seeded. Few property runs by default, many under SLOW=1.
 */
import { createHash } from 'node:crypto';
import { wordlist } from '@scure/bip39/wordlists/english.js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { b64uEncode, bytesToHex, concatBytes, utf8ToBytes } from '../../src/crypto/bytes.js';
import { deviceExchangeKey, encodeKeyring, newKeyring, nextEpoch, type Keyring } from '../../src/crypto/keyring.js';
import { cpaceShare, lvCat } from '../../src/crypto/pake.js';
import {
  answerOffer,
  checkAnswer,
  discardConfirmed,
  generatePairingWords,
  type JoinIdentity,
  normalisePairingWords,
  openFinal,
  PAIR_CI,
  PAIR_MAX_FINAL_BYTES,
  PAIR_MAX_PAYLOAD_BYTES,
  PAIR_WORDS,
  pairingFinalBytes,
  PairingError,
  PairingTooLargeError,
  sealFinal,
  startOffer,
} from '../../src/crypto/pairing.js';
import { publicKeyFromSeed, verifyPurpose } from '../../src/crypto/sign.js';
import { IntegrityError } from '../../src/errors.js';
import { decodePairingPayload, encodePairingPayload, type PairingPayload } from '../../src/commands/pair-code.js';
import { vouchFor } from '../../src/keys/epochs.js';
import { certFields, deviceIdOf } from '../../src/protocol/membership.js';

const SLOW = process.env.SLOW === '1';
const RUNS = SLOW ? 300 : 12;
const utf8 = utf8ToBytes;

/** A deterministic random source: SHA-256(label || counter) blocks. */
function seeded(label: string): (n: number) => Uint8Array {
  let counter = 0;
  return (n: number) => {
    const out = new Uint8Array(n);
    for (let at = 0; at < n; at += 32) {
      const block = createHash('sha256').update(label).update(String(counter++)).digest();
      out.set(block.subarray(0, Math.min(32, n - at)), at);
    }
    return out;
  };
}

/** `random`, except that the first 16-byte request (the sid) returns `sid`. */
function withSid(sid: Uint8Array, random: (n: number) => Uint8Array): (n: number) => Uint8Array {
  let used = false;
  return (n) => {
    if (!used && n === 16) {
      used = true;
      return sid.slice();
    }
    return random(n);
  };
}

const WORDS = ['abandon', 'zoo', 'letter'];
const OTHER_WORDS = ['abandon', 'zoo', 'legal'];
const JOIN_SEED = new Uint8Array(32).fill(7);
const joinIdentity = (seed: Uint8Array, deviceName: string): JoinIdentity => ({
  signingPublicKey: publicKeyFromSeed(seed),
  exchangePublicKey: deviceExchangeKey(seed).publicKey,
  deviceName,
});
const JOIN = joinIdentity(JOIN_SEED, 'home desk');
const OTHER_SIGNING_KEY = publicKeyFromSeed(new Uint8Array(32).fill(8));
const OTHER_EXCHANGE_KEY = deviceExchangeKey(new Uint8Array(32).fill(8)).publicKey;
/** X25519 keys of small order: the all-zero key, and 1. */
const SMALL_ORDER = [new Uint8Array(32), Uint8Array.of(1, ...new Array(31).fill(0))];
const PAYLOAD = utf8('{"v":2,"stand-in":"the crypto does not read it"}');

function offerAd(label = 'casa/v2/pair/offer'): Uint8Array {
  return lvCat(utf8(label));
}
function joinAd(id: JoinIdentity): Uint8Array {
  return lvCat(utf8('casa/v2/pair/join'), id.signingPublicKey, id.exchangePublicKey, utf8(id.deviceName));
}

function pairingError(f: () => unknown): PairingError {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(PairingError);
    return err as PairingError;
  }
  throw new Error('expected a PairingError');
}

function flip(bytes: Uint8Array, at: number, mask = 0x01): Uint8Array {
  const out = bytes.slice();
  out[at] = out[at]! ^ mask;
  return out;
}

/** One honest run up to msgB: both sides' state and the messages. */
function begin(label: string, words = WORDS, joinWords = words, join = JOIN) {
  const o = startOffer({ words, random: seeded(`${label}/offer`) });
  const j = answerOffer({ words: joinWords, sid: o.sid, msgA: o.msgA, identity: join, random: seeded(`${label}/join`) });
  return { o, j, random: seeded(`${label}/final`) };
}

/** checkAnswer, which must succeed, then sealFinal. */
function answerAndSeal(o: ReturnType<typeof begin>['o'], msgB: Uint8Array, payload: Uint8Array, random: (n: number) => Uint8Array) {
  const r = checkAnswer(o.state, msgB);
  if (!r.ok) throw new Error(`checkAnswer failed: ${r.reason}`);
  return { ...r, msgFinal: sealFinal(r.state, payload, random) };
}

describe('pairing round trip', () => {
  it('delivers the payload, the same SAS on both screens before anything is sealed, and the joiner identity', () => {
    const { o, j, random } = begin('round trip');
    expect(o.sid.length).toBe(16);
    // The joiner has the SAS as soon as it answered; the offer side as soon as the answer checks out.
    expect(j.sas).toMatch(/^\d{3} \d{3}$/);
    const r = checkAnswer(o.state, j.msgB);
    if (!r.ok) throw new Error(`checkAnswer failed: ${r.reason}`);
    expect(r.sas).toBe(j.sas);
    expect(bytesToHex(r.joiner.signingPublicKey)).toBe(bytesToHex(JOIN.signingPublicKey));
    expect(bytesToHex(r.joiner.exchangePublicKey)).toBe(bytesToHex(JOIN.exchangePublicKey));
    expect(r.joiner.deviceName).toBe(JOIN.deviceName);
    const msgFinal = sealFinal(r.state, PAYLOAD, random);
    const f = openFinal(j.state, msgFinal);
    expect(f.payload).toEqual(PAYLOAD);
    expect(f.sas).toBe(j.sas);
  });

  it('has the documented message layouts: msgA is the share and the label, nothing else', () => {
    const { o, j, random } = begin('layout');
    expect(o.msgA.subarray(32)).toEqual(offerAd());
    expect(o.msgA.length).toBe(32 + 1 + 'casa/v2/pair/offer'.length);
    // Every session's msgA has the same AD: nothing in it tells whose vault or device it is.
    expect(startOffer({ words: OTHER_WORDS, random: seeded('layout 2') }).msgA.subarray(32)).toEqual(o.msgA.subarray(32));
    expect(j.msgB.length).toBe(32 + joinAd(JOIN).length + 32);
    expect(j.msgB.subarray(32, 32 + joinAd(JOIN).length)).toEqual(joinAd(JOIN));
    const { msgFinal } = answerAndSeal(o, j.msgB, PAYLOAD, random);
    expect(pairingFinalBytes(PAYLOAD)).toBe(msgFinal.length);
    expect(new TextDecoder().decode(msgFinal.subarray(32, 36))).toBe('CASA');
    expect(msgFinal[32 + 5]).toBe(5); // ObjectType.pairing
    expect(msgFinal[32 + 6]).toBe(1); // Codec.zstd
  });

  it('carries an empty and a maximal (compressible) payload', () => {
    for (const payload of [new Uint8Array(0), new Uint8Array(PAIR_MAX_PAYLOAD_BYTES).fill(0x61)]) {
      const { o, j, random } = begin(`payload ${payload.length}`);
      const { msgFinal } = answerAndSeal(o, j.msgB, payload, random);
      expect(openFinal(j.state, msgFinal).payload).toEqual(payload);
    }
  });

  it('two sessions with the same words get different SAS and keys', () => {
    const a = begin('session a');
    const b = begin('session b');
    const ra = answerAndSeal(a.o, a.j.msgB, PAYLOAD, a.random);
    const rb = answerAndSeal(b.o, b.j.msgB, PAYLOAD, b.random);
    expect(bytesToHex(a.o.sid)).not.toBe(bytesToHex(b.o.sid));
    expect(bytesToHex(ra.msgFinal.subarray(0, 32))).not.toBe(bytesToHex(rb.msgFinal.subarray(0, 32)));
  });
});

describe('the payload caps', () => {
  it('a payload over PAIR_MAX_PAYLOAD_BYTES is refused before anything is sealed, and the state stays usable', () => {
    const a = begin('cap plain');
    const r = checkAnswer(a.o.state, a.j.msgB);
    if (!r.ok) throw new Error(r.reason);
    const big = new Uint8Array(PAIR_MAX_PAYLOAD_BYTES + 1).fill(0x61);
    expect(() => sealFinal(r.state, big, a.random)).toThrow(PairingTooLargeError);
    expect(() => sealFinal(r.state, big, a.random)).toThrow(RangeError);
    expect(() => pairingFinalBytes(big)).toThrow(PairingTooLargeError);
    expect(openFinal(a.j.state, sealFinal(r.state, PAYLOAD, a.random)).payload).toEqual(PAYLOAD);
  });

  it('a payload whose msgFinal would pass PAIR_MAX_FINAL_BYTES (the relay cap) is refused', () => {
    const incompressible = seeded('cap final')(PAIR_MAX_FINAL_BYTES);
    expect(pairingFinalBytes(incompressible)).toBeGreaterThan(PAIR_MAX_FINAL_BYTES);
    const a = begin('cap final');
    const r = checkAnswer(a.o.state, a.j.msgB);
    if (!r.ok) throw new Error(r.reason);
    const e = (() => {
      try {
        sealFinal(r.state, incompressible, a.random);
      } catch (err) {
        return err;
      }
      return undefined;
    })();
    expect(e).toBeInstanceOf(PairingTooLargeError);
    expect((e as PairingTooLargeError).max).toBe(PAIR_MAX_FINAL_BYTES);
    // Just under the cap is fine.
    const fits = incompressible.subarray(0, PAIR_MAX_FINAL_BYTES - 32 - 48 - 16 - 64);
    expect(openFinal(a.j.state, sealFinal(r.state, fits, a.random)).payload).toEqual(fits);
  });

  it('discardConfirmed (the person said no) spends the state: nothing can be sealed after it', () => {
    const a = begin('discard');
    const r = checkAnswer(a.o.state, a.j.msgB);
    if (!r.ok) throw new Error(r.reason);
    discardConfirmed(r.state);
    discardConfirmed(r.state); // idempotent
    expect(() => sealFinal(r.state, PAYLOAD, a.random)).toThrow(/already used/);
  });
});

describe('wrong words', () => {
  it('the offer side refuses, and the joiner can open nothing', () => {
    const { o, j, random } = begin('wrong words', WORDS, OTHER_WORDS);
    expect(checkAnswer(o.state, j.msgB)).toEqual({ ok: false, reason: 'confirmation' });
    // Whatever the relay then sends the joiner fails: here a real msgFinal of another session
    // with the same sid and the joiner's words.
    const other = startOffer({ words: OTHER_WORDS, random: withSid(o.sid, seeded('wrong words/relay')) });
    const otherJ = answerOffer({ words: OTHER_WORDS, sid: other.sid, msgA: other.msgA, identity: JOIN, random: seeded('wrong words/j2') });
    const { msgFinal } = answerAndSeal(other, otherJ.msgB, PAYLOAD, random);
    expect(pairingError(() => openFinal(j.state, msgFinal)).reason).toBe('confirmation');
  });
});

describe('a malicious relay', () => {
  it('swaps Ya for its own (guessing the words): the offer refuses and the relay gets no payload', () => {
    const o = startOffer({ words: WORDS, random: seeded('ya swap/offer') });
    // The relay runs its own offer with a guess, on the same sid.
    const relay = startOffer({ words: OTHER_WORDS, random: withSid(o.sid, seeded('ya swap/relay')) });
    expect(relay.sid).toEqual(o.sid);
    const j = answerOffer({ words: WORDS, sid: o.sid, msgA: relay.msgA, identity: JOIN, random: seeded('ya swap/join') });
    // The relay checks its guess against the joiner's answer: wrong, and it learns nothing more.
    expect(checkAnswer(relay.state, j.msgB)).toEqual({ ok: false, reason: 'confirmation' });
    // Forwarded to the real offer, the answer fails too: it was made for the relay's Ya.
    expect(checkAnswer(o.state, j.msgB)).toEqual({ ok: false, reason: 'confirmation' });
  });

  it('swaps only the 32 bytes of Ya: confirmation fails', () => {
    const o = startOffer({ words: WORDS, random: seeded('ya bytes/offer') });
    const fake = cpaceShare({ prs: utf8(OTHER_WORDS.join('-')), ci: utf8(PAIR_CI), sid: o.sid, random: seeded('ya bytes/relay') });
    const msgA = concatBytes(fake.Y, o.msgA.subarray(32));
    const j = answerOffer({ words: WORDS, sid: o.sid, msgA, identity: JOIN, random: seeded('ya bytes/join') });
    expect(checkAnswer(o.state, j.msgB)).toEqual({ ok: false, reason: 'confirmation' });
  });

  it('swaps Yb: confirmation fails', () => {
    const { o, j } = begin('yb swap');
    const fake = cpaceShare({ prs: utf8(WORDS.join('-')), ci: utf8(PAIR_CI), sid: o.sid, random: seeded('yb swap/relay') });
    const msgB = concatBytes(fake.Y, j.msgB.subarray(32));
    expect(checkAnswer(o.state, msgB)).toEqual({ ok: false, reason: 'confirmation' });
  });

  it('cannot put anything into ADa: only the bare label is accepted', () => {
    const o = startOffer({ words: WORDS, random: seeded('ada/offer') });
    const L = utf8('casa/v2/pair/offer');
    for (const ad of [lvCat(L, utf8('0123456789abcdef0123456789abcdef')), lvCat(L, new Uint8Array(0)), lvCat(utf8('casa/v2/pair/join'))]) {
      const msgA = concatBytes(o.msgA.subarray(0, 32), ad);
      const e = pairingError(() => answerOffer({ words: WORDS, sid: o.sid, msgA, identity: JOIN, random: seeded('ada/join') }));
      expect(e.reason).toBe('malformed');
    }
  });

  it.each([
    ['another signing key', { ...JOIN, signingPublicKey: OTHER_SIGNING_KEY }],
    ['another exchange key', { ...JOIN, exchangePublicKey: OTHER_EXCHANGE_KEY }],
    ['another device name', { ...JOIN, deviceName: 'attacker' }],
  ])('changes ADb (%s): confirmation fails', (_, forged) => {
    const { o, j } = begin('adb');
    const ad = joinAd(JOIN);
    const msgB = concatBytes(j.msgB.subarray(0, 32), joinAd(forged), j.msgB.subarray(32 + ad.length));
    expect(checkAnswer(o.state, msgB)).toEqual({ ok: false, reason: 'confirmation' });
  });

  it('swaps the sids of two concurrent sessions: both fail', () => {
    const o1 = startOffer({ words: WORDS, random: seeded('sid/1') });
    const o2 = startOffer({ words: WORDS, random: seeded('sid/2') });
    const j1 = answerOffer({ words: WORDS, sid: o2.sid, msgA: o1.msgA, identity: JOIN, random: seeded('sid/j1') });
    const j2 = answerOffer({ words: WORDS, sid: o1.sid, msgA: o2.msgA, identity: JOIN, random: seeded('sid/j2') });
    expect(checkAnswer(o1.state, j1.msgB)).toEqual({ ok: false, reason: 'confirmation' });
    expect(checkAnswer(o2.state, j2.msgB)).toEqual({ ok: false, reason: 'confirmation' });
  });

  it('replays msgA from an earlier session with the same words: the new offer refuses the answer', () => {
    const old = begin('replay a/old');
    const fresh = startOffer({ words: WORDS, random: seeded('replay a/new') });
    const j = answerOffer({ words: WORDS, sid: fresh.sid, msgA: old.o.msgA, identity: JOIN, random: seeded('replay a/j') });
    expect(checkAnswer(fresh.state, j.msgB)).toEqual({ ok: false, reason: 'confirmation' });
    // With the old sid too, the answer can only go to the old offer state, which is spent.
    const j2 = answerOffer({ words: WORDS, sid: old.o.sid, msgA: old.o.msgA, identity: JOIN, random: seeded('replay a/j2') });
    expect(checkAnswer(old.o.state, old.j.msgB).ok).toBe(true);
    expect(() => checkAnswer(old.o.state, j2.msgB)).toThrow(/already used/);
  });

  it('replays msgB from an earlier session: confirmation fails', () => {
    const old = begin('replay b/old');
    const fresh = begin('replay b/new');
    expect(checkAnswer(fresh.o.state, old.j.msgB)).toEqual({ ok: false, reason: 'confirmation' });
  });

  it('replays msgFinal from an earlier session: confirmation fails', () => {
    const old = begin('replay final/old');
    const { msgFinal } = answerAndSeal(old.o, old.j.msgB, PAYLOAD, old.random);
    const fresh = begin('replay final/new');
    expect(pairingError(() => openFinal(fresh.j.state, msgFinal)).reason).toBe('confirmation');
  });

  describe('tampers with msgFinal', () => {
    function final(label: string) {
      const { o, j, random } = begin(label);
      return { j, msgFinal: answerAndSeal(o, j.msgB, PAYLOAD, random).msgFinal };
    }

    it('a flipped tag bit: confirmation', () => {
      const { j, msgFinal } = final('final tag');
      expect(pairingError(() => openFinal(j.state, flip(msgFinal, 5))).reason).toBe('confirmation');
    });

    it.each([
      ['header salt', 32 + 20],
      ['key id', 32 + 9],
      ['codec', 32 + 6],
      ['ciphertext', 32 + 48 + 3],
      ['GCM tag', -1],
    ])('a flipped sealed payload byte (%s): payload', (_, at) => {
      const { j, msgFinal } = final(`final ${String(at)}`);
      const i = at < 0 ? msgFinal.length + at : at;
      const e = pairingError(() => openFinal(j.state, flip(msgFinal, i)));
      expect(e.reason).toBe('payload');
      expect(e.cause).toBeInstanceOf(Error);
    });

    it.each([
      ['cut inside the ciphertext', -20],
      ['cut to the tag alone', 32],
      ['cut inside the header', 32 + 10],
    ])('a truncated sealed payload (%s): payload', (_, cut) => {
      const { j, msgFinal } = final(`truncate ${String(cut)}`);
      const end = cut < 0 ? msgFinal.length + cut : cut;
      expect(pairingError(() => openFinal(j.state, msgFinal.subarray(0, end))).reason).toBe('payload');
    });

    it('a byte appended: payload', () => {
      const { j, msgFinal } = final('append');
      expect(pairingError(() => openFinal(j.state, concatBytes(msgFinal, Uint8Array.of(0)))).reason).toBe('payload');
    });

    it('shorter than a tag: malformed', () => {
      const { j, msgFinal } = final('short');
      expect(pairingError(() => openFinal(j.state, msgFinal.subarray(0, 31))).reason).toBe('malformed');
    });
  });

  describe('sends invalid points', () => {
    const IDENTITY = new Uint8Array(32);
    const NOT_A_POINT = new Uint8Array(32).fill(0xff);

    it.each([
      ['the identity', IDENTITY],
      ['a non-canonical encoding', NOT_A_POINT],
    ])('as Ya (%s): answerOffer throws invalid_point', (_, bad) => {
      const o = startOffer({ words: WORDS, random: seeded('pt a') });
      const msgA = concatBytes(bad, o.msgA.subarray(32));
      const e = pairingError(() => answerOffer({ words: WORDS, sid: o.sid, msgA, identity: JOIN, random: seeded('j') }));
      expect(e.reason).toBe('invalid_point');
    });

    it.each([
      ['the identity', IDENTITY],
      ['a non-canonical encoding', NOT_A_POINT],
    ])('as Yb (%s): checkAnswer says invalid_point', (_, bad) => {
      const { o, j } = begin('pt b');
      const msgB = concatBytes(bad, j.msgB.subarray(32));
      expect(checkAnswer(o.state, msgB)).toEqual({ ok: false, reason: 'invalid_point' });
    });
  });

  describe('truncates or pads messages', () => {
    it('msgA: malformed', () => {
      const o = startOffer({ words: WORDS, random: seeded('trunc a') });
      for (const msgA of [o.msgA.subarray(0, 32), o.msgA.subarray(0, 10), o.msgA.subarray(0, o.msgA.length - 1), concatBytes(o.msgA, Uint8Array.of(0))]) {
        const e = pairingError(() => answerOffer({ words: WORDS, sid: o.sid, msgA, identity: JOIN, random: seeded('j') }));
        expect(e.reason).toBe('malformed');
      }
    });

    it('sid of the wrong length: malformed', () => {
      const o = startOffer({ words: WORDS, random: seeded('sid len') });
      for (const sid of [o.sid.subarray(0, 15), concatBytes(o.sid, Uint8Array.of(1)), new Uint8Array(0)]) {
        const e = pairingError(() => answerOffer({ words: WORDS, sid, msgA: o.msgA, identity: JOIN, random: seeded('j') }));
        expect(e.reason).toBe('malformed');
      }
    });

    it.each([
      ['one byte short', (m: Uint8Array) => m.subarray(0, m.length - 1)],
      ['the tag missing', (m: Uint8Array) => m.subarray(0, m.length - 32)],
      ['only Yb and a tag', (m: Uint8Array) => concatBytes(m.subarray(0, 32), m.subarray(m.length - 32))],
      ['only Yb', (m: Uint8Array) => m.subarray(0, 32)],
      ['empty', () => new Uint8Array(0)],
      ['one byte appended', (m: Uint8Array) => concatBytes(m, Uint8Array.of(0))],
    ])('msgB %s: malformed', (_, cut) => {
      const { o, j } = begin('trunc b');
      expect(checkAnswer(o.state, cut(j.msgB))).toEqual({ ok: false, reason: 'malformed' });
    });

    it('ADa that is not the bare label, or not UTF-8: malformed', () => {
      const o = startOffer({ words: WORDS, random: seeded('ada shape') });
      const Ya = o.msgA.subarray(0, 32);
      const L = utf8('casa/v2/pair/offer');
      for (const ad of [
        lvCat(L, utf8('x')),
        lvCat(utf8('CASA/V2/PAIR/OFFER')),
        lvCat(utf8('casa/v3/pair/offer')),
        lvCat(Uint8Array.of(0xc3, 0x28)), // not UTF-8
        Uint8Array.of(0x05, 0x61), // a length past the end
      ]) {
        const msgA = concatBytes(Ya, ad);
        const e = pairingError(() => answerOffer({ words: WORDS, sid: o.sid, msgA, identity: JOIN, random: seeded('j') }));
        expect(e.reason).toBe('malformed');
      }
    });

    it("a version-1 offer (ADa naming the vault and device, for the phrase): 'version', and nothing is answered", () => {
      const o = startOffer({ words: WORDS, random: seeded('v1') });
      const v1 = lvCat(utf8('casa/v1/pair/offer'), utf8('0123456789abcdef0123456789abcdef'), utf8('fedcba9876543210'), utf8('work laptop'));
      const e = pairingError(() => answerOffer({ words: WORDS, sid: o.sid, msgA: concatBytes(o.msgA.subarray(0, 32), v1), identity: JOIN, random: seeded('j') }));
      expect(e.reason).toBe('version');
      expect(e.message).toMatch(/older casa/);
    });

    it('ADb with a key that is not an Ed25519 point, an exchange key of small order or missing: malformed', () => {
      const { o, j } = begin('adb shape');
      const ad = joinAd(JOIN);
      const tail = j.msgB.subarray(32 + ad.length);
      const L = utf8('casa/v2/pair/join');
      for (const bad of [
        lvCat(L, new Uint8Array(31), JOIN.exchangePublicKey, utf8('x')),
        lvCat(L, JOIN.signingPublicKey, JOIN.exchangePublicKey.subarray(0, 31), utf8('x')),
        ...SMALL_ORDER.map((k) => lvCat(L, JOIN.signingPublicKey, k, utf8('x'))),
        lvCat(utf8('casa/v1/pair/join'), JOIN.signingPublicKey, utf8('x')), // version 1: no exchange key
        lvCat(L, JOIN.signingPublicKey, utf8('x')),
      ]) {
        const msgB = concatBytes(j.msgB.subarray(0, 32), bad, tail);
        const again = begin('adb shape');
        expect(checkAnswer(again.o.state, msgB)).toEqual({ ok: false, reason: 'malformed' });
      }
      expect(checkAnswer(o.state, j.msgB).ok).toBe(true);
    });
  });
});

describe('states are single use', () => {
  it('checkAnswer twice throws, after success and after failure', () => {
    const a = begin('reuse ok');
    expect(checkAnswer(a.o.state, a.j.msgB).ok).toBe(true);
    expect(() => checkAnswer(a.o.state, a.j.msgB)).toThrow(/already used/);
    const b = begin('reuse fail');
    expect(checkAnswer(b.o.state, new Uint8Array(10)).ok).toBe(false);
    expect(() => checkAnswer(b.o.state, b.j.msgB)).toThrow(/already used/);
  });

  it('sealFinal twice throws', () => {
    const a = begin('reuse seal');
    const r = checkAnswer(a.o.state, a.j.msgB);
    if (!r.ok) throw new Error(r.reason);
    sealFinal(r.state, PAYLOAD, a.random);
    expect(() => sealFinal(r.state, PAYLOAD, a.random)).toThrow(/already used/);
  });

  it('openFinal twice throws, after success and after failure', () => {
    const a = begin('reuse final');
    const { msgFinal } = answerAndSeal(a.o, a.j.msgB, PAYLOAD, a.random);
    expect(openFinal(a.j.state, msgFinal).payload).toEqual(PAYLOAD);
    expect(() => openFinal(a.j.state, msgFinal)).toThrow(/already used/);
    const b = begin('reuse final fail');
    pairingError(() => openFinal(b.j.state, flip(msgFinal, 0)));
    expect(() => openFinal(b.j.state, msgFinal)).toThrow(/already used/);
  });

  it('a state of another kind, or a forged one, is refused', () => {
    const a = begin('kinds');
    expect(() => checkAnswer(a.j.state as never, a.j.msgB)).toThrow(/already used, or is not one/);
    expect(() => sealFinal(a.o.state as never, PAYLOAD, a.random)).toThrow(/already used, or is not one/);
    expect(() => openFinal({} as never, new Uint8Array(64))).toThrow(/already used, or is not one/);
  });
});

describe('caller errors are TypeError / RangeError', () => {
  it('words must be canonical', () => {
    const random = seeded('caller');
    for (const words of [['abandon', 'zoo'], ['Abandon', 'zoo', 'letter'], ['aban', 'zoo', 'letter'], 'abandon zoo letter', ['abandon', 'zoo', 'letter', 'x']]) {
      expect(() => startOffer({ words: words as string[], random }), String(words)).toThrow(RangeError);
    }
  });

  it('the joiner identity must be well formed', () => {
    const random = seeded('caller id');
    const o = startOffer({ words: WORDS, random });
    const answer = (identity: JoinIdentity) => answerOffer({ words: WORDS, sid: o.sid, msgA: o.msgA, identity, random });
    expect(() => answer({ ...JOIN, signingPublicKey: new Uint8Array(31) })).toThrow(RangeError);
    expect(() => answer({ ...JOIN, exchangePublicKey: new Uint8Array(31) })).toThrow(RangeError);
    for (const k of SMALL_ORDER) expect(() => answer({ ...JOIN, exchangePublicKey: k })).toThrow(RangeError);
    expect(() => answer({ ...JOIN, exchangePublicKey: undefined as never })).toThrow(TypeError);
    expect(() => answer({ ...JOIN, deviceName: 'tab\there' })).toThrow(RangeError);
    expect(() => answer({ ...JOIN, deviceName: '' })).toThrow(RangeError);
    expect(() => answer({ ...JOIN, deviceName: 'x'.repeat(65) })).toThrow(RangeError);
    expect(() => answer({ ...JOIN, deviceName: 'a\u{d800}' })).toThrow(RangeError);
    expect(answer({ ...JOIN, deviceName: '🏠'.repeat(64) }).msgB.length).toBeGreaterThan(32 + 256 + 32);
    expect(() => answerOffer({ words: WORDS, sid: 'x' as never, msgA: o.msgA, identity: JOIN, random })).toThrow(TypeError);
    expect(() => startOffer({ words: WORDS, random: null as never })).toThrow(TypeError);
  });
});

describe('pairing words', () => {
  it('generatePairingWords takes 11 bits from each 16', () => {
    const words = generatePairingWords(() => Uint8Array.of(0x00, 0x00, 0xff, 0xff, 0x12, 0x34));
    expect(words).toEqual([wordlist[0], wordlist[2047], wordlist[0x234]]);
    expect(generatePairingWords(seeded('words')).every((w) => wordlist.includes(w))).toBe(true);
    expect(() => generatePairingWords(() => new Uint8Array(5))).toThrow(RangeError);
  });

  it('normalisePairingWords accepts what a person types', () => {
    expect(normalisePairingWords('abandon-zoo-letter')).toEqual(WORDS);
    expect(normalisePairingWords('  ABANDON  zoo\tLETTER ')).toEqual(WORDS);
    expect(normalisePairingWords('aban zoo lett')).toEqual(WORDS);
    expect(normalisePairingWords('abandon – zoo—letter')).toEqual(WORDS);
    expect(normalisePairingWords('ＡＢＡＮＤＯＮ zoo letter')).toEqual(WORDS); // NFKD folds full-width letters
    expect(normalisePairingWords(WORDS.join('-'))).toEqual(WORDS);
  });

  it('names the position of an unknown word, never the word', () => {
    const e = pairingError(() => normalisePairingWords('abandon zebraish letter'));
    expect(e.reason).toBe('malformed');
    expect(e.position).toBe(2);
    expect(e.message).toContain('word 2');
    expect(e.message).not.toContain('zebra');
    expect(pairingError(() => normalisePairingWords('aba zoo letter')).position).toBe(1); // prefixes start at 4 letters
  });

  it('wants exactly three words', () => {
    for (const text of ['', 'abandon zoo', 'abandon zoo letter abandon', '---']) {
      const e = pairingError(() => normalisePairingWords(text));
      expect(e.reason).toBe('malformed');
      expect(e.message).toContain(`needs ${PAIR_WORDS}`);
    }
  });
});

// ---------------------------------------------------------------------------
// The payload (src/commands/pair-code.ts)

const VAULT = '0123456789abcdef0123456789abcdef';
const OFFERER_SEED = new Uint8Array(32).fill(3);
const OFFERER_ID = 'fedcba9876543210';
const PAPER = { authKey: b64uEncode(new Uint8Array(32).fill(1)), exchangeKey: b64uEncode(new Uint8Array(32).fill(2)), n: 1 };

function ringOf(epochs: number, vaultId = VAULT): Keyring {
  const random = seeded(`ring ${epochs} ${vaultId}`);
  let ring = newKeyring(vaultId, random);
  for (let i = 1; i < epochs; i++) ring = nextEpoch(ring, random);
  return ring;
}

function payloadFor(join: JoinIdentity, ring: Keyring, vaultId = VAULT): PairingPayload {
  const marks: Record<number, { cursor: number; seq: number }> = {};
  for (let e = 1; e < ring.epochs.length; e++) marks[e] = { cursor: 1000 * e, seq: 10 * e };
  const cert = vouchFor({
    vaultId,
    deviceId: deviceIdOf(join.signingPublicKey),
    signingKey: b64uEncode(join.signingPublicKey),
    exchangeKey: b64uEncode(join.exchangePublicKey),
    name: join.deviceName,
    issuedAt: 1_780_000_000_000,
    issuer: OFFERER_ID,
    issuerSeed: OFFERER_SEED,
  });
  return { vaultId, offerer: { deviceId: OFFERER_ID, name: 'work laptop' }, paper: PAPER, cert, stored: { ring, marks } };
}

/** The payload's JSON, changed by `edit`, then decoded for JOIN. */
function decodeEdited(edit: (d: Record<string, any>) => void, join = JOIN): PairingPayload {
  const d = JSON.parse(new TextDecoder().decode(encodePairingPayload(payloadFor(JOIN, ringOf(3))))) as Record<string, any>;
  edit(d);
  return decodePairingPayload(utf8(JSON.stringify(d)), join);
}

describe('the pairing payload', () => {
  it('is the documented JSON, with a certificate the offering device signed for exactly the joiner', () => {
    const p = payloadFor(JOIN, ringOf(3));
    const d = JSON.parse(new TextDecoder().decode(encodePairingPayload(p))) as Record<string, any>;
    expect(Object.keys(d)).toEqual(['v', 'vaultId', 'offerer', 'paper', 'cert', 'ring', 'marks']);
    expect(d.v).toBe(2);
    expect(d.offerer).toEqual({ deviceId: OFFERER_ID, name: 'work laptop' });
    expect(d.paper).toEqual(PAPER);
    expect(d.ring).toBe(b64uEncode(encodeKeyring(p.stored.ring)));
    expect(d.marks).toEqual({ '1': { cursor: 1000, seq: 10 }, '2': { cursor: 2000, seq: 20 } });
    expect(Object.keys(d.cert)).toEqual(['vaultId', 'deviceId', 'signingKey', 'exchangeKey', 'name', 'issuedAt', 'issuer', 'signature']);
    const { signature, ...unsigned } = d.cert;
    expect(verifyPurpose(publicKeyFromSeed(OFFERER_SEED), 'device-cert', certFields(unsigned), Buffer.from(signature, 'base64url'))).toBe(true);
  });

  it('decodes back to what was encoded', () => {
    const p = payloadFor(JOIN, ringOf(3));
    const got = decodePairingPayload(encodePairingPayload(p), JOIN);
    expect(got.vaultId).toBe(VAULT);
    expect(got.offerer).toEqual(p.offerer);
    expect(got.paper).toEqual(PAPER);
    expect(got.cert).toEqual(p.cert);
    expect(encodeKeyring(got.stored.ring)).toEqual(encodeKeyring(p.stored.ring));
    expect(got.stored.marks).toEqual(p.stored.marks);
  });

  it('with a keyring of 150 epochs fits the relay cap and goes through the handshake', () => {
    const p = payloadFor(JOIN, ringOf(150));
    const bytes = encodePairingPayload(p);
    expect(bytes.length).toBeLessThanOrEqual(PAIR_MAX_PAYLOAD_BYTES);
    expect(pairingFinalBytes(bytes)).toBeLessThanOrEqual(PAIR_MAX_FINAL_BYTES);
    const { o, j, random } = begin('150 epochs');
    const { msgFinal } = answerAndSeal(o, j.msgB, bytes, random);
    expect(msgFinal.length).toBeLessThanOrEqual(PAIR_MAX_FINAL_BYTES);
    const got = decodePairingPayload(openFinal(j.state, msgFinal).payload, JOIN);
    expect(got.stored.ring.epochs.length).toBe(150);
    expect(encodeKeyring(got.stored.ring)).toEqual(encodeKeyring(p.stored.ring));
  });

  it('with a keyring far larger than that is refused by the caps', () => {
    const bytes = encodePairingPayload(payloadFor(JOIN, ringOf(400)));
    const { o, j, random } = begin('400 epochs');
    const r = checkAnswer(o.state, j.msgB);
    if (!r.ok) throw new Error(r.reason);
    expect(() => sealFinal(r.state, bytes, random)).toThrow(PairingTooLargeError);
  });

  it.each<[string, (d: Record<string, any>) => void]>([
    ['another version', (d) => (d.v = 1)],
    ['a field too many', (d) => (d.phrase = 'x')],
    ['a field missing', (d) => delete d.marks],
    ['a bad vault id', (d) => (d.vaultId = d.vaultId.toUpperCase())],
    ['a bad offerer id', (d) => (d.offerer.deviceId = '0123')],
    ['an offerer name with a control character', (d) => (d.offerer.name = 'bell\x07')],
    ['a paper key of 31 bytes', (d) => (d.paper.authKey = b64uEncode(new Uint8Array(31)))],
    ['a paper exchange key not base64url', (d) => (d.paper.exchangeKey = '+'.repeat(43))],
    ['a negative paper count', (d) => (d.paper.n = -1)],
    ['a cert of another vault', (d) => (d.cert.vaultId = 'ffffffffffffffffffffffffffffffff')],
    ['a cert for another signing key', (d) => (d.cert.signingKey = b64uEncode(OTHER_SIGNING_KEY))],
    ['a cert with another device id', (d) => (d.cert.deviceId = deviceIdOf(OTHER_SIGNING_KEY))],
    ['a cert for another exchange key', (d) => (d.cert.exchangeKey = b64uEncode(OTHER_EXCHANGE_KEY))],
    ['a cert with another name', (d) => (d.cert.name = 'attacker')],
    ['a cert not issued by the offerer', (d) => (d.cert.issuer = 'recovery')],
    ['a cert with a short signature', (d) => (d.cert.signature = b64uEncode(new Uint8Array(63)))],
    ['a cert with an extra field', (d) => (d.cert.extra = 1)],
    ['a ring that is not base64url', (d) => (d.ring = 'not a ring!')],
    ['a ring that is not a keyring', (d) => (d.ring = b64uEncode(utf8('{"v":1}')))],
    ['a ring of another vault', (d) => (d.ring = b64uEncode(encodeKeyring(ringOf(3, 'ffffffffffffffffffffffffffffffff'))))],
    ['a mark for the current epoch', (d) => (d.marks['3'] = { cursor: 1, seq: 1 })],
    ['a mark for epoch 0', (d) => (d.marks['0'] = { cursor: 1, seq: 1 })],
    ['a mark that is not a count', (d) => (d.marks['1'] = { cursor: 1.5, seq: 1 })],
    ['marks that are a list', (d) => (d.marks = [])],
  ])('is refused with %s', (_, edit) => {
    let err: unknown;
    try {
      decodeEdited(edit);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(IntegrityError);
    // The message names the field, never a key.
    expect((err as Error).message).not.toMatch(/[A-Za-z0-9_-]{43}/);
  });

  it('is refused when it is not JSON, or for another joiner', () => {
    expect(() => decodePairingPayload(utf8('not json'), JOIN)).toThrow(IntegrityError);
    expect(() => decodePairingPayload(Uint8Array.of(0xc3, 0x28), JOIN)).toThrow(IntegrityError);
    expect(() => decodePairingPayload(utf8('[]'), JOIN)).toThrow(IntegrityError);
    const other = joinIdentity(new Uint8Array(32).fill(9), JOIN.deviceName);
    expect(() => decodePairingPayload(encodePairingPayload(payloadFor(JOIN, ringOf(2))), other)).toThrow(IntegrityError);
    expect(() => decodeEdited(() => undefined, { ...JOIN, deviceName: 'renamed' })).toThrow(IntegrityError);
  });
});

describe('properties', () => {
  const word = fc.integer({ min: 0, max: 2047 }).map((i) => wordlist[i]!);
  const name = fc
    .string({ unit: 'grapheme', minLength: 1, maxLength: 64 })
    .filter((s) => [...s].length >= 1 && [...s].length <= 64 && !/\p{Cc}/u.test(s));
  const join = fc.record({ seed: fc.uint8Array({ minLength: 32, maxLength: 32 }), deviceName: name });
  const params = { seed: Number(process.env.FC_SEED ?? 20_240_611), numRuns: RUNS };

  it('random words and identities round-trip, with one SAS on both sides', () => {
    fc.assert(
      fc.property(fc.tuple(word, word, word), join, fc.string(), (words, j, label) => {
        const joinId = joinIdentity(j.seed, j.deviceName);
        const { o, j: a, random } = begin(`prop ${label}`, words, words, joinId);
        const r = checkAnswer(o.state, a.msgB);
        if (!r.ok) return false;
        expect(r.joiner.deviceName).toBe(joinId.deviceName);
        expect(bytesToHex(r.joiner.exchangePublicKey)).toBe(bytesToHex(joinId.exchangePublicKey));
        const f = openFinal(a.state, sealFinal(r.state, PAYLOAD, random));
        return bytesToHex(f.payload) === bytesToHex(PAYLOAD) && f.sas === r.sas && a.sas === r.sas;
      }),
      params,
    );
  });

  it('any single flipped byte in msgB fails', () => {
    fc.assert(
      fc.property(fc.nat(), fc.integer({ min: 1, max: 255 }), (at, mask) => {
        const { o, j } = begin(`flip b ${at} ${mask}`);
        const r = checkAnswer(o.state, flip(j.msgB, at % j.msgB.length, mask));
        return r.ok === false && !('state' in r);
      }),
      params,
    );
  });

  it('any single flipped byte in msgFinal fails', () => {
    fc.assert(
      fc.property(fc.nat(), fc.integer({ min: 1, max: 255 }), (at, mask) => {
        const { o, j, random } = begin(`flip final ${at} ${mask}`);
        const { msgFinal } = answerAndSeal(o, j.msgB, PAYLOAD, random);
        const e = pairingError(() => openFinal(j.state, flip(msgFinal, at % msgFinal.length, mask)));
        return e.reason === 'confirmation' || e.reason === 'payload';
      }),
      params,
    );
  });
});
