/**
 * Membership and key epochs (docs/RELAY-API.md "Membership and epochs",
 * docs/FORMAT.md §9, docs/SECURITY.md §3): enrollment by a signed device
 * certificate, certificates, the device list with its records, signed
 * revocations, epoch records with their keyring wraps, paper replacements,
 * the recovery-id lookup and the audit log.
 *
 * Every record is checked here before anything is written (shape, the
 * vault it names, key encodings, its Ed25519 signature by the paper — the
 * vault's current auth_public_key — or by a certified, unrevoked device);
 * membership-db.ts writes it in one transaction that re-checks what a
 * concurrent request could have changed. Records are stored in one
 * canonical JSON spelling (the fields of src/protocol/membership.ts, in
 * that order), so a retried request is recognised by its text.
 *
 * Answers for a signer that does not count: 401 `unauthorized` for a bad
 * signature, and also for an issuer that is not a certified, unrevoked
 * device of the vault (unknown, revoked, uncertified, the certified device
 * itself, or another device than the caller where only the caller may sign).
 */
import { Hono, type Context } from 'hono';
import { isDeviceId, isVaultId } from '../../src/protocol/ids.js';
import {
  RECOVERY,
  certFields,
  certOf,
  deviceIdOf,
  epochFields,
  isDeviceCert,
  isEpochRecord,
  isRecoveryRecord,
  isRevocation,
  parseRecipients,
  recoveryFields,
  revocationFields,
  type DeviceCert,
  type EpochRecord,
  type RecoveryRecord,
  type Revocation,
} from '../../src/protocol/membership.js';
import type { SignedPurpose } from '../../src/protocol/messages.js';
import { checkPublicKey, requireDevice, verifySigned } from '../auth.js';
import { getDeviceByKey } from '../db.js';
import { vaultStub, type AppEnv } from '../env.js';
import { claimRecoveryId, keepRecoveryId, releaseRecoveryId, vaultOfRecoveryId } from '../index-db.js';
import {
  ApiError,
  LARGE_JSON_BODY_LIMIT,
  b64uDecode,
  badRequest,
  hex,
  jsonBodyLimit,
  jsonBodyLimitOf,
  notFound,
  readJson,
  revoked,
  sha256,
  unauthorized,
  vaultIdParam,
} from '../http.js';
import { announce, disconnectDevice } from '../hub.js';
import { limitByIp } from '../limits.js';
import { checkQuota } from '../quotas.js';
import {
  deviceIdTaken,
  getMember,
  getVaultKeyState,
  insertEpoch,
  insertMember,
  listEpochs,
  listMembers,
  listRecoveryRecords,
  readLog,
  replaceCert,
  replacePaper,
  revokeMember,
  storedPaperAndEpoch,
  type EpochOutcome,
  type MemberRow,
  type NewEpoch,
  type Signer,
  type VaultKeyState,
} from '../membership-db.js';
import { intQuery } from './changesets.js';

export const keyRoutes = new Hono<AppEnv>();
export const recoveryRoutes = new Hono<AppEnv>();

const MAX_NAME = 64;
export const LOG_DEFAULT_LIMIT = 100;
export const LOG_MAX_LIMIT = 500;

type Ctx = Context<AppEnv>;

// ---- field checks ------------------------------------------------------------

/** A b64u field that must encode 32 bytes (a public key). */
function key32(text: string, field: string): Uint8Array {
  const bytes = b64uDecode(text);
  if (bytes === null || bytes.length !== 32) throw badRequest(`${field} must be 32 bytes, base64url without padding`);
  return bytes;
}

function signature64(text: string, field: string): Uint8Array {
  const bytes = b64uDecode(text);
  if (bytes === null || bytes.length !== 64) throw badRequest(`${field} must be a 64-byte signature, base64url without padding`);
  return bytes;
}

