import { describe, expect, it } from 'vitest';
import { wordlist } from '@scure/bip39/wordlists/english.js';
import {
  entropyToPhrase,
  generatePhrase,
  parsePhrase,
  PhraseError,
  phraseToEntropy,
} from '../../src/crypto/phrase.js';

// BIP-39 reference vector (trezor/python-mnemonic vectors.json): entropy 0x80 × 32.
const ENTROPY = new Uint8Array(32).fill(0x80);
const PHRASE =
  'letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd ' +
  'amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic bless';
const WORDS = PHRASE.split(' ');

function phraseError(input: string): PhraseError {
  try {
    parsePhrase(input);
  } catch (err) {
    expect(err).toBeInstanceOf(PhraseError);
    return err as PhraseError;
  }
  throw new Error('parsePhrase accepted the input');
}

/** No word of the phrase (nor the bad token) may appear in what an error says. */
function expectNoWords(err: PhraseError, tokens: string[]): void {
  const said = `${err.message} ${JSON.stringify({ ...err })}`.toLowerCase();
  for (const t of tokens) expect(said).not.toContain(t.toLowerCase());
}

describe('phrase round trips', () => {
  it('matches the BIP-39 reference vector both ways', () => {
    expect(entropyToPhrase(ENTROPY)).toBe(PHRASE);
    expect(phraseToEntropy(PHRASE)).toEqual(ENTROPY);
    expect(parsePhrase(PHRASE)).toBe(PHRASE);
  });

  it('generates 24 valid words from the given randomness', () => {
    let calls = 0;
    const random = (n: number) => {
      calls++;
      return new Uint8Array(n).fill(0x80);
    };
    expect(generatePhrase(random)).toBe(PHRASE);
    expect(calls).toBe(1);
    for (let seed = 0; seed < 20; seed++) {
      const entropy = Uint8Array.from({ length: 32 }, (_, i) => (i * 37 + seed * 101) & 0xff);
      const phrase = generatePhrase(() => entropy);
      expect(phrase.split(' ')).toHaveLength(24);
      expect(parsePhrase(phrase)).toBe(phrase);
      expect(phraseToEntropy(phrase)).toEqual(entropy);
    }
  });

  it('refuses randomness of the wrong length', () => {
    expect(() => generatePhrase(() => new Uint8Array(16))).toThrow(RangeError);
    expect(() => entropyToPhrase(new Uint8Array(31))).toThrow(RangeError);
  });
});

describe('forgiving input', () => {
  it('ignores case, extra spaces, tabs and newlines', () => {
    const messy = `\n  ${WORDS.map((w, i) => (i % 2 ? w.toUpperCase() : w[0]!.toUpperCase() + w.slice(1))).join(' \t\n  ')}  \r\n`;
    expect(parsePhrase(messy)).toBe(PHRASE);
  });

  it('applies NFKD: fullwidth letters, ligatures and ideographic spaces', () => {
    const fullwidth = (s: string) => [...s].map((c) => String.fromCharCode(c.charCodeAt(0) + 0xfee0)).join('');
    expect(parsePhrase(WORDS.map(fullwidth).join('\u3000'))).toBe(PHRASE);
    // U+FB01 LATIN SMALL LIGATURE FI decomposes to "fi" under NFKD.
    const fiPhrase = makePhraseWith('final');
    expect(parsePhrase(fiPhrase.replace(/\bfinal\b/g, '\ufb01nal'))).toBe(fiPhrase);
    // Non-breaking and em spaces are white space too.
    expect(parsePhrase(WORDS.join('\u00a0\u2003'))).toBe(PHRASE);
  });

  it('expands 4-letter and longer prefixes', () => {
    expect(parsePhrase(WORDS.map((w) => w.slice(0, 4)).join(' '))).toBe(PHRASE);
    expect(parsePhrase(WORDS.map((w) => w.slice(0, Math.max(4, w.length - 1))).join(' '))).toBe(PHRASE);
    const p = makePhraseWith('abandon');
    for (const form of ['aban', 'aband', 'abando', 'abandon', 'ABAND']) {
      expect(parsePhrase(p.replace(/\babandon\b/g, form))).toBe(p);
    }
  });

  it('takes 3-letter words exactly and refuses 3-letter prefixes', () => {
    const p = makePhraseWith('act');
    expect(parsePhrase(p)).toBe(p);
    // "aba" is a prefix of abandon/ability/able..., but under 4 letters it is no word.
    const err = phraseError(p.replace('act', 'aba'));
    expect(err.kind).toBe('unknown_word');
    // "actu" is a 4-letter prefix of "actual", not "act".
    const q = makePhraseWith('actual');
    expect(parsePhrase(q.replace(/\bactual\b/, 'actu'))).toBe(q);
  });

  it('refuses a token longer than its word', () => {
    const p = makePhraseWith('abandon');
    const err = phraseError(p.replace('abandon', 'abandons'));
    expect(err.kind).toBe('unknown_word');
  });
});

