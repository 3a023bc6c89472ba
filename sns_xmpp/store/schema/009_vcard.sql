-- vcard-temp (XEP-0054, issue 16): each account's vCard as the XML its owner last set (within the
-- feature's size limit), and the SHA-1 of its PHOTO's image in hex (XEP-0153), '' for none: the
-- server puts that hash in the account's available presence (XEP-0398 section 4) without reading
-- or parsing the vCard itself. A row, even of an empty vCard, means the owner (or the first
-- login's display name) has set one, which the server then never overwrites on its own.

CREATE TABLE vcards (
    jid TEXT PRIMARY KEY REFERENCES accounts (jid) ON DELETE CASCADE,
    vcard TEXT NOT NULL,
    photo_hash TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
