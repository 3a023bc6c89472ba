"""The stores, against real databases: SQLite files and a throwaway PostgreSQL cluster.

Every test taking ``backend`` runs once per engine.  The PostgreSQL runs
share one cluster per session (tests/pgcluster.py) and each gets a fresh
database; they skip only when no PostgreSQL server binaries are installed.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_twisted
from twisted.application.service import IService
from twisted.internet import defer
from zope.interface.verify import verifyObject

from sns_xmpp.auth.scram import ScramCredential
from sns_xmpp.store import composite
from sns_xmpp.store.common import Database, migrate, postgres_placeholders
from sns_xmpp.store.interface import (
    IStore,
    JidTakenError,
    NoSuchAccountError,
    SchemaTooNewError,
    StoreClosedError,
    StoreUnavailableError,
)
from sns_xmpp.store.postgres import PostgresDatabase, postgres_ddl
from sns_xmpp.store.records import Account, RosterItem, SocialLink
from sns_xmpp.store.sqlite import SQLiteDatabase, ThreadedStore, load_schema_scripts
from sns_xmpp.store.threaded import OPEN_RETRY_SECONDS

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


# -- the two engines --------------------------------------------------------


class Backend:
    """One engine's database for one test, and a way to look behind the store's back."""

    name: str
    database_class: type[SQLiteDatabase] | type[PostgresDatabase]
    target: Any  # what database_class takes: a path or a DSN
    closed_error: type[Exception]  # what a closed database raises
    fresh: Callable[[], Backend]  # another empty database of the same engine

    def open(self) -> Database:
        return self.database_class(self.target)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``?`` placeholders) on a connection of its own and commit."""
        raise NotImplementedError


class SQLiteBackend(Backend):
    name = "sqlite"
    database_class = SQLiteDatabase
    closed_error = sqlite3.ProgrammingError

    def __init__(self, path: Path) -> None:
        self.target = path

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.target)) as conn, conn:
            return conn.execute(sql, params).fetchall()


class PostgresBackend(Backend):
    name = "postgres"
    database_class = PostgresDatabase
    closed_error = psycopg.OperationalError

    def __init__(self, dsn: str) -> None:
        self.target = dsn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.target, autocommit=True) as conn:
            cursor = conn.execute(postgres_placeholders(sql), params)
            return cursor.fetchall() if cursor.description else []


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The test's empty database in each engine; ``backend.fresh()`` makes another."""
    chosen: Backend
    if request.param == "sqlite":
        files = (tmp_path / f"store{n}.sqlite" for n in itertools.count())
        chosen = SQLiteBackend(next(files))
        chosen.fresh = lambda: SQLiteBackend(next(files))
    else:
        create = request.getfixturevalue("new_postgres_database")
        chosen = PostgresBackend(create())
        chosen.fresh = lambda: PostgresBackend(create())
    return chosen


def rows_mentioning(backend: Backend, jid: str) -> dict[str, int]:
    """Per table, how many rows belong to ``jid``, read behind the store's back."""
    owned_by = {
        "accounts": "jid",
        "scram_credentials": "jid",
        "roster_items": "owner",
        "roster_versions": "owner",
        "subscription_requests": "owner",
        "offline_messages": "owner",
        "social_links": "jid",
        "revocations": "jid",
        "fast_tokens": "jid",
    }
    return {
        table: backend.rows(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (jid,))[0][0]
        for table, column in owned_by.items()
    }


