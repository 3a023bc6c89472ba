-- Message Archive Management (XEP-0313), the user archive (sns_xmpp/xmpp/features/mam/).
--
-- mam_messages: one row per archived message per account. seq orders the archive and says when:
-- the server process makes it as the message arrives, from the time in microseconds (shifted left
-- 10 bits, the low bits a number of the process's own), one above the last if the clock has not
-- moved on; so it follows arrival, survives restarts, and the rows of two server processes do not
-- collide. The rows are written in batches with seq given (the AUTOINCREMENT is there for
-- PostgreSQL's BIGINT; the engine's own numbers are never used). id is the archive UID the message
-- was stamped with (XEP-0359 stanza-id): seq in hexadecimal and a random tag of the process.
-- with_bare and with_resource are the other party (the 'to' of a sent message, the 'from' of a
-- received one; with_resource '' for a bare JID), for the query's 'with' filter.
CREATE TABLE mam_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    id TEXT NOT NULL,
    with_bare TEXT NOT NULL,
    with_resource TEXT NOT NULL,
    stanza TEXT NOT NULL
);
-- One index serves every query: an account's rows in order, the 'with' filter read from the index
-- itself as it goes. An index per contact, (owner, with_bare, seq), would find a rare contact's
-- messages sooner, but it doubled what each batch writes (measured: 24 -> 12 us of CPU per row,
-- half of it the kernel's, as each index dirties a page per account per transaction).
CREATE INDEX mam_messages_owner_seq ON mam_messages (owner, seq, with_bare);

-- mam_prefs: an account's archiving preferences (XEP-0441), only where they differ from the
-- default; the JID lists as JSON arrays.
CREATE TABLE mam_prefs (
    owner TEXT PRIMARY KEY REFERENCES accounts (jid) ON DELETE CASCADE,
    default_mode TEXT NOT NULL,
    always_json TEXT NOT NULL,
    never_json TEXT NOT NULL
);