/** A public key as stored (validated when it was registered). */
function storedKey(text: string): Uint8Array {
  const k = b64uDecode(text);
  if (k === null || k.length !== 32) throw new Error('stored public key is malformed');
  return k;
}

function checkName(name: string, field: string): void {
  const n = [...name].length;
  if (n < 1 || n > MAX_NAME || /\p{Cc}/u.test(name)) throw badRequest(`${field} must be 1..${MAX_NAME} characters without control characters`);
}

function checkIssuer(issuer: string, field: string): void {
  if (issuer !== RECOVERY && !isDeviceId(issuer)) throw badRequest(`${field} must be "${RECOVERY}" or a device id`);
}

// The one stored spelling of each record.
const certJson = (c: DeviceCert): string => JSON.stringify(certOf(c));
const revocationJson = (r: Revocation): string =>
  JSON.stringify({ vaultId: r.vaultId, deviceId: r.deviceId, revokedAt: r.revokedAt, issuer: r.issuer, signature: r.signature });
const epochJson = (e: EpochRecord): string =>
  JSON.stringify({
    vaultId: e.vaultId,
    epoch: e.epoch,
    keyId: e.keyId,
    prevKeyId: e.prevKeyId,
    recoveryKey: e.recoveryKey,
    markCursor: e.markCursor,
    markSeq: e.markSeq,
    createdAt: e.createdAt,
    issuer: e.issuer,
    recipients: e.recipients,
    signature: e.signature,
  });
const recoveryJson = (r: RecoveryRecord): string =>
  JSON.stringify({
    vaultId: r.vaultId,
    n: r.n,
    recoveryId: r.recoveryId,
    authKey: r.authKey,
    exchangeKey: r.exchangeKey,
    members: r.members,
    time: r.time,
    signatureOld: r.signatureOld,
    signatureNew: r.signatureNew,
  });

const parsed = <T>(text: string | null): T | null => (text === null ? null : (JSON.parse(text) as T));

// ---- signers -----------------------------------------------------------------

/**
 * Who signed: the paper (`issuer` = recovery; any of `paperKeys`, the
 * vault's current key first) or the device `issuer`, which must be
 * certified and unrevoked, not `notSelf`, and `only` when that is given.
 * 401 otherwise.
 */
async function signerOf(
  c: Ctx,
  vaultId: string,
  p: {
    purpose: SignedPurpose;
    fields: (string | number)[];
    issuer: string;
    signature: Uint8Array;
    paperKeys: string[];
    notSelf?: string;
    only?: string;
  },
): Promise<Signer> {
  if (p.issuer === RECOVERY) {
    for (const k of p.paperKeys) {
      if (verifySigned(p.purpose, p.fields, p.signature, storedKey(k))) return { paperKey: k, deviceId: null };
    }
    throw unauthorized("bad signature: not the paper's");
  }
  const notMember = (): ApiError => unauthorized('the issuer is not a certified, unrevoked device of this vault that may sign this');
  if (p.issuer === p.notSelf || (p.only !== undefined && p.issuer !== p.only)) throw notMember();
  const d = await getMember(c.env.DB, vaultId, p.issuer);
  if (d === null || d.revoked_at !== null || d.cert === null) throw notMember();
  if (!verifySigned(p.purpose, p.fields, p.signature, storedKey(d.public_key))) throw unauthorized("bad signature: not the issuer's");
  return { paperKey: null, deviceId: p.issuer };
}

// ---- certificates ------------------------------------------------------------

interface CheckedCert {
  cert: DeviceCert;
  signingKey: Uint8Array;
  signature: Uint8Array;
}

function checkCert(v: unknown, vaultId: string): CheckedCert {
  if (!isDeviceCert(v)) throw badRequest('cert must be a device certificate');
  if (v.vaultId !== vaultId) throw badRequest('cert names another vault');
  const signingKey = key32(v.signingKey, 'cert.signingKey');
  checkPublicKey('cert.signingKey', signingKey);
  key32(v.exchangeKey, 'cert.exchangeKey');
  checkName(v.name, 'cert.name');
  checkIssuer(v.issuer, 'cert.issuer');
  return { cert: v, signingKey, signature: signature64(v.signature, 'cert.signature') };
}

