"""What owners, admins and moderators do (XEP-0045 sections 8-10): the configuration form,
members-only and password-protected rooms, bans that hold, kicks, voice in moderated rooms and
voice requests, the lists, and the rules on who may change whom; invitations (7.8.2) and the
reserved nick (7.12); the service's limits."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from sns_xmpp.store import vcard as vcard_store
from tests.unit.test_muc import (
    MUC,
    ROOM,
    USER,
    Client,
    World,
    body,
    codes,
    condition,
    configure,
    instant,
    item,
    join,
    world,
)

ADMIN = MUC + "#admin"


def admin_set(client: Client, items: str, room: str = ROOM) -> list[ET.Element]:
    client.send(f"<iq type='set' id='a' to='{room}'><query xmlns='{ADMIN}'>{items}</query></iq>")
    return client.read()


def answer(stanzas: list[ET.Element]) -> ET.Element:
    [found] = [s for s in stanzas if s.tag == "{jabber:client}iq"]
    return found


def room_with(w: World, *names: str) -> list[Client]:
    """alice owns ROOM (instant), the others have entered it; everyone's output read."""
    clients = [w.log_in(f"{name}@localhost") for name in ("alice", *names)]
    join(clients[0], nick="Alice")
    instant(clients[0])
    for client, name in zip(clients[1:], names, strict=True):
        join(client, nick=name.capitalize())
    for client in clients:
        client.read()
    return clients


def test_the_owner_gets_the_configuration_form_and_a_bad_value_changes_nothing() -> None:
    """10.2: the form is muc#roomconfig with the fields the service honours, the current values
    filled in; a value out of range is not-acceptable and the room is as before; a non-owner
    asking is forbidden."""
    w = world(max_occupants=50, max_history=30)
    alice, bob = room_with(w, "bob")
    alice.send(f"<iq type='get' id='g' to='{ROOM}'><query xmlns='{MUC}#owner'/></iq>")
    [form_iq] = alice.read()
    fields = {f.get("var"): (f.get("type"), [v.text or "" for v in f.findall("{jabber:x:data}value")])
              for f in form_iq.iter("{jabber:x:data}field")}
    assert fields["FORM_TYPE"] == ("hidden", [MUC + "#roomconfig"])
    assert fields["muc#roomconfig_persistentroom"] == ("boolean", ["0"])
    assert fields["muc#roomconfig_whois"] == ("list-single", ["moderators"])
    assert fields["muc#roomconfig_maxusers"] == ("text-single", ["50"])
    assert fields["muc#roomconfig_roomsecret"] == ("text-private", [""])
    assert set(fields) >= {"muc#roomconfig_roomname", "muc#roomconfig_roomdesc", "muc#roomconfig_publicroom",
                           "muc#roomconfig_membersonly", "muc#roomconfig_moderatedroom",
                           "muc#roomconfig_passwordprotectedroom", "muc#roomconfig_historylength"}
    for bad in ({"muc#roomconfig_historylength": "31"}, {"muc#roomconfig_maxusers": "51"},
                {"muc#roomconfig_whois": "everyone"}, {"muc#roomconfig_passwordprotectedroom": "1"},
                {"muc#roomconfig_roomname": "n", "muc#roomconfig_persistentroom": "maybe"}):
        assert condition(configure(alice, bad)) == "modify/not-acceptable", bad
    assert w.muc.rooms[ROOM].config.name == ""
    bob.send(f"<iq type='get' id='g' to='{ROOM}'><query xmlns='{MUC}#owner'/></iq>")
    assert condition(bob.read()[0]) == "auth/forbidden"


