/**
 * Who is a device of the vault (docs/SECURITY.md §3, docs/FORMAT.md §9
 * "Membership"), from signed records only: src/keys/verify.ts membership(),
 * paperChain() and checkEpochRecord(). The relay's word is the list of records
 * it serves; these tests serve forged, foreign, hidden and reordered ones.
 */
import { describe, expect, it } from 'vitest';
import { b64uEncode, hexToBytes, utf8ToBytes } from '../../src/crypto/bytes.js';
import { deviceExchangeKey, recoveryKeys, type RecoveryKeys } from '../../src/crypto/keyring.js';
import { sha256Hex } from '../../src/crypto/sha256.js';
import { publicKeyFromSeed, signPurpose } from '../../src/crypto/sign.js';
import { checkEpochRecord, membership, MembershipError, paperChain, type Membership, type Paper } from '../../src/keys/verify.js';
import {
  certFields,
  deviceIdOf,
  epochFields,
  formatRecipients,
  RECOVERY,
  recoveryFields,
  revocationFields,
  type DeviceCert,
  type EpochRecord,
  type RecoveryRecord,
  type Revocation,
} from '../../src/protocol/membership.js';

const fixed = (label: string) => hexToBytes(sha256Hex(utf8ToBytes(`casa membership test: ${label}`)));
const VAULT = 'feedface'.repeat(4);
const OTHER_VAULT = 'deadbeef'.repeat(4);
const T = 1_709_294_400_000;

interface Device {
  id: string;
  seed: Uint8Array;
  signingKey: string;
  exchangeKey: string;
}
function device(label: string): Device {
  const seed = fixed(`device ${label}`);
  const pub = publicKeyFromSeed(seed);
  return { id: deviceIdOf(pub), seed, signingKey: b64uEncode(pub), exchangeKey: b64uEncode(deviceExchangeKey(seed).publicKey) };
}
const A = device('A');
const B = device('B');
const C = device('C');
const D = device('D');
const E = device('E');
const MALLORY = device('mallory');

const paper0 = recoveryKeys(fixed('paper 0'));
const paper1 = recoveryKeys(fixed('paper 1'));
const paper2 = recoveryKeys(fixed('paper 2'));
const paperOf = (k: RecoveryKeys) => ({ authKey: b64uEncode(k.authPublicKey), exchangeKey: b64uEncode(k.exchange.publicKey) });
const chain0 = (): Paper[] => paperChain(VAULT, paperOf(paper0), []);

/** An issuer: the paper (its keys) or a device. */
type Issuer = RecoveryKeys | Device;
const issuerId = (i: Issuer) => ('id' in i ? i.id : RECOVERY);
const issuerSeed = (i: Issuer) => ('seed' in i ? i.seed : i.authSeed);

function cert(subject: Device, by: Issuer, over: Partial<Omit<DeviceCert, 'signature'>> = {}, signer: Issuer = by): DeviceCert {
  const unsigned = { vaultId: VAULT, deviceId: subject.id, signingKey: subject.signingKey, exchangeKey: subject.exchangeKey, name: `device ${subject.id}`, issuedAt: T, issuer: issuerId(by), ...over };
  return { ...unsigned, signature: b64uEncode(signPurpose(issuerSeed(signer), 'device-cert', certFields(unsigned))) };
}
function revoke(subject: Device, by: Issuer, over: Partial<Omit<Revocation, 'signature'>> = {}, signer: Issuer = by): Revocation {
  const unsigned = { vaultId: VAULT, deviceId: subject.id, revokedAt: T + 1000, issuer: issuerId(by), ...over };
  return { ...unsigned, signature: b64uEncode(signPurpose(issuerSeed(signer), 'revoke', revocationFields(unsigned))) };
}
function replacement(n: number, from: RecoveryKeys, to: RecoveryKeys, kept: Device[], over: Partial<RecoveryRecord> = {}): RecoveryRecord {
  const unsigned = {
    vaultId: VAULT,
    n,
    recoveryId: to.recoveryId,
    authKey: b64uEncode(to.authPublicKey),
    exchangeKey: b64uEncode(to.exchange.publicKey),
    members: kept.map((d) => d.id).sort().join(','),
    time: T + n * 10_000,
  };
  const fields = recoveryFields(unsigned);
  return {
    ...unsigned,
    signatureOld: b64uEncode(signPurpose(from.authSeed, 'recovery', fields)),
    signatureNew: b64uEncode(signPurpose(to.authSeed, 'recovery', fields)),
    ...over,
  };
}
const members = (m: Membership) => [...m.members].sort();
const ids = (...ds: Device[]) => ds.map((d) => d.id).sort();