describe('strict errors', () => {
  it('names an unknown word by its position, never the word', () => {
    const words = [...WORDS];
    words[6] = 'zzyzx';
    const err = phraseError(words.join(' '));
    expect(err.kind).toBe('unknown_word');
    expect(err.position).toBe(7);
    expect(err.message).toContain('7');
    expectNoWords(err, ['zzyzx', ...WORDS.filter((w) => w.length > 3)]);
  });

  it('reports the first unknown word even when the count is wrong too', () => {
    const err = phraseError(`${WORDS.slice(0, 11).join(' ')} qwerty ${WORDS[0]}`);
    expect(err.kind).toBe('unknown_word');
    expect(err.position).toBe(12);
  });

  it('reports a bad checksum as such', () => {
    const words = [...WORDS];
    words[23] = words[23] === 'zoo' ? 'zone' : 'zoo';
    const err = phraseError(words.join(' '));
    expect(err.kind).toBe('checksum');
    expectNoWords(err, words.filter((w) => w.length > 3));
  });

  it('reports swapped words as a checksum error', () => {
    const words = [...WORDS];
    [words[0], words[1]] = [words[1]!, words[0]!];
    expect(phraseError(words.join(' ')).kind).toBe('checksum');
  });

  it.each([
    [12, WORDS.slice(0, 12)],
    [23, WORDS.slice(0, 23)],
    [25, [...WORDS, 'abandon']],
    [0, []],
  ])('refuses %i words', (count, words) => {
    const err = phraseError(words.join(' '));
    expect(err.kind).toBe('word_count');
    expect(err.count).toBe(count);
    expectNoWords(err, words.filter((w) => w.length > 3));
  });

  it('refuses empty and blank input as a word count error', () => {
    for (const input of ['', '   ', '\n\t']) {
      const err = phraseError(input);
      expect(err.kind).toBe('word_count');
      expect(err.count).toBe(0);
    }
  });

  it('refuses a valid 12-word BIP-39 phrase by count', () => {
    const twelve = 'legal winner thank year wave sausage worth useful legal winner thank yellow';
    expect(phraseError(twelve).kind).toBe('word_count');
  });

  it('checks its argument type', () => {
    expect(() => parsePhrase(42 as unknown as string)).toThrow(TypeError);
  });
});

/** A valid phrase containing `word` (word 1), with a fixed tail and a fitting last word. */
function makePhraseWith(word: string): string {
  const index = wordlist.indexOf(word);
  expect(index).toBeGreaterThanOrEqual(0);
  // First 11 bits of the entropy select word 1.
  const entropy = new Uint8Array(32).fill(0x5a);
  entropy[0] = index >> 3;
  entropy[1] = ((index & 7) << 5) | (entropy[1]! & 0x1f);
  const phrase = entropyToPhrase(entropy);
  expect(phrase.split(' ')[0]).toBe(word);
  return phrase;
}
