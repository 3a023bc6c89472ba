-- Personal eventing (XEP-0163, issue 16): an account's PEP nodes, each with its configuration
-- (XEP-0060 section 16.4's pubsub#node_config fields the server honours, as JSON), and the nodes'
-- items, their payloads as serialised XML. `serial` orders a node's items by publication (a
-- republished id moves to the newest); the oldest beyond the node's max_items go at each publish.

CREATE TABLE pep_nodes (
    owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    node TEXT NOT NULL,
    config TEXT NOT NULL,
    PRIMARY KEY (owner, node)
);

CREATE TABLE pep_items (
    owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    node TEXT NOT NULL,
    item_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    publisher TEXT NOT NULL,
    published_at DOUBLE PRECISION NOT NULL,
    serial BIGINT NOT NULL,
    PRIMARY KEY (owner, node, item_id),
    FOREIGN KEY (owner, node) REFERENCES pep_nodes (owner, node) ON DELETE CASCADE
);
CREATE INDEX pep_items_by_serial ON pep_items (owner, node, serial);
