-- The user archive's rows, kept in the order their batches were written, no longer by seq; each
-- batch's rows go in sorted by owner (sns_xmpp/store/mam.py, write_rows).
--
-- Why: with seq as the table's key, a batch's rows were in seq order, which interleaves the
-- accounts, so the one index (owner, seq) took them one account after another: each entry a
-- search from the root and, with many accounts in a batch, a page of the index of its own
-- written for every row (to the WAL, then again at the checkpoint). Measured with 5,000-row
-- batches of 350-byte messages (benchmarks/archive_writes.py): 6.6-7.0 us of CPU per row with
-- 100 accounts in each batch, 19.5-22.7 us with 1,000. A new key, n, that the engine gives in
-- the order rows are inserted, lets a batch go in sorted by owner: the table still only grows
-- at its end, and the index takes each account's rows side by side (4.8-5.2 us and
-- 10.4-11.5 us).
--
-- seq (schema/007_mam.sql) keeps what it says: the archive's order and the time. It is unique
-- per account, no longer across the table: a seq two server processes both made (the same
-- microsecond, the same low bits) loses a row only if it is for the same account. Queries read
-- by (owner, seq) through the index, as before; the retention sweep reads by n, which follows
-- the batches, so the oldest go first.
CREATE TABLE mam_archive (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    seq BIGINT NOT NULL,
    owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    id TEXT NOT NULL,
    with_bare TEXT NOT NULL,
    with_resource TEXT NOT NULL,
    stanza TEXT NOT NULL
);
INSERT INTO mam_archive (seq, owner, id, with_bare, with_resource, stanza)
    SELECT seq, owner, id, with_bare, with_resource, stanza FROM mam_messages ORDER BY seq;
DROP TABLE mam_messages;
ALTER TABLE mam_archive RENAME TO mam_messages;
CREATE UNIQUE INDEX mam_messages_owner_seq ON mam_messages (owner, seq);
