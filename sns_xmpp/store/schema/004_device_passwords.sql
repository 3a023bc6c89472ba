-- Device passwords (issue 15): for clients without FAST, a password the server makes for one
-- device of a social account, shown once and kept as SCRAM keys (SHA-1 and SHA-256, base64).
-- All the devices of one account share a salt and an iteration count, so that SCRAM, which
-- sends the salt before the client proves anything, can check a proof against each of them.
-- A revocation deletes the account's rows in the same transaction (sns_xmpp/store/sql.py).

CREATE TABLE device_passwords (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    jid TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    label TEXT NOT NULL,
    salt TEXT NOT NULL,
    iterations INTEGER NOT NULL CHECK (iterations > 0),
    sha1_stored_key TEXT NOT NULL,
    sha1_server_key TEXT NOT NULL,
    sha256_stored_key TEXT NOT NULL,
    sha256_server_key TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX device_passwords_jid ON device_passwords (jid);
