"""The plugin author's kit: a contract suite every social-site plugin should pass.

Describe the plugin with a :class:`SiteContract` subclass, then either

* from any test runner: ``messages = await check_site_contract(MyContract())``
  (a Deferred of the violations, one line each; empty when the plugin keeps the
  contract), or ``await assert_site_contract(MyContract())``, which fails with
  :class:`ContractViolation`;
* with pytest and pytest-twisted: ``class TestMySite(SiteContractTests):
  contract = MyContract`` gives one test per property;
* from a shell: ``python -m sns_xmpp.testing my_package.contract:MyContract``.

The suite needs a running real reactor (it bounds hung calls with real time);
pass one, or the global reactor is used. See ``docs/plugins.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred

from sns_xmpp.sites.interface import ISiteReactor
from sns_xmpp.testing.checks import CHECKS, run_check
from sns_xmpp.testing.contract import (
    BadSettings,
    ContractError,
    ContractViolation,
    Credentials,
    SiteContract,
    UnreachableProvider,
)
from sns_xmpp.testing.run import ContractRun, ContractSkipped
from sns_xmpp.testing.silent import SilentServer

if TYPE_CHECKING:
    from sns_xmpp.testing.mixin import SiteContractTests

__all__ = [
    "CHECKS",
    "BadSettings",
    "ContractError",
    "ContractReport",
    "ContractRun",
    "ContractSkipped",
    "ContractViolation",
    "Credentials",
    "SilentServer",
    "SiteContract",
    "SiteContractTests",
    "UnreachableProvider",
    "assert_site_contract",
    "check_site_contract",
    "run_site_contract",
]


@dataclass
class ContractReport:
    """The outcome of every check that ran: violations (by check), and the checks that did not apply."""

    violations: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    passed: list[str] = field(default_factory=list)

    @property
    def messages(self) -> list[str]:
        return [message for found in self.violations.values() for message in found]


async def _run(contract: SiteContract, reactor: ISiteReactor | None, checks: Iterable[str] | None) -> ContractReport:
    if reactor is None:
        from twisted.internet import reactor as installed

        reactor = cast(ISiteReactor, installed)  # every Twisted reactor provides it (sns_xmpp.reactors)
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise ContractError(f"no contract check named {', '.join(unknown)} (known: {', '.join(CHECKS)})")
    report = ContractReport()
    async with ContractRun(contract, reactor) as run:
        for name in names:
            try:
                found = await run_check(run, name)
            except ContractSkipped as skipped:
                report.skipped[name] = str(skipped)
                continue
            if found:
                report.violations[name] = found
            else:
                report.passed.append(name)
    return report


def run_site_contract(contract: SiteContract, *, reactor: ISiteReactor | None = None,
                      checks: Iterable[str] | None = None) -> Deferred[ContractReport]:
    """Run the checks (all, or those named) against the plugin *contract* describes."""
    return Deferred.fromCoroutine(_run(contract, reactor, checks))


def check_site_contract(contract: SiteContract, *, reactor: ISiteReactor | None = None,
                        checks: Iterable[str] | None = None) -> Deferred[list[str]]:
    """Fire with every violation, one ``contract violated: <what> [<check>]`` line each; [] if none."""
    return run_site_contract(contract, reactor=reactor, checks=checks).addCallback(lambda report: report.messages)


def assert_site_contract(contract: SiteContract, *, reactor: ISiteReactor | None = None,
                         checks: Iterable[str] | None = None) -> Deferred[None]:
    """Fire with None, or fail with ContractViolation listing every violation."""

    def judge(messages: list[str]) -> None:
        if messages:
            raise ContractViolation(messages)

    return check_site_contract(contract, reactor=reactor, checks=checks).addCallback(judge)


def __getattr__(name: str) -> Any:
    # The pytest mixin imports pytest and pytest-twisted: only when asked for.
    if name == "SiteContractTests":
        from sns_xmpp.testing.mixin import SiteContractTests

        return SiteContractTests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
