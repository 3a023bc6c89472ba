"""The conference service's persistent rooms (store/muc.py, schema 013) in both engines, and
through the service: a persistent room, its configuration, subject and affiliations survive a
restart; a temporary one is never written; destroying or un-persisting a room forgets it."""

from __future__ import annotations

from pathlib import Path

from sns_xmpp.store import muc as muc_store
from sns_xmpp.xmpp.features.muc.forms import RoomConfig
from tests.unit.test_muc import ROOM, codes, condition, configure, instant, item, join, world
from tests.unit.test_store import Backend, backend  # noqa: F401 - the fixture


def test_rooms_are_written_whole_read_back_and_deleted_in_each_engine(backend: Backend) -> None:  # noqa: F811
    """put_room replaces the room's row and its affiliations in one go; rooms() reads every
    room with its affiliations; delete_room takes the affiliations with it (the cascade)."""
    db = backend.open()
    try:
        first = muc_store.StoredRoom("a@conference.x", RoomConfig(persistent=True).to_json(), "", "", "s1",
                                     "alice@x", 1.5, {"alice@x": "owner", "bob@x": "member"})
        second = muc_store.StoredRoom("b@conference.x", RoomConfig(persistent=True, name="B").to_json(), "Hi", "Bob",
                                      "s2", "bob@x", 2.0, {"bob@x": "owner"})
        muc_store.put_room(db, first)
        muc_store.put_room(db, second)
        changed = muc_store.StoredRoom(first.room, first.config, "News", "Alice", "ignored", "ignored", 9.0,
                                       {"alice@x": "owner", "carol@x": "outcast"})
        muc_store.put_room(db, changed)
        rooms = muc_store.rooms(db)
        assert [room.room for room in rooms] == ["a@conference.x", "b@conference.x"]
        assert rooms[0] == muc_store.StoredRoom("a@conference.x", first.config, "News", "Alice", "s1", "alice@x", 1.5,
                                                {"alice@x": "owner", "carol@x": "outcast"})
        assert rooms[1] == second
        muc_store.delete_room(db, "a@conference.x")
        assert [room.room for room in muc_store.rooms(db)] == ["b@conference.x"]
        assert backend.rows("SELECT COUNT(*) FROM muc_affiliations WHERE room = ?", ("a@conference.x",)) == [(0,)]
    finally:
        db.close()


def test_a_persistent_room_survives_a_restart_and_a_temporary_one_does_not(tmp_path: Path) -> None:
    """Section 10.2's muc#roomconfig_persistentroom: the room, its name, its members-only rule,
    its subject and its affiliations are there after a restart (a new service on the same
    database), unlocked and empty; the room's occupant ids stay the same (XEP-0421: stable)."""
    path = tmp_path / "store.sqlite"
    w = world(path)
    alice, bob = w.log_in("alice@localhost"), w.log_in("bob@localhost")
    join(alice, nick="Alice")
    assert configure(alice, {"muc#roomconfig_persistentroom": "1", "muc#roomconfig_roomname": "Kept",
                             "muc#roomconfig_membersonly": "1"}).get("type") == "result"
    alice.send(f"<iq type='set' id='m' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'>"
               "<item affiliation='member' jid='bob@localhost'/></query></iq>")
    assert alice.read()[0].get("type") == "result"
    alice.send(f"<message to='{ROOM}' type='groupchat'><subject>Kept subject</subject></message>")
    alice.read()
    join(alice, room="temp@conference.localhost", nick="Alice")
    instant(alice, room="temp@conference.localhost")
    _, alices_id_before = _own_id(join(bob, nick="Bob"))
    w.store.close()

    w = world(path)
    assert sorted(w.muc.rooms) == [ROOM]
    room = w.muc.rooms[ROOM]
    assert (room.config.name, room.config.members_only, room.locked, room.subject) == ("Kept", True, False,
                                                                                      "Kept subject")
    assert room.affiliations == {"alice@localhost": "owner", "bob@localhost": "member"}
    bob, carol = w.log_in("bob@localhost"), w.log_in("carol@localhost")
    received = join(bob, nick="Bob")
    own, alices_id_after = _own_id(received)
    assert codes(own) == ["110"] and item(own)["affiliation"] == "member"
    assert alices_id_after == alices_id_before
    assert received[-1].findtext("{jabber:client}subject") == "Kept subject"
    [refused] = join(carol, nick="Carol")
    assert condition(refused) == "auth/registration-required"


def _own_id(received: list) -> tuple:  # type: ignore[type-arg]
    own = [p for p in received if p.tag == "{jabber:client}presence" and "110" in codes(p)][0]
    occupant_id = own.find("{urn:xmpp:occupant-id:0}occupant-id")
    return own, occupant_id.get("id") if occupant_id is not None else None


def test_destroying_a_room_tells_its_occupants_and_forgets_it(tmp_path: Path) -> None:
    """Section 10.9: every occupant gets unavailable presence with <destroy/> (the alternative
    venue and reason), the owner a result, and the persistent room is gone from the store; a
    non-owner asking is forbidden."""
    path = tmp_path / "store.sqlite"
    w = world(path)
    alice, bob = w.log_in("alice@localhost"), w.log_in("bob@localhost")
    join(alice, nick="Alice")
    configure(alice, {"muc#roomconfig_persistentroom": "1"})
    join(bob, nick="Bob")
    alice.read()
    destroy = (f"<iq type='set' id='x' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>"
               "<destroy jid='new@conference.localhost'><reason>moved</reason></destroy></query></iq>")
    bob.send(destroy)
    assert condition(bob.read()[0]) == "auth/forbidden"
    alice.send(destroy)
    [gone] = bob.read()
    destroyed = gone.find("{http://jabber.org/protocol/muc#user}x/{http://jabber.org/protocol/muc#user}destroy")
    assert gone.get("type") == "unavailable" and destroyed is not None
    assert destroyed.get("jid") == "new@conference.localhost"
    assert destroyed.findtext("{http://jabber.org/protocol/muc#user}reason") == "moved"
    assert [stanza.get("type") for stanza in alice.read()] == ["unavailable", "result"]
    assert ROOM not in w.muc.rooms and w.store.database.query("SELECT COUNT(*) FROM muc_rooms") == [(0,)]
