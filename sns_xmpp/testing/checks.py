"""The properties every site plugin must have, one check each.

A check returns the ways the plugin broke its property as short sentences (an
empty list: it holds), raises :class:`ContractSkipped` when the contract gives
nothing to check it with, and :class:`ContractError` when the contract itself
is wrong. :func:`run_check` adds the ``contract violated: ... [name]`` frame.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, cast

from twisted.web.resource import IResource
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from sns_xmpp.sites.interface import (
    IBearerSite,
    ISite,
    ISiteWithPages,
    LoginStart,
    Rejection,
    SiteConfigError,
    SiteRejection,
    VerifiedAccount,
)
from sns_xmpp.testing.contract import BadSettings, SiteContract, UnreachableProvider
from sns_xmpp.testing.inputs import GARBAGE, HUGE, malformed_identifiers, malformed_tokens, replacements, tampered
from sns_xmpp.testing.run import ContractRun, ContractSkipped, Outcome, Violation, capture_logs, describe

Check = Callable[[ContractRun], Awaitable[list[str]]]

UNKNOWN_KEY_PROBE = "contract_unknown_setting"
MOST_REPORTED = 5
RESERVED_PAGES = frozenset({b"sites", b"callback", b"metrics", b"health"})  # and login-using-*


@dataclass(frozen=True)
class CheckInfo:
    name: str
    summary: str
    run: Check


CHECKS: dict[str, CheckInfo] = {}


def _check(name: str, summary: str) -> Callable[[Check], Check]:
    def register(function: Check) -> Check:
        CHECKS[name] = CheckInfo(name, summary, function)
        return function

    return register


async def run_check(run: ContractRun, name: str) -> list[str]:
    """Run check *name*; its violations as ``contract violated: <what> [<name>]`` lines."""
    info = CHECKS.get(name)
    if info is None:
        raise KeyError(f"no contract check {name!r} (known: {', '.join(CHECKS)})")
    try:
        found = await info.run(run)
    except Violation as violation:
        found = [str(violation)]
    shown = found[:MOST_REPORTED]
    if len(found) > MOST_REPORTED:
        shown.append(f"... and {len(found) - MOST_REPORTED} more like these")
    return [f"contract violated: {what} [{name}]" for what in shown]


def _unreachable(run: ContractRun) -> UnreachableProvider | None:
    """The contract's settings for a provider that never answers (a silent server is started for them)."""
    if type(run.contract).unreachable_provider is SiteContract.unreachable_provider:
        return None
    return run.contract.unreachable_provider(run.silent_server().url)


def _is_bearer(site: ISite) -> bool:
    return bool(IBearerSite.providedBy(site))


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- the checks -------------------------------------------------------------------------------------


