/**
 * The device's side of key epochs (docs/SECURITY.md §2–§3, docs/FORMAT.md
 * §9): the keyring in the keystore, picking up a new epoch the relay names,
 * starting one (a revocation, `casa rotate`), and the upgrade of a format-1
 * vault. Every record from the relay is checked here before a key from it is
 * used or a key is sealed to anyone it names.
 */
import { AuthError, FailureError, IntegrityError } from '../errors.js';
import { b64uDecode, b64uEncode } from '../crypto/bytes.js';
import {
  currentEpoch,
  decodeKeyring,
  deviceExchangeKey,
  encodeKeyring,
  nextEpoch,
  openWrap,
  vaultKeysOf,
  wrapHashes,
  wrapKeyring,
  type EpochMark,
  type ExchangeKey,
  type Keyring,
} from '../crypto/keyring.js';
import type { VaultKeys } from '../crypto/kdf.js';
import { sha256Hex } from '../crypto/sha256.js';
import { publicKeyFromSeed, signPurpose } from '../crypto/sign.js';
import { mapCryptoError } from '../failures.js';
import type { Keystore } from '../keystore/index.js';
import {
  certFields,
  certOf,
  epochFields,
  formatRecipients,
  isDeviceCert,
  isEpochRecord,
  isRecoveryRecord,
  isRevocation,
  RECOVERY,
  revocationFields,
  type DeviceCert,
  type EpochRecord,
  type RecoveryRecord,
  type Revocation,
} from '../protocol/membership.js';
import { RelayHttpError, type DeviceSession } from '../relay/client.js';
import { readState, SECRET_KEYRING, writeState, type PairedPaper } from '../state.js';
import { checkEpochRecord, membership, MembershipError, paperChain, type Membership, type Paper } from './verify.js';

/** The keyring as the keystore keeps it, with where each older epoch stopped. */
export interface StoredRing {
  ring: Keyring;
  marks: Record<number, EpochMark>;
}

export async function loadRing(keystore: Keystore): Promise<StoredRing | null> {
  const text = await keystore.get(SECRET_KEYRING);
  if (!text) return null;
  try {
    const d = JSON.parse(text) as { ring: string; marks: Record<string, EpochMark> };
    const marks: Record<number, EpochMark> = {};
    for (const [k, v] of Object.entries(d.marks ?? {})) {
      if (Number.isSafeInteger(v?.cursor) && Number.isSafeInteger(v?.seq)) marks[Number(k)] = { cursor: v.cursor, seq: v.seq };
    }
    return { ring: decodeKeyring(b64uDecode(d.ring)), marks };
  } catch {
    throw new FailureError(`the keyring in the ${keystore.kind} keystore is damaged`, {
      hints: ['pair this device again (`casa pair --join`, or a code from another device)'],
    });
  }
}

export async function saveRing(keystore: Keystore, s: StoredRing): Promise<void> {
  await keystore.set(SECRET_KEYRING, JSON.stringify({ ring: b64uEncode(encodeKeyring(s.ring)), marks: s.marks }));
}

/** What the key operations need: this home, its keystore, the device's session and key. */
export interface KeyEnv {
  home: string;
  vaultId: string;
  deviceId: string;
  keystore: Keystore;
  session: DeviceSession;
  deviceSeed: Uint8Array;
  now: () => number;
  /** Notes for the user (never secrets). */
  note: (line: string) => void;
  /** The paper this device trusts; absent on a format-1 device before its upgrade. */
  paper?: PairedPaper;
  /** Device ids this device verified revoked. */
  knownRevoked: string[];
}

// ---------------------------------------------------------------- the relay's records

export interface VaultRecords {
  certs: DeviceCert[];
  revocations: Revocation[];
  names: Map<string, string>;
}

