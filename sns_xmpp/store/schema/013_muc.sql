-- Multi-User Chat (XEP-0045, issue 17): the persistent rooms of the conference service and their
-- affiliations. A room is the service's, not an account's: it stays when its creator's account
-- goes (its other owners keep it), as on any XMPP server. `config` is the owner's configuration
-- (XEP-0045 section 10.2) as JSON; `secret` keys the room's occupant ids (XEP-0421), so that they
-- last across restarts. Temporary rooms are never written. A room's affiliations are rewritten
-- with the room (a few rows: the service bounds them, [xmpp.muc] max_affiliations).

CREATE TABLE muc_rooms (
    room TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    subject TEXT NOT NULL,
    subject_by TEXT NOT NULL,
    secret TEXT NOT NULL,
    creator TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE muc_affiliations (
    room TEXT NOT NULL REFERENCES muc_rooms (room) ON DELETE CASCADE,
    jid TEXT NOT NULL,
    affiliation TEXT NOT NULL,
    PRIMARY KEY (room, jid)
);

-- The archives of persistent rooms (XEP-0313 on the room's JID): each groupchat message with a
-- body, as the room sent it (no 'to'). seq is made as MAM's (schema 007: microseconds shifted 10
-- bits, the process's own low bits), per room; id is the stanza-id the room stamped it with (seq
-- in hexadecimal and a tag of the process). Each room keeps at most [xmpp.muc]
-- max_archived_messages rows, the oldest dropped as new ones are written; a destroyed room's go.
CREATE TABLE muc_archive (
    room TEXT NOT NULL REFERENCES muc_rooms (room) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    id TEXT NOT NULL,
    nick TEXT NOT NULL,
    stanza TEXT NOT NULL,
    PRIMARY KEY (room, seq)
);
