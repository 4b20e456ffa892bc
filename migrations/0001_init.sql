-- casa relay, schema 1: vaults, their devices, single-use auth challenges and
-- the audit log. The relay stores public keys and ciphertext only.
-- Binary values are stored as base64url text without padding (as on the wire);
-- times are milliseconds since the Unix epoch.
-- Applied by `wrangler d1 migrations apply` in production and by the local
-- launcher (src/local-relay/launcher.ts) with the same d1_migrations bookkeeping.

CREATE TABLE vaults (
  id              TEXT PRIMARY KEY CHECK (length(id) = 32),  -- 32 lowercase hex, derived from the phrase
  auth_public_key TEXT NOT NULL,                             -- Ed25519 vault auth key, b64u
  canary          TEXT NOT NULL,                             -- encrypted canary object, b64u
  created_at      INTEGER NOT NULL
);

CREATE TABLE devices (
  id           TEXT PRIMARY KEY CHECK (length(id) = 16),     -- 16 lowercase hex, chosen by the relay
  vault_id     TEXT NOT NULL REFERENCES vaults (id),
  public_key   TEXT NOT NULL,                                -- Ed25519 device key, b64u
  name         TEXT NOT NULL,
  created_at   INTEGER NOT NULL,
  last_seen_at INTEGER,                                      -- last token issued
  revoked_at   INTEGER                                       -- NULL while the device may authenticate
);
CREATE INDEX devices_vault ON devices (vault_id, created_at);
CREATE UNIQUE INDEX devices_vault_key ON devices (vault_id, public_key);

CREATE TABLE challenges (
  challenge  TEXT PRIMARY KEY,                               -- 32 random bytes, b64u; single use
  vault_id   TEXT NOT NULL,
  device_id  TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
);
CREATE INDEX challenges_expires ON challenges (expires_at);

CREATE TABLE audit_log (
  id        INTEGER PRIMARY KEY AUTOINCREMENT,
  vault_id  TEXT NOT NULL,
  device_id TEXT,                                            -- the device the event is about
  actor_id  TEXT,                                            -- the device that acted (revoke), if any
  event     TEXT NOT NULL,                                   -- vault_created | device_enrolled | device_revoked | token_issued
  at        INTEGER NOT NULL
);
CREATE INDEX audit_log_vault ON audit_log (vault_id, at);