describe('membership(): certificates', () => {
  it('a certificate signed by the paper counts', () => {
    const m = membership(VAULT, chain0(), [cert(A, paper0)], []);
    expect(members(m)).toEqual(ids(A));
    expect(m.certified.get(A.id)?.name).toBe(`device ${A.id}`);
  });

  it('a vouch by a member counts, through a chain of vouches in any order', () => {
    const certs = [cert(D, C), cert(C, B), cert(B, A), cert(A, paper0)];
    expect(members(membership(VAULT, chain0(), certs, []))).toEqual(ids(A, B, C, D));
    expect(members(membership(VAULT, chain0(), [...certs].reverse(), []))).toEqual(ids(A, B, C, D));
  });

  it('a vouch by a device that is not certified, or by the device itself, does not count', () => {
    const m = membership(VAULT, chain0(), [cert(A, paper0), cert(B, MALLORY), cert(MALLORY, MALLORY)], []);
    expect(members(m)).toEqual(ids(A));
  });

  it('a vouch made by a device later revoked still counts (revoking the device that paired the others keeps them); the revoked one is not a member', () => {
    const certs = [cert(A, paper0), cert(B, paper0), cert(C, B)];
    expect(members(membership(VAULT, chain0(), certs, [revoke(B, paper0)]))).toEqual(ids(A, C));
    expect(members(membership(VAULT, chain0(), certs, [revoke(B, A)]))).toEqual(ids(A, C));
    expect(members(membership(VAULT, chain0(), certs, [], [B.id]))).toEqual(ids(A, C));
  });

  it('members do not depend on who signed a revocation, or the order of the records', () => {
    const certs = [cert(A, paper0), cert(B, paper0), cert(C, A), cert(D, B)];
    const byC = membership(VAULT, chain0(), certs, [revoke(B, C)]);
    const byPaper = membership(VAULT, chain0(), [...certs].reverse(), [revoke(B, paper0)]);
    expect(byC.revoked.has(B.id)).toBe(true);
    expect(members(byC)).toEqual(ids(A, C, D));
    expect(members(byPaper)).toEqual(members(byC));
  });

  it('a forged signature does not count', () => {
    const forgedPaper = recoveryKeys(fixed('not the paper'));
    const certs = [
      cert(A, paper0),
      cert(B, paper0, {}, forgedPaper), // "recovery", signed by another paper
      cert(C, A, {}, MALLORY), // "A", signed by Mallory
      { ...cert(D, paper0), name: 'renamed after signing' },
      { ...cert(E, paper0), signature: '' },
    ];
    expect(members(membership(VAULT, chain0(), certs, []))).toEqual(ids(A));
    const bad = cert(B, paper0);
    const flipped = Buffer.from(bad.signature, 'base64url');
    flipped[10]! ^= 1;
    expect(members(membership(VAULT, chain0(), [cert(A, paper0), { ...bad, signature: flipped.toString('base64url') }], []))).toEqual(ids(A));
    // Keys swapped after signing: the certificate names keys the signer did not vouch for.
    expect(members(membership(VAULT, chain0(), [cert(A, paper0), { ...cert(B, paper0), exchangeKey: MALLORY.exchangeKey }], []))).toEqual(ids(A));
  });

  it('a certificate with a malformed key does not count, even signed by the paper', () => {
    const m = membership(VAULT, chain0(), [cert(A, paper0), cert(B, paper0, { exchangeKey: 'AAAA' }), cert(C, A, { signingKey: 'not base64url!' })], []);
    expect(members(m)).toEqual(ids(A));
  });

  it('a certificate for another vault does not count', () => {
    // Signed for the other vault (a real certificate there), or signed for this one and relabelled.
    const foreign = cert(B, paper0, { vaultId: OTHER_VAULT });
    const relabelled = { ...cert(C, paper0), vaultId: OTHER_VAULT };
    const m = membership(VAULT, chain0(), [cert(A, paper0), foreign, relabelled], []);
    expect(members(m)).toEqual(ids(A));
    expect(m.certified.has(B.id)).toBe(false);
  });
});

