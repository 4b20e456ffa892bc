/**
 * The pairing handshake (src/crypto/pairing.ts): round trip, wrong words, and
 * a relay that tampers with whatever passes through it. Every tampered run
 * must fail — never succeed with a different key. Randomness is seeded.
 * Few property runs by default, many under SLOW=1.
 */
import { createHash } from 'node:crypto';
import { wordlist } from '@scure/bip39/wordlists/english.js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { bytesToHex, concatBytes, utf8ToBytes } from '../../src/crypto/bytes.js';
import { cpaceShare, lvCat } from '../../src/crypto/pake.js';
import {
  answerOffer,
  checkAnswer,
  generatePairingWords,
  type JoinIdentity,
  normalisePairingWords,
  type OfferIdentity,
  openFinal,
  PAIR_CI,
  PAIR_MAX_PAYLOAD_BYTES,
  PAIR_WORDS,
  PairingError,
  startOffer,
} from '../../src/crypto/pairing.js';
import { publicKeyFromSeed } from '../../src/crypto/sign.js';

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
const OFFER: OfferIdentity = { vaultId: '0123456789abcdef0123456789abcdef', deviceId: 'fedcba9876543210', deviceName: 'work laptop' };
const JOIN: JoinIdentity = { devicePublicKey: publicKeyFromSeed(new Uint8Array(32).fill(7)), deviceName: 'home desk' };
const OTHER_KEY = publicKeyFromSeed(new Uint8Array(32).fill(8));
const PHRASE = utf8('letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic bless');

