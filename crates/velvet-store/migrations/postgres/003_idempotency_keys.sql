-- Idempotency-Key of kickoffs: the same key and request within 24 h answer with the same job.
-- Scoped by caller, so two clients never collide on a key.
CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, key)
);
