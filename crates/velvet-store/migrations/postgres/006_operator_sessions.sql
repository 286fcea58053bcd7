-- Console sessions of operators. Only the SHA-256 of a session id is kept; `csrf` is the token
-- every state-changing request of the session must echo. Idle and absolute limits are checked
-- on each request against `last_seen_at` and `expires_at`.
CREATE TABLE operator_sessions (
    id_hash      TEXT PRIMARY KEY,
    operator     TEXT NOT NULL REFERENCES operators (name),
    csrf         TEXT NOT NULL,
    client       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ
);

CREATE INDEX operator_sessions_by_operator ON operator_sessions (operator);
