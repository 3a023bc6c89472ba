-- The user archive's one index (schema/007_mam.sql) without with_bare: (owner, seq). Each batch
-- of archived messages writes an entry per row into it, and the contact's JID made each entry
-- about twice as long: 19,000 -> 17,900 instructions per row written in SQLite (callgrind, 500
-- rows per INSERT). A query's 'with' filter now reads with_bare from the table's row (found by
-- seq, its key) for each of the account's messages in the range, rather than from the index:
-- queries are rare beside the writes of every message (issue 16).
DROP INDEX mam_messages_owner_seq;
CREATE INDEX mam_messages_owner_seq ON mam_messages (owner, seq);