@_check("interface", "the site provides ISite (and what it claims), with the configured site id")
async def check_interface(run: ContractRun) -> list[str]:
    problems: list[str] = []
    contract = run.contract
    site = await run.site()
    interfaces = [ISite, *contract.interfaces]
    interfaces += [extra for extra in (IBearerSite, ISiteWithPages) if extra.providedBy(site) and extra not in
                   interfaces]
    for interface in interfaces:
        try:
            verifyObject(interface, site)
        except Invalid as error:
            problems.append(f"the site does not provide {interface.getName()}: {_one_line(str(error))}")
    if getattr(site, "site_id", None) != contract.site_id:
        problems.append(f"site_id is {getattr(site, 'site_id', None)!r}, not the configured {contract.site_id!r}")
    display_name = getattr(site, "display_name", None)
    if not isinstance(display_name, str) or not display_name.strip():
        problems.append(f"display_name is {display_name!r}, not a non-empty string")
    if not isinstance(getattr(site, "single_use", None), bool):
        problems.append(f"single_use is {getattr(site, 'single_use', None)!r}, not True or False")
    if _is_bearer(site):
        discovery = getattr(site, "openid_configuration", None)
        if not isinstance(discovery, str) or not discovery.startswith(("https://", "http://")):
            problems.append(f"openid_configuration is {discovery!r}, not a discovery document URL")
    if ISiteWithPages.providedBy(site):
        try:
            pages = cast(Any, site).pages()
            for segment, page in dict(pages).items():
                if not isinstance(segment, bytes) or b"/" in segment or not segment:
                    problems.append(f"pages() has the path segment {segment!r}; segments are bytes without '/'")
                elif segment in RESERVED_PAGES or segment.startswith(b"login-using-"):
                    problems.append(f"pages() claims {segment!r}, which the server's own pages use")
                if not IResource.providedBy(page):
                    problems.append(f"pages()[{segment!r}] is not a twisted.web IResource")
        except Exception as error:
            problems.append(f"pages() raised {describe(error)}")
    problems += _status_problems(site, "status()")
    callback = f"{contract.public_url}/callback/{contract.site_id}"
    login = await run.call("start_login()", site.start_login, callback, "contract-state")
    if login.problem or login.rejection:
        problems.append(f"start_login() did not give a LoginStart: {login.explain()}")
    elif not isinstance(login.value, LoginStart) or not isinstance(login.value.url, str):
        problems.append(f"start_login() fired with {type(login.value).__name__}, not a LoginStart")
    finish = await run.call("finish_login()", site.finish_login, {}, {}, run.now())
    if finish.problem:
        problems.append(f"finish_login() with an empty callback broke the contract: {finish.problem}")
    elif finish.accepted:
        problems.append("finish_login() accepted a callback with no parameters at all")
    return problems


def _status_problems(site: ISite, name: str) -> list[str]:
    try:
        status = site.status()
    except Exception as error:
        return [f"{name} raised {describe(error)}"]
    if not isinstance(status, str) or not status or "\n" in status:
        return [f"{name} gave {status!r}, not a short one-line string"]
    return []


@_check("config_errors", "bad settings raise SiteConfigError naming the key, without repeating a secret")
async def check_config_errors(run: ContractRun) -> list[str]:
    contract = run.contract
    cases = list(contract.bad_settings())
    if contract.refuses_unknown_keys:
        cases.append(BadSettings({**contract.settings(), UNKNOWN_KEY_PROBE: "x"}, UNKNOWN_KEY_PROBE,
                                 "an unknown key"))
    if not cases:
        raise ContractSkipped("the contract lists no bad settings (SiteContract.bad_settings)")
    secrets = await run.secrets()
    factory = run.factory()
    problems: list[str] = []
    for number, case in enumerate(cases, 1):
        label = case.label or f"bad settings #{number}"
        try:
            factory(contract.site_id, dict(case.settings), run.context())
        except SiteConfigError as error:
            if error.key != case.key:
                problems.append(f"{label}: SiteConfigError names the key {error.key!r}, not {case.key!r}")
            if not isinstance(error.problem, str) or not error.problem.strip() or "\n" in error.problem:
                problems.append(f"{label}: SiteConfigError's problem is {error.problem!r}, not one line of text")
            if any(secret in f"{error.key} {error.problem} {error}" for secret in secrets):
                problems.append(f"{label}: the SiteConfigError repeats a secret")
        except Exception as error:
            problems.append(f"{label}: the factory raised {describe(error)} instead of SiteConfigError naming "
                            f"{case.key!r}")
        else:
            hint = " (set refuses_unknown_keys = False if that is on purpose)" if case.key == UNKNOWN_KEY_PROBE else ""
            problems.append(f"{label}: the factory accepted them; expected SiteConfigError naming {case.key!r}{hint}")
    return problems