function certSigner(c: Ctx, vault: VaultKeyState, k: CheckedCert): Promise<Signer> {
  return signerOf(c, vault.id, {
    purpose: 'device-cert',
    fields: certFields(k.cert),
    issuer: k.cert.issuer,
    signature: k.signature,
    paperKeys: [vault.auth_public_key],
    notSelf: k.cert.deviceId,
  });
}

/** Stores a newer certificate for an enrolled device; 403 if it was revoked, 401 if the signer stopped counting meanwhile. */
async function recertify(c: Ctx, vaultId: string, deviceId: string, k: CheckedCert, signer: Signer): Promise<void> {
  const ok = await replaceCert(c.env.DB, { vaultId, deviceId, name: k.cert.name, cert: certJson(k.cert), signer, now: Date.now() });
  if (ok) return;
  const d = await getMember(c.env.DB, vaultId, deviceId);
  if (d === null) throw notFound();
  if (d.revoked_at !== null) throw revoked();
  throw unauthorized('the issuer is not a certified, unrevoked device of this vault that may sign this');
}

keyRoutes.post('/:vaultId/devices', limitByIp('ENROLL_LIMITER'), jsonBodyLimit, async (c) => {
  const vaultId = vaultIdParam(c);
  const body = await readJson(c);
  const k = checkCert(body.cert, vaultId);
  if (k.cert.deviceId !== deviceIdOf(k.signingKey)) throw badRequest('cert.deviceId is not the device id of cert.signingKey');
  const vault = await getVaultKeyState(c.env.DB, vaultId);
  if (vault === null) throw notFound();
  const signer = await certSigner(c, vault, k);
  const answer = (deviceId: string) => c.json({ deviceId, epoch: vault.epoch, canary: vault.canary, time: Date.now() }, 201);
  for (let attempt = 0; attempt < 2; attempt++) {
    // A key already enrolled is the same device (a retry); its certificate is replaced when it names that device.
    const existing = await getDeviceByKey(c.env.DB, vaultId, k.cert.signingKey);
    if (existing !== null) {
      if (existing.revoked_at !== null) throw revoked();
      if (existing.id === k.cert.deviceId) await recertify(c, vaultId, existing.id, k, signer);
      return answer(existing.id);
    }
    if (attempt > 0) break;
    await checkQuota(c, vaultId, { device: true });
    const row = {
      vaultId,
      deviceId: k.cert.deviceId,
      publicKey: k.cert.signingKey,
      name: k.cert.name,
      cert: certJson(k.cert),
      signer,
      now: Date.now(),
    };
    if (await insertMember(c.env.DB, row)) return answer(row.deviceId);
  }
  // Not inserted, and not because the key is here: the id is another device's, or the signer stopped counting.
  if (await deviceIdTaken(c.env.DB, k.cert.deviceId)) throw new ApiError(409, 'conflict', 'this device id is taken');
  throw unauthorized('the issuer is not a certified, unrevoked device of this vault that may sign this');
});

keyRoutes.put('/:vaultId/devices/:deviceId/cert', requireDevice(), jsonBodyLimit, async (c) => {
  const vaultId = c.var.vaultId;
  const deviceId = c.req.param('deviceId');
  if (!isDeviceId(deviceId)) throw notFound();
  const k = checkCert((await readJson(c)).cert, vaultId);
  if (k.cert.deviceId !== deviceId) throw badRequest('cert names another device');
  const device = await getMember(c.env.DB, vaultId, deviceId);
  if (device === null) throw notFound();
  if (k.cert.signingKey !== device.public_key) throw badRequest("cert.signingKey is not the device's key");
  if (device.revoked_at !== null) throw revoked();
  const vault = await getVaultKeyState(c.env.DB, vaultId);
  if (vault === null) throw notFound();
  await recertify(c, vaultId, deviceId, k, await certSigner(c, vault, k));
  return c.json({ deviceId });
});

