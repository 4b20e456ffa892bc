-- casa relay, schema 5: digest slots (docs/RELAY-API.md "Digests").
-- Each device keeps one slot: its latest digest record, a sealed object
-- (docs/FORMAT.md §8) the relay cannot read, at most 16 KiB, kept here as
-- base64url text (like the canary) rather than in R2. A device's upload
-- replaces its slot; nothing else is known about it but its size and time.

CREATE TABLE digests (
  vault_id   TEXT NOT NULL,
  device_id  TEXT NOT NULL,                                 -- the uploading device
  data       TEXT NOT NULL,                                 -- the sealed record, b64u
  bytes      INTEGER NOT NULL CHECK (bytes BETWEEN 1 AND 16384),
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (vault_id, device_id)
);
