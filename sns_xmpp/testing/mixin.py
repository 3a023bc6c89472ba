"""The contract suite as pytest tests (needs pytest-twisted): one test per property.

    from sns_xmpp.testing import SiteContractTests

    class TestMySite(SiteContractTests):
        contract = MySiteContract

A property the plugin is known to break can be listed in
``expected_violations`` (check name -> why): its test then reports xfail while
the violation is there and fails once it is gone, so the entry gets removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, cast

import pytest
import pytest_twisted

from sns_xmpp.sites.interface import ISiteReactor
from sns_xmpp.testing.checks import run_check
from sns_xmpp.testing.contract import SiteContract
from sns_xmpp.testing.run import ContractRun, ContractSkipped


class SiteContractTests:
    """Mix into a ``Test...`` class and set ``contract`` to your SiteContract subclass."""

    contract: ClassVar[type[SiteContract]]
    expected_violations: ClassVar[Mapping[str, str]] = {}

    async def check_contract(self, name: str) -> None:
        """Run check *name* against a fresh contract environment; fail with its messages."""
        from twisted.internet import reactor as installed

        reactor = cast(ISiteReactor, installed)  # every Twisted reactor provides it (sns_xmpp.reactors)

        contract_class: Any = getattr(type(self), "contract", None)
        if contract_class is None:
            pytest.fail(f"{type(self).__name__} must set 'contract' to a SiteContract subclass")
        try:
            async with ContractRun(contract_class(), reactor) as run:
                messages = await run_check(run, name)
        except ContractSkipped as skipped:
            pytest.skip(str(skipped))
        expected = self.expected_violations.get(name)
        if expected is not None:
            if not messages:
                pytest.fail(f"'{name}' is listed in expected_violations ({expected}) but the site keeps that "
                            f"property now: remove the entry")
            pytest.xfail(f"{expected}: {messages[0]}")
        if messages:
            pytest.fail("\n".join(messages), pytrace=False)

    @pytest_twisted.ensureDeferred
    async def test_interface(self) -> None:
        """The site provides ISite (and IBearerSite/ISiteWithPages when it claims them) with the configured id."""
        await self.check_contract("interface")

    @pytest_twisted.ensureDeferred
    async def test_config_errors(self) -> None:
        """Each bad setting raises SiteConfigError naming its key, and the error repeats no secret."""
        await self.check_contract("config_errors")

    @pytest_twisted.ensureDeferred
    async def test_valid_token(self) -> None:
        """A valid token verifies to the account the identifier names."""
        await self.check_contract("valid_token")

    @pytest_twisted.ensureDeferred
    async def test_tampered_tokens(self) -> None:
        """Every one-character change of the token or the identifier is rejected with SiteRejection."""
        await self.check_contract("tampered_tokens")

    @pytest_twisted.ensureDeferred
    async def test_expired_token(self) -> None:
        """An expired token is rejected as 'expired'."""
        await self.check_contract("expired_token")

    @pytest_twisted.ensureDeferred
    async def test_malformed_input(self) -> None:
        """Empty, huge, garbage and mis-separated input is rejected with SiteRejection, never another error."""
        await self.check_contract("malformed_input")

    @pytest_twisted.ensureDeferred
    async def test_reactor_not_blocked(self) -> None:
        """Verification returns a Deferred at once and never holds the reactor longer than the limit."""
        await self.check_contract("reactor_not_blocked")

    @pytest_twisted.ensureDeferred
    async def test_unreachable_provider(self) -> None:
        """A provider that never answers makes verification fail as 'provider-unavailable', in time."""
        await self.check_contract("unreachable_provider")

    @pytest_twisted.ensureDeferred
    async def test_no_secrets_logged(self) -> None:
        """No secret and no token appears in any log event, from configuring to stopping."""
        await self.check_contract("no_secrets_logged")

    @pytest_twisted.ensureDeferred
    async def test_lifecycle(self) -> None:
        """start, status and stop behave, and a token made before a reload still verifies after it."""
        await self.check_contract("lifecycle")
