"""Secrets may live in files: `<key>_file`, read at load, never both forms."""

from __future__ import annotations

from pathlib import Path

import pytest

from sns_xmpp.config import ConfigError, parse_config


def test_secret_from_a_file_and_refusals(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text("postgresql://sns:s3cret@127.0.0.1/sns\n")
    config = parse_config("[store]\nbackend = 'postgresql'\ndsn_file = 'dsn'\n", tmp_path)
    assert config.store.dsn == "postgresql://sns:s3cret@127.0.0.1/sns"
    with pytest.raises(ConfigError, match="'store.dsn_file': give either 'dsn' or 'dsn_file'"):
        parse_config("[store]\ndsn = 'x'\ndsn_file = 'dsn'\n", tmp_path)
    with pytest.raises(ConfigError, match="'store.dsn_file': cannot read"):
        parse_config("[store]\ndsn_file = 'missing'\n", tmp_path)
    with pytest.raises(ConfigError, match="'store.path_file': unknown key"):
        parse_config("[store]\npath_file = 'x'\n", tmp_path)
    with pytest.raises(ConfigError, match="'store.dsn': required for backend"):
        parse_config("[store]\nbackend = 'postgresql'\n", tmp_path)
