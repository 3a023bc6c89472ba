"""Social login for an existing Prosody (issue 21): Debian's Prosody 0.12, started by the test on
127.0.0.2 with ``authentication = "sns_xmpp"`` (contrib/prosody/mod_auth_sns_xmpp.lua), which
asks sns-xmpp's HTTP side (``/auth/check``, ``/auth/exists``, behind ``[http] auth_secret``); the
HTTP side also serves the login pages for Prosody's domain (tests/existing_servers.py).

The same must-shows as for ejabberd, as far as the module allows: a demo-site user logs in with
slixmpp and go-sendxmpp; a tampered signature and expired credentials are refused; a local user
chats with the social user; an offline message is kept and delivered at the next login. What it
cannot do: Prosody makes, changes and removes no accounts through it (``prosodyctl register``,
in-band registration and password changes are refused; sns-xmpp-admin does those), and it offers
only PLAIN, as ejabberd's external authentication does.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from slixmpp.exceptions import IqError

from tests.existing_servers import ROOT, SnsForPeer, login_pages_then_slixmpp_and_go_sendxmpp
from tests.peers import PROSODYCTL, LoopbackDNS, PeerClient, Prosody, free_port, loopback_dns_server, require_prosody  # noqa: F401
from tests.xmppclient import TIMEOUT, wait

DOMAIN = "prosody.example"
SECRET = secrets.token_urlsafe(24)


COMPONENT = f"sites.{DOMAIN}"
COMPONENT_SECRET = secrets.token_urlsafe(24)
COMPONENT_PORT = free_port("127.0.0.1")


@pytest.fixture(scope="module", name="sns")
def sns_for_prosody() -> Iterator[SnsForPeer]:
    """sns-xmpp's configuration for prosody.example, with the authentication endpoint and the
    sites component on; its HTTP side starts once Prosody listens (the prosody fixture)."""
    require_prosody()
    sns = SnsForPeer(DOMAIN, "root", http_extra=f'auth_secret = "{SECRET}"', extra=f"""
        [sites_component]
        jid = "{COMPONENT}"
        port = {COMPONENT_PORT}
        secret = "{COMPONENT_SECRET}"
        """)
    yield sns
    sns.stop()


@pytest.fixture(scope="module", name="prosody")
def prosody_with_sns_auth(loopback_dns: LoopbackDNS, sns: SnsForPeer) -> Iterator[Prosody]:
    server = Prosody(DOMAIN, "127.0.0.2", loopback_dns, plugin_paths=(str(ROOT / "contrib" / "prosody"),),
                     authentication=(
                         'authentication = "sns_xmpp"\n'
                         f'sns_xmpp_auth_url = "{sns.http_url}/auth"\n'
                         f'sns_xmpp_auth_secret = "{SECRET}"\n'
                         f"component_ports = {{ {COMPONENT_PORT} }}\n"
                         'component_interfaces = { "127.0.0.1" }\n'),
                     tail=f'Component "{COMPONENT}"\n    component_secret = "{COMPONENT_SECRET}"\n')
    try:
        sns.start_http_side()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


def client(prosody: Prosody, jid: str, password: str) -> PeerClient:
    return PeerClient(jid, password, prosody.address)


async def refused(prosody: Prosody, jid: str, password: str) -> str:
    attempt = client(prosody, jid, password)
    attempt.connect(port=prosody.c2s_port)
    failure = await asyncio.wait_for(attempt.auth_failures.get(), TIMEOUT)
    attempt.abort()
    return str(failure.get_condition())


@pytest_twisted.ensureDeferred
async def test_a_demo_user_from_the_login_pages_logs_in_with_slixmpp_and_go_sendxmpp(
        sns: SnsForPeer, prosody: Prosody, tmp_path: Path) -> None:
    """The login pages hand out prosody.example credentials; Prosody, asking sns-xmpp, binds
    slixmpp as the linked JID, and go-sendxmpp's message from it reaches a local user."""
    await login_pages_then_slixmpp_and_go_sendxmpp(sns, prosody, tmp_path)


@pytest_twisted.ensureDeferred
async def test_a_tampered_signature_and_expired_credentials_are_refused(sns: SnsForPeer, prosody: Prosody) -> None:
    good, expired = sns.mint("dora"), sns.mint("dora", lifetime=-3600)
    token = good["password"].rsplit(":", 1)[1]
    tampered = good["password"][:-len(token)] + token[::-1]
    assert await wait(refused(prosody, good["jid"], tampered)) == "not-authorized"
    assert await wait(refused(prosody, expired["jid"], expired["password"])) == "not-authorized"
    dora = client(prosody, good["jid"], good["password"])
    await wait(dora.log_in(prosody.c2s_port))
    await wait(dora.log_out())
    daemon_log = sns.log("daemon.log")
    assert "reason=bad-signature" in daemon_log and "reason=expired" in daemon_log
    for secret in (good["password"], tampered, expired["password"], token, SECRET):
        assert secret not in daemon_log
        assert secret not in prosody.log()


