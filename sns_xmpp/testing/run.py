"""One run of the contract suite: the temporary environment, building sites, calling them safely.

Every call into the plugin goes through :meth:`ContractRun.call`, which times
the synchronous part, bounds the asynchronous part on the real reactor and
turns whatever happens into an :class:`Outcome`, so that a plugin that raises,
hangs or returns the wrong thing makes a check fail with a sentence instead of
crashing the suite.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from sns_xmpp.sites.interface import (
    ISite,
    ISiteReactor,
    Rejection,
    SiteConfigError,
    SiteContext,
    SiteRejection,
    VerifiedAccount,
)
from sns_xmpp.sites.registry import SITE_ID
from sns_xmpp.testing.contract import ContractError, Credentials, SiteContract, SiteFactory
from sns_xmpp.testing.silent import SilentServer


class Violation(Exception):
    """Stop the current check: the plugin broke the contract in a way that leaves nothing else to check."""


class ContractSkipped(Exception):
    """The check does not apply to this plugin (the contract gives nothing to check it with)."""


def describe(error: BaseException) -> str:
    """``Type: message`` on one line, shortened."""
    text = " ".join(str(error).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass
class Outcome:
    """What one call into the site did."""

    value: Any = None
    rejection: SiteRejection | None = None
    problem: str | None = None  # the call broke the contract by itself: raised, hung, wrong type
    blocked: float = 0.0  # seconds the synchronous part held the reactor

    @property
    def accepted(self) -> bool:
        return self.problem is None and self.rejection is None

    def explain(self) -> str:
        if self.problem is not None:
            return self.problem
        if self.rejection is not None:
            return f"rejected as {self.rejection.kind.value!r} ({self.rejection.reason})"
        return "accepted"


@dataclass
class _Texts:
    """Log output captured while a scenario runs, as (where, text) pairs."""

    events: list[tuple[str, str]] = field(default_factory=list)

    def find(self, needle: str) -> str | None:
        """Where *needle* was logged (with the needle itself masked), or None."""
        for where, text in self.events:
            if needle in text:
                return where.replace(needle, "***")
        return None


def _event_text(event: Mapping[str, Any]) -> str:
    parts = [formatEvent(dict(event))]
    for key, value in event.items():
        parts.append(f"{key}={value if isinstance(value, str) else repr(value)}")
        if isinstance(value, Failure):
            parts.append(value.getTraceback())
    return "\n".join(parts)


class _RecordHandler(logging.Handler):
    def __init__(self, texts: _Texts) -> None:
        super().__init__(logging.DEBUG)
        self.texts = texts
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{self.format(record)}\n{record.msg!r} {record.args!r}"
        except Exception:
            text = f"{record.msg!r} {record.args!r}"
        self.texts.events.append((f"stdlib logging {record.name}: {str(record.msg)[:80]!r}", text))


@contextmanager
def capture_logs() -> Iterator[_Texts]:
    """Everything logged through twisted.logger (any level) and the standard logging module."""
    texts = _Texts()

    def observe(event: Mapping[str, Any]) -> None:
        where = f"event {event.get('log_namespace', '?')}: {str(event.get('log_format'))[:80]!r}"
        texts.events.append((where, _event_text(event)))

    observer = cast(ILogObserver, observe)
    handler = _RecordHandler(texts)
    root = logging.getLogger()
    level = root.level
    globalLogPublisher.addObserver(observer)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield texts
    finally:
        root.setLevel(level)
        root.removeHandler(handler)
        globalLogPublisher.removeObserver(observer)


class ContractRun:
    """The environment of one contract run: ``async with ContractRun(contract, reactor) as run``."""

    def __init__(self, contract: SiteContract, reactor: ISiteReactor) -> None:
        self.contract = contract
        self.reactor = reactor
        self._factory: SiteFactory | None = None
        self._default: ISite | None = None
        self._running: list[ISite] = []
        self._servers: list[SilentServer] = []
        self._workdir: Path | None = None

    async def __aenter__(self) -> ContractRun:
        contract = self.contract
        if not SITE_ID.fullmatch(contract.site_id):
            raise ContractError(f"site_id {contract.site_id!r} is not a valid site id (1-63 of a-z 0-9 . -)")
        self._workdir = Path(tempfile.mkdtemp(prefix="sns-xmpp-contract-"))
        (self._workdir / "data").mkdir(mode=0o700)
        contract.reactor = self.reactor
        contract.workdir = self._workdir
        await contract.set_up()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        try:
            for site in reversed(self._running):
                await self.stop(site)
            for server in self._servers:
                await server.close()
            await self.contract.tear_down()
        finally:
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)

    # -- building sites -------------------------------------------------------------------------

    def factory(self) -> SiteFactory:
        """The plugin's factory; a plugin that cannot be loaded stops the check."""
        if self._factory is None:
            try:
                factory = self.contract.load_factory()
            except ContractError:
                raise
            except Exception as error:
                raise Violation(f"the plugin cannot be loaded: {describe(error)}") from None
            if not callable(factory):
                raise Violation(f"the plugin's entry point names {type(factory).__name__}, not a site factory")
            self._factory = factory
        return self._factory

    def context(self) -> SiteContext:
        return self.contract.context()

    def build(self, settings: Mapping[str, Any] | None = None) -> ISite:
        """Call the factory the way the registry does; refusing valid settings stops the check."""
        factory = self.factory()
        table = dict(self.contract.settings() if settings is None else settings)
        try:
            return factory(self.contract.site_id, table, self.context())
        except SiteConfigError as error:
            raise Violation(f"the factory refused the valid settings: SiteConfigError at {error.key!r}: "
                            f"{error.problem}") from None
        except Exception as error:
            raise Violation(f"the factory failed on the valid settings: {describe(error)}") from None

    async def started(self, settings: Mapping[str, Any] | None = None, ready: bool = True) -> ISite:
        """A new site, built, started and (unless *ready* is false) ready to verify."""
        site = self.build(settings)
        try:
            site.start()
        except Exception as error:
            raise Violation(f"start() raised {describe(error)}; it must not raise, even for a provider "
                            f"that is down") from None
        self._running.append(site)
        if ready:
            waiting = Deferred.fromCoroutine(_awaited(self.contract.wait_until_ready(site)))
            try:
                await self.bounded(waiting, self.contract.verify_timeout)
            except defer.TimeoutError:
                raise Violation(f"the site was not ready within {self.contract.verify_timeout:g} s of start() "
                                f"(SiteContract.wait_until_ready)") from None
        return site

    async def site(self) -> ISite:
        """The run's shared site, built from the valid settings and started."""
        if self._default is None:
            self._default = await self.started()
        return self._default

    async def stop(self, site: ISite) -> Outcome:
        if site in self._running:
            self._running.remove(site)
        return await self.call("stop()", site.stop, deferred=False)

    def silent_server(self) -> SilentServer:
        server = SilentServer()
        server.listen(self.reactor)
        self._servers.append(server)
        return server

    async def secrets(self) -> list[str]:
        await self.site()  # secrets a site makes in data_dir on first start exist from here on
        found = [str(secret) for secret in self.contract.secrets()]
        for secret in found:
            if len(secret) < 6:
                raise ContractError("SiteContract.secrets() gave a string shorter than 6 characters: too short "
                                    "to search logs for without false alarms")
        return found

    # -- tokens -----------------------------------------------------------------------------------

    def now(self) -> float:
        return float(self.reactor.seconds())

    async def credentials(self, site: ISite, now: float, expired: bool = False) -> Credentials:
        hook = self.contract.expired_credentials if expired else self.contract.credentials
        made = await _awaited(hook(site, now))
        if not isinstance(made, Credentials):
            raise ContractError(f"SiteContract.{hook.__name__}() must give a Credentials, not {type(made).__name__}")
        return made

    # -- calling the site -------------------------------------------------------------------------

    async def bounded(self, waiting: Deferred[Any], seconds: float) -> Any:
        """Wait for *waiting* on the real reactor for at most *seconds* (then cancel it: TimeoutError)."""
        waiting.addTimeout(seconds, self.reactor)
        return await waiting

    async def call(self, name: str, function: Callable[..., Any], *args: Any, deferred: bool = True,
                   timeout: float | None = None) -> Outcome:
        """Call the site; *deferred*: it must return a Deferred (else None or a Deferred is fine)."""
        started = time.perf_counter()
        try:
            result = function(*args)
        except SiteRejection as rejection:
            return Outcome(rejection=rejection, blocked=time.perf_counter() - started,
                           problem=f"{name} raised SiteRejection instead of returning a Deferred that fails with it")
        except Exception as error:
            return Outcome(blocked=time.perf_counter() - started,
                           problem=f"{name} raised {describe(error)} (it must return a Deferred"
                                   + (" that fails with SiteRejection)" if deferred else ")"))
        blocked = time.perf_counter() - started
        if result is None and not deferred:
            return Outcome(blocked=blocked)
        if not isinstance(result, Deferred):
            if inspect.iscoroutine(result):
                result.close()
            return Outcome(blocked=blocked, problem=f"{name} returned {type(result).__name__}, not a Deferred")
        limit = self.contract.verify_timeout if timeout is None else timeout
        try:
            value = await self.bounded(result, limit)
        except SiteRejection as rejection:
            return Outcome(rejection=rejection, blocked=blocked, problem=_kind_problem(name, rejection))
        except defer.TimeoutError:
            return Outcome(blocked=blocked, problem=f"{name} did not fire within {limit:g} s")
        except Exception as error:
            return Outcome(blocked=blocked, problem=f"{name} failed with {describe(error)} instead of SiteRejection")
        return Outcome(value=value, blocked=blocked)

    async def verify(self, site: ISite, identifier: str, token: str, now: float, bearer: bool = False,
                     timeout: float | None = None) -> Outcome:
        """``site.verify`` (or ``verify_bearer``); a success must be the site's VerifiedAccount."""
        if bearer:
            outcome = await self.call("verify_bearer()", cast(Any, site).verify_bearer, token, now, timeout=timeout)
        else:
            outcome = await self.call("verify()", site.verify, identifier, token, now, timeout=timeout)
        if outcome.accepted and not isinstance(outcome.value, VerifiedAccount):
            outcome.problem = f"verify fired with {type(outcome.value).__name__}, not a VerifiedAccount"
        return outcome

    async def blocking(self, site: ISite, identifier: str, token: str, now: float, bearer: bool = False) -> float:
        """The longest the reactor was held while *site* verified: the call itself or any later turn."""
        ticks: list[float] = []
        beat = LoopingCall(lambda: ticks.append(time.perf_counter()))
        beat.clock = self.reactor
        beat.start(0.002, now=True)
        try:
            outcome = await self.verify(site, identifier, token, now, bearer=bearer)
            await deferLater(self.reactor, 0.01, lambda: None)  # work the site left for the next turns
        finally:
            beat.stop()
        gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:], strict=False)]
        return max([outcome.blocked, *gaps])


def _kind_problem(name: str, rejection: SiteRejection) -> str | None:
    if not isinstance(getattr(rejection, "kind", None), Rejection):
        return f"{name} failed with a SiteRejection whose kind is not a Rejection member"
    return None


async def _awaited(value: Any) -> Any:
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        return await cast(Awaitable[Any], value)
    return value