export async function fetchDevices(session: DeviceSession): Promise<VaultRecords> {
  const doc = await session.call('GET', '/devices');
  const list = Array.isArray(doc.devices) ? (doc.devices as Record<string, unknown>[]) : [];
  const certs: DeviceCert[] = [];
  const revocations: Revocation[] = [];
  const names = new Map<string, string>();
  for (const d of list) {
    if (typeof d.id === 'string' && typeof d.name === 'string') names.set(d.id, d.name);
    if (isDeviceCert(d.cert)) certs.push(d.cert);
    if (isRevocation(d.revocation)) revocations.push(d.revocation);
  }
  return { certs, revocations, names };
}

async function fetchEpochs(session: DeviceSession, after: number, forIds: string[]): Promise<{ epoch: number; keyId: string; records: EpochRecord[] }> {
  const doc = await session.call('GET', `/epochs?after=${after}&for=${forIds.join(',')}`);
  const records = Array.isArray(doc.records) ? doc.records : [];
  if (typeof doc.epoch !== 'number' || typeof doc.keyId !== 'string' || !records.every(isEpochRecord)) {
    throw new IntegrityError('the relay sent malformed epoch records', { hints: ['nothing was used; try again later, and if it happens again suspect the relay'] });
  }
  return { epoch: doc.epoch, keyId: doc.keyId, records: (records as EpochRecord[]).sort((a, b) => a.epoch - b.epoch) };
}

async function fetchPaperRecords(session: DeviceSession): Promise<RecoveryRecord[]> {
  const doc = await session.call('GET', '/recovery');
  const records = Array.isArray(doc.records) ? doc.records : [];
  if (!records.every(isRecoveryRecord)) throw new IntegrityError('the relay sent malformed paper records', { hints: ['nothing was used; try again later, and if it happens again suspect the relay'] });
  return records as RecoveryRecord[];
}

/** The papers from the one this device trusts to the newest, and the vault's members, from signed records only. */
export async function verifiedMembers(env: KeyEnv, paper: PairedPaper): Promise<{ chain: Paper[]; m: Membership; names: Map<string, string>; records: VaultRecords }> {
  const [records, paperRecords] = await Promise.all([fetchDevices(env.session), fetchPaperRecords(env.session)]);
  let chain: Paper[];
  try {
    chain = paperChain(env.vaultId, paper, paperRecords);
  } catch (err) {
    throw asIntegrity(err);
  }
  const m = membership(env.vaultId, chain, records.certs, records.revocations, env.knownRevoked);
  return { chain, m, names: records.names, records };
}

function asIntegrity(err: unknown): unknown {
  if (err instanceof MembershipError) return new IntegrityError(`the vault's records do not verify: ${err.message}`, { hints: ['the relay, or someone with its storage, changed them; nothing was used'] });
  return err;
}

// ---------------------------------------------------------------- picking up an epoch

/**
 * Reads epochs after the one this device holds and takes the newest: every
 * record's signature and place checked, the newest's wrap for `as` opened
 * (its keyring must extend the one held), and every other wrap of it made
 * again and compared (FORMAT.md §9). Returns the new keyring with its marks.
 */
