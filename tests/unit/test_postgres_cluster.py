"""How the throwaway-cluster helper finds PostgreSQL's server binaries (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import pgcluster


def fake_bindir(folder: Path, works: bool = True) -> Path:
    folder.mkdir(parents=True)
    for name in ("initdb", "pg_ctl", "postgres"):
        program = folder / name
        program.write_text("#!/bin/sh\nexit 0\n" if works else "#!/bin/sh\nexit 1\n")
        program.chmod(0o755)
    return folder


@pytest.fixture
def debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "usr-lib-postgresql"
    root.mkdir()
    monkeypatch.setattr(pgcluster, "DEBIAN_BINDIRS", str(root))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    return root


def test_newest_debian_version_that_works(debian: Path) -> None:
    fake_bindir(debian / "9.6" / "bin")
    newest_working = fake_bindir(debian / "15" / "bin")
    fake_bindir(debian / "16" / "bin", works=False)
    fake_bindir(debian / "10" / "bin")
    assert pgcluster.find_bindir() == newest_working


def test_path_first_through_symlinks(debian: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlinked initdb on PATH (as in /usr/local/bin) leads to its real, complete folder."""
    fake_bindir(debian / "16" / "bin")
    real = fake_bindir(tmp_path / "pg" / "bin")
    on_path = tmp_path / "local-bin"
    on_path.mkdir()
    (on_path / "initdb").symlink_to(real / "initdb")
    monkeypatch.setenv("PATH", str(on_path))
    assert pgcluster.find_bindir() == real


def test_nothing_installed_is_a_reason_to_skip(debian: Path) -> None:
    assert pgcluster.find_bindir() is None
    with pytest.raises(pgcluster.PostgresUnavailable, match="apt-get install postgresql"):
        with pgcluster.running_cluster():
            pass  # pragma: no cover