describe('membership(): revocations', () => {
  const certs = [cert(A, paper0), cert(B, paper0), cert(C, A), cert(D, paper0)];

  it('revocations by the paper and by a certified device count', () => {
    const m = membership(VAULT, chain0(), certs, [revoke(B, paper0), revoke(D, C)]);
    expect(members(m)).toEqual(ids(A, C));
    expect([...m.revoked.keys()].sort()).toEqual(ids(B, D));
    expect([...m.certified.keys()].sort()).toEqual(ids(A, B, C, D)); // still certified: their older records stay checkable
  });

  it('a device may revoke itself', () => {
    expect(members(membership(VAULT, chain0(), certs, [revoke(B, B)]))).toEqual(ids(A, C, D));
  });

  it('a forged revocation, one by a device that is not certified, or one for another vault does not count', () => {
    const m = membership(VAULT, chain0(), certs, [
      revoke(A, paper0, {}, MALLORY),
      revoke(B, MALLORY),
      revoke(C, paper0, { vaultId: OTHER_VAULT }),
      { ...revoke(D, A), deviceId: C.id },
      { ...revoke(D, paper0), signature: '' },
    ]);
    expect(members(m)).toEqual(ids(A, B, C, D));
    expect(m.revoked.size).toBe(0);
  });

  it('a forged revocation does not hide a real one of the same device', () => {
    const m = membership(VAULT, chain0(), certs, [revoke(B, paper0, {}, MALLORY), revoke(B, paper0)]);
    expect(members(m)).toEqual(ids(A, C, D));
  });

  it('a device known revoked stays revoked when the relay hides the revocation', () => {
    const m = membership(VAULT, chain0(), certs, [], [B.id]);
    expect(members(m)).toEqual(ids(A, C, D));
    expect(m.certified.has(B.id)).toBe(true);
    // And when the relay serves a fresh certificate for it.
    const again = membership(VAULT, chain0(), [...certs.filter((c) => c.deviceId !== B.id), cert(B, A, { issuedAt: T + 5000 })], [], [B.id]);
    expect(members(again)).toEqual(ids(A, C, D));
  });
});

