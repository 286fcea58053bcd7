-- Tokens and consumers are reconciled from velvet.yaml; versions hold sealed values; jobs,
-- their per-consumer state and events drive rotations; the audit chain records everything.
CREATE TABLE tokens (
    id               BIGSERIAL PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    description      TEXT NOT NULL DEFAULT '',
    tags             TEXT NOT NULL DEFAULT '[]',
    source_kind      TEXT NOT NULL,
    spec             TEXT NOT NULL,
    spec_hash        TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    last_rotated_at  TIMESTAMPTZ,
    next_rotation_at TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    retired_at       TIMESTAMPTZ
);

CREATE TABLE consumers (
    id         BIGSERIAL PRIMARY KEY,
    token_id   BIGINT NOT NULL REFERENCES tokens (id),
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    lock_key   TEXT,
    spec       TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (token_id, name)
);

CREATE TABLE secret_versions (
    id           BIGSERIAL PRIMARY KEY,
    token_id     BIGINT NOT NULL REFERENCES tokens (id),
    version      BIGINT NOT NULL CHECK (version > 0),
    label        TEXT NOT NULL CHECK (label IN ('pending', 'current', 'previous', 'revoked', 'discarded')),
    key_id       TEXT NOT NULL,
    ciphertext   BYTEA NOT NULL,
    fingerprint  TEXT NOT NULL,
    job_id       TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    activated_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    UNIQUE (token_id, version)
);
CREATE UNIQUE INDEX secret_versions_one_current ON secret_versions (token_id) WHERE label = 'current';
CREATE UNIQUE INDEX secret_versions_one_pending ON secret_versions (token_id) WHERE label = 'pending';
CREATE INDEX secret_versions_key_id ON secret_versions (key_id);

CREATE TABLE rotation_jobs (
    id               TEXT PRIMARY KEY,
    token_id         BIGINT NOT NULL REFERENCES tokens (id),
    flow_type        TEXT NOT NULL CHECK (flow_type IN ('staged', 'auto', 'emergency')),
    stage            TEXT NOT NULL CHECK (stage IN ('mint', 'distribute', 'revoke', 'done')),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'running', 'awaiting_confirmation', 'waiting',
                                                     'succeeded', 'failed', 'aborted', 'rolled_back')),
    awaiting         TEXT CHECK (awaiting IN ('proceed_distribute', 'proceed_revoke')),
    revoke_started   BOOLEAN NOT NULL DEFAULT false,
    reverting        TEXT CHECK (reverting IN ('rollback', 'abort')),
    new_version      BIGINT,
    previous_version BIGINT,
    requested_by     TEXT NOT NULL,
    reason           TEXT,
    error            TEXT,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    wake_at          TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    finished_at      TIMESTAMPTZ
);
-- I3: at most one unfinished job per token, enforced by the database.
CREATE UNIQUE INDEX rotation_jobs_one_unfinished ON rotation_jobs (token_id)
    WHERE status NOT IN ('succeeded', 'aborted', 'rolled_back');
CREATE INDEX rotation_jobs_by_status ON rotation_jobs (status, lease_expires_at);
CREATE INDEX rotation_jobs_by_token ON rotation_jobs (token_id, created_at);

CREATE TABLE rotation_job_consumers (
    job_id          TEXT NOT NULL REFERENCES rotation_jobs (id),
    consumer_id     BIGINT NOT NULL REFERENCES consumers (id),
    status          TEXT NOT NULL CHECK (status IN ('pending', 'in_progress', 'distributed', 'verified',
                                                    'failed', 'rolled_back')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    fingerprint     TEXT,
    next_attempt_at TIMESTAMPTZ,
    started_at      TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (job_id, consumer_id)
);

CREATE TABLE rotation_events (
    id     BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES rotation_jobs (id),
    seq    BIGINT NOT NULL,
    at     TIMESTAMPTZ NOT NULL,
    event  TEXT NOT NULL,
    data   TEXT NOT NULL,
    UNIQUE (job_id, seq)
);

CREATE TABLE audit_events (
    seq       BIGINT PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);

CREATE INDEX audit_events_key_id ON audit_events (key_id);

CREATE TABLE feature_flags (
    name       TEXT PRIMARY KEY,
    enabled    BOOLEAN NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    updated_by TEXT NOT NULL
);
