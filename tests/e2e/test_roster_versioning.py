"""Roster versioning (RFC 6121 section 2.6, XEP-0237) against the daemon with slixmpp's own roster
versioning, between a social user (the demo site's) and a local user: a reconnect with the version
the client keeps gets an empty roster result."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

import pytest_twisted

from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

ROSTER = "jabber:iq:roster"


class RosterCache:
    """slixmpp's roster datastore (RosterDBProtocol, with the version): what a client keeps
    between its sessions."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.versions: dict[str, str] = {}

    def load(self, owner: Any, jid: Any, db_state: dict[str, Any]) -> Any:
        return self.items.get((str(owner), str(jid)))

    def save(self, owner: Any, jid: Any, state: Any, db_state: dict[str, Any]) -> None:
        if state.get("removed"):
            self.items.pop((str(owner), str(jid)), None)
        else:
            self.items[(str(owner), str(jid))] = dict(state)

    def entries(self, owner: Any, db_state: dict[str, Any] | None = None) -> Iterable[str]:
        if owner is None:
            return sorted({o for o, _ in self.items})
        return [jid for o, jid in self.items if o == str(owner)]

    def version(self, owner: Any) -> str:
        return self.versions.get(str(owner), "")

    def set_version(self, owner: Any, version: str) -> None:
        self.versions[str(owner)] = version


def versioned_client(jid: str, password: str, cache: RosterCache) -> Client:
    """A client keeping its roster in *cache*; ``roster_answers``: the answers to its roster gets
    as they arrived (copied before slixmpp's handlers, which add elements as they read)."""
    client = Client(jid, password, mechanism="PLAIN")
    client.roster.set_backend(cache)
    asked: set[str] = set()
    answers: list[ET.Element] = []

    def outgoing(stanza: Any) -> Any:
        if stanza.xml.tag == "{jabber:client}iq" and stanza.xml.find(f"{{{ROSTER}}}query") is not None \
                and stanza.xml.get("type") == "get":
            asked.add(stanza.xml.get("id"))
        return stanza

    def incoming(stanza: Any) -> Any:
        if stanza.xml.tag == "{jabber:client}iq" and stanza.xml.get("id") in asked:
            answers.append(copy.deepcopy(stanza.xml))
        return stanza

    client.add_filter("out", outgoing)
    client.add_filter("in", incoming)
    client.roster_answers = answers  # type: ignore[attr-defined]
    return client


@pytest_twisted.ensureDeferred
async def test_a_reconnect_with_the_current_roster_version_gets_an_empty_roster_result(server_on_each_store) -> None:
    """slixmpp keeps the roster and its version in a datastore (here one shared by two client
    objects, as a device keeps it between sessions). The social user rosa subscribes to the local
    user bob, who approves: the pushes carry versions, which slixmpp stores. Reconnecting with
    that version, rosa's roster get is answered with an empty result and her roster (bob,
    subscription 'to') comes from her own cache; after bob cancels her subscription while she is
    away, the next reconnect gets the whole roster with a newer version. On each store engine."""
    server = server_on_each_store
    credentials = await demo_credentials(server, "rosa")
    rosa_jid = credentials["jid"]
    await server.add_user("bob@localhost", "secret")
    bob = Client("bob@localhost", "secret")
    await wait(bob.log_in(server.c2s_port))
    cache = RosterCache()
    rosa = versioned_client(f"{rosa_jid}/phone", credentials["password"], cache)
    await wait(rosa.log_in(server.c2s_port))
    assert "rosterver" in rosa.features

    rosa.send_presence_subscription(pto="bob@localhost")
    request = await wait(bob.subscription_requests.get())
    assert request["from"].bare == rosa_jid
    bob.send_presence(pto=rosa_jid, ptype="subscribed")
    while (await wait(rosa.presences.get()))["from"].bare != "bob@localhost":
        pass  # bob's presence follows the push of the subscription
    held = cache.version(rosa_jid)
    assert held and int(held) >= 2, "the pushes carried versions"
    assert rosa.client_roster["bob@localhost"]["subscription"] == "to"
    await wait(rosa.log_out())

    again = versioned_client(f"{rosa_jid}/phone", credentials["password"], cache)
    await wait(again.log_in(server.c2s_port))
    [answer] = again.roster_answers  # type: ignore[attr-defined]
    assert answer.get("type") == "result" and list(answer) == [], "2.6.3: an empty result"
    assert again.client_roster["bob@localhost"]["subscription"] == "to"
    assert cache.version(rosa_jid) == held
    await wait(again.log_out())

    bob.send_presence(pto=rosa_jid, ptype="unsubscribed")  # rosa's item changes while she is away
    await wait(bob.log_out())
    changed = versioned_client(f"{rosa_jid}/phone", credentials["password"], cache)
    await wait(changed.log_in(server.c2s_port))
    [answer] = changed.roster_answers  # type: ignore[attr-defined]
    query = answer.find(f"{{{ROSTER}}}query")
    assert query is not None and int(query.get("ver")) > int(held)
    assert [(item.get("jid"), item.get("subscription")) for item in query] == [("bob@localhost", "none")]
    assert cache.version(rosa_jid) == query.get("ver")
    await wait(changed.log_out())