@_check("valid_token", "a valid token verifies to the right account")
async def check_valid_token(run: ContractRun) -> list[str]:
    contract = run.contract
    site = await run.site()
    now = run.now()
    good = await run.credentials(site, now)
    problems: list[str] = []
    try:
        parsed = site.parse_identifier(good.identifier)
    except Exception as error:
        problems.append(f"parse_identifier() refused the valid identifier: {describe(error)}")
    else:
        if parsed != good.account:
            problems.append(f"parse_identifier() named the account {parsed!r}, not {good.account!r}")
    methods = [False, True] if _is_bearer(site) else [False]
    for bearer in methods:
        name = "verify_bearer()" if bearer else "verify()"
        outcome = await run.verify(site, good.identifier, good.token, now, bearer=bearer)
        if not outcome.accepted:
            problems.append(f"a valid token was not accepted by {name}: {outcome.explain()}")
            continue
        account: VerifiedAccount = outcome.value
        if account.site != contract.site_id:
            problems.append(f"{name} vouched for site {account.site!r}, not {contract.site_id!r}")
        if account.account != good.account:
            problems.append(f"{name} vouched for account {account.account!r}, not {good.account!r}")
        if isinstance(account.expires, bool) or not isinstance(account.expires, int | float) or account.expires <= now:
            problems.append(f"{name} gave expires={account.expires!r}, not a time after now")
        digest = account.token_digest
        if not isinstance(digest, bytes) or not digest:
            problems.append(f"{name} gave token_digest={type(digest).__name__}, not a non-empty hash (bytes)")
        elif good.token.encode("utf-8", "replace") in digest or digest in good.token.encode("utf-8", "replace"):
            problems.append(f"{name}'s token_digest holds the token itself; it must be a hash of it")
        if account.display_name is not None and not isinstance(account.display_name, str):
            problems.append(f"{name} gave display_name={account.display_name!r}, not a string or None")
    try:
        password = site.scram_password(good.identifier, now)
    except Exception as error:
        problems.append(f"scram_password() raised {describe(error)} (return None when the site cannot)")
    else:
        if password is not None and not isinstance(password, str):
            problems.append(f"scram_password() gave {type(password).__name__}, not a string or None")
        elif password is not None:
            outcome = await run.verify(site, good.identifier, password, now)
            if not outcome.accepted:
                problems.append(f"verify() refused the password scram_password() gave: {outcome.explain()}")
    return problems


@_check("tampered_tokens", "every one-character change of the token or the identifier is rejected")
async def check_tampered_tokens(run: ContractRun) -> list[str]:
    contract = run.contract
    site = await run.site()
    now = run.now()
    good = await run.credentials(site, now)
    problems: list[str] = []

    def judge(outcome: Outcome, what: str) -> None:
        if outcome.problem is not None:
            problems.append(f"a tampered {what} broke the contract: {outcome.problem}")
        elif outcome.accepted:
            problems.append(f"a tampered {what} was accepted")

    for change, token in tampered(good.token, contract.tamper_positions):
        judge(await run.verify(site, good.identifier, token, now), f"token ({change})")
        if _is_bearer(site):
            judge(await run.verify(site, good.identifier, token, now, bearer=True), f"bearer token ({change})")
    for change, identifier in tampered(good.identifier, contract.tamper_positions, ignore_case=True):
        try:
            site.parse_identifier(identifier)
        except SiteRejection:
            pass
        except Exception as error:
            problems.append(f"parse_identifier() raised {describe(error)} for a tampered identifier ({change})")
        judge(await run.verify(site, identifier, good.token, now), f"identifier ({change}) with the valid token")
    return problems


@_check("expired_token", "an expired token is rejected as 'expired'")
async def check_expired_token(run: ContractRun) -> list[str]:
    site = await run.site()
    now = run.now()
    old = await run.credentials(site, now, expired=True)
    problems: list[str] = []
    for bearer in ([False, True] if _is_bearer(site) else [False]):
        name = "verify_bearer()" if bearer else "verify()"
        outcome = await run.verify(site, old.identifier, old.token, now, bearer=bearer)
        if outcome.problem is not None:
            problems.append(f"an expired token broke the contract: {outcome.problem}")
        elif outcome.rejection is None:
            problems.append(f"an expired token was accepted by {name}")
        elif outcome.rejection.kind is not Rejection.EXPIRED:
            problems.append(f"an expired token was rejected by {name} as {outcome.rejection.kind.value!r}, "
                            f"not 'expired'")
    return problems


