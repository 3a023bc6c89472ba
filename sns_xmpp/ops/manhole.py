"""The operators' console: a Python prompt inside the running server, over SSH (twisted.conch).

Off by default; when on, it listens on loopback and admits only the keys in an
``authorized_keys`` file or a configured password hash. Its host key is made on
first start in the data folder. The names it offers are in `console.py`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred import credentials, error, portal
from twisted.internet import defer
from twisted.internet.defer import Deferred

from sns_xmpp.config import ConfigError

PBKDF2_PREFIX = "pbkdf2-sha256"


def hash_password(password: str, iterations: int = 600_000, salt: bytes | None = None) -> str:
    """The form of ``manhole.password_hash``: ``pbkdf2-sha256$<iterations>$<salt>$<hash>``."""
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join([PBKDF2_PREFIX, str(iterations), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()])


class PasswordHashChecker:
    """Checks a username/password against one configured PBKDF2 hash, in constant time."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, user: bytes, password_hash: str) -> None:
        try:
            prefix, iterations, salt, digest = password_hash.split("$")
            if prefix != PBKDF2_PREFIX:
                raise ValueError(prefix)
            self.iterations = int(iterations)
            self.salt = base64.b64decode(salt, validate=True)
            self.digest = base64.b64decode(digest, validate=True)
        except ValueError:
            raise ConfigError("manhole.password_hash", "must be pbkdf2-sha256$iterations$salt$hash "
                                                       "(sns-xmpp-admin manhole-hash makes one)") from None
        self.user = user

    def requestAvatarId(self, creds: Any) -> Deferred[bytes]:
        offered = hashlib.pbkdf2_hmac("sha256", creds.password, self.salt, self.iterations)
        if hmac.compare_digest(offered, self.digest) and hmac.compare_digest(creds.username, self.user):
            return defer.succeed(self.user)
        return defer.fail(error.UnauthorizedLogin())


def host_key(data_dir: Path) -> keys.Key:
    """The console's SSH host key, made once (mode 0600) and never shipped."""
    path = data_dir / "manhole_host_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
    return keys.Key.fromFile(str(path))


def authorized_keys(path: Path) -> list[keys.Key]:
    try:
        lines = path.read_bytes().splitlines()
    except OSError as problem:
        raise ConfigError("manhole.authorized_keys", f"cannot read {path}: {problem.strerror}") from None
    found = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith(b"#"):
            try:
                found.append(keys.Key.fromString(line))
            except (keys.BadKeyError, ValueError, IndexError):
                raise ConfigError("manhole.authorized_keys", f"{path}: a line is not an OpenSSH public key") from None
    if not found:
        raise ConfigError("manhole.authorized_keys", f"{path} holds no keys")
    return found


class _Console:
    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace

    def __call__(self) -> insults.ServerProtocol:
        return insults.ServerProtocol(manhole.ColoredManhole, self.namespace)


def console_factory(namespace: dict[str, Any], data_dir: Path, user: str, authorized_keys_path: Path | None,
                    password_hash: str | None) -> manhole_ssh.ConchFactory:
    checkers: list[Any] = []
    if authorized_keys_path is not None:
        database = InMemorySSHKeyDB({user.encode(): authorized_keys(authorized_keys_path)})
        checkers.append(SSHPublicKeyChecker(database))
    if password_hash:
        checkers.append(PasswordHashChecker(user.encode(), password_hash))
    if not checkers:
        raise ConfigError("manhole.authorized_keys", "the console needs authorized_keys or a password_hash")
    realm = manhole_ssh.TerminalRealm()
    realm.chainedProtocolFactory = _Console(namespace)  # type: ignore[assignment]
    factory = manhole_ssh.ConchFactory(portal.Portal(realm, checkers))  # type: ignore[arg-type]
    key = host_key(data_dir)
    # Twisted annotates these as bytes, but its SSH factory takes Key objects.
    factory.publicKeys = {key.sshType(): key.public()}
    factory.privateKeys = {key.sshType(): key}  # type: ignore[dict-item]
    return factory
