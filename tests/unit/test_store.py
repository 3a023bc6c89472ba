"""The SQLite store, against real database files."""

from __future__ import annotations

import inspect
import sqlite3
import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.application.service import IService
from zope.interface.verify import verifyObject

from sns_xmpp.auth.scram import ScramCredential
from sns_xmpp.store.interface import (
    IStore,
    JidTakenError,
    NoSuchAccountError,
    SchemaTooNewError,
    StoreClosedError,
)
from sns_xmpp.store.records import Account, RosterItem, SocialLink
from sns_xmpp.store.sqlite import SQLiteDatabase, ThreadedStore, load_schema_scripts

NOW = 1_700_000_000.25


def credential(mechanism: str, seed: int) -> ScramCredential:
    # Bytes 0x00 and 0xff and non-UTF-8 runs catch lossy text encodings.
    return ScramCredential(
        mechanism=mechanism,
        salt=bytes([0, 255, seed]) + bytes(range(seed, seed + 13)),
        iterations=4096 + seed,
        stored_key=bytes([255 - seed]) * 32,
        server_key=bytes(range(seed, seed + 32)),
    )


CREDENTIALS = (credential("SCRAM-SHA-1", 1), credential("SCRAM-SHA-256", 2))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


def rows_mentioning(path: Path, jid: str) -> dict[str, int]:
    """Per table, how many rows belong to ``jid``, read behind the store's back."""
    owned_by = {
        "accounts": "jid",
        "scram_credentials": "jid",
        "roster_items": "owner",
        "subscription_requests": "owner",
        "offline_messages": "owner",
        "social_links": "jid",
    }
    with sqlite3.connect(path) as conn:
        return {
            table: conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (jid,)).fetchone()[0]
            for table, column in owned_by.items()
        }


def test_contracts() -> None:
    store = ThreadedStore(lambda: pytest.fail("must not open"), reactor=None)  # type: ignore[arg-type]
    assert verifyObject(IStore, store)
    assert verifyObject(IService, store)
    # The admin tool relies on the synchronous twin mirroring IStore exactly.
    for name in IStore.names():
        info = IStore[name].getSignatureInfo()
        params = list(inspect.signature(getattr(SQLiteDatabase, name)).parameters.values())[1:]
        assert tuple(p.name for p in params) == info["positional"], name
        defaults = {p.name: p.default for p in params if p.default is not p.empty}
        assert defaults == info["optional"], name


def test_data_survives_reopening(path: Path) -> None:
    alice, bob = "alice@example.org", "bob@example.net"
    item = RosterItem(
        contact=bob,
        name="Bob ☃",
        groups=("Friends", "Work; late"),
        subscription="to",
        ask=False,
        approved=True,
    )
    db = SQLiteDatabase(path)
    assert db.create_account(alice, CREDENTIALS, NOW)
    assert not db.create_account(alice, (), NOW + 1)  # never overwrites
    assert db.create_account(bob, CREDENTIALS[:1], NOW)
    db.put_roster_item(alice, RosterItem(contact=bob, subscription="none", ask=True))
    db.put_roster_item(alice, item)  # replaces the first
    db.put_roster_item(alice, RosterItem(contact="gone@example.com"))
    db.remove_roster_item(alice, "gone@example.com")
    db.add_subscription_request(alice, "carol@example.com")
    db.add_subscription_request(alice, "carol@example.com")  # idempotent
    ids = [db.store_offline(alice, f"<message id='{n}'/>", NOW + n) for n in range(4)]
    bobs = db.store_offline(bob, "<message/>", NOW)
    db.close()

    db = SQLiteDatabase(path)
    assert db.get_account(alice) == Account(alice, NOW, CREDENTIALS, social=False)
    assert db.get_account("nobody@example.org") is None
    assert db.get_roster(alice) == [item]
    assert db.subscription_requests(alice) == ["carol@example.com"]
    assert [m.stanza for m in db.offline_messages(alice)] == [f"<message id='{n}'/>" for n in range(4)]
    assert [m.id for m in db.offline_messages(alice)] == ids
    db.delete_offline(alice, [ids[0], ids[2], bobs])  # bob's id is not alice's to delete
    assert [(m.id, m.stored_at) for m in db.offline_messages(alice)] == [(ids[1], NOW + 1), (ids[3], NOW + 3)]
    assert db.count_offline(alice) == 2
    assert db.count_offline(bob) == 1
    # Ids are never reused, even once the newest rows are gone.
    db.delete_offline(alice, [ids[3]])
    db.delete_offline(bob, [bobs])
    assert db.store_offline(alice, "<message/>", NOW) > max(ids[3], bobs)
    assert db.set_credentials(bob, CREDENTIALS[1:])
    assert db.get_account(bob).credentials == CREDENTIALS[1:]  # type: ignore[union-attr]
    assert db.list_accounts() == [alice, bob]
    assert db.list_accounts("example.net") == [bob]
    assert db.list_accounts("example") == []
    db.close()


