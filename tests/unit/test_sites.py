"""The site registry and the built-in sites against the ISite contract."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from sns_xmpp.config import ConfigError
from sns_xmpp.sites.interface import ISite, ISiteWithPages, Rejection, SiteContext, SiteRejection
from sns_xmpp.sites.registry import SitePluginError, load_sites

KEYS = {"k1": "0123456789abcdef0123"}


def context(tmp_path: Path) -> SiteContext:
    return SiteContext(Clock(), "http://127.0.0.1:5280", tmp_path, ("localhost",))


def test_built_in_sites_and_a_third_party_one_provide_the_interface(tmp_path: Path) -> None:
    registry = load_sites({
        "demo": {},
        "sns-example": {"plugin": "hmac", "keys": KEYS, "login_url": "https://sns.example/l?r={callback}"},
        "facebook": {"app_id": "1", "app_secret": "0123456789abcdef"},
        "tiny": {"plugin": "tiny-example", "secret": "0123456789abcdef"},
        "off": {"plugin": "no-such-plugin", "enabled": False},
    }, context(tmp_path))
    assert sorted(site.site_id for site in registry) == ["demo", "facebook", "sns-example", "tiny"]
    for site in registry:
        assert verifyObject(ISite, site)
    assert verifyObject(ISiteWithPages, registry.get("demo"))
    assert (tmp_path / "demo-site.key").stat().st_mode & 0o777 == 0o600


class NotASite:
    site_id = "bad"


def fake_entry_point(name: str, target: str) -> EntryPoint:
    return EntryPoint(name=name, value=target, group="sns_xmpp.sites")


@pytest.mark.parametrize(
    ("tables", "available", "message"),
    [
        ({"x": {"plugin": "missing"}}, {}, "sns-xmpp: site plugin error at 'sns_xmpp.sites:missing': no such plugin"),
        ({"x": {"plugin": "broken"}}, {"broken": fake_entry_point("broken", "no.such.module:factory")},
         "sns-xmpp: site plugin error at 'sns_xmpp.sites:broken': failed to load: ModuleNotFoundError"),
        ({"bad": {"plugin": "fake"}}, {"fake": fake_entry_point("fake", f"{__name__}:NotASite")},
         "sns-xmpp: site plugin error at 'sns_xmpp.sites:fake': failed for [sites.bad]: TypeError"),
        ({"localhost": {"plugin": "demo"}}, None, "sns-xmpp: config error at 'sites.localhost': a site id cannot be"),
        ({"Bad_Id": {"plugin": "demo"}}, None, "sns-xmpp: config error at 'sites.Bad_Id': a site id is"),
        ({"fb": {"plugin": "facebook", "app_id": "1"}}, None,
         "sns-xmpp: config error at 'sites.fb.app_secret': required"),
        ({"h": {"plugin": "hmac", "keys": {"k": "short"}, "login_url": "https://x/"}}, None,
         "sns-xmpp: config error at 'sites.h.keys.k': must be a secret of at least 16 characters"),
        ({"d": {"plugin": "demo", "colour": "blue"}}, None, "sns-xmpp: config error at 'sites.d.colour': unknown key"),
    ],
)
def test_start_up_refuses_bad_sites_in_one_line(tmp_path: Path, tables, available, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        load_sites(tables, context(tmp_path), available)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_plugin_object_without_the_interface_is_refused(tmp_path: Path) -> None:
    available = {"fake": fake_entry_point("fake", f"{__name__}:make_not_a_site")}
    with pytest.raises(SitePluginError, match="does not provide ISite"):
        load_sites({"bad": {"plugin": "fake"}}, context(tmp_path), available)


def make_not_a_site(site_id, settings, context):  # type: ignore[no-untyped-def]
    return NotASite()


def test_hmac_tokens_reject_every_single_character_change(tmp_path: Path) -> None:
    """Any change of one character in the identifier or the token is refused."""
    site = load_sites({"s": {"plugin": "hmac", "keys": KEYS, "login_url": "https://x/"}}, context(tmp_path)).get("s")
    identifier, token = site.mint("alice", "abc", 2000)
    assert site.check(identifier, token, 1000).account == "alice"
    for position in range(len(identifier)):
        for replacement in "a9.-":
            changed = identifier[:position] + replacement + identifier[position + 1:]
            if changed != identifier:
                with pytest.raises(SiteRejection):
                    site.check(changed, token, 1000)
    for position in range(len(token)):
        changed = token[:position] + ("A" if token[position] != "A" else "B") + token[position + 1:]
        with pytest.raises(SiteRejection) as caught:
            site.check(identifier, changed, 1000)
        assert caught.value.kind is Rejection.BAD_SIGNATURE


def test_sites_get_a_reactor_typed_by_what_they_use_and_the_admin_tool_gives_them_one() -> None:
    """SiteContext.reactor is an ISiteReactor (timers, TCP, name resolution for treq): the server's reactor is
    one, Twisted's in-memory reactor is one for plugin tests, and the admin tool passes one, never None."""
    import typing

    from twisted.internet import reactor
    from twisted.internet.testing import MemoryReactorClock

    from sns_xmpp.config import parse_config
    from sns_xmpp.ops.site_tools import site_context
    from sns_xmpp.reactors import IServerReactor
    from sns_xmpp.sites.interface import ISiteReactor

    assert typing.get_type_hints(SiteContext)["reactor"] is ISiteReactor
    assert IServerReactor.extends(ISiteReactor)
    for provider in (reactor, MemoryReactorClock()):
        assert all(interface.providedBy(provider) for interface in ISiteReactor.__bases__)
    given = site_context(parse_config("")).reactor
    assert given is not None
    assert verifyObject(ISiteReactor, given)
    assert given.getDelayedCalls() == []
