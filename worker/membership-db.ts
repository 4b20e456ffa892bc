/**
 * The SQL of membership and key epochs (schema: migrations/0007_keys.sql;
 * docs/RELAY-API.md "Membership and epochs"), in the style of db.ts: one
 * small function each, numbered bound parameters, and every write with its
 * audit row in one batch (one D1 transaction).
 *
 * The routes check signatures before they write; the writes re-check, in
 * their own transaction, what a concurrent request could have changed
 * since: that the signer is still the paper (the vault's current
 * auth_public_key) or a certified, unrevoked device, and for an epoch that
 * the vault is still at the epoch, key id and heads the record names. A
 * write that follows a guarded insert recognises it by the inserted row
 * together with a state only this batch can have seen (the insert and the
 * vault's counter move in the same batch, the counter last).
 */
import type { DeviceRow } from './db.js';

/** The vault's row as membership needs it. */
export interface VaultKeyState {
  id: string;
  auth_public_key: string;
  canary: string;
  epoch: number;
  epoch_key_id: string;
  recovery_n: number;
}

/** Who signed a record: the paper (by its key as verified) or a device (by id). */
export type Signer = { paperKey: string; deviceId: null } | { paperKey: null; deviceId: string };

/** The heads an epoch record's mark is checked against, with the vault's epoch. */
export interface Heads {
  epoch: number;
  keyId: string;
  /** The changeset head (0 before any). */
  head: number;
  /** The snapshot head's seq (0 before any). */
  seq: number;
}

/**
 * SQL true while vault ?1 takes objects sealed under the key id `k` (an SQL
 * expression): at epoch 0 (a version-1 vault) any, else only its current
 * epoch's. Used inside the changeset push, the manifest upload and the
 * commit, so an epoch posted meanwhile is seen by the same transaction.
 */
export const currentKeyId = (k: string): string => `(SELECT v.epoch = 0 OR v.epoch_key_id = ${k} FROM vaults v WHERE v.id = ?1)`;

export async function getVaultKeyState(db: D1Database, vaultId: string): Promise<VaultKeyState | null> {
  return db
    .prepare('SELECT id, auth_public_key, canary, epoch, epoch_key_id, recovery_n FROM vaults WHERE id = ?1')
    .bind(vaultId)
    .first<VaultKeyState>();
}

/**
 * SQL true while `signer` may still sign for vault ?1: the paper key bound
 * at ?k is the vault's current one, or the device bound at ?d is certified
 * and unrevoked. Bind the signer's paperKey at ?k and deviceId at ?d.
 */
function signerStill(k: number, d: number): string {
  return `((?${k} IS NOT NULL AND (SELECT auth_public_key FROM vaults WHERE id = ?1) = ?${k})
    OR (?${d} IS NOT NULL AND EXISTS (SELECT 1 FROM devices WHERE vault_id = ?1 AND id = ?${d} AND revoked_at IS NULL AND cert IS NOT NULL)))`;
}

function auditRow(
  db: D1Database,
  where: string,
  binds: unknown[],
): D1PreparedStatement {
  return db.prepare(`INSERT INTO audit_log (vault_id, device_id, actor_id, event, at) ${where}`).bind(...binds);
}

// ---- devices -----------------------------------------------------------------

export interface NewMember {
  vaultId: string;
  deviceId: string;
  publicKey: string;
  name: string;
  cert: string;
  signer: Signer;
  now: number;
}

/**
 * Inserts the enrolled device with its certificate and the `device_enrolled`
 * audit row (actor: the vouching device), if the signer still may sign.
 * False if nothing was inserted (the key or the id exists, or the signer
 * was revoked or replaced meanwhile).
 */
export async function insertMember(db: D1Database, m: NewMember): Promise<boolean> {
  const [inserted] = await db.batch([
    db
      .prepare(
        `INSERT INTO devices (id, vault_id, public_key, name, created_at, cert)
         SELECT ?2, ?1, ?3, ?4, ?5, ?6 WHERE ${signerStill(7, 8)}
           AND NOT EXISTS (SELECT 1 FROM devices WHERE id = ?2 OR (vault_id = ?1 AND public_key = ?3))`,
      )
      .bind(m.vaultId, m.deviceId, m.publicKey, m.name, m.now, m.cert, m.signer.paperKey, m.signer.deviceId),
    auditRow(
      db,
      `SELECT ?1, ?2, ?4, 'device_enrolled', ?3 FROM devices WHERE vault_id = ?1 AND id = ?2 AND created_at = ?3 AND cert = ?5`,
      [m.vaultId, m.deviceId, m.now, m.signer.deviceId, m.cert],
    ),
  ]);
  return (inserted!.meta.changes ?? 0) === 1;
}

