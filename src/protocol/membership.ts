/**
 * The vault's signed membership records (docs/FORMAT.md §9, docs/SECURITY.md
 * §3): device certificates, revocations, epoch records and paper
 * replacements, as they travel in JSON, and the field lists their Ed25519
 * signatures cover. Shared by the CLI and the relay (worker/ bundles this
 * file; it imports nothing from Node), so both check the same bytes.
 */
import { hkdf } from '@noble/hashes/hkdf.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { isDeviceId, isKeyId, isSha256Hex, isVaultId } from './ids.js';
import { signedMessage } from './messages.js';

export const RECOVERY = 'recovery';

/** A device's id from its Ed25519 signing public key (FORMAT.md §9): 16 hex. */
export function deviceIdOf(signingPublicKey: Uint8Array): string {
  if (signingPublicKey.length !== 32) throw new RangeError('signingPublicKey must be 32 bytes');
  const id = hkdf(sha256, signingPublicKey, new Uint8Array(0), new TextEncoder().encode('casa/v2/device-id'), 8);
  return Array.from(id, (b) => b.toString(16).padStart(2, '0')).join('');
}

export interface DeviceCert {
  vaultId: string;
  deviceId: string;
  /** Ed25519 signing public key, b64u. */
  signingKey: string;
  /** X25519 exchange public key, b64u. */
  exchangeKey: string;
  name: string;
  issuedAt: number;
  /** `recovery` (the paper) or the id of the member device that vouched. */
  issuer: string;
  signature: string;
}

export interface Revocation {
  vaultId: string;
  deviceId: string;
  revokedAt: number;
  issuer: string;
  signature: string;
}

export interface EpochRecord {
  vaultId: string;
  epoch: number;
  keyId: string;
  /** The previous epoch's key id ('' for epoch 1). */
  prevKeyId: string;
  /** The paper's X25519 exchange key the keyring was sealed to, b64u. */
  recoveryKey: string;
  /** The changeset head and snapshot head when this epoch began: older epochs' objects after them are refused. */
  markCursor: number;
  markSeq: number;
  createdAt: number;
  issuer: string;
  /** `id=sha256hex` of each wrap, sorted by id, comma-separated: the recipients, bound to their wraps. */
  recipients: string;
  signature: string;
  /** The wraps the relay holds, by recipient id (it may serve only the reader's). */
  wraps?: Record<string, string>;
}

export interface RecoveryRecord {
  vaultId: string;
  /** 1 for the first replacement of the paper, and so on. */
  n: number;
  recoveryId: string;
  authKey: string;
  exchangeKey: string;
  /** The device ids that stay members, sorted, comma-separated (certificates the old paper signed count only for them). */
  members: string;
  time: number;
  /** By the old paper's key, then by the new one's. */
  signatureOld: string;
  signatureNew: string;
}

/** A certificate with exactly its fields, in FORMAT.md §9's order: the one spelling that is sent and stored. */
export const certOf = (c: DeviceCert): DeviceCert => ({
  vaultId: c.vaultId,
  deviceId: c.deviceId,
  signingKey: c.signingKey,
  exchangeKey: c.exchangeKey,
  name: c.name,
  issuedAt: c.issuedAt,
  issuer: c.issuer,
  signature: c.signature,
});

export const certFields = (c: Omit<DeviceCert, 'signature'>) => [c.vaultId, c.deviceId, c.signingKey, c.exchangeKey, c.name, c.issuedAt, c.issuer];
export const revocationFields = (r: Omit<Revocation, 'signature'>) => [r.vaultId, r.deviceId, r.revokedAt, r.issuer];
export const epochFields = (e: Omit<EpochRecord, 'signature' | 'wraps'>) => [
  e.vaultId,
  e.epoch,
  e.keyId,
  e.prevKeyId,
  e.recoveryKey,
  e.markCursor,
  e.markSeq,
  e.createdAt,
  e.issuer,
  e.recipients,
];
export const recoveryFields = (r: Omit<RecoveryRecord, 'signatureOld' | 'signatureNew'>) => [r.vaultId, r.n, r.recoveryId, r.authKey, r.exchangeKey, r.members, r.time];

export const certMessage = (c: Omit<DeviceCert, 'signature'>) => signedMessage('device-cert', certFields(c));
export const revocationMessage = (r: Omit<Revocation, 'signature'>) => signedMessage('revoke', revocationFields(r));
export const epochMessage = (e: Omit<EpochRecord, 'signature' | 'wraps'>) => signedMessage('epoch', epochFields(e));
export const recoveryMessage = (r: Omit<RecoveryRecord, 'signatureOld' | 'signatureNew'>) => signedMessage('recovery', recoveryFields(r));

/** `recipients` of an epoch record as a map id → sha256 hex; null when malformed. */
export function parseRecipients(text: string): Map<string, string> | null {
  const out = new Map<string, string>();
  if (text === '') return null;
  let last = '';
  for (const part of text.split(',')) {
    const at = part.indexOf('=');
    const id = part.slice(0, at);
    const hash = part.slice(at + 1);
    if (at < 0 || !(id === RECOVERY || isDeviceId(id)) || !isSha256Hex(hash) || id <= last) return null;
    last = id;
    out.set(id, hash);
  }
  return out;
}

export function formatRecipients(hashes: Map<string, string>): string {
  return [...hashes.entries()]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([id, h]) => `${id}=${h}`)
    .join(',');
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown, max = 200) => typeof v === 'string' && v.length <= max;
const int = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

export function isDeviceCert(v: unknown): v is DeviceCert {
  return (
    isObj(v) &&
    str(v.vaultId) &&
    isDeviceId(v.deviceId) &&
    str(v.signingKey) &&
    str(v.exchangeKey) &&
    str(v.name) &&
    int(v.issuedAt) &&
    str(v.issuer) &&
    str(v.signature)
  );
}

export function isRevocation(v: unknown): v is Revocation {
  return isObj(v) && str(v.vaultId) && isDeviceId(v.deviceId) && int(v.revokedAt) && str(v.issuer) && str(v.signature);
}

export function isEpochRecord(v: unknown): v is EpochRecord {
  return (
    isObj(v) &&
    str(v.vaultId) &&
    int(v.epoch) &&
    (v.epoch as number) >= 1 &&
    isKeyId(v.keyId) &&
    (v.prevKeyId === '' || isKeyId(v.prevKeyId)) &&
    str(v.recoveryKey) &&
    int(v.markCursor) &&
    int(v.markSeq) &&
    int(v.createdAt) &&
    str(v.issuer) &&
    typeof v.recipients === 'string' &&
    v.recipients.length <= 100_000 &&
    str(v.signature) &&
    (v.wraps === undefined || (isObj(v.wraps) && Object.values(v.wraps).every((w) => typeof w === 'string')))
  );
}

export function isRecoveryRecord(v: unknown): v is RecoveryRecord {
  return (
    isObj(v) &&
    str(v.vaultId) &&
    int(v.n) &&
    (v.n as number) >= 1 &&
    isVaultId(v.recoveryId) &&
    str(v.authKey) &&
    str(v.exchangeKey) &&
    typeof v.members === 'string' &&
    v.members.length <= 100_000 &&
    int(v.time) &&
    str(v.signatureOld) &&
    str(v.signatureNew)
  );
}
