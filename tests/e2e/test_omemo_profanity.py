"""OMEMO end to end with a real client (issue 16, must show): two Profanity instances (libstrophe,
Debian's build with libsignal-protocol-c), one a social user's, one a local user's, each in a tmux
of its own, exchange encrypted messages as people would type them: one each way, then one sent
while the receiver is offline, which waits in the offline store and is decrypted by the
receiver's next Profanity (the same OMEMO files) when it logs in. A second test gives the social
user two devices: both join one device list, and the second decrypts the sent carbon (XEP-0280)
of what the first sent.

Profanity speaks OMEMO 0.3 (XEP-0384 before 0.4, namespace ``eu.siacs.conversations.axolotl``, as
Conversations, Dino and Gajim still do): ``/omemo gen`` makes a device, publishes its bundle to the
PEP node ``eu.siacs.conversations.axolotl.bundles:<device>`` and adds the device to the list at
``eu.siacs.conversations.axolotl.devicelist`` (XEP-0163); ``/omemo start`` fetches the contact's
device list and bundles from the contact's PEP service and builds a Signal session per device.
So the server's part is PEP: publish (with publish-options, which Profanity sends only when the
server's domain announces them), items requests from the owner, from a subscribed contact and
from a stranger (the keys are published open), and +notify events.

What the server saw is read where it sees it: a hook at the head of ``message/from-client`` keeps
every message the sender's Profanity sent (the stanza as the server parsed it, before routing,
carbons or archiving). The assertion is that it carries an ``<encrypted/>`` element with a key for
the receiver's published device and that the plaintext appears nowhere in it; the receiver's
screen then shows the plaintext, so the only way it got there is Profanity's own decryption. The
offline store and the receiver's archive (XEP-0313) are read too: ciphertext kept intact, no
plaintext anywhere. A third client (slixmpp, XEP-0060 items requests) reads both device lists as a
contact would, which is also how the test knows the devices are published before it goes on (no
sleeps: each step polls what it waits for, with a deadline).

Slow (about 20 s for both: six Profanity start-ups and libsignal key generation), so marked ``slow``
(setup.cfg); scripts/test runs it, ``-m "not slow"`` leaves it out of a quick run.
"""

from __future__ import annotations

import secrets
import textwrap
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from slixmpp import ET, JID
from slixmpp.exceptions import IqError, IqTimeout
from twisted.words.xish import domish

from sns_xmpp.xmpp.client_session import ClientSession
from sns_xmpp.xmpp.hooks import MESSAGE_FROM_CLIENT
from tests.clients import Terminal
from tests.e2e.test_local_im import _need_profanity, profanity
from tests.e2e.test_social_login import demo_credentials
from tests.xmppclient import Client, wait

pytestmark = pytest.mark.slow

AXOLOTL = "eu.siacs.conversations.axolotl"
DEVICE_LIST = f"{AXOLOTL}.devicelist"
DEADLINE = 20.0  # seconds for any one step; the whole test takes about 10 s


