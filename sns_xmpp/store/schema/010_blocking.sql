-- Blocking Command (XEP-0191, issue 16): the JIDs an account blocks, each as the server prepared
-- it (a domain, a bare or a full JID, or a domain with a resource: XEP-0191 section 6). The
-- blocking feature reads an account's list once as its first resource binds and keeps it in
-- memory; the rows are what survives a restart.

CREATE TABLE blocked_jids (
    owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    jid TEXT NOT NULL,
    PRIMARY KEY (owner, jid)
);
