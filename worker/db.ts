/**
 * Every SQL statement the relay runs, one small function each, with numbered
 * bound parameters (?1, ?2, ...) only. Schema: migrations/0001_init.sql.
 * Writes that belong together (a row and its audit entry) go in one batch(),
 * which D1 runs as one transaction.
 */

export interface VaultRow {
  id: string;
  auth_public_key: string;
  canary: string;
  created_at: number;
}

export interface DeviceRow {
  id: string;
  vault_id: string;
  public_key: string;
  name: string;
  created_at: number;
  last_seen_at: number | null;
  revoked_at: number | null;
}

const DEVICE_COLUMNS = 'id, vault_id, public_key, name, created_at, last_seen_at, revoked_at';

export type AuditEvent =
  | 'vault_created'
  | 'device_enrolled'
  | 'device_certified'
  | 'device_revoked'
  | 'token_issued'
  | 'epoch_created'
  | 'paper_replaced'
  | 'pairing_opened'
  | 'snapshot_committed';

function audit(db: D1Database, vaultId: string, deviceId: string | null, event: AuditEvent, at: number): D1PreparedStatement {
  return db
    .prepare('INSERT INTO audit_log (vault_id, device_id, event, at) VALUES (?1, ?2, ?3, ?4)')
    .bind(vaultId, deviceId, event, at);
}

export async function getVault(db: D1Database, vaultId: string): Promise<VaultRow | null> {
  return db
    .prepare('SELECT id, auth_public_key, canary, created_at FROM vaults WHERE id = ?1')
    .bind(vaultId)
    .first<VaultRow>();
}

/** Inserts the vault and its audit row; false if the id is taken. */
export async function createVault(db: D1Database, v: VaultRow): Promise<boolean> {
  try {
    await db.batch([
      db
        .prepare('INSERT INTO vaults (id, auth_public_key, canary, created_at) VALUES (?1, ?2, ?3, ?4)')
        .bind(v.id, v.auth_public_key, v.canary, v.created_at),
      audit(db, v.id, null, 'vault_created', v.created_at),
    ]);
    return true;
  } catch (err) {
    // A lost race or a duplicate: decide by what is there, not by the error text.
    if ((await getVault(db, v.id)) !== null) return false;
    throw err;
  }
}

export async function getDevice(db: D1Database, vaultId: string, deviceId: string): Promise<DeviceRow | null> {
  return db
    .prepare(`SELECT ${DEVICE_COLUMNS} FROM devices WHERE vault_id = ?1 AND id = ?2`)
    .bind(vaultId, deviceId)
    .first<DeviceRow>();
}

/** The device row with its vault's current epoch and key id (requireDevice's one read per request). */
export async function getDeviceWithEpoch(
  db: D1Database,
  vaultId: string,
  deviceId: string,
): Promise<(DeviceRow & { epoch: number; epoch_key_id: string }) | null> {
  return db
    .prepare(
      `SELECT ${DEVICE_COLUMNS.split(', ').map((c) => `d.${c}`).join(', ')}, v.epoch, v.epoch_key_id
       FROM devices d JOIN vaults v ON v.id = d.vault_id WHERE d.vault_id = ?1 AND d.id = ?2`,
    )
    .bind(vaultId, deviceId)
    .first();
}

export async function getDeviceByKey(db: D1Database, vaultId: string, publicKey: string): Promise<DeviceRow | null> {
  return db
    .prepare(`SELECT ${DEVICE_COLUMNS} FROM devices WHERE vault_id = ?1 AND public_key = ?2`)
    .bind(vaultId, publicKey)
    .first<DeviceRow>();
}

export async function insertChallenge(
  db: D1Database,
  c: { challenge: string; vaultId: string; deviceId: string; createdAt: number; expiresAt: number },
): Promise<void> {
  await db
    .prepare('INSERT INTO challenges (challenge, vault_id, device_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)')
    .bind(c.challenge, c.vaultId, c.deviceId, c.createdAt, c.expiresAt)
    .run();
}

/** Deletes the challenge (single use, whatever happens next); its expiry if it was this device's, else null. */
export async function consumeChallenge(
  db: D1Database,
  vaultId: string,
  deviceId: string,
  challenge: string,
): Promise<number | null> {
  const row = await db
    .prepare('DELETE FROM challenges WHERE challenge = ?1 AND vault_id = ?2 AND device_id = ?3 RETURNING expires_at')
    .bind(challenge, vaultId, deviceId)
    .first<{ expires_at: number }>();
  return row === null ? null : row.expires_at;
}

export async function deleteExpiredChallenges(db: D1Database, now: number): Promise<number> {
  const res = await db.prepare('DELETE FROM challenges WHERE expires_at <= ?1').bind(now).run();
  return res.meta.changes ?? 0;
}

/** Logs the token and returns the vault's current epoch and key id (migrations/0007_keys.sql). */
export async function recordTokenIssued(
  db: D1Database,
  vaultId: string,
  deviceId: string,
  now: number,
): Promise<{ epoch: number; keyId: string }> {
  const [, , vault] = await db.batch([
    db.prepare('UPDATE devices SET last_seen_at = ?3 WHERE vault_id = ?1 AND id = ?2').bind(vaultId, deviceId, now),
    audit(db, vaultId, deviceId, 'token_issued', now),
    db.prepare('SELECT epoch, epoch_key_id AS keyId FROM vaults WHERE id = ?1').bind(vaultId),
  ]);
  const row = (vault!.results as { epoch: number; keyId: string }[])[0];
  return { epoch: row?.epoch ?? 0, keyId: row?.keyId ?? '' };
}