def test_members_only_refuses_strangers_and_a_password_is_checked() -> None:
    """7.2.7: registration-required for someone with no affiliation; a member enters and (7.11)
    may see the member and owner lists, not the ban list. 7.2.6:
    not-authorized without the right password. 9.4/10.2: making the room members-only removes
    the occupants who are not members, with 322."""
    w = world()
    alice, bob, carol = room_with(w, "bob", "carol")
    admin_set(alice, "<item affiliation='member' jid='bob@localhost'/>")
    bob.read()
    carol.read()
    configure(alice, {"muc#roomconfig_membersonly": "1"})
    carol_removed, notice = bob.read()
    assert codes(carol_removed) == ["322"] and codes(notice) == ["104"]
    [removed] = carol.read()  # gone before the notice
    assert removed.get("type") == "unavailable" and codes(removed) == ["322", "110"]
    [refused] = join(carol, nick="Carol")
    assert condition(refused) == "auth/registration-required"
    for listed, expected in (("member", "bob@localhost"), ("owner", "alice@localhost")):  # 7.11: a member may
        bob.send(f"<iq type='get' id='l' to='{ROOM}'><query xmlns='{ADMIN}'><item affiliation='{listed}'/>"
                 "</query></iq>")
        assert f"<item affiliation='{listed}' jid='{expected}'/>" in bob.text()
    bob.send(f"<iq type='get' id='l' to='{ROOM}'><query xmlns='{ADMIN}'><item affiliation='outcast'/></query></iq>")
    assert condition(bob.read()[0]) == "auth/forbidden"
    configure(alice, {"muc#roomconfig_membersonly": "0", "muc#roomconfig_passwordprotectedroom": "1",
                      "muc#roomconfig_roomsecret": "s3cret"})
    [refused] = join(carol, nick="Carol", extra="<password>wrong</password>")
    assert condition(refused) == "auth/not-authorized"
    assert "110" in codes(join(carol, nick="Carol", extra="<password>s3cret</password>")[-2])


def test_a_ban_removes_the_occupant_and_holds_and_only_owners_touch_admins() -> None:
    """9.1: the banned occupant leaves with 301 (others see it too), and cannot come back
    (forbidden); the ban list shows it. An admin may not ban an owner or admin (not-allowed), a
    participant may not ban at all (forbidden), and the last owner cannot step down (conflict).
    A request with one bad item changes nothing."""
    w = world()
    alice, bob, carol, dave = room_with(w, "bob", "carol", "dave")
    assert answer(admin_set(alice, "<item affiliation='admin' jid='bob@localhost'/>")).get("type") == "result"
    [bob_is_admin] = carol.read()
    assert item(bob_is_admin) == {"affiliation": "admin", "role": "moderator"}
    bob.read()
    dave.read()
    assert condition(answer(admin_set(bob, "<item affiliation='outcast' jid='alice@localhost'/>"))) == \
        "cancel/not-allowed"
    assert condition(answer(admin_set(carol, "<item affiliation='outcast' jid='dave@localhost'/>"))) == \
        "auth/forbidden"
    refused = admin_set(bob, "<item affiliation='outcast' jid='carol@localhost'/><item affiliation='bogus' jid='x@y'/>")
    assert condition(answer(refused)) == "modify/bad-request"
    assert w.muc.rooms[ROOM].affiliation("carol@localhost") == "none"
    banned = admin_set(bob, "<item affiliation='outcast' jid='carol@localhost'><reason>spam</reason></item>")
    assert answer(banned).get("type") == "result"
    [gone] = carol.read()
    assert gone.get("type") == "unavailable" and codes(gone) == ["301", "110"]
    assert gone.findtext(f"{{{USER}}}x/{{{USER}}}item/{{{USER}}}reason") == "spam"
    assert gone.find(f"{{{USER}}}x/{{{USER}}}item/{{{USER}}}actor").get("nick") == "Bob"  # type: ignore[union-attr]
    [seen] = dave.read()
    assert codes(seen) == ["301"] and "jid" not in item(seen)
    [refused] = join(carol, nick="Carol")
    assert condition(refused) == "auth/forbidden"
    bob.send(f"<iq type='get' id='l' to='{ROOM}'><query xmlns='{ADMIN}'><item affiliation='outcast'/></query></iq>")
    assert "<item affiliation='outcast' jid='carol@localhost'/>" in bob.stream.transport.value().decode()  # type: ignore[union-attr]
    bob.read()
    assert condition(answer(admin_set(alice, "<item affiliation='member' jid='alice@localhost'/>"))) == \
        "cancel/conflict"


