"""The conference service for operators: the console's rooms() and the rooms and occupants
gauges in /metrics."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import generate_latest

from sns_xmpp.ops.console import namespace
from tests.unit.test_muc import ROOM, configure, join, world


def test_the_console_lists_rooms_and_shows_one_and_metrics_count_them() -> None:
    """rooms(): every room with its occupants and whether it is persistent; rooms(jid): who is in
    it with which role, and its affiliations. /metrics: sns_xmpp_muc_rooms and _occupants.
    destroy_room(jid, reason): the occupants are told (section 10.9) and the stored room goes."""
    w = world()
    alice, bob = w.log_in("alice@localhost"), w.log_in("bob@localhost")
    join(alice, nick="Alice")
    configure(alice, {"muc#roomconfig_persistentroom": "1"})
    join(bob, nick="Bob")
    join(bob, room="other@conference.localhost", nick="Bob")
    server = SimpleNamespace(sessions=w.sessions, store=w.store, sites=[], reloader=None, features=w.registry)
    rooms = namespace(server)["rooms"]  # type: ignore[arg-type]
    assert [(r["room"], r["occupants"], r["persistent"], r["locked"]) for r in rooms()] == [
        ("other@conference.localhost", 1, False, True), (ROOM, 2, True, False)]
    one = rooms(ROOM)
    assert one["occupants"] == [{"nick": "Alice", "jid": "alice@localhost/r", "role": "moderator",
                                 "affiliation": "owner"},
                                {"nick": "Bob", "jid": "bob@localhost/r", "role": "participant", "affiliation": "none"}]
    assert one["affiliations"] == {"alice@localhost": "owner"} and rooms("nowhere@conference.localhost") is None
    lines = [line for line in generate_latest(w.sessions.metrics.registry).decode().splitlines()
             if line.startswith("sns_xmpp_muc_")]
    assert lines == ["sns_xmpp_muc_rooms 2.0", "sns_xmpp_muc_occupants 3.0"]

    bob.read()
    assert namespace(server)["destroy_room"](ROOM, "spam") is True  # type: ignore[arg-type]
    [gone] = [p for p in bob.read() if p.get("from") == f"{ROOM}/Bob"]
    destroyed = gone.find("{http://jabber.org/protocol/muc#user}x/{http://jabber.org/protocol/muc#user}destroy")
    assert gone.get("type") == "unavailable" and destroyed is not None
    assert destroyed.findtext("{http://jabber.org/protocol/muc#user}reason") == "spam"
    assert ROOM not in w.muc.rooms and w.store.database.query("SELECT COUNT(*) FROM muc_rooms") == [(0,)]
    assert namespace(server)["destroy_room"](ROOM) is False  # type: ignore[arg-type]
