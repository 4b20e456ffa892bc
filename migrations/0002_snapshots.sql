-- casa relay, schema 2: snapshots (docs/RELAY-API.md "Snapshots", "Retention").
-- Packs and manifests are encrypted blobs in R2; D1 names each blob by its
-- R2 key (`packs/<vault>/<pack>/<upload id>`, `manifests/<vault>/<snapshot>/<upload id>`),
-- a fresh key per upload, so deleting a key never touches a later upload of
-- the same id. Readers trust D1; an R2 key no row names is an orphan.

CREATE TABLE packs (
  vault_id   TEXT NOT NULL,
  id         TEXT NOT NULL CHECK (length(id) = 64),          -- keyed hash of the plaintext, 64 lowercase hex
  r2_key     TEXT NOT NULL UNIQUE,
  bytes      INTEGER NOT NULL,                               -- stored (ciphertext) size
  created_at INTEGER NOT NULL,
  touched_at INTEGER NOT NULL,                               -- upload or last packs/check: restarts the grace period
  PRIMARY KEY (vault_id, id)
);
-- Retention step 2 scans the packs past their grace period.
CREATE INDEX packs_touched ON packs (touched_at);

-- A manifest uploaded for a snapshot not yet committed; the commit moves its
-- key into snapshots.manifest_key and deletes the row.
CREATE TABLE manifest_uploads (
  vault_id    TEXT NOT NULL,
  snapshot_id TEXT NOT NULL CHECK (length(snapshot_id) = 32),
  r2_key      TEXT NOT NULL UNIQUE,
  bytes       INTEGER NOT NULL,
  created_at  INTEGER NOT NULL,
  PRIMARY KEY (vault_id, snapshot_id)
);
CREATE INDEX manifest_uploads_created ON manifest_uploads (created_at);

CREATE TABLE snapshots (
  vault_id     TEXT NOT NULL,
  id           TEXT NOT NULL CHECK (length(id) = 32),        -- 32 lowercase hex, chosen by the client
  seq          INTEGER NOT NULL CHECK (seq >= 1),            -- vault-wide, parentSeq + 1
  device_id    TEXT NOT NULL,                                -- the committing device
  time         INTEGER NOT NULL,                             -- relay time of the commit
  db_bytes     INTEGER NOT NULL,
  stored_bytes INTEGER NOT NULL,
  new_bytes    INTEGER NOT NULL,
  pack_count   INTEGER NOT NULL,
  manifest_key TEXT NOT NULL UNIQUE,
  PRIMARY KEY (vault_id, id)
);
-- The compare-and-swap: one row per (vault, seq), so of two commits of the same seq one fails.
CREATE UNIQUE INDEX snapshots_vault_seq ON snapshots (vault_id, seq);

-- Which packs each snapshot uses (from the commit's `packs` list; retention only).
CREATE TABLE snapshot_packs (
  vault_id    TEXT NOT NULL,
  snapshot_id TEXT NOT NULL,
  pack_id     TEXT NOT NULL,
  PRIMARY KEY (vault_id, snapshot_id, pack_id)
);
-- "Is this pack referenced?" (retention step 2).
CREATE INDEX snapshot_packs_pack ON snapshot_packs (vault_id, pack_id);

-- Cursors of the retention job's bounded R2 sweeps (name → last key seen).
CREATE TABLE cron_state (
  name  TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