@_check("malformed_input", "malformed identifiers and tokens are rejected with SiteRejection, never another error")
async def check_malformed_input(run: ContractRun) -> list[str]:
    site = await run.site()
    now = run.now()
    good = await run.credentials(site, now)
    problems: list[str] = []

    def judge(outcome: Outcome, what: str) -> None:
        if outcome.problem is not None:
            problems.append(f"{what}: {outcome.problem}")
        elif outcome.accepted:
            problems.append(f"{what} was accepted")

    for what, token in malformed_tokens(good.token):
        judge(await run.verify(site, good.identifier, token, now), f"{what} (with the valid identifier)")
        if _is_bearer(site):
            judge(await run.verify(site, good.identifier, token, now, bearer=True), f"{what} (as a bearer token)")
    for what, identifier in malformed_identifiers(good.identifier):
        try:
            site.parse_identifier(identifier)
        except SiteRejection:
            pass
        except Exception as error:
            problems.append(f"parse_identifier() raised {describe(error)} for {what} (raise SiteRejection)")
        judge(await run.verify(site, identifier, good.token, now), f"{what} (with the valid token)")
    judge(await run.verify(site, GARBAGE, GARBAGE, now), "garbage as both identifier and token")
    return problems


@_check("reactor_not_blocked", "verification returns a Deferred at once and never holds the reactor")
async def check_reactor_not_blocked(run: ContractRun) -> list[str]:
    contract = run.contract
    site = await run.site()
    now = run.now()
    good = await run.credentials(site, now)
    old = await run.credentials(site, now, expired=True)
    middle = len(good.token) // 2
    cases = [
        ("a valid token", good.identifier, good.token, False),
        ("a tampered token", good.identifier, good.token[:middle] + replacements(good.token[middle])[0]
         + good.token[middle + 1:], False),
        ("an expired token", old.identifier, old.token, False),
        ("a huge token", good.identifier, "A" * HUGE, False),
        ("a huge identifier", "a" * HUGE, good.token, False),
    ]
    if _is_bearer(site):
        cases.append(("a valid bearer token", good.identifier, good.token, True))
    problems: list[str] = []
    for what, identifier, token, bearer in cases:
        held = await run.blocking(site, identifier, token, now, bearer)
        for _ in range(2):  # a real block repeats; a hiccup of the machine does not
            if held <= contract.block_limit:
                break
            held = min(held, await run.blocking(site, identifier, token, now, bearer))
        if held > contract.block_limit:
            problems.append(f"verification blocked the reactor for {held:.2f} s (limit {contract.block_limit:g} s) "
                            f"with {what}")
    return problems


@_check("unreachable_provider", "a provider that never answers gives 'provider-unavailable' within the timeout")
async def check_unreachable_provider(run: ContractRun) -> list[str]:
    contract = run.contract
    hung = _unreachable(run)
    if hung is None:
        raise ContractSkipped("the site calls no provider (SiteContract.unreachable_provider gives None)")
    problems: list[str] = []
    site = await run.started(hung.settings, ready=False)
    now = run.now()
    good = await run.credentials(site, now)
    bound = hung.timeout + max(1.0, hung.timeout / 2)
    for bearer in ([False, True] if _is_bearer(site) else [False]):
        name = "verify_bearer()" if bearer else "verify()"
        outcome = await run.verify(site, good.identifier, good.token, now, bearer=bearer, timeout=bound)
        if outcome.blocked > contract.block_limit:
            problems.append(f"with a provider that never answers, verification blocked the reactor for "
                            f"{outcome.blocked:.2f} s (limit {contract.block_limit:g} s)")
        if outcome.problem is not None and "did not fire" in outcome.problem:
            problems.append(f"{name} hung: no answer within {bound:.1f} s from a provider that never answers "
                            f"(the plugin's timeout is {hung.timeout:g} s)")
        elif outcome.problem is not None:
            problems.append(f"with a provider that never answers, {outcome.problem}")
        elif outcome.rejection is None:
            problems.append(f"{name} accepted a token while its provider never answered")
        elif outcome.rejection.kind is not Rejection.PROVIDER_UNAVAILABLE:
            problems.append(f"with a provider that never answers, {name} rejected the token as "
                            f"{outcome.rejection.kind.value!r}, not 'provider-unavailable'")
    problems += _status_problems(site, "status() with a provider that never answers")
    stopped = await run.stop(site)
    if stopped.problem:
        problems.append(f"stop() with a provider that never answers: {stopped.problem}")
    return problems