def test_a_moderator_kicks_and_gives_voice_and_a_visitor_asks_for_it() -> None:
    """8.2: a kicked occupant leaves with 307; a moderator may not kick an admin (not-allowed).
    Moderated rooms (7.4, 7.13, 8.3, 8.6): a visitor may not speak (forbidden), asks for voice,
    each moderator gets the approval form, and approving it makes the visitor a participant."""
    w = world()
    alice, bob, carol = room_with(w, "bob", "carol")
    assert answer(admin_set(bob, "<item nick='Carol' role='none'/>")).get("type") == "error"  # bob: no moderator
    assert answer(admin_set(alice, "<item nick='Carol' role='none'><reason>out</reason></item>")).get("type") == \
        "result"
    [kicked] = carol.read()
    assert codes(kicked) == ["307", "110"] and item(kicked)["role"] == "none"
    bob.read()
    configure(alice, {"muc#roomconfig_moderatedroom": "1"})
    bob.read()
    *_, own, _subject = join(carol, nick="Carol")
    assert item(own)["role"] == "visitor"
    carol.send(f"<message to='{ROOM}' type='groupchat'><body>hi</body></message>")
    assert condition(carol.read()[0]) == "auth/forbidden"
    alice.read()
    bob.read()
    carol.send(f"<message to='{ROOM}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
               f"<value>{MUC}#request</value></field><field var='muc#role'><value>participant</value></field>"
               "</x></message>")
    [request] = alice.read()
    fields = {f.get("var"): f.findtext("{jabber:x:data}value") for f in request.iter("{jabber:x:data}field")}
    assert request.get("from") == ROOM and fields["muc#roomnick"] == "Carol"
    assert fields["muc#jid"] == "carol@localhost/r"
    assert bob.read() == []  # not a moderator
    alice.send(f"<message to='{ROOM}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
               f"<value>{MUC}#request</value></field><field var='muc#roomnick'><value>Carol</value></field>"
               "<field var='muc#request_allow'><value>true</value></field></x></message>")
    [voiced] = bob.read()
    assert item(voiced)["role"] == "participant"
    carol.read()
    carol.send(f"<message to='{ROOM}' type='groupchat'><body>thanks</body></message>")
    assert body(bob.read()[0]) == "thanks"
    assert condition(answer(admin_set(alice, "<item nick='Alice' role='visitor'/>"))) == "cancel/not-allowed"


def test_mediated_invitations_and_the_nick_a_user_would_take() -> None:
    """7.8.2: the room passes an invitation on from itself, naming the inviter, with the password;
    in a members-only room the invitee becomes a member; a decline goes back to the inviter. 7.12:
    disco#info on the node x-roomuser-item answers the user's display name (the site's, from
    the login), or the vCard's FN, or nothing."""
    w = world()
    alice = w.log_in("alice@localhost", display_name="Alice Liddell")
    bob = w.log_in("bob@localhost")
    join(alice, nick="Alice")
    configure(alice, {"muc#roomconfig_membersonly": "1", "muc#roomconfig_passwordprotectedroom": "1",
                      "muc#roomconfig_roomsecret": "pw"})
    alice.send(f"<message to='{ROOM}'><x xmlns='{USER}'><invite to='bob@localhost'><reason>join us</reason>"
               "</invite></x></message>")
    [invitation] = bob.read()
    invite = invitation.find(f"{{{USER}}}x/{{{USER}}}invite")
    assert invitation.get("from") == ROOM and invite is not None and invite.get("from") == "alice@localhost/r"
    assert invite.findtext(f"{{{USER}}}reason") == "join us"
    assert invitation.findtext(f"{{{USER}}}x/{{{USER}}}password") == "pw"
    assert w.muc.rooms[ROOM].affiliation("bob@localhost") == "member"
    bob.send(f"<message to='{ROOM}'><x xmlns='{USER}'><decline to='alice@localhost/r'><reason>busy</reason>"
             "</decline></x></message>")
    [declined] = alice.read()
    decline = declined.find(f"{{{USER}}}x/{{{USER}}}decline")
    assert decline is not None and decline.get("from") == "bob@localhost"

    carol = w.log_in("carol@localhost")
    w.store.database.create_account("carol@localhost", [], 0.0)
    vcard_store.put_vcard(w.store.database, "carol@localhost", "<vCard xmlns='vcard-temp'><FN>Carol C</FN></vCard>",
                          "", 0.0)
    for client, expected in ((alice, "Alice Liddell"), (bob, None), (carol, "Carol C")):
        client.send(f"<iq type='get' id='n' to='{ROOM}'><query xmlns='http://jabber.org/protocol/disco#info' "
                    "node='x-roomuser-item'/></iq>")
        [reply] = client.read()
        identity = reply.find("{http://jabber.org/protocol/disco#info}query/"
                              "{http://jabber.org/protocol/disco#info}identity")
        assert (identity.get("name") if identity is not None else None) == expected