describe('paperChain', () => {
  const r1 = replacement(1, paper0, paper1, [A]);
  const r2 = replacement(2, paper1, paper2, [A, B]);

  it('with no replacement: the paper this device trusts', () => {
    expect(chain0()).toEqual([paperOf(paper0)]);
  });

  it('follows a replacement signed by the old paper and the new, in n order whatever the relay\'s order', () => {
    const chain = paperChain(VAULT, paperOf(paper0), [r2, r1]);
    expect(chain.map((p) => p.authKey)).toEqual([paper0, paper1, paper2].map((k) => paperOf(k).authKey));
    expect(chain[1]!.exchangeKey).toBe(paperOf(paper1).exchangeKey);
    expect(chain[1]!.recoveryId).toBe(paper1.recoveryId);
    expect([...chain[0]!.keptMembers!]).toEqual([A.id]);
    expect([...chain[1]!.keptMembers!].sort()).toEqual(ids(A, B));
    expect(chain[2]!.keptMembers).toBeUndefined();
  });

  it('refuses a replacement missing either signature, or signed by another paper', () => {
    const refuse = (r: RecoveryRecord) => expect(() => paperChain(VAULT, paperOf(paper0), [r])).toThrow(MembershipError);
    refuse({ ...r1, signatureOld: '' });
    refuse({ ...r1, signatureNew: '' });
    refuse({ ...r1, signatureOld: r1.signatureNew }); // the new paper signing for the old
    refuse({ ...r1, signatureNew: r1.signatureOld });
    // Mallory's paper replacing paper 0: its own signature is fine, the old one is not.
    const mallory = recoveryKeys(fixed('mallory paper'));
    refuse(replacement(1, mallory, mallory, [A]));
    // The record changed after signing.
    refuse({ ...r1, members: [A.id, MALLORY.id].sort().join(',') });
    refuse({ ...r1, exchangeKey: paperOf(mallory).exchangeKey });
    // A good replacement followed by a bad one: the whole chain is refused.
    expect(() => paperChain(VAULT, paperOf(paper0), [r1, { ...r2, signatureOld: '' }])).toThrow(MembershipError);
  });

  it('refuses replacements out of order: a gap, a repeat, n = 0, or another vault', () => {
    const refuse = (rs: RecoveryRecord[]) => expect(() => paperChain(VAULT, paperOf(paper0), rs)).toThrow(/out of order/);
    refuse([r2]);
    refuse([r1, replacement(1, paper1, paper2, [A])]);
    refuse([replacement(0, paper0, paper1, [A])]);
    refuse([replacement(1, paper0, paper1, [A], { vaultId: OTHER_VAULT })]);
    refuse([r1, replacement(3, paper1, paper2, [A])]);
  });

  it('an old paper\'s certificate counts only for the members its replacement kept', () => {
    const chain = paperChain(VAULT, paperOf(paper0), [r1]);
    const m = membership(VAULT, chain, [cert(A, paper0), cert(B, paper0), cert(C, paper0, { issuedAt: T + 99_999 })], []);
    expect(members(m)).toEqual(ids(A));
    // The new paper certifies B again: it counts.
    expect(members(membership(VAULT, chain, [cert(A, paper0), cert(B, paper1)], []))).toEqual(ids(A, B));
    // Through two replacements, a certificate by paper 0 needs every replacement since to keep the device.
    const chain2 = paperChain(VAULT, paperOf(paper0), [r1, r2]);
    const m2 = membership(VAULT, chain2, [cert(A, paper0), cert(B, paper0), cert(C, paper1), cert(D, paper1)], []);
    // A: kept by 1 and 2. B: paper 0's, dropped by 1 (that 2 keeps B does not help). C, D: paper 1's, not kept by 2.
    expect(members(m2)).toEqual(ids(A));
    const chain2b = paperChain(VAULT, paperOf(paper0), [r1, replacement(2, paper1, paper2, [A, C])]);
    expect(members(membership(VAULT, chain2b, [cert(A, paper0), cert(B, paper0), cert(C, paper1), cert(D, paper1)], []))).toEqual(ids(A, C));
    // Vouches by a member certified through a kept certificate still count.
    expect(members(membership(VAULT, chain, [cert(A, paper0), cert(E, A)], []))).toEqual(ids(A, E));
  });

  // A device that joined with a replacement paper (n = 1) follows the next
  // replacement and ignores the ones before its paper.
  it('a device that trusts paper 1 follows replacement 2', () => {
    const chain = paperChain(VAULT, { ...paperOf(paper1), n: 1 }, [r1, r2]);
    expect(chain.map((p) => p.authKey)).toEqual([paperOf(paper1).authKey, paperOf(paper2).authKey]);
  });
});