/** True if a device of this vault has this id (the database is the vault's own object: ids are unique within a vault). */
export async function deviceIdTaken(db: D1Database, deviceId: string): Promise<boolean> {
  return (await db.prepare('SELECT 1 AS ok FROM devices WHERE id = ?1').bind(deviceId).first()) !== null;
}

/**
 * Replaces an unrevoked device's certificate (and its name, from the
 * certificate) if the signer still may sign; audited `device_certified`
 * (actor: the vouching device) when the certificate changed. False if
 * nothing was written.
 */
export async function replaceCert(
  db: D1Database,
  c: { vaultId: string; deviceId: string; name: string; cert: string; signer: Signer; now: number },
): Promise<boolean> {
  const guard = `vault_id = ?1 AND id = ?2 AND revoked_at IS NULL AND ${signerStill(5, 6)}`;
  const [, updated] = await db.batch([
    auditRow(db, `SELECT ?1, ?2, ?6, 'device_certified', ?7 FROM devices WHERE ${guard} AND cert IS NOT ?4`, [
      c.vaultId,
      c.deviceId,
      c.name,
      c.cert,
      c.signer.paperKey,
      c.signer.deviceId,
      c.now,
    ]),
    db.prepare(`UPDATE devices SET cert = ?4, name = ?3 WHERE ${guard}`).bind(c.vaultId, c.deviceId, c.name, c.cert, c.signer.paperKey, c.signer.deviceId),
  ]);
  return (updated!.meta.changes ?? 0) === 1;
}

export interface MemberRow extends DeviceRow {
  cert: string | null;
  revocation: string | null;
}

export async function listMembers(db: D1Database, vaultId: string): Promise<MemberRow[]> {
  const { results } = await db
    .prepare(
      `SELECT id, vault_id, public_key, name, created_at, last_seen_at, revoked_at, cert, revocation
       FROM devices WHERE vault_id = ?1 ORDER BY created_at, id`,
    )
    .bind(vaultId)
    .all<MemberRow>();
  return results;
}

export async function getMember(db: D1Database, vaultId: string, deviceId: string): Promise<MemberRow | null> {
  return db
    .prepare(
      `SELECT id, vault_id, public_key, name, created_at, last_seen_at, revoked_at, cert, revocation
       FROM devices WHERE vault_id = ?1 AND id = ?2`,
    )
    .bind(vaultId, deviceId)
    .first<MemberRow>();
}

/**
 * Revokes the device with its signed revocation (once: a second call keeps
 * the first time and record), if the signer still may sign; audited
 * `device_revoked` (actor: the issuing device) and its pending challenges
 * dropped. Returns the row after.
 */
export async function revokeMember(
  db: D1Database,
  r: { vaultId: string; deviceId: string; revocation: string; signer: Signer; now: number },
): Promise<MemberRow | null> {
  const binds = [r.vaultId, r.deviceId, r.now, r.revocation, r.signer.paperKey, r.signer.deviceId];
  await db.batch([
    db
      .prepare(`UPDATE devices SET revoked_at = ?3, revocation = ?4 WHERE vault_id = ?1 AND id = ?2 AND revoked_at IS NULL AND ${signerStill(5, 6)}`)
      .bind(...binds),
    // Audited only when this call did the revoking (its time and record are there).
    auditRow(db, `SELECT ?1, ?2, ?3, 'device_revoked', ?4 FROM devices WHERE vault_id = ?1 AND id = ?2 AND revoked_at = ?4 AND revocation = ?5`, [
      r.vaultId,
      r.deviceId,
      r.signer.deviceId,
      r.now,
      r.revocation,
    ]),
    db.prepare('DELETE FROM challenges WHERE vault_id = ?1 AND device_id = ?2 AND EXISTS (SELECT 1 FROM devices WHERE vault_id = ?1 AND id = ?2 AND revoked_at IS NOT NULL)').bind(r.vaultId, r.deviceId),
  ]);
  return getMember(db, r.vaultId, r.deviceId);
}

// ---- epochs ------------------------------------------------------------------

const HEADS = `SELECT v.epoch AS epoch, v.epoch_key_id AS keyId,
    COALESCE((SELECT head FROM changeset_state WHERE vault_id = ?1), 0) AS head,
    (SELECT COALESCE(MAX(seq), 0) FROM snapshots WHERE vault_id = ?1) AS seq
  FROM vaults v WHERE v.id = ?1`;