export function memberView(d: MemberRow) {
  return {
    id: d.id,
    name: d.name,
    publicKey: d.public_key,
    createdAt: d.created_at,
    lastSeenAt: d.last_seen_at,
    revokedAt: d.revoked_at,
    cert: parsed<DeviceCert>(d.cert),
    revocation: parsed<Revocation>(d.revocation),
  };
}

keyRoutes.get('/:vaultId/devices', requireDevice(), async (c) => {
  return c.json({ devices: (await listMembers(c.env.DB, c.var.vaultId)).map(memberView) });
});

keyRoutes.post('/:vaultId/devices/:deviceId/revoke', requireDevice(), jsonBodyLimit, async (c) => {
  const vaultId = c.var.vaultId;
  const deviceId = c.req.param('deviceId');
  if (!isDeviceId(deviceId)) throw notFound();
  const r = (await readJson(c)).revocation;
  if (!isRevocation(r)) throw badRequest('revocation must be a revocation record');
  if (r.vaultId !== vaultId || r.deviceId !== deviceId) throw badRequest('the revocation names another vault or device');
  checkIssuer(r.issuer, 'revocation.issuer');
  const signature = signature64(r.signature, 'revocation.signature');
  if ((await getMember(c.env.DB, vaultId, deviceId)) === null) throw notFound();
  const vault = await getVaultKeyState(c.env.DB, vaultId);
  if (vault === null) throw notFound();
  // The paper, or the calling device (certified: a revocation counts only by a certified device, FORMAT.md §9).
  const signer = await signerOf(c, vaultId, {
    purpose: 'revoke',
    fields: revocationFields(r),
    issuer: r.issuer,
    signature,
    paperKeys: [vault.auth_public_key],
    only: c.var.deviceId,
  });
  const row = await revokeMember(c.env.DB, { vaultId, deviceId, revocation: revocationJson(r), signer, now: Date.now() });
  if (row === null) throw notFound();
  if (row.revoked_at === null) throw unauthorized('the issuer is not a certified, unrevoked device of this vault that may sign this');
  // Best effort: the device's next request is refused anyway (the row is read every time).
  c.executionCtx.waitUntil(disconnectDevice(c.env, vaultId, deviceId).catch(() => undefined));
  return c.json({ id: row.id, revokedAt: row.revoked_at });
});

// ---- epochs ------------------------------------------------------------------

interface CheckedEpoch {
  rec: EpochRecord & { wraps: Record<string, string> };
  input: NewEpoch;
}

/**
 * An epoch record with all its wraps, checked as docs/RELAY-API.md says
 * except for what the insert's transaction checks (its place after the
 * vault's epoch, and the mark).
 */