export async function pickUp(
  env: KeyEnv,
  held: StoredRing | null,
  as: { id: string; exchange: ExchangeKey },
  paper: PairedPaper,
): Promise<{ stored: StoredRing; epoch: EpochRecord; members: Membership; chain: Paper[] }> {
  const after = held ? currentEpoch(held.ring).epoch : 0;
  const { records } = await fetchEpochs(env.session, after, [as.id]);
  if (records.length === 0) throw new IntegrityError('the relay named a newer epoch but sent none', { hints: ['nothing was used; try again later, and if it happens again suspect the relay'] });
  const { chain, m } = await verifiedMembers(env, paper);
  let prev = held ? { epoch: after, keyIdHex: currentEpoch(held.ring).keyIdHex } : null;
  const marks = { ...(held?.marks ?? {}) };
  let recipients = new Map<string, string>();
  let last: EpochRecord | undefined;
  try {
    for (const r of records) {
      const newest = r === records[records.length - 1];
      if (!held && !newest) {
        // A device joining now: the newest record's signature binds its wrap, whose keyring holds every
        // older epoch's keys (checked against each record's key id below); older records, perhaps signed
        // by a paper since replaced, need only follow one another.
        if (r.vaultId !== env.vaultId || r.epoch !== (prev?.epoch ?? 0) + 1 || r.prevKeyId !== (prev?.keyIdHex ?? '')) {
          throw new MembershipError(`epoch ${r.epoch} does not follow epoch ${prev?.epoch ?? 0}`);
        }
        prev = { epoch: r.epoch, keyIdHex: r.keyId };
        continue;
      }
      recipients = checkEpochRecord(r, env.vaultId, chain, m, prev, newest);
      if (r.epoch > 1) marks[r.epoch - 1] = { cursor: r.markCursor, seq: r.markSeq };
      prev = { epoch: r.epoch, keyIdHex: r.keyId };
      last = r;
    }
  } catch (err) {
    throw asIntegrity(err);
  }
  const rec = last!;
  const wrapText = rec.wraps?.[as.id];
  if (!recipients.has(as.id) || wrapText === undefined) {
    throw new AuthError(`this device was not given the keys of epoch ${rec.epoch}`, {
      code: 'device_revoked',
      hints: ['it was revoked or left out; pair it again from a device of the vault (`casa pair`) or with the recovery phrase'],
    });
  }
  let ring: Keyring;
  try {
    const wrap = b64uDecode(wrapText);
    if (sha256Hex(wrap) !== recipients.get(as.id)) throw new IntegrityError(`the relay changed this device's keys of epoch ${rec.epoch}`);
    ring = openWrap({ wrap, vaultId: env.vaultId, epoch: rec.epoch, keyIdHex: rec.keyId, recipient: as.id, exchange: as.exchange, ...(held ? { previous: held.ring } : {}) });
  } catch (err) {
    if (err instanceof IntegrityError) throw err;
    throw mapCryptoError(err, `the keys of epoch ${rec.epoch}`);
  }
  // Every epoch the records named is in the keyring with the key id they named.
  for (const r of records) {
    if (ring.epochs[r.epoch - 1]?.keyIdHex !== r.keyId) throw new IntegrityError(`epoch ${r.epoch}'s keys are not the ones its record names`);
  }
  checkAllWraps(ring, rec, recipients, m, chain);
  for (const r of records) if (r.epoch > 1) marks[r.epoch - 1] = { cursor: r.markCursor, seq: r.markSeq };
  return { stored: { ring, marks }, epoch: rec, members: m, chain };
}

/** Makes every wrap of the record again from the keyring: each must be what the record lists (H2 in docs/SECURITY.md §3). */
function checkAllWraps(ring: Keyring, rec: EpochRecord, recipients: Map<string, string>, m: Membership, chain: Paper[]): void {
  const paper = chain[chain.length - 1]!;
  const list: { id: string; exchangePublicKey: Uint8Array }[] = [];
  for (const id of recipients.keys()) {
    if (id === RECOVERY) {
      if (rec.recoveryKey !== paper.exchangeKey && !chain.some((p) => p.exchangeKey === rec.recoveryKey)) {
        throw new IntegrityError(`epoch ${rec.epoch} was sealed to a paper this vault does not have`);
      }
      list.push({ id, exchangePublicKey: b64uDecode(rec.recoveryKey) });
      continue;
    }
    const cert = m.certified.get(id);
    if (!cert) throw new IntegrityError(`epoch ${rec.epoch} was sealed to a device that is not a member (${id})`);
    list.push({ id, exchangePublicKey: b64uDecode(cert.exchangeKey) });
  }
  if (!recipients.has(RECOVERY)) throw new IntegrityError(`epoch ${rec.epoch} was not sealed to the recovery phrase`);
  const made = wrapHashes(ring, list);
  for (const [id, h] of made) {
    if (recipients.get(id) !== h) throw new IntegrityError(`epoch ${rec.epoch} sealed other keys to ${id === RECOVERY ? 'the recovery phrase' : `device ${id}`}`);
  }
}

// ---------------------------------------------------------------- starting an epoch

