-- Push Notifications (XEP-0357, issue 18): the app servers an account's devices asked this server
-- to publish notifications to. XEP-0357 keys a registration by the account and the pair of the
-- service's JID and node (section 5: one JID may be enabled again with another node; the same
-- pair enabled again keeps the last request's publish options). resource is the resource that
-- enabled it (the device: no notification while its session is up and awake); options is the
-- publish-options data form as the client sent it, kept opaque and forwarded with each publish
-- (section 7), or NULL. The push feature reads every row once at start and keeps them in memory.

CREATE TABLE push_registrations (
    owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    service TEXT NOT NULL,
    node TEXT NOT NULL,
    resource TEXT NOT NULL,
    options TEXT,
    enabled_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (owner, service, node)
);