function offerAd(id: OfferIdentity): Uint8Array {
  return lvCat(utf8('casa/v1/pair/offer'), utf8(id.vaultId), utf8(id.deviceId), utf8(id.deviceName));
}
function joinAd(id: JoinIdentity): Uint8Array {
  return lvCat(utf8('casa/v1/pair/join'), id.devicePublicKey, utf8(id.deviceName));
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
function begin(label: string, words = WORDS, joinWords = words, offer = OFFER, join = JOIN) {
  const o = startOffer({ words, identity: offer, random: seeded(`${label}/offer`) });
  const j = answerOffer({ words: joinWords, sid: o.sid, msgA: o.msgA, identity: join, random: seeded(`${label}/join`) });
  return { o, j, random: seeded(`${label}/final`) };
}

describe('pairing round trip', () => {
  it('delivers the payload, the same SAS on both screens, and both identities', () => {
    const { o, j, random } = begin('round trip');
    expect(o.sid.length).toBe(16);
    expect(j.offer).toEqual(OFFER);
    const r = checkAnswer(o.state, j.msgB, PHRASE, random);
    if (!r.ok) throw new Error(`checkAnswer failed: ${r.reason}`);
    expect(bytesToHex(r.joiner.devicePublicKey)).toBe(bytesToHex(JOIN.devicePublicKey));
    expect(r.joiner.deviceName).toBe(JOIN.deviceName);
    expect(r.sas).toMatch(/^\d{3} \d{3}$/);
    const f = openFinal(j.state, r.msgFinal);
    expect(f.payload).toEqual(PHRASE);
    expect(f.sas).toBe(r.sas);
  });

  it('has the documented message layouts', () => {
    const { o, j, random } = begin('layout');
    expect(o.msgA.subarray(32)).toEqual(offerAd(OFFER));
    expect(j.msgB.length).toBe(32 + joinAd(JOIN).length + 32);
    expect(j.msgB.subarray(32, 32 + joinAd(JOIN).length)).toEqual(joinAd(JOIN));
    const r = checkAnswer(o.state, j.msgB, PHRASE, random);
    if (!r.ok) throw new Error(r.reason);
    expect(r.msgFinal.length).toBe(32 + 48 + PHRASE.length + 16);
    expect(new TextDecoder().decode(r.msgFinal.subarray(32, 36))).toBe('CASA');
    expect(r.msgFinal[32 + 5]).toBe(5); // ObjectType.pairing
    expect(r.msgFinal[32 + 6]).toBe(0); // Codec.none
  });

  it('carries an empty and a maximal payload', () => {
    for (const payload of [new Uint8Array(0), new Uint8Array(PAIR_MAX_PAYLOAD_BYTES).fill(0x61)]) {
      const { o, j, random } = begin(`payload ${payload.length}`);
      const r = checkAnswer(o.state, j.msgB, payload, random);
      if (!r.ok) throw new Error(r.reason);
      expect(openFinal(j.state, r.msgFinal).payload).toEqual(payload);
    }
  });

  it('two sessions with the same words get different SAS and keys', () => {
    const a = begin('session a');
    const b = begin('session b');
    const ra = checkAnswer(a.o.state, a.j.msgB, PHRASE, a.random);
    const rb = checkAnswer(b.o.state, b.j.msgB, PHRASE, b.random);
    if (!ra.ok || !rb.ok) throw new Error('honest runs failed');
    expect(bytesToHex(a.o.sid)).not.toBe(bytesToHex(b.o.sid));
    expect(bytesToHex(ra.msgFinal.subarray(0, 32))).not.toBe(bytesToHex(rb.msgFinal.subarray(0, 32)));
  });
});

describe('wrong words', () => {
  it('the offer side refuses, and the joiner can open nothing', () => {
    const { o, j, random } = begin('wrong words', WORDS, OTHER_WORDS);
    expect(checkAnswer(o.state, j.msgB, PHRASE, random)).toEqual({ ok: false, reason: 'confirmation' });
    // Whatever the relay then sends the joiner fails: here a real msgFinal of another session
    // with the same sid, the same offer identity and the joiner's words.
    const other = startOffer({ words: OTHER_WORDS, identity: OFFER, random: withSid(o.sid, seeded('wrong words/relay')) });
    const otherJ = answerOffer({ words: OTHER_WORDS, sid: other.sid, msgA: other.msgA, identity: JOIN, random: seeded('wrong words/j2') });
    const r = checkAnswer(other.state, otherJ.msgB, PHRASE, random);
    if (!r.ok) throw new Error(r.reason);
    expect(pairingError(() => openFinal(j.state, r.msgFinal)).reason).toBe('confirmation');
  });
});

describe('a malicious relay', () => {
  it('swaps Ya for its own (guessing the words): the offer refuses and the relay gets no payload', () => {
    const o = startOffer({ words: WORDS, identity: OFFER, random: seeded('ya swap/offer') });
    // The relay runs its own offer with a guess, on the same sid and the same ADa.
    const relay = startOffer({ words: OTHER_WORDS, identity: OFFER, random: withSid(o.sid, seeded('ya swap/relay')) });
    expect(relay.sid).toEqual(o.sid);
    const j = answerOffer({ words: WORDS, sid: o.sid, msgA: relay.msgA, identity: JOIN, random: seeded('ya swap/join') });
    // The relay checks its guess against the joiner's answer: wrong, and it learns nothing more.
    expect(checkAnswer(relay.state, j.msgB, PHRASE, seeded('r'))).toEqual({ ok: false, reason: 'confirmation' });
    // Forwarded to the real offer, the answer fails too: it was made for the relay's Ya.
    expect(checkAnswer(o.state, j.msgB, PHRASE, seeded('o'))).toEqual({ ok: false, reason: 'confirmation' });
  });

  it('swaps only the 32 bytes of Ya: confirmation fails', () => {
    const o = startOffer({ words: WORDS, identity: OFFER, random: seeded('ya bytes/offer') });
    const fake = cpaceShare({ prs: utf8(OTHER_WORDS.join('-')), ci: utf8(PAIR_CI), sid: o.sid, random: seeded('ya bytes/relay') });
    const msgA = concatBytes(fake.Y, o.msgA.subarray(32));
    const j = answerOffer({ words: WORDS, sid: o.sid, msgA, identity: JOIN, random: seeded('ya bytes/join') });
    expect(checkAnswer(o.state, j.msgB, PHRASE, seeded('f'))).toEqual({ ok: false, reason: 'confirmation' });
  });

  it('swaps Yb: confirmation fails', () => {
    const { o, j, random } = begin('yb swap');
    const fake = cpaceShare({ prs: utf8(WORDS.join('-')), ci: utf8(PAIR_CI), sid: o.sid, random: seeded('yb swap/relay') });
    const msgB = concatBytes(fake.Y, j.msgB.subarray(32));
    expect(checkAnswer(o.state, msgB, PHRASE, random)).toEqual({ ok: false, reason: 'confirmation' });
  });

  it.each([
    ['another vault id', { ...OFFER, vaultId: 'ffffffffffffffffffffffffffffffff' }],
    ['another device id', { ...OFFER, deviceId: '0000000000000000' }],
    ['another device name', { ...OFFER, deviceName: 'attacker' }],
  ])('changes ADa (%s): the joiner sees it, but confirmation fails', (_, forged) => {
    const o = startOffer({ words: WORDS, identity: OFFER, random: seeded('ada/offer') });
    const msgA = concatBytes(o.msgA.subarray(0, 32), offerAd(forged));
    const j = answerOffer({ words: WORDS, sid: o.sid, msgA, identity: JOIN, random: seeded('ada/join') });
    expect(j.offer).toEqual(forged);
    expect(checkAnswer(o.state, j.msgB, PHRASE, seeded('f'))).toEqual({ ok: false, reason: 'confirmation' });
  });

  it.each([
    ['another public key', { ...JOIN, devicePublicKey: OTHER_KEY }],
    ['another device name', { ...JOIN, deviceName: 'attacker' }],
  ])('changes ADb (%s): confirmation fails', (_, forged) => {
    const { o, j, random } = begin('adb');
    const ad = joinAd(JOIN);
    const msgB = concatBytes(j.msgB.subarray(0, 32), joinAd(forged), j.msgB.subarray(32 + ad.length));
    expect(checkAnswer(o.state, msgB, PHRASE, random)).toEqual({ ok: false, reason: 'confirmation' });
  });

  it('swaps the sids of two concurrent sessions: both fail', () => {
    const o1 = startOffer({ words: WORDS, identity: OFFER, random: seeded('sid/1') });
    const o2 = startOffer({ words: WORDS, identity: OFFER, random: seeded('sid/2') });
    const j1 = answerOffer({ words: WORDS, sid: o2.sid, msgA: o1.msgA, identity: JOIN, random: seeded('sid/j1') });
    const j2 = answerOffer({ words: WORDS, sid: o1.sid, msgA: o2.msgA, identity: JOIN, random: seeded('sid/j2') });
    expect(checkAnswer(o1.state, j1.msgB, PHRASE, seeded('a'))).toEqual({ ok: false, reason: 'confirmation' });
    expect(checkAnswer(o2.state, j2.msgB, PHRASE, seeded('b'))).toEqual({ ok: false, reason: 'confirmation' });
  });

  it('replays msgA from an earlier session with the same words: the new offer refuses the answer', () => {
    const old = begin('replay a/old');
    const fresh = startOffer({ words: WORDS, identity: OFFER, random: seeded('replay a/new') });
    const j = answerOffer({ words: WORDS, sid: fresh.sid, msgA: old.o.msgA, identity: JOIN, random: seeded('replay a/j') });
    expect(checkAnswer(fresh.state, j.msgB, PHRASE, seeded('x'))).toEqual({ ok: false, reason: 'confirmation' });
    // With the old sid too, the answer can only go to the old offer state, which is spent.
    const j2 = answerOffer({ words: WORDS, sid: old.o.sid, msgA: old.o.msgA, identity: JOIN, random: seeded('replay a/j2') });
    expect(checkAnswer(old.o.state, old.j.msgB, PHRASE, old.random).ok).toBe(true);
    expect(() => checkAnswer(old.o.state, j2.msgB, PHRASE, old.random)).toThrow(/already used/);
  });

  it('replays msgB from an earlier session: confirmation fails', () => {
    const old = begin('replay b/old');
    const fresh = begin('replay b/new');
    expect(checkAnswer(fresh.o.state, old.j.msgB, PHRASE, fresh.random)).toEqual({ ok: false, reason: 'confirmation' });
  });

  it('replays msgFinal from an earlier session: confirmation fails', () => {
    const old = begin('replay final/old');
    const r = checkAnswer(old.o.state, old.j.msgB, PHRASE, old.random);
    if (!r.ok) throw new Error(r.reason);
    const fresh = begin('replay final/new');
    expect(pairingError(() => openFinal(fresh.j.state, r.msgFinal)).reason).toBe('confirmation');
  });

  describe('tampers with msgFinal', () => {
    function final(label: string) {
      const { o, j, random } = begin(label);
      const r = checkAnswer(o.state, j.msgB, PHRASE, random);
      if (!r.ok) throw new Error(r.reason);
      return { j, msgFinal: r.msgFinal };
    }

    it('a flipped tag bit: confirmation', () => {
      const { j, msgFinal } = final('final tag');
      expect(pairingError(() => openFinal(j.state, flip(msgFinal, 5))).reason).toBe('confirmation');
    });

    it.each([
      ['header salt', 32 + 20],
      ['key id', 32 + 9],
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
      const o = startOffer({ words: WORDS, identity: OFFER, random: seeded('pt a') });
      const msgA = concatBytes(bad, o.msgA.subarray(32));
      const e = pairingError(() => answerOffer({ words: WORDS, sid: o.sid, msgA, identity: JOIN, random: seeded('j') }));
      expect(e.reason).toBe('invalid_point');
    });

    it.each([
      ['the identity', IDENTITY],
      ['a non-canonical encoding', NOT_A_POINT],
    ])('as Yb (%s): checkAnswer says invalid_point', (_, bad) => {
      const { o, j, random } = begin('pt b');
      const msgB = concatBytes(bad, j.msgB.subarray(32));
      expect(checkAnswer(o.state, msgB, PHRASE, random)).toEqual({ ok: false, reason: 'invalid_point' });
    });
  });

  describe('truncates or pads messages', () => {
    it('msgA: malformed', () => {
      const o = startOffer({ words: WORDS, identity: OFFER, random: seeded('trunc a') });
      for (const msgA of [o.msgA.subarray(0, 32), o.msgA.subarray(0, 10), o.msgA.subarray(0, o.msgA.length - 1), concatBytes(o.msgA, Uint8Array.of(0))]) {
        const e = pairingError(() => answerOffer({ words: WORDS, sid: o.sid, msgA, identity: JOIN, random: seeded('j') }));
        expect(e.reason).toBe('malformed');
      }
    });

    it('sid of the wrong length: malformed', () => {
      const o = startOffer({ words: WORDS, identity: OFFER, random: seeded('sid len') });
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
      const { o, j, random } = begin('trunc b');
      expect(checkAnswer(o.state, cut(j.msgB), PHRASE, random)).toEqual({ ok: false, reason: 'malformed' });
    });

    it('ADa with a field too many, a wrong label, or bad fields: malformed', () => {
      const o = startOffer({ words: WORDS, identity: OFFER, random: seeded('ada shape') });
      const Ya = o.msgA.subarray(0, 32);
      const L = utf8('casa/v1/pair/offer');
      const [v, d, n] = [utf8(OFFER.vaultId), utf8(OFFER.deviceId), utf8(OFFER.deviceName)];
      for (const ad of [
        lvCat(L, v, d, n, utf8('x')),
        lvCat(L, v, d),
        lvCat(utf8('casa/v1/pair/join'), v, d, n),
        lvCat(L, utf8(OFFER.vaultId.toUpperCase()), d, n),
        lvCat(L, v, utf8('0123'), n),
        lvCat(L, v, d, utf8('')),
        lvCat(L, v, d, utf8('a'.repeat(65))),
        lvCat(L, v, d, utf8('bell\x07')),
        lvCat(L, v, d, Uint8Array.of(0xc3, 0x28)), // not UTF-8
      ]) {
        const msgA = concatBytes(Ya, ad);
        const e = pairingError(() => answerOffer({ words: WORDS, sid: o.sid, msgA, identity: JOIN, random: seeded('j') }));
        expect(e.reason).toBe('malformed');
      }
    });

    it('ADb with a public key that is not an Ed25519 point, or of another length: malformed', () => {
      const { o, j, random } = begin('adb shape');
      const ad = joinAd(JOIN);
      const tail = j.msgB.subarray(32 + ad.length);
      const bad = lvCat(utf8('casa/v1/pair/join'), new Uint8Array(31), utf8('x'));
      const msgB = concatBytes(j.msgB.subarray(0, 32), bad, tail);
      expect(checkAnswer(o.state, msgB, PHRASE, random)).toEqual({ ok: false, reason: 'malformed' });
    });
  });
});

describe('states are single use', () => {
  it('checkAnswer twice throws, after success and after failure', () => {
    const a = begin('reuse ok');
    expect(checkAnswer(a.o.state, a.j.msgB, PHRASE, a.random).ok).toBe(true);
    expect(() => checkAnswer(a.o.state, a.j.msgB, PHRASE, a.random)).toThrow(/already used/);
    const b = begin('reuse fail');
    expect(checkAnswer(b.o.state, new Uint8Array(10), PHRASE, b.random).ok).toBe(false);
    expect(() => checkAnswer(b.o.state, b.j.msgB, PHRASE, b.random)).toThrow(/already used/);
  });

  it('openFinal twice throws, after success and after failure', () => {
    const a = begin('reuse final');
    const r = checkAnswer(a.o.state, a.j.msgB, PHRASE, a.random);
    if (!r.ok) throw new Error(r.reason);
    expect(openFinal(a.j.state, r.msgFinal).payload).toEqual(PHRASE);
    expect(() => openFinal(a.j.state, r.msgFinal)).toThrow(/already used/);
    const b = begin('reuse final fail');
    pairingError(() => openFinal(b.j.state, flip(r.msgFinal, 0)));
    expect(() => openFinal(b.j.state, r.msgFinal)).toThrow(/already used/);
  });

  it('a state of the other kind, or a forged one, is refused', () => {
    const a = begin('kinds');
    expect(() => checkAnswer(a.j.state as never, a.j.msgB, PHRASE, a.random)).toThrow(/already used, or is not one/);
    expect(() => openFinal({} as never, new Uint8Array(64))).toThrow(/already used, or is not one/);
  });

  it('a caller error (payload too large) does not spend the state', () => {
    const a = begin('caller error');
    expect(() => checkAnswer(a.o.state, a.j.msgB, new Uint8Array(PAIR_MAX_PAYLOAD_BYTES + 1), a.random)).toThrow(RangeError);
    expect(checkAnswer(a.o.state, a.j.msgB, PHRASE, a.random).ok).toBe(true);
  });
});

describe('caller errors are TypeError / RangeError', () => {
  it('words must be canonical', () => {
    const random = seeded('caller');
    for (const words of [['abandon', 'zoo'], ['Abandon', 'zoo', 'letter'], ['aban', 'zoo', 'letter'], 'abandon zoo letter', ['abandon', 'zoo', 'letter', 'x']]) {
      expect(() => startOffer({ words: words as string[], identity: OFFER, random }), String(words)).toThrow(RangeError);
    }
  });

  it('identities must be well formed', () => {
    const random = seeded('caller id');
    expect(() => startOffer({ words: WORDS, identity: { ...OFFER, vaultId: 'ABC' }, random })).toThrow(RangeError);
    expect(() => startOffer({ words: WORDS, identity: { ...OFFER, deviceId: '0123456789ABCDEF' }, random })).toThrow(RangeError);
    expect(() => startOffer({ words: WORDS, identity: { ...OFFER, deviceName: '' }, random })).toThrow(RangeError);
    expect(() => startOffer({ words: WORDS, identity: { ...OFFER, deviceName: 'x'.repeat(65) }, random })).toThrow(RangeError);
    expect(() => startOffer({ words: WORDS, identity: { ...OFFER, deviceName: 'a\u{d800}' }, random })).toThrow(RangeError);
    expect(startOffer({ words: WORDS, identity: { ...OFFER, deviceName: '🏠'.repeat(64) }, random }).msgA.length).toBeGreaterThan(32 + 256);
    const o = startOffer({ words: WORDS, identity: OFFER, random });
    expect(() => answerOffer({ words: WORDS, sid: o.sid, msgA: o.msgA, identity: { ...JOIN, devicePublicKey: new Uint8Array(31) }, random })).toThrow(RangeError);
    expect(() => answerOffer({ words: WORDS, sid: o.sid, msgA: o.msgA, identity: { ...JOIN, deviceName: 'tab\there' }, random })).toThrow(RangeError);
    expect(() => answerOffer({ words: WORDS, sid: 'x' as never, msgA: o.msgA, identity: JOIN, random })).toThrow(TypeError);
    expect(() => startOffer({ words: WORDS, identity: OFFER, random: null as never })).toThrow(TypeError);
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

describe('properties', () => {
  const word = fc.integer({ min: 0, max: 2047 }).map((i) => wordlist[i]!);
  const hexChars = (n: number) => fc.uint8Array({ minLength: n / 2, maxLength: n / 2 }).map((b) => bytesToHex(b));
  const name = fc
    .string({ unit: 'grapheme', minLength: 1, maxLength: 64 })
    .filter((s) => [...s].length >= 1 && [...s].length <= 64 && !/\p{Cc}/u.test(s));
  const offer = fc.record({ vaultId: hexChars(32), deviceId: hexChars(16), deviceName: name });
  const join = fc.record({ seed: fc.uint8Array({ minLength: 32, maxLength: 32 }), deviceName: name });
  const params = { seed: Number(process.env.FC_SEED ?? 20_240_611), numRuns: RUNS };

  it('random words and identities round-trip', () => {
    fc.assert(
      fc.property(fc.tuple(word, word, word), offer, join, fc.string(), (words, offerId, j, label) => {
        const joinId = { devicePublicKey: publicKeyFromSeed(j.seed), deviceName: j.deviceName };
        const { o, j: a, random } = begin(`prop ${label}`, words, words, offerId, joinId);
        expect(a.offer).toEqual(offerId);
        const r = checkAnswer(o.state, a.msgB, PHRASE, random);
        if (!r.ok) return false;
        expect(r.joiner.deviceName).toBe(joinId.deviceName);
        const f = openFinal(a.state, r.msgFinal);
        return bytesToHex(f.payload) === bytesToHex(PHRASE) && f.sas === r.sas;
      }),
      params,
    );
  });

  it('any single flipped byte in msgB fails', () => {
    fc.assert(
      fc.property(fc.nat(), fc.integer({ min: 1, max: 255 }), (at, mask) => {
        const { o, j, random } = begin(`flip b ${at} ${mask}`);
        const r = checkAnswer(o.state, flip(j.msgB, at % j.msgB.length, mask), PHRASE, random);
        return r.ok === false && !('msgFinal' in r);
      }),
      params,
    );
  });

  it('any single flipped byte in msgFinal fails', () => {
    fc.assert(
      fc.property(fc.nat(), fc.integer({ min: 1, max: 255 }), (at, mask) => {
        const { o, j, random } = begin(`flip final ${at} ${mask}`);
        const r = checkAnswer(o.state, j.msgB, PHRASE, random);
        if (!r.ok) return false;
        const e = pairingError(() => openFinal(j.state, flip(r.msgFinal, at % r.msgFinal.length, mask)));
        return e.reason === 'confirmation' || e.reason === 'payload';
      }),
      params,
    );
  });
});
