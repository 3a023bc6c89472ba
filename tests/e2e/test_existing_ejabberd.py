"""Social login for an existing ejabberd (issue 21): Debian's ejabberd 23.01, started by the test on
127.0.0.3 with ``auth_method: external`` and ``extauth_program`` pointing at sns-xmpp-extauth,
which reads the same configuration file as sns-xmpp's HTTP side (the login pages, the demo site),
running beside it with no client listener of its own (tests/existing_servers.py).

The must-shows: a demo-site user logs in with slixmpp and with go-sendxmpp; a tampered signature
and expired credentials are refused; a local user chats with the social user; a message to the
offline social user is kept by ejabberd and delivered at the next login; and the CPU that
extauth spends per login, over 50 logins at once through ejabberd.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from tests.existing_servers import SnsForPeer, cpu_seconds, login_pages_then_slixmpp_and_go_sendxmpp
from tests.peers import Ejabberd, LoopbackDNS, PeerClient, loopback_dns_server, require_ejabberd  # noqa: F401
from tests.xmppclient import TIMEOUT, wait

DOMAIN = "ejabberd.example"
POOL_SIZE = 2


@pytest.fixture(scope="module", name="sns")
def sns_for_ejabberd() -> Iterator[SnsForPeer]:
    """sns-xmpp's HTTP side for ejabberd.example, as the ejabberd user."""
    require_ejabberd()
    sns = SnsForPeer(DOMAIN, "ejabberd")
    sns.start_http_side()
    yield sns
    sns.stop()


@pytest.fixture(scope="module", name="ejabberd")
def ejabberd_with_extauth(loopback_dns: LoopbackDNS, sns: SnsForPeer) -> Iterator[Ejabberd]:
    server = Ejabberd(DOMAIN, "127.0.0.3", loopback_dns, authentication=(
        "auth_method: external\n"
        f'extauth_program: "{sns.extauth_program}"\n'
        f"extauth_pool_size: {POOL_SIZE}\n"
        "auth_use_cache: false\n"))  # see docs/operations.md: a cached password outlives its expiry
    yield server
    server.stop()


def client(ejabberd: Ejabberd, jid: str, password: str) -> PeerClient:
    return PeerClient(jid, password, ejabberd.address)


async def refused(ejabberd: Ejabberd, jid: str, password: str) -> str:
    """Log in, expecting ejabberd's SASL failure; its condition."""
    attempt = client(ejabberd, jid, password)
    attempt.connect(port=ejabberd.c2s_port)
    failure = await asyncio.wait_for(attempt.auth_failures.get(), TIMEOUT)
    attempt.abort()
    return str(failure.get_condition())


@pytest_twisted.ensureDeferred
async def test_a_demo_user_from_the_login_pages_logs_in_with_slixmpp_and_go_sendxmpp(
        sns: SnsForPeer, ejabberd: Ejabberd, tmp_path: Path) -> None:
    """The patent's browser flow on sns-xmpp's HTTP side hands out ejabberd.example credentials (the
    linked JID carol\\40demo@ejabberd.example and the sns1: password); ejabberd, asking extauth,
    binds slixmpp as exactly that JID, and go-sendxmpp's message from it reaches a local user."""
    await login_pages_then_slixmpp_and_go_sendxmpp(sns, ejabberd, tmp_path)


@pytest_twisted.ensureDeferred
async def test_a_tampered_signature_and_expired_credentials_are_refused(sns: SnsForPeer, ejabberd: Ejabberd) -> None:
    """ejabberd answers not-authorized for both (extauth said no), and says why in neither its log
    nor extauth's holds the password; genuine credentials still log in afterwards."""
    good, expired = sns.mint("dora"), sns.mint("dora", lifetime=-3600)
    token = good["password"].rsplit(":", 1)[1]
    tampered = good["password"][:-len(token)] + token[::-1]
    assert await wait(refused(ejabberd, good["jid"], tampered)) == "not-authorized"
    assert await wait(refused(ejabberd, expired["jid"], expired["password"])) == "not-authorized"
    assert await wait(refused(ejabberd, "nobody\\40demo@" + DOMAIN, good["password"])) == "not-authorized"
    dora = client(ejabberd, good["jid"], good["password"])
    await wait(dora.log_in(ejabberd.c2s_port))
    await wait(dora.log_out())
    extauth_log = sns.log("extauth.log")
    assert "reason=bad-signature" in extauth_log and "reason=expired" in extauth_log
    assert "reason=other-account" in extauth_log
    for secret in (good["password"], tampered, expired["password"], token):
        assert secret not in extauth_log
        assert secret not in ejabberd.log()


