/**
 * A device's view of the vault's key history, carried inside its sealed
 * digest record (docs/FORMAT.md §8 "Key view", docs/SECURITY.md §4.5), and
 * the rules `casa verify --sync` compares two views by: a hostile relay that
 * shows two devices different epochs or memberships (hides an epoch or a
 * revocation from one, or accepts two epoch-n records and shows each device
 * only its own) is caught once one device's record reaches the other.
 *
 * Invariants:
 * - The history hash is a function of what every device that picked up the
 *   same epochs holds, whatever way it got them (created, picked up, paired
 *   by code, joined with the paper): each epoch's number, key id and keys,
 *   and the mark where each older epoch ended. Two devices that hold the
 *   same epochs 1..n hold equal hashes; any other epoch k ≤ n (other keys, or
 *   another record of it with another mark) gives another hash at every
 *   n ≥ k. The hash up to an earlier epoch m is computable by the later
 *   device, so a device behind is checked against the same prefix.
 * - `revoked` is the set of device ids whose revocation the device verified
 *   (signed records, src/keys/verify.ts, plus those it remembers), sorted.
 * - Pure: no I/O.
 */
import { createHash } from 'node:crypto';
import type { VaultKeys } from '../crypto/kdf.js';

/** Domain label at the start of the hashed key history. */
export const KEY_HISTORY_LABEL = 'casa/v2/key-history';
/** Hex characters of a key history hash (SHA-256). */
export const KEY_HISTORY_HEX = 64;

/** What a digest record says of its device's keys (FORMAT.md §8). */
export interface KeyView {
  /** The newest epoch the device holds. */
  epoch: number;
  /** SHA-256 (hex) of its key history, epochs 1..epoch (keyHistory). */
  history: string;
  /** Device ids whose revocation it verified, sorted. */
  revoked: string[];
}

interface HeldEpoch {
  epoch: number;
  keyId: Uint8Array;
  canaryKey: Uint8Array;
  snapshotKey: Uint8Array;
  changesetKey: Uint8Array;
  idMacKey: Uint8Array;
  until?: { cursor: number; seq: number };
}

/** The epochs `keys` holds, oldest first (vault keys without a keyring: the one epoch they are). */
function heldEpochs(keys: VaultKeys): HeldEpoch[] {
  if (keys.epochs && Object.keys(keys.epochs).length > 0) return Object.values(keys.epochs).sort((a, b) => a.epoch - b.epoch);
  return [{ epoch: keys.epoch ?? 1, keyId: keys.keyId, canaryKey: keys.canaryKey, snapshotKey: keys.snapshotKey, changesetKey: keys.changesetKey, idMacKey: keys.idMacKey }];
}

/** The newest epoch `keys` holds. */
export function heldEpoch(keys: VaultKeys): number {
  const all = heldEpochs(keys);
  return all[all.length - 1]!.epoch;
}

const lv = (s: string): Buffer => {
  const b = Buffer.from(s, 'utf8');
  const n = Buffer.alloc(4);
  n.writeUInt32BE(b.length);
  return Buffer.concat([n, b]);
};
const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const u64 = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};

/**
 * The key history hash up to epoch `upTo` (default: the newest held), or
 * null when `keys` does not hold that epoch (FORMAT.md §8):
 *
 *   SHA-256( lv("casa/v2/key-history") || lv(vault id) || u32be(n)
 *            || for e = 1..n: u32be(e) || key id (8 bytes)
 *                             || SHA-256(canary || snapshot || changeset || id-MAC key)
 *                             || (e < n: 0x01 || u64be(mark cursor) || u64be(mark seq), or 0x00 without a mark) )
 */
export function keyHistory(keys: VaultKeys, upTo: number = heldEpoch(keys)): string | null {
  const held = heldEpochs(keys).filter((e) => e.epoch <= upTo);
  if (held.length === 0 || held[held.length - 1]!.epoch !== upTo) return null;
  const h = createHash('sha256');
  h.update(lv(KEY_HISTORY_LABEL));
  h.update(lv(keys.vaultId));
  h.update(u32(upTo));
  for (const e of held) {
    h.update(u32(e.epoch));
    h.update(e.keyId);
    h.update(createHash('sha256').update(e.canaryKey).update(e.snapshotKey).update(e.changesetKey).update(e.idMacKey).digest());
    if (e.epoch < upTo) h.update(e.until ? Buffer.concat([Buffer.of(1), u64(e.until.cursor), u64(e.until.seq)]) : Buffer.of(0));
  }
  return h.digest('hex');
}

/** This device's view: the epoch it holds, its history, the revocations it verified. */
export function keyViewOf(keys: VaultKeys, revoked: Iterable<string>): KeyView {
  return { epoch: heldEpoch(keys), history: keyHistory(keys)!, revoked: [...new Set(revoked)].sort() };
}

/**
 * Another device's key history against this one's:
 * - `same`: the same epoch and the same history;
 * - `behind`: an earlier epoch, its history this device's up to there (it has not picked up the newer one yet);
 * - `ahead`: a newer epoch than this device holds (the relay has not served it here);
 * - `fork`: at its epoch (this one's or earlier) another history than this device holds: the relay showed
 *   the two devices different key histories.
 */
export type KeyHistoryStatus = 'same' | 'behind' | 'ahead' | 'fork';

export interface KeyComparison {
  status: KeyHistoryStatus;
  /** Revocations the other device verified of devices this one counts as members (the relay hides them here). */
  hiddenRevocations: string[];
  /** Revocations this device verified that the other has not (it is behind, or they are hidden from it). */
  missingRevocations: string[];
}

export function compareKeyViews(mine: { keys: VaultKeys; view: KeyView; members: ReadonlySet<string> }, theirs: KeyView): KeyComparison {
  let status: KeyHistoryStatus;
  if (theirs.epoch > mine.view.epoch) status = 'ahead';
  else {
    const at = theirs.epoch === mine.view.epoch ? mine.view.history : keyHistory(mine.keys, theirs.epoch);
    status = at !== theirs.history ? 'fork' : theirs.epoch === mine.view.epoch ? 'same' : 'behind';
  }
  const mineRevoked = new Set(mine.view.revoked);
  const theirRevoked = new Set(theirs.revoked);
  return {
    status,
    hiddenRevocations: theirs.revoked.filter((id) => !mineRevoked.has(id) && mine.members.has(id)),
    missingRevocations: mine.view.revoked.filter((id) => !theirRevoked.has(id)),
  };
}