async function checkEpoch(c: Ctx, vault: VaultKeyState, v: unknown, paperKeys: string[]): Promise<CheckedEpoch> {
  if (!isEpochRecord(v) || v.wraps === undefined) throw badRequest('the body must be an epoch record with its wraps');
  if (v.vaultId !== vault.id) throw badRequest('the epoch record names another vault');
  key32(v.recoveryKey, 'recoveryKey');
  checkIssuer(v.issuer, 'issuer');
  const signature = signature64(v.signature, 'signature');
  const recipients = parseRecipients(v.recipients);
  if (recipients === null) throw badRequest('recipients must be id=sha256 pairs, sorted by id, comma-separated');
  const wraps = v.wraps;
  const ids = Object.keys(wraps);
  if (ids.length !== recipients.size || ids.some((id) => !recipients.has(id))) throw badRequest('wraps must hold exactly the recipients');
  for (const id of ids) {
    const bytes = b64uDecode(wraps[id]!);
    if (bytes === null || bytes.length === 0) throw badRequest('each wrap must be non-empty base64url without padding');
    if (hex(await sha256(bytes)) !== recipients.get(id)) throw badRequest(`the wrap for ${id} does not match its SHA-256 in recipients`);
  }
  const signer = await signerOf(c, vault.id, {
    purpose: 'epoch',
    fields: epochFields(v),
    issuer: v.issuer,
    signature,
    paperKeys,
    only: c.var.deviceId,
  });
  const deviceRecipients = ids.filter((id) => id !== RECOVERY).sort();
  if (deviceRecipients.length > 0) {
    const members = new Map((await listMembers(c.env.DB, vault.id)).map((d) => [d.id, d]));
    for (const id of deviceRecipients) {
      const d = members.get(id);
      if (d === undefined || d.revoked_at !== null) throw badRequest(`recipient ${id} is not an unrevoked device of this vault`);
    }
  }
  const rec = { ...v, wraps };
  return {
    rec,
    input: {
      vaultId: vault.id,
      epoch: v.epoch,
      keyId: v.keyId,
      prevKeyId: v.prevKeyId,
      markCursor: v.markCursor,
      markSeq: v.markSeq,
      record: epochJson(v),
      wraps,
      deviceRecipients,
      signer,
      postedBy: c.var.deviceId,
      now: Date.now(),
    },
  };
}

/**
 * The answer to an epoch the transaction did not insert: the same 201 for a
 * retry of the record already stored, 409 `conflict` with the heads when the
 * vault is not where the record says, else what changed meanwhile.
 */
async function notInserted(c: Ctx, e: CheckedEpoch, out: EpochOutcome): Promise<Response> {
  const stored = parsed<EpochRecord>(out.stored);
  if (stored !== null && stored.keyId === e.rec.keyId && stored.signature === e.rec.signature) {
    return epochAnswer(c, e.rec.epoch, e.rec.keyId);
  }
  const b = out.before;
  if (b.epoch !== e.rec.epoch - 1 || b.keyId !== e.rec.prevKeyId || b.head !== e.rec.markCursor || b.seq !== e.rec.markSeq) {
    throw new ApiError(409, 'conflict', 'the vault is not at the epoch, key id or heads the record names', {}, { head: b.head, seq: b.seq, epoch: b.epoch });
  }
  // The vault was where the record says: a recipient or the signer was revoked (or the paper replaced) meanwhile.
  const me = await getMember(c.env.DB, c.var.vaultId, c.var.deviceId);
  if (me === null || me.revoked_at !== null) throw revoked();
  throw new ApiError(409, 'conflict', 'a recipient or the signer stopped counting meanwhile; read the devices and try again', {}, {
    head: b.head,
    seq: b.seq,
    epoch: b.epoch,
  });
}

function announceEpoch(c: Ctx, epoch: number): void {
  // Best effort: a device that misses it learns the epoch from its next token.
  c.executionCtx.waitUntil(announce(c.env, c.var.vaultId, { kind: 'epoch', epoch }).catch(() => undefined));
}

keyRoutes.get('/:vaultId/epochs', requireDevice(), async (c) => {
  const after = intQuery(c, 'after', 0, Number.MAX_SAFE_INTEGER, 0);
  const forText = c.req.query('for');
  const forIds = forText === undefined || forText === '' ? [] : [...new Set(forText.split(','))];
  for (const id of forIds) {
    if (id !== RECOVERY && id !== c.var.deviceId) throw badRequest(`for names the calling device's id and/or "${RECOVERY}"`);
  }
  const out = await listEpochs(c.env.DB, c.var.vaultId, after, forIds);
  return c.json({
    epoch: out.epoch,
    keyId: out.keyId,
    records: out.records.map((r) => ({ ...(JSON.parse(r.record) as EpochRecord), wraps: r.wraps })),
  });
});

