/**
 * The SQL of pairing sessions (schema: migrations/0003_pairing.sql), in the
 * style of db.ts: one small function each, numbered bound parameters.
 *
 * Every state change is one conditional UPDATE (… WHERE state = 'open' AND
 * expires_at > now, and so on), so two requests racing for the same move
 * cannot both win: the one that changed no row lost. Creation is one
 * INSERT … SELECT that counts the vault's live sessions as it inserts, and
 * takes over a nameplate whose session is over, in the same statement.
 */

export type PairingState = 'open' | 'joined' | 'confirmed' | 'failed' | 'done' | 'cancelled';

export interface PairingRow {
  nameplate: string;
  vault_id: string;
  offer_device_id: string;
  sid: string;
  msg_a: string;
  msg_b: string | null;
  msg_final: string | null;
  join_token_hash: string | null;
  joined_device_id: string | null;
  state: PairingState;
  created_at: number;
  expires_at: number;
  updated_at: number;
}

const COLUMNS =
  'nameplate, vault_id, offer_device_id, sid, msg_a, msg_b, msg_final, join_token_hash, joined_device_id, state, created_at, expires_at, updated_at';

/** States a session can still move out of (while it has not expired). */
const LIVE = "('open', 'joined', 'confirmed')";
/** A session that ended (failed, done, cancelled) keeps its nameplate this long, so both sides can see how it ended. */
export const ENDED_HOLD_MS = 60 * 1000;

export async function getPairing(db: D1Database, nameplate: string): Promise<PairingRow | null> {
  return db.prepare(`SELECT ${COLUMNS} FROM pairing_sessions WHERE nameplate = ?1`).bind(nameplate).first<PairingRow>();
}

/** The session if it belongs to the vault (else null, as if there were none). */
export async function getVaultPairing(db: D1Database, vaultId: string, nameplate: string): Promise<PairingRow | null> {
  return db
    .prepare(`SELECT ${COLUMNS} FROM pairing_sessions WHERE nameplate = ?1 AND vault_id = ?2`)
    .bind(nameplate, vaultId)
    .first<PairingRow>();
}

/** Open, joined or confirmed sessions of the vault that have not expired. */
export async function countLivePairings(db: D1Database, vaultId: string, now: number): Promise<number> {
  const row = await db
    .prepare(`SELECT COUNT(*) AS n FROM pairing_sessions WHERE vault_id = ?1 AND state IN ${LIVE} AND expires_at > ?2`)
    .bind(vaultId, now)
    .first<{ n: number }>();
  return row?.n ?? 0;
}

export interface NewPairing {
  nameplate: string;
  vaultId: string;
  offerDeviceId: string;
  sid: string;
  msgA: string;
  now: number;
  expiresAt: number;
}

/**
 * Opens the session under `p.nameplate` unless the vault already has
 * `maxLive` live sessions. A row under the same nameplate is replaced only
 * if it expired, or ended more than ENDED_HOLD_MS ago. 'created', or why
 * not: 'full' (the vault's limit) or 'taken' (the nameplate is in use).
 */
export async function createPairing(db: D1Database, p: NewPairing, maxLive: number): Promise<'created' | 'full' | 'taken'> {
  const [created] = await db.batch([
    db
      .prepare(
        `INSERT INTO pairing_sessions (nameplate, vault_id, offer_device_id, sid, msg_a, state, created_at, expires_at, updated_at)
         SELECT ?1, ?2, ?3, ?4, ?5, 'open', ?6, ?7, ?6
         WHERE (SELECT COUNT(*) FROM pairing_sessions WHERE vault_id = ?2 AND state IN ${LIVE} AND expires_at > ?6) < ?8
         ON CONFLICT (nameplate) DO UPDATE SET
           vault_id = excluded.vault_id, offer_device_id = excluded.offer_device_id, sid = excluded.sid, msg_a = excluded.msg_a,
           msg_b = NULL, msg_final = NULL, join_token_hash = NULL, joined_device_id = NULL, state = 'open',
           created_at = excluded.created_at, expires_at = excluded.expires_at, updated_at = excluded.updated_at
         WHERE pairing_sessions.expires_at <= ?6
            OR (pairing_sessions.state NOT IN ${LIVE} AND pairing_sessions.updated_at <= ?9)
         RETURNING nameplate`,
      )
      .bind(p.nameplate, p.vaultId, p.offerDeviceId, p.sid, p.msgA, p.now, p.expiresAt, maxLive, p.now - ENDED_HOLD_MS),
    // Audited when this call opened it (its sid is there: random, this request's own).
    db
      .prepare(
        `INSERT INTO audit_log (vault_id, device_id, event, at)
         SELECT ?2, ?3, 'pairing_opened', ?5 FROM pairing_sessions WHERE nameplate = ?1 AND vault_id = ?2 AND sid = ?4 AND created_at = ?5`,
      )
      .bind(p.nameplate, p.vaultId, p.offerDeviceId, p.sid, p.now),
  ]);
  if (created!.results.length > 0) return 'created';
  return (await countLivePairings(db, p.vaultId, p.now)) >= maxLive ? 'full' : 'taken';
}

