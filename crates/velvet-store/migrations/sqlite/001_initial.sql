-- Tokens and consumers are reconciled from velvet.yaml; versions hold sealed values; jobs,
-- their per-consumer state and events drive rotations; the audit chain records everything.
CREATE TABLE tokens (
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    description      TEXT NOT NULL DEFAULT '',
    tags             TEXT NOT NULL DEFAULT '[]',
    source_kind      TEXT NOT NULL,
    spec             TEXT NOT NULL,
    spec_hash        TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    last_rotated_at  TEXT,
    next_rotation_at TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    retired_at       TEXT
);

CREATE TABLE consumers (
    id         INTEGER PRIMARY KEY,
    token_id   INTEGER NOT NULL REFERENCES tokens (id),
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    lock_key   TEXT,
    spec       TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (token_id, name)
);

CREATE TABLE secret_versions (
    id           INTEGER PRIMARY KEY,
    token_id     INTEGER NOT NULL REFERENCES tokens (id),
    version      INTEGER NOT NULL CHECK (version > 0),
    label        TEXT NOT NULL CHECK (label IN ('pending', 'current', 'previous', 'revoked', 'discarded')),
    key_id       TEXT NOT NULL,
    ciphertext   BLOB NOT NULL,
    fingerprint  TEXT NOT NULL,
    job_id       TEXT,
    created_at   TEXT NOT NULL,
    activated_at TEXT,
    revoked_at   TEXT,
    UNIQUE (token_id, version)
);
CREATE UNIQUE INDEX secret_versions_one_current ON secret_versions (token_id) WHERE label = 'current';
CREATE UNIQUE INDEX secret_versions_one_pending ON secret_versions (token_id) WHERE label = 'pending';
CREATE INDEX secret_versions_key_id ON secret_versions (key_id);

CREATE TABLE rotation_jobs (
    id               TEXT PRIMARY KEY,
    token_id         INTEGER NOT NULL REFERENCES tokens (id),
    flow_type        TEXT NOT NULL CHECK (flow_type IN ('staged', 'auto', 'emergency')),
    stage            TEXT NOT NULL CHECK (stage IN ('mint', 'distribute', 'revoke', 'done')),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'running', 'awaiting_confirmation', 'waiting',
                                                     'succeeded', 'failed', 'aborted', 'rolled_back')),
    awaiting         TEXT CHECK (awaiting IN ('proceed_distribute', 'proceed_revoke')),
    revoke_started   INTEGER NOT NULL DEFAULT 0,
    reverting        TEXT CHECK (reverting IN ('rollback', 'abort')),
    new_version      INTEGER,
    previous_version INTEGER,
    requested_by     TEXT NOT NULL,
    reason           TEXT,
    error            TEXT,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    wake_at          TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    finished_at      TEXT
);
-- I3: at most one unfinished job per token, enforced by the database.
CREATE UNIQUE INDEX rotation_jobs_one_unfinished ON rotation_jobs (token_id)
    WHERE status NOT IN ('succeeded', 'aborted', 'rolled_back');
CREATE INDEX rotation_jobs_by_status ON rotation_jobs (status, lease_expires_at);
CREATE INDEX rotation_jobs_by_token ON rotation_jobs (token_id, created_at);

CREATE TABLE rotation_job_consumers (
    job_id          TEXT NOT NULL REFERENCES rotation_jobs (id),
    consumer_id     INTEGER NOT NULL REFERENCES consumers (id),
    status          TEXT NOT NULL CHECK (status IN ('pending', 'in_progress', 'distributed', 'verified',
                                                    'failed', 'rolled_back')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    fingerprint     TEXT,
    next_attempt_at TEXT,
    started_at      TEXT,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (job_id, consumer_id)
);

CREATE TABLE rotation_events (
    id     INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES rotation_jobs (id),
    seq    INTEGER NOT NULL,
    at     TEXT NOT NULL,
    event  TEXT NOT NULL,
    data   TEXT NOT NULL,
    UNIQUE (job_id, seq)
);

CREATE TABLE audit_events (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
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
    enabled    INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
);
