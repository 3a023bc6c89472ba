"""The names the operators' console offers (documented in docs/operations.md).

Everything here runs in the reactor thread, like the server itself, so it is
safe while the server serves; what needs the store returns a Deferred, which
the console prints when it fires.
"""

from __future__ import annotations

import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, gatherResults
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.store import upload as upload_store
from sns_xmpp.xmpp.features.muc import muc_service
from sns_xmpp.xmpp.revocation import end_sessions
from sns_xmpp.xmpp.stanzas import add_element

if TYPE_CHECKING:
    from sns_xmpp.ops.reload import SiteReloader
    from sns_xmpp.sites.registry import SiteRegistry
    from sns_xmpp.store.threaded import ThreadedStore
    from sns_xmpp.xmpp.features import FeatureRegistry
    from sns_xmpp.xmpp.s2s.federation import Federation
    from sns_xmpp.xmpp.sessions import SessionManager


class Server(Protocol):
    """What the console uses of the running server (`service.Server` provides it); the console
    takes these parts rather than importing the service, which builds the console."""

    @property
    def store(self) -> ThreadedStore: ...

    @property
    def sessions(self) -> SessionManager: ...

    @property
    def sites(self) -> SiteRegistry: ...

    @property
    def reloader(self) -> SiteReloader | None: ...

    @property
    def features(self) -> FeatureRegistry | None: ...

    @property
    def federation(self) -> Federation | None: ...


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class SitesView:
    """``sites``: each site with its status; ``sites.reload()`` reads the config file again."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def __repr__(self) -> str:
        rows = [f"{site.site_id:<20} {site.display_name:<30} {site.status()}" for site in self._server.sites]
        return "\n".join(rows) or "(no sites)"

    def __getitem__(self, site_id: str) -> Any:
        return self._server.sites.sites[site_id]

    def reload(self) -> bool:
        if self._server.reloader is None:
            raise RuntimeError("this server was not started from a configuration file")
        return self._server.reloader.reload()


def namespace(server: Server) -> dict[str, Any]:
    sessions = server.sessions
    started = sessions.clock.seconds()

    def list_sessions() -> list[dict[str, Any]]:
        """Every bound resource: JID, peer, since when, TLS, and how it authenticated."""
        return [{
            "jid": session.full,
            "peer": session.stream.peer,
            "since": _when(session.connected_at),
            "tls": session.stream.secure,
            "auth": session.login.site or session.login.method,
        } for session in sessions.all_sessions()]

    def kick(jid: str, reason: str = "disconnected by an operator") -> int:
        """End the sessions of a full or bare JID with a <policy-violation/> stream error; returns how many."""
        try:
            target = parse_jid(jid)
        except InvalidFormat:
            raise ValueError(f"not a JID: {jid!r}") from None
        victims = sessions.local_resources(target.userhost())
        if target.resource is not None:
            victims = [s for s in victims if s.resource == target.resource]
        for session in victims:
            session.stream.fail(StreamError("policy-violation", text=reason))
        return len(victims)

    def broadcast(text: str) -> int:
        """A headline message from each domain to every session; returns how many were sent."""
        count = 0
        for session in sessions.all_sessions():
            message = domish.Element((None, "message"))
            message["type"] = "headline"
            message["from"] = session.jid.host
            message["to"] = session.full
            add_element(message, "body", content=text)
            session.send(message)
            count += 1
        return count

    def links(site: str | None = None, account: str | None = None) -> Deferred[Any]:
        """Social links, all or of one site; with an account, that one link."""
        if site is not None and account is not None:
            return server.store.get_link(site, account)
        return server.store.list_links(site=site)

    def user(jid: str) -> Deferred[dict[str, Any]]:
        """An account: whether it is social, its links and its live sessions."""
        bare = parse_jid(jid).userhost()

        def describe(results: list[Any]) -> dict[str, Any]:
            account, found_links = results
            return {
                "jid": bare,
                "exists": account is not None,
                "social": bool(account and account.social),
                "created": _when(account.created_at) if account else None,
                "links": [(link.site, link.account) for link in found_links],
                "sessions": [s.full for s in sessions.resources(bare)],
            }

        account: Deferred[Any] = server.store.get_account(bare)
        found: Deferred[Any] = server.store.list_links(jid=bare)
        return gatherResults([account, found]).addCallback(describe)

    def revoke(jid: str, reason: str = "revoked by an operator") -> Deferred[int]:
        """Log the account out everywhere: its sessions end (on every node, within seconds), and
        its site credentials issued until now stop working; how many sessions ended here."""
        bare = parse_jid(jid).userhost()
        d: Deferred[Any] = server.store.revoke(bare, reason, sessions.clock.seconds())
        return d.addCallback(lambda recorded: end_sessions(sessions, bare, reason))

    def devices(jid: str) -> Deferred[list[dict[str, Any]]]:
        """The account's device passwords: id, name, created."""
        d: Deferred[Any] = server.store.device_passwords(parse_jid(jid).userhost())
        return d.addCallback(lambda found: [{"id": p.id, "label": p.label, "created": _when(p.created_at)}
                                            for p in found])

    def remove_device(jid: str, device_id: int) -> Deferred[bool]:
        """Forget one device password (the device using it can no longer log in); whether it was there."""
        d: Deferred[bool] = server.store.remove_device_password(parse_jid(jid).userhost(), device_id)
        return d

    def uploads(jid: str | None = None, limit: int = 20) -> Deferred[Any]:
        """HTTP upload (XEP-0363): the files stored and their bytes, with the accounts keeping most;
        with a JID, that account's latest files."""
        if jid is not None:
            owner = parse_jid(jid).userhost()
            d: Deferred[Any] = server.store.run_read(partial(upload_store.recent, owner=owner, limit=limit))
            return d.addCallback(lambda files: [{
                "name": f.filename, "bytes": f.size, "type": f.content_type, "slot": f.slot,
                "stored": _when(f.stored_at or f.created_at),
                "expires": _when(f.expires_at) if f.expires_at is not None else None,
            } for f in files])

        def summary(results: list[Any]) -> dict[str, Any]:
            (files, size), owners = results
            return {"files": files, "bytes": size,
                    "by_account": [{"jid": owner, "files": count, "bytes": kept} for owner, count, kept in owners]}

        kept: Deferred[Any] = server.store.run_read(upload_store.totals)
        largest: Deferred[Any] = server.store.run_read(partial(upload_store.usage_by_owner, limit=limit))
        return gatherResults([kept, largest]).addCallback(summary)

    def rooms(room: str | None = None) -> Any:
        """The chat rooms (XEP-0045) now, persistent or not, with their occupant counts; with a
        room's JID, its configuration, occupants (nick, real JID, role) and affiliations."""
        muc = muc_service(server.features.services) if server.features is not None else None
        if muc is None:
            return "the MUC feature is not installed"
        if room is None:
            return muc.describe()
        found = muc.rooms.get(parse_jid(room).userhost())
        return muc.describe_room(found) if found is not None else None

    def destroy_room(room: str, reason: str = "closed by an operator") -> bool:
        """End a chat room now (XEP-0045 section 10.9: its occupants are told, with *reason*),
        persistent or not, with its stored configuration, affiliations and archive."""
        muc = muc_service(server.features.services) if server.features is not None else None
        found = muc.rooms.get(parse_jid(room).userhost()) if muc is not None else None
        if muc is None or found is None:
            return False
        muc.destroy(found, reason)
        return True

    def s2s(domain: str | None = None) -> Any:
        """The server-to-server links: per remote domain, its outgoing streams (state, how they
        authenticated, stanzas queued and sent) and incoming ones; with a domain, that one."""
        if server.federation is None:
            return "server-to-server is off ([xmpp.s2s] port = -1)"
        view = server.federation.domains()
        return view.get(domain.lower()) if domain is not None else view

    def stats() -> dict[str, Any]:
        """Counts of what is live now."""
        every = sessions.all_sessions()
        return {
            "uptime_seconds": round(sessions.clock.seconds() - started),
            "sessions": len(every),
            "users_online": len(sessions.users),
            "sessions_by_auth": _count(s.login.site or s.login.method for s in every),
            "sites": len(server.sites),
            "rosters_cached": len(sessions.rosters),
        }

    return {
        "server": server,
        "sessions": list_sessions,
        "kick": kick,
        "broadcast": broadcast,
        "sites": SitesView(server),
        "links": links,
        "user": user,
        "revoke": revoke,
        "devices": devices,
        "remove_device": remove_device,
        "stats": stats,
        "uploads": uploads,
        "rooms": rooms,
        "destroy_room": destroy_room,
        "s2s": s2s,
    }


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts
