/**
 * Who is a device of the vault, from signed records only (docs/SECURITY.md
 * §3, docs/FORMAT.md §9). The relay's word counts for nothing here: a
 * certificate counts when the paper signed it, or a certified device; a revocation when the paper or a certified device signed it; the
 * paper's key is the one this device learnt when it joined, followed through
 * replacement records each signed by the old paper and the new.
 */
import { b64uDecode } from '../crypto/bytes.js';
import { verifyPurpose } from '../crypto/sign.js';
import {
  certFields,
  epochFields,
  parseRecipients,
  RECOVERY,
  recoveryFields,
  revocationFields,
  type DeviceCert,
  type EpochRecord,
  type RecoveryRecord,
  type Revocation,
} from '../protocol/membership.js';

export class MembershipError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MembershipError';
  }
}

function key(b64u: string): Uint8Array | null {
  try {
    const k = b64uDecode(b64u);
    return k.length === 32 ? k : null;
  } catch {
    return null;
  }
}

function sig(b64u: string): Uint8Array {
  try {
    return b64uDecode(b64u);
  } catch {
    return new Uint8Array(0);
  }
}

/** One paper in the chain: its keys, and (for a replaced paper) the members its certificates still count for. */
export interface Paper {
  authKey: string;
  exchangeKey: string;
  recoveryId?: string;
  /** Set once this paper was replaced: the device ids the replacement kept. */
  keptMembers?: Set<string>;
}

/**
 * The chain of papers from the one this device trusts, through each
 * replacement in order; a replacement not signed by the paper before it and
 * by its own key is refused (MembershipError).
 */
export function paperChain(vaultId: string, first: { authKey: string; exchangeKey: string; n?: number }, records: RecoveryRecord[]): Paper[] {
  const start = first.n ?? 0;
  const bad = records.find((x) => x.n < 1 || x.vaultId !== vaultId);
  if (bad) throw new MembershipError(`paper replacement ${bad.n} is out of order`);
  const chain: Paper[] = [{ authKey: first.authKey, exchangeKey: first.exchangeKey }];
  for (const r of [...records].filter((x) => x.n > start).sort((a, b) => a.n - b.n)) {
    const prev = chain[chain.length - 1]!;
    if (r.vaultId !== vaultId || r.n !== start + chain.length) throw new MembershipError(`paper replacement ${r.n} is out of order`);
    const fields = recoveryFields(r);
    const oldKey = key(prev.authKey);
    const newKey = key(r.authKey);
    if (!oldKey || !newKey || !verifyPurpose(oldKey, 'recovery', fields, sig(r.signatureOld)) || !verifyPurpose(newKey, 'recovery', fields, sig(r.signatureNew))) {
      throw new MembershipError(`paper replacement ${r.n} is not signed by the paper it replaces`);
    }
    prev.keptMembers = new Set(r.members === '' ? [] : r.members.split(','));
    chain.push({ authKey: r.authKey, exchangeKey: r.exchangeKey, recoveryId: r.recoveryId });
  }
  return chain;
}

/**
 * True when a paper of the chain signed `fields`. A replaced paper keeps
 * only what its replacement allowed: its certificate counts for a device
 * every later replacement kept; its revocation only for a device none of
 * them kept; an epoch it signed only as an older record (`retired`), never
 * as the newest.
 */
function paperSigned(
  chain: Paper[],
  purpose: 'device-cert' | 'revoke' | 'epoch',
  fields: (string | number)[],
  signature: string,
  opts: { deviceId?: string; retiredOk?: boolean } = {},
): boolean {
  return chain.some((p, i) => {
    const k = key(p.authKey);
    if (!k || !verifyPurpose(k, purpose, fields, sig(signature))) return false;
    const later = chain.slice(i, -1);
    if (later.length === 0) return true;
    if (purpose === 'device-cert') return opts.deviceId !== undefined && later.every((q) => q.keptMembers?.has(opts.deviceId!));
    if (purpose === 'revoke') return opts.deviceId !== undefined && !later.some((q) => q.keptMembers?.has(opts.deviceId!));
    return Boolean(opts.retiredOk);
  });
}

export interface Membership {
  /** Certificates that verify, by device id. */
  certified: Map<string, DeviceCert>;
  /** Revocations that verify, by device id. */
  revoked: Map<string, Revocation>;
  /** Certified and not revoked. */
  members: Set<string>;
}