def test_delete_account_removes_that_user_only(path: Path) -> None:
    db = SQLiteDatabase(path)
    alice, bob = "alice@example.org", "bob@example.org"
    db.create_account(alice, CREDENTIALS, NOW)
    carl = db.link_account("site", "carl-ext", "carl@example.org", NOW).jid
    assert db.create_account(bob, CREDENTIALS, NOW)
    db.link_account("site", "bob-ext", "bob-social@example.org", NOW)
    for owner, other in [(alice, bob), (carl, bob), (bob, alice), (bob, carl)]:
        db.put_roster_item(owner, RosterItem(contact=other, subscription="both"))
        db.add_subscription_request(owner, other)
        db.store_offline(owner, f"<message from='{other}'/>", NOW)
    before = rows_mentioning(path, bob)

    assert db.delete_account(alice)
    assert db.delete_account(carl)
    assert not db.delete_account(alice)

    for gone in (alice, carl):
        assert set(rows_mentioning(path, gone).values()) == {0}
    assert db.get_link("site", "carl-ext") is None
    assert rows_mentioning(path, bob) == before
    # Bob's roster still names them: unsubscribing is the caller's protocol work.
    assert [i.contact for i in db.get_roster(bob)] == [alice, carl]
    assert db.get_link("site", "bob-ext") is not None
    with pytest.raises(NoSuchAccountError):
        db.store_offline(alice, "<message/>", NOW)
    db.close()


def test_link_account_race_converges(path: Path) -> None:
    SQLiteDatabase(path).close()  # schema in place before the race
    dbs = [SQLiteDatabase(path), SQLiteDatabase(path)]
    rounds = 25
    barrier = threading.Barrier(2)
    results: list[list[SocialLink]] = [[], []]
    errors: list[BaseException] = []

    def login(n: int) -> None:
        try:
            for r in range(rounds):
                barrier.wait()
                link = dbs[n].link_account("site", f"user{r}", f"cand{n}-{r}@example.org", NOW + n)
                results[n].append(link)
        except BaseException as error:  # reported below; a dead thread would hang the barrier
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=login, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results[0] == results[1]
    db = dbs[0]
    links = db.list_links(site="site")
    assert links == sorted(results[0], key=lambda link: link.account)
    # The losing candidate got no account.
    assert sorted(db.list_accounts()) == sorted(link.jid for link in links)

    winner = links[0]
    assert db.link_account("site", "user0", "other@example.org", NOW + 9) == winner
    assert db.get_account(winner.jid) == Account(winner.jid, winner.created_at, (), social=True)
    with pytest.raises(JidTakenError):
        db.link_account("site", "newcomer", winner.jid, NOW)
    assert db.get_link("site", "newcomer") is None
    for d in dbs:
        d.close()


def test_remember_token_rejects_replay_until_expiry(path: Path) -> None:
    db = SQLiteDatabase(path)
    digest = bytes(range(32))
    assert db.remember_token("a", digest, expires_at=NOW + 60, now=NOW)
    assert not db.remember_token("a", digest, expires_at=NOW + 120, now=NOW + 59)
    assert db.remember_token("b", digest, expires_at=NOW + 60, now=NOW)  # per site
    assert db.remember_token("a", digest, expires_at=NOW + 200, now=NOW + 60)
    assert not db.remember_token("a", digest, expires_at=NOW + 300, now=NOW + 199)
    # Expired rows of other digests are swept as a side effect.
    db.remember_token("c", b"\x01", expires_at=NOW + 500, now=NOW + 1000)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT site FROM used_tokens").fetchall() == [("c",)]
    db.close()


def test_newer_schema_refuses_to_open(path: Path) -> None:
    known = len(load_schema_scripts())
    db = SQLiteDatabase(path)
    assert db.schema_version == known
    db.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version (version, name) VALUES (?, 'future')", (known + 1,))
    with pytest.raises(SchemaTooNewError, match=rf"version {known + 1} is newer.*version {known}\)"):
        SQLiteDatabase(path)


@pytest_twisted.inlineCallbacks
def test_threaded_store_runs_calls_in_its_worker(path: Path):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    worker_threads: set[int] = set()
    opened: list[SQLiteDatabase] = []

    class RecordingDatabase(SQLiteDatabase):
        def get_account(self, jid: str) -> Account | None:
            worker_threads.add(threading.get_ident())
            return super().get_account(jid)

    def open_database() -> SQLiteDatabase:
        worker_threads.add(threading.get_ident())
        opened.append(RecordingDatabase(path))
        return opened[-1]

    store = ThreadedStore(open_database, reactor)
    early = store.account_exists("alice@example.org")  # queued before start
    store.startService()
    try:
        yield store.when_open()
        assert (yield early) is False
        assert (yield store.create_account("alice@example.org", CREDENTIALS, NOW))
        account = yield store.get_account("alice@example.org")
        assert account.credentials == CREDENTIALS
        link = yield store.link_account("site", "ext", "ext@example.org", NOW)
        yield store.touch_link("site", "ext", NOW + 5)
        assert (yield store.list_links(jid="ext@example.org")) == [
            SocialLink("site", "ext", "ext@example.org", link.created_at, NOW + 5)
        ]
        with pytest.raises(JidTakenError):  # database errors arrive as failures
            yield store.link_account("site", "other", "alice@example.org", NOW)
        first = yield store.store_offline("alice@example.org", "<message/>", NOW)
        assert [m.id for m in (yield store.offline_messages("alice@example.org"))] == [first]
    finally:
        pending = store.count_offline("alice@example.org")  # queued ahead of the close
        yield store.stopService()
    assert (yield pending) == 1
    assert len(worker_threads) == 1
    assert threading.get_ident() not in worker_threads
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        opened[0].account_exists("alice@example.org")
    with pytest.raises(StoreClosedError):
        yield store.account_exists("alice@example.org")

    def refuse() -> SQLiteDatabase:
        raise SchemaTooNewError("too new")

    broken = ThreadedStore(refuse, reactor)
    broken.startService()
    with pytest.raises(StoreClosedError) as caught:
        yield broken.when_open()
    assert isinstance(caught.value.__cause__, SchemaTooNewError)
    yield broken.stopService()