async def pause(seconds: float = 0.1) -> None:
    """One step of a poll with a deadline (the reactor is imported late: see tests/conftest.py)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


async def eventually(condition: Callable[[], object], what: Callable[[], str], timeout: float = DEADLINE) -> None:
    """Poll *condition* (state an external program changes: no event to wait on from here) until
    it is true; else fail, saying *what* was seen last."""
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        await pause()
    raise AssertionError(f"timed out: {what()}")


def key_file(path: Path) -> dict[str, dict[str, str]]:
    """A GLib key file's groups (Profanity's OMEMO store), or nothing while it is not there."""
    groups: dict[str, dict[str, str]] = {}
    group: dict[str, str] = {}
    if not path.exists():
        return groups
    for line in path.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            group = groups.setdefault(line[1:-1].replace("\\\\", "\\"), {})
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            group[key] = value
    return groups


@dataclass
class Instance:
    """One running Profanity: its screen, its debug log and its OMEMO files."""

    jid: str
    home: Path
    run: str = ""  # the n-th start in the same home (same OMEMO files), for the log's and tmux's names

    @property
    def terminal(self) -> Terminal:
        return Terminal(self.home / f"tmux{self.run}.sock")

    @property
    def log(self) -> Path:
        return self.home / f"profanity{self.run}.log"

    def omemo(self, name: str) -> dict[str, dict[str, str]]:
        return key_file(self.home / "data" / "profanity" / "omemo" / self.jid.replace("@", "_at_") / name)

    def device_id(self) -> int | None:
        value = self.omemo("identity.txt").get("identity", {}).get("device_id")
        return int(value) if value else None

    def sessions_with(self, jid: str) -> set[int]:
        return {int(device) for device in self.omemo("sessions.txt").get(jid, {})}

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    async def until_logged(self, text: str, after: int) -> None:
        """Until Profanity's debug log has *text* past byte *after*."""
        def logged() -> bool:
            if not self.log.exists():
                return False
            with self.log.open("rb") as log:
                log.seek(after)
                return text.encode() in log.read()
        await eventually(logged, lambda: f"{self.jid}'s Profanity never logged {text!r}:\n{self.log_tail()}")

    async def until_logged_in(self) -> None:
        """Logged in, and the domain's disco#info read: Profanity sends publish-options only if
        it has seen them there, so an /omemo gen typed before would publish closed nodes."""
        await self.until_logged(f"{self.jid} logged in successfully", 0)
        await self.until_logged(f"[CONNECTION] connection_features_received {self.jid.rpartition('@')[2]}", 0)

    async def until_shows(self, *texts: str) -> None:
        """Until the screen shows any of *texts*."""
        await eventually(lambda: any(text in self.terminal.screen() for text in texts),
                         lambda: f"{self.jid}'s Profanity never showed {texts}:\n{self.terminal.screen()}\n"
                                 f"{self.log_tail()}")

    async def until_device(self) -> int:
        """The device ``/omemo gen`` made, once it is on disk."""
        await eventually(lambda: self.device_id() is not None,
                         lambda: f"{self.jid}: no OMEMO identity:\n{self.terminal.screen()}")
        device = self.device_id()
        assert device is not None
        return device

    async def until_session_with(self, jid: str, device: int) -> None:
        """Until Profanity keeps a Signal session with *jid*'s *device* (its sessions.txt)."""
        await eventually(lambda: device in self.sessions_with(jid),
                         lambda: f"{self.jid} has no session with {jid}'s device {device}:\n"
                                 f"{self.terminal.screen()}\n{self.log_tail()}")


def accounts_file(name: str, jid: str, password: str, port: int, resource: str = "profanity") -> str:
    # A GLib key file: a backslash in a value (a social JID's escaped @) is written doubled.
    return textwrap.dedent(f"""\
        [{name}]
        enabled=true
        jid={jid.replace(chr(92), chr(92) * 2)}
        server=127.0.0.1
        port={port}
        resource={resource}
        password={password}
        tls.policy=trust
        """)


def start(stack: ExitStack, tmp_path: Path, name: str, jid: str, password: str, port: int, run: str = "",
          resource: str = "profanity") -> Instance:
    """Profanity as *name*, its home tmp_path/name (kept from an earlier *run*: its OMEMO files)."""
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    stack.enter_context(profanity(home, name, accounts_file(name, jid, password, port, resource), run=run))
    return Instance(jid, home, run)


async def befriend(port: int, first: tuple[str, str], second: tuple[str, str]) -> None:
    """Mutual presence subscription (RFC 6121 3.1), with slixmpp, before Profanity starts: OMEMO
    needs none, but PEP's default access model (presence) lets only such contacts read a node."""
    one, other = (Client(jid, password, mechanism="PLAIN") for jid, password in (first, second))
    for client in (one, other):
        await wait(client.log_in(port))
    for asking, answering in ((one, other), (other, one)):
        asking.send_presence(pto=answering.boundjid.bare, ptype="subscribe")
        request = await wait(answering.subscription_requests.get())
        assert request["from"].bare == asking.boundjid.bare
        answering.send_presence(pto=asking.boundjid.bare, ptype="subscribed")

    def both_ways() -> bool:
        return all(client.client_roster[contact.boundjid.bare]["subscription"] == "both"
                   for client, contact in ((one, other), (other, one)))

    await eventually(both_ways, lambda: f"not subscribed both ways: {one.client_roster} {other.client_roster}")
    for client in (one, other):
        await wait(client.log_out())