@pytest_twisted.ensureDeferred
async def test_local_users_chat_with_the_social_user(sns: SnsForPeer, ejabberd: Ejabberd) -> None:
    """A local sns-xmpp account (sns-xmpp-admin) and one registered through ejabberd (ejabberdctl
    register: extauth's tryregister) chat both ways with a demo-site user."""
    erin_jid = sns.add_user("erin", "erin-secret")
    ejabberd.register("fred", "fred-secret")  # ejabberd asks extauth to make the account
    social = sns.mint("gina")
    gina, erin, fred = (client(ejabberd, social["jid"], social["password"]),
                        client(ejabberd, erin_jid, "erin-secret"), ejabberd.client("fred", "fred-secret"))
    for each in (gina, erin, fred):
        await wait(each.log_in(ejabberd.c2s_port))
    for local in (erin, fred):
        local.send_message(mto=gina.boundjid.bare, mbody=f"hi gina, {local.boundjid.user} here", mtype="chat")
        received = await wait(gina.next_message())
        assert (received["body"], received["from"].bare) == (f"hi gina, {local.boundjid.user} here",
                                                             local.boundjid.bare)
        gina.send_message(mto=received["from"], mbody="Grüße zurück ✓", mtype="chat")
        answer = await wait(local.next_message())
        assert (answer["body"], answer["from"].bare) == ("Grüße zurück ✓", f"gina\\40demo@{DOMAIN}")
    for each in (gina, erin, fred):
        await wait(each.log_out())


@pytest_twisted.ensureDeferred
async def test_a_message_to_the_offline_social_user_is_kept_and_delivered_at_the_next_login(
        sns: SnsForPeer, ejabberd: Ejabberd) -> None:
    """isuser says yes for a linked social user, so ejabberd's mod_offline keeps the message; a
    social JID never linked is no user, and its message bounces."""
    social = sns.mint("hana")
    hana = client(ejabberd, social["jid"], social["password"])
    await wait(hana.log_in(ejabberd.c2s_port))  # the first login links the account
    await wait(hana.log_out())
    ivan = client(ejabberd, sns.add_user("ivan", "ivan-secret"), "ivan-secret")
    errors: asyncio.Queue = asyncio.Queue()
    ivan.add_event_handler("message_error", errors.put_nowait)
    await wait(ivan.log_in(ejabberd.c2s_port))
    ivan.send_message(mto=social["jid"], mbody="while you were away", mtype="chat")
    ivan.send_message(mto=f"nobody\\40demo@{DOMAIN}", mbody="to nobody", mtype="chat")
    bounce = await wait(errors.get())
    assert (bounce["from"].bare, bounce["error"]["condition"]) == (f"nobody\\40demo@{DOMAIN}",
                                                                    "service-unavailable")
    await wait(ivan.log_out())

    again = sns.mint("hana")  # new credentials, the same linked JID
    assert again["jid"] == social["jid"]
    hana = client(ejabberd, again["jid"], again["password"])
    await wait(hana.log_in(ejabberd.c2s_port))
    received = await wait(hana.next_message())
    assert (received["body"], received["from"].bare) == ("while you were away", f"ivan@{DOMAIN}")
    assert received["delay"]["stamp"] is not None  # stored, then delivered (XEP-0203)
    await wait(hana.log_out())


LOGINS = 50
REPEAT_ROUNDS = 4


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_extauth_cpu_per_login_with_50_concurrent_logins(sns: SnsForPeer, ejabberd: Ejabberd) -> None:
    """50 demo users log in at once through ejabberd, five times (the first logins make the links;
    the next four rounds are the usual repeat login); the extauth processes' CPU time (user +
    system, all threads, /proc/<pid>/stat) grows by at most 1 ms per repeat login."""
    credentials = [sns.mint(f"bench{n}", lifetime=3600) for n in range(LOGINS)]
    pids = sns.extauth_pids()
    assert len(pids) == POOL_SIZE, pids
    figures = []
    # The first round makes the links; the repeat logins are measured over several rounds: CPU
    # time comes in clock ticks (10 ms), 0.2 ms per login over one round of 50, too coarse for
    # a bound of 1 ms (one clean-clone run read 1.00 ms).
    for _round in range(1 + REPEAT_ROUNDS):
        before = sum(cpu_seconds(pid) for pid in pids)
        clients = [client(ejabberd, c["jid"], c["password"]) for c in credentials]
        await wait(asyncio.gather(*(c.log_in(ejabberd.c2s_port, presence=False) for c in clients)), 120)
        after = sum(cpu_seconds(pid) for pid in pids)
        figures.append((after - before) / LOGINS)
        await wait(asyncio.gather(*(c.log_out() for c in clients)), 60)
    assert sorted(sns.extauth_pids()) == sorted(pids)  # the same pool served every login
    repeat = sum(figures[1:]) / REPEAT_ROUNDS
    figures = [figures[0], repeat]
    report = (f"extauth CPU per login over {LOGINS} concurrent logins through ejabberd "
              f"(pool of {POOL_SIZE}): first logins {figures[0] * 1000:.2f} ms, "
              f"repeat {figures[1] * 1000:.2f} ms (mean of {REPEAT_ROUNDS} rounds)")
    print(report)
    Path(os.environ.get("SNS_XMPP_BENCH_REPORT", "/dev/null")).write_text(report + "\n")
    assert figures[1] <= 0.001, report
