-- HTTP File Upload (XEP-0363): one row per slot handed out to an account, which becomes the row of
-- its file once the PUT is done. state: 'open' (the PUT URL is good until put_until), 'writing'
-- (a PUT has claimed the slot: a second one is a replay), 'stored' (the file is on disk, under the
-- upload folder by its slot, until expires_at; NULL keeps it). size is the slot's, which the PUT
-- must match, and what the account's quota adds up (sns_xmpp/store/upload.py). The file on disk
-- goes with its row: the feature's clean-up removes files whose rows are gone, the account's
-- included (ON DELETE CASCADE).

CREATE TABLE upload_files (
    slot TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    filename TEXT NOT NULL,
    size BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    put_until DOUBLE PRECISION NOT NULL,
    stored_at DOUBLE PRECISION,
    expires_at DOUBLE PRECISION
);
CREATE INDEX upload_files_by_owner ON upload_files (owner, created_at);
CREATE INDEX upload_files_by_expiry ON upload_files (expires_at);
CREATE INDEX upload_files_open_until ON upload_files (put_until);
