-- Operators: people who log in to the console and pass revocation gates (design §7).
-- The password is an argon2id PHC string; the TOTP secret is sealed under the keyring, bound to
-- the operator's name; backup codes are SHA-256 of 80-bit codes, each usable once.
CREATE TABLE operators (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    totp_key_id   TEXT NOT NULL,
    totp_sealed   BYTEA NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    disabled_at   TIMESTAMPTZ
);

CREATE TABLE backup_codes (
    operator  TEXT NOT NULL REFERENCES operators (name),
    code_hash TEXT NOT NULL,
    used_at   TIMESTAMPTZ,
    PRIMARY KEY (operator, code_hash)
);

-- The last TOTP time step accepted per operator: a code is accepted only past it, so each
-- code works once, even under concurrent requests.
CREATE TABLE nonce_watermarks (
    operator  TEXT PRIMARY KEY REFERENCES operators (name),
    last_step BIGINT NOT NULL
);

-- Operators' approvals of a job's revoke, one each.
CREATE TABLE rotation_approvals (
    job_id      TEXT NOT NULL REFERENCES rotation_jobs (id),
    operator    TEXT NOT NULL REFERENCES operators (name),
    approved_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (job_id, operator)
);
