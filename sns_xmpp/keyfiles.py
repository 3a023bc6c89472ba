"""Per-install secrets, made on first start with mode 0600 and never shipped; the private data folder."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from sns_xmpp.observe.log_gate import GatedLogger

log = GatedLogger()


def private_directory(path: Path) -> Path:
    """Make the folder *path* mode 0700 if it is missing; warn if it exists and is wider.

    It holds the database (SCRAM keys, messages) and the keys: nobody but the
    server's user may list or read it.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    warn_if_open(path)
    return path


def warn_if_open(path: str | os.PathLike[str]) -> None:
    """Log a warning, with the path and its mode, if group or others may use *path* at all."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        wanted = "0700" if os.path.isdir(path) else "0600"
        log.warn("files.too_open path={path} mode={mode}: holds private data; chmod {wanted} it",
                 path=os.fspath(path), mode=f"{mode:04o}", wanted=wanted)


def create_private(path: str | os.PathLike[str]) -> None:
    """Create the empty file *path* with mode 0600 unless it exists (others make theirs alike)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def ensure_secret(path: Path, nbytes: int = 32) -> str:
    """Return the secret in *path*, creating it (urlsafe text, ``nbytes`` of randomness) if absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Written under a name of its own, then linked into place whole: processes starting at
        # once (ejabberd's pool of sns-xmpp-extauth) never read a file made but not yet written.
        draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(nbytes))
            try:
                os.link(draft, path)
            except FileExistsError:  # another process made it first: use theirs
                pass
        finally:
            draft.unlink()
    return path.read_text().strip()