def test_limits_on_rooms_per_user_and_occupants_per_room() -> None:
    """[xmpp.muc]: a user with max_rooms_per_user rooms may not make another (not-allowed, and
    the room is not made); a room at max_occupants refuses the next (service-unavailable, wait),
    even an admin; a room's own max users lets its admins past (7.2.10)."""
    w = world(max_rooms_per_user=2, max_occupants=3)
    alice, bob, carol, dave = (w.log_in(f"{name}@localhost") for name in ("alice", "bob", "carol", "dave"))
    for n in range(2):
        join(alice, room=f"r{n}@conference.localhost", nick="Alice")
    [refused] = join(alice, room="r2@conference.localhost", nick="Alice")
    assert condition(refused) == "cancel/not-allowed" and "r2@conference.localhost" not in w.muc.rooms
    alice.send("<presence to='r0@conference.localhost/Alice' type='unavailable'/>")
    alice.read()
    assert "110" in codes(join(alice, room="r2@conference.localhost", nick="Alice")[0])

    instant(alice, room="r1@conference.localhost")
    configure(alice, {"muc#roomconfig_maxusers": "2"}, room="r1@conference.localhost")
    join(bob, room="r1@conference.localhost", nick="Bob")
    [refused] = join(carol, room="r1@conference.localhost", nick="Carol")
    assert condition(refused) == "wait/service-unavailable"
    admin_set(alice, "<item affiliation='admin' jid='carol@localhost'/>", room="r1@conference.localhost")
    assert "110" in codes(join(carol, room="r1@conference.localhost", nick="Carol")[-2])
    admin_set(alice, "<item affiliation='admin' jid='dave@localhost'/>", room="r1@conference.localhost")
    [refused] = join(dave, room="r1@conference.localhost", nick="Dave")
    assert condition(refused) == "wait/service-unavailable"
    counted = w.sessions.metrics.limits_hit.labels("muc-occupants")._value.get()
    rooms_counted = w.sessions.metrics.limits_hit.labels("muc-rooms-per-user")._value.get()
    assert (counted, rooms_counted) == (1, 1)  # the service's limits, not the owner's


def test_the_history_a_room_keeps_is_bounded_by_its_configuration() -> None:
    """max_history bounds muc#roomconfig_historylength; a room keeps that many messages."""
    w = world(max_history=5)
    alice, bob = room_with(w, "bob")
    assert condition(configure(alice, {"muc#roomconfig_historylength": "6"})) == "modify/not-acceptable"
    configure(alice, {"muc#roomconfig_historylength": "2"})
    for n in range(4):
        alice.send(f"<message to='{ROOM}' type='groupchat'><body>m{n}</body></message>")
    assert len(w.muc.rooms[ROOM].history) == 2


def test_who_may_invite_to_a_members_only_room() -> None:
    """7.8.2: someone not in the room may not invite (not-acceptable); in a members-only room a
    participant may not (forbidden) unless the owner allows invitations
    (muc#roomconfig_allowinvites), and then the invitee becomes a member too."""
    w = world()
    alice, bob, carol = w.log_in("alice@localhost"), w.log_in("bob@localhost"), w.log_in("carol@localhost")
    dave = w.log_in("dave@localhost")
    join(alice, nick="Alice")
    configure(alice, {"muc#roomconfig_membersonly": "1"})
    admin_set(alice, "<item affiliation='member' jid='bob@localhost'/>")
    join(bob, nick="Bob")
    alice.read()
    invite = f"<message to='{ROOM}'><x xmlns='{USER}'><invite to='dave@localhost'/></x></message>"
    carol.send(invite)
    assert condition(carol.read()[0]) == "modify/not-acceptable"
    bob.send(invite)
    assert condition(bob.read()[0]) == "auth/forbidden" and dave.read() == []
    configure(alice, {"muc#roomconfig_allowinvites": "1"})
    bob.read()
    bob.send(invite)
    [invitation] = dave.read()
    assert invitation.find(f"{{{USER}}}x/{{{USER}}}invite").get("from") == "bob@localhost/r"  # type: ignore[union-attr]
    assert w.muc.rooms[ROOM].affiliation("dave@localhost") == "member"
    assert "110" in codes(join(dave, nick="Dave")[-2])
