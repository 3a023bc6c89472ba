-- Private XML storage (XEP-0049, jabber:iq:private): an account's fragments, one row per
-- namespace, the XML as the server serialised it (one or more elements of that namespace), and
-- its size in UTF-8 bytes, which the feature's limits add up (sns_xmpp/store/private_storage.py).

CREATE TABLE private_storage (
    owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    namespace TEXT NOT NULL,
    xml TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (owner, namespace)
);