export interface NewEpoch {
  vaultId: string;
  epoch: number;
  keyId: string;
  prevKeyId: string;
  markCursor: number;
  markSeq: number;
  /** The record's JSON without its wraps. */
  record: string;
  /** Recipient id → wrap (b64u). */
  wraps: Record<string, string>;
  /** The device recipients, which must stay unrevoked devices of the vault. */
  deviceRecipients: string[];
  signer: Signer;
  /** The device that posted it (the audit row's device). */
  postedBy: string;
  now: number;
}

export interface EpochOutcome {
  inserted: boolean;
  /** What the transaction saw before its insert. */
  before: Heads;
  /** The record stored under this epoch number after the transaction, if any. */
  stored: string | null;
}

/**
 * The parameters of the epoch guard, bound from ?1 at `at`…`at + 9`: the
 * vault is at the epoch before, with the previous key id, its changeset and
 * snapshot heads are the mark, every device recipient is an unrevoked
 * device of it, and the signer may still sign.
 */
function epochGuard(at: number): string {
  const p = (i: number) => `?${at + i}`;
  return `(SELECT epoch FROM vaults WHERE id = ?1) = ${p(0)} - 1
    AND (SELECT epoch_key_id FROM vaults WHERE id = ?1) = ${p(1)}
    AND COALESCE((SELECT head FROM changeset_state WHERE vault_id = ?1), 0) = ${p(2)}
    AND (SELECT COALESCE(MAX(seq), 0) FROM snapshots WHERE vault_id = ?1) = ${p(3)}
    AND NOT EXISTS (SELECT 1 FROM json_each(${p(4)}) j
      WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.vault_id = ?1 AND d.id = j.value AND d.revoked_at IS NULL))
    AND ${signerStill(at + 5, at + 6)}`;
}

function epochGuardBinds(e: NewEpoch): unknown[] {
  return [e.epoch, e.prevKeyId, e.markCursor, e.markSeq, JSON.stringify(e.deviceRecipients), e.signer.paperKey, e.signer.deviceId];
}

/** The statements that store an epoch once `ours` (an SQL condition on ?1..) holds; the vault's move comes separately. */
function epochWrites(db: D1Database, e: NewEpoch, ours: string, oursBinds: unknown[]): D1PreparedStatement[] {
  const n = oursBinds.length;
  return [
    db
      .prepare(`INSERT INTO epoch_wraps (vault_id, epoch, recipient, wrap) SELECT ?1, ?${n + 1}, j.key, j.value FROM json_each(?${n + 2}) j WHERE ${ours}`)
      .bind(...oursBinds, e.epoch, JSON.stringify(e.wraps)),
    auditRow(db, `SELECT ?1, ?${n + 1}, ?${n + 2}, 'epoch_created', ?${n + 3} WHERE ${ours}`, [...oursBinds, e.postedBy, e.signer.deviceId, e.now]),
  ];
}

/**
 * Inserts the epoch, its wraps and its audit row, and moves the vault to it,
 * in one transaction guarded by epochGuard.
 */
export async function insertEpoch(db: D1Database, e: NewEpoch): Promise<EpochOutcome> {
  // Ours: the row holds our record and the vault has not moved yet (it moves last).
  const ours = `EXISTS (SELECT 1 FROM epochs WHERE vault_id = ?1 AND epoch = ?2 AND record = ?3) AND (SELECT epoch FROM vaults WHERE id = ?1) = ?2 - 1`;
  const oursBinds = [e.vaultId, e.epoch, e.record];
  const results = await db.batch([
    db.prepare(HEADS).bind(e.vaultId),
    db
      .prepare(`INSERT INTO epochs (vault_id, epoch, record, created_at) SELECT ?1, ?2, ?3, ?4 WHERE ${epochGuard(5)}`)
      .bind(e.vaultId, e.epoch, e.record, e.now, ...epochGuardBinds(e)),
    ...epochWrites(db, e, ours, oursBinds),
    db.prepare(`UPDATE vaults SET epoch = ?2, epoch_key_id = ?4 WHERE id = ?1 AND ${ours}`).bind(...oursBinds, e.keyId),
    db.prepare('SELECT record FROM epochs WHERE vault_id = ?1 AND epoch = ?2').bind(e.vaultId, e.epoch),
  ]);
  return {
    inserted: (results[1]!.meta.changes ?? 0) === 1,
    before: (results[0]!.results as unknown as Heads[])[0]!,
    stored: (results[results.length - 1]!.results as { record: string }[])[0]?.record ?? null,
  };
}

