"""The reactor this server runs on, as one type: the Twisted interfaces it uses together.

A reactor provides many interfaces, and a function that uses several of them (listening, timers,
the thread pool) cannot name it by one. `IServerReactor` extends the ones the server uses; every
Twisted reactor provides them all, and `service.makeService` casts the global reactor to it once
(Synapse's ``ISynapseReactor`` does the same). Functions that need less take the one interface
they use (`IReactorTime` for a clock). `ISiteReactor` is the part a social-site plugin is given
(`sites.interface.SiteContext.reactor`): timers, and what an HTTP client (treq over Twisted's
`Agent`) connects with.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorCore,
    IReactorFDSet,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)
from zope.interface import implementer


class ISiteReactor(IReactorTime, IReactorTCP, IReactorPluggableNameResolver):
    """What a site plugin may use of the reactor: timeouts and timers, and TCP connections with name
    resolution, which `twisted.web.client.Agent` (and so treq) needs for http and https alike."""


class IServerReactor(ISiteReactor, IReactorCore, IReactorSSL, IReactorFDSet, IReactorThreads, IReactorFromThreads):
    """The reactor the server runs on (see the module's doc)."""


def at_round_end(reactor: IReactorTime, call: Callable[[], None]) -> None:
    """Run *call* once the events of the reactor's current round are dispatched, where the reactor
    offers that (``LeanEPollReactor.after_events``: what a round wrote is sent, or handed on, once,
    at its end), else from a zero-delay call, which runs before the reactor next waits."""
    after_events = getattr(reactor, "after_events", None)
    if after_events is None or not after_events(call):
        reactor.callLater(0, call)


@implementer(IDelayedCall)
class _RoundEndCall:
    """A zero-delay call that `RoundEndClock` put at the end of the round: what a TLS layer's
    write aggregator keeps to cancel it. It cannot be moved (``delay``, ``reset``): the round's
    end is not a time."""

    __slots__ = ("_call", "_args", "_kwargs", "_pending", "_time")

    def __init__(self, call: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object],
                 time: float) -> None:
        self._call = call
        self._args = args
        self._kwargs = kwargs
        self._pending = True
        self._time = time

    def getTime(self) -> float:  # noqa: N802 - Twisted's name
        return self._time

    def delay(self, secondsLater: float) -> None:  # noqa: N803 - Twisted's name
        raise NotImplementedError("a call at the round's end cannot be moved")

    def reset(self, secondsFromNow: float) -> None:  # noqa: N803 - Twisted's name
        raise NotImplementedError("a call at the round's end cannot be moved")

    def run(self) -> None:
        if self._pending:
            self._pending = False
            self._call(*self._args, **self._kwargs)

    def cancel(self) -> None:
        self._pending = False

    def active(self) -> bool:
        return self._pending


@implementer(IReactorTime)
class RoundEndClock:
    """The reactor's clock, but for a zero-delay call, which runs at the end of the current round
    (`at_round_end`) when the reactor offers that, instead of in its next round.

    Twisted's TLS layer gathers a round's small writes and encrypts them from such a call
    (``BufferingTLSTransport``). On the reactor's own clock, each round that wrote to a TLS
    stream then cost the reactor another round: a timer to make and run, a poll more, and the
    ciphertext sent a round later, from a timer again (`transport.Flusher`). At the round's end,
    the ciphertext joins the round's other writes (docs/performance.md)."""

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._after_events: Callable[[Callable[[], None]], bool] | None = getattr(reactor, "after_events", None)

    def seconds(self) -> float:
        return self._reactor.seconds()

    def callLater(self, delay: float, callable: Callable[..., object], *args: object,  # noqa: N802 - Twisted's name
                  **kwargs: object) -> IDelayedCall:
        if delay == 0 and self._after_events is not None:
            at_end = _RoundEndCall(callable, args, kwargs, self._reactor.seconds())
            if self._after_events(at_end.run):
                return at_end
        return self._reactor.callLater(delay, callable, *args, **kwargs)

    def getDelayedCalls(self) -> list[IDelayedCall]:  # noqa: N802 - Twisted's name
        return list(self._reactor.getDelayedCalls())
