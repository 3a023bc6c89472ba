"""Store operations made of several database calls, run as one store call.

Each is one trip to the store's worker thread (or one inline read) instead of several: a
social login and storing an offline message each cost the reactor one
hand-off, whichever engine holds the data. They take any `Database` (SQLite or PostgreSQL)
and use only its own methods.
"""

from __future__ import annotations

from collections.abc import Iterable

from sns_xmpp.store.common import Database
from sns_xmpp.store.interface import JidTakenError
from sns_xmpp.store.records import SocialLink

# A link's last_login is brought up to date at most this often (seconds): writing it on every
# login was one write transaction per login, for a figure shown to operators to the minute.
TOUCH_INTERVAL = 60.0


def store_offline_capped(db: Database, owner: str, stanza: str, now: float, cap: int,
                         max_size: int | None = None) -> int | None:
    """Store the stanza unless *cap* messages already wait for the owner, or (with *max_size*)
    the waiting ones and this one would be more than *max_size* characters of XML: its id, or
    None when full."""
    if max_size is None:
        if db.count_offline(owner) >= cap:
            return None
    else:
        count, size = db.offline_usage(owner)
        if count >= cap or size + len(stanza) > max_size:
            return None
    return db.store_offline(owner, stanza, now)


def link_is_fresh(link: SocialLink, now: float) -> bool:
    return link.last_login is not None and 0 <= now - link.last_login < TOUCH_INTERVAL


def social_login(db: Database, site: str, account: str, candidates: Iterable[str], now: float) -> SocialLink | None:
    """The link of the site's account, created with the first free JID of *candidates* if there is
    none (None if all are taken), its last_login brought up to date."""
    link = db.get_link(site, account)
    if link is None:
        for jid in candidates:
            try:
                link = db.link_account(site, account, jid, now)
                break
            except JidTakenError:
                continue
        else:
            return None
    if not link_is_fresh(link, now):
        db.touch_link(site, account, now)
    return link
