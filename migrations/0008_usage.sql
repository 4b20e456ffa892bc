-- casa relay, a vault's object: usage kept as counters (worker/quotas.ts).
-- Applied inside each vault's Durable Object (worker/schema.ts), never in D1.
--
-- The stored-bytes quota is checked before every upload; summing every
-- pack, changeset and pending manifest each time grows with the vault, so
-- the sum is kept in `usage` by triggers, in the same transaction as the
-- rows it counts (an insert, an upsert that changes bytes, a delete). It
-- starts from the rows the object holds when this migration runs.
-- Indexes for the per-day counts (commits, pushes) read only the last day.
CREATE TABLE usage (
  name  TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
INSERT INTO usage (name, value) VALUES ('stored_bytes',
  (SELECT coalesce(sum(bytes), 0) FROM packs)
  + (SELECT coalesce(sum(bytes), 0) FROM changesets)
  + (SELECT coalesce(sum(bytes), 0) FROM manifest_uploads));

CREATE TRIGGER usage_packs_insert AFTER INSERT ON packs
BEGIN UPDATE usage SET value = value + NEW.bytes WHERE name = 'stored_bytes'; END;
CREATE TRIGGER usage_packs_update AFTER UPDATE OF bytes ON packs
BEGIN UPDATE usage SET value = value - OLD.bytes + NEW.bytes WHERE name = 'stored_bytes'; END;
CREATE TRIGGER usage_packs_delete AFTER DELETE ON packs
BEGIN UPDATE usage SET value = value - OLD.bytes WHERE name = 'stored_bytes'; END;

CREATE TRIGGER usage_changesets_insert AFTER INSERT ON changesets
BEGIN UPDATE usage SET value = value + NEW.bytes WHERE name = 'stored_bytes'; END;
CREATE TRIGGER usage_changesets_update AFTER UPDATE OF bytes ON changesets
BEGIN UPDATE usage SET value = value - OLD.bytes + NEW.bytes WHERE name = 'stored_bytes'; END;
CREATE TRIGGER usage_changesets_delete AFTER DELETE ON changesets
BEGIN UPDATE usage SET value = value - OLD.bytes WHERE name = 'stored_bytes'; END;

CREATE TRIGGER usage_manifests_insert AFTER INSERT ON manifest_uploads
BEGIN UPDATE usage SET value = value + NEW.bytes WHERE name = 'stored_bytes'; END;
CREATE TRIGGER usage_manifests_update AFTER UPDATE OF bytes ON manifest_uploads
BEGIN UPDATE usage SET value = value - OLD.bytes + NEW.bytes WHERE name = 'stored_bytes'; END;
CREATE TRIGGER usage_manifests_delete AFTER DELETE ON manifest_uploads
BEGIN UPDATE usage SET value = value - OLD.bytes WHERE name = 'stored_bytes'; END;

-- The audit rows likewise (`audit_rows`): the retention job prunes past
-- QUOTA_AUDIT_ROWS without counting the log each run.
INSERT INTO usage (name, value) VALUES ('audit_rows', (SELECT count(*) FROM audit_log));
CREATE TRIGGER usage_audit_insert AFTER INSERT ON audit_log
BEGIN UPDATE usage SET value = value + 1 WHERE name = 'audit_rows'; END;
CREATE TRIGGER usage_audit_delete AFTER DELETE ON audit_log
BEGIN UPDATE usage SET value = value - 1 WHERE name = 'audit_rows'; END;

-- Orphan sweeps list R2, which is billed per call: the retention job sweeps
-- only after an upload (worker/vault.ts marks `sweep:due`), so an idle
-- vault lists nothing. An object that held its vault before this migration
-- sweeps once after it (a new one has nothing to sweep yet).
INSERT INTO cron_state (name, value) SELECT 'sweep:due', '0' WHERE EXISTS (SELECT 1 FROM vaults)
  ON CONFLICT (name) DO NOTHING;

CREATE INDEX snapshots_time ON snapshots (time);
CREATE INDEX changesets_created ON changesets (created_at);
