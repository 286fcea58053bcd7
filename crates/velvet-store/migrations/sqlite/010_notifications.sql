-- Notifications (design §11): each event of record is written to the outbox in the transaction
-- of the state change that causes it; the scheduler's leader routes it to the channels that
-- want it (one delivery row per channel) and delivers with retries. The event id is the id a
-- receiver deduplicates on (at-least-once).
CREATE TABLE notification_events (
    id     TEXT PRIMARY KEY,
    event  TEXT NOT NULL,
    token  TEXT NOT NULL,
    job_id TEXT,
    data   TEXT NOT NULL,
    at     TEXT NOT NULL,
    routed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX notification_events_unrouted ON notification_events (at) WHERE routed = 0;
CREATE INDEX notification_events_standing ON notification_events (event, token, at);

CREATE TABLE notification_deliveries (
    event_id        TEXT NOT NULL REFERENCES notification_events (id),
    channel         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (event_id, channel)
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (status, next_attempt_at);