export interface StartedEpoch {
  stored: StoredRing;
  epoch: number;
  /** The names of the devices the new keys were sealed to (and "recovery phrase"). */
  sealedTo: string[];
}

/**
 * A new epoch: fresh keys, sealed to every verified member but `exclude`
 * and to the paper, signed by this device (or the paper, with `paperSeed`),
 * marked at the heads the relay holds. A move of the heads meanwhile is
 * answered 409 with the new heads; it is sealed again and retried.
 */
export async function startEpoch(
  env: KeyEnv,
  held: StoredRing,
  paper: PairedPaper,
  opts: { exclude?: string[]; paperSeed?: Uint8Array; recoveryExchangeKey?: string; post?: (record: EpochRecord) => Promise<void> } = {},
): Promise<StartedEpoch> {
  const { m, names } = await verifiedMembers(env, paper);
  const exclude = new Set(opts.exclude ?? []);
  const members = [...m.members].filter((id) => !exclude.has(id)).sort();
  if (!opts.paperSeed && !members.includes(env.deviceId)) {
    throw new AuthError('this device is not a member of the vault any more', { code: 'device_revoked', hints: ['it was revoked; pair it again'] });
  }
  const ring = nextEpoch(held.ring, (n) => crypto.getRandomValues(new Uint8Array(n)));
  const cur = currentEpoch(ring);
  const recoveryKey = opts.recoveryExchangeKey ?? paper.exchangeKey;
  const recipients = [
    ...members.map((id) => ({ id, exchangePublicKey: b64uDecode(m.certified.get(id)!.exchangeKey) })),
    { id: RECOVERY, exchangePublicKey: b64uDecode(recoveryKey) },
  ];
  const mark = await postEpoch(env, ring, {
    prevKeyId: currentEpoch(held.ring).keyIdHex,
    recipients,
    recoveryKey,
    issuer: opts.paperSeed ? RECOVERY : env.deviceId,
    signerSeed: opts.paperSeed ?? env.deviceSeed,
    ...(opts.post ? { post: opts.post } : {}),
  });
  const stored: StoredRing = { ring, marks: { ...held.marks, [cur.epoch - 1]: mark } };
  await saveRing(env.keystore, stored);
  env.session.forgetToken();
  return { stored, epoch: cur.epoch, sealedTo: [...members.map((id) => names.get(id) ?? id), 'the recovery phrase'] };
}

/** The relay's epoch moved while an epoch was being made: another device (or the paper) started one. */
export class EpochMovedError extends FailureError {
  constructor(epoch: number) {
    super(`another device started epoch ${epoch} meanwhile`, { code: 'conflict', hints: ['run the command again'] });
  }
}

/**
 * Posts the epoch `ring` ends with: sealed to `recipients`, signed by
 * `signerSeed` as `issuer`, marked at the relay's heads. The first try names
 * no heads; the relay's 409 names them, and the record is signed again with
 * them (a few times, while pushes move them). Returns the mark the relay took.
 */
export async function postEpoch(
  env: KeyEnv,
  ring: Keyring,
  o: {
    prevKeyId: string;
    recipients: { id: string; exchangePublicKey: Uint8Array }[];
    recoveryKey: string;
    issuer: string;
    signerSeed: Uint8Array;
    post?: (record: EpochRecord) => Promise<void>;
  },
): Promise<EpochMark> {
  const cur = currentEpoch(ring);
  const wraps: Record<string, string> = {};
  for (const r of o.recipients) wraps[r.id] = b64uEncode(wrapKeyring(ring, r));
  const recipients = formatRecipients(wrapHashes(ring, o.recipients));
  let mark: EpochMark = { cursor: 0, seq: 0 };
  for (let attempt = 0; ; attempt++) {
    const unsigned = {
      vaultId: env.vaultId,
      epoch: cur.epoch,
      keyId: cur.keyIdHex,
      prevKeyId: o.prevKeyId,
      recoveryKey: o.recoveryKey,
      markCursor: mark.cursor,
      markSeq: mark.seq,
      createdAt: relayNow(env),
      issuer: o.issuer,
      recipients,
    };
    const record: EpochRecord = { ...unsigned, signature: b64uEncode(signPurpose(o.signerSeed, 'epoch', epochFields(unsigned))), wraps };
    try {
      if (o.post) await o.post(record);
      else await env.session.request('POST', '/epochs', record);
      return mark;
    } catch (err) {
      const moved = headsMoved(err);
      if (!moved || attempt >= 5) throw err;
      if (moved.epoch !== cur.epoch - 1) throw new EpochMovedError(moved.epoch);
      mark = { cursor: moved.head, seq: moved.seq };
    }
  }
}