export interface NewPaper {
  vaultId: string;
  n: number;
  recoveryId: string;
  /** The paper key the replacement's signatureOld was verified with (the vault's current one). */
  oldAuthKey: string;
  authKey: string;
  /** The RecoveryRecord's JSON. */
  record: string;
  epoch: NewEpoch;
}

export interface PaperOutcome extends EpochOutcome {
  recoveryN: number;
  authKey: string;
  /** The record stored under n after the transaction, if any. */
  storedPaper: string | null;
}

/**
 * The paper replacement and its epoch in one transaction: the record (n =
 * the vault's count + 1, signed by the paper still current), the new
 * recovery id (the only one that finds the vault from then on), the epoch
 * as insertEpoch stores it, every earlier epoch's `recovery` wrap deleted,
 * and the vault's paper key, count and epoch moved last.
 */
export async function replacePaper(db: D1Database, p: NewPaper): Promise<PaperOutcome> {
  const e = p.epoch;
  const ours = `EXISTS (SELECT 1 FROM recovery_records WHERE vault_id = ?1 AND n = ?2 AND record = ?3) AND (SELECT recovery_n FROM vaults WHERE id = ?1) = ?2 - 1`;
  const oursBinds = [p.vaultId, p.n, p.record];
  const results = await db.batch([
    db.prepare(HEADS).bind(p.vaultId),
    db.prepare('SELECT recovery_n, auth_public_key FROM vaults WHERE id = ?1').bind(p.vaultId),
    db
      .prepare(
        `INSERT INTO recovery_records (vault_id, n, record)
         SELECT ?1, ?2, ?3 WHERE (SELECT recovery_n FROM vaults WHERE id = ?1) = ?2 - 1
           AND (SELECT auth_public_key FROM vaults WHERE id = ?1) = ?4
           AND NOT EXISTS (SELECT 1 FROM vaults WHERE id = ?5)
           AND NOT EXISTS (SELECT 1 FROM recovery_ids WHERE recovery_id = ?5)
           AND ${epochGuard(6)}`,
      )
      .bind(p.vaultId, p.n, p.record, p.oldAuthKey, p.recoveryId, ...epochGuardBinds(e)),
    db.prepare(`DELETE FROM recovery_ids WHERE vault_id = ?1 AND ${ours}`).bind(...oursBinds),
    db.prepare(`INSERT INTO recovery_ids (recovery_id, vault_id) SELECT ?4, ?1 WHERE ${ours}`).bind(...oursBinds, p.recoveryId),
    db.prepare(`DELETE FROM epoch_wraps WHERE vault_id = ?1 AND recipient = 'recovery' AND epoch < ?4 AND ${ours}`).bind(...oursBinds, e.epoch),
    db.prepare(`INSERT INTO epochs (vault_id, epoch, record, created_at) SELECT ?1, ?4, ?5, ?6 WHERE ${ours}`).bind(...oursBinds, e.epoch, e.record, e.now),
    ...epochWrites(db, e, ours, oursBinds),
    auditRow(db, `SELECT ?1, ?4, NULL, 'paper_replaced', ?5 WHERE ${ours}`, [...oursBinds, e.postedBy, e.now]),
    db
      .prepare(`UPDATE vaults SET auth_public_key = ?4, recovery_n = ?2, epoch = ?5, epoch_key_id = ?6 WHERE id = ?1 AND ${ours}`)
      .bind(...oursBinds, p.authKey, e.epoch, e.keyId),
    db.prepare('SELECT record FROM epochs WHERE vault_id = ?1 AND epoch = ?2').bind(p.vaultId, e.epoch),
    db.prepare('SELECT record FROM recovery_records WHERE vault_id = ?1 AND n = ?2').bind(p.vaultId, p.n),
  ]);
  const vault = (results[1]!.results as { recovery_n: number; auth_public_key: string }[])[0]!;
  return {
    inserted: (results[2]!.meta.changes ?? 0) === 1,
    before: (results[0]!.results as unknown as Heads[])[0]!,
    stored: (results[results.length - 2]!.results as { record: string }[])[0]?.record ?? null,
    storedPaper: (results[results.length - 1]!.results as { record: string }[])[0]?.record ?? null,
    recoveryN: vault.recovery_n,
    authKey: vault.auth_public_key,
  };
}

