-- FAST tokens (XEP-0484, issue 15): one per (account, client's <user-agent id>), stored hashed.
-- A token is 64 random bytes, longer than SHA-256's block, so HMAC keys with SHA-256(token)
-- (RFC 2104 section 3): the server keeps only that digest (hex) and computes the same HMACs.
-- Rotation keeps the previous digest for a short grace period (previous_until), with its own
-- count. count is the client's replay counter: each login's must exceed the last one taken.
-- A revocation deletes the account's rows in the same transaction (sns_xmpp/store/sql.py).

CREATE TABLE fast_tokens (
    jid TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    agent TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    issued_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    last_count BIGINT NOT NULL DEFAULT 0,
    previous_hash TEXT,
    previous_until DOUBLE PRECISION,
    previous_count BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (jid, agent)
);