/** 201 with the epoch now in force; its answer names it in X-Casa-Epoch too (worker/auth.ts requireDevice). */
function epochAnswer(c: Context<AppEnv>, epoch: number, keyId: string) {
  c.set('epochNow', `${epoch}.${keyId}`);
  return c.json({ epoch, keyId }, 201);
}

keyRoutes.post('/:vaultId/epochs', requireDevice(), jsonBodyLimitOf(LARGE_JSON_BODY_LIMIT), async (c) => {
  const vault = await getVaultKeyState(c.env.DB, c.var.vaultId);
  if (vault === null) throw notFound();
  const e = await checkEpoch(c, vault, await readJson(c), [vault.auth_public_key]);
  const out = await insertEpoch(c.env.DB, e.input);
  if (!out.inserted) return notInserted(c, e, out);
  announceEpoch(c, e.rec.epoch);
  return epochAnswer(c, e.rec.epoch, e.rec.keyId);
});

// ---- paper replacement -------------------------------------------------------

keyRoutes.post('/:vaultId/recovery', requireDevice(), jsonBodyLimitOf(LARGE_JSON_BODY_LIMIT), async (c) => {
  const vaultId = c.var.vaultId;
  const body = await readJson(c);
  const r = body.recovery;
  if (!isRecoveryRecord(r)) throw badRequest('recovery must be a paper replacement record');
  if (r.vaultId !== vaultId) throw badRequest('the replacement names another vault');
  const authKey = key32(r.authKey, 'recovery.authKey');
  checkPublicKey('recovery.authKey', authKey);
  key32(r.exchangeKey, 'recovery.exchangeKey');
  const members = r.members === '' ? [] : r.members.split(',');
  if (!members.every((id, i) => isDeviceId(id) && (i === 0 || id > members[i - 1]!))) {
    throw badRequest('recovery.members must be device ids, sorted, comma-separated');
  }
  const sigOld = signature64(r.signatureOld, 'recovery.signatureOld');
  const sigNew = signature64(r.signatureNew, 'recovery.signatureNew');
  const vault = await getVaultKeyState(c.env.DB, vaultId);
  if (vault === null) throw notFound();
  const record = recoveryJson(r);
  if (r.n !== vault.recovery_n + 1) {
    // A retry whose answer was lost: this replacement and its epoch are the ones stored.
    const e = body.epoch;
    if (r.n <= vault.recovery_n && isEpochRecord(e)) {
      const stored = await storedPaperAndEpoch(c.env.DB, vaultId, r.n, e.epoch);
      const epoch = parsed<EpochRecord>(stored.epoch);
      if (stored.paper === record && epoch?.keyId === e.keyId && epoch.signature === e.signature) return epochAnswer(c, e.epoch, e.keyId);
    }
    throw new ApiError(409, 'conflict', `the next replacement of this paper is n = ${vault.recovery_n + 1}`);
  }
  const fields = recoveryFields(r);
  if (!verifySigned('recovery', fields, sigOld, storedKey(vault.auth_public_key))) throw unauthorized("bad signatureOld: not the current paper's");
  if (!verifySigned('recovery', fields, sigNew, authKey)) throw unauthorized("bad signatureNew: not authKey's");
  const e = await checkEpoch(c, vault, body.epoch, [r.authKey, vault.auth_public_key]);
  if (e.rec.recoveryKey !== r.exchangeKey || !Object.hasOwn(e.rec.wraps, RECOVERY)) throw badRequest('the epoch must be sealed to the new paper');
  if (await recoveryIdTaken(c, r.recoveryId)) throw new ApiError(409, 'conflict', 'this recovery id is taken');
  // The id is global: claimed in the index before the replacement, given back if it does not happen.
  if (!(await claimRecoveryId(c.env.INDEX, r.recoveryId, vaultId))) throw new ApiError(409, 'conflict', 'this recovery id is taken');
  // Signed by either paper, the epoch stands or falls with the old one still being the vault's (the replacement's guard).
  const epoch = e.input.signer.paperKey !== null ? { ...e.input, signer: { paperKey: vault.auth_public_key, deviceId: null } } : e.input;
  const out = await replacePaper(c.env.DB, { vaultId, n: r.n, recoveryId: r.recoveryId, oldAuthKey: vault.auth_public_key, authKey: r.authKey, record, epoch });
  if (!out.inserted) {
    if (out.storedPaper === record) return epochAnswer(c, e.rec.epoch, e.rec.keyId); // a retry
    if ((await listRecoveryIds(c, vaultId)) !== r.recoveryId) await releaseRecoveryId(c.env.INDEX, r.recoveryId, vaultId);
    if (out.recoveryN !== vault.recovery_n || out.authKey !== vault.auth_public_key) {
      throw new ApiError(409, 'conflict', 'the paper was replaced meanwhile');
    }
    if (await recoveryIdTaken(c, r.recoveryId)) throw new ApiError(409, 'conflict', 'this recovery id is taken');
    return notInserted(c, e, { ...out, stored: null });
  }
  await keepRecoveryId(c.env.INDEX, vaultId, r.recoveryId);
  announceEpoch(c, e.rec.epoch);
  return epochAnswer(c, e.rec.epoch, e.rec.keyId);
});