describe('checkEpochRecord', () => {
  const K1 = '1111111111111111';
  const K2 = '2222222222222222';
  const K3 = '3333333333333333';
  const hashOf = (s: string) => sha256Hex(utf8ToBytes(s));
  const recipients = formatRecipients(new Map([[A.id, hashOf('wrap A')], [RECOVERY, hashOf('wrap paper')]]));

  function epoch(n: number, keyId: string, prevKeyId: string, by: Issuer, over: Partial<Omit<EpochRecord, 'signature'>> = {}, signer: Issuer = by): EpochRecord {
    const unsigned = {
      vaultId: VAULT,
      epoch: n,
      keyId,
      prevKeyId,
      recoveryKey: paperOf(paper0).exchangeKey,
      markCursor: 40 + n,
      markSeq: n,
      createdAt: T + n * 1000,
      issuer: issuerId(by),
      recipients,
      ...over,
    };
    return { ...unsigned, signature: b64uEncode(signPurpose(issuerSeed(signer), 'epoch', epochFields(unsigned))) };
  }
  // A and B paper-certified, C vouched by A, D certified then revoked.
  const chain = chain0();
  const m = membership(VAULT, chain, [cert(A, paper0), cert(B, paper0), cert(C, A), cert(D, paper0)], [revoke(D, paper0)]);
  const after1 = { epoch: 1, keyIdHex: K1 };

  it('accepts an epoch signed by a member or the paper that follows the previous one, and returns its recipients', () => {
    expect(Object.fromEntries(checkEpochRecord(epoch(2, K2, K1, A), VAULT, chain, m, after1))).toEqual({ [A.id]: hashOf('wrap A'), [RECOVERY]: hashOf('wrap paper') });
    expect(checkEpochRecord(epoch(2, K2, K1, C), VAULT, chain, m, after1).size).toBe(2);
    expect(checkEpochRecord(epoch(2, K2, K1, paper0), VAULT, chain, m, after1).size).toBe(2);
    expect(checkEpochRecord(epoch(1, K1, '', paper0), VAULT, chain, m, null).size).toBe(2);
  });

  it('refuses the wrong number: a gap, a repeat, a rollback, or not epoch 1 when none is held', () => {
    const refuse = (r: EpochRecord, prev: { epoch: number; keyIdHex: string } | null) => expect(() => checkEpochRecord(r, VAULT, chain, m, prev)).toThrow(/does not follow/);
    refuse(epoch(3, K3, K1, A), after1);
    refuse(epoch(1, K2, K1, A), after1);
    refuse(epoch(2, K2, K1, A), { epoch: 2, keyIdHex: K1 });
    refuse(epoch(2, K2, K1, A), null);
    refuse(epoch(0, K1, '', A), null);
  });

  it('refuses the wrong prevKeyId', () => {
    expect(() => checkEpochRecord(epoch(2, K2, K3, A), VAULT, chain, m, after1)).toThrow(MembershipError);
    expect(() => checkEpochRecord(epoch(2, K2, '', A), VAULT, chain, m, after1)).toThrow(MembershipError);
    expect(() => checkEpochRecord(epoch(1, K1, K3, paper0), VAULT, chain, m, null)).toThrow(MembershipError);
  });

  it('refuses an unsigned record, or one changed after signing', () => {
    const refuse = (r: EpochRecord) => expect(() => checkEpochRecord(r, VAULT, chain, m, after1)).toThrow(/not signed/);
    refuse({ ...epoch(2, K2, K1, A), signature: '' });
    refuse({ ...epoch(2, K2, K1, paper0), signature: '' });
    refuse({ ...epoch(2, K2, K1, A), markCursor: 0 });
    refuse({ ...epoch(2, K2, K1, A), recipients: formatRecipients(new Map([[A.id, hashOf('wrap A')], [MALLORY.id, hashOf('x')], [RECOVERY, hashOf('wrap paper')]])) });
    refuse({ ...epoch(2, K2, K1, A), recoveryKey: paperOf(paper1).exchangeKey });
  });

  it('refuses a record signed by a non-member (not certified, or not who it claims)', () => {
    const refuse = (r: EpochRecord) => expect(() => checkEpochRecord(r, VAULT, chain, m, after1)).toThrow(/not signed by the paper or a member/);
    refuse(epoch(2, K2, K1, MALLORY));
    refuse(epoch(2, K2, K1, A, {}, MALLORY));
    refuse(epoch(2, K2, K1, paper0, {}, MALLORY));
    refuse(epoch(2, K2, K1, paper0, {}, recoveryKeys(fixed('mallory paper'))));
    refuse(epoch(2, K2, K1, B, {}, A)); // a member's signature under another member's name
  });

  it('a revoked device: refused as the newest record, accepted as an older one (it was certified when it signed)', () => {
    const r = epoch(2, K2, K1, D);
    expect(() => checkEpochRecord(r, VAULT, chain, m, after1)).toThrow(MembershipError);
    expect(() => checkEpochRecord(r, VAULT, chain, m, after1, true)).toThrow(MembershipError);
    expect(checkEpochRecord(r, VAULT, chain, m, after1, false).size).toBe(2);
    // Never certified: refused as an older record too.
    expect(() => checkEpochRecord(epoch(2, K2, K1, MALLORY), VAULT, chain, m, after1, false)).toThrow(MembershipError);
    // Known revoked (the relay hides the revocation): refused as the newest.
    const remembered = membership(VAULT, chain, [cert(A, paper0), cert(D, paper0)], [], [D.id]);
    expect(() => checkEpochRecord(r, VAULT, chain, remembered, after1)).toThrow(MembershipError);
  });

  it('refuses another vault, and a malformed recipient list', () => {
    expect(() => checkEpochRecord(epoch(2, K2, K1, A, { vaultId: OTHER_VAULT }), VAULT, chain, m, after1)).toThrow(/another vault/);
    const malformed = (list: string) => expect(() => checkEpochRecord(epoch(2, K2, K1, A, { recipients: list }), VAULT, chain, m, after1)).toThrow(/malformed recipient/);
    malformed('');
    malformed(`${RECOVERY}=${hashOf('p')},${A.id}=${hashOf('a')}`); // not sorted
    malformed(`${A.id}=${hashOf('a')},${A.id}=${hashOf('b')}`); // twice
    malformed(`${A.id}=${hashOf('a').toUpperCase()}`);
    malformed(`${A.id}:${hashOf('a')}`);
  });

  it('after a paper replacement: the new paper signs epochs; an older record by the old paper still checks', () => {
    const replaced = paperChain(VAULT, paperOf(paper0), [replacement(1, paper0, paper1, [A, B, C])]);
    const m1 = membership(VAULT, replaced, [cert(A, paper0), cert(B, paper0), cert(C, A)], []);
    expect(members(m1)).toEqual(ids(A, B, C));
    expect(checkEpochRecord(epoch(2, K2, K1, paper1), VAULT, replaced, m1, after1).size).toBe(2);
    expect(checkEpochRecord(epoch(2, K2, K1, paper0), VAULT, replaced, m1, after1, false).size).toBe(2);
  });

  // Fixed gap, kept as a regression test: FORMAT.md §9 says an epoch record counts when
  // "the paper" signed it, and checkEpochRecord holds a device issuer of the
  // newest record to being a member *now*; but for issuer "recovery" it
  // accepts any paper of the chain, so a replaced paper (the phrase `rotate
  // --phrase` was run to retire, e.g. because a thief holds it) can still sign
  // the newest epoch.
  it('refuses the newest record signed by a replaced paper', () => {
    const replaced = paperChain(VAULT, paperOf(paper0), [replacement(1, paper0, paper1, [A])]);
    const m1 = membership(VAULT, replaced, [cert(A, paper0)], []);
    expect(() => checkEpochRecord(epoch(2, K2, K1, paper0), VAULT, replaced, m1, after1)).toThrow(MembershipError);
  });

  // Same gap for revocations: a replaced paper's revocation counts for every
  // device, so whoever holds the retired phrase can still revoke the members
  // its replacement kept (a certificate by it counts only for kept members).
  it('a replaced paper\'s revocation does not count for the members its replacement kept', () => {
    const replaced = paperChain(VAULT, paperOf(paper0), [replacement(1, paper0, paper1, [A, B])]);
    const m1 = membership(VAULT, replaced, [cert(A, paper0), cert(B, paper0)], [revoke(B, paper0, { revokedAt: T + 999_999 })]);
    expect(members(m1)).toEqual(ids(A, B));
  });
});
