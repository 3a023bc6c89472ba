"""Several nodes serving the same domains as one server (docs/scaling.md).

Each node keeps its own clients' sessions in memory, as a single node does. What the nodes share
lives in PostgreSQL (everything durable: accounts, links, rosters, offline messages, archives) and
in Redis (what is live), with no membership or consensus protocol of our own:

- `directory`: each node's bound resources, published to the others, who keep a replica of them
  as `RemoteSession`s in their own `SessionManager`. Every feature that walks an account's
  resources (presence, roster pushes, carbons, RFC 6121 delivery, MUC) then reaches the
  resources on other nodes with no change of its own;
- `inbox`: a Redis Stream per node; a stanza for a resource on another node is added to that
  node's stream, and the sender's stanza counts as handled (XEP-0198) once Redis has it;
- heartbeats: a key per node with a time to live. A node whose key expired is gone: the others
  drop its sessions from their replicas and one of them delivers what its stream still held.
"""
