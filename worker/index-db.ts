/**
 * The global index in D1 (schema: migrations/d1/0008_index.sql): from a
 * pairing nameplate or a recovery id to its vault. Everything else is in
 * the vault's own object (worker/vault.ts); these rows only say where to
 * look, and the object checks what it is asked.
 */
import { ENDED_HOLD_MS } from './pairing-db.js';

/**
 * Claims `nameplate` for the vault's new session, unless another session
 * holds it: one still live (not expired, not ended), or one that ended less
 * than ENDED_HOLD_MS ago. True if the vault has it now.
 */
export async function claimNameplate(db: D1Database, nameplate: string, vaultId: string, expiresAt: number, now: number): Promise<boolean> {
  const row = await db
    .prepare(
      `INSERT INTO pairing_nameplates (nameplate, vault_id, expires_at, ended_at) VALUES (?1, ?2, ?3, NULL)
       ON CONFLICT (nameplate) DO UPDATE SET vault_id = excluded.vault_id, expires_at = excluded.expires_at, ended_at = NULL
       WHERE pairing_nameplates.expires_at <= ?4
          OR (pairing_nameplates.ended_at IS NOT NULL AND pairing_nameplates.ended_at <= ?5)
       RETURNING nameplate`,
    )
    .bind(nameplate, vaultId, expiresAt, now, now - ENDED_HOLD_MS)
    .first();
  return row !== null;
}

/** Gives back a claim the vault's object did not use (its session was not created). */
export async function releaseNameplate(db: D1Database, nameplate: string, vaultId: string, expiresAt: number): Promise<void> {
  await db
    .prepare('DELETE FROM pairing_nameplates WHERE nameplate = ?1 AND vault_id = ?2 AND expires_at = ?3')
    .bind(nameplate, vaultId, expiresAt)
    .run();
}

/** The session under the nameplate ended (failed, done, cancelled): the nameplate is free ENDED_HOLD_MS after `at`. */
export async function endNameplate(db: D1Database, nameplate: string, vaultId: string, at: number): Promise<void> {
  await db
    .prepare('UPDATE pairing_nameplates SET ended_at = ?3 WHERE nameplate = ?1 AND vault_id = ?2 AND ended_at IS NULL')
    .bind(nameplate, vaultId, at)
    .run();
}

export async function vaultOfNameplate(db: D1Database, nameplate: string): Promise<string | null> {
  const row = await db.prepare('SELECT vault_id FROM pairing_nameplates WHERE nameplate = ?1').bind(nameplate).first<{ vault_id: string }>();
  return row?.vault_id ?? null;
}

/** The cron: deletes up to `limit` nameplates that expired before `cutoff`. */
export async function deleteOldNameplates(db: D1Database, cutoff: number, limit: number): Promise<number> {
  const res = await db
    .prepare('DELETE FROM pairing_nameplates WHERE nameplate IN (SELECT nameplate FROM pairing_nameplates WHERE expires_at < ?1 LIMIT ?2)')
    .bind(cutoff, limit)
    .run();
  return res.meta.changes ?? 0;
}

/** The vault the recovery id is indexed under, if any (to be confirmed by its object). */
export async function vaultOfRecoveryId(db: D1Database, recoveryId: string): Promise<string | null> {
  const row = await db.prepare('SELECT vault_id FROM recovery_ids WHERE recovery_id = ?1').bind(recoveryId).first<{ vault_id: string }>();
  return row?.vault_id ?? null;
}

/** Claims the recovery id for the vault; false if another vault holds it. */
export async function claimRecoveryId(db: D1Database, recoveryId: string, vaultId: string): Promise<boolean> {
  await db
    .prepare('INSERT INTO recovery_ids (recovery_id, vault_id) VALUES (?1, ?2) ON CONFLICT (recovery_id) DO NOTHING')
    .bind(recoveryId, vaultId)
    .run();
  return (await vaultOfRecoveryId(db, recoveryId)) === vaultId;
}

/** After the replacement: the vault is found by `recoveryId` only. */
export async function keepRecoveryId(db: D1Database, vaultId: string, recoveryId: string): Promise<void> {
  await db.prepare('DELETE FROM recovery_ids WHERE vault_id = ?1 AND recovery_id <> ?2').bind(vaultId, recoveryId).run();
}

/** Gives back a claim the replacement did not use. */
export async function releaseRecoveryId(db: D1Database, recoveryId: string, vaultId: string): Promise<void> {
  await db.prepare('DELETE FROM recovery_ids WHERE recovery_id = ?1 AND vault_id = ?2').bind(recoveryId, vaultId).run();
}
