/**
 * casa's crypto core (docs/FORMAT.md): phrase → keys → sealed objects, and the
 * Ed25519 signatures of relay requests. Pure: `Uint8Array` in and out, no I/O,
 * no environment; randomness and salts come from the caller. Errors are plain
 * typed Error subclasses; the CLI maps them to exit codes.
 */
export {
  abytes,
  anumber,
  astring,
  b64uDecode,
  b64uEncode,
  bytesToHex,
  bytesToUtf8,
  concatBytes,
  equalBytes,
  hexToBytes,
  u32be,
  utf8ToBytes,
} from './bytes.js';
export {
  entropyToPhrase,
  generatePhrase,
  parsePhrase,
  PHRASE_ENTROPY_BYTES,
  PHRASE_WORDS,
  PhraseError,
  phraseToEntropy,
  type PhraseErrorKind,
} from './phrase.js';
export {
  deriveRoot,
  deriveVaultKeys,
  hkdfSha256,
  KEY_BYTES,
  KEY_ID_BYTES,
  LABELS,
  ROOT_ITERATIONS,
  ROOT_KEY_BYTES,
  ROOT_SALT,
  VAULT_ID_BYTES,
  vaultKeysFromRoot,
  type VaultKeys,
} from './kdf.js';
export {
  newDeviceSeed,
  PUBLIC_KEY_BYTES,
  publicKeyFromSeed,
  SEED_BYTES,
  SIGNATURE_BYTES,
  signPurpose,
  verifyPurpose,
  type SignedPurpose,
} from './sign.js';
export {
  AuthenticationError,
  canaryPlaintext,
  CHUNK_BYTES,
  Codec,
  encodeHeader,
  FORMAT_VERSION,
  HEADER_BYTES,
  MAGIC,
  OBJECT_KEY_LABEL,
  ObjectFormatError,
  ObjectType,
  openCanary,
  openObject,
  readHeader,
  SALT_BYTES,
  sealCanary,
  sealObject,
  TAG_BYTES,
  WrongKeyError,
  type ObjectFormatReason,
  type ObjectHeader,
  type OpenParams,
  type SealParams,
} from './objects.js';