/** True if `id` is a vault's id, or another vault's recovery id (the index, confirmed by that vault's object). */
async function recoveryIdTaken(c: Context<AppEnv>, id: string): Promise<boolean> {
  if (await vaultStub(c.env, id).isVault(id)) return true;
  const holder = await vaultOfRecoveryId(c.env.INDEX, id);
  if (holder === null) return false;
  if (holder === c.var.vaultId) return (await listRecoveryIds(c, holder)) === id;
  return (await vaultStub(c.env, holder).recoveryVault(holder, id)) === holder;
}

/** This vault's current recovery id, if its paper was replaced. */
async function listRecoveryIds(c: Context<AppEnv>, vaultId: string): Promise<string | null> {
  const row = await c.env.DB.prepare('SELECT recovery_id FROM recovery_ids WHERE vault_id = ?1').bind(vaultId).first<{ recovery_id: string }>();
  return row?.recovery_id ?? null;
}

keyRoutes.get('/:vaultId/recovery', requireDevice(), async (c) => {
  const records = await listRecoveryRecords(c.env.DB, c.var.vaultId);
  return c.json({ records: records.map((r) => JSON.parse(r) as RecoveryRecord) });
});

recoveryRoutes.get('/:recoveryId', limitByIp('ENROLL_LIMITER'), async (c) => {
  const recoveryId = c.req.param('recoveryId');
  if (!isVaultId(recoveryId)) throw badRequest('recoveryId must be 32 lowercase hex characters');
  // Runs in the Worker: the index names a replaced paper's vault, whose object confirms it; else a vault of that id never replaced.
  const indexed = await vaultOfRecoveryId(c.env.INDEX, recoveryId);
  const vaultId =
    (indexed === null ? null : await vaultStub(c.env, indexed).recoveryVault(indexed, recoveryId)) ??
    (await vaultStub(c.env, recoveryId).recoveryVault(recoveryId, recoveryId));
  if (vaultId === null) throw notFound();
  return c.json({ vaultId });
});

// ---- the audit log -----------------------------------------------------------

keyRoutes.get('/:vaultId/log', requireDevice(), async (c) => {
  const limit = intQuery(c, 'limit', 1, LOG_MAX_LIMIT, LOG_DEFAULT_LIMIT);
  const rows = await readLog(c.env.DB, c.var.vaultId, limit);
  return c.json({ events: rows.map((r) => ({ at: r.at, event: r.event, deviceId: r.device_id, actorId: r.actor_id })) });
});
