-- casa relay, schema 4: changesets (docs/RELAY-API.md "Changesets").
-- A device pushes encrypted batches of field changes, numbered per device
-- (seq 1, 2, 3, …); the relay gives each a vault-wide cursor (1, 2, 3, …) so
-- other devices pull "everything after cursor C". The batch is an opaque blob
-- in R2 under `changesets/<vault>/<device>/<seq>/<upload id>`, named by its
-- row here; readers trust D1.

CREATE TABLE changesets (
  vault_id   TEXT NOT NULL,
  cursor     INTEGER NOT NULL CHECK (cursor >= 1),          -- vault-wide, changeset_state.head + 1 at insert
  device_id  TEXT NOT NULL,                                 -- the pushing device
  seq        INTEGER NOT NULL CHECK (seq >= 1),             -- per device, changeset_devices.seq + 1 at insert
  r2_key     TEXT NOT NULL UNIQUE,
  bytes      INTEGER NOT NULL,                              -- stored (ciphertext) size
  sha256     TEXT NOT NULL CHECK (length(sha256) = 64),     -- of the stored bytes, lowercase hex (a retry is recognised by it)
  created_at INTEGER NOT NULL,
  PRIMARY KEY (vault_id, cursor),
  UNIQUE (vault_id, device_id, seq)
);

-- Per vault: the last cursor given (kept here, not derived from MAX(cursor),
-- so pruning every row never lets a cursor be given twice) and the cursor up
-- to which every batch was pruned.
CREATE TABLE changeset_state (
  vault_id       TEXT PRIMARY KEY,
  head           INTEGER NOT NULL DEFAULT 0,
  pruned_through INTEGER NOT NULL DEFAULT 0 CHECK (pruned_through <= head)
);

-- Per device: its last seq and that batch's cursor (kept, like head, through
-- pruning, so a device's next seq never starts over).
CREATE TABLE changeset_devices (
  vault_id  TEXT NOT NULL,
  device_id TEXT NOT NULL,
  seq       INTEGER NOT NULL,
  cursor    INTEGER NOT NULL,
  PRIMARY KEY (vault_id, device_id)
);

-- The vault-wide changeset cursor a snapshot includes (0: none); the
-- retention job prunes batches every retained snapshot covers.
ALTER TABLE snapshots ADD COLUMN changeset_watermark INTEGER NOT NULL DEFAULT 0;
