-- Schedules (design §11): each token remembers the latest schedule slot a job was started for
-- or recorded as missed, so a slot is used once across replicas and restarts; one replica leads
-- the scheduler at a time by holding the `scheduler` lease.
ALTER TABLE tokens ADD COLUMN schedule_slot_at TIMESTAMPTZ;

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