/**
 * The members of a vault from its certificates and revocations. A
 * certificate counts when the paper signed it, or a certified device other
 * than the device itself; a revocation when the
 * paper or a certified device signed it. `knownRevoked` (ids this device
 * verified revoked before) stay revoked whatever the relay shows now.
 */
export function membership(vaultId: string, chain: Paper[], certs: DeviceCert[], revocations: Revocation[], knownRevoked: Iterable<string> = []): Membership {
  const byId = new Map(certs.filter((c) => c.vaultId === vaultId).map((c) => [c.deviceId, c]));
  const paperCerts = new Map<string, DeviceCert>();
  for (const c of byId.values()) {
    if (c.issuer === RECOVERY && key(c.signingKey) && key(c.exchangeKey) && paperSigned(chain, 'device-cert', certFields(c), c.signature, { deviceId: c.deviceId })) {
      paperCerts.set(c.deviceId, c);
    }
  }
  const revokedIds = new Set(knownRevoked);
  // Certificates from the paper, then vouches by certified devices — a vouch made before its voucher
  // was revoked still counts (revoking the device that paired the others by code must not take them
  // with it; the relay refuses a vouch by a revoked device, and `casa devices revoke` names the
  // devices the revoked one added); revocations by certified devices. Computed from scratch until
  // nothing changes, so the answer does not depend on the order the records came in.
  for (;;) {
    const certified = new Map(paperCerts);
    for (let changed = true; changed; ) {
      changed = false;
      for (const c of byId.values()) {
        if (certified.has(c.deviceId) || c.issuer === RECOVERY || c.issuer === c.deviceId) continue;
        const issuer = certified.get(c.issuer);
        if (!issuer || !key(c.signingKey) || !key(c.exchangeKey)) continue;
        if (verifyPurpose(key(issuer.signingKey)!, 'device-cert', certFields(c), sig(c.signature))) {
          certified.set(c.deviceId, c);
          changed = true;
        }
      }
    }
    const revoked = new Map<string, Revocation>();
    for (const r of revocations) {
      if (r.vaultId !== vaultId || revoked.has(r.deviceId)) continue;
      const fields = revocationFields(r);
      const ok =
        r.issuer === RECOVERY
          ? paperSigned(chain, 'revoke', fields, r.signature, { deviceId: r.deviceId })
          : certified.has(r.issuer) && verifyPurpose(key(certified.get(r.issuer)!.signingKey)!, 'revoke', fields, sig(r.signature));
      if (ok) revoked.set(r.deviceId, r);
    }
    const before = revokedIds.size;
    for (const id of revoked.keys()) revokedIds.add(id);
    if (revokedIds.size === before) {
      const members = new Set([...certified.keys()].filter((id) => !revokedIds.has(id)));
      return { certified, revoked, members };
    }
  }
}

/**
 * Checks an epoch record's signature and place: signed by a paper of the
 * chain or by a member; it follows `prev` (epoch number and key id). The
 * wrap this device opens is checked by openWrap (src/crypto/keyring.ts),
 * and its keyring must extend the one this device holds — what keeps a
 * revoked device from making an epoch the others accept.
 */
export function checkEpochRecord(
  r: EpochRecord,
  vaultId: string,
  chain: Paper[],
  m: Membership,
  prev: { epoch: number; keyIdHex: string } | null,
  /** The newest record: its issuer must be a member now; an older one's, certified (it may have been revoked since). */
  newest = true,
): Map<string, string> {
  if (r.vaultId !== vaultId) throw new MembershipError(`epoch ${r.epoch} names another vault`);
  if (prev ? r.epoch !== prev.epoch + 1 || r.prevKeyId !== prev.keyIdHex : r.epoch !== 1 || r.prevKeyId !== '') {
    throw new MembershipError(`epoch ${r.epoch} does not follow epoch ${prev?.epoch ?? 0}`);
  }
  const recipients = parseRecipients(r.recipients);
  if (!recipients) throw new MembershipError(`epoch ${r.epoch} has a malformed recipient list`);
  const fields = epochFields(r);
  const signed =
    r.issuer === RECOVERY
      ? paperSigned(chain, 'epoch', fields, r.signature, { retiredOk: !newest })
      : (newest ? m.members.has(r.issuer) : m.certified.has(r.issuer)) && verifyPurpose(key(m.certified.get(r.issuer)!.signingKey)!, 'epoch', fields, sig(r.signature));
  if (!signed) throw new MembershipError(`epoch ${r.epoch} is not signed by the paper or a member device`);
  return recipients;
}
