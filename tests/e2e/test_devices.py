"""Device passwords (issue 15, item 3): made on the web right after a social login, shown once,
kept as SCRAM keys; SCRAM-only clients (Profanity) and any mechanism log in with them; listed,
removed one by one, and all gone with a revocation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted
import treq

from tests.e2e.test_local_im import _need_profanity, profanity, until
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

JSON = {"Accept": ["application/json"]}


async def devices(credentials: dict, **fields: str) -> dict:  # type: ignore[type-arg]
    answer = await treq.post(credentials["devices_url"], data={"token": credentials["account_token"], **fields},
                             headers=JSON)
    document: dict = json.loads(await answer.content())  # type: ignore[type-arg]
    assert answer.code == 200, document
    return document


async def failure_text(server, jid: str, password: str, mechanism: str) -> str:  # type: ignore[no-untyped-def]
    client = Client(jid, password, mechanism=mechanism)
    client.connect(host="127.0.0.1", port=server.c2s_port)
    failure = await wait(client.auth_failures.get())
    client.abort()
    return str(failure["text"])


@pytest_twisted.ensureDeferred
async def test_a_device_password_logs_in_by_scram_and_plain_until_it_is_removed_or_revoked(server) -> None:
    credentials = await demo_credentials(server, "pia")
    jid = credentials["jid"]
    phone = await devices(credentials, action="create", label="phone")
    laptop = await devices(credentials, action="create", label="laptop")
    assert [d["label"] for d in laptop["devices"]] == ["phone", "laptop"] and phone["password"] != laptop["password"]
    for password in (phone["password"], laptop["password"]):
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
            client = Client(jid, password, mechanism=mechanism)
            await wait(client.log_in(server.c2s_port))
            assert client.boundjid.bare == jid, mechanism
            await wait(client.log_out())
    assert "wrong credentials" in await failure_text(server, jid, "not-a-device-password", "SCRAM-SHA-256")

    phone_id = laptop["devices"][0]["id"]
    assert [d["label"] for d in (await devices(credentials, action="remove", id=str(phone_id)))["devices"]] == [
        "laptop"]
    assert "wrong credentials" in await failure_text(server, jid, phone["password"], "SCRAM-SHA-256")

    answer = await treq.post(credentials["logout_url"], data={"token": credentials["account_token"]})
    assert answer.code == 200
    assert "wrong credentials" in await failure_text(server, jid, laptop["password"], "PLAIN")
    assert (await server.store.device_passwords(jid)) == []


@pytest_twisted.ensureDeferred
async def test_profanity_logs_in_with_a_device_password_by_scram(server, tmp_path: Path) -> None:
    """libstrophe picks SCRAM whenever it is offered: named in the stream header, a social JID
    with device passwords is offered SCRAM, and Profanity logs in with one."""
    _need_profanity()
    credentials = await demo_credentials(server, "quin")
    jid = credentials["jid"]
    password = (await devices(credentials, action="create", label="profanity"))["password"]
    accounts = f"""\
        [quin]
        enabled=true
        jid={jid.replace(chr(92), chr(92) * 2)}
        server=127.0.0.1
        port={server.c2s_port}
        resource=profanity
        password={password}
        tls.policy=trust
        """
    with profanity(tmp_path, "quin", accounts):
        await until(lambda: bool(server.sessions.resources(jid)))
        [session] = server.sessions.resources(jid)
        assert session.login.method.startswith("SCRAM-")