function headsMoved(err: unknown): { head: number; seq: number; epoch: number } | null {
  if (!(err instanceof RelayHttpError) || err.status !== 409 || err.code !== 'conflict') return null;
  const b = err.doc;
  if (typeof b?.head === 'number' && typeof b?.seq === 'number' && typeof b?.epoch === 'number') return { head: b.head, seq: b.seq, epoch: b.epoch };
  return null;
}

function relayNow(env: KeyEnv): number {
  return env.now() + (env.session.client.clockOffsetMs ?? 0);
}

// ---------------------------------------------------------------- certificates and revocations

/** This device's certificate, signed by `issuerSeed` (the paper's, or a member's). */
export function makeCert(p: {
  vaultId: string;
  deviceSeed: Uint8Array;
  deviceId: string;
  name: string;
  issuedAt: number;
  issuer: string;
  issuerSeed: Uint8Array;
}): DeviceCert {
  const { deviceSeed, ...rest } = p;
  return vouchFor({ ...rest, signingKey: b64uEncode(publicKeyFromSeed(deviceSeed)), exchangeKey: b64uEncode(deviceExchangeKey(deviceSeed).publicKey) });
}

/** A certificate for another device's public keys (pairing by code: the offering device vouches). */
export function vouchFor(p: Omit<DeviceCert, 'signature'> & { issuerSeed: Uint8Array }): DeviceCert {
  const { issuerSeed, ...unsigned } = p;
  return certOf({ ...unsigned, signature: b64uEncode(signPurpose(issuerSeed, 'device-cert', certFields(unsigned))) });
}

export function makeRevocation(p: { vaultId: string; deviceId: string; revokedAt: number; issuer: string; issuerSeed: Uint8Array }): Revocation {
  const unsigned = { vaultId: p.vaultId, deviceId: p.deviceId, revokedAt: p.revokedAt, issuer: p.issuer };
  return { ...unsigned, signature: b64uEncode(signPurpose(p.issuerSeed, 'revoke', revocationFields(unsigned))) };
}

/** Revokes a device (signed by this device) and starts an epoch without it. */
export async function revokeAndRotate(env: KeyEnv, held: StoredRing, paper: PairedPaper, target: string): Promise<StartedEpoch & { revokedAt: number }> {
  const revocation = makeRevocation({ vaultId: env.vaultId, deviceId: target, revokedAt: relayNow(env), issuer: env.deviceId, issuerSeed: env.deviceSeed });
  const res = await env.session.call('POST', `/devices/${target}/revoke`, { revocation });
  const revokedAt = typeof res.revokedAt === 'number' ? res.revokedAt : revocation.revokedAt;
  rememberRevoked(env.home, target);
  env.knownRevoked.push(target);
  const started = await startEpoch(env, held, paper, { exclude: [target] });
  return { ...started, revokedAt };
}

export function rememberRevoked(home: string, id: string): void {
  const st = readState(home);
  if (!st?.vault) return;
  const revoked = [...new Set([...(st.vault.revoked ?? []), id])];
  writeState(home, { ...st, vault: { ...st.vault, revoked } });
}

/** The keys a command uses: the keyring's current epoch, older epochs by key id. */
export function keysOf(stored: StoredRing): VaultKeys {
  return vaultKeysOf(stored.ring, stored.marks);
}
