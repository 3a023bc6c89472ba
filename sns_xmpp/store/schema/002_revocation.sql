-- Revocation (issue 15): a link is revoked rather than deleted, so that the same site account
-- returns to the same XMPP user; each revocation is also an event the running servers read to
-- end the user's live sessions (sns_xmpp/xmpp/revocation.py), whichever process recorded it.

ALTER TABLE social_links ADD COLUMN revoked_at DOUBLE PRECISION;

CREATE TABLE revocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    jid TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    reason TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
