-- casa relay, schema 7: key epochs and membership records (docs/RELAY-API.md
-- "Membership and epochs", docs/FORMAT.md §9, docs/SECURITY.md §3).
-- The relay stores the signed records as the clients sent them (JSON text)
-- and checks their signatures; it never holds a key that opens anything.
-- A vault at epoch 0 is a version-1 vault: nothing here applies to it until
-- a device posts epoch 1.

-- The vault's current epoch and its key id (16 hex; '' at epoch 0), and how
-- many times its paper was replaced (auth_public_key is the current paper's).
ALTER TABLE vaults ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vaults ADD COLUMN epoch_key_id TEXT NOT NULL DEFAULT '';
ALTER TABLE vaults ADD COLUMN recovery_n INTEGER NOT NULL DEFAULT 0;

-- The device's certificate (DeviceCert JSON; NULL for a version-1 device not
-- yet certified) and, once revoked, the revocation that did it (Revocation JSON).
ALTER TABLE devices ADD COLUMN cert TEXT;
ALTER TABLE devices ADD COLUMN revocation TEXT;

-- One row per epoch: the EpochRecord JSON without its wraps.
CREATE TABLE epochs (
  vault_id   TEXT NOT NULL,
  epoch      INTEGER NOT NULL CHECK (epoch >= 1),
  record     TEXT NOT NULL,
  created_at INTEGER NOT NULL,                               -- relay time of the insert
  PRIMARY KEY (vault_id, epoch)
);

-- The keyring wraps of each epoch, one per recipient (a device id or 'recovery'), b64u.
CREATE TABLE epoch_wraps (
  vault_id  TEXT NOT NULL,
  epoch     INTEGER NOT NULL,
  recipient TEXT NOT NULL,
  wrap      TEXT NOT NULL,
  PRIMARY KEY (vault_id, epoch, recipient)
);

-- Paper replacements (RecoveryRecord JSON), n = 1, 2, …
CREATE TABLE recovery_records (
  vault_id TEXT NOT NULL,
  n        INTEGER NOT NULL CHECK (n >= 1),
  record   TEXT NOT NULL,
  PRIMARY KEY (vault_id, n)
);

-- The current replacement paper's id → its vault (GET /v1/recovery/{recoveryId}).
-- A vault whose paper was never replaced is found by its own id instead.
CREATE TABLE recovery_ids (
  recovery_id TEXT PRIMARY KEY CHECK (length(recovery_id) = 32),
  vault_id    TEXT NOT NULL
);
CREATE INDEX recovery_ids_vault ON recovery_ids (vault_id);

-- The key id (object header bytes 8..16, hex) a pending manifest was sealed
-- under: a commit is refused when it is not the vault's current one.
ALTER TABLE manifest_uploads ADD COLUMN key_id TEXT NOT NULL DEFAULT '';