/** The stored JSON of replacement `n` and of epoch `epoch` (null where there is none). */
export async function storedPaperAndEpoch(
  db: D1Database,
  vaultId: string,
  n: number,
  epoch: number,
): Promise<{ paper: string | null; epoch: string | null }> {
  const row = await db
    .prepare(
      `SELECT (SELECT record FROM recovery_records WHERE vault_id = ?1 AND n = ?2) AS paper,
              (SELECT record FROM epochs WHERE vault_id = ?1 AND epoch = ?3) AS epoch`,
    )
    .bind(vaultId, n, epoch)
    .first<{ paper: string | null; epoch: string | null }>();
  return { paper: row?.paper ?? null, epoch: row?.epoch ?? null };
}

/** True if `id` is a vault's id or a recovery id in use. */
export async function recoveryIdTaken(db: D1Database, id: string): Promise<boolean> {
  const row = await db
    .prepare('SELECT (EXISTS (SELECT 1 FROM vaults WHERE id = ?1) OR EXISTS (SELECT 1 FROM recovery_ids WHERE recovery_id = ?1)) AS taken')
    .bind(id)
    .first<{ taken: number }>();
  return row?.taken === 1;
}

/**
 * The vault's epoch and key id and the records of epochs above `after`, in
 * order, with the wraps of the recipients `forIds` only (one transaction).
 */
export async function listEpochs(
  db: D1Database,
  vaultId: string,
  after: number,
  forIds: string[],
): Promise<{ epoch: number; keyId: string; records: { epoch: number; record: string; wraps: Record<string, string> }[] }> {
  const [vault, epochs, wraps] = await db.batch([
    db.prepare('SELECT epoch, epoch_key_id FROM vaults WHERE id = ?1').bind(vaultId),
    db.prepare('SELECT epoch, record FROM epochs WHERE vault_id = ?1 AND epoch > ?2 ORDER BY epoch').bind(vaultId, after),
    db
      .prepare(
        `SELECT epoch, recipient, wrap FROM epoch_wraps
         WHERE vault_id = ?1 AND epoch > ?2 AND recipient IN (SELECT value FROM json_each(?3)) ORDER BY epoch, recipient`,
      )
      .bind(vaultId, after, JSON.stringify(forIds)),
  ]);
  const v = (vault!.results as { epoch: number; epoch_key_id: string }[])[0];
  const records = (epochs!.results as { epoch: number; record: string }[]).map((r) => ({ ...r, wraps: {} as Record<string, string> }));
  const byEpoch = new Map(records.map((r) => [r.epoch, r]));
  for (const w of wraps!.results as { epoch: number; recipient: string; wrap: string }[]) {
    const r = byEpoch.get(w.epoch);
    if (r) r.wraps[w.recipient] = w.wrap;
  }
  return { epoch: v?.epoch ?? 0, keyId: v?.epoch_key_id ?? '', records };
}

// ---- recovery ----------------------------------------------------------------

export async function listRecoveryRecords(db: D1Database, vaultId: string): Promise<string[]> {
  const { results } = await db.prepare('SELECT record FROM recovery_records WHERE vault_id = ?1 ORDER BY n').bind(vaultId).all<{ record: string }>();
  return results.map((r) => r.record);
}

/** The vault a paper with this id opens: its current replacement's, else a vault of that id never replaced. */
export async function findVaultByRecoveryId(db: D1Database, recoveryId: string): Promise<string | null> {
  const row = await db
    .prepare(
      `SELECT COALESCE(
         (SELECT vault_id FROM recovery_ids WHERE recovery_id = ?1),
         (SELECT id FROM vaults WHERE id = ?1 AND recovery_n = 0)) AS vault_id`,
    )
    .bind(recoveryId)
    .first<{ vault_id: string | null }>();
  return row?.vault_id ?? null;
}

// ---- the audit log -----------------------------------------------------------

export interface LogRow {
  at: number;
  event: string;
  device_id: string | null;
  actor_id: string | null;
}

/** The vault's audit events, newest first, without token_issued. */
export async function readLog(db: D1Database, vaultId: string, limit: number): Promise<LogRow[]> {
  const { results } = await db
    .prepare(
      `SELECT at, event, device_id, actor_id FROM audit_log
       WHERE vault_id = ?1 AND event <> 'token_issued' ORDER BY at DESC, id DESC LIMIT ?2`,
    )
    .bind(vaultId, limit)
    .all<LogRow>();
  return results;
}
