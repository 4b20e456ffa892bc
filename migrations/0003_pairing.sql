-- casa relay, schema 3: pairing sessions (docs/RELAY-API.md "Pairing by code").
-- The relay is a mailbox: a paired device (the offer side) opens a session
-- under a short number, the nameplate; a new device (the join side, without
-- credentials) answers it. The relay stores and forwards three opaque PAKE
-- messages (msg_a, msg_b, msg_final; b64u as on the wire) and enforces single
-- use, expiry and burn-after-failure. It never sees the code's password words.
--
-- States: open → joined → confirmed → done, or joined → failed (burned), or
-- open | joined | confirmed → cancelled. A live session (open, joined,
-- confirmed) past expires_at is reported as "expired". The retention job
-- deletes sessions an hour past expires_at; until then a nameplate is reused
-- only once its session has expired, or ended more than a minute ago.

CREATE TABLE pairing_sessions (
  nameplate        TEXT PRIMARY KEY
                   CHECK (length(nameplate) BETWEEN 1 AND 9 AND nameplate GLOB '[1-9]*' AND nameplate NOT GLOB '*[^0-9]*'),
  vault_id         TEXT NOT NULL,
  offer_device_id  TEXT NOT NULL,                            -- the device that opened the session
  sid              TEXT NOT NULL CHECK (length(sid) = 32),   -- session id bound into the PAKE, 32 lowercase hex
  msg_a            TEXT NOT NULL,                            -- offer side's PAKE message, b64u; set at creation, never changed
  msg_b            TEXT,                                     -- join side's PAKE message, b64u; set by the one join
  msg_final        TEXT,                                     -- offer side's confirmation + encrypted payload, b64u
  join_token_hash  TEXT,                                     -- SHA-256 hex of the joiner's bearer token bytes
  joined_device_id TEXT,                                     -- the device the joiner enrolled (state done)
  state            TEXT NOT NULL
                   CHECK (state IN ('open', 'joined', 'confirmed', 'failed', 'done', 'cancelled')),
  created_at       INTEGER NOT NULL,
  expires_at       INTEGER NOT NULL,
  updated_at       INTEGER NOT NULL                          -- the last state change
);
-- The retention job's sweep, and "is this session expired".
CREATE INDEX pairing_sessions_expires ON pairing_sessions (expires_at);
-- At most 3 live sessions per vault (counted at creation).
CREATE INDEX pairing_sessions_vault ON pairing_sessions (vault_id, state);
