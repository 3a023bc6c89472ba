"""The benchmark's OpenID provider: `tests.oidc_provider` on loopback, in a process of its own.

`benchmarks.run` starts it for the login phase (``python -m benchmarks.idp --key FILE --kid KID
--client-id ID``). It publishes the discovery document and a JWKS holding the runner's RSA key
(PEM, made by the runner) under *KID*, beside the test provider's own keys, prints
``{"issuer": ...}`` as one JSON line on stdout once it listens, then ``{"served": "jwks"}``
each time it has served the JWKS, and serves until SIGTERM.

The daemon fetches the discovery document and the JWKS once at start and caches them, so
this process is idle during the timed part; the load generator mints ID tokens with the
same private key itself (`benchmarks.loadgen.oidc_tokens`). The runner waits for the first
``served`` line before it measures: the daemon logs at warn level in the benchmark, so its
own ``oidc.provider_ready`` line (info) does not say when the keys are in.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor

from tests.oidc_provider import OIDCProvider


class AnnouncingProvider(OIDCProvider):
    """The test provider, telling the runner on stdout whenever it has served its JWKS."""

    def jwks(self) -> dict[str, Any]:
        keys = super().jwks()
        print(json.dumps({"served": "jwks"}), flush=True)
        return keys


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idp")
    parser.add_argument("--key", type=Path, required=True, help="the RSA private key (PEM) to publish")
    parser.add_argument("--kid", required=True, help="its key id")
    parser.add_argument("--client-id", required=True, help="the daemon's client id")
    args = parser.parse_args(argv)
    key = serialization.load_pem_private_key(args.key.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        parser.error(f"{args.key} does not hold an RSA private key")
    provider = AnnouncingProvider(client_id=args.client_id)
    provider.signing_kid = provider.add_key("RSA", kid=args.kid, key=key)
    provider.listen(reactor)
    print(json.dumps({"issuer": provider.issuer}), flush=True)
    reactor.run()  # stops on SIGTERM or SIGINT
    return 0


if __name__ == "__main__":
    sys.exit(main())
