/**
 * The recovery phrase (docs/FORMAT.md §1): BIP-39, English word list, 24 words
 * = 256 bits of entropy + an 8-bit checksum (BIP-39 "Generating the mnemonic";
 * @scure/bip39 owns the word list and the checksum).
 *
 * Input is forgiving, then strict: NFKD, lowercase, any white space; each token
 * is an exact word or, from 4 letters on, a prefix of the one word sharing its
 * first four letters (BIP-39 English words are unique in their first four
 * letters). Then: unknown word (by 1-based position), word count, checksum.
 *
 * Invariant: no message or property of a PhraseError contains any part of the
 * phrase, not even the token that failed; only positions and counts.
 */
import { entropyToMnemonic, mnemonicToEntropy } from '@scure/bip39';
import { wordlist } from '@scure/bip39/wordlists/english.js';
import { abytes, astring } from './bytes.js';

export const PHRASE_WORDS = 24;
export const PHRASE_ENTROPY_BYTES = 32;

export type PhraseErrorKind = 'word_count' | 'unknown_word' | 'checksum';

/** A phrase that cannot be right. Carries positions and counts, never words. */
export class PhraseError extends Error {
  readonly kind: PhraseErrorKind;
  /** 1-based position of the first unknown word (kind `unknown_word`). */
  readonly position: number | undefined;
  /** Number of words found (kind `word_count`). */
  readonly count: number | undefined;

  constructor(kind: PhraseErrorKind, detail: { position?: number; count?: number } = {}) {
    super(phraseErrorMessage(kind, detail));
    this.name = 'PhraseError';
    this.kind = kind;
    this.position = detail.position;
    this.count = detail.count;
  }
}

function phraseErrorMessage(kind: PhraseErrorKind, detail: { position?: number; count?: number }): string {
  switch (kind) {
    case 'word_count':
      return `the phrase has ${detail.count ?? 0} words; a recovery phrase has ${PHRASE_WORDS}`;
    case 'unknown_word':
      return `word ${detail.position ?? 0} is not in the BIP-39 English word list`;
    case 'checksum':
      return 'the phrase checksum does not match: a word is wrong or two words are swapped';
  }
}

const WORDS: ReadonlySet<string> = new Set(wordlist);
/** First four letters → word, for every word of 4 or more letters (unique by BIP-39's design). */
const BY_PREFIX: ReadonlyMap<string, string> = new Map(
  wordlist.filter((w) => w.length >= 4).map((w) => [w.slice(0, 4), w] as const),
);

/** Resolves one lowercase NFKD token to its word, or undefined (FORMAT.md §1 step 2). */
function resolveWord(token: string): string | undefined {
  if (WORDS.has(token)) return token;
  if (token.length < 4) return undefined;
  const word = BY_PREFIX.get(token.slice(0, 4));
  return word !== undefined && word.startsWith(token) ? word : undefined;
}

/**
 * Parses what a person typed into the normalised phrase: 24 canonical words
 * joined by single spaces. Throws PhraseError (unknown word, then word count,
 * then checksum) and nothing derived from the phrase.
 */
export function parsePhrase(input: string): string {
  astring(input, 'input');
  const tokens = input.normalize('NFKD').toLowerCase().split(/\s+/u).filter((t) => t !== '');
  const words: string[] = [];
  for (const [i, token] of tokens.entries()) {
    const word = resolveWord(token);
    if (word === undefined) throw new PhraseError('unknown_word', { position: i + 1 });
    words.push(word);
  }
  if (words.length !== PHRASE_WORDS) throw new PhraseError('word_count', { count: words.length });
  const normalised = words.join(' ');
  try {
    mnemonicToEntropy(normalised, wordlist);
  } catch {
    // Every word is on the list and the count is right, so only the checksum is left.
    throw new PhraseError('checksum');
  }
  return normalised;
}

/** The 32 bytes of entropy of a phrase (in any form parsePhrase accepts). */
export function phraseToEntropy(phrase: string): Uint8Array {
  return Uint8Array.from(mnemonicToEntropy(parsePhrase(phrase), wordlist));
}

/** The normalised phrase for 32 bytes of entropy. */
export function entropyToPhrase(entropy: Uint8Array): string {
  abytes(entropy, 'entropy', PHRASE_ENTROPY_BYTES);
  return entropyToMnemonic(entropy, wordlist);
}

/** A new normalised 24-word phrase; randomness comes from the caller (e.g. node:crypto randomBytes). */
export function generatePhrase(randomBytes: (n: number) => Uint8Array): string {
  if (typeof randomBytes !== 'function') throw new TypeError('randomBytes must be a function');
  const entropy = abytes(randomBytes(PHRASE_ENTROPY_BYTES), 'randomBytes(32)', PHRASE_ENTROPY_BYTES);
  return entropyToPhrase(entropy);
}
