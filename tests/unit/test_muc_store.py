"""The conference service's persistent rooms (store/muc.py, schema 013) in both engines, and
through the service: a persistent room, its configuration, subject and affiliations survive a
restart; a temporary one is never written; destroying or un-persisting a room forgets it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sns_xmpp.store import muc as muc_store
from sns_xmpp.xmpp.features.muc.forms import RoomConfig
from tests.unit.test_muc import ROOM, body, codes, condition, configure, instant, item, join, world
from tests.unit.test_store import Backend, backend  # noqa: F401 - the fixture


def test_rooms_are_written_whole_read_back_and_deleted_in_each_engine(backend: Backend) -> None:  # noqa: F811
    """put_room replaces the room's row and its affiliations in one go; rooms() reads every
    room with its affiliations, configs() every room's configuration; delete_room takes the
    affiliations with it (the cascade)."""
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
        assert muc_store.room(db, "a@conference.x") == rooms[0]  # one room, as a cluster's take-over reads it
        assert muc_store.room(db, "c@conference.x") is None
        # Each room's configuration alone, as a cluster's node lists the public ones.
        assert muc_store.configs(db) == [("a@conference.x", first.config), ("b@conference.x", second.config)]
        muc_store.delete_room(db, "a@conference.x")
        assert [room.room for room in muc_store.rooms(db)] == ["b@conference.x"]
        assert muc_store.configs(db) == [("b@conference.x", second.config)]
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

    w = world(path, max_history=5)  # lowered since: the room's 20 is cut to it
    assert sorted(w.muc.rooms) == [ROOM]
    room = w.muc.rooms[ROOM]
    assert (room.config.history_length, room.history.maxlen) == (5, 5)
    assert (room.config.name, room.config.members_only, room.locked, room.subject) == ("Kept", True, False,
                                                                                      "Kept subject")
    assert room.affiliations == {"alice@localhost": "owner", "bob@localhost": "member"}
    bob, carol = w.log_in("bob@localhost"), w.log_in("carol@localhost")
    received = join(bob, nick="Bob")
    own, alices_id_after = _own_id(received)
    assert codes(own) == ["110", "170"] and item(own)["affiliation"] == "member"  # 170: logged (XEP-0313)
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


MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"


def mam_page(client, room: str = ROOM, rsm: str = "<max>2</max>", form: str = "") -> tuple[list, ET.Element]:  # type: ignore[no-untyped-def]
    client.send(f"<iq type='set' id='q' to='{room}'><query xmlns='{MAM}' queryid='f1'>{form}"
                f"<set xmlns='{RSM}'>{rsm}</set></query></iq>")
    *results, answer = client.read()
    return results, answer


def test_a_persistent_rooms_archive_pages_with_rsm_and_outlives_a_restart(tmp_path: Path) -> None:
    """XEP-0313 on the room's JID: each message with a body gets a stanza-id by the room (a
    client's own is dropped), in every occupant's copy; a query pages the room's messages with
    RSM (results from the room, then <fin/> with first, last, count), filters by occupant JID,
    refuses a stranger in a members-only room (forbidden) and an unknown UID (item-not-found);
    the archive keeps max_archived_messages and is there after a restart."""
    path = tmp_path / "store.sqlite"
    w = world(path, max_archived_messages=4)
    alice, bob, carol = w.log_in("alice@localhost"), w.log_in("bob@localhost"), w.log_in("carol@localhost")
    join(alice, nick="Alice")
    configure(alice, {"muc#roomconfig_persistentroom": "1"})
    join(bob, nick="Bob")
    alice.read()
    for n in range(5):
        sender = alice if n % 2 == 0 else bob
        sender.send(f"<message to='{ROOM}' type='groupchat' id='m{n}'><body>m{n}</body>"
                    f"<stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='forged'/></message>")
    copies = bob.read()
    ids = [c.find("{urn:xmpp:sid:0}stanza-id").get("id") for c in copies]  # type: ignore[union-attr]
    assert "forged" not in ids and len(set(ids)) == 5
    assert [c.find("{urn:xmpp:sid:0}stanza-id").get("by") for c in copies] == [ROOM] * 5  # type: ignore[union-attr]
    alice.read()

    results, answer = mam_page(carol)
    assert [body(r.find(f"{{{MAM}}}result/{{urn:xmpp:forward:0}}forwarded/{{jabber:client}}message"))
            for r in results] == ["m1", "m2"]  # the oldest of the four kept
    first = results[0]
    assert first.get("from") == ROOM and first.find(f"{{{MAM}}}result").get("queryid") == "f1"  # type: ignore[union-attr]
    assert first.find(f"{{{MAM}}}result").get("id") == ids[1]  # type: ignore[union-attr]
    forwarded = first.find(f"{{{MAM}}}result/{{urn:xmpp:forward:0}}forwarded/{{jabber:client}}message")
    assert forwarded is not None and forwarded.get("from") == f"{ROOM}/Bob" and forwarded.get("to") is None
    fin = answer.find(f"{{{MAM}}}fin")
    assert answer.get("type") == "result" and fin is not None and fin.get("complete") is None
    assert [fin.findtext(f"{{{RSM}}}set/{{{RSM}}}{name}") for name in ("first", "last", "count")] == [
        ids[1], ids[2], "4"]
    results, answer = mam_page(carol, rsm=f"<max>2</max><after>{ids[2]}</after>")
    assert [r.find(f"{{{MAM}}}result").get("id") for r in results] == ids[3:]  # type: ignore[union-attr]
    assert answer.find(f"{{{MAM}}}fin").get("complete") == "true"  # type: ignore[union-attr]
    results, _ = mam_page(carol, rsm="<max>10</max>", form=(
        f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{MAM}</value></field>"
        f"<field var='with'><value>{ROOM}/Alice</value></field></x>"))
    assert len(results) == 2
    _, refused = mam_page(carol, rsm="<max>2</max><after>ffff-nope</after>")
    assert condition(refused) == "cancel/item-not-found"
    configure(alice, {"muc#roomconfig_membersonly": "1"})
    _, refused = mam_page(carol)
    assert condition(refused) == "auth/forbidden"
    w.clock.advance(1)
    w.store.close()

    w = world(path, max_archived_messages=4)
    bob = w.log_in("bob@localhost")
    w.muc.rooms[ROOM].affiliations["bob@localhost"] = "member"
    results, answer = mam_page(bob, rsm="<max>10</max>")
    assert [r.find(f"{{{MAM}}}result").get("id") for r in results] == ids[1:]  # type: ignore[union-attr]


def test_room_archives_are_written_trimmed_and_paged_in_each_engine(backend: Backend) -> None:  # noqa: F811
    """archive() writes a batch in one transaction, leaves out rows of rooms not stored, keeps
    each room's newest *keep*; query_archive pages by RSM and filters by nick; a room's deletion
    takes its archive."""
    from sns_xmpp.store.mam import ArchiveQuery, UnknownArchiveId

    db = backend.open()
    try:
        muc_store.put_room(db, muc_store.StoredRoom("a@c.x", RoomConfig(persistent=True).to_json(), "", "", "s",
                                                    "alice@x", 1.0))
        rows = [("a@c.x", n << 10, f"{n << 10:x}-t", "Alice" if n % 2 else "Bob", f"<message n='{n}'/>")
                for n in range(1, 7)]
        muc_store.archive(db, [*rows, ("gone@c.x", 1 << 10, "400-t", "X", "<message/>")], keep=5)
        page = muc_store.query_archive(db, ArchiveQuery(owner="a@c.x", max=2))
        assert [row[0] for row in page.rows] == ["800-t", "c00-t"] and page.count == 5 and not page.complete
        page = muc_store.query_archive(db, ArchiveQuery(owner="a@c.x", max=2, last_page=True))
        assert [row[2] for row in page.rows] == ["<message n='5'/>", "<message n='6'/>"] and page.first_index == 3
        page = muc_store.query_archive(db, ArchiveQuery(owner="a@c.x", max=9, with_bare="a@c.x", with_resource="Bob"))
        assert [row[0] for row in page.rows] == ["800-t", "1000-t", "1800-t"]
        with pytest.raises(UnknownArchiveId):
            muc_store.query_archive(db, ArchiveQuery(owner="a@c.x", max=2, after="400-t"))
        assert backend.rows("SELECT COUNT(*) FROM muc_archive WHERE room = ?", ("gone@c.x",)) == [(0,)]
        muc_store.delete_room(db, "a@c.x")
        assert backend.rows("SELECT COUNT(*) FROM muc_archive") == [(0,)]
    finally:
        db.close()
