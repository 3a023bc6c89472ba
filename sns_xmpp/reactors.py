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
    IReactorCore,
    IReactorFDSet,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)


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