/** open → joined (single use): stores msgB and the token's hash; the session's expiry, or null if it was not open. */
export async function joinPairing(
  db: D1Database,
  nameplate: string,
  msgB: string,
  tokenHash: string,
  now: number,
): Promise<number | null> {
  const row = await db
    .prepare(
      `UPDATE pairing_sessions SET msg_b = ?2, join_token_hash = ?3, state = 'joined', updated_at = ?4
       WHERE nameplate = ?1 AND state = 'open' AND expires_at > ?4 RETURNING expires_at`,
    )
    .bind(nameplate, msgB, tokenHash, now)
    .first<{ expires_at: number }>();
  return row === null ? null : row.expires_at;
}

/** joined → confirmed (with msgFinal) or, msgFinal null, joined → failed (burned). False if it was not joined or expired. */
export async function finishPairing(
  db: D1Database,
  vaultId: string,
  nameplate: string,
  msgFinal: string | null,
  now: number,
): Promise<boolean> {
  const res = await db
    .prepare(
      `UPDATE pairing_sessions SET state = CASE WHEN ?3 IS NULL THEN 'failed' ELSE 'confirmed' END, msg_final = ?3, updated_at = ?4
       WHERE nameplate = ?1 AND vault_id = ?2 AND state = 'joined' AND expires_at > ?4`,
    )
    .bind(nameplate, vaultId, msgFinal, now)
    .run();
  return (res.meta.changes ?? 0) === 1;
}

/** Any live state → cancelled (expired or not); the session after, or null if the vault has none by that nameplate. */
export async function cancelPairing(db: D1Database, vaultId: string, nameplate: string, now: number): Promise<PairingRow | null> {
  await db
    .prepare(`UPDATE pairing_sessions SET state = 'cancelled', updated_at = ?3 WHERE nameplate = ?1 AND vault_id = ?2 AND state IN ${LIVE}`)
    .bind(nameplate, vaultId, now)
    .run();
  return getVaultPairing(db, vaultId, nameplate);
}

/**
 * confirmed → done, naming the device the joiner enrolled: only with the
 * join token's hash, before expiry, and if the device is an enrolled,
 * unrevoked device of the session's vault. False otherwise.
 */
export async function completePairing(
  db: D1Database,
  nameplate: string,
  tokenHash: string,
  deviceId: string,
  now: number,
): Promise<boolean> {
  const res = await db
    .prepare(
      `UPDATE pairing_sessions SET state = 'done', joined_device_id = ?3, updated_at = ?4
       WHERE nameplate = ?1 AND join_token_hash = ?2 AND state = 'confirmed' AND expires_at > ?4
         AND EXISTS (SELECT 1 FROM devices d
                     WHERE d.vault_id = pairing_sessions.vault_id AND d.id = ?3 AND d.revoked_at IS NULL)`,
    )
    .bind(nameplate, tokenHash, deviceId, now)
    .run();
  return (res.meta.changes ?? 0) === 1;
}

/** Retention: deletes up to `limit` sessions that expired before `cutoff`; how many. */
export async function deleteOldPairings(db: D1Database, cutoff: number, limit: number): Promise<number> {
  const res = await db
    .prepare(
      `DELETE FROM pairing_sessions WHERE nameplate IN
         (SELECT nameplate FROM pairing_sessions WHERE expires_at < ?1 LIMIT ?2)`,
    )
    .bind(cutoff, limit)
    .run();
  return res.meta.changes ?? 0;
}
