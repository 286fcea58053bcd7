-- Schedules (design §11): each token remembers the latest schedule slot a job was started for
-- or recorded as missed, so a slot is used once across restarts; the `scheduler` lease keeps
-- the same shape as on PostgreSQL, where several replicas contend for it.
ALTER TABLE tokens ADD COLUMN schedule_slot_at TEXT;

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
