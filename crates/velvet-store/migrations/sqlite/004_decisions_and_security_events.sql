-- Authorization decisions (every one on a mutating route, and every denial) with their ordered
-- trace steps and a hash over them; security events with severity and links (design §7).
CREATE TABLE policy_decisions (
    id         TEXT PRIMARY KEY,
    at         TEXT NOT NULL,
    subject    TEXT NOT NULL,
    permission TEXT NOT NULL,
    resource   TEXT NOT NULL,
    decision   TEXT NOT NULL CHECK (decision IN ('allow', 'deny')),
    trace_hash TEXT NOT NULL
);
CREATE INDEX policy_decisions_by_at ON policy_decisions (at);

CREATE TABLE policy_decision_steps (
    decision_id TEXT NOT NULL REFERENCES policy_decisions (id),
    position    INTEGER NOT NULL,
    rule        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL,
    PRIMARY KEY (decision_id, position)
);

CREATE TABLE security_events (
    id          TEXT PRIMARY KEY,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    severity    TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    subject     TEXT,
    client      TEXT,
    decision_id TEXT,
    job_id      TEXT,
    detail      TEXT NOT NULL
);
CREATE INDEX security_events_by_at ON security_events (at);