class DeviceLists:
    """A contact's view of OMEMO device lists: XEP-0060 items requests from a slixmpp client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: dict[str, str] = {}

    async def of(self, jid: str) -> set[int]:
        try:
            answer = await wait(self.client.plugin["xep_0060"].get_items(jid=jid, node=DEVICE_LIST, timeout=5))
        except (IqError, IqTimeout) as failure:
            self.seen[jid] = f"error {getattr(failure, 'iq', failure)}"
            return set()
        self.seen[jid] = str(answer)
        devices: set[int] = set()
        for item in answer["pubsub"]["items"]:
            payload = item["payload"]
            if payload is not None and payload.tag == f"{{{AXOLOTL}}}list":
                devices |= {int(device.get("id")) for device in payload if device.get("id", "").isdigit()}
        return devices

    async def until_listed(self, jid: str, device: int) -> None:
        for _ in range(int(DEADLINE / 0.25)):
            if device in await self.of(jid):
                return
            await pause(0.25)
        raise AssertionError(f"{jid}'s device {device} never appeared in its {DEVICE_LIST}: {self.seen.get(jid)}")


def payload_of(message: domish.Element) -> str | None:
    """The base64 ciphertext of an OMEMO message, or None for any other message."""
    for encrypted in message.elements(AXOLOTL, "encrypted"):
        for payload in encrypted.elements(AXOLOTL, "payload"):
            return str(payload)
    return None


def encrypted_to(message: domish.Element) -> tuple[str | None, set[int]]:
    """The sending device and the receiving devices of an OMEMO message (XEP-0384 0.3 §4.5)."""
    for encrypted in message.elements(AXOLOTL, "encrypted"):
        for header in encrypted.elements(AXOLOTL, "header"):
            rids = {int(str(key["rid"])) for key in header.elements(AXOLOTL, "key") if key.hasAttribute("rid")}
            return header.getAttribute("sid"), rids
    return None, set()


def omemo_payload(message: ET.Element) -> str | None:
    """payload_of for a message as slixmpp holds it."""
    found = message.find(f"{{{AXOLOTL}}}encrypted/{{{AXOLOTL}}}payload")
    return found.text if found is not None else None


async def omemo_exchange(sender: Instance, receiver: Instance, lists: DeviceLists,
                         sent: list[tuple[str, domish.Element]]) -> list[str]:
    """The whole exchange as people would type it; *sent* fills with what the server saw either
    client send: (the sender's bare JID, the message). Returns the plaintexts."""
    for instance in (sender, receiver):
        await instance.until_logged_in()
    for instance in (sender, receiver):
        instance.terminal.type("/omemo trustmode blind")
        instance.terminal.type("/omemo gen")
    sender_device, receiver_device = await sender.until_device(), await receiver.until_device()
    for instance, device in ((sender, sender_device), (receiver, receiver_device)):
        # What a contact sees of the list, as every OMEMO client fetches it.
        await lists.until_listed(instance.jid, device)

    # The sender opens a chat with the receiver and starts OMEMO in it: device list, bundle,
    # blind trust, a Signal session with the receiver's device (kept in sessions.txt).
    sender.terminal.type(f"/msg {receiver.jid}")
    sender.terminal.type("/omemo start")
    await sender.until_session_with(receiver.jid, receiver_device)
    receiver.terminal.type(f"/msg {sender.jid}")

    plaintext = f"omemo secret {secrets.token_hex(6)}"
    sent.clear()
    sender.terminal.type(plaintext)
    await receiver.until_shows(plaintext)
    # Chat states and receipts travel too; the message is the one with <encrypted/>.
    [message] = [m for jid, m in sent if jid == sender.jid and encrypted_to(m)[0] is not None]
    assert encrypted_to(message) == (str(sender_device), {receiver_device}), message.toXml()
    assert str(message["to"]).startswith(receiver.jid)
    assert all(plaintext not in m.toXml() for _, m in sent)

    # And back: the receiver, holding a session from the sender's pre-key message, starts OMEMO
    # in its window too; that asks for the sender's bundles, which it can do only once it has
    # the sender's device list (by +notify or by asking), and then answers.
    reply = f"omemo reply {secrets.token_hex(6)}"
    assert sender_device in receiver.sessions_with(sender.jid)
    before = receiver.log_size()
    receiver.terminal.type("/omemo start")
    await receiver.until_logged(f"request omemo bundle (jid: {sender.jid}, device: {sender_device})", before)
    receiver.terminal.type(reply)
    await sender.until_shows(reply)
    [answer] = [m for jid, m in sent if jid == receiver.jid and encrypted_to(m)[0] is not None]
    assert encrypted_to(answer) == (str(receiver_device), {sender_device}), answer.toXml()
    assert all(reply not in m.toXml() for _, m in sent)
    return [plaintext, reply]


@pytest_twisted.ensureDeferred
async def test_two_profanity_clients_exchange_omemo_messages_the_server_sees_only_ciphertext(
        server, tmp_path: Path) -> None:
    _need_profanity()
    credentials = await demo_credentials(server, "olga")
    social, social_password = credentials["jid"], credentials["password"]
    await server.add_user("bob@localhost", "secret")
    await befriend(server.c2s_port, (social, social_password), ("bob@localhost", "secret"))

    seen: list[tuple[str, domish.Element]] = []
    ciphertexts: set[str] = set()  # of every OMEMO message either sent, for the whole test

    def record(session: ClientSession, message: domish.Element) -> None:
        seen.append((session.bare, message))
        if (payload := payload_of(message)) is not None:
            ciphertexts.add(payload)

    server.sessions.hooks.hook(MESSAGE_FROM_CLIENT, record, priority=1_000_000)

    # The contact's view: a slixmpp resource of bob's without presence (so it takes no messages).
    watcher = Client("bob@localhost/watcher", "secret")
    watcher.register_plugin("xep_0060")
    watcher.register_plugin("xep_0313")
    await wait(watcher.log_in(server.c2s_port, presence=False))
    with ExitStack() as stack:
        olga = start(stack, tmp_path, "olga", social, social_password, server.c2s_port)
        bob = start(stack, tmp_path, "bob", "bob@localhost", "secret", server.c2s_port)
        plaintexts = await omemo_exchange(olga, bob, DeviceLists(watcher), seen)
        # The domain announces publish-options, so Profanity published its keys open: someone not
        # in olga's roster can start OMEMO with her too (XEP-0384 0.3 4.3: anyone fetches them).
        stranger = Client("carol@localhost", "secret")
        stranger.register_plugin("xep_0060")
        await server.add_user("carol@localhost", "secret")
        await wait(stranger.log_in(server.c2s_port, presence=False))
        olga_device = olga.device_id()
        assert olga_device is not None and olga_device in await DeviceLists(stranger).of(social)
        try:
            bundle = await wait(stranger.plugin["xep_0060"].get_items(social, f"{AXOLOTL}.bundles:{olga_device}"))
        except IqError as refused:
            raise AssertionError(f"a stranger may not read the bundle: {refused.iq}\n{olga.log_tail(80)}") from None
        assert [item["id"] for item in bundle["pubsub"]["items"]] == ["current"]
        await wait(stranger.log_out())

        # Offline: bob quits; what olga sends meanwhile waits in the offline store, still only
        # ciphertext, and bob's next Profanity (the same OMEMO files) decrypts it on logging in.
        bob_device = bob.device_id()
        bob.terminal.type("/quit")

        def profanity_gone() -> bool:
            return all(session.resource != "profanity" for session in server.sessions.resources("bob@localhost"))

        await eventually(profanity_gone, lambda: f"bob's Profanity did not quit:\n{bob.log_tail()}")
        seen.clear()
        away = f"omemo while away {secrets.token_hex(6)}"
        olga.terminal.type(away)
        await eventually(lambda: any(encrypted_to(m)[0] for _, m in seen),
                         lambda: f"olga sent nothing:\n{olga.log_tail()}")
        [message] = [m for _, m in seen if encrypted_to(m)[0]]
        assert encrypted_to(message) == (str(olga.device_id()), {bob_device}) and away not in message.toXml()
        ciphertext = payload_of(message)
        assert ciphertext is not None
        for _ in range(int(DEADLINE / 0.1)):  # the offline store writes off the stanza path
            stored = [m.stanza for m in await server.store.offline_messages("bob@localhost")]
            if any(ciphertext in text for text in stored):
                break
            await pause()
        # Kept as it came, and nothing of the plaintext. (Chat states may wait too, and so may what
        # bob's Profanity received but had not acknowledged when it quit, XEP-0198.)
        assert [text for text in stored if ciphertext in text] != [], stored
        assert away not in "".join(stored), stored
        bob = start(stack, tmp_path, "bob", "bob@localhost", "secret", server.c2s_port, run="1")
        await bob.until_logged_in()
        bob.terminal.type(f"/msg {olga.jid}")
        await bob.until_shows(away)
        assert await server.store.count_offline("bob@localhost") == 0

    # bob's archive (XEP-0313) holds the three OMEMO messages as they passed, ciphertext intact
    # (a device that comes later fetches them there), and no plaintext.
    page = await wait(watcher.plugin["xep_0313"].retrieve(with_jid=JID(social), rsm={"max": 50}))
    archived = [result["mam_result"]["forwarded"]["stanza"] for result in page["mam"]["results"]]
    assert {payload for stanza in archived if (payload := omemo_payload(stanza.xml)) is not None} == ciphertexts
    assert len(ciphertexts) == 3
    assert not any(text in str(stanza) for stanza in archived for text in [*plaintexts, away])
    await wait(watcher.log_out())


@pytest_twisted.ensureDeferred
async def test_the_senders_second_device_decrypts_the_carbon_of_what_the_first_sent(server, tmp_path: Path) -> None:
    """Multi-device OMEMO: the social user has Profanity on two devices (resources), the local
    user on one. Each device adds itself to the same device list (XEP-0384 0.3 4.2: read, add,
    republish, as each learns the list by +notify); the desktop encrypts for bob's device and for
    the phone, and the phone gets the message as a sent carbon (XEP-0280) and decrypts it."""
    _need_profanity()
    credentials = await demo_credentials(server, "olga")
    social, social_password = credentials["jid"], credentials["password"]
    await server.add_user("bob@localhost", "secret")
    await befriend(server.c2s_port, (social, social_password), ("bob@localhost", "secret"))
    seen: list[tuple[str, domish.Element]] = []

    def record(session: ClientSession, message: domish.Element) -> None:
        seen.append((session.full, message))

    server.sessions.hooks.hook(MESSAGE_FROM_CLIENT, record, priority=1_000_000)
    watcher = Client("bob@localhost/watcher", "secret")
    watcher.register_plugin("xep_0060")
    await wait(watcher.log_in(server.c2s_port, presence=False))
    lists = DeviceLists(watcher)
    with ExitStack() as stack:
        desktop = start(stack, tmp_path, "desktop", social, social_password, server.c2s_port, resource="desktop")
        phone = start(stack, tmp_path, "phone", social, social_password, server.c2s_port, resource="phone")
        bob = start(stack, tmp_path, "bob", "bob@localhost", "secret", server.c2s_port)
        devices = {}
        for instance in (desktop, phone, bob):
            await instance.until_logged_in()
            instance.terminal.type("/omemo trustmode blind")
            instance.terminal.type("/omemo gen")
            devices[instance.home.name] = await instance.until_device()
        await lists.until_listed("bob@localhost", devices["bob"])
        for device in (devices["desktop"], devices["phone"]):
            await lists.until_listed(social, device)  # both in the one list, neither lost

        desktop.terminal.type("/msg bob@localhost")
        desktop.terminal.type("/omemo start")
        await desktop.until_session_with("bob@localhost", devices["bob"])
        await desktop.until_session_with(social, devices["phone"])
        phone.terminal.type("/msg bob@localhost")
        bob.terminal.type(f"/msg {social}")
        plaintext = f"omemo from the desktop {secrets.token_hex(6)}"
        seen.clear()
        desktop.terminal.type(plaintext)
        await bob.until_shows(plaintext)
        await phone.until_shows(plaintext)
        [(sender, message)] = [(full, m) for full, m in seen if encrypted_to(m)[0] is not None]
        assert sender == f"{social}/desktop"
        assert encrypted_to(message) == (str(devices["desktop"]), {devices["bob"], devices["phone"]})
        assert all(plaintext not in m.toXml() for _, m in seen)
    await wait(watcher.log_out())
