-- Roster versioning (RFC 6121 section 2.6, XEP-0237): a counter per account, bumped in the same
-- transaction as each change to the account's roster items (store/sql.py), so that a client that
-- names the version it holds gets an empty answer while nothing changed. No row: version 0.

CREATE TABLE roster_versions (
    owner TEXT NOT NULL PRIMARY KEY REFERENCES accounts (jid) ON DELETE CASCADE,
    version BIGINT NOT NULL DEFAULT 0
);
