-- casa relay, the global index (D1): vaults no device has been seen in for
-- ABANDONED_AFTER_MS (wrangler var, default 400 days), as each vault's object
-- reports them from its retention run (worker/abandoned.ts). For the operator:
--   wrangler d1 execute casa-prod --remote --command "SELECT * FROM abandoned_vaults"
-- A row is removed when a device of the vault is seen again. With
-- ABANDONED_POLICY "expire", the object deletes the vault (its rows, then its
-- blobs in R2) and sets expired_at; the row stays as the record of it.
CREATE TABLE abandoned_vaults (
  vault_id     TEXT PRIMARY KEY CHECK (length(vault_id) = 32),
  last_seen_at INTEGER NOT NULL,        -- the newest of the vault's creation and its devices' last token
  reported_at  INTEGER NOT NULL,        -- when it was first found abandoned
  expired_at   INTEGER                  -- when it was deleted (ABANDONED_POLICY "expire"), else NULL
);
