"""What the server keeps on disk (SCRAM keys, messages, secrets) is its user's alone: 0700 / 0600."""

from __future__ import annotations

import os
import stat
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from sns_xmpp.config import parse_config
from sns_xmpp.ops.admin import run
from sns_xmpp.store.records import ScramCredential
from sns_xmpp.store.sqlite import SQLiteDatabase


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The umask most daemons start with (022): files 0644 and folders 0755 unless asked otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def events() -> Iterator[list[dict]]:
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_a_new_sqlite_database_and_its_wal_and_shm_are_0600(tmp_path: Path) -> None:
    """The database file, and the -wal and -shm files SQLite makes beside it, hold SCRAM keys
    and messages: nobody but the server's user may read them."""
    path = tmp_path / "db.sqlite3"
    database = SQLiteDatabase(path)
    try:
        database.create_account("alice@localhost", (ScramCredential("SCRAM-SHA-256", b"s", 4096, b"k", b"k"),), 1.0)
        files = [path, tmp_path / "db.sqlite3-wal", tmp_path / "db.sqlite3-shm"]
        assert {file.name: oct(mode(file)) for file in files} == {file.name: "0o600" for file in files}
    finally:
        database.close()


def test_the_data_folder_is_made_0700_by_the_server_and_the_admin_tool(tmp_path: Path) -> None:
    """Both makers of the data folder make it private (it holds the database and the keys)."""
    from sns_xmpp.observe import log_gate
    from sns_xmpp.service import build_server

    gate = log_gate._minimum[0]  # build_server sets the process's log level; put it back after

    config_path = tmp_path / "sns-xmpp.toml"
    for name in ("daemon", "admin"):
        config_path.write_text(textwrap.dedent(f"""
            [server]
            data_dir = "{tmp_path / name / 'data'}"
            [xmpp.c2s]
            port = 0
            direct_tls_port = -1
            [http]
            port = 0
        """))
        if name == "daemon":
            try:
                build_server(parse_config(config_path.read_text()), MemoryReactorClock())
            finally:
                log_gate._minimum[0] = gate
        else:
            import io

            run(["--config", str(config_path), "migrate"], io.StringIO(), io.StringIO())
            assert oct(mode(tmp_path / name / "data" / "sns-xmpp.sqlite3")) == "0o600"
        assert oct(mode(tmp_path / name / "data")) == "0o700", name


def test_wider_modes_are_warned_about_with_path_and_mode(tmp_path: Path, events: list[dict]) -> None:
    """An install made before (0755 folder, 0644 database) keeps working, and says what to fix."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    path = data / "db.sqlite3"
    SQLiteDatabase(path).close()
    path.chmod(0o644)
    SQLiteDatabase(path).close()
    warned = {(event.get("path"), event.get("mode")) for event in events
              if event.get("log_format", "").startswith("files.too_open")}
    assert (str(path), "0644") in warned
    from sns_xmpp.keyfiles import private_directory

    private_directory(data)
    warned = {(event.get("path"), event.get("mode")) for event in events
              if event.get("log_format", "").startswith("files.too_open")}
    assert (str(data), "0755") in warned