def run_together(count: int, work: Callable[[int, threading.Barrier], None]) -> None:
    """Run ``work(n, barrier)`` in ``count`` threads; re-raise the first error."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def target(n: int) -> None:
        try:
            work(n, barrier)
        except BaseException as error:  # reported below; a dead thread would hang the barrier
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


# -- tests --------------------------------------------------------------------


@pytest.mark.parametrize("database_class", [SQLiteDatabase, PostgresDatabase])
def test_contracts(database_class: type) -> None:
    store = ThreadedStore(lambda: pytest.fail("must not open"), reactor=None)  # type: ignore[arg-type]
    assert verifyObject(IStore, store)
    assert verifyObject(IService, store)
    # The admin tool and the threaded store rely on both synchronous twins
    # mirroring IStore exactly, but for the combinations in store.composite,
    # which take a database and then IStore's parameters.
    for name in IStore.names():
        info = IStore[name].getSignatureInfo()
        if name in ("run", "run_read", "run_aside"):  # they hand the database itself to the work
            continue
        if hasattr(composite, name):
            params = list(inspect.signature(getattr(composite, name)).parameters.values())[1:]
            assert tuple(p.name for p in params) == info["positional"], name
            continue
        params = list(inspect.signature(getattr(database_class, name)).parameters.values())[1:]
        assert tuple(p.name for p in params) == info["positional"], name
        defaults = {p.name: p.default for p in params if p.default is not p.empty}
        assert defaults == info["optional"], name
        protocol_params = list(inspect.signature(getattr(Database, name)).parameters)[1:]
        assert tuple(protocol_params) == info["positional"], name
    assert isinstance(inspect.getattr_static(database_class, "schema_version"), property)


def test_data_survives_reopening(backend: Backend) -> None:
    alice, bob = "alice@example.org", "bob@example.net"
    item = RosterItem(
        contact=bob,
        name="Bob ☃",
        groups=("Friends", "Work; late"),
        subscription="to",
        ask=False,
        approved=True,
    )
    db = backend.open()
    assert db.create_account(alice, CREDENTIALS, NOW)
    assert not db.create_account(alice, (), NOW + 1)  # never overwrites
    assert db.create_account(bob, CREDENTIALS[:1], NOW)
    db.put_roster_item(alice, RosterItem(contact=bob, subscription="none", ask=True))
    db.put_roster_item(alice, item)  # replaces the first
    db.put_roster_item(alice, RosterItem(contact="gone@example.com"))
    db.remove_roster_item(alice, "gone@example.com")
    db.add_subscription_request(alice, "carol@example.com")
    db.add_subscription_request(alice, "carol@example.com")  # idempotent
    db.add_subscription_request(alice, "dave@example.com")
    db.remove_subscription_request(alice, "dave@example.com")
    ids = [db.store_offline(alice, f"<message id='{n}'/>", NOW + n) for n in range(4)]
    bobs = db.store_offline(bob, "<message/>", NOW)
    db.close()

    db = backend.open()
    assert db.get_account(alice) == Account(alice, NOW, CREDENTIALS, social=False)
    assert db.get_account("nobody@example.org") is None
    assert db.account_exists(alice)
    assert not db.account_exists("nobody@example.org")
    assert db.get_roster(alice) == [item]
    assert db.subscription_requests(alice) == ["carol@example.com"]
    # Four writes to alice's items (three puts, one removal): version 4 (RFC 6121 2.6).
    assert db.load_roster(alice) == ([item], ["carol@example.com"], 4)
    assert db.load_roster(bob) == ([], [], 0)
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
    assert not db.set_credentials("nobody@example.org", CREDENTIALS)
    with pytest.raises(ValueError, match="more than one credential per mechanism"):
        db.set_credentials(bob, CREDENTIALS[:1] * 2)
    assert db.get_account(bob).credentials == CREDENTIALS[1:]  # type: ignore[union-attr]
    assert db.list_accounts() == [alice, bob]
    assert db.list_accounts("example.net") == [bob]
    assert db.list_accounts("example") == []
    assert db.list_accounts("e_ample.net") == []  # '_' is no wildcard
    db.close()


def test_lists_sort_by_code_point(backend: Backend) -> None:
    """Sorted means Python's order, whatever the database's default collation.

    The PostgreSQL test databases default to ICU en-US, which would put
    'éva' before 'fred', ignore case and weigh punctuation differently.
    """
    names = ["fred", "éva", "Zed", "ab", "a-c", "a_b", "ßen", "ze"]
    jids = [f"{name}@example.org" for name in names]
    db = backend.open()
    owner = "owner@example.org"
    db.create_account(owner, CREDENTIALS, NOW)
    for n, jid in enumerate(jids):
        db.link_account("site", names[n], jid, NOW)
        db.put_roster_item(owner, RosterItem(contact=jid))
        db.add_subscription_request(owner, jid)
    assert db.list_accounts("example.org") == sorted([*jids, owner])
    assert db.list_accounts() == sorted([*jids, owner])
    assert [item.contact for item in db.get_roster(owner)] == sorted(jids)
    assert db.subscription_requests(owner) == sorted(jids)
    assert db.load_roster(owner) == (db.get_roster(owner), sorted(jids), len(jids))
    assert [link.account for link in db.list_links("site")] == sorted(names)
    # Exact text: a JID differing only in case is another account.
    assert db.get_account("ZED@example.org") is None
    assert db.create_account("ZED@example.org", (), NOW)
    db.close()


def test_delete_account_removes_that_user_only(backend: Backend) -> None:
    db = backend.open()
    alice, bob = "alice@example.org", "bob@example.org"
    db.create_account(alice, CREDENTIALS, NOW)
    carl = db.link_account("site", "carl-ext", "carl@example.org", NOW).jid
    assert db.create_account(bob, CREDENTIALS, NOW)
    db.link_account("site", "bob-ext", "bob-social@example.org", NOW)
    for owner, other in [(alice, bob), (carl, bob), (bob, alice), (bob, carl)]:
        db.put_roster_item(owner, RosterItem(contact=other, subscription="both"))
        db.add_subscription_request(owner, other)
        db.store_offline(owner, f"<message from='{other}'/>", NOW)
    before = rows_mentioning(backend, bob)

    assert db.delete_account(alice)
    assert db.delete_account(carl)
    assert not db.delete_account(alice)

    for gone in (alice, carl):
        assert set(rows_mentioning(backend, gone).values()) == {0}
    assert db.get_link("site", "carl-ext") is None
    assert rows_mentioning(backend, bob) == before
    # Bob's roster still names them: unsubscribing is the caller's protocol work.
    assert [i.contact for i in db.get_roster(bob)] == [alice, carl]
    assert db.get_link("site", "bob-ext") is not None
    with pytest.raises(NoSuchAccountError):
        db.store_offline(alice, "<message/>", NOW)
    assert db.count_offline(alice) == 0
    assert db.store_offline(bob, "<message/>", NOW) > 0  # the failed store left the connection usable
    db.close()


def test_social_accounts_have_no_password(backend: Backend) -> None:
    db = backend.open()
    with pytest.raises(ValueError, match="cannot have credentials"):
        db.create_account("s@example.org", CREDENTIALS, NOW, social=True)
    assert not db.account_exists("s@example.org")
    assert db.create_account("s@example.org", (), NOW, social=True)
    assert not db.set_credentials("s@example.org", CREDENTIALS)
    assert db.get_account("s@example.org") == Account("s@example.org", NOW, (), social=True)
    link = db.link_account("site", "ext", "t@example.org", NOW)
    db.touch_link("site", "ext", NOW + 7)
    db.touch_link("site", "nobody", NOW + 7)  # no-op
    assert db.get_link("site", "ext") == SocialLink("site", "ext", "t@example.org", link.created_at, NOW + 7)
    assert db.list_links(jid="t@example.org", site="other") == []
    assert db.remove_link("site", "ext")
    assert not db.remove_link("site", "ext")
    assert db.account_exists("t@example.org")  # the account stays until deleted
    db.close()


def test_link_account_race_converges(backend: Backend) -> None:
    """Two first logins of one social account, on two connections, make one account."""
    backend.open().close()  # schema in place before the race
    dbs = [backend.open(), backend.open()]
    rounds = 25
    results: list[list[SocialLink]] = [[], []]

    def login(n: int, barrier: threading.Barrier) -> None:
        for r in range(rounds):
            barrier.wait()
            link = dbs[n].link_account("site", f"user{r}", f"cand{n}-{r}@example.org", NOW + n)
            results[n].append(link)

    run_together(2, login)
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


def test_racing_writes_on_two_connections_do_not_fail(backend: Backend) -> None:
    """Password changes and token claims racing on two connections all succeed, consistently."""
    backend.open().close()
    dbs = [backend.open(), backend.open()]
    jid = "alice@example.org"
    dbs[0].create_account(jid, CREDENTIALS, NOW)
    rounds = 20
    claimed: list[list[bool]] = [[], []]

    def write(n: int, barrier: threading.Barrier) -> None:
        for r in range(rounds):
            barrier.wait()
            assert dbs[n].set_credentials(jid, CREDENTIALS[n:] if r % 2 else CREDENTIALS[: n + 1])
            claimed[n].append(dbs[n].remember_token("site", r.to_bytes(4, "big"), NOW + 60, NOW))

    run_together(2, write)
    # Each token was claimed by exactly one of the two.
    assert [a + b for a, b in zip(*claimed, strict=True)] == [1] * rounds
    # The last round (odd) wrote both credentials on one side, the second only on the other.
    credentials = dbs[0].get_account(jid).credentials  # type: ignore[union-attr]
    assert credentials in {CREDENTIALS, CREDENTIALS[1:]}
    for d in dbs:
        d.close()


def test_remember_token_rejects_replay_until_expiry(backend: Backend) -> None:
    db = backend.open()
    digest = bytes(range(32))
    assert db.remember_token("a", digest, expires_at=NOW + 60, now=NOW)
    assert not db.remember_token("a", digest, expires_at=NOW + 120, now=NOW + 59)
    assert db.remember_token("b", digest, expires_at=NOW + 60, now=NOW)  # per site
    assert db.remember_token("a", digest, expires_at=NOW + 200, now=NOW + 60)
    assert not db.remember_token("a", digest, expires_at=NOW + 300, now=NOW + 199)
    # Expired rows of other digests are swept as a side effect.
    db.remember_token("c", b"\x01", expires_at=NOW + 500, now=NOW + 1000)
    assert backend.rows("SELECT site FROM used_tokens") == [("c",)]
    db.close()


def test_newer_schema_refuses_to_open(backend: Backend) -> None:
    known = len(load_schema_scripts())
    db = backend.open()
    assert db.schema_version == known
    db.close()
    backend.rows("INSERT INTO schema_version (version, name) VALUES (?, 'future')", (known + 1,))
    with pytest.raises(SchemaTooNewError, match=rf"version {known + 1} is newer.*version {known}\)") as caught:
        backend.open()
    if backend.name == "postgres":  # the message names the database, never the DSN's password
        password = psycopg.conninfo.conninfo_to_dict(backend.target)["password"]
        assert password and str(password) not in str(caught.value)
    with pytest.raises(SchemaTooNewError):
        migrate(backend.open)


def test_migrate_applies_the_schema_once(backend: Backend) -> None:
    """migrate() brings an empty database up to date, and is harmless to repeat."""
    known = len(load_schema_scripts())
    assert migrate(backend.open) == known
    assert migrate(backend.open) == known
    assert backend.rows("SELECT version, name FROM schema_version ORDER BY version") == [
        (script.version, script.name) for script in load_schema_scripts()
    ]


def test_first_opens_at_once_agree(backend: Backend) -> None:
    """Two processes opening an empty database at once both get the schema, applied once."""
    known = len(load_schema_scripts())
    for _round in range(10):
        empty = backend.fresh()
        opened: list[Database] = []
        try:
            run_together(2, lambda n, barrier: (barrier.wait(), opened.append(empty.open())))  # noqa: B023
            assert [db.schema_version for db in opened] == [known, known]
        finally:
            for db in opened:
                db.close()
        assert empty.rows("SELECT COUNT(*) FROM schema_version") == [(known,)]


@pytest_twisted.inlineCallbacks
def test_a_features_own_sql_runs_in_one_transaction_in_each_engine(backend: Backend):  # type: ignore[no-untyped-def]
    """store.run and store.run_read are how a feature module keeps its own tables: statements
    written with ``?`` run as spelt for the engine, a transaction commits as a whole or, on an
    exception, not at all, and a read after a write sees it."""
    from twisted.internet import reactor

    store = ThreadedStore(lambda: backend.database_class(backend.target), reactor)
    store.startService()

    def two_accounts_then(fail: bool) -> Callable[[Database], int]:
        def work(db: Database) -> int:
            with db.transaction() as tx:
                tx.execute("INSERT INTO accounts (jid, created_at, social) VALUES (?, ?, ?)", ("a@x", NOW, 0))
                tx.execute("INSERT INTO accounts (jid, created_at, social) VALUES (?, ?, ?)", ("b@x", NOW, 1))
                assert tx.rowcount == 1
                if fail:
                    raise ValueError("the feature changed its mind")
                return int(tx.execute("SELECT COUNT(*) FROM accounts WHERE jid LIKE ?", ("%@x",))[0][0])
        return work

    def count(db: Database) -> list[Any]:
        return db.query("SELECT jid, social FROM accounts WHERE jid LIKE ? ORDER BY jid", ("%@x",))

    try:
        yield store.when_open()
        with pytest.raises(ValueError):
            yield store.run(two_accounts_then(fail=True))
        assert (yield store.run_read(count)) == []
        assert (yield store.run(two_accounts_then(fail=False))) == 2
        assert [(jid, bool(social)) for jid, social in (yield store.run_read(count))] == [("a@x", False), ("b@x", True)]
    finally:
        yield store.stopService()


@pytest_twisted.inlineCallbacks
def test_threaded_store_runs_calls_in_its_worker(backend: Backend):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    worker_threads: set[int] = set()
    opened: list[Database] = []

    class RecordingDatabase(backend.database_class):  # type: ignore[name-defined,misc]
        def get_account(self, jid: str) -> Account | None:
            worker_threads.add(threading.get_ident())
            return super().get_account(jid)  # type: ignore[no-any-return]

    def open_database() -> Database:
        worker_threads.add(threading.get_ident())
        opened.append(RecordingDatabase(backend.target))
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
    with pytest.raises(backend.closed_error):  # closed
        opened[0].account_exists("alice@example.org")
    with pytest.raises(StoreClosedError):
        yield store.account_exists("alice@example.org")

    def refuse() -> Database:
        raise SchemaTooNewError("too new")

    broken = ThreadedStore(refuse, reactor)
    broken.startService()
    with pytest.raises(StoreClosedError) as caught:
        yield broken.when_open()
    assert isinstance(caught.value.__cause__, SchemaTooNewError)
    yield broken.stopService()


def test_one_call_combinations(backend: Backend) -> None:
    """store.composite: a social login links once and writes last_login at most once a minute; a
    taken JID moves on to the next candidate; the offline queue has a cap."""
    db = backend.open()
    try:
        link = composite.social_login(db, "site", "acct", ["acct@x.org", "acct-2@x.org"], NOW)
        assert link is not None and link.jid == "acct@x.org" and link.last_login is None  # new
        assert [k.last_login for k in db.list_links(site="site")] == [NOW]
        again = composite.social_login(db, "site", "acct", ["acct@x.org"], NOW + 30)
        assert again == SocialLink("site", "acct", "acct@x.org", NOW, NOW)  # fresh: nothing written
        composite.social_login(db, "site", "acct", ["acct@x.org"], NOW + 61)
        assert [k.last_login for k in db.list_links(site="site")] == [NOW + 61]
        assert db.create_account("b@x.org", CREDENTIALS, NOW)
        other = composite.social_login(db, "site", "b", ["b@x.org", "b-2@x.org"], NOW)
        assert other is not None and other.jid == "b-2@x.org"
        assert composite.social_login(db, "site", "c", ["b@x.org", "b-2@x.org"], NOW) is None
        assert rows_mentioning(backend, "b@x.org")["social_links"] == 0

        assert composite.store_offline_capped(db, "b@x.org", "<message/>", NOW, 1) is not None
        assert composite.store_offline_capped(db, "b@x.org", "<message/>", NOW, 1) is None
        assert db.count_offline("b@x.org") == 1
        # The size cap counts the XML's characters, waiting ones and the new one together.
        assert db.offline_usage("b@x.org") == (1, 10)
        assert composite.store_offline_capped(db, "b@x.org", "<message/>", NOW, 5, max_size=20) is not None
        assert composite.store_offline_capped(db, "b@x.org", "<message/>", NOW, 5, max_size=29) is None
        assert db.offline_usage("b@x.org") == (2, 20)
    finally:
        db.close()


@pytest_twisted.inlineCallbacks
def test_reads_see_every_write_made_before_them(backend: Backend):  # type: ignore[no-untyped-def]
    """Reads may run on the reactor thread (SQLite), but never overtake a queued write; a read that
    fails there is asked again in the worker."""
    from twisted.internet import reactor

    store = ThreadedStore(backend.open, reactor)
    store.startService()
    try:
        yield store.when_open()
        yield store.create_account("alice@example.org", CREDENTIALS, NOW)
        writes = [store.put_roster_item("alice@example.org", RosterItem(f"c{n}@example.net", None, (), "none",
                                                                          False, False)) for n in range(50)]
        reading = store.load_roster("alice@example.org")  # while the writes wait in the worker
        items, requests, version = yield reading
        assert len(items) == 50 and requests == [] and version == 50
        yield defer.gatherResults(writes)
        at_once = store.get_roster("alice@example.org")
        assert at_once.called == (backend.name == "sqlite"), "inline reads only where the engine offers them"
        assert len((yield at_once)) == 50

        class BrokenReader:
            def get_roster(self, owner: str) -> list[RosterItem]:
                raise sqlite3.OperationalError("database is locked")

            def close(self) -> None:
                pass

        if backend.name == "sqlite":
            store._reader.close()
            store._reader = BrokenReader()  # type: ignore[assignment]
        assert len((yield store.get_roster("alice@example.org"))) == 50
    finally:
        yield store.stopService()


@pytest_twisted.inlineCallbacks
def test_reads_go_ahead_of_a_write_made_aside_and_of_nothing_else(backend: Backend):  # type: ignore[no-untyped-def]
    """A write made with run_aside (the archive's batches) does not send reads to the worker: with
    one queued, a read still runs at once on the reactor thread (SQLite); with an ordinary write
    queued as well, it waits for that write, as before. What the aside write wrote is there once
    its own result has come back."""
    from twisted.internet import reactor

    from sns_xmpp.store import mam as archive_sql
    from sns_xmpp.store.mam import ArchiveQuery

    store = ThreadedStore(backend.open, reactor)
    store.startService()
    try:
        yield store.when_open()
        yield store.create_account("alice@example.org", CREDENTIALS, NOW)
        rows = [(archive_sql.seq_at(NOW) + 1024 * n, "alice@example.org", f"{n}-t", "bob@example.net", "",
                 "<message/>") for n in range(2000)]
        batch = store.run_aside(partial(archive_sql.write_rows, rows=rows))
        at_once = store.get_roster("alice@example.org")
        assert at_once.called == (backend.name == "sqlite"), "ahead of the archive's batch"
        written = store.put_roster_item("alice@example.org", RosterItem("c@example.net", None, (), "none",
                                                                        False, False))
        behind = store.get_roster("alice@example.org")
        assert not behind.called, "never ahead of an ordinary write"
        assert (yield at_once) == [] and len((yield behind)) == 1
        yield written
        assert (yield batch) == 2000
        page = yield store.run_read(partial(archive_sql.query, asked=ArchiveQuery("alice@example.org", max=0)))
        assert page.count == 2000
    finally:
        yield store.stopService()


class RoundReactor:
    """The real reactor, with the `after_events` of the server's epoll reactor driven by the test:
    while `dispatching`, calls wait in `after` (a round's events are being dispatched)."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.dispatching = False
        self.after: list[Callable[[], None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def after_events(self, call: Callable[[], None]) -> bool:
        if self.dispatching:
            self.after.append(call)
        return self.dispatching

    def end_round(self) -> None:
        self.dispatching = False
        calls, self.after = self.after, []
        for call in calls:
            call()


@pytest_twisted.inlineCallbacks
def test_the_reads_of_a_round_share_one_read_transaction(tmp_path: Path):  # type: ignore[no-untyped-def]
    """SQLite's inline reads within one round of events share one read transaction on the reader
    (one BEGIN, ended once the events are dispatched), and still see every write made before
    them: a write queued in the round sends the round's later reads to the worker, and the next
    round's reads see it. Reads outside a round's events (timers, results from the worker) are
    statements of their own."""
    from twisted.internet import reactor

    rounds = RoundReactor(reactor)
    store = ThreadedStore(lambda: SQLiteDatabase(tmp_path / "store.sqlite"), rounds)  # type: ignore[arg-type]
    store.startService()
    try:
        yield store.when_open()
        yield store.create_account("alice@example.org", CREDENTIALS, NOW)
        reader = store._reader
        assert isinstance(reader, SQLiteDatabase)
        statements: list[str] = []
        reader._conn.set_trace_callback(statements.append)

        rounds.dispatching = True
        first, second = store.account_exists("alice@example.org"), store.get_roster("alice@example.org")
        assert first.called and second.called and reader._conn.in_transaction
        writing = store.put_roster_item("alice@example.org", RosterItem("bob@example.net", None, (), "none",
                                                                        False, False))
        after_the_write = store.get_roster("alice@example.org")
        assert not after_the_write.called, "a read after a queued write waits for it in the worker"
        rounds.end_round()
        assert not reader._conn.in_transaction
        assert [s.split()[0] for s in statements].count("BEGIN") == 1 and statements[-1] == "COMMIT"
        yield writing
        assert [item.contact for item in (yield after_the_write)] == ["bob@example.net"]

        rounds.dispatching = True
        seen = store.get_roster("alice@example.org")
        assert seen.called and [item.contact for item in (yield seen)] == ["bob@example.net"]
        rounds.end_round()
        statements.clear()
        outside = store.get_roster("alice@example.org")  # no round's events under way
        assert outside.called and not reader._conn.in_transaction
        assert not any(s.startswith("BEGIN") for s in statements)
    finally:
        yield store.stopService()


@pytest_twisted.inlineCallbacks
def test_an_unreachable_database_is_tried_again_later(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A database server that is down when the daemon starts (or goes away before the first call)
    does not fail the store for good: calls fail with StoreUnavailableError, the open is tried
    again at most once a second, and once it works the calls do."""
    from twisted.internet import reactor

    now = [100.0]
    attempts: list[float] = []

    def open_database() -> Database:
        attempts.append(now[0])
        if len(attempts) < 2:
            raise StoreUnavailableError("the PostgreSQL server cannot be reached: connection refused")
        return SQLiteDatabase(tmp_path / "store.sqlite")

    store = ThreadedStore(open_database, reactor, monotonic=lambda: now[0])
    store.startService()
    try:
        with pytest.raises(StoreUnavailableError):
            yield store.when_open()
        with pytest.raises(StoreUnavailableError):
            yield store.account_exists("alice@example.org")  # within the second: not asked again
        assert attempts == [100.0]
        now[0] += OPEN_RETRY_SECONDS
        assert (yield store.account_exists("alice@example.org")) is False
        assert attempts == [100.0, 101.0]
    finally:
        yield store.stopService()


def test_postgres_that_cannot_be_reached_is_unavailable_not_broken() -> None:
    with pytest.raises(StoreUnavailableError) as caught:
        PostgresDatabase("host=127.0.0.1 port=1 user=u password=hunter2secret dbname=d connect_timeout=5")
    assert "hunter2secret" not in str(caught.value)


# -- PostgreSQL only ------------------------------------------------------------


def test_postgres_ddl_rewrites_only_what_it_must() -> None:
    statement = (
        "-- INTEGER PRIMARY KEY AUTOINCREMENT, TEXT\n"
        "CREATE TABLE t (\n    id integer primary key  autoincrement,\n"
        "    a TEXT NOT NULL DEFAULT 'none',\n    b TEXT COLLATE \"C\"\n)"
    )
    assert postgres_ddl(statement) == (
        "CREATE TABLE t (\n    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,\n"
        '    a TEXT COLLATE "C" NOT NULL DEFAULT \'none\',\n    b TEXT COLLATE "C"\n)'
    )
    with pytest.raises(ValueError, match="AUTOINCREMENT"):
        postgres_ddl("CREATE TABLE t (id BIGINT AUTOINCREMENT)")
    with pytest.raises(ValueError, match="placeholder"):
        postgres_placeholders("SELECT 1 WHERE a LIKE 'x%'")


def test_postgres_schema_as_created(postgres_dsn: str) -> None:
    """Offline ids are an identity column; every text column compares by code point."""
    backend = PostgresBackend(postgres_dsn)
    backend.open().close()
    columns = backend.rows(
        "SELECT table_name, column_name, data_type, collation_name, is_identity"
        " FROM information_schema.columns WHERE table_schema = current_schema()"
    )
    text_columns = [c for c in columns if c[2] == "text"]
    assert len(text_columns) > 10
    assert {c[3] for c in text_columns} == {"C"}
    assert [c[2:] for c in columns if c[:2] == ("offline_messages", "id")] == [("bigint", None, "YES")]


def test_postgres_reconnects_after_losing_its_connection(postgres_dsn: str) -> None:
    """A read after a server-side disconnect just works; a write fails once, then works."""
    db = PostgresDatabase(postgres_dsn)
    db.create_account("alice@example.org", CREDENTIALS, NOW)
    dbname = psycopg.conninfo.conninfo_to_dict(postgres_dsn)["dbname"]
    admin = psycopg.connect(psycopg.conninfo.make_conninfo(postgres_dsn, dbname="postgres"), autocommit=True)

    def kill_sessions() -> None:
        terminated = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,)
        ).fetchall()
        assert terminated == [(True,)]

    with admin:
        kill_sessions()
        assert db.account_exists("alice@example.org")
        kill_sessions()
        with pytest.raises(psycopg.OperationalError):  # may or may not have committed: not retried
            db.add_subscription_request("alice@example.org", "bob@example.org")
        db.add_subscription_request("alice@example.org", "bob@example.org")
        assert db.subscription_requests("alice@example.org") == ["bob@example.org"]
        # While the database refuses connections, calls fail; once it is back, they work.
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        kill_sessions()
        for _attempt in range(2):
            with pytest.raises(StoreUnavailableError):
                db.account_exists("alice@example.org")
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        assert db.account_exists("alice@example.org")
    db.close()


def test_postgres_store_offline_syncs_even_if_commits_are_async(postgres_dsn: str) -> None:
    """An administrator's synchronous_commit = off does not apply to offline messages."""
    backend = PostgresBackend(postgres_dsn)
    dbname = psycopg.conninfo.conninfo_to_dict(postgres_dsn)["dbname"]
    backend.rows(f'ALTER DATABASE "{dbname}" SET synchronous_commit = off')
    db = PostgresDatabase(postgres_dsn)
    db.create_account("alice@example.org", (), NOW)
    in_insert: list[str] = []

    class Recording(psycopg.Cursor):  # type: ignore[type-arg]
        def execute(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def]
            if str(query).startswith("INSERT INTO offline_messages"):
                # Another cursor on the same connection: inside the same transaction.
                in_insert.append(self.connection.execute("SHOW synchronous_commit").fetchone()[0])
            return super().execute(query, params, **kwargs)

    db._conn.cursor_factory = Recording
    db.store_offline("alice@example.org", "<message/>", NOW)
    assert in_insert == ["on"]
    assert db._conn.execute("SHOW synchronous_commit").fetchone() == ("off",)  # only for that commit
    db.close()


def test_a_revoked_link_stays_and_every_revocation_is_an_event_in_order(backend: Backend) -> None:
    """Revoking keeps the link with its time (the same site account comes back to the same user,
    with credentials issued later) and records an
    event the running servers read after their last one; one link's revocation names its JID;
    deleting the account takes its revocations with it. In each engine."""
    db = backend.open()
    assert db.last_revocation_id() == 0
    zoe = db.link_account("demo", "zoe", "zoe\\40demo@localhost", NOW)
    yves = db.link_account("demo", "yves", "yves\\40demo@localhost", NOW)
    first = db.revoke(zoe.jid, "admin", NOW + 1)
    second = db.revoke("", "unlinked", NOW + 2, site="demo", account="yves")
    assert first is not None and second is not None and second > first
    assert db.revoke("", "unlinked", NOW + 3, site="demo", account="nobody") is None
    assert db.revoke("ghost@localhost", "admin", NOW + 3) is None
    assert [(r.jid, r.reason, r.at) for r in db.revocations_after(0)] == [
        (zoe.jid, "admin", NOW + 1), (yves.jid, "unlinked", NOW + 2)]
    assert [r.id for r in db.revocations_after(first)] == [second]
    assert db.last_revocation_id() == second
    assert db.get_link("demo", "zoe") == dataclasses.replace(zoe, revoked_at=NOW + 1)
    assert db.delete_account(yves.jid)
    assert rows_mentioning(backend, yves.jid) == dict.fromkeys(rows_mentioning(backend, yves.jid), 0)
    db.close()


def test_fast_tokens_rotate_count_and_go_with_a_revocation(backend: Backend) -> None:
    """XEP-0484's tokens, stored as digests, one per (account, client): a login takes the current
    token once per count (a replayed count is refused), rotation keeps the used token for its grace
    period only, invalidate removes it, and a revocation deletes the account's tokens in the same
    transaction. In each engine."""
    from sns_xmpp.store.records import FastTokenIssue

    db = backend.open()
    zoe = db.link_account("demo", "zoe", "zoe\\40demo@localhost", NOW).jid
    assert not db.put_fast_token("ghost@localhost", "phone", "HT-SHA-256-NONE", b"g" * 32, NOW, NOW + 100)
    assert db.put_fast_token(zoe, "phone", "HT-SHA-256-NONE", b"a" * 32, NOW, NOW + 100)
    assert db.put_fast_token(zoe, "laptop", "HT-SHA-256-NONE", b"l" * 32, NOW, NOW + 100)
    token = db.fast_token(zoe, "phone")
    assert token is not None and (token.token_hash, token.expires_at, token.last_count) == (b"a" * 32, NOW + 100, 0)
    assert backend.rows("SELECT token_hash FROM fast_tokens WHERE agent = 'phone'") == [((b"a" * 32).hex(),)]

    def issue(digest: bytes, at: float) -> FastTokenIssue:
        return FastTokenIssue("HT-SHA-256-NONE", digest, at, at + 100, at + 10)

    assert db.use_fast_token(zoe, "phone", b"a" * 32, 1, NOW + 1, issue(b"b" * 32, NOW + 1))
    assert not db.use_fast_token(zoe, "phone", b"a" * 32, 1, NOW + 2, issue(b"x" * 32, NOW + 2)), "replayed count"
    rotated = db.fast_token(zoe, "phone")
    assert rotated is not None and (rotated.token_hash, rotated.previous_hash, rotated.previous_until,
                                    rotated.previous_count) == (b"b" * 32, b"a" * 32, NOW + 11, 1)
    # The previous token, within its grace period, with a higher count: a new current token.
    assert db.use_fast_token(zoe, "phone", b"a" * 32, 2, NOW + 5, issue(b"c" * 32, NOW + 5))
    assert not db.use_fast_token(zoe, "phone", b"a" * 32, 3, NOW + 12, issue(b"d" * 32, NOW + 12)), "grace over"
    assert not db.use_fast_token(zoe, "phone", b"c" * 32, 1, NOW + 200, issue(b"d" * 32, NOW + 200)), "expired"
    assert db.use_fast_token(zoe, "phone", b"c" * 32, 1, NOW + 20, None)  # invalidate
    assert db.fast_token(zoe, "phone") is None
    assert db.revoke(zoe, "admin", NOW + 30) is not None
    assert db.fast_token(zoe, "laptop") is None
    db.close()


def test_device_passwords_share_the_accounts_salt_and_go_with_a_revocation(backend: Backend) -> None:
    """Device passwords (issue 15): kept as SCRAM-SHA-1 and -SHA-256 keys under one salt, listed,
    removed one by one, named among the accounts that have some, and all deleted by the account's
    revocation. In each engine."""
    from sns_xmpp.auth.scram import derive_credential

    db = backend.open()
    zoe = db.link_account("demo", "zoe", "zoe\\\\40demo@localhost", NOW)
    salt = b"s" * 16

    def keys(password: str) -> tuple[ScramCredential, ...]:
        return tuple(derive_credential(m, password, salt=salt, iterations=4096)
                     for m in ("SCRAM-SHA-1", "SCRAM-SHA-256"))

    phone = db.add_device_password(zoe.jid, "phone", keys("p1"), NOW)
    laptop = db.add_device_password(zoe.jid, "laptop", keys("p2"), NOW + 1)
    with pytest.raises(ValueError, match="one salt"):
        db.add_device_password(zoe.jid, "odd", (keys("p3")[0], derive_credential("SCRAM-SHA-256", "p3")), NOW)
    devices = db.device_passwords(zoe.jid)
    assert [(d.id, d.label, d.credentials) for d in devices] == [
        (phone, "phone", keys("p1")), (laptop, "laptop", keys("p2"))]
    assert db.device_password_jids() == [zoe.jid]
    assert db.remove_device_password(zoe.jid, laptop) and not db.remove_device_password("other@localhost", phone)
    assert [d.label for d in db.device_passwords(zoe.jid)] == ["phone"]
    db.revoke(zoe.jid, "logout", NOW + 9)
    assert db.device_passwords(zoe.jid) == [] and db.device_password_jids() == []
    db.close()


def test_refresh_tokens_are_kept_sealed_and_a_confirmation_extends_the_accounts_devices(backend: Backend) -> None:
    """A provider's refresh token is kept per linked account, found when due, replaced, deleted,
    and gone with a revocation; a re-confirmation moves the account's devices' lifetime on (a FAST
    token still no longer than its own lifetime from its issue). In each engine."""
    from sns_xmpp.auth.scram import derive_credential

    db = backend.open()
    zoe = db.link_account("idp", "Zoe", "zoe\\\\40idp@localhost", NOW)
    db.put_refresh_token("idp", "Zoe", zoe.jid, "sealed-1", NOW)
    assert db.refresh_tokens_due(NOW - 1) == []
    [due] = db.refresh_tokens_due(NOW)
    assert (due.jid, due.sealed, due.confirmed_at) == (zoe.jid, "sealed-1", NOW)
    db.put_refresh_token("idp", "Zoe", zoe.jid, "sealed-2", NOW + 10)
    assert [t.sealed for t in db.refresh_tokens_due(NOW + 10)] == ["sealed-2"]

    keys = [derive_credential(m, "pw", salt=b"s" * 16, iterations=4096) for m in ("SCRAM-SHA-1", "SCRAM-SHA-256")]
    db.add_device_password(zoe.jid, "phone", keys, NOW, expires_at=NOW + 100)
    db.put_fast_token(zoe.jid, "agent", "HT-SHA-256-NONE", b"h" * 32, NOW, NOW + 100, NOW + 100)
    db.extend_devices(zoe.jid, NOW + 500, 300)
    assert db.device_passwords(zoe.jid)[0].expires_at == NOW + 500
    token = db.fast_token(zoe.jid, "agent")
    assert token is not None and (token.confirmed_until, token.expires_at) == (NOW + 500, NOW + 300)
    db.revoke(zoe.jid, "logout", NOW + 20)
    assert db.refresh_tokens_due(NOW + 1000) == []
    db.close()
