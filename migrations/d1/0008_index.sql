-- casa relay, the global index (D1): the only state that is not one vault's.
-- Everything about a vault lives in its own Durable Object (worker/vault.ts,
-- schema migrations/*.sql); D1 only finds a vault from what the caller
-- knows when it does not know the vault id: a pairing nameplate (the join
-- side of pairing by code) and a replaced paper's recovery id
-- (GET /v1/recovery/{recoveryId}). The vault's object stays the truth: an
-- index row is checked against it before it is trusted.
-- Applied by `wrangler d1 migrations apply` (migrations_dir migrations/d1)
-- and by the local launcher with the same d1_migrations bookkeeping.

-- A nameplate → the vault whose pairing session holds it. A nameplate is
-- taken over only once its session expired, or ended more than a minute ago
-- (ended_at, set by the vault's object when the session is failed, done or
-- cancelled), as in migrations/0003_pairing.sql. The Worker's cron deletes
-- rows an hour past their expiry.
CREATE TABLE pairing_nameplates (
  nameplate  TEXT PRIMARY KEY,
  vault_id   TEXT NOT NULL CHECK (length(vault_id) = 32),
  expires_at INTEGER NOT NULL,
  ended_at   INTEGER
);
CREATE INDEX pairing_nameplates_expires ON pairing_nameplates (expires_at);

-- The current replacement paper's id → its vault. A vault whose paper was
-- never replaced is found by its own id instead (its object answers).
-- (An older relay's D1 already has this table, from 0007_keys.sql.)
CREATE TABLE IF NOT EXISTS recovery_ids (
  recovery_id TEXT PRIMARY KEY CHECK (length(recovery_id) = 32),
  vault_id    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recovery_ids_vault ON recovery_ids (vault_id);
