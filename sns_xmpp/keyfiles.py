"""Per-install secrets, made on first start with mode 0600 and never shipped."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def ensure_secret(path: Path, nbytes: int = 32) -> str:
    """Return the secret in *path*, creating it (urlsafe text, ``nbytes`` of randomness) if absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return path.read_text().strip()
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()
