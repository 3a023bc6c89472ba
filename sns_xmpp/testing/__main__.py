"""``python -m sns_xmpp.testing package.module:ContractClass [check ...]``: run the contract suite.

Prints one line per check (``ok``, ``skipped: why`` or the violations) and exits
with status 1 when any property is broken.
"""

from __future__ import annotations

import importlib
import sys

from twisted.internet import defer, task

from sns_xmpp.sites.interface import ISiteReactor
from sns_xmpp.testing import CHECKS, ContractReport, SiteContract, run_site_contract


def _contract(target: str) -> SiteContract:
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise SystemExit(f"usage: python -m sns_xmpp.testing package.module:ContractClass [{'|'.join(CHECKS)} ...]")
    found = getattr(importlib.import_module(module_name), attribute)
    if not (isinstance(found, type) and issubclass(found, SiteContract)):
        raise SystemExit(f"{target} is not a SiteContract subclass")
    return found()


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(f"usage: python -m sns_xmpp.testing package.module:ContractClass [{'|'.join(CHECKS)} ...]")
    contract = _contract(argv[0])
    checks = argv[1:] or None
    reports: list[ContractReport] = []

    async def run(reactor: ISiteReactor) -> None:
        reports.append(await run_site_contract(contract, reactor=reactor, checks=checks))

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)), [])
    except SystemExit as exit:
        if exit.code:
            raise
    report = reports[0]
    for name in checks or CHECKS:
        if name in report.violations:
            print(f"FAIL {name}")
            for message in report.violations[name]:
                print(f"     {message}")
        elif name in report.skipped:
            print(f"skip {name}: {report.skipped[name]}")
        else:
            print(f"ok   {name}")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