@pytest_twisted.ensureDeferred
async def test_a_local_user_chats_with_the_social_user(sns: SnsForPeer, prosody: Prosody) -> None:
    """A local sns-xmpp account and a demo-site user chat both ways through Prosody. Prosody cannot
    make accounts through the module: prosodyctl register is refused."""
    erin = client(prosody, sns.add_user("erin", "erin-secret"), "erin-secret")
    social = sns.mint("gina")
    gina = client(prosody, social["jid"], social["password"])
    for each in (gina, erin):
        await wait(each.log_in(prosody.c2s_port))
    erin.send_message(mto=gina.boundjid.bare, mbody="hi gina, erin here", mtype="chat")
    received = await wait(gina.next_message())
    assert (received["body"], received["from"].bare) == ("hi gina, erin here", f"erin@{DOMAIN}")
    gina.send_message(mto=received["from"], mbody="Grüße zurück ✓", mtype="chat")
    answer = await wait(erin.next_message())
    assert (answer["body"], answer["from"].bare) == ("Grüße zurück ✓", f"gina\\40demo@{DOMAIN}")
    for each in (gina, erin):
        await wait(each.log_out())
    done = subprocess.run([PROSODYCTL, "--config", str(prosody.config), "register", "fred", DOMAIN, "pw"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0


@pytest_twisted.ensureDeferred
async def test_a_message_to_the_offline_social_user_is_kept_and_delivered_at_the_next_login(
        sns: SnsForPeer, prosody: Prosody) -> None:
    """user_exists asks sns-xmpp: yes for a linked social user, so mod_offline keeps the message;
    a never-linked social JID is no user, and its message bounces."""
    social = sns.mint("hana")
    hana = client(prosody, social["jid"], social["password"])
    await wait(hana.log_in(prosody.c2s_port))
    await wait(hana.log_out())
    ivan = client(prosody, sns.add_user("ivan", "ivan-secret"), "ivan-secret")
    errors: asyncio.Queue = asyncio.Queue()
    ivan.add_event_handler("message_error", errors.put_nowait)
    await wait(ivan.log_in(prosody.c2s_port))
    ivan.send_message(mto=social["jid"], mbody="while you were away", mtype="chat")
    ivan.send_message(mto=f"nobody\\40demo@{DOMAIN}", mbody="to nobody", mtype="chat")
    bounce = await wait(errors.get())
    assert (bounce["from"].bare, bounce["error"]["condition"]) == (f"nobody\\40demo@{DOMAIN}",
                                                                    "service-unavailable")
    await wait(ivan.log_out())

    again = sns.mint("hana")
    hana = client(prosody, again["jid"], again["password"])
    await wait(hana.log_in(prosody.c2s_port))
    received = await wait(hana.next_message())
    assert (received["body"], received["from"].bare) == ("while you were away", f"ivan@{DOMAIN}")
    assert received["delay"]["stamp"] is not None
    await wait(hana.log_out())


@pytest_twisted.ensureDeferred
async def test_the_sites_component_answers_disco_with_the_sites_and_their_login_urls(
        sns: SnsForPeer, prosody: Prosody) -> None:
    """The HTTP side, connected to Prosody's component port as sites.prosody.example, lists the
    demo site as a disco item whose node's form holds its login URL, and answers <sites/> as the
    stream features of sns-xmpp's own server would."""
    erin = client(prosody, sns.add_user("una", "una-secret"), "una-secret")
    await wait(erin.log_in(prosody.c2s_port))
    disco = erin.plugin["xep_0030"]
    for _attempt in range(60):  # the component connects as the HTTP side starts: poll until it has
        try:
            items = await wait(disco.get_items(jid=COMPONENT, timeout=10))
            break
        except IqError:
            await asyncio.sleep(0.5)  # polling another process's connection, not a test's step
    else:
        raise AssertionError(f"the sites component never answered:\n{sns.log('daemon.log')}")
    listed = sorted(items["disco_items"]["items"])
    assert [(str(jid), node) for jid, node, _name in listed] == [(COMPONENT, "demo")] and listed[0][2]
    info = await wait(disco.get_info(jid=COMPONENT, node="demo", timeout=10))
    fields = {field.get("var"): field.findtext("{jabber:x:data}value")
              for field in info.xml.iter("{jabber:x:data}field")}
    assert fields == {"FORM_TYPE": "urn:x-sns-xmpp:sites:0", "id": "demo", "name": listed[0][2],
                      "login": f"{sns.http_url}/login-using-demo"}
    iq = erin.make_iq_get(ito=COMPONENT)
    iq.append(ET.Element("{urn:x-sns-xmpp:sites:0}sites"))
    answer = await wait(iq.send(timeout=10))
    sites = answer.xml.find("{urn:x-sns-xmpp:sites:0}sites")
    assert [(site.get("id"), site.get("login")) for site in sites] == [("demo", f"{sns.http_url}/login-using-demo")]
    await wait(erin.log_out())