@_check("no_secrets_logged", "no secret and no token appears in any log event")
async def check_no_secrets_logged(run: ContractRun) -> list[str]:
    contract = run.contract
    with capture_logs() as logged:
        for case in contract.bad_settings():
            with suppress(Exception):  # what it raises is config_errors' business
                run.factory()(contract.site_id, dict(case.settings), run.context())
        site = await run.started()
        now = run.now()
        good = await run.credentials(site, now)
        old = await run.credentials(site, now, expired=True)
        tokens = [("the valid token", good.token), ("the expired token", old.token)]
        for bearer in ([False, True] if _is_bearer(site) else [False]):
            await run.verify(site, good.identifier, good.token, now, bearer=bearer)
            await run.verify(site, old.identifier, old.token, now, bearer=bearer)
            for _, token in list(tampered(good.token, 3))[:4]:
                await run.verify(site, good.identifier, token, now, bearer=bearer)
            for _, token in malformed_tokens(good.token)[:6]:
                await run.verify(site, good.identifier, token, now, bearer=bearer)
        for _, identifier in list(tampered(good.identifier, 3))[:2]:
            await run.verify(site, identifier, good.token, now)
        await run.call("start_login()", site.start_login, f"{contract.public_url}/callback/x", "contract-state")
        await run.call("finish_login()", site.finish_login, {}, {}, now)
        with suppress(Exception):
            site.status()
        await run.stop(site)
        hung = _unreachable(run)
        if hung is not None:
            slow = await run.started(hung.settings, ready=False)
            slow_credentials = await run.credentials(slow, now)
            tokens.append(("the token sent to an unreachable provider", slow_credentials.token))
            bound = hung.timeout + max(1.0, hung.timeout / 2)
            await run.verify(slow, slow_credentials.identifier, slow_credentials.token, now, timeout=bound)
            with suppress(Exception):
                slow.status()
            await run.stop(slow)
    needles = [(f"secret #{number} of SiteContract.secrets()", secret)
               for number, secret in enumerate(await run.secrets(), 1)]
    for what, token in tokens:
        if len(token) < 24:
            needles.append((what, token))
        else:  # a token changed in one character still holds one half intact
            needles += [(f"the first half of {what}", token[:len(token) // 2]),
                        (f"the second half of {what}", token[len(token) // 2:])]
    problems: list[str] = []
    for what, needle in needles:
        where = logged.find(needle)
        if where is not None:
            problems.append(f"{what} appeared in a log event ({where})")
    return problems


@_check("lifecycle", "start, status, stop and a reload work; tokens survive a reload")
async def check_lifecycle(run: ContractRun) -> list[str]:
    problems: list[str] = []
    first = await run.started()
    problems += _status_problems(first, "status() of a started site")
    now = run.now()
    good = await run.credentials(first, now)
    before = await run.verify(first, good.identifier, good.token, now)
    if not before.accepted:
        raise Violation(f"a valid token was not accepted: {before.explain()}")
    second = await run.started()  # SIGHUP: the factory runs again with the same settings and data_dir
    after = await run.verify(second, good.identifier, good.token, now)
    if not after.accepted:
        problems.append(f"a token made before a reload was refused after it (a second factory call with the same "
                        f"settings and data_dir): {after.explain()}")
    stopped = await run.stop(first)
    if stopped.problem:
        problems.append(stopped.problem)
    problems += _status_problems(first, "status() of a stopped site")
    still = await run.verify(second, good.identifier, good.token, now)
    if after.accepted and not still.accepted:
        problems.append(f"stopping the old site broke the new one after a reload: {still.explain()}")
    stopped = await run.stop(second)
    if stopped.problem:
        problems.append(stopped.problem)
    return problems
